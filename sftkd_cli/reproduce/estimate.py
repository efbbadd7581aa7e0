"""`sftkd reproduce PLAN --dry-run --estimate [--jobs N]`: the expected wall time of a plan on
this machine, with N stages at once.

With a chosen stage that the dry run shows refused (its run differs from the plan) the plan cannot
run as it stands: no estimate, and no probe. Otherwise, first the seconds each chosen stage takes
alone (as with --jobs 1), none for a stage that the dry run shows skipped or blocked
(`graph.planned_actions`: a stage after one that trains runs):
- a training stage: its epochs left times the seconds of one epoch, which
  is measured (the median per-epoch `seconds` of its run's history.jsonl), else its cost
  (`eta.epoch_cost`) times the seconds per cost unit measured on the plan's other runs, else on
  a short probe (PROBE_STEPS training steps of the plan's first teacher or student stage on the
  plan's data, in a temporary folder);
- an evaluation: what its last log says (<report>/logs/<stage>.log), else its cost
  (`eta.stage_cost`) at the same seconds per unit, plus EVAL_OVERHEAD;
- the data and report stages: what their last log says, else not counted.
Without any measured epoch and without prepared data (no probe), the stage costs stand in for
seconds, and only the ratio of the two wall times is known.

Then `graph.simulate` schedules the stages on the executor's slots exactly as `--jobs N` starts
them (highest rank first), with stages at once slowing each other down (`Sharing`): on the CPU,
a stage runs with cpus // N threads instead of all of them unless the recipe sets train.threads
(scaling taken as linear), and k stages at once share the CPUs when they want more threads than
there are; on CUDA, the stages on one GPU share it (each assumed to fill it). The measured epochs are taken as they ran (on a busy machine, slower).
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sftkd_cli import eta
from sftkd_cli.data.format import MANIFEST
from sftkd_cli.errors import SftkdError, counted
from sftkd_cli.reproduce.display import format_seconds
from sftkd_cli.reproduce.executor import cpu_count, gpu_count
from sftkd_cli.reproduce.graph import Slot, makespan, planned_actions, ranks, simulate, waits_for
from sftkd_cli.reproduce.jobs import stage_log
from sftkd_cli.choices import PER_GPU, TRAIN_KINDS
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import Stage, plan_conflict
from sftkd_cli.runs import read_history_file
from sftkd_cli.run_files import HISTORY_JSONL, RECIPE_YAML

#: training steps of the probe (its first step includes the warm-up: the estimate errs long)
PROBE_STEPS = 3
#: seconds an evaluation takes besides its forward passes (loading, latency timing, files)
EVAL_OVERHEAD = 1.0


@dataclass(frozen=True)
class StageTime:
    """A stage's seconds alone, and how they were found."""

    id: str
    seconds: float
    how: str  # complete, refused, blocked, measured, scaled, probe, log, cost, not counted


@dataclass(frozen=True)
class PlanEstimate:
    """The stages' times and the simulated schedule with `jobs` (`slots` at once)."""

    jobs: int
    slots: int
    sharing: Sharing
    times: tuple[StageTime, ...]
    placed: dict[str, Slot]
    alone: float  # one stage after another (--jobs 1)
    wall: float  # with `jobs`, stages sharing the machine, plus the workers' start
    in_seconds: bool  # False: stage costs stood in for seconds (only wall / alone means something)
    note: str = ""
    refused: tuple[str, ...] = ()  # stages the dry run shows refused: the plan cannot run, no times


def estimate_plan(plan: Plan, stages: Sequence[Stage], chosen: set[str], jobs: int, *, per_gpu: int = PER_GPU,
                  cpus: int | None = None, gpus: int | None = None, probe: bool = True) -> PlanEstimate:
    """The estimate for the chosen stages with `jobs` at once on `cpus` CPUs and `gpus` GPUs (None:
    this machine's). With a stage refused (its run differs from the plan) the plan cannot run as it
    stands, so there is no wall time to give: only the refused stages, and no probe is trained."""
    cpus = cpu_count() if cpus is None else cpus
    gpus = gpu_count() if gpus is None else gpus
    todo = [s for s in stages if s.id in chosen]
    actions = planned_actions(plan, stages, chosen)
    slots = min(jobs, per_gpu * gpus) if gpus else jobs
    sharing = Sharing.of(todo, jobs, cpus, gpus)
    refused = tuple(s.id for s in todo if actions[s.id][0] == "refused")
    if refused:
        return PlanEstimate(jobs, slots, sharing, (), {}, 0.0, 0.0, False, refused=refused)
    rate, how, note = seconds_per_unit(plan, stages, probe)
    times = tuple(stage_time(plan, stage, rate, how, actions[stage.id][0]) for stage in todo)
    seconds = {t.id: t.seconds for t in times}
    order = [s.id for s in todo]
    waits = waits_for(todo)
    by_id = {s.id: s for s in todo}
    rank = ranks(order, waits, lambda sid: eta.stage_cost(by_id[sid].kind, by_id[sid].recipe, by_id[sid].trained))
    placed = simulate(order, waits, seconds, slots, rank, sharing.speed)
    alone = math.fsum(seconds.values())
    wall = makespan(placed) if jobs > 1 else alone
    if jobs > 1 and rate is not None and alone > 0:  # workers start only for work to do
        wall += worker_start_seconds()
    return PlanEstimate(jobs, slots, sharing, times, placed, alone, wall, rate is not None, note)


