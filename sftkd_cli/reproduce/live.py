"""What `sftkd reproduce --jobs N` shows while stages run at once: a live table of the running,
waiting and finished stages, or plain lines when the output is not a terminal.

On a terminal the table is redrawn in place (rich Live, transient: it is gone when the plan ends,
and the status table follows); each stage that ends also prints one line above it, so failures
stay on screen. Elsewhere (a file, a pipe, CI) only those lines are printed, one per event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from sftkd_cli.errors import SftkdError, names_shown
from sftkd_cli.reproduce.display import STATUS_STYLE, format_seconds
from sftkd_cli.choices import TRAIN_KINDS
from sftkd_cli.reproduce.stages import Stage, StageResult
from sftkd_cli.runs import read_history_file
from sftkd_cli.run_files import HISTORY_JSONL

#: finished stages listed under the running ones (the status table lists them all at the end)
RECENT = 6


class Board:
    """The running plan's stages as a table (terminal) or lines (elsewhere); use as a context."""

    def __init__(self, console: Console, todo: Sequence[Stage], slots: int) -> None:
        self.console = console
        self.todo = list(todo)
        self.slots = slots
        self.number = {s.id: n for n, s in enumerate(todo, start=1)}
        self.started: dict[str, float] = {}
        self.finished: list[StageResult] = []
        self.began = time.perf_counter()
        self._live: Live | None = None

    def __enter__(self) -> Board:
        if self.console.is_terminal:
            self._live = Live(self, console=self.console, transient=True, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.__exit__(kind, value, tb)
            self._live = None

    def _prefix(self, stage_id: str) -> str:
        return f"[{self.number[stage_id]}/{len(self.todo)}] {stage_id}"

    def start(self, stage: Stage, where: str = "") -> None:
        """A stage was handed to the executor."""
        self.started[stage.id] = time.perf_counter()
        if self._live is None:
            self.console.print(f"{escape(self._prefix(stage.id))}: started" + (f" ({escape(where)})" if where else ""),
                               highlight=False, soft_wrap=True)

    def finish(self, result: StageResult) -> None:
        """A stage ended (or was skipped without starting): one line, kept on screen."""
        self.started.pop(result.id, None)
        self.finished.append(result)
        style = STATUS_STYLE.get(result.status, "")
        status = f"[{style}]{result.status}[/]" if style else result.status
        took = f" in {format_seconds(result.seconds)}" if result.seconds else ""
        note = f" ({escape(result.note)})" if result.note else ""
        self.console.print(f"{escape(self._prefix(result.id))}: {status}{took}{note}", highlight=False, soft_wrap=True)

    def __rich__(self) -> RenderableType:
        """The live table: running stages (with their epoch), then the waiting and recent finished ones."""
        table = Table(title=self._title(), title_justify="left", show_edge=False, pad_edge=False)
        for column in ("stage", "state", "time", "progress"):
            table.add_column(column, justify="right" if column == "time" else "left", overflow="ellipsis", no_wrap=True)
        now = time.perf_counter()
        by_id = {s.id: s for s in self.todo}
        for stage_id, since in list(self.started.items()):  # a copy: the scheduler changes it meanwhile
            table.add_row(escape(stage_id), "[cyan]running[/]", format_seconds(now - since), escape(_progress(by_id[stage_id])))
        finished = list(self.finished)
        ended = {r.id for r in finished}
        waiting = [s.id for s in self.todo if s.id not in ended and s.id not in self.started]
        if waiting:
            table.add_row(f"{len(waiting)} waiting", "[dim]waiting[/]", "", escape(names_shown(waiting, 4)))
        for result in finished[-RECENT:]:
            style = STATUS_STYLE.get(result.status, "")
            table.add_row(escape(result.id), f"[{style}]{result.status}[/]" if style else result.status,
                          format_seconds(result.seconds) if result.seconds else "", escape(result.note))
        return Group(table)

    def _title(self) -> str:
        elapsed = time.perf_counter() - self.began
        return (f"plan: {len(self.finished)}/{len(self.todo)} stages finished, {len(self.started)} running "
                f"(up to {self.slots} at once), {format_seconds(elapsed)} so far")


def _progress(stage: Stage) -> str:
    """'epoch 3/20' for a training stage (from its history.jsonl), else ''."""
    if stage.kind not in TRAIN_KINDS or stage.run is None or stage.recipe is None:
        return ""
    try:
        rows = read_history_file(stage.run / HISTORY_JSONL) if (stage.run / HISTORY_JSONL).is_file() else []
    except SftkdError:
        return ""
    return f"epoch {len(rows)}/{stage.recipe.train.epochs} done"
