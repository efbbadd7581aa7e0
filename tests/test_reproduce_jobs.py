"""`sftkd reproduce --jobs N`: stages at once give the results of one after another (same
weights, same report tables), a failure skips only its dependants, an interrupted parallel plan
resumes, the live board degrades to lines, and the estimate's schedule simulation.

Device: CPU (the workers get train.device=cpu: they are other processes, which do not inherit
the test session's hidden CUDA).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_reproduce import quiet, statuses, write_plan

from sftkd_cli.errors import RunInterrupted
from sftkd_cli.reproduce import build_stages, load_plan, run_plan
from sftkd_cli.reproduce.executor import LocalExecutor
from sftkd_cli.reproduce.graph import makespan, ranks, simulate, waits_for
from sftkd_cli.reproduce.jobs import stage_log
from sftkd_cli.reproduce.live import Board
from sftkd_cli.reproduce.stages import Stage, StageResult
from sftkd_cli.runs import load_checkpoint

CPU = ["train.device=cpu"]
TRAINED = ("teacher", "student", "sft", "std-kd-at", "sft-kd-at")


def broken_sft(recipe, **kwargs):
    """A trainer that fails (module level: the worker processes import it by name)."""
    raise RuntimeError("boom")


def plan_in(folder: Path, data: Path, extra: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    return load_plan(write_plan(folder, data, extra), CPU)


def tables(report: Path) -> str:
    """report.md without what differs between two runs of the same plan: times and folders."""
    text = (report / "report.md").read_text().split("## Plan status")[0].replace(str(report.parent.parent), "PLAN")
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "TIME", text)


def compared(report: Path) -> list[dict[str, str]]:
    """compare.csv's rows without the measured latency."""
    rows = list(csv.DictReader(io.StringIO((report / "compare.csv").read_text())))
    return [{k: v for k, v in row.items() if not k.startswith("latency")} for row in rows]


# ----------------------------------------------------------------------------- the same results


def test_jobs_3_gives_the_weights_and_tables_of_jobs_1(tmp_path, tiny_dataset):
    one = plan_in(tmp_path / "one", tiny_dataset)
    three = plan_in(tmp_path / "three", tiny_dataset)
    first = run_plan(one, console=quiet())
    board = io.StringIO()
    second = run_plan(three, console=quiet(), progress=Console(file=board, width=200), jobs=3)
    assert not first.failed and not second.failed, second.results
    assert statuses(first) == statuses(second) and [r.id for r in first.results] == [r.id for r in second.results]
    for name in TRAINED:
        for checkpoint in ("best", "last"):
            a = load_checkpoint(one.runs_dir / name / "checkpoints" / f"{checkpoint}.pt")["objective"]
            b = load_checkpoint(three.runs_dir / name / "checkpoints" / f"{checkpoint}.pt")["objective"]
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, checkpoint)
        assert json.loads((one.runs_dir / name / "metrics.json").read_text())["metrics"] == \
            json.loads((three.runs_dir / name / "metrics.json").read_text())["metrics"]
    assert tables(one.report_dir) == tables(three.report_dir)
    assert compared(one.report_dir) == compared(three.report_dir)
    assert second.report == three.report_dir
    log = stage_log(three, next(s for s in build_stages(three) if s.id == "teacher"))
    assert "teacher: done in" in log.read_text() and "epoch 2:" in log.read_text()
    lines = board.getvalue().splitlines()  # not a terminal: one line per event, no table
    assert any(line.startswith("[2/") and "teacher: started" in line for line in lines)
    assert any("sft-kd-at: done in" in line for line in lines) and "running" not in board.getvalue()