def seconds_per_unit(plan: Plan, stages: Sequence[Stage], probe: bool = True) -> tuple[float | None, str, str]:
    """(seconds per cost unit of a training epoch, how found, note): from the plan's runs with
    timed epochs, else a probe on the plan's data, else (None, 'cost', why)."""
    seconds = units = 0.0
    for stage in stages:
        epoch = measured_epoch(stage)
        if epoch is not None:
            seconds += epoch
            units += eta.epoch_cost(stage.kind, stage.recipe)
    if units > 0 and seconds > 0:
        return seconds / units, "scaled", ""
    supervised = next((s for s in stages if s.kind in ("teacher", "student")), None)
    prepared = plan.data.source == "prepared" or (plan.data.out / MANIFEST).is_file()
    if not (probe and supervised is not None and prepared):
        why = "no run of the plan has a timed epoch" + ("" if prepared else f" and {plan.data.out} is not prepared (no probe)")
        return None, "cost", why
    epoch = probe_epoch(supervised)
    return epoch / eta.epoch_cost(supervised.kind, supervised.recipe), "probe", f"probe: {PROBE_STEPS} steps of {supervised.id}"


def measured_epoch(stage: Stage) -> float | None:
    """The median seconds of the epochs in the stage's history.jsonl (None: a training stage without
    any, or whose run was trained with another recipe than the plan's, e.g. shorter epochs). The
    median, as one epoch can be far off: the first measures memory layouts, and an epoch resumed
    in its middle records only the part after the resume."""
    if stage.kind not in TRAIN_KINDS or stage.run is None:
        return None
    history = stage.run / HISTORY_JSONL
    try:
        if not (stage.run / RECIPE_YAML).is_file() or plan_conflict(stage):
            return None
        rows = read_history_file(history) if history.is_file() else []
    except SftkdError:  # a damaged recipe.yaml or history: no measurement
        return None
    times = [float(r["seconds"]) for r in rows if isinstance(r.get("seconds"), (int, float)) and r["seconds"] > 0]
    return statistics.median(times) if times else None


def stage_time(plan: Plan, stage: Stage, rate: float | None, how: str, action: str) -> StageTime:
    """The seconds `stage` takes alone (see the module docstring); `rate`: seconds per cost unit;
    `action`: what the dry run shows it doing (`graph.planned_actions`)."""
    scale = 1.0 if rate is None else rate  # without a rate the costs stand in for seconds
    if action in ("skip", "refused", "blocked"):
        return StageTime(stage.id, 0.0, "complete" if action == "skip" else action)
    if stage.kind in TRAIN_KINDS:
        assert stage.recipe is not None
        done = len(_history(stage)) if action == "resume" else 0
        left = max(0, stage.recipe.train.epochs - done)
        epoch = measured_epoch(stage)
        if epoch is not None and rate is not None:
            return StageTime(stage.id, left * epoch, "measured")
        return StageTime(stage.id, left * scale * eta.epoch_cost(stage.kind, stage.recipe), how)
    logged = logged_seconds(plan, stage)
    if logged is not None and rate is not None:
        return StageTime(stage.id, logged, "log")
    if stage.kind == "evaluate":
        overhead = EVAL_OVERHEAD if rate is not None else 0.0
        return StageTime(stage.id, scale * eta.stage_cost(stage.kind, stage.recipe, stage.trained) + overhead, how)
    return StageTime(stage.id, 0.0, "not counted")


def _history(stage: Stage) -> list[dict]:
    assert stage.run is not None
    try:
        return read_history_file(stage.run / HISTORY_JSONL) if (stage.run / HISTORY_JSONL).is_file() else []
    except SftkdError:
        return []


def logged_seconds(plan: Plan, stage: Stage) -> float | None:
    """The seconds of the stage's last 'done' or 'resumed' in its log (written with --jobs), if any."""
    log = stage_log(plan, stage)
    if not log.is_file():
        return None
    try:
        text = log.read_text(encoding="utf-8", errors="replace")[-200_000:]
    except OSError:
        return None
    found = re.findall(rf"^{re.escape(stage.id)}: (?:done|resumed) in ([0-9.]+) s", text, flags=re.MULTILINE)
    return float(found[-1]) if found else None


