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
    runs_dir: folder of the run directories; report: report folder (default <runs_dir>/report)
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
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sftkd_cli import __version__, eta
from sftkd_cli.config import Recipe, Setting, load_recipe, parse_overrides, read_yaml_file, validate
from sftkd_cli.data.files import read_regular_bytes
from sftkd_cli.data.prepare import SOURCE_DEFAULTS  # one home for prepare-data's per-source defaults
from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.recipes import find_file  # a plan's recipes: the given path, else the shipped copy
from sftkd_cli.evaluate import evaluate_run
from sftkd_cli.runs import RunDir, atomic_write_text, load_checkpoint
from sftkd_cli.training.kd import distill
from sftkd_cli.training.session import reconcile_resume
from sftkd_cli.training.sft import train_sft
from sftkd_cli.training.supervised import train_supervised

PLAN_FORMAT = 1
TRAIN_KINDS: tuple[str, ...] = ("teacher", "student", "sft", "std-kd", "sft-kd")
KINDS: tuple[str, ...] = ("data", *TRAIN_KINDS, "evaluate", "report")
SHAREABLE: tuple[str, ...] = ("teacher", "student", "sft")
SOURCES: tuple[str, ...] = ("demo", "acdc", "mrbrains", "nifti", "prepared")
ROLE = {"teacher": "teacher", "student": "student", "sft": "sft", "std-kd": "kd", "sft-kd": "kd"}
RECIPE_FILE = {"teacher": "teacher.yaml", "student": "student.yaml", "sft": "sft.yaml",
               "std-kd": "std-kd-{method}.yaml", "sft-kd": "sft-kd-{method}.yaml"}
#: recipe keys the plan sets itself, and where to set them instead
PLAN_OWNED = {
    "data.path": "data.out", "run.dir": "runs_dir", "run.name": "the stage id",
    "run.role": "the stage kind", "model.name": "sft.teacher / sft.student",
    "distill.teacher_run": "the plan's teacher and sft stages", "distill.method": "stages.kd.methods",
    "distill.init": "the stage kind: sft for SFT-KD, random for Std-KD and sft_random_init stages",
}
#: `sftkd prepare-data <source>` defaults, so a plan prepares exactly what the command would
SOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    "demo": {"template": "icbm152", "template_path": None, "slab": 8, "gap": 2},
    "acdc": {}, "mrbrains": {"modality": "T1"}, "nifti": {"pattern": "*.nii.gz"}, "prepared": {},
}
PREPARE_KEYS: tuple[str, ...] = (
    "size", "slice_axis", "downsample", "accelerations", "mask_kind", "mask_files", "mask_layout",
    "center_fraction", "seed", "val_fraction", "test_fraction", "val", "test", "min_slice_mean", "task",
)
PAPER_LAYOUTS: tuple[str, ...] = ("table1", "students", "models")
STUDENT_SETTINGS = {"teacher": "Original", "student": "Original", "std-kd": "KD", "sft-kd": "SFT-KD-Recon"}
#: columns of the `models` paper layout -> the trained kind they show (Table 5)
MODEL_COLUMNS = {"Teacher": "teacher", "Student": "student", "SFT Teacher": "sft", "SFT Student": "sft-student",
                 "KD": "std-kd", "SFT-KD-Recon (random)": "sft-kd-random", "SFT-KD-Recon": "sft-kd"}

# statuses of a stage after a run, and the actions a dry run announces
DONE, RESUMED, SKIPPED, FAILED, INTERRUPTED = "done", "resumed", "skipped", "failed", "interrupted"


# ============================================================================ plan file


@dataclass(frozen=True)
class DataSpec:
    """How to get the prepared dataset every stage trains on."""

    source: str
    out: Path
    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """A stage's recipe file (None: the recipes folder's, else the defaults) and overrides."""

    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """One copy of the stages: its name prefixes the run names."""

    name: str
    recipes: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PaperSpec:
    """The paper's numbers: rows x columns of cells 'a/b' holding `metrics` in order ('-' = none)."""

    title: str
    layout: str
    metrics: tuple[str, ...]
    columns: tuple[str, ...]
    rows: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Plan:
    """A validated plan file."""

    path: Path
    name: str
    description: str
    data: DataSpec
    base: dict[str, Any]
    runs_dir: Path
    report_dir: Path
    recipes: str | None
    variants: tuple[Variant, ...]
    shared: tuple[str, ...]
    stages: dict[str, StageSpec]  # teacher / student / sft, those the plan lists
    methods: tuple[str, ...]
    kd: dict[str, StageSpec]  # std-kd / sft-kd
    evaluate: dict[str, Any]
    compare: dict[str, Any]
    figures: dict[str, Any]
    paper: PaperSpec | None
    overrides: tuple[str, ...] = ()  # from the command line, applied to every stage last
    random_init: tuple[str, ...] = ()  # methods that also get an SFT-KD stage from a random student
    seeds: tuple[int, ...] = ()  # one run per seed of every training stage; () = the recipe's train.seed


TOP_KEYS = ("plan", "name", "description", "data", "base", "runs_dir", "report", "recipes",
            "variants", "shared", "stages", "figures", "paper", "seeds")
STAGE_KEYS = ("teacher", "student", "sft", "kd", "evaluate", "compare")
EVALUATE_DEFAULTS = {"split": "val", "checkpoint": "best", "sft_student": False}
COMPARE_DEFAULTS = {"metrics": ["PSNR", "SSIM", "HFN", "VIF", "NMSE"], "alpha": 0.05}
FIGURE_DEFAULTS = {"metrics": ["PSNR", "SSIM"], "curve": "val_l1", "method": None, "volume": None,
                   "slice": None, "box": None}


