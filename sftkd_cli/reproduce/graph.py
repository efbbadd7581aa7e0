"""A plan's stages as a dependency graph: what each stage waits for, why a stage cannot run,
which ready stage goes first, and list scheduling of the graph on N slots.

The scheduler (`schedule`) and the estimate (`estimate`) use the same rules, so that the
simulated schedule is the one `--jobs N` runs:
- a stage waits for the stages it needs among those run; the report waits for every other one;
- among the ready stages, the one with the longest chain of work after it goes first (its
  "rank": its own cost plus the largest rank of the stages waiting for it), ties in plan order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sftkd_cli.reproduce.kinds import TRAIN_KINDS
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import Stage, training_state


def waits_for(todo: Sequence[Stage]) -> dict[str, tuple[str, ...]]:
    """For each stage to run, the stages among `todo` that must end before it starts."""
    ids = [s.id for s in todo]
    chosen = set(ids)
    return {s.id: tuple(i for i in ids if i != s.id) if s.kind == "report" else tuple(n for n in s.needs if n in chosen)
            for s in todo}


def blocker(stage: Stage, chosen: set[str], broken: Mapping[str, str], stages: Sequence[Stage], plan: Plan) -> str:
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


def ranks(order: Sequence[str], waits: Mapping[str, Sequence[str]], cost: Callable[[str], float]) -> dict[str, float]:
    """Each stage's cost plus the largest rank of the stages that wait for it (`order`: a
    topological order, e.g. the plan's)."""
    after: dict[str, list[str]] = {i: [] for i in order}
    for stage, needs in waits.items():
        for need in needs:
            after[need].append(stage)
    rank: dict[str, float] = {}
    for stage in reversed(order):
        rank[stage] = cost(stage) + max((rank[n] for n in after[stage]), default=0.0)
    return rank


def by_priority(ready: Sequence[str], rank: Mapping[str, float], order: Sequence[str]) -> list[str]:
    """The ready stages in the order they start: highest rank first, ties in plan order."""
    position = {stage: n for n, stage in enumerate(order)}
    return sorted(ready, key=lambda s: (-rank.get(s, 0.0), position[s]))


@dataclass(frozen=True)
class Slot:
    """Where a simulated stage ran: its start and end (seconds from the plan's start) and slot."""

    start: float
    end: float
    slot: int


def simulate(order: Sequence[str], waits: Mapping[str, Sequence[str]], seconds: Mapping[str, float],
             slots: int, rank: Mapping[str, float]) -> dict[str, Slot]:
    """List scheduling: whenever a slot is free, the ready stage of highest rank starts there and
    runs `seconds[stage]`; returns each stage's placement (the makespan is the largest end)."""
    if slots < 1:
        raise ValueError("slots must be at least 1")
    placed: dict[str, Slot] = {}
    free_at = [0.0] * slots  # when each slot is next free
    left = list(order)
    now = 0.0
    while left:
        placed_now = True
        while placed_now:  # stages of no duration end at once and may free others at the same time
            done = {s for s, p in placed.items() if p.end <= now}
            ready = by_priority([s for s in left if all(n in done for n in waits[s])], rank, order)
            idle = [k for k in range(slots) if free_at[k] <= now]
            placed_now = bool(ready and idle)
            for stage, slot in zip(ready, idle):
                placed[stage] = Slot(now, now + max(0.0, seconds[stage]), slot)
                free_at[slot] = placed[stage].end
                left.remove(stage)
        later = [p.end for p in placed.values() if p.end > now]
        if left and not later:
            raise ValueError(f"stages wait for stages that never run: {', '.join(left)}")
        now = min(later, default=now)
    return placed


def makespan(placed: Mapping[str, Slot]) -> float:
    """When the last simulated stage ends."""
    return max((p.end for p in placed.values()), default=0.0)