@dataclass(frozen=True)
class Sharing:
    """How stages at once slow each other: each runs with `threads` of the `alone` threads it
    would have by itself, on `cpus` CPUs; or (gpus > 0) the stages on one GPU share it."""

    cpus: int
    threads: int = 1
    alone: int = 1
    gpus: int = 0

    @classmethod
    def of(cls, todo: Sequence[Stage], jobs: int, cpus: int, gpus: int) -> Sharing:
        if gpus:
            return cls(cpus, gpus=gpus)
        fixed = [s.recipe.train.threads for s in todo if s.recipe is not None and s.recipe.train.threads]
        if fixed:  # the recipes' threads, alone or not
            return cls(cpus, max(fixed), max(fixed))
        return cls(cpus, max(1, cpus // jobs) if jobs > 1 else cpus, cpus)  # torch's default alone: the CPUs

    def speed(self, running: int) -> float:
        """Each stage's speed (1: as alone) while `running` stages run at once."""
        if self.gpus:
            return 1.0 / math.ceil(running / self.gpus)
        return self.threads / self.alone * min(1.0, self.cpus / (running * self.threads))

    def text(self, slots: int) -> str:
        if self.gpus:
            return f"up to {counted(slots, 'stage')} at once on {counted(self.gpus, 'GPU')}, sharing each GPU (assumed full)"
        return (f"up to {counted(slots, 'stage')} at once on {counted(self.cpus, 'CPU')}, {counted(self.threads, 'thread')} each; "
                f"with {slots} at once each runs at {self.speed(slots):.0%} of its speed alone")


def probe_epoch(stage: Stage) -> float:
    """Seconds of one training epoch of `stage` (teacher or student), from PROBE_STEPS steps and
    a short validation trained in a temporary folder on the plan's data."""
    from sftkd_cli.training.session import open_datasets
    from sftkd_cli.training.supervised import train_supervised

    recipe = stage.recipe
    assert recipe is not None
    batch = recipe.train.batch_size
    train, val = open_datasets(recipe)
    steps = math.ceil(len(train) / batch)
    if recipe.train.max_steps_per_epoch:
        steps = min(steps, recipe.train.max_steps_per_epoch)
    probe_val = min(len(val), batch)
    with tempfile.TemporaryDirectory(prefix="sftkd-probe-") as folder:
        probe = dataclasses.replace(
            recipe,
            run=dataclasses.replace(recipe.run, dir=folder, name="probe"),
            train=dataclasses.replace(recipe.train, epochs=1, max_steps_per_epoch=min(PROBE_STEPS, steps)),
            data=dataclasses.replace(recipe.data, max_val_slices=max(1, probe_val)),
        )
        train_supervised(probe, console=Console(file=io.StringIO()))
        row = read_history_file(Path(folder) / "probe" / HISTORY_JSONL)[0]
    probe_units = min(PROBE_STEPS, steps) + eta.FORWARD_SHARE * max(1, probe_val) / batch
    full_units = steps + eta.FORWARD_SHARE * len(val) / batch
    return float(row["seconds"]) / probe_units * full_units


def worker_start_seconds() -> float:
    """Seconds a fresh worker process takes to import what a stage needs (measured once here)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sftkd_cli.reproduce.jobs"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def print_estimate(estimate: PlanEstimate, console: Console) -> None:
    """The stages' times and simulated schedule, then the expected wall time; with stages refused,
    only that the plan cannot run as it stands."""
    if estimate.refused:
        console.print(f"no estimate: the plan cannot run as it stands: {counted(len(estimate.refused), 'stage')} refused "
                      f"({', '.join(estimate.refused)}; the table above says why), so it has no wall time",
                      highlight=False, markup=False, soft_wrap=True)
        return
    total = estimate.alone or 1.0
    unit = format_seconds if estimate.in_seconds else (lambda v: f"{100 * v / total:.1f}%")  # of one after another
    table = Table(title=f"estimate with --jobs {estimate.jobs}", title_justify="left")
    for column in ("stage", "alone", "from", "start", "end"):
        table.add_column(column, justify="left" if column in ("stage", "from") else "right")
    for time_ in estimate.times:
        slot = estimate.placed.get(time_.id)
        table.add_row(escape(time_.id), unit(time_.seconds) if time_.seconds else "-", time_.how,
                      unit(slot.start) if slot else "", unit(slot.end) if slot else "")
    console.print(table)
    if estimate.note:
        console.print(estimate.note, style="dim", highlight=False)
    if estimate.jobs > 1:
        console.print(estimate.sharing.text(estimate.slots), style="dim", highlight=False)
    ratio = estimate.wall / estimate.alone if estimate.alone else 1.0
    if estimate.in_seconds:
        console.print(f"expected wall time with --jobs {estimate.jobs}: {format_seconds(estimate.wall)} "
                      f"(one stage after another: {format_seconds(estimate.alone)})", highlight=False)
    else:
        console.print(f"expected wall time with --jobs {estimate.jobs}: {ratio:.2f} of one stage after another "
                      "(no time measured: stage costs stand in for seconds)", highlight=False)