def _suggest(key: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else f"; expected one of {', '.join(allowed)}"


def _mapping(value: Any, where: str, allowed: Sequence[str] | None = None) -> dict[str, Any]:
    """`value` as a mapping (None = empty); unknown keys are an error naming the key."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SftkdError(f"{where}: expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise SftkdError(f"{where}: unknown key {key!r}{_suggest(key, allowed)}")
    return dict(value)


def _text(value: Any, where: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise SftkdError(f"{where}: expected a string, got {value!r}")
    return str(value)


def _flat_overrides(value: Any, where: str) -> dict[str, Any]:
    """Overrides as {'section.key': value}; accepts dotted keys or nested {section: {key: value}}."""
    flat: dict[str, Any] = {}
    for key, item in _mapping(value, where).items():
        key = str(key)
        if "." in key:
            flat[key] = item
        elif isinstance(item, dict):
            flat.update({f"{key}.{sub}": sub_value for sub, sub_value in item.items()})
        else:
            raise SftkdError(f"{where}: {key!r}: expected section.key (e.g. train.epochs: 5)")
    for key in flat:
        if key in PLAN_OWNED:
            raise SftkdError(f"{where}: {key} is set by the plan (from {PLAN_OWNED[key]}); remove it")
    load_recipe(None, settings=as_settings(flat, where))  # a bad key or value is an error naming `where`
    return flat


def as_settings(flat: dict[str, Any], source: str) -> list[Setting]:
    """{'train.epochs': 5} -> recipe settings with their typed values, from `source` (for errors)."""
    return [Setting(key, value, source) for key, value in flat.items()]


def _path(text: str) -> Path:
    """A plan's path: a leading `~` is the home folder, as in a shell."""
    return Path(os.path.expanduser(text))


def _stage_spec(value: Any, where: str) -> StageSpec:
    if isinstance(value, str):
        return StageSpec(recipe=value)
    raw = _mapping(value, where, ("recipe", "overrides"))
    return StageSpec(_text(raw.get("recipe"), f"{where}.recipe"), _flat_overrides(raw.get("overrides"), f"{where}.overrides"))


def _name(value: Any, where: str) -> str:
    name = _text(value, where, optional=False)
    assert name is not None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise SftkdError(f"{where}: {name!r}: expected letters, digits, '.', '_', '+' or '-' (it names run directories)")
    return name


def _data_spec(value: Any, where: str) -> DataSpec:
    raw = _mapping(value, where, ("source", "root", "out", "options"))
    source = _text(raw.get("source"), f"{where}.source") or "demo"
    if source not in SOURCES:
        raise SftkdError(f"{where}.source: {source!r}{_suggest(source, SOURCES)}")
    out = _text(raw.get("out"), f"{where}.out")
    if out is None:
        raise SftkdError(f"{where}.out: expected the prepared dataset folder (e.g. data/demo)")
    root = _text(raw.get("root"), f"{where}.root")
    if source in ("acdc", "mrbrains", "nifti") and root is None:
        raise SftkdError(f"{where}.root: source {source} needs the raw data folder")
    options = _mapping(raw.get("options"), f"{where}.options", (*PREPARE_KEYS, *SOURCE_OPTIONS[source]))
    if source == "prepared" and options:
        raise SftkdError(f"{where}.options: source prepared uses {out} as it is; remove the options")
    return DataSpec(source, _path(out), None if root is None else _path(root), options)


def _paper_spec(value: Any, where: str) -> PaperSpec | None:
    if value is None:
        return None
    raw = _mapping(value, where, ("title", "layout", "metrics", "columns", "rows", "notes"))
    layout = _text(raw.get("layout"), f"{where}.layout") or "table1"
    if layout not in PAPER_LAYOUTS:
        raise SftkdError(f"{where}.layout: {layout!r}{_suggest(layout, PAPER_LAYOUTS)}")
    metrics = tuple(str(m) for m in (raw.get("metrics") or ["PSNR", "SSIM"]))
    columns = tuple(str(c) for c in (raw.get("columns") or []))
    if not columns:
        raise SftkdError(f"{where}.columns: expected the paper's column names")
    if layout == "table1":
        for column in columns:
            if _table1_column(column) is None:
                raise SftkdError(f"{where}.columns: {column!r}: expected '<acc>x Std-KD' or '<acc>x SFT-KD-Recon'")
    if layout == "models":
        _check_models_layout(raw, columns, where)
    rows: dict[str, tuple[str, ...]] = {}
    for label, cells in _mapping(raw.get("rows"), f"{where}.rows").items():
        if not isinstance(cells, list) or len(cells) != len(columns):
            raise SftkdError(f"{where}.rows.{label}: expected a list of {len(columns)} cells (one per column)")
        for cell in cells:
            text = str(cell).strip()
            ok = _paper_stat(text) is not None if layout == "models" else _paper_numbers(text, len(metrics)) is not None
            if text != "-" and not ok:
                expected = "a number or 'mean +/- std'" if layout == "models" else f"{'/'.join(metrics)} numbers"
                raise SftkdError(f"{where}.rows.{label}: cell {cell!r}: expected '-' or {expected}")
        rows[str(label)] = tuple(str(c).strip() for c in cells)
    if layout == "models":  # rows are the metrics
        metrics = tuple(rows)
    return PaperSpec(_text(raw.get("title"), f"{where}.title") or "paper", layout, metrics, columns, rows)


def _check_models_layout(raw: dict[str, Any], columns: tuple[str, ...], where: str) -> None:
    """Layout models: columns name models (MODEL_COLUMNS), rows name metrics, no `metrics` key."""
    from sftkd_cli.metrics import METRIC_NAMES

    if raw.get("metrics") is not None:
        raise SftkdError(f"{where}.metrics: layout models takes the metrics from the row names; remove it")
    for column in columns:
        if column not in MODEL_COLUMNS:
            raise SftkdError(f"{where}.columns: {column!r}{_suggest(column, MODEL_COLUMNS)}")
    for label in _mapping(raw.get("rows"), f"{where}.rows"):
        if label not in METRIC_NAMES:
            raise SftkdError(f"{where}.rows: {label!r}: layout models names a metric per row{_suggest(label, METRIC_NAMES)}")


def _paper_stat(cell: str) -> tuple[float, float | None] | None:
    """'m' or 'm +/- s' (also 'm ± s') -> (m, s or None); None when it is neither."""
    parts = re.split(r"\s*(?:\+/-|±)\s*", cell.strip())
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    if len(numbers) == 1:
        return numbers[0], None
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


def _table1_column(column: str) -> tuple[float, str] | None:
    match = re.fullmatch(r"\s*([0-9.]+)x\s+(Std-KD|SFT-KD-Recon)\s*", column)
    return (float(match.group(1)), match.group(2)) if match else None


def _paper_numbers(cell: str, count: int) -> list[float] | None:
    parts = [p.strip() for p in cell.split("/")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    return numbers if len(numbers) == count else None


def load_plan(
    path: str | Path,
    overrides: Sequence[str] = (),
    runs_dir: str | Path | None = None,
    data_root: str | Path | None = None,
) -> Plan:
    """Read and validate a plan file; `overrides` (section.key=value) apply to every stage last."""
    path = Path(path)
    raw = _mapping(read_yaml_file(path, "plan"), str(path), TOP_KEYS)
    if raw.get("plan") != PLAN_FORMAT:
        raise SftkdError(f"{path}: plan: expected `plan: {PLAN_FORMAT}` at the top (is this a recipe? use train-teacher/train-sft/distill)")
    where = f"{path}:"
    if data_root is not None:
        raw["data"] = {**_mapping(raw.get("data"), f"{where} data"), "root": str(data_root)}
    data = _data_spec(raw.get("data"), f"{where} data")
    base = _flat_overrides(raw.get("base"), f"{where} base")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in PLAN_OWNED:
            raise SftkdError(f"override {item!r}: {key} is set by the plan (from {PLAN_OWNED[key]})")
    load_recipe(None, list(overrides))  # errors name the override
    runs = _path(str(runs_dir) if runs_dir is not None else (_text(raw.get("runs_dir"), f"{where} runs_dir") or "runs"))
    report = _text(raw.get("report"), f"{where} report")
    _check_apart(runs, data.out, f"{where} runs_dir {runs}" if runs_dir is None else f"--runs-dir {runs}", f"data.out {data.out}")
    stages_raw = _mapping(raw.get("stages"), f"{where} stages", STAGE_KEYS)
    stages = {kind: _stage_spec(stages_raw[kind], f"{where} stages.{kind}") for kind in SHAREABLE if kind in stages_raw}
    methods, kd, random_init = _kd_section(stages_raw.get("kd"), f"{where} stages.kd")
    if methods and ("teacher" not in stages or "sft" not in stages):
        raise SftkdError(f"{where} stages.kd: needs stages.teacher (Std-KD) and stages.sft (SFT-KD-Recon)")
    evaluate = _options(stages_raw.get("evaluate"), f"{where} stages.evaluate", EVALUATE_DEFAULTS)
    compare = _options(stages_raw.get("compare"), f"{where} stages.compare", COMPARE_DEFAULTS)
    figures = _options(raw.get("figures"), f"{where} figures", FIGURE_DEFAULTS)
    if figures["method"] is not None and figures["method"] not in methods:
        raise SftkdError(f"{where} figures.method: {figures['method']!r} is not among stages.kd.methods {list(methods)}")
    variants = _variants(raw.get("variants"), f"{where} variants")
    shared = _string_list(raw.get("shared"), f"{where} shared")
    for kind in shared:
        if kind not in SHAREABLE:
            raise SftkdError(f"{where} shared: {kind!r}{_suggest(kind, SHAREABLE)}")
        if kind not in stages:
            raise SftkdError(f"{where} shared: {kind} is not among the stages")
    if shared and not variants:
        raise SftkdError(f"{where} shared: only means something with variants")
    seeds = _seeds(raw.get("seeds"), f"{where} seeds")
    if seeds:
        _check_seed_not_overridden(base, variants, stages, kd, overrides, where)
    return Plan(
        path=path,
        name=_text(raw.get("name"), f"{where} name") or path.stem,
        description=_text(raw.get("description"), f"{where} description") or "",
        data=data, base=base, runs_dir=runs, report_dir=_path(report) if report else runs / "report",
        recipes=_text(raw.get("recipes"), f"{where} recipes"), variants=variants, shared=shared,
        stages=stages, methods=methods, kd=kd, evaluate=evaluate, compare=compare,
        figures=figures, paper=_paper_spec(raw.get("paper"), f"{where} paper"), overrides=tuple(overrides),
        random_init=random_init, seeds=seeds,
    )


MAX_SEEDS = 100


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    """`seeds`: a list of distinct integers in 0..2**32-1 (at most MAX_SEEDS); None = ()."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise SftkdError(f"{where}: expected a list of integer seeds (e.g. [42, 43, 44]), got {value!r}")
    for seed in value:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise SftkdError(f"{where}: {seed!r}: expected an integer between 0 and 2**32-1")
    if len(set(value)) != len(value):
        raise SftkdError(f"{where}: seed {next(s for s in value if value.count(s) > 1)} is listed twice")
    if len(value) > MAX_SEEDS:
        raise SftkdError(f"{where}: {len(value)} seeds; expected at most {MAX_SEEDS}")
    return tuple(value)


def _check_seed_not_overridden(base: dict[str, Any], variants: Sequence[Variant], stages: dict[str, StageSpec],
                               kd: dict[str, StageSpec], overrides: Sequence[str], where: str) -> None:
    """With `seeds`, the plan sets train.seed itself; setting it elsewhere too is an error."""
    places = [("base", base)] + [(f"variants {v.name}", v.overrides) for v in variants]
    places += [(f"stages.{k}", spec.overrides) for k, spec in {**stages, **kd}.items()]
    for name, flat in places:
        if "train.seed" in flat:
            raise SftkdError(f"{where} {name}: train.seed is set by the plan's seeds; remove it")
    for item in overrides:
        if item.split("=", 1)[0].strip() == "train.seed":
            raise SftkdError(f"override {item!r}: train.seed is set by the plan's seeds")


def _check_apart(runs: Path, data: Path, runs_what: str, data_what: str) -> None:
    """The runs folder and the dataset folder must not be the same or one inside the other:
    rebuilding the dataset (`prepare-data --force`) would then remove runs, or a run the data."""
    a, b = runs.resolve(), data.resolve()
    if a == b or a in b.parents or b in a.parents:
        relation = "is" if a == b else "is inside" if b in a.parents else "contains"
        raise SftkdError(f"{runs_what}: {relation} the dataset folder ({data_what}); expected separate folders")


def _string_list(value: Any, where: str) -> tuple[str, ...]:
    """A list of strings (a single string is a list of one; None is empty)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SftkdError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)


def _kd_section(value: Any, where: str) -> tuple[tuple[str, ...], dict[str, StageSpec], tuple[str, ...]]:
    """(methods, {'std-kd': spec, 'sft-kd': spec}, methods with an extra random-init SFT-KD stage)."""
    raw = _mapping(value, where, ("methods", "std", "sft", "sft_random_init"))
    methods = _string_list(raw.get("methods"), f"{where}.methods")
    _check_methods(methods, f"{where}.methods")
    return methods, {"std-kd": _stage_spec(raw.get("std"), f"{where}.std"),
                     "sft-kd": _stage_spec(raw.get("sft"), f"{where}.sft")}, _random_init(raw.get("sft_random_init"), methods, where)


def _random_init(value: Any, methods: tuple[str, ...], where: str) -> tuple[str, ...]:
    """stages.kd.sft_random_init: true (every method), false/absent (none) or a list of the methods."""
    if value is None or value is False:
        return ()
    if value is True:
        return methods
    chosen = _string_list(value, f"{where}.sft_random_init")
    for method in chosen:
        if method not in methods:
            raise SftkdError(f"{where}.sft_random_init: {method!r} is not among stages.kd.methods {list(methods)}")
    return tuple(m for m in methods if m in chosen)


def _options(value: Any, where: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A small options block: known keys only, each of its default's type (None: any)."""
    out = {**defaults, **_mapping(value, where, tuple(defaults))}
    for key, default in defaults.items():
        item = out[key]
        if default is None:  # optional figure settings, checked below
            continue
        if isinstance(default, bool) or isinstance(default, str):
            ok = type(item) is type(default)
        elif isinstance(default, float):
            ok = isinstance(item, (int, float)) and not isinstance(item, bool) and 0 < item < 1
        else:  # lists of names
            ok = isinstance(item, list) and bool(item) and all(isinstance(v, str) for v in item)
        if not ok:
            raise SftkdError(f"{where}.{key}: expected {_describe(default)}, got {item!r}")
    box, index, volume = out.get("box"), out.get("slice"), out.get("volume")
    if box is not None and not (isinstance(box, list) and len(box) == 4 and all(isinstance(b, int) for b in box)):
        raise SftkdError(f"{where}.box: expected [row, column, height, width] of the inset, got {box!r}")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        raise SftkdError(f"{where}.slice: expected a slice number (0 or more), got {index!r}")
    if volume is not None and not isinstance(volume, str):
        raise SftkdError(f"{where}.volume: expected a volume id (a string), got {volume!r}")
    return out


def _describe(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, float):
        return "a number between 0 and 1"
    return "a list of names"


def _check_methods(methods: Sequence[str], where: str) -> None:
    from sftkd_cli.distill.methods import METHODS

    for method in methods:
        if method not in METHODS:
            raise SftkdError(f"{where}: {method!r}{_suggest(method, sorted(METHODS))}")
    if len(set(methods)) != len(methods):
        raise SftkdError(f"{where}: a method is listed twice")


def _variants(value: Any, where: str) -> tuple[Variant, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise SftkdError(f"{where}: expected a list of {{name, recipes, overrides}}")
    out = []
    for i, item in enumerate(value):
        raw = _mapping(item, f"{where}[{i}]", ("name", "recipes", "overrides"))
        out.append(Variant(_name(raw.get("name"), f"{where}[{i}].name"), _text(raw.get("recipes"), f"{where}[{i}].recipes"),
                           _flat_overrides(raw.get("overrides"), f"{where}[{i}].overrides")))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise SftkdError(f"{where}: two variants named {next(n for n in names if names.count(n) > 1)!r}")
    return tuple(out)


# ============================================================================ stages


@dataclass
class Stage:
    """One step of a plan: prepare data, train one run, evaluate one model, or write the report."""

    id: str
    kind: str
    group: str = ""  # variant name ("" without variants and for shared stages)
    needs: tuple[str, ...] = ()
    recipe: Recipe | None = None  # training stages
    recipe_file: str | None = None
    run: Path | None = None  # training and evaluation stages: the run directory
    method: str | None = None
    model_role: str | None = None  # evaluation of an SFT run's student
    label: str = ""  # short name in figures and tables
    trained: str = ""  # evaluation stages: the kind of the training stage evaluated
    random_init: bool = False  # sft-kd stages (and their evaluation): distill.init=random
    seed: int | None = None  # the plan's seed of this run (None: the recipe's train.seed)


@dataclass
class StageResult:
    """What happened to a stage in this invocation."""

    id: str
    kind: str
    status: str
    seconds: float = 0.0
    note: str = ""


def _recipe_path(plan: Plan, kind: str, spec: StageSpec, variant: Variant | None, method: str | None) -> str | None:
    """The stage's recipe file: explicit, else the variant's or the plan's recipes folder, else none."""
    if spec.recipe is not None:  # only {method} is replaced; any other brace is part of the path
        return str(find_file(os.path.expanduser(spec.recipe.replace("{method}", method or ""))))
    folder = (variant.recipes if variant and variant.recipes else None) or plan.recipes
    if folder is None:
        return None
    return str(find_file(_path(folder) / RECIPE_FILE[kind].replace("{method}", method or "")))


def _build_recipe(plan: Plan, stage: Stage, spec: StageSpec, variant: Variant | None, teacher_run: Path | None) -> Recipe:
    """Resolve a training stage's recipe (see the module docstring for the precedence)."""
    fixed = {"data.path": str(plan.data.out), "run.dir": str(plan.runs_dir), "run.name": stage.id,
             "run.role": ROLE[stage.kind]}
    if teacher_run is not None:
        fixed.update({"distill.teacher_run": str(teacher_run), "distill.method": stage.method})
    if stage.seed is not None:
        fixed["train.seed"] = stage.seed
    if stage.kind in ("std-kd", "sft-kd"):
        fixed["distill.init"] = "sft" if stage.kind == "sft-kd" and not stage.random_init else "random"
    layers = as_settings(plan.base, "base") + as_settings(variant.overrides if variant else {}, "variant overrides")
    layers += as_settings(spec.overrides, "stage overrides") + parse_overrides(plan.overrides) + as_settings(fixed, "the plan")
    where = f"{plan.path}: stage {stage.id}"
    if stage.recipe_file is not None and not Path(stage.recipe_file).is_file():
        raise SftkdError(f"{where}: recipe {stage.recipe_file} not found (paths are relative to the current directory)")
    try:
        recipe = load_recipe(stage.recipe_file, settings=layers)
        if stage.kind != "sft":  # train-sft builds both models from the sft section
            model = recipe.sft.teacher if stage.kind == "teacher" else recipe.sft.student
            recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, name=model.upper()))
        validate(recipe)
        task = str(plan.data.options.get("task", "recon"))
        if plan.data.source != "prepared" and recipe.data.task != task:
            raise SftkdError(f"data.task {recipe.data.task}: the plan prepares data for task {task} (data.options.task); "
                             f"set data.task: {task} (e.g. in base)")
    except SftkdError as exc:
        raise SftkdError(f"{where}: {exc}") from None
    return recipe


def build_stages(plan: Plan) -> list[Stage]:
    """Every stage of the plan, in an order where each stage comes after what it needs."""
    stages: list[Stage] = [Stage("data", "data", label="data")]

    def add(kind: str, variant: Variant | None, spec: StageSpec, method: str | None = None,
            teacher: Stage | None = None, random_init: bool = False) -> Stage:
        short = (kind if method is None else f"{kind}-{method}") + ("-random" if random_init else "")
        group = variant.name if variant else ""
        ident = (f"{group}-{short}" if group else short) + (f"-s{seed}" if seed is not None and seed != first_seed else "")
        stage = Stage(ident, kind, group, needs=("data",) + ((teacher.id,) if teacher else ()),
                      method=method, label=short, random_init=random_init, seed=seed)
        stage.recipe_file = _recipe_path(plan, kind, spec, variant, method)
        stage.run = plan.runs_dir / stage.id
        stage.recipe = _build_recipe(plan, stage, spec, variant, teacher.run if teacher else None)
        stages.append(stage)
        return stage

    first_seed = plan.seeds[0] if plan.seeds else None
    for seed in plan.seeds or (None,):
        shared = {kind: add(kind, None, plan.stages[kind]) for kind in plan.shared}
        for variant in plan.variants or (None,):
            own = {kind: shared.get(kind) or add(kind, variant, plan.stages[kind]) for kind in SHAREABLE if kind in plan.stages}
            for method in plan.methods:
                add("std-kd", variant, plan.kd["std-kd"], method, own["teacher"])
                add("sft-kd", variant, plan.kd["sft-kd"], method, own["sft"])
                if method in plan.random_init:  # the same recipe from a random student (Table 5)
                    add("sft-kd", variant, plan.kd["sft-kd"], method, own["sft"], random_init=True)
    _check_same_data(plan, [s for s in stages if s.recipe is not None])
    for stage in [s for s in stages if s.kind in TRAIN_KINDS]:
        stages.append(Stage(f"eval-{stage.id}", "evaluate", stage.group, (stage.id,), run=stage.run,
                            method=stage.method, label=stage.label, recipe=stage.recipe, trained=stage.kind,
                            random_init=stage.random_init, seed=stage.seed))
        if stage.kind == "sft" and plan.evaluate["sft_student"]:
            stages.append(Stage(f"eval-{stage.id}-student", "evaluate", stage.group, (stage.id,), run=stage.run,
                                model_role="student", label="sft-student", recipe=stage.recipe, trained="sft-student",
                                seed=stage.seed))
    stages.append(Stage("report", "report", label="report"))
    return stages


def _check_same_data(plan: Plan, stages: list[Stage]) -> None:
    """Stages that compare with each other must share the acceleration (the dataset is the plan's)."""
    groups: dict[str, set[float]] = {}
    for stage in stages:
        assert stage.recipe is not None
        groups.setdefault(stage.group, set()).add(stage.recipe.data.acceleration)
    shared = groups.pop("", set())
    for group, accs in groups.items():
        if len(accs | shared) > 1:
            raise SftkdError(f"{plan.path}: variant {group}: its stages train at different accelerations "
                             f"{sorted(accs | shared)}; a variant's runs must share data.acceleration")
    if not groups and len(shared) > 1:
        raise SftkdError(f"{plan.path}: the stages train at different accelerations {sorted(shared)}; "
                         "use variants (one per acceleration)")


def select(stages: Sequence[Stage], only: Sequence[str]) -> set[str]:
    """Ids of the stages matching --only tokens (stage id, glob, kind, 'kd', 'train', 'eval', or variant)."""
    if not only:
        return {s.id for s in stages}
    import fnmatch

    aliases = {"kd": ("std-kd", "sft-kd"), "train": TRAIN_KINDS, "eval": ("evaluate",), "compare": ("report",)}
    chosen: set[str] = set()
    for token in only:
        kinds = aliases.get(token, (token,))
        hits = {s.id for s in stages if s.id == token or fnmatch.fnmatchcase(s.id, token) or s.kind in kinds or s.group == token}
        if not hits:
            raise SftkdError(f"--only {token}: matches no stage; stages: {', '.join(s.id for s in stages)}")
        chosen |= hits
    return chosen


# ============================================================================ stage state


def training_state(stage: Stage) -> tuple[str, str]:
    """('complete' | 'partial' | 'new', detail) of a training stage's run directory."""
    assert stage.run is not None and stage.recipe is not None
    run = RunDir(stage.run)
    if not run.recipe_file.is_file():
        return "new", ""
    epochs = stage.recipe.train.epochs
    last = run.checkpoint("last")
    if not last.is_file():
        return "partial", "no checkpoint yet"
    state = load_checkpoint(last)
    epoch, step = int(state.get("epoch", 0)), int(state.get("step_in_epoch", 0))
    where = f"epoch {epoch}/{epochs}" + (f", step {step}" if step else "")
    if epoch >= epochs and step == 0 and run.checkpoint("best").is_file():
        return "complete", where
    return "partial", where


def evaluation_dir(stage: Stage) -> Path:
    """Where an evaluation stage writes metrics.json (RUN, or RUN/eval-<model> for another model)."""
    assert stage.run is not None
    return stage.run if stage.model_role is None else stage.run / f"eval-{stage.model_role}"


def evaluation_complete(stage: Stage, plan: Plan) -> bool:
    """metrics.json (with recon.h5) newer than best.pt, for the plan's split and checkpoint."""
    assert stage.run is not None
    out, best = evaluation_dir(stage), stage.run / "checkpoints" / "best.pt"
    metrics = out / "metrics.json"
    if not (metrics.is_file() and (out / "recon.h5").is_file() and best.is_file()):
        return False
    if metrics.stat().st_mtime <= best.stat().st_mtime:
        return False
    try:
        info = json.loads(read_regular_bytes(metrics, "metrics"))
    except (SftkdError, ValueError):
        return False
    return info.get("dataset", {}).get("split") == plan.evaluate["split"] and info.get("checkpoint") == plan.evaluate["checkpoint"]


def report_complete(plan: Plan, stages: Sequence[Stage]) -> bool:
    """report.md newer than the plan file and than every metrics.json it summarises."""
    report = plan.report_dir / "report.md"
    if not report.is_file():
        return False
    newest = plan.path.stat().st_mtime
    for stage in stages:
        if stage.kind == "evaluate":
            metrics = evaluation_dir(stage) / "metrics.json"
            if metrics.is_file():
                newest = max(newest, metrics.stat().st_mtime)
    return report.stat().st_mtime > newest


# ============================================================================ running


@dataclass
class PlanOutcome:
    """Results of every stage that was considered, and the report folder (when written)."""

    results: list[StageResult]
    report: Path | None = None

    @property
    def failed(self) -> list[StageResult]:
        return [r for r in self.results if r.status in (FAILED, INTERRUPTED)]


def prepare_data(plan: Plan, console: Console) -> bool:
    """Prepare (or check) the plan's dataset; returns True when something was written."""
    from sftkd_cli.data.dataset import load_manifest

    data = plan.data
    if data.source == "prepared":
        load_manifest(data.out)  # a clear error when it is not a prepared dataset
        return False
    from sftkd_cli.data.prepare import PrepareOptions, default_accelerations, prepare_dataset

    options = {**SOURCE_DEFAULTS[data.source], **{k: v for k, v in data.options.items() if k in PREPARE_KEYS}}
    extra = {**SOURCE_OPTIONS[data.source], **{k: v for k, v in data.options.items() if k not in PREPARE_KEYS}}
    try:
        mask_files = {float(a): Path(p) for a, p in (options.get("mask_files") or {}).items()}
        task = str(options.get("task", "recon"))
        accelerations = options.get("accelerations") or default_accelerations(task, mask_files)
        prepared = PrepareOptions(
            size=None if options.get("size") is None else (int(options["size"][0]), int(options["size"][1])),
            slice_axis=int(options.get("slice_axis", 2)),
            downsample=int(options.get("downsample", 1)),
            accelerations=tuple(float(a) for a in accelerations),
            mask_kind=str(options.get("mask_kind", "random")),
            mask_files=mask_files,
            mask_layout=str(options.get("mask_layout", "corner")),
            center_fraction=options.get("center_fraction"),
            seed=int(options.get("seed", 42)),
            val_fraction=options.get("val_fraction"),
            test_fraction=options.get("test_fraction"),
            val=tuple(str(v) for v in options.get("val") or ()),
            test=tuple(str(v) for v in options.get("test") or ()),
            min_slice_mean=float(options.get("min_slice_mean", 0.0)),
            task=task,
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise SftkdError(f"{plan.path}: data.options: {exc}") from None
    source = _source(data, extra)
    try:
        source.files()
    except SftkdError as exc:  # e.g. the demo's template package (nilearn) is not installed
        prepared.validate()
        if not _prepared_alike(data.out, {"source": source.name, **source.options(), **prepared.record()}):
            raise
        console.print(f"dataset {data.out}: up to date (prepared with these options; its source could not be "
                      f"read to compare checksums: {exc})", highlight=False, markup=False)
        return False
    result = prepare_dataset(source, data.out, prepared)
    console.print(f"dataset {data.out}: " + ("up to date" if result.unchanged else f"prepared in {result.seconds:.1f} s"), highlight=False)
    return not result.unchanged


def _prepared_alike(out: Path, options: dict[str, Any]) -> bool:
    """Whether `out` holds a complete dataset that prepare-data wrote with exactly `options`: what
    the data stage can tell without reading the source (whose checksums it then cannot compare)."""
    from sftkd_cli.data.dataset import load_manifest

    try:
        manifest = load_manifest(out)
    except SftkdError:
        return False
    if manifest.get("options") != options:
        return False
    volumes, mask = manifest.get("volumes"), manifest.get("mask")
    if not isinstance(volumes, dict) or not isinstance(mask, dict) or not isinstance(mask.get("files", {}), dict):
        return False
    files = [v.get("file") if isinstance(v, dict) else None for v in volumes.values()]
    files += list(mask.get("files", {}).values())
    return all(isinstance(name, str) and name and (out / name).is_file() for name in files)


def _source(data: DataSpec, extra: dict[str, Any]):
    from sftkd_cli.data.sources import AcdcSource, DemoSource, MRBrainsSource, NiftiSource

    if data.source == "demo":
        path = extra.get("template_path")
        return DemoSource(str(extra["template"]), None if path is None else Path(path), slab=int(extra["slab"]), gap=int(extra["gap"]))
    assert data.root is not None
    if data.source == "acdc":
        return AcdcSource(data.root)
    if data.source == "mrbrains":
        return MRBrainsSource(data.root, str(extra["modality"]))
    return NiftiSource(data.root, str(extra["pattern"]))


def _train(stage: Stage, resume: bool, console: Console) -> None:
    """Call the library function of the stage's kind (module names looked up now: tests patch them)."""
    assert stage.recipe is not None
    functions: dict[str, Callable[..., Any]] = {"teacher": train_supervised, "student": train_supervised,
                                                "sft": train_sft, "std-kd": distill, "sft-kd": distill}
    functions[stage.kind](stage.recipe, resume=resume, console=console)


def _evaluate(stage: Stage, plan: Plan) -> None:
    assert stage.recipe is not None and stage.run is not None
    if stage.recipe.train.threads:
        import torch

        torch.set_num_threads(stage.recipe.train.threads)
    evaluate_run(stage.run, split=plan.evaluate["split"], checkpoint=plan.evaluate["checkpoint"],
                 model_role=stage.model_role, device=stage.recipe.train.device, write_recon=True)


def planned_action(stage: Stage, plan: Plan, stages: Sequence[Stage]) -> tuple[str, str]:
    """What running the stage now would do: ('run' | 'resume' | 'skip' | 'check', detail)."""
    if stage.kind == "data":
        return ("check", f"use {plan.data.out}") if plan.data.source == "prepared" else ("check", f"prepare {plan.data.out} if needed")
    if stage.kind in TRAIN_KINDS:
        state, detail = training_state(stage)
        return {"complete": "skip", "partial": "resume", "new": "run"}[state], detail
    if stage.kind == "evaluate":
        return ("skip", "") if evaluation_complete(stage, plan) else ("run", "")
    return ("skip", "") if report_complete(plan, stages) else ("run", "")


def run_plan(
    plan: Plan,
    stages: Sequence[Stage] | None = None,
    *,
    only: Sequence[str] = (),
    keep_going: bool = True,
    console: Console | None = None,
) -> PlanOutcome:
    """Run the plan's stages in order (see the module docstring); the report comes last."""
    console = console or Console()
    stages = list(stages) if stages is not None else build_stages(plan)
    chosen = select(stages, only)
    results: dict[str, StageResult] = {}
    broken: dict[str, str] = {}  # stage id -> "failed" or "skipped": stages that need it cannot run
    outcome = PlanOutcome([])
    todo = [s for s in stages if s.id in chosen]
    stopped = ""
    plan_started, timed = time.perf_counter(), []  # timed: (cost, seconds) of training stages done here
    for number, stage in enumerate(todo, start=1):
        blocker = stopped or _blocker(stage, chosen, broken, stages, plan)
        if blocker:
            broken[stage.id] = SKIPPED
            results[stage.id] = StageResult(stage.id, stage.kind, SKIPPED, note=blocker)
            console.print(f"[dim][{number}/{len(todo)}] {escape(stage.id)}: skipped ({escape(blocker)})[/]", highlight=False)
            continue
        started = time.perf_counter()
        try:
            status, note = _run_stage(stage, plan, stages, results, console, number, len(todo))
        except (RunInterrupted, KeyboardInterrupt) as exc:
            results[stage.id] = StageResult(stage.id, stage.kind, INTERRUPTED, time.perf_counter() - started, str(exc) or "interrupted")
            print_status([results[s.id] for s in todo if s.id in results], console)
            raise RunInterrupted(f"{plan.path}: stopped at stage {stage.id}; run the same command again to continue") from None
        except Exception as exc:  # noqa: BLE001 - a failing stage must not stop independent ones
            note = str(exc) if isinstance(exc, SftkdError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, SftkdError):
                _log_error(plan, stage, exc)
            results[stage.id] = StageResult(stage.id, stage.kind, FAILED, time.perf_counter() - started, note)
            broken[stage.id] = FAILED
            console.print(f"[bold red]failed[/] {escape(stage.id)}: {escape(note)}", highlight=False, soft_wrap=True)
            if not keep_going:
                stopped = f"not run: stopped after {stage.id} failed (--stop-on-error)"
            continue
        results[stage.id] = StageResult(stage.id, stage.kind, status, time.perf_counter() - started, note)
        if stage.kind == "report" and status != SKIPPED:
            outcome.report = plan.report_dir
        if stage.kind in TRAIN_KINDS and status == DONE and number < len(todo):
            timed.append((eta.training_cost(stage.kind, stage.recipe), results[stage.id].seconds))
            left = eta.seconds_left(timed, [eta.training_cost(s.kind, s.recipe) for s in todo[number:] if s.kind in TRAIN_KINDS])
            console.print(eta.progress_line(number, len(todo), time.perf_counter() - plan_started, left),
                          style="dim", highlight=False)
    outcome.results = [results[s.id] for s in todo]
    return outcome


def _blocker(stage: Stage, chosen: set[str], broken: dict[str, str], stages: Sequence[Stage], plan: Plan) -> str:
    """Why `stage` cannot run now ('' when it can): a stage it needs failed or was skipped, or
    is left out by --only and not complete."""
    by_id = {s.id: s for s in stages}
    for need in stage.needs:
        if need in broken:
            return f"{need} {broken[need]}"
        if need not in chosen:
            dep = by_id[need]
            if dep.kind in TRAIN_KINDS and training_state(dep)[0] != "complete":
                return f"{need} not complete (not selected by --only)"
            if dep.kind == "data" and plan.data.source != "prepared" and not (plan.data.out / "manifest.json").is_file():
                return f"{need}: {plan.data.out} not prepared (not selected by --only)"
    return ""


def _run_stage(stage: Stage, plan: Plan, stages: Sequence[Stage], results: dict[str, StageResult],
               console: Console, number: int, total: int) -> tuple[str, str]:
    """Run one stage; returns (status, note)."""
    def header(action: str) -> None:
        console.rule(f"[bold][{number}/{total}] {escape(stage.id)}[/] {escape(action)}", align="left")

    if stage.kind == "data":
        header(f"{plan.data.source} -> {plan.data.out}")
        return (DONE, "prepared") if prepare_data(plan, console) else (SKIPPED, "up to date")
    if stage.kind in TRAIN_KINDS:
        assert stage.recipe is not None
        state, detail = training_state(stage)
        if state == "complete":
            try:
                reconcile_resume(RunDir(stage.run), stage.recipe)  # type: ignore[arg-type]
            except SftkdError as exc:
                raise SftkdError(f"{exc}; the finished run differs from the plan: delete {stage.run} to train it again") from None
            console.print(f"[dim][{number}/{total}] {escape(stage.id)}: up to date ({detail})[/]", highlight=False)
            return SKIPPED, f"up to date ({detail})"
        header(f"{'resume' if state == 'partial' else 'train'} {_model_text(stage)}"
               + (f" ({detail})" if detail else "") + f" -> {stage.run}")
        _train(stage, state == "partial", console)
        return (RESUMED, f"from {detail}") if state == "partial" else (DONE, "")
    if stage.kind == "evaluate":
        if evaluation_complete(stage, plan):
            console.print(f"[dim][{number}/{total}] {escape(stage.id)}: up to date[/]", highlight=False)
            return SKIPPED, "up to date"
        header(f"evaluate {stage.run}" + (f" --model {stage.model_role}" if stage.model_role else ""))
        _evaluate(stage, plan)
        return DONE, ""
    up_to_date = bool(results) and all(r.note.startswith("up to date") for r in results.values())
    if up_to_date and report_complete(plan, stages):
        console.print(f"[dim][{number}/{total}] report: up to date ({plan.report_dir / 'report.md'})[/]", highlight=False)
        return SKIPPED, "up to date"
    header(f"report -> {plan.report_dir}")
    problems = write_report(plan, stages, list(results.values()), console)
    if problems:
        raise SftkdError(f"report written to {plan.report_dir} with problems: {'; '.join(problems)}")
    return DONE, str(plan.report_dir / "report.md")


def _log_error(plan: Plan, stage: Stage, exc: BaseException) -> None:
    """Append an unexpected error's traceback to <report>/errors.log (the console shows one line)."""
    try:
        plan.report_dir.mkdir(parents=True, exist_ok=True)
        with open(plan.report_dir / "errors.log", "a") as handle:
            handle.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} stage {stage.id}\n")
            handle.write("".join(traceback.format_exception(exc)))
    except OSError:
        pass


# ============================================================================ display


STATUS_STYLE = {DONE: "green", RESUMED: "cyan", SKIPPED: "dim", FAILED: "bold red", INTERRUPTED: "bold yellow"}


def print_status(results: Sequence[StageResult], console: Console) -> None:
    """The plan status table: stage, status, seconds, note."""
    table = Table(title="plan status", title_justify="left")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column, justify="right" if column == "seconds" else "left", overflow="fold")
    for r in results:
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(escape(r.id), f"[{style}]{r.status}[/]" if style else r.status, f"{r.seconds:.1f}", escape(r.note))
    console.print(table)


