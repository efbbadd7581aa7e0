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

from sftkd_cli.choices import TRAIN_KINDS
from sftkd_cli.data.format import MANIFEST
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import Stage, planned_action, training_state


def waits_for(todo: Sequence[Stage]) -> dict[str, tuple[str, ...]]:
    """For each stage to run, the stages among `todo` that must end before it starts."""
    ids = [s.id for s in todo]
    chosen = set(ids)
    return {s.id: tuple(i for i in ids if i != s.id) if s.kind == "report" else tuple(n for n in s.needs if n in chosen)
            for s in todo}


def blocker(stage: Stage, chosen: set[str], broken: Mapping[str, str], stages: Sequence[Stage], plan: Plan) -> str:
    """Why `stage` cannot run now ('' when it can): a stage it needs failed or was skipped, or
    is left out by --only and not complete (`missing_need`)."""
    for need in stage.needs:
        if need in broken:
            return f"{need} {broken[need]}"
    return missing_need(stage, chosen, stages, plan)


def missing_need(stage: Stage, chosen: set[str], stages: Sequence[Stage], plan: Plan) -> str:
    """Why `stage` can never run in this invocation ('' when it can): a stage it needs is left
    out by --only and not complete (a training run not finished, the data not prepared)."""
    by_id = {s.id: s for s in stages}
    for need in stage.needs:
        if need in chosen:
            continue
        dep = by_id[need]
        if dep.kind in TRAIN_KINDS and training_state(dep)[0] != "complete":
            return f"{need} not complete (not selected by --only)"
        if dep.kind == "data" and plan.data.source != "prepared" and not (plan.data.out / MANIFEST).is_file():
            return f"{need}: {plan.data.out} not prepared (not selected by --only)"
    return ""


def blocked_stages(stages: Sequence[Stage], chosen: set[str], plan: Plan) -> dict[str, str]:
    """The chosen stages that cannot run in this invocation, and why: a need left out by --only
    and not complete (`missing_need`), or a need that is itself blocked. `stages` in plan order."""
    blocked: dict[str, str] = {}
    for stage in stages:
        if stage.id not in chosen:
            continue
        why = next((f"{need} cannot run" for need in stage.needs if need in blocked), "") or missing_need(stage, chosen, stages, plan)
        if why:
            blocked[stage.id] = why
    return blocked


#: what a dry run predicts for a stage that will train (so that what comes after it changes)
TRAINS = ("run", "resume")


def planned_actions(plan: Plan, stages: Sequence[Stage], chosen: set[str]) -> dict[str, tuple[str, str]]:
    """What running the chosen stages now would do, each as (action, detail), in plan order:
    'blocked' where `blocked_stages` says so or a need is refused or blocked (the run skips it),
    else the stage's state on disk (`planned_action`), except after a chosen stage that will
    train, which changes what comes after it, as the run then finds it:
    - an evaluation of it runs (its checkpoint will be newer than its metrics);
    - a distillation from it that has begun is refused (`plan_conflict`: its teacher is no
      longer the one it learnt from once that teacher's best checkpoint changes);
    - the report runs unless every other chosen stage is skipped (`stagework.run_stage`)."""
    blocked = blocked_stages(stages, chosen, plan)
    actions: dict[str, tuple[str, str]] = {}
    for stage in stages:
        if stage.id not in chosen:
            continue
        failing = next((n for n in stage.needs if actions.get(n, ("",))[0] in ("refused", "blocked")), None)
        training = next((n for n in stage.needs if actions.get(n, ("",))[0] in TRAINS), None)
        if stage.id in blocked:
            actions[stage.id] = ("blocked", blocked[stage.id])
        elif failing is not None:
            actions[stage.id] = ("blocked", f"{failing} {actions[failing][0]}")
        elif stage.kind == "report":
            others = [action for sid, (action, _) in actions.items() if sid != stage.id]
            up_to_date = bool(others) and all(action in ("skip", "check") for action in others)
            actions[stage.id] = planned_action(stage, plan, stages) if up_to_date else ("run", "")
        else:
            actions[stage.id] = planned_action(stage, plan, stages)
            if training is not None:
                actions[stage.id] = _after_training(stage, actions[stage.id], training)
    return actions


def _after_training(stage: Stage, action: tuple[str, str], need: str) -> tuple[str, str]:
    """The action of `stage` (on its own: `action`) when its need `need` will train first."""
    if action[0] == "refused":
        return action
    if stage.kind != "evaluate" and action[0] != "run":  # a begun distillation from a teacher that will change
        return "refused", (f"if {need}, which will train first, changes its best checkpoint: {stage.run} was distilled "
                           f"from the one before (delete {stage.run} to train it anew after {need}, or use another "
                           f"--runs-dir); a teacher retrained to the same weights is reused")
    return "run", f"after {need}"


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
             slots: int, rank: Mapping[str, float], speed: Callable[[int], float] | None = None) -> dict[str, Slot]:
    """List scheduling: whenever a slot is free, the ready stage of highest rank starts there;
    a stage needs `seconds[stage]` alone, and while k stages run each advances at `speed(k)`
    (None: 1, stages do not slow each other). Returns each stage's placement (the makespan is
    the largest end)."""
    if slots < 1:
        raise ValueError("slots must be at least 1")
    placed: dict[str, Slot] = {}
    running: dict[str, float] = {}  # stage -> seconds of work left (at speed 1)
    where: dict[str, tuple[float, int]] = {}  # stage -> (start, slot)
    done: set[str] = set()
    left = list(order)
    now = 0.0
    while left or running:
        started = True
        while started:  # a stage of no duration ends at once and may let others start at the same time
            for stage in [s for s, work in running.items() if work <= 1e-6]:
                del running[stage]
                start, slot = where[stage]
                placed[stage] = Slot(start, now, slot)
                done.add(stage)
            ready = by_priority([s for s in left if all(n in done for n in waits[s])], rank, order)
            idle = [k for k in range(slots) if k not in {where[s][1] for s in running}]
            started = bool(ready and idle)
            for stage, slot in zip(ready, idle):
                running[stage] = max(0.0, seconds[stage])
                where[stage] = (now, slot)
                left.remove(stage)
        if not running:
            if left:
                raise ValueError(f"stages wait for stages that never run: {', '.join(left)}")
            break
        rate = 1.0 if speed is None else speed(len(running))
        step = min(running.values()) / rate
        now += step
        for stage in running:
            running[stage] -= step * rate
    return placed


def makespan(placed: Mapping[str, Slot]) -> float:
    """When the last simulated stage ends."""
    return max((p.end for p in placed.values()), default=0.0)
