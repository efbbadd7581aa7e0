"""`sftkd reproduce PLAN.yaml`: a whole experiment from one plan file, restartable at any point.

A plan (YAML with a top-level `plan: 1`) says how to prepare the data, which stages to train
(teacher, student, SFT teacher, and for each KD method a Std-KD student from the teacher and
an SFT-KD-Recon student from the SFT run), and then evaluates every run, compares them and
writes a report folder (report.md with tables, Wilcoxon p-values, figures and a status table).

Keys of a plan (paths are relative to the current directory, like recipe paths):
    plan: 1
    name, description          for the report (name defaults to the file name)
    data:     source (demo | acdc | mrbrains | nifti | prepared), root (raw data folder),
              out (prepared dataset folder; every stage trains on it), options (prepare options;
              task: sr prepares super-resolution data, and then every stage needs data.task: sr)
    base:     recipe overrides for every stage, e.g. {train.epochs: 10, train.threads: 1}
    runs_dir: folder of the run directories; report: report folder (default <runs_dir>/report;
              a file there at one of the report's names that sftkd did not write is refused
              before any stage runs)
    recipes:  folder with teacher.yaml, student.yaml, sft.yaml, std-kd-<method>.yaml and
              sft-kd-<method>.yaml (e.g. recipes/paper/mrbrains-4x); stages default to them
    stages:   teacher, student, sft: {recipe: FILE, overrides: {...}} (or empty);
              kd: {methods: [at, ...], std: {...}, sft: {...}, sft_random_init: false} ({method}
              in a recipe path is replaced; sft_random_init: true, or a list of some of the methods,
              adds a stage sft-kd-<method>-random: the SFT-KD-Recon stage with distill.init=random,
              the paper's Table 5 ablation); evaluate: {split, checkpoint, sft_student};
              compare: {metrics, alpha}
    variants: [{name, recipes, overrides}, ...]: the stages once per variant (e.g. 4x and 5x);
    shared:   stages built once for all variants (e.g. [teacher] when only the student varies)
    seeds:    [42, 43, 44]: every training stage once per seed (train.seed); default: one run with
              the recipe's train.seed. The first seed's stages keep the plain ids (so adding seeds
              to a plan reuses its finished runs when the first seed is the recipe's); the others
              get '-s<seed>' (teacher-s43, std-kd-at-s43, ...). The report's verdict counts in how
              many seeds each claim held and adds one test pooled over seeds x slices.
    figures:  {metrics, curve, method, volume, slice, box}; with Std-KD and SFT-KD runs of
              `method` the report also draws the attention-map residues to the teacher (Fig. 6)
    paper:    {title, layout: table1 | students | models, metrics, columns, rows}: the paper's numbers,
              shown beside ours in report.md. Cells are 'a/b' (the metrics in order) or '-'.
              table1: columns '<acc>x Std-KD' / '<acc>x SFT-KD-Recon', rows named as
              `compare --group paper` names them (ZF, Teacher, Student, AT, Fitnets, CC, ...);
              students: columns Original / KD / SFT-KD-Recon, rows named by architecture.
              models: rows are metrics (no `metrics` key), columns among Teacher, Student,
              SFT Teacher, SFT Student, KD, SFT-KD-Recon (random), SFT-KD-Recon (KD stages of
              `figures.method`); cells 'mean +/- std', a single number, or '-' (Table 5).

Stage ids (= run directory names): teacher, student, sft, std-kd-<method>, sft-kd-<method>,
sft-kd-<method>-random, prefixed by '<variant>-' for the stages of a variant and suffixed
'-s<seed>' for the seeds after the first; eval-<run>
(eval-<run>-student for the SFT student), data and report.

Stage recipes: recipe file (or the defaults) < base < variant overrides < stage overrides <
command-line overrides. The plan itself sets train.seed (with `seeds`), data.path (data.out), run.dir (runs_dir), run.name
(the stage id), run.role, model.name (sft.teacher for the teacher, sft.student for the student
and KD stages), distill.teacher_run, distill.method and distill.init (sft for SFT-KD; random
for Std-KD and the sft-kd-<method>-random stages); setting those elsewhere is an error.

Each stage is skipped when complete (last checkpoint at train.epochs; metrics.json newer than
best.pt), resumed when its run directory exists but is incomplete, and run otherwise. A failing
stage is reported and the stages that need it are skipped; independent stages go on.

With `--jobs N` the stages run as a dependency graph, up to N at once, each in a worker process
whose output goes to <report>/logs/<stage>.log; the results are those of one stage after
another (the same work per stage; the CPU conv kernels gave the same weights with any thread
count here, and the shipped plans set train.threads). An executor runs the stages: the local one
(worker processes of this machine) or any other with the same small interface (`executor`).
`--dry-run --estimate` simulates that schedule with the stages' measured (or probed) times.

Modules: `kinds` (the shared names), `values` (plan value readers), `data` (the data: block and
the data stage), `paper` (the paper: block), `spec` (load_plan), `stages` (stages and their
state on disk), `stagework` (one stage's work), `running` (run_plan), `graph` (the dependency
graph, priorities, list scheduling), `jobs` (a stage as a picklable job), `executor` (the executor
interface, LocalExecutor), `schedule` (the parallel scheduler), `live` (its board), `estimate`
(--estimate), `display` (tables printed), `report` (report folder) and `report_folder` (its
status.json, what it was written for, and the check that the report replaces no one else's files).
"""

from __future__ import annotations

from sftkd_cli.reproduce.data import DataSpec
from sftkd_cli.reproduce.display import format_seconds, print_plan, print_status, total_seconds
from sftkd_cli.reproduce.executor import Executor, LocalExecutor
from sftkd_cli.reproduce.jobs import StageJob, run_stage_job, stage_log
from sftkd_cli.reproduce.running import PlanOutcome, run_plan
from sftkd_cli.reproduce.spec import Plan, load_plan
from sftkd_cli.reproduce.stages import Stage, StageResult, build_stages, select
from sftkd_cli.reproduce.stagework import Trainers, default_trainers

__all__ = [
    "DataSpec", "Executor", "LocalExecutor", "Plan", "PlanOutcome", "Stage", "StageJob", "StageResult", "Trainers",
    "build_stages", "default_trainers", "format_seconds", "load_plan", "print_plan", "print_status", "run_plan",
    "run_stage_job", "select", "stage_log", "total_seconds",
]
