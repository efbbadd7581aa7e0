"""Which checkpoint `--resume` continues from: `last`, or `best` where a stop cut an epoch's writes short.

At the end of an epoch that improved, the engine writes history.jsonl, then best.pt, then
last.pt, both holding the same complete training state (weights, optimiser, scheduler, scaler,
position). A kill or a failed write between the two leaves last.pt missing (after the first
epoch) or one epoch behind best.pt (its previous epoch end or a mid-epoch save). best.pt is then
the newest state, and resuming from it continues exactly. It is taken only where it is newer
than last.pt and agrees with history.jsonl (the row of its epoch is there, with its validation
L1): best.pt never lies ahead of a completed last.pt otherwise, so no stale state is picked.
(Writing last first would leave a stale best.pt after such a kill instead.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sftkd_cli.choices import BEST, LAST
from sftkd_cli.errors import SftkdError, counted
from sftkd_cli.files import nan_if_null
from sftkd_cli.runs import RunDir, load_checkpoint, parse_history
from sftkd_cli.torchrun import processes, started_with


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint to resume from: its path, its contents and, for best.pt, one line saying why."""

    path: Path
    state: dict[str, Any]
    note: str = ""


def position(path: Path, state: dict[str, Any]) -> tuple[int, int]:
    """Where the checkpoint `state` (read from `path`) stands: (epochs finished, steps of the next applied)."""
    epoch, step = state.get("epoch", 0), state.get("step_in_epoch") or 0
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, step)):
        raise SftkdError(f"{path}: epoch {epoch!r}, step_in_epoch {step!r}; expected whole numbers >= 0 "
                         "(a checkpoint sftkd wrote)")
    return epoch, step


def too_few_epochs(epochs: int, point: ResumePoint) -> str:
    """Why train.epochs `epochs` cannot continue the state at `point`, in one line ('' when it
    can): the run has begun more epochs (an epoch stopped midway counts as begun)."""
    epoch, step = position(point.path, point.state)
    begun = epoch + (1 if step else 0)
    if epochs >= begun:
        return ""
    return f"train.epochs {epochs}: the run has trained into epoch {begun} ({point.path}); expected {begun} or more"


def history_gap(run: RunDir, point: ResumePoint) -> str:
    """Why `run`'s history.jsonl cannot go on from the state at `point`, in one line ('' when it can):
    its first rows (before its end or a line that is not JSON) are not those of epochs 1 to the
    epoch the checkpoint finished. The resume keeps that many rows and rewrites the file, so the
    rows it lacks would be lost for good. More rows than the checkpoint's epochs is a stop between
    the two writes (history first): the extra rows are trained again."""
    epoch, _ = position(point.path, point.state)
    path = run.history_file
    rows, bad = parse_history(path) if path.exists() else ([], None)
    kept = rows[:epoch]
    if len(kept) == epoch and all(isinstance(row, dict) and row.get("epoch") == n for n, row in enumerate(kept, 1)):
        return ""
    epochs = ", ".join(str(row.get("epoch") if isinstance(row, dict) else "?") for row in rows)
    read = counted(len(rows), "row") + (f" (epochs {epochs})" if rows else "")
    if bad is not None:
        what, lost = f"line {bad} is not JSON ({read} before it)", "with only the rows before that line"
    else:
        what, lost = ("is missing" if not path.exists() else f"holds {read}"), "without the rows it lacks"
    return (f"{path}: {what}, but {point.path} has finished {counted(epoch, 'epoch')}: resuming would rewrite it {lost}; "
            "restore the file (e.g. from a backup or a copy of the run), then resume again")


def other_world(point: ResumePoint, world: int) -> str:
    """Why `world` processes cannot continue the state at `point`, in one line ('' when they can):
    it was saved mid-epoch by another number of processes (its `world_size`), and an epoch's sample
    order, split among the processes, depends on it. A checkpoint of an sftkd that recorded no
    `world_size` continues with any number, as it did then."""
    epoch, step = position(point.path, point.state)
    if "world_size" not in point.state:
        return ""
    saved = point.state["world_size"]
    if not isinstance(saved, int) or isinstance(saved, bool) or saved < 1:
        raise SftkdError(f"{point.path}: world_size {saved!r}; expected a whole number >= 1 (a checkpoint sftkd wrote)")
    if not step or saved == world:
        return ""
    return (f"{point.path}: saved in the middle of epoch {epoch + 1} (step {step}) by {processes(saved)}; "
            f"{processes(world)} would train other slices for the rest of it: resume with {started_with(saved)}, "
            "or start over with --force; the number of processes may change at an epoch's end")


