"""A plan's stages: building them from a `Plan` (ids, what each needs, resolved recipes),
choosing them (`--only`), and reading their state on disk (complete, partial, new), which is what
lets a plan be run again and continue where it stopped."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sftkd_cli.acquisition import TASKS
from sftkd_cli.config import Recipe, check_distill_schedule, check_sft_pair, load_recipe, naming_origin, parse_overrides, validate
from sftkd_cli.errors import SftkdError, listed_names
from sftkd_cli.name_checks import in_any_case
from sftkd_cli.metrics_file import read_metrics
from sftkd_cli.recipes import find_file  # a plan's recipes: the given path, else the shipped copy
from sftkd_cli.choices import BEST, INIT_RANDOM, INIT_SFT, KIND_ALIASES, LAST, SFT_STUDENT, TRAIN_KINDS, arm_key
from sftkd_cli.reproduce.data import existing_dataset_problem
from sftkd_cli.reproduce.kinds import (
    DONE, RECIPE_FILE, REPORT_MD, RESUMED, ROLE, SHAREABLE, SKIPPED, STATUS_JSON, is_up_to_date,
)
from sftkd_cli.reproduce.report_folder import check_report_folder, read_status, written_for
from sftkd_cli.reproduce.spec import Plan, StageSpec, Variant, as_settings
from sftkd_cli.reproduce.values import as_path
from sftkd_cli.runs import RunDir, load_checkpoint
from sftkd_cli.training.resume import position, resume_point, too_few_epochs
from sftkd_cli.eval_folders import split_folder
from sftkd_cli.run_files import EVAL_PREFIX, METRICS_JSON, RECON_H5


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
    split: str | None = None  # evaluation stages: the plan's stages.evaluate.split


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
    return str(find_file(as_path(folder) / RECIPE_FILE[kind].replace("{method}", method or "")))


def _build_recipe(plan: Plan, stage: Stage, spec: StageSpec, variant: Variant | None, teacher_run: Path | None) -> Recipe:
    """Resolve a training stage's recipe (see the package docstring for the precedence)."""
    fixed = {"data.path": str(plan.data.out), "run.dir": str(plan.runs_dir), "run.name": stage.id,
             "run.role": ROLE[stage.kind]}
    if teacher_run is not None:
        fixed.update({"distill.teacher_run": str(teacher_run), "distill.method": stage.method})
    if stage.seed is not None:
        fixed["train.seed"] = stage.seed
    if stage.kind in KIND_ALIASES["kd"]:
        fixed["distill.init"] = INIT_SFT if stage.kind == "sft-kd" and not stage.random_init else INIT_RANDOM[-1]
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
        with naming_origin(stage.recipe_file, layers):
            validate(recipe)
            if stage.kind == "sft":
                check_sft_pair(recipe)
            if stage.kind in KIND_ALIASES["kd"]:
                check_distill_schedule(recipe)
        task = in_any_case(str(plan.data.options.get("task", "recon")), TASKS)
        if plan.data.source != "prepared" and recipe.data.task != task:
            raise SftkdError(f"data.task {recipe.data.task}: the plan prepares data for task {task} (data.options.task); "
                             f"set data.task: {task} (e.g. in base)")
    except SftkdError as exc:
        raise SftkdError(f"{where}: {exc}") from None
    return recipe


def build_stages(plan: Plan) -> list[Stage]:
    """Every stage of the plan, in an order where each stage comes after what it needs; a report
    folder holding others' files is refused here, before any stage runs (`check_report_folder`)."""
    check_report_folder(plan)
    stages: list[Stage] = [Stage("data", "data", label="data")]

    def add(kind: str, variant: Variant | None, spec: StageSpec, method: str | None = None,
            teacher: Stage | None = None, random_init: bool = False) -> Stage:
        short = arm_key(kind, method, random_init)
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
                            random_init=stage.random_init, seed=stage.seed, split=plan.evaluate["split"]))
        if stage.kind == "sft" and plan.evaluate["sft_student"]:
            stages.append(Stage(f"eval-{stage.id}-student", "evaluate", stage.group, (stage.id,), run=stage.run,
                                model_role="student", label=SFT_STUDENT, recipe=stage.recipe, trained=SFT_STUDENT,
                                seed=stage.seed, split=plan.evaluate["split"]))
    stages.append(Stage("report", "report", label="report"))
    _check_unique_ids(plan, stages)
    return stages


