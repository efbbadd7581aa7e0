"""How long a plan has left: its training stages' relative costs, calibrated on the stages done.

A training stage's cost is its epochs times the parameters it runs forward and backward per
sample (the data are the same for every stage of a plan, so they cancel out):
- teacher / student: the model's parameters;
- SFT: the teacher's, plus the student blocks of the N-1 branches (branch i runs student
  blocks i+1..N: N(N-1)/2 blocks in all, (N-1)/2 students' worth);
- KD: the student's, plus the frozen teacher's forward pass (about a third of forward+backward).
The seconds per unit measured on the stages finished in this invocation give the estimate.
On the demo plan these costs matched the measured stage times to within about 10 %.

Where no progress bar can be drawn (a log file, CI, nohup, Slurm), `ProgressLines` prints a
counted stage (prepare-data's files, evaluate's slices) as plain lines with its own estimate,
in the words of `progress_line`.

An evaluation runs the trained model forward over one split: about a forward pass of one epoch
(`stage_cost`); `sftkd reproduce --jobs N` orders ready stages by these costs, and
`--dry-run --estimate` scales them by measured seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import lru_cache

from sftkd_cli.choices import SFT_STUDENT

#: a forward pass costs about a third of forward + backward
FORWARD_SHARE = 1 / 3


@lru_cache(maxsize=None)
def _size(name: str, channels: int, pad: int) -> tuple[int, int]:
    """(parameters, blocks) of an architecture: built on the meta device (no memory, no RNG draws)."""
    import torch

    from sftkd_cli.models import build_model, count_parameters

    with torch.device("meta"):
        model = build_model(name, channels, pad)
    return count_parameters(model), len(getattr(model, "blocks", ())) or 1


def training_cost(kind: str, recipe) -> float:
    """Relative cost of a training stage of `kind` (teacher, student, sft, std-kd, sft-kd)."""
    return recipe.train.epochs * epoch_cost(kind, recipe)


def stage_cost(kind: str, recipe, trained: str = "") -> float:
    """Relative cost of any stage: training as `training_cost`; an evaluation of a run trained as
    `trained` (its model_role 'student' for an SFT run's student: 'sft-student') a forward pass of
    one epoch of the model evaluated; the data and report stages 0 (not modelled)."""
    if recipe is None or kind in ("data", "report"):
        return 0.0
    if kind == "evaluate":
        channels, pad = recipe.model.channels, recipe.model.pad
        if trained == SFT_STUDENT:
            return FORWARD_SHARE * _size(recipe.sft.student, channels, pad)[0]
        if trained == "sft":
            return FORWARD_SHARE * _size(recipe.sft.teacher, channels, pad)[0]
        return FORWARD_SHARE * _size(recipe.model.name, channels, pad)[0]
    return training_cost(kind, recipe)


def epoch_cost(kind: str, recipe) -> float:
    """Relative cost of one training epoch of a stage of `kind` (see the module docstring)."""
    channels, pad = recipe.model.channels, recipe.model.pad
    if kind == "sft":
        teacher, blocks = _size(recipe.sft.teacher, channels, pad)
        student, _ = _size(recipe.sft.student, channels, pad)
        per_epoch = teacher + (blocks - 1) / 2 * student
    elif kind in ("std-kd", "sft-kd"):
        per_epoch = _size(recipe.sft.student, channels, pad)[0] + FORWARD_SHARE * _size(recipe.sft.teacher, channels, pad)[0]
    else:
        per_epoch = _size(recipe.model.name, channels, pad)[0]
    return per_epoch


def seconds_left(done: Sequence[tuple[float, float]], remaining: Sequence[float]) -> float | None:
    """Estimated seconds for the `remaining` costs, from (cost, seconds) of stages done; None before any."""
    cost, seconds = sum(c for c, _ in done), sum(s for _, s in done)
    if cost <= 0 or seconds <= 0:
        return None
    return seconds / cost * sum(remaining)


def progress_line(number: int, total: int, elapsed: float, left: float | None) -> str:
    """'plan: 3/13 stages, 4.2 min so far, about 8 min left' (no estimate before a training stage ends)."""
    line = f"plan: {number}/{total} stages, {elapsed / 60:.1f} min so far"
    if left is None:
        return line + " (time left: after the first training stage)"
    return f"{line}, {time_left_text(left)}"


def time_left_text(left: float) -> str:
    """'about 8 min left', or 'under 2 min left' when there are less than 90 s to go."""
    return f"about {left / 60:.0f} min left" if left >= 90 else "under 2 min left"


class ProgressLines:
    """A `progress(stage, done, total)` callback that prints plain lines, for output that is not a
    terminal (where a rich bar shows nothing): 'prepare-data: writing h5 files 120/973, 3.1 min so
    far, about 4 min left' once `every` seconds have passed since the stage began or since its
    previous line, and at its last item when it printed one before (a quick stage prints nothing).
    The time left is measured since the previous line, so items that went fast (files a resumed
    run kept) do not make the rest look fast for long. `names` words the stages."""

    #: seconds between two lines of a stage
    EVERY = 30.0

    def __init__(self, say: Callable[[str], None], prefix: str, names: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.prefix, self.names, self.clock = say, prefix, names or {}, clock
        self.started = self.last = self.clock()  # `last`: the previous call, when a new stage began
        self.stage = ""
        self.mark = (self.started, 0)  # (time, items done) at the stage's previous line, or when it began
        self.printed = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self.stage:
            self.stage, self.mark, self.printed = stage, (self.last, 0), False
        self.last = now
        since, before = self.mark
        if not (now - since >= self.EVERY or (done >= total and self.printed)):
            return
        line = f"{self.prefix}: {self.names.get(stage, stage)} {done}/{total}, {(now - self.started) / 60:.1f} min so far"
        if done < total and done > before and now > since:
            line += f", {time_left_text((now - since) / (done - before) * (total - done))}"
        self.say(line)
        self.mark, self.printed = (now, done), True
