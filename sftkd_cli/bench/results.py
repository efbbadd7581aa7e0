"""What `sftkd bench` measured: one row per timed thing, and the whole result (JSON-ready)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sftkd_cli import __version__


#: the version of bench's JSON ("format")
FORMAT = 2
@dataclass
class BenchRow:
    """One measurement: median seconds per call of something that processes `slices` slices."""

    key: str
    what: str
    group: str  # "train" or "infer"
    seconds: float
    samples: list[float]
    slices: int
    flops: int
    roof_gflops: float
    note: str = ""
    baseline_s: float | None = None  # the same work done the reference way, timed in this run
    precision: str = "fp32"  # what it ran in: its roof is the conv roof measured in the same precision

    @property
    def in_run_speedup(self) -> float | None:
        """Reference-way time / our time, both measured in this run (> 1: we are faster)."""
        return None if self.baseline_s is None else self.baseline_s / self.seconds

    @property
    def ms(self) -> float:
        return self.seconds * 1e3

    @property
    def ms_per_slice(self) -> float:
        return self.seconds * 1e3 / self.slices

    @property
    def slices_per_s(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else math.inf

    @property
    def gflops(self) -> float:
        return self.flops / 1e9 / self.seconds if self.seconds > 0 else math.inf

    @property
    def roof_fraction(self) -> float:
        return self.gflops / self.roof_gflops if self.roof_gflops > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "what": self.what,
            "group": self.group,
            "seconds": self.seconds,
            "ms": self.ms,
            "ms_per_slice": self.ms_per_slice,
            "slices_per_s": self.slices_per_s,
            "gflop": self.flops / 1e9,
            "gflops": self.gflops,
            "roof_fraction": self.roof_fraction,
            "precision": self.precision,
            "reference_way_s": self.baseline_s,
            "speedup_in_run": self.in_run_speedup,
            "samples_s": list(self.samples),
            "note": self.note,
        }


@dataclass
class BenchResult:
    """Everything `run_bench` measured, plus the settings and machine it measured on."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    roof_gflops: float
    roof: dict[str, Any]  # what was measured: shapes, the best's format and shape, GFLOP/s per memory format;
    # under "bf16" the same for the bf16 rows of a fp32 run
    rows: list[BenchRow] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)  # key -> slower time / faster time
    ratio_labels: dict[str, str] = field(default_factory=dict)  # key -> the ratio in words
    notes: list[str] = field(default_factory=list)
    complete: bool = True  # False: interrupted (Ctrl-C, SIGTERM), the rows measured until then
    stopped_by: int = 0  # the signal a training part stopped on (its own handler took it); 0: none seen there

    def row(self, key: str) -> BenchRow:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(key)

    def has(self, key: str) -> bool:
        return any(row.key == key for row in self.rows)

    def add_ratio(self, key: str, value: float, label: str) -> None:
        """Record a time ratio under `key`, with what it compares in words (x > 1: the first is slower)."""
        self.ratios[key] = value
        self.ratio_labels[key] = label

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "sftkd_version": __version__,
            "complete": self.complete,
            "settings": dict(self.settings),
            "machine": dict(self.machine),
            "roof": {"gflops": self.roof_gflops, **self.roof},
            "rows": [row.to_dict() for row in self.rows],
            "ratios": dict(self.ratios),
            "ratio_labels": dict(self.ratio_labels),
            "notes": list(self.notes),
        }

