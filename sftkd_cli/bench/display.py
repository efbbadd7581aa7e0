"""`sftkd bench`'s result on screen: the machine and settings line, the table of rows and the
ratios in words (the command prints them; tests read them)."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from sftkd_cli.bench.results import BenchResult
from sftkd_cli.errors import counted


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.{digits}f}"


def header(result: BenchResult) -> str:
    """The machine and settings line printed above the table."""
    m, s = result.machine, result.settings
    lines = [_roof_line("roof", result.roof_gflops, result.roof)]
    if "bf16" in result.roof:
        lines.append(_roof_line("bf16 roof", result.roof["bf16"]["gflops"], result.roof["bf16"]))
    return (
        f"[bold]{escape(m['name'])}[/] ({escape(m['device'])}, {counted(m['threads'], 'thread')}, "
        f"{m['cpu_capability']}), torch {escape(m['torch'])}, {s['precision']}{' (TF32)' if s.get('tf32') else ''}, "
        f"size {s['size']}, batch {s['batch']}, {'complex data, ' if s.get('complex') else ''}"
        f"median of {s['repeats']} after {s['warmup']} warm-up\n"
        + "\n".join(lines)
    )


def _roof_line(name: str, gflops: float, roof: dict[str, Any]) -> str:
    """One roof: GFLOP/s, how it was measured, the best shape and each memory format's best."""
    formats = ", ".join(f"{fmt} {gf:.0f}" for fmt, gf in roof["gflops_by_format"].items())
    return (f"{name}: {gflops:.1f} GFLOP/s on {tuple(roof['shape'])} in {roof['format']} "
            f"({escape(roof['what'])}; {formats})")


def table(result: BenchResult) -> Table:
    """Rows: what, ms per call, slices/s, GFLOP/s, % of roof, speed-up over the reference way timed in this run."""
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in ("what", "ms", "slices/s", "GFLOP/s", "% roof", "vs ref"):
        out.add_column(name, justify="left" if name == "what" else "right", no_wrap=name == "what")
    for row in result.rows:
        out.add_row(
            escape(row.what),
            _fmt(row.ms, 0 if row.ms >= 100 else 1),
            _fmt(row.slices_per_s),
            _fmt(row.gflops),
            _fmt(100 * row.roof_fraction, 0),
            _times(row.in_run_speedup),
        )
    return out


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def ratio_lines(result: BenchResult) -> list[str]:
    """The ratios in words (x > 1: the first is slower)."""
    return [f"{result.ratio_labels.get(key, key)}: {value:.2f}x" for key, value in result.ratios.items()]