def print_plan(plan: Plan, stages: Sequence[Stage], chosen: set[str], console: Console) -> None:
    """The dry-run table: what each selected stage would do, its run directory and recipe."""
    table = Table(title=f"plan {plan.name} ({plan.path})", title_justify="left")
    for column in ("stage", "action", "model", "epochs", "run", "recipe"):
        table.add_column(column, overflow="fold")
    for stage in stages:
        if stage.id not in chosen:
            continue
        action, detail = planned_action(stage, plan, stages)
        recipe = stage.recipe if stage.kind in TRAIN_KINDS else None
        table.add_row(
            escape(stage.id), escape(action + (f" ({detail})" if detail else "")),
            _model_text(stage),
            str(recipe.train.epochs) if recipe else "",
            escape(str(stage.run or (plan.report_dir if stage.kind == "report" else plan.data.out))),
            escape(stage.recipe_file or ("defaults" if recipe else "")),
        )
    console.print(table)


def _model_text(stage: Stage) -> str:
    """The architecture(s) a stage trains or evaluates, for the tables."""
    recipe = stage.recipe
    if recipe is None:
        return ""
    if stage.kind == "sft" or stage.trained == "sft":
        return f"{recipe.sft.teacher}+{recipe.sft.student}"
    if stage.trained == "sft-student":
        return recipe.sft.student
    return recipe.model.name


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def total_seconds(results: Sequence[StageResult]) -> float:
    return math.fsum(r.seconds for r in results)


