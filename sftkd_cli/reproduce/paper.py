"""The plan's `paper:` block: the paper's published numbers (rows x columns of cells), checked
when the plan is read and parsed again by the report that shows them beside ours."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sftkd_cli.choices import METRIC_NAMES, PAPER_METRICS
from sftkd_cli.errors import SftkdError, did_you_mean
from sftkd_cli.reproduce.kinds import MODEL_COLUMNS
from sftkd_cli.reproduce.values import as_mapping, as_metric_names, as_names, as_text, check_choice


PAPER_LAYOUTS: tuple[str, ...] = ("table1", "students", "models")


@dataclass(frozen=True)
class PaperSpec:
    """The paper's numbers: rows x columns of cells 'a/b' holding `metrics` in order ('-' = none)."""

    title: str
    layout: str
    metrics: tuple[str, ...]
    columns: tuple[str, ...]
    rows: dict[str, tuple[str, ...]]


def paper_spec(value: Any, where: str) -> PaperSpec | None:
    """The plan's `paper:` block, checked cell by cell against its layout (None when absent)."""
    if value is None:
        return None
    raw = as_mapping(value, where, ("title", "layout", "metrics", "columns", "rows", "notes"))
    layout = as_text(raw.get("layout"), f"{where}.layout") or "table1"
    check_choice(layout, PAPER_LAYOUTS, f"{where}.layout", "layout")
    metrics = as_metric_names(raw.get("metrics"), f"{where}.metrics") or PAPER_METRICS
    columns = as_names(raw.get("columns"), f"{where}.columns")
    if not columns:
        raise SftkdError(f"{where}.columns: expected the paper's column names")
    if layout == "table1":
        for column in columns:
            if table1_column(column) is None:
                raise SftkdError(f"{where}.columns: {column!r}: expected '<acc>x Std-KD' or '<acc>x SFT-KD-Recon'")
    if layout == "models":
        _check_models_layout(raw, columns, where)
    rows: dict[str, tuple[str, ...]] = {}
    for label, cells in as_mapping(raw.get("rows"), f"{where}.rows").items():
        if not isinstance(cells, list) or len(cells) != len(columns):
            raise SftkdError(f"{where}.rows.{label}: expected a list of {len(columns)} cells (one per column)")
        for cell in cells:
            text = str(cell).strip()
            ok = _paper_stat(text) is not None if layout == "models" else paper_numbers(text, len(metrics)) is not None
            if text != "-" and not ok:
                expected = "a number or 'mean +/- std'" if layout == "models" else f"{'/'.join(metrics)} numbers"
                raise SftkdError(f"{where}.rows.{label}: cell {cell!r}: expected '-' or {expected}")
        rows[str(label)] = tuple(str(c).strip() for c in cells)
    if layout == "models":  # rows are the metrics
        metrics = tuple(rows)
    return PaperSpec(as_text(raw.get("title"), f"{where}.title") or "paper", layout, metrics, columns, rows)


def _check_models_layout(raw: dict[str, Any], columns: tuple[str, ...], where: str) -> None:
    """Layout models: columns name models (MODEL_COLUMNS), rows name metrics, no `metrics` key."""
    if raw.get("metrics") is not None:
        raise SftkdError(f"{where}.metrics: layout models takes the metrics from the row names; remove it")
    for column in columns:
        if column not in MODEL_COLUMNS:
            check_choice(column, MODEL_COLUMNS, f"{where}.columns", "column")
    for label in as_mapping(raw.get("rows"), f"{where}.rows"):
        if label not in METRIC_NAMES:
            raise SftkdError(f"{where}.rows: unknown metric {label!r} (layout models names a metric per row)"
                             f"{did_you_mean(label, METRIC_NAMES, list_otherwise=True)}")


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


def table1_column(column: str) -> tuple[float, str] | None:
    """'4x Std-KD' -> (4.0, 'Std-KD'); None when the column is not '<acc>x Std-KD' / '<acc>x SFT-KD-Recon'."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)x\s+(Std-KD|SFT-KD-Recon)\s*", column)
    return (float(match.group(1)), match.group(2)) if match else None


def paper_numbers(cell: str, count: int) -> list[float] | None:
    """'a/b' -> [a, b] when the cell holds exactly `count` numbers, else None."""
    parts = [p.strip() for p in cell.split("/")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    return numbers if len(numbers) == count else None
