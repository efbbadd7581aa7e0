"""Render comparisons as text: a rich table, Markdown, LaTeX (display) or CSV and JSON (data).

Display formats go through one `Table` of strings; CSV and JSON carry the raw numbers so
that other tools can read them without parsing "mean ± std" cells.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table as RichTable
from rich.markup import escape
from rich.text import Text

from sftkd_cli.choices import COMPARE_FORMATS, DEFAULT_ALPHA, FASTMRI_METRIC_NAMES, METRIC_NAMES
from sftkd_cli.data.catalog import source_label
from sftkd_cli.data.format import INPUT_LABELS
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import json_text
from sftkd_cli.report.compare import (
    PAPER_SETTINGS,
    INPUT_ROLES,
    Comparison,
    PaperCell,
    PaperTable,
    Row,
    Stat,
)
from sftkd_cli.report.signed_rank import unreachable

#: each kind of compare output ("kind" in its JSON) -> its table's title, the first line of its
#: markdown, LaTeX and plain-table outputs
TITLES = {"compare": "sftkd compare", "paper": "sftkd compare --group paper"}
#: each kind -> its CSV's leading columns (<metric>_<statistic> columns follow)
_CSV_LEAD = {"compare": ("run", "role", "params", "latency_ms_per_slice"),
             "paper": ("dataset", "model", "acceleration", "setting", "run")}
_DECIMALS = {"PSNR": 2, "SSIM": 4, "VIF": 4}  # the paper's precision; other metrics get 4 significant digits
_MISSING = "-"


@dataclass(frozen=True)
class Table:
    """A display table: (group, label) per column, string rows, the first row index of each section."""

    title: str
    columns: tuple[tuple[str, str], ...]
    rows: tuple[tuple[str, ...], ...]
    sections: tuple[int, ...] = ()
    caption: str = ""
    label_columns: int = 2  # leading text columns (left-aligned); the rest are numbers


# ----------------------------------------------------------------------------- numbers


def format_value(metric: str, value: float, signed: bool = False, digits: int = 4) -> str:
    """A metric value at the paper's precision (PSNR 2 decimals, SSIM/VIF 4), else `digits` significant
    digits; inf, -inf (+inf when `signed`) and nan as such."""
    sign = "+" if signed else ""
    if not math.isfinite(value):
        return f"{value:{sign}}"
    if metric in _DECIMALS:
        return f"{value:{sign}.{_DECIMALS[metric]}f}"
    return f"{value:{sign}.{digits}g}"


def format_stat(metric: str, stat: Stat) -> str:
    """'mean ± std', both with the mean's decimal places (`_decimals`); an infinite mean (a PSNR
    with an exactly reconstructed slice) alone, as its std is undefined."""
    if math.isinf(stat.mean):
        return format_value(metric, stat.mean)
    places = _decimals(metric, stat.mean)
    if places is None:  # the mean in exponent notation: both with its significant digits
        return f"{format_value(metric, stat.mean)} ± {format_value(metric, stat.std)}"
    return f"{stat.mean:.{places}f} ± {stat.std:.{places}f}"


def _decimals(metric: str, mean: float, digits: int = 4) -> int | None:
    """The decimal places `format_value` shows `mean` with (trailing zeros kept): the paper's
    for its metrics, else those of `digits` significant digits; None where that is exponent
    notation (Python's `g` rule, on the exponent after rounding to `digits`)."""
    if metric in _DECIMALS:
        return _DECIMALS[metric]
    exponent = int(f"{mean:.{digits - 1}e}".split("e")[1]) if math.isfinite(mean) else 0
    if not -4 <= exponent < digits:
        return None
    return max(0, digits - 1 - exponent)


def format_p(p: float, alpha: float) -> str:
    """A p-value with '*' when it is below alpha."""
    if math.isnan(p):
        return "n/a"
    text = f"{p:.1e}" if p < 1e-3 else f"{p:.3g}"
    return text + ("*" if p < alpha else "")


def _units(unit: str) -> str:
    """'slices' (the paper convention), or 'volumes (fastMRI convention)'."""
    return "slices" if unit == "slice" else "volumes (fastMRI convention)"


def check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise SftkdError(f"--alpha {alpha}: expected a number between 0 and 1")


# ----------------------------------------------------------------------------- comparison


def comparison_caption(c: Comparison, alpha: float) -> str:
    parts = [f"{source_label(c.dataset)}, split {c.split}, {c.acceleration:g}x; mean ± std over {_units(c.unit)}."]
    if c.reference:
        parts.append(f"Δ = mean minus the mean of {c.reference} (over the same {c.unit}s).")
    if c.baseline and c.n_paired is not None:
        each = "each the mean of its slices" if c.unit == "slice" else "one value each"
        parts.append(f"p = two-sided Wilcoxon signed-rank test vs {c.baseline} over {c.n_paired} paired volumes "
                     f"({each}; volumes with equal values are dropped); * p < {alpha:g}.")
        floor = unreachable(c.n_paired, alpha)
        if floor:
            parts.append(f"No difference can be shown at α = {alpha:g} ({floor}).")
    return " ".join([*parts, *c.notes])


def _delta_text(c: Comparison, row: Row, metric: str) -> str | None:
    """The Δ cell: None without a reference, 'ref' on the reference's own row; else Δ with the
    decimal places of the row's mean (`_decimals`: 0.1046 has Δ -0.0640, not -0.064)."""
    if not c.reference:
        return None
    if row.name == c.reference and row.role not in INPUT_ROLES.values():
        return "ref"
    delta, places = row.delta[metric], _decimals(metric, row.stats[metric].mean)
    if places is None or not math.isfinite(delta):  # the mean in exponent notation: Δ with its 4 digits
        return format_value(metric, delta, signed=True)
    return f"{delta:+.{places}f}"  # the decimal places of the mean beside it (PSNR 2, SSIM and VIF 4)


def _p_text(c: Comparison, row: Row, metric: str, alpha: float) -> str | None:
    """The p cell: None without a baseline, 'base' on the baseline's own row."""
    if not c.baseline:
        return None
    return format_p(row.pvalue[metric], alpha) if metric in row.pvalue else "base"


def comparison_view(c: Comparison, alpha: float, stacked: bool = False) -> Table:
    """The comparison as display strings: mean ± std, Δ and p columns per metric.

    `stacked` (for terminals) puts the role under the run name and Δ and p on lines under
    mean ± std, so that five metrics fit beside each other.
    """
    columns: list[tuple[str, str]] = [("", "Run")] if stacked else [("", "Run"), ("", "Role")]
    columns.append(("", "Params"))
    for m in c.metrics:
        columns.append(("", m))
        if c.reference and not stacked:
            columns.append(("", f"Δ{m}"))
        if c.baseline and not stacked:
            columns.append(("", f"p {m}"))
    columns.append(("", "ms/slice"))
    rows = []
    for row in c.rows:
        cells = [f"{row.name}\n{row.role}"] if stacked else [row.name, row.role]
        cells.append(_MISSING if row.params is None else f"{row.params:,}")
        for m in c.metrics:
            delta, p = _delta_text(c, row, m), _p_text(c, row, m, alpha)
            if stacked:
                lines = [format_stat(m, row.stats[m])]
                if delta is not None:
                    lines.append(delta if delta == "ref" else f"Δ {delta}")
                if p is not None:
                    lines.append(p if p == "base" else f"p {p}")
                cells.append("\n".join(lines))
            else:
                cells += [format_stat(m, row.stats[m])] + [part for part in (delta, p) if part is not None]
        cells.append(_MISSING if row.latency_ms is None else f"{row.latency_ms:.1f}")
        rows.append(tuple(cells))
    caption = comparison_caption(c, alpha)
    if stacked and (c.reference or c.baseline):
        caption += " Each cell: mean ± std, then Δ and/or p."
    return Table(TITLES["compare"], tuple(columns), tuple(rows), caption=caption, label_columns=1 if stacked else 2)


def _metric_numbers(row: Row, metric: str, alpha: float) -> dict[str, object]:
    """mean, std, delta, p over paired volumes and significance of one row and metric (None where not applicable)."""
    p = row.pvalue.get(metric)
    return {"mean": row.stats[metric].mean, "std": row.stats[metric].std, "delta": row.delta.get(metric),
            "p_volumes": p, "significant": None if p is None or math.isnan(p) else bool(p < alpha)}


def comparison_records(c: Comparison, alpha: float) -> list[dict[str, object]]:
    """One flat record per row (numbers, empty where not applicable), for CSV."""
    records = []
    for row in c.rows:
        record: dict[str, object] = dict(zip(_CSV_LEAD["compare"], (row.name, row.role, row.params, row.latency_ms)))
        for m in c.metrics:
            record.update({f"{m}_{key}": value for key, value in _metric_numbers(row, m, alpha).items()})
        records.append(record)
    return records


def comparison_json(c: Comparison, alpha: float) -> dict[str, object]:
    rows = []
    for row in c.rows:
        metrics = {m: _metric_numbers(row, m, alpha) for m in c.metrics}
        rows.append({"run": row.name, "role": row.role, "params": row.params,
                     "latency_ms_per_slice": row.latency_ms, "metrics": metrics})
    return {
        "format": 1, "kind": "compare",
        "dataset": {"source": c.dataset, "fingerprint": c.fingerprint, "split": c.split, "acceleration": c.acceleration},
        "metrics": list(c.metrics), "reference": c.reference, "baseline": c.baseline,
        "test": "wilcoxon signed-rank, two-sided, over volumes paired by name"
                + (" (a volume's value: the mean of its slices)" if c.unit == "slice" else ""),
        "alpha": alpha,
        "paired_volumes": c.n_paired, "rows": rows,
        **({"convention": "fastmri"} if c.unit == "volume" else {}),  # paper output keeps its keys
    }


# ----------------------------------------------------------------------------- paper table


def _paper_columns(p: PaperTable) -> list[tuple[float, str]]:
    return [(acc, setting) for acc in p.accelerations for setting in PAPER_SETTINGS]


def paper_view(p: PaperTable) -> Table:
    """The paper's Table 1: Dataset | Model | (acceleration x setting) cells of 'PSNR/SSIM'."""
    metrics = "/".join(p.metrics)
    columns = [("", "Dataset"), ("", "Model")]
    columns += [(f"{acc:g}x", f"{setting} {metrics}") for acc, setting in _paper_columns(p)]
    rows, sections = [], []
    for block in p.blocks:
        sections.append(len(rows))
        for i, model in enumerate(block.models):
            cells = [source_label(block.dataset) if i == 0 else "", model]
            for acc, setting in _paper_columns(p):
                cell = block.cells.get((model, acc, setting))
                cells.append(_MISSING if cell is None else "/".join(format_value(m, cell.stats[m].mean) for m in p.metrics))
            rows.append(tuple(cells))
    caption = f"{metrics} (mean over {_units(p.unit)}), split {p.split}, in the layout of the paper's Table 1."
    return Table(TITLES["paper"], tuple(columns), tuple(rows), tuple(sections), caption)


def _paper_cells(p: PaperTable) -> Iterator[tuple[str, str, float, str, PaperCell]]:
    """(dataset, model, acceleration, setting, cell) of every filled cell, in table order."""
    for block in p.blocks:
        for model in block.models:
            for acc, setting in _paper_columns(p):
                cell = block.cells.get((model, acc, setting))
                if cell is not None:
                    yield block.dataset, model, acc, setting, cell


def paper_records(p: PaperTable) -> list[dict[str, object]]:
    """One record per filled cell (long format), for CSV."""
    records = []
    for dataset, model, acc, setting, cell in _paper_cells(p):
        record: dict[str, object] = dict(zip(_CSV_LEAD["paper"], (dataset, model, acc, setting, cell.run)))
        for m in p.metrics:
            record[f"{m}_mean"] = cell.stats[m].mean
            record[f"{m}_std"] = cell.stats[m].std
        records.append(record)
    return records


def paper_json(p: PaperTable) -> dict[str, object]:
    cells = [
        {"dataset": dataset, "model": model, "acceleration": acc, "setting": setting, "run": cell.run,
         "metrics": {m: {"mean": cell.stats[m].mean, "std": cell.stats[m].std}
                     for m in p.metrics}}
        for dataset, model, acc, setting, cell in _paper_cells(p)
    ]
    return {"format": 1, "kind": "paper", "metrics": list(p.metrics), "split": p.split,
            "accelerations": list(p.accelerations), "cells": cells}


# ----------------------------------------------------------------------------- renderers


def _rich_part(table: Table, columns: list[int], title: bool, cls: type[RichTable] = RichTable) -> RichTable:
    """A rich table of some of `table`'s columns (indices), with or without its title."""
    out = cls(title=table.title if title else None, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i in columns:
        group, label = table.columns[i]
        out.add_column(f"{group}\n{label}" if group else label, justify="left" if i < table.label_columns else "right")
    for r, row in enumerate(table.rows):
        if r in table.sections and r > 0:
            out.add_section()
        out.add_row(*(Text(row[i]) for i in columns))
    return out


class FittedTable(RichTable):
    """A rich table that, on a console too narrow for it, prints as several narrower tables: the
    label columns repeated, the number columns split between them, so that no cell wraps or is cut.
    The caption follows as a paragraph of the console's width (a table's own caption would wrap
    at the table's width)."""

    source: Table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        table = self.source
        if Measurement.get(console, options.update_width(10**6), self).maximum <= width:
            yield from super().__rich_console__(console, options)
        else:
            labels = list(range(table.label_columns))
            chunks: list[list[int]] = [[]]
            for i in range(table.label_columns, len(table.columns)):
                trial = _rich_part(table, labels + chunks[-1] + [i], False)
                if chunks[-1] and Measurement.get(console, options.update_width(10**6), trial).maximum > width:
                    chunks.append([])
                chunks[-1].append(i)
            for n, chunk in enumerate(chunks):
                yield _rich_part(table, labels + chunk, n == 0)
        if table.caption:
            yield Text(table.caption, style="table.caption")


def to_rich(table: Table) -> RichTable:
    """A rich table; cells are plain text (no markup), numbers right-aligned. On a narrow console
    it prints as several tables of fewer columns (see FittedTable)."""
    out = _rich_part(table, list(range(len(table.columns))), True, FittedTable)
    assert isinstance(out, FittedTable)
    out.source = table
    return out


def to_text(table: Table) -> str:
    """The rich table as plain text (for --out with --format table)."""
    buffer = io.StringIO()
    Console(file=buffer, width=1000, color_system=None, force_terminal=False).print(to_rich(table))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


#: characters with a meaning in (GitHub) markdown table cells, escaped with a backslash so that a run
#: named s*x* or kd_a_b shows as named: the backslash first, then pipes (cell ends), emphasis, code, HTML
_MARKDOWN_SPECIAL = "\\|*_`<"


def _markdown_cell(text: str) -> str:
    """`text` with markdown's special characters backslash-escaped: shown as they are."""
    return "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in text)


def to_markdown(table: Table) -> str:
    header = [" ".join(part for part in column if part) for column in table.columns]
    align = ["---" if i < table.label_columns else "---:" for i in range(len(header))]
    lines = [f"**{table.title}**", ""]
    lines += ["| " + " | ".join(_markdown_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", _markdown_cell(table.caption)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}",  # OT1 would print other glyphs
    "±": r"$\pm$", "Δ": r"$\Delta$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_spans(table: Table) -> str | None:
    """The grouped header line (\\multicolumn per group), or None when no column has a group."""
    if not any(group for group, _ in table.columns):
        return None
    spans: list[tuple[str, int]] = []
    for group, _ in table.columns:
        if spans and spans[-1][0] == group:
            spans[-1] = (group, spans[-1][1] + 1)
        else:
            spans.append((group, 1))
    return " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(g)}}}" if g else " & ".join([""] * n) for g, n in spans) + r" \\"


def to_latex(table: Table) -> str:
    """A tabular (no float environment) to \\input into a document; the caption as a comment."""
    spec = "l" * table.label_columns + "r" * (len(table.columns) - table.label_columns)
    lines = [f"% {table.title}"] + ([f"% {latex_escape(table.caption)}"] if table.caption else [])
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\hline"]
    spans = _latex_spans(table)
    if spans:
        lines.append(spans)
    lines += [" & ".join(latex_escape(label) for _, label in table.columns) + r" \\", r"\hline"]
    for i, row in enumerate(table.rows):
        if i in table.sections and i > 0:
            lines.append(r"\hline")
        lines.append(" & ".join(latex_escape(cell) for cell in row) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(records: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    fields = list(records[0]) if records else []
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: "" if value is None else value for key, value in record.items()})
    return buffer.getvalue()


def render(result: Comparison | PaperTable, fmt: str, alpha: float = DEFAULT_ALPHA) -> str:
    """`result` as text in one of COMPARE_FORMATS ('table' gives the rich table as plain text)."""
    check_alpha(alpha)
    if fmt not in COMPARE_FORMATS:
        raise SftkdError(f"--format {fmt}: expected one of {', '.join(COMPARE_FORMATS)}")
    paper = isinstance(result, PaperTable)
    if fmt == "json":
        payload = paper_json(result) if paper else comparison_json(result, alpha)
        return json_text(payload, infinities_as_text=True) + "\n"  # an infinite PSNR mean, a Δ to it: "inf"
    if fmt == "csv":
        return to_csv(paper_records(result) if paper else comparison_records(result, alpha))
    if fmt == "table":
        return to_text(view(result, alpha, stacked=True))
    return {"markdown": to_markdown, "latex": to_latex}[fmt](view(result, alpha))


def written_by_compare(data: bytes) -> bool:
    """Whether `data` (a file's bytes) is an output `sftkd compare` wrote (what `compare --out` may
    replace), in any of its formats: JSON with its "format" and a "kind"; CSV with a kind's leading
    columns, then <metric>_<statistic> ones; markdown, LaTeX and the plain table with a title as
    first line. Bytes that are not UTF-8 raise ValueError (`output_target` reads that as not)."""
    import json

    text = data.decode("utf-8")
    first = text.split("\n", 1)[0].strip()
    if first.startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError:
            return False
        return isinstance(payload, dict) and payload.get("kind") in TITLES and "format" in payload
    header = next(csv.reader([first]), [])
    lead = next((lead for lead in _CSV_LEAD.values() if tuple(header[:len(lead)]) == lead), None)
    if lead is not None:
        return all(name.rpartition("_")[0] for name in header[len(lead):])
    return first.strip("*% ") in TITLES.values()


#: an --out file's suffix (lower case) -> the format it names; another suffix (or none) names none
SUFFIX_FORMATS: dict[str, str] = {".csv": "csv", ".json": "json", ".md": "markdown", ".markdown": "markdown",
                                  ".tex": "latex", ".txt": "table"}


def output_format(fmt: str | None, out: Path | None) -> str:
    """The format compare writes: `fmt` (--format) when given, else the one `out`'s suffix names
    (`SUFFIX_FORMATS`: x.csv gets CSV, not the plain table pandas cannot read), else 'table'.
    Refuses, in one line, a --format that another format's suffix contradicts (-f json -o x.csv)."""
    if fmt is not None and (fmt := fmt.lower()) not in COMPARE_FORMATS:  # any case, as the command takes it
        raise SftkdError(f"--format {fmt!r}: expected one of {', '.join(COMPARE_FORMATS)}")
    named = SUFFIX_FORMATS.get(out.suffix.lower()) if out is not None else None
    if fmt is None:
        return named or "table"
    if named is not None and named != fmt:
        raise SftkdError(f"--out {out}: its suffix {out.suffix} names the {named} format, not --format {fmt}; "
                         f"give a file ending in {_suffix_of(fmt)}, or leave --format out to write {named}")
    return fmt


def _suffix_of(fmt: str) -> str:
    """The first suffix that names `fmt` ('.txt or another' for table, which also takes any other suffix)."""
    suffix = next(s for s, name in SUFFIX_FORMATS.items() if name == fmt)
    return suffix if fmt != "table" else f"{suffix} (or a suffix no format names)"


def expected_output(fmt: str) -> str:
    """What an earlier compare output in format `fmt` starts with (what `written_by_compare`
    looks for), for the error that refuses to replace another file."""
    kinds = " or ".join(f'"{kind}"' for kind in TITLES)
    leads = " or ".join(",".join(lead) + ",..." for lead in _CSV_LEAD.values())
    title = TITLES["compare"]
    return {"json": f'a JSON object with "kind": {kinds} and a "format"', "csv": f"compare's header row ({leads})",
            "markdown": f"the title line **{title}**", "latex": f"the comment line % {title}",
            "table": f"the title line {title}"}[fmt]


def view(result: Comparison | PaperTable, alpha: float = DEFAULT_ALPHA, stacked: bool = False) -> Table:
    """The display table of either kind of result (`stacked`: the compact terminal layout)."""
    return paper_view(result) if isinstance(result, PaperTable) else comparison_view(result, alpha, stacked)


def metrics_table(metrics: dict[str, Any], title: str | None = None) -> RichTable:
    """A rich table of a metrics.json, one row per metric: the input (zero-filled, or LR interpolated
    for sr) and the model."""
    ds = metrics["dataset"]
    task = ds.get("task", "recon")
    fastmri = metrics.get("convention") == "fastmri"
    caption = f"{_params_count(metrics.get('params'))} parameters, {metrics['latency_ms_per_slice']:.1f} ms/slice on {metrics['device']}"
    table = RichTable(
        title=title or f"{escape(str(metrics['run']))}: {metrics['model']} ({metrics['role']}) on {escape(str(ds['split']))}, "
        f"{ds['slices']} slices, {ds['acceleration']:g}x{' super-resolution' if task == 'sr' else ''}",
        caption=caption + (f"; fastMRI convention: mean ± std over {ds['volumes']} volume(s)" if fastmri else ""),
    )
    table.add_column("metric", style="bold")
    table.add_column(INPUT_LABELS[task][0], justify="right")
    table.add_column(metrics["model"], justify="right")
    for name in FASTMRI_METRIC_NAMES if fastmri else METRIC_NAMES:  # as `compare` writes them
        cells = [format_stat(name, Stat(b[name]["mean"], b[name]["std"])) for b in (metrics["zero_filled"], metrics["metrics"])]
        table.add_row(name, *cells)
    return table


def _params_count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "unknown number of"
