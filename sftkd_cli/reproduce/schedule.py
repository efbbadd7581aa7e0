"""Running a plan's stages as a dependency graph, several at once (`sftkd reproduce --jobs N`).

The scheduler decides; an executor (`reproduce.executor`) runs. Whenever the executor has a free
slot, the ready stage of highest rank starts (`graph`: a stage is ready when every stage it waits
for has ended; the report waits for all). The rules are those of the one-after-another runner:
- a stage whose need failed or was skipped is skipped (and so are the stages that need it); a
  need left out by --only must be complete on disk;
- a failing stage stops only what needs it; with --stop-on-error (keep_going=False) no stage
  starts after a failure (those running finish);
- Ctrl-C (or SIGTERM to this process) stops every running stage through the executor (training
  saves its checkpoint: each stage resumes next time) and waits for them.
Each stage's output goes to its log (`jobs.stage_log`); the board (`live`) shows the progress.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from sftkd_cli import eta
from sftkd_cli.reproduce.executor import Executor
from sftkd_cli.reproduce.graph import blocker, by_priority, ranks, waits_for
from sftkd_cli.reproduce.jobs import StageJob, stage_log
from sftkd_cli.reproduce.kinds import FAILED, INTERRUPTED, SKIPPED
from sftkd_cli.reproduce.live import Board
from sftkd_cli.signals import Interrupts, on_signals
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import Stage, StageResult
from sftkd_cli.reproduce.stagework import failure_note

#: seconds between two looks at the running stages (the board's clock and epochs)
TICK = 0.5


@dataclass
class GraphRun:
    """The results of the stages considered (plan order), and whether Ctrl-C stopped the run."""

    results: list[StageResult] = field(default_factory=list)
    interrupted: bool = False
    signum: int = signal.SIGINT  # the signal that stopped it


def stage_cost(stage: Stage) -> float:
    """The stage's relative cost (`eta.stage_cost`): what orders the ready stages."""
    return eta.stage_cost(stage.kind, stage.recipe, stage.trained)


def run_graph(
    plan: Plan,
    stages: Sequence[Stage],
    todo: Sequence[Stage],
    chosen: set[str],
    executor: Executor,
    *,
    keep_going: bool = True,
    trainers: Mapping[str, Callable[..., Any]] | None = None,
    console: Console,
) -> GraphRun:
    """Run `todo` (the chosen stages, plan order) through `executor`; see the module docstring.
    `console` shows the board; each training job gets its kind's function of `trainers` (None:
    the library's), which must pickle (an importable function)."""
    order = [s.id for s in todo]
    by_id = {s.id: s for s in todo}
    waits = waits_for(todo)
    rank = ranks(order, waits, lambda sid: stage_cost(by_id[sid]))
    number = {sid: n for n, sid in enumerate(order, start=1)}
    results: dict[str, StageResult] = {}
    broken: dict[str, str] = {}  # stage id -> failed, skipped or interrupted: stages that need it cannot run
    left, running = list(order), set()
    stopped = ""
    outcome = GraphRun()

    def record(result: StageResult, board: Board) -> None:
        nonlocal stopped
        results[result.id] = result
        running.discard(result.id)
        board.finish(result)
        if result.status in (FAILED, INTERRUPTED):
            broken[result.id] = result.status
            if not keep_going and not stopped:
                stopped = f"not run: stopped after {result.id} failed (--stop-on-error)"

    ctrl_c = Interrupts()  # `pressed` also when Python dropped the KeyboardInterrupt inside a finalizer
    # closing() first: the executor closes after the old handlers are back (Ray's close restores its own)
    with closing(executor), Board(console, todo, executor.slots) as board, \
            on_signals(ctrl_c, signal.SIGINT, signal.SIGTERM):  # SIGTERM stops the plan as Ctrl-C does
        try:
            while left or running:
                if ctrl_c.pressed:  # raised where Python dropped it
                    raise KeyboardInterrupt
                changed = True
                while changed:  # a skipped stage can make others ready (and skipped) at once
                    changed = False
                    ready = [sid for sid in left if all(n in results for n in waits[sid])]
                    for sid in by_priority(ready, rank, order):
                        stage = by_id[sid]
                        why = stopped or blocker(stage, chosen, broken, stages, plan)
                        if why:
                            left.remove(sid)
                            record(StageResult(sid, stage.kind, SKIPPED, note=why), board)
                            broken[sid] = SKIPPED
                            changed = True
                        elif len(running) < executor.slots:
                            left.remove(sid)
                            done_before = tuple(results[i] for i in order if i in results)
                            own = None if trainers is None else {k: f for k, f in trainers.items() if k == stage.kind}
                            try:
                                executor.submit(StageJob(plan, stage, tuple(stages), done_before, number[sid], len(order),
                                                         stage_log(plan, stage), own))
                            except Exception as exc:  # noqa: BLE001 - e.g. a trainer that does not pickle
                                record(StageResult(sid, stage.kind, FAILED, note=f"not started: {failure_note(exc)}"), board)
                                changed = True
                                continue
                            running.add(sid)
                            board.start(stage)
                if not running:
                    for sid in list(left):  # cannot happen (every wait is among the stages run); never loop forever
                        left.remove(sid)
                        record(StageResult(sid, by_id[sid].kind, SKIPPED, note="not run: waits for a stage that never ran"), board)
                    break
                for result in executor.wait(TICK):
                    record(result, board)
        except KeyboardInterrupt:
            outcome.interrupted, outcome.signum = True, ctrl_c.signum
            for result in executor.cancel():
                record(result, board)
    outcome.results = [results[sid] for sid in order if sid in results]
    return outcome