def _check_unique_ids(plan: Plan, stages: Sequence[Stage]) -> None:
    """Two stages with one id would share a run folder and a status row (one of them never runs):
    a variant's name followed by a stage name can spell a shared stage's id (variant `sft`'s
    student and the shared sft's student evaluation: eval-sft-student)."""
    seen: dict[str, Stage] = {}
    for stage in stages:
        first = seen.setdefault(stage.id, stage)
        if first is stage:
            continue
        variants = sorted({s.group for s in (first, stage) if s.group})
        rename = f"rename variant {variants[0]!r}" if variants else "rename one of them"
        raise SftkdError(f"{plan.path}: variants: two stages get the id {stage.id!r} ({_made_by(first)} and "
                         f"{_made_by(stage)}); {rename}")


def _made_by(stage: Stage) -> str:
    """'the teacher of variant a', 'the evaluation of the shared sft-student': who made a stage, for errors."""
    what = f"the evaluation of {stage.trained}" if stage.kind == "evaluate" else f"the {stage.kind}"
    return f"{what} of variant {stage.group!r}" if stage.group else f"{what} shared by the variants"


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


def select(stages: Sequence[Stage], only: Sequence[str] | None) -> set[str]:
    """Ids of the stages matching --only tokens (stage id, glob, kind, 'kd', 'train', 'eval', or
    variant), given as a list whose items may be comma lists (['kd,sft']); none: every stage."""
    tokens = listed_names(only, "only")
    if not tokens:
        return {s.id for s in stages}
    import fnmatch

    chosen: set[str] = set()
    for token in tokens:
        kinds = KIND_ALIASES.get(token, (token,))
        hits = {s.id for s in stages if s.id == token or fnmatch.fnmatchcase(s.id, token) or s.kind in kinds or s.group == token}
        if not hits:
            raise SftkdError(f"--only {token}: matches no stage; stages: {', '.join(s.id for s in stages)}")
        chosen |= hits
    return chosen


#: how a plan's training stage is started anew (there is no --force): said where its last.pt cannot be read
_START_OVER = "delete {run} to train it anew"


def training_state(stage: Stage) -> tuple[str, str]:
    """('complete' | 'partial' | 'new', detail) of a training stage's run directory. Complete only
    where last.pt, if there is one, holds the end of training: a last.pt left behind best.pt (a kill
    between the two writes) is partial, so running the stage resumes and rewrites it before it is
    scored; a last.pt deleted to save space is not asked for back."""
    assert stage.run is not None and stage.recipe is not None
    run = RunDir(stage.run)
    if not run.recipe_file.is_file():
        return "new", ""
    epochs = stage.recipe.train.epochs
    point = resume_point(run, _START_OVER.format(run=stage.run))  # the state --resume would continue from
    if point is None:
        return "partial", "no checkpoint yet"
    epoch, step = position(point.path, point.state)
    # epochs finished, then the steps of the next, numbered as training's own lines number them
    where = f"{epoch}/{epochs} epochs" + (f" and {step} steps of epoch {epoch + 1}" if step else "")
    last = run.checkpoint(LAST)
    if point.path != last and last.is_file():  # a stop between writing best.pt and last.pt: resuming brings it up to date
        return "partial", f"{where} ({last.name} behind {point.path.name})"
    if epoch == epochs and step == 0 and run.checkpoint(BEST).is_file():  # beyond: not the plan's (`plan_conflict`)
        return "complete", where
    return "partial", where