def resumed_threads(threads: int, point: ResumePoint | None, device: torch.device, world: int) -> tuple[int, str]:
    """The CPU threads a fit of `world` processes sets (train.threads `threads`; 0: torch's
    default, left as it is) and a line to print first ('' for none).

    On the CPU the thread count changes how kernels split their sums, hence the numbers (~1e-4
    apart after a few steps), and torch's default follows the machine's CPUs. So a one-process
    run resumed on the CPU with train.threads 0 takes the count its checkpoint recorded
    (`threads`, which only a one-process CPU run records): it continues exactly as if
    uninterrupted, on any machine (more threads than CPUs are slower, not different), and the
    line says so where that is not this machine's default. A run that trained on CUDA or under
    torchrun has other numbers anyway and keeps the default; so does a resume under torchrun. A
    checkpoint of an sftkd that recorded no count keeps the default, with a warning that the
    numbers may differ."""
    if threads or point is None or device.type != "cpu" or world != 1:
        return threads, ""
    here, saved = torch.get_num_threads(), point.state.get("threads")
    if "threads" in point.state and saved is None:  # trained on CUDA or by several processes
        return 0, ""
    if saved is None:
        return 0, (f"warning: {point.path}: records no thread count (an older sftkd saved it); resuming with torch's "
                   f"default {counted(here, 'thread')}, so if the run trained with another count its numbers will "
                   "differ slightly from an uninterrupted run's; set train.threads to that count (env.json's threads)")
    if not isinstance(saved, int) or isinstance(saved, bool) or saved < 1:
        raise SftkdError(f"{point.path}: threads {saved!r}; expected a whole number >= 1 (a checkpoint sftkd wrote)")
    if saved == here:
        return saved, ""
    return saved, (f"train.threads 0: resuming with the {counted(saved, 'thread')} the run trained with (torch's "
                   f"default here is {here}), so that it continues exactly as if uninterrupted; set train.threads "
                   "to choose")


def resume_point(run: RunDir, start_over: str = "start over with --force") -> ResumePoint | None:
    """The newest consistent training state of `run` (see the module docstring); None if there is none.
    `start_over`: how the caller's user starts the run anew, said where last.pt cannot be read."""
    last_path, best_path = run.checkpoint(LAST), run.checkpoint(BEST)
    history = run.read_history()
    try:
        last = load_checkpoint(last_path) if last_path.exists() else None
    except SftkdError as exc:
        raise SftkdError(f"{exc}; {_instead_of_last(run, history, start_over)}") from None
    at = position(last_path, last) if last is not None else None
    if at is not None and at >= (len(history), 0):
        return ResumePoint(last_path, last)  # as new as the history: best.pt cannot be newer
    best = _best(best_path, fallback=last is not None)
    if best is not None and _agrees(best_path, best, history) and (at is None or position(best_path, best) > at):
        epoch = position(best_path, best)[0]
        what = "missing" if at is None else (f"saved after epoch {at[0]}" if not at[1] else
                                             f"saved at epoch {at[0] + 1}, step {at[1]}")
        note = (f"{last_path}: {what}; resuming from {best_path}, which holds the complete state after epoch "
                f"{epoch}, the newer")
        return ResumePoint(best_path, best, note)
    return None if last is None else ResumePoint(last_path, last)


def _instead_of_last(run: RunDir, history: list[dict[str, Any]], start_over: str) -> str:
    """What --resume can do when last.pt cannot be read: put it back, or `start_over`; or, where
    best.pt holds the state history.jsonl ends at, remove last.pt to continue from best.pt exactly
    (`resume_point` takes best.pt for a missing last.pt)."""
    best_path = run.checkpoint(BEST)
    try:
        best = _best(best_path, fallback=True)
        exact = best is not None and _agrees(best_path, best, history) and position(best_path, best)[0] == len(history)
    except SftkdError:
        exact = False
    instead = f", remove it to resume from {best_path.name} (the state after epoch {len(history)})" if exact else ""
    return f"restore it{instead}, or {start_over}"


def _best(path: Path, fallback: bool) -> dict[str, Any] | None:
    """best.pt's contents, None if absent; unreadable: None where last.pt can serve (`fallback`), else its error."""
    if not path.exists():
        return None
    try:
        return load_checkpoint(path)
    except SftkdError:
        if fallback:
            return None
        raise


def _agrees(path: Path, best: dict[str, Any], history: list[dict[str, Any]]) -> bool:
    """Whether `best` (read from `path`) is the state saved at the end of an epoch whose history
    row is there, with the validation L1 that row records."""
    epoch, step = position(path, best)
    if step or epoch < 1 or epoch > len(history) or best.get("best_epoch") != epoch:
        return False
    row = history[epoch - 1]
    if row.get("epoch") != epoch:
        return False
    try:
        # null: NaN (no validation slices), as history.jsonl writes it
        logged, saved = nan_if_null(row.get("val_l1")), float(best.get("best_val_l1", math.nan))
    except (TypeError, ValueError):
        return False
    return logged == saved or (math.isnan(logged) and math.isnan(saved))