# ============================================================================ report


def _groups(plan: Plan) -> list[str]:
    return [v.name for v in plan.variants] or [""]


def _evaluated(stages: Sequence[Stage]) -> list[Stage]:
    return [s for s in stages if s.kind == "evaluate" and (evaluation_dir(s) / "metrics.json").is_file()]


def _figure_method(plan: Plan) -> str | None:
    return plan.figures["method"] or (plan.methods[0] if plan.methods else None)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] | None = None) -> list[str]:
    """A Markdown table; `numeric` columns are right-aligned (default: all but the first)."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    right = set(range(1, len(header)) if numeric is None else numeric)
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def write_report(plan: Plan, stages: Sequence[Stage], results: Sequence[StageResult], console: Console) -> list[str]:
    """Write <report>/report.md (+ compare CSV/JSON, figures, status.json); returns the problems met.

    Per group (variant): the compact results table (role names), the verdict on the paper's
    claims (paired Wilcoxon tests, per seed and pooled), links to the full comparison files, box
    plots, validation curves and the reconstruction grid; then the paper's numbers beside ours
    (the first seed's runs, when the plan has `paper:`), and the plan status table.
    """
    out = plan.report_dir
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    evaluated = _evaluated(stages)
    lines = [f"# sftkd reproduce: {plan.name}", ""]
    if plan.description:
        lines += [plan.description.strip(), ""]
    lines += [
        f"- plan: `{plan.path}`", f"- dataset: `{plan.data.out}` (source {plan.data.source})",
        f"- runs: `{plan.runs_dir}`",
        f"- written {datetime.datetime.now().isoformat(timespec='seconds')} by sftkd {__version__}", "",
    ]
    for group in _groups(plan):
        members = [s for s in evaluated if s.group in (group, "")]
        lines += _group_section(plan, stages, group, members, console, problems)
    if plan.paper is not None:  # one run per cell: the first seed's
        lines += _paper_section(plan, stages, [s for s in evaluated if s.seed in (None, *plan.seeds[:1])], problems)
    status = _merged_status(out / "status.json", stages, results)
    lines += ["## Plan status", ""]
    rows = [(r.id, r.status, f"{r.seconds:.1f}", r.note) for r in status]
    rows.append(("report", "done", "", "this file"))
    lines += _md_table(("stage", "status", "seconds", "note"), rows, numeric=(2,))
    lines += ["", f"Time of this invocation before the report: {format_seconds(total_seconds(results))}"
              + ("; rows marked (earlier) come from a previous invocation." if len(status) > len(results) else "."), ""]
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
    records = [dataclasses.asdict(r) for r in status]
    atomic_write_text(out / "status.json", json.dumps({"format": 1, "plan": str(plan.path), "stages": records}, indent=2))
    atomic_write_text(out / "report.md", "\n".join(lines).rstrip() + "\n")
    return problems


def _merged_status(path: Path, stages: Sequence[Stage], results: Sequence[StageResult]) -> list[StageResult]:
    """This invocation's results, plus earlier ones (from status.json) for stages not run now (--only)."""
    earlier: dict[str, dict[str, Any]] = {}
    try:
        earlier = {entry["id"]: entry for entry in json.loads(read_regular_bytes(path, "status"))["stages"]}
    except (SftkdError, ValueError, KeyError, TypeError):
        pass
    current = {r.id: r for r in results}
    merged = []
    for stage in stages:
        if stage.id in current:
            merged.append(current[stage.id])
        elif stage.id in earlier and stage.kind != "report":
            entry = earlier[stage.id]
            note = str(entry.get("note", ""))
            merged.append(StageResult(stage.id, stage.kind, str(entry.get("status", "")), float(entry.get("seconds", 0.0)),
                                      note if note.startswith("(earlier)") else f"(earlier) {note}".rstrip()))
    return merged


def _seed_of(stage: Stage) -> int:
    """The seed a stage's run was trained with: the plan's, else its recipe's train.seed."""
    if stage.seed is not None:
        return stage.seed
    assert stage.recipe is not None
    return stage.recipe.train.seed


def _group_section(plan: Plan, stages: Sequence[Stage], group: str, members: list[Stage],
                   console: Console, problems: list[str]) -> list[str]:
    """One variant (with the shared stages): the compact results table, the verdict on the paper's
    claims, the full comparison per seed (CSV/JSON files) and the figures (first seed's runs)."""
    from sftkd_cli.report.compare import collect_runs, compare_runs, load_run_result
    from sftkd_cli.report.formats import render, to_rich, view
    from sftkd_cli.report.verdict import evaluate_claims, main_table, verdict_markdown

    suffix = f"-{group}" if group else ""
    lines = [f"## Results{': ' + group if group else ''}", ""]
    if not members:
        return lines + ["No evaluated runs yet.", ""]
    alpha = float(plan.compare["alpha"])
    found = {_seed_of(s) for s in members}
    seeds = [seed for seed in plan.seeds if seed in found] or sorted(found)  # the plan's order: its first seed first
    first = [s for s in members if _seed_of(s) == seeds[0]]
    try:
        arms: dict[str, dict[int, Any]] = {}
        for stage in members:
            arms.setdefault(stage.label, {})[_seed_of(stage)] = load_run_result(evaluation_dir(stage))
        metrics = [m for m in plan.compare["metrics"] if m in ("PSNR", "SSIM")] or list(plan.compare["metrics"])[:2]
        lines += main_table(arms, metrics)
        lines += ["", f"Mean ± std over {'seeds x ' if len(seeds) > 1 else ''}validation slices"
                  + (f" (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else f" (seed {seeds[0]})")
                  + "; Δ to the teacher in dB.", ""]
        if "PSNR" in next(iter(next(iter(arms.values())).values())).metrics:
            paper, note = _paper_psnr(plan, members)
            lines += verdict_markdown(evaluate_claims(arms, "PSNR", alpha, paper=paper), alpha, paper_note=note)
    except SftkdError as exc:
        problems.append(f"results{' ' + group if group else ''}: {exc}")
        lines += [f"Results table not possible: {exc}", ""]
    links = []
    for seed in seeds:
        tail = suffix + ("" if seed == seeds[0] else f"-s{seed}")
        try:
            runs, warnings = collect_runs([evaluation_dir(s) for s in members if _seed_of(s) == seed])
            comparison = compare_runs(runs, metrics=list(plan.compare["metrics"]))
            atomic_write_text(plan.report_dir / f"compare{tail}.csv", render(comparison, "csv", alpha))
            atomic_write_text(plan.report_dir / f"compare{tail}.json", render(comparison, "json", alpha))
            if seed == seeds[0]:
                console.print(to_rich(view(comparison, alpha, stacked=True)))
            lines += [f"- warning: {w}" for w in warnings]
            links.append(f"[compare{tail}.csv](compare{tail}.csv) / [.json](compare{tail}.json)"
                         + (f" (seed {seed})" if len(seeds) > 1 else ""))
        except SftkdError as exc:
            problems.append(f"compare{' ' + group if group else ''} seed {seed}: {exc}")
            lines += [f"Comparison not possible (seed {seed}): {exc}", ""]
    if links:
        lines += ["", "Every run with all metrics, Δ to the teacher and Wilcoxon p-values against the student: "
                  + ", ".join(links) + ".", ""]
    for title, make in _figure_makers(plan, group, first):
        try:
            output = make(plan.report_dir / f"{title[0]}{suffix}")
            png = output.paths[0].name
            lines += [f"### {title[1]}", "", f"![{title[1]}]({png}) ([PDF]({output.paths[1].name}))", ""]
        except Exception as exc:  # noqa: BLE001 - a figure must not hide the tables
            problems.append(f"figure {title[0]}{suffix}: {exc}")
            lines += [f"### {title[1]}", "", f"Not drawn: {exc}", ""]
    return lines


def _paper_psnr(plan: Plan, members: Sequence[Stage]) -> tuple[dict[str, float], str]:
    """The paper's PSNR per arm key for a group (Table 1 layout), and a note saying where it comes from."""
    from sftkd_cli.report.compare import METHOD_LABELS, SFT_KD, STD_KD

    paper = plan.paper
    if paper is None:
        return {}, ("This plan has no counterpart in the paper (the paper's numbers are for MRBrainS and ACDC "
                    "at 150 epochs): read the ordering and the tests, not the values.")
    if paper.layout != "table1" or "PSNR" not in paper.metrics:
        return {}, "The paper's numbers for this plan are in the section beside the paper below."
    acceleration = next(s.recipe.data.acceleration for s in members if s.recipe is not None)
    index = paper.metrics.index("PSNR")
    out: dict[str, float] = {}
    slots = {"teacher": ("Teacher", STD_KD), "sft": ("Teacher", SFT_KD), "student": ("Student", STD_KD)}
    for method in plan.methods:
        label = METHOD_LABELS.get(method, method)
        slots.update({f"std-kd-{method}": (label, STD_KD), f"sft-kd-{method}": (label, SFT_KD)})
    for key, (row, setting) in slots.items():
        for i, column in enumerate(paper.columns):
            if _table1_column(column) == (acceleration, setting) and row in paper.rows:
                numbers = _paper_numbers(paper.rows[row][i], len(paper.metrics))
                if numbers is not None:
                    out[key] = numbers[index]
    note = f"Paper: {paper.title}, {acceleration:g}x, PSNR of its Table 1 rows (150 epochs on the full data)."
    return out, note


def _figure_makers(plan: Plan, group: str, members: list[Stage]) -> list[tuple[tuple[str, str], Callable[[Path], Any]]]:
    """(file stem, title) and a function drawing it, for each figure of a group."""
    from sftkd_cli.report import figures

    label = f" ({group})" if group else ""
    metrics = list(plan.figures["metrics"])
    boxes = {s.label: evaluation_dir(s) for s in members}
    curves = {s.label: s.run for s in members if s.model_role is None}
    makers: list[tuple[tuple[str, str], Callable[[Path], Any]]] = [
        (("box", f"{' and '.join(metrics)} per slice{label}"),
         lambda stem: figures.box_plots_from_runs(boxes, stem, metrics, context=f"{plan.name}{label}")),
        (("curves", f"Validation curves{label}"),
         lambda stem: figures.validation_curves_from_runs(curves, stem, plan.figures["curve"], context=f"{plan.name}{label}")),
    ]
    method = _figure_method(plan)
    wanted = [("teacher", "teacher"), ("student", "student")]
    if method:
        wanted += [(f"std-kd-{method}", f"Std-KD ({method})"), (f"sft-kd-{method}", f"SFT-KD ({method})")]
    by_label = {s.label: s for s in members if s.model_role is None}
    grid = {title: evaluation_dir(by_label[key]) for key, title in wanted if key in by_label}
    if grid:
        recipe = next(s.recipe for s in members if s.recipe is not None)
        assert recipe is not None
        box = plan.figures["box"]
        makers.append((("grid", f"Reconstructions and residues{label}"), lambda stem: figures.reconstruction_grid_from_runs(
            plan.data.out, recipe.data.acceleration, grid, stem, plan.figures["volume"], plan.figures["slice"],
            None if box is None else tuple(int(b) for b in box), context=f"{plan.name}{label}")))
    if method and method != "none" and {f"std-kd-{method}", f"sft-kd-{method}"} <= set(by_label):
        kd = [(f"std-kd-{method}", f"Std-KD ({method})"), (f"sft-kd-{method}", f"SFT-KD ({method})"),
              (f"sft-kd-{method}-random", f"SFT-KD random init ({method})")]
        students = {title: by_label[key].run for key, title in kd if key in by_label}
        acceleration = by_label[f"sft-kd-{method}"].recipe.data.acceleration  # type: ignore[union-attr]
        makers.append((("attention", f"Attention-map residues to the teacher (AT taps, Fig. 6){label}"),
                       lambda stem: figures.attention_residues_from_runs(
                           students, stem, plan.data.out, acceleration, plan.figures["volume"], plan.figures["slice"],
                           split=plan.evaluate["split"], checkpoint=plan.evaluate["checkpoint"],
                           context=f"{plan.name}{label}")))
    return makers


def _paper_section(plan: Plan, stages: Sequence[Stage], evaluated: list[Stage], problems: list[str]) -> list[str]:
    """The paper's numbers beside ours, cell by cell."""
    from sftkd_cli.report.formats import format_value

    paper = plan.paper
    assert paper is not None
    lines = [f"## Beside the paper: {paper.title}", ""]
    try:
        if paper.layout == "models":
            text = _our_model_cells(plan, evaluated)
        else:
            ours = _our_paper_cells(plan, evaluated)
            text = {key: "/".join(format_value(m, values[m]) for m in paper.metrics) for key, values in ours.items()}
    except SftkdError as exc:
        problems.append(f"paper table: {exc}")
        return lines + [f"Not possible: {exc}", ""]
    rows = list(paper.rows) + sorted({row for row, _ in text} - set(paper.rows))
    header = ["Metric" if paper.layout == "models" else "Model"] + [f"{c} {who}" for c in paper.columns for who in ("ours", "paper")]
    body = []
    for row in rows:
        cells = [row]
        for i, column in enumerate(paper.columns):
            cells += [text.get((row, column), "-"), paper.rows[row][i] if row in paper.rows else "-"]
        body.append(cells)
    epochs = sorted({s.recipe.train.epochs for s in stages if s.kind in TRAIN_KINDS and s.recipe is not None})
    lines += _md_table(header, body)
    cells = "mean ± std over slices" if paper.layout == "models" else f"{'/'.join(paper.metrics)} (mean over slices)"
    lines += ["", f"Cells are {cells}. Ours: {', '.join(map(str, epochs))} epochs on "
              f"`{plan.data.out}` ({plan.data.source}); the paper: 150 epochs on its own copy of the data.", ""]
    return lines


def _our_paper_cells(plan: Plan, evaluated: list[Stage]) -> dict[tuple[str, str], dict[str, float]]:
    """Our values keyed like the paper block: (row, column) -> {metric: mean}."""
    from sftkd_cli.report.compare import collect_runs, paper_table

    paper = plan.paper
    assert paper is not None
    primary = [s for s in evaluated if s.model_role is None and not s.random_init]  # random init: Table 5 only
    if not primary:
        raise SftkdError("no evaluated runs yet")
    if paper.layout == "table1":
        runs, _ = collect_runs([evaluation_dir(s) for s in primary])
        table = paper_table(runs, metrics=list(paper.metrics))
        cells: dict[tuple[str, str], dict[str, float]] = {}
        for block in table.blocks[:1]:
            for (model, acc, setting), cell in block.cells.items():
                for column in paper.columns:
                    if _table1_column(column) == (acc, setting):
                        cells[(model, column)] = {m: cell.stats[m].mean for m in paper.metrics}
        return cells
    from sftkd_cli.report.compare import load_run_result

    method = _figure_method(plan)
    out = {}
    for stage in primary:
        if stage.trained not in STUDENT_SETTINGS or (stage.method and stage.method != method):
            continue
        assert stage.recipe is not None
        column = STUDENT_SETTINGS[stage.trained]
        if column not in paper.columns:
            continue
        result = load_run_result(evaluation_dir(stage))
        missing = [m for m in paper.metrics if m not in result.metrics]
        if missing:
            raise SftkdError(f"{evaluation_dir(stage)}/metrics.json: no {', '.join(missing)}")
        out[(stage.recipe.model.name, column)] = {m: result.metrics[m].mean for m in paper.metrics}
    return out


def _our_model_cells(plan: Plan, evaluated: list[Stage]) -> dict[tuple[str, str], str]:
    """Our 'mean ± std' for the `models` layout: (metric, column) -> text; KD columns use figures.method."""
    from sftkd_cli.report.compare import load_run_result
    from sftkd_cli.report.formats import format_stat

    paper = plan.paper
    assert paper is not None
    method = _figure_method(plan)
    kinds = {kind: column for column, kind in MODEL_COLUMNS.items() if column in paper.columns}
    text: dict[tuple[str, str], str] = {}
    owners: dict[str, Stage] = {}
    for stage in evaluated:
        kind = stage.trained + ("-random" if stage.random_init else "")
        if kind not in kinds or (stage.method and stage.method != method):
            continue
        column = kinds[kind]
        if column in owners:
            raise SftkdError(f"column {column}: both {owners[column].id} and {stage.id} fill it; "
                             "layout models shows one variant's runs")
        owners[column] = stage
        result = load_run_result(evaluation_dir(stage))
        for metric in paper.metrics:
            if metric not in result.metrics:
                raise SftkdError(f"{evaluation_dir(stage)}/metrics.json: no {metric}")
            text[(metric, column)] = format_stat(metric, result.metrics[metric])
    if not owners:
        raise SftkdError("no evaluated runs yet")
    return text