def plan_conflict(stage: Stage) -> str:
    """'' when the training stage's run (begun or finished) was trained with the plan's recipe for
    it (as far as resuming allows: `resume_conflict`), from the same teacher checkpoint
    (`teacher_changed`), for no more epochs than the plan's train.epochs (`trained_beyond`) and on
    its data; else what differs, and what to do. Data at another path counts as the same when the run's checkpoint was trained on
    a dataset of the same manifest fingerprint (moved, not changed)."""
    from sftkd_cli.data.dataset import dataset_fingerprint
    from sftkd_cli.training.session import resume_conflict, teacher_changed

    assert stage.run is not None and stage.recipe is not None
    run = RunDir(stage.run)
    conflict = (resume_conflict(run, stage.recipe) or teacher_changed(run, stage.recipe)
                or trained_beyond(run, stage.recipe))
    was, now = run.load_recipe().data.path, stage.recipe.data.path
    if not conflict and was != now:
        saved = next((c for c in (run.checkpoint(LAST), run.checkpoint(BEST)) if c.is_file()), None)
        trained_on = (load_checkpoint(saved).get("trained_on") or {}).get("fingerprint") if saved else None
        try:
            same = trained_on is not None and trained_on == dataset_fingerprint(now)
        except SftkdError:  # not prepared (yet): cannot tell
            same = False
        if not same:
            conflict = f"{run.recipe_file}: data.path was {was!r}, now {now!r} (other data)"
    return conflict and f"{conflict}; the run differs from the plan: delete {stage.run} to train it anew, or use another --runs-dir"


def trained_beyond(run: RunDir, recipe: Recipe) -> str:
    """'' unless the run has trained into more epochs than the recipe's train.epochs (a finished
    longer run is not the plan's shorter one, as `sftkd train --resume` refuses fewer epochs)."""
    point = resume_point(run, _START_OVER.format(run=run.path))  # the state --resume would continue from
    return "" if point is None else too_few_epochs(recipe.train.epochs, point)


def evaluation_dir(stage: Stage) -> Path:
    """Where an evaluation stage writes metrics.json (RUN, or RUN/eval-<model> for another model;
    below it eval-split-<split>/ for a plan's split other than the run's eval.split, as evaluate does)."""
    assert stage.run is not None
    out = stage.run if stage.model_role is None else stage.run / f"{EVAL_PREFIX}{stage.model_role}"
    other = stage.split is not None and stage.recipe is not None and stage.split != stage.recipe.eval.split
    return split_folder(out, stage.split) if other else out


def figure_method(plan: Plan) -> str | None:
    """The KD method the report's figures show: the plan's figures.method, else its first method."""
    return plan.figures["method"] or (plan.methods[0] if plan.methods else None)


def grid_members(plan: Plan) -> list[tuple[str, str]]:
    """(stage label, title) of the runs the report's reconstruction grid shows, in its order."""
    method = figure_method(plan)
    wanted = [("teacher", "teacher"), ("student", "student")]
    if method:
        wanted += [(arm_key("std-kd", method), f"Std-KD ({method})"), (arm_key("sft-kd", method), f"SFT-KD ({method})")]
    return wanted


def writes_reconstructions(stage: Stage, plan: Plan) -> bool:
    """Whether an evaluation stage writes recon.h5: only for the runs the report's figures read it
    from (`grid_members`); at fastMRI's size each is gigabytes."""
    return stage.model_role is None and stage.label in {label for label, _ in grid_members(plan)}


def evaluated_checkpoint(stage: Stage, plan: Plan) -> Path:
    """The checkpoint file an evaluation stage scores: the plan's evaluate.checkpoint (best or
    last, as the plan's check allows) of the stage's run."""
    assert stage.run is not None
    return RunDir(stage.run).checkpoint(str(plan.evaluate["checkpoint"]))


