"""What `sftkd reproduce` prints: the dry-run table, the status table and durations."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from sftkd_cli.reproduce.graph import planned_actions
from sftkd_cli.choices import SFT_STUDENT, TRAIN_KINDS
from sftkd_cli.errors import counted
from sftkd_cli.reproduce.kinds import DONE, FAILED, INTERRUPTED, RESUMED, SKIPPED
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import Stage, StageResult


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
    """The dry-run table: what each selected stage would do, its run directory and recipe (relative
    to the plan's runs folder and to the folder all recipes share, which the line below it names: the
    table fits a narrow log without hiding which recipe a stage uses)."""
    files = {stage.recipe_file for stage in stages if stage.id in chosen and stage.recipe_file}
    shared = os.path.commonpath([os.path.dirname(file) for file in files]) if files else ""
    runs = str(plan.runs_dir)
    table = Table(show_lines=True)  # a line between stages: their cells may take several lines
    for column in ("stage", "action", "model", "epochs", "run", "recipe"):
        table.add_column(column, overflow="fold")  # run and recipe: PathCell
    actions = planned_actions(plan, stages, chosen)
    for stage in stages:
        if stage.id not in chosen:
            continue
        action, detail = actions[stage.id]
        recipe = stage.recipe if stage.kind in TRAIN_KINDS else None
        table.add_row(
            escape(stage.id), escape(action + (f" ({detail})" if detail else "")),
            model_text(stage),
            str(recipe.train.epochs) if recipe else "",
            PathCell(_under(str(stage.run or (plan.report_dir if stage.kind == "report" else plan.data.out)), runs)),
            PathCell(os.path.relpath(stage.recipe_file, shared or ".") if stage.recipe_file else ("defaults" if recipe else "")),
        )
    # the plan and the folders above and below the table, not as its title and caption: those wrap
    # at the table's width, which breaks a long path (and a search for it) over lines
    console.print(f"plan {plan.name} ({plan.path})", soft_wrap=True, markup=False, highlight=False)
    console.print(table)
    console.print(f"runs in {runs}/" + (f", recipes in {shared}/" if shared else ""), soft_wrap=True, markup=False,
                  highlight=False)


def _under(path: str, folder: str) -> str:
    """`path` relative to `folder` where it lies in it, else as it is."""
    inside = os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)
    return os.path.relpath(path, folder) if inside else path


class PathCell:
    """A path in a table cell, whole, broken only after a "/" where it does not fit on one line:
    never folded mid-name (a part longer than the column is the one exception), so every stage's
    recipe and run folder stays readable in an 80-column log."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.parts = [part + "/" for part in path.split("/")]
        self.parts[-1] = self.parts[-1][:-1]  # 'a/', 'b/', 'c.yaml'

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(max(cell_len(part) for part in self.parts), cell_len(self.path))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = [""]
        for part in self.parts:
            if lines[-1] and cell_len(lines[-1] + part) > options.max_width:
                lines.append("")
            lines[-1] += part
        yield Text("\n".join(lines), overflow="fold")


def model_text(stage: Stage) -> str:
    """The architecture(s) a stage trains or evaluates, for the tables."""
    recipe = stage.recipe
    if recipe is None:
        return ""
    if stage.kind == "sft" or stage.trained == "sft":
        return f"{recipe.sft.teacher}+{recipe.sft.student}"
    if stage.trained == SFT_STUDENT:
        return recipe.sft.student
    return recipe.model.name


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def total_seconds(results: Sequence[StageResult]) -> float:
    return math.fsum(r.seconds for r in results)


def failed_line(failed: list[StageResult], limit: int = 200) -> str:
    """The closing error of a plan whose stages failed: which, and what the first one said (one
    line, cut to `limit` characters), so that a log's last line tells the cause."""
    line = (f"{counted(len(failed), 'stage')} failed: {', '.join(r.id for r in failed)} (see the status table); "
            "fix and run the same command again")
    note = " ".join(failed[0].note.split())
    if not note:
        return line
    if len(note) > limit:
        note = note[: limit - 3] + "..."
    return f"{line}. {'First, ' if len(failed) > 1 else ''}{failed[0].id}: {note}"