def evaluation_complete(stage: Stage, plan: Plan) -> bool:
    """metrics.json (with recon.h5 where `writes_reconstructions`) of the checkpoint the stage
    scores (`evaluated_checkpoint`: last.pt moves on when a run is resumed, best.pt only when
    validation improves) as it is now, for the plan's split and checkpoint. Which checkpoint
    the scores are of is told by the sha256 that metrics.json records
    (`evaluate.scores_checkpoint`); for a metrics.json of an earlier sftkd without it, by
    metrics.json being newer than the checkpoint."""
    from sftkd_cli.evaluate import scores_checkpoint

    out, checkpoint = evaluation_dir(stage), evaluated_checkpoint(stage, plan)
    metrics = out / METRICS_JSON
    if not (metrics.is_file() and checkpoint.is_file()):
        return False
    if writes_reconstructions(stage, plan) and not (out / RECON_H5).is_file():
        return False
    try:
        info = read_metrics(metrics)
    except SftkdError:
        return False
    current = scores_checkpoint(info, checkpoint)
    if current is None:  # no digest recorded: its mtime says whether it came after the checkpoint
        current = metrics.stat().st_mtime > checkpoint.stat().st_mtime
    return current and info.get("dataset", {}).get("split") == plan.evaluate["split"] and info.get("checkpoint") == plan.evaluate["checkpoint"]


def _stage_ok(entry: object) -> bool:
    """Whether a stage's entry in status.json says it ran or was up to date (not failed,
    interrupted, or skipped because another failed)."""
    if not isinstance(entry, dict):
        return False
    status = entry.get("status")
    return status in (DONE, RESUMED) or (status == SKIPPED and is_up_to_date(str(entry.get("note", ""))))


def report_complete(plan: Plan, stages: Sequence[Stage]) -> bool:
    """report.md newer than the plan file and than every metrics.json it summarises, written
    without problems (status.json's `problems`: a report written with problems is done again),
    with every stage in its status table ok (a stage it shows failed or skipped, since fixed
    and now up to date, would otherwise be reported failed for good), and written for this runs
    folder, dataset and command-line overrides (a shared `report:` folder: `written_for`)."""
    report = plan.report_dir / REPORT_MD
    if not report.is_file():
        return False
    status = read_status(plan.report_dir / STATUS_JSON)
    if status is None:  # missing or damaged: written again
        return False
    problems, recorded = status.get("problems"), status.get("stages")
    if problems != []:  # some, or a status.json that does not say (an older sftkd's)
        return False
    if status.get("written_for") != written_for(plan):  # another --runs-dir, dataset or overrides (or not said)
        return False
    if not isinstance(recorded, list) or not all(_stage_ok(entry) for entry in recorded):
        return False
    newest = plan.path.stat().st_mtime
    for stage in stages:
        if stage.kind == "evaluate":
            metrics = evaluation_dir(stage) / METRICS_JSON
            if metrics.is_file():
                newest = max(newest, metrics.stat().st_mtime)
    return report.stat().st_mtime > newest


def planned_action(stage: Stage, plan: Plan, stages: Sequence[Stage]) -> tuple[str, str]:
    """What running the stage now would do: ('run' | 'resume' | 'skip' | 'check' | 'refused', detail)."""
    if stage.kind == "data":
        if problem := existing_dataset_problem(plan.data, plan.evaluate["split"], plan.figures["volume"],
                                               plan.figures["slice"], plan.path):
            return "refused", problem
        return ("check", f"use {plan.data.out}") if plan.data.source == "prepared" else ("check", f"prepare {plan.data.out} if needed")
    if stage.kind in TRAIN_KINDS:
        state, detail = training_state(stage)
        if state != "new" and (conflict := plan_conflict(stage)):
            return "refused", conflict
        return {"complete": "skip", "partial": "resume", "new": "run"}[state], detail
    if stage.kind == "evaluate":
        return ("skip", "") if evaluation_complete(stage, plan) else ("run", "")
    return ("skip", "") if report_complete(plan, stages) else ("run", "")
