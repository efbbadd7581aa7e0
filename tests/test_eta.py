"""The plan's time-left estimate: stage costs from the architectures, calibrated on stages done (CPU)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from test_reproduce import write_plan

from sftkd_cli import eta
from sftkd_cli.config import load_recipe
from sftkd_cli.models import build_model, count_parameters
from sftkd_cli.reproduce import load_plan, run_plan

TEACHER, STUDENT = count_parameters(build_model("D5C5")), count_parameters(build_model("D3C5"))


def recipe(**settings):
    return load_recipe(None, [f"{k}={v}" for k, v in {"train.epochs": 20, **settings}.items()])


def test_costs_follow_what_each_stage_runs():
    assert (TEACHER, STUDENT) == (141_765, 49_285)  # the paper's D5C5 and D3C5
    assert eta.training_cost("teacher", recipe(**{"model.name": "D5C5"})) == 20 * TEACHER
    assert eta.training_cost("student", recipe(**{"model.name": "D3C5"})) == 20 * STUDENT
    # SFT: the teacher plus branches i = 1..4 running student blocks i+1..5: 10 blocks = 2 students
    assert eta.training_cost("sft", recipe()) == pytest.approx(20 * (TEACHER + 2 * STUDENT))
    # KD: the student trained, the frozen teacher only run forward
    assert eta.training_cost("std-kd", recipe()) == pytest.approx(20 * (STUDENT + TEACHER / 3))


def test_the_estimate_scales_the_measured_speed():
    assert eta.seconds_left([], [5.0]) is None
    assert eta.seconds_left([(2.0, 10.0), (2.0, 30.0)], [1.0, 3.0]) == pytest.approx(40.0)
    assert eta.progress_line(3, 13, 252.0, 480.0) == "plan: 3/13 stages, 4.2 min so far, about 8 min left"
    assert eta.progress_line(12, 13, 700.0, 10.0).endswith("under 2 min left")


def test_a_plan_prints_its_progress_after_each_training_stage(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    out = io.StringIO()
    run_plan(plan, only=["teacher", "student", "eval-teacher"], console=Console(file=out, width=200))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("plan: ")]
    assert len(lines) == 2, out.getvalue()[-2000:]  # after teacher and student, not after the last stage
    assert lines[0].startswith("plan: 1/3 stages") and lines[1].startswith("plan: 2/3 stages")
    assert all("min left" in line for line in lines)


def test_evaluate_prints_progress_lines_where_stderr_is_no_terminal(monkeypatch):
    """A long evaluation in a log file (no terminal: no bar) shows plain lines, as prepare-data does."""
    import sftkd_cli.evaluate
    import sftkd_cli.runs
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app
    from sftkd_cli.errors import SftkdError
    from sftkd_cli.eta import ProgressLines

    def evaluate_run(run, *, progress, **kwargs):
        for done in (4, 8):
            progress(done, 8)
        raise SftkdError("stop here")

    monkeypatch.setattr(ProgressLines, "EVERY", 0.0)
    monkeypatch.setattr(sftkd_cli.runs, "open_run", lambda run: None)
    monkeypatch.setattr(sftkd_cli.evaluate, "evaluate_run", evaluate_run)
    result = CliRunner().invoke(app, ["evaluate", "runs/demo"])
    lines = result.output.splitlines()
    assert lines[0].startswith("evaluate: demo: slices 4/8, 0.0 min so far, ") and "left" in lines[0], result.output
    assert lines[1].startswith("evaluate: demo: slices 8/8, 0.0 min so far") and lines[2] == "error: stop here"


def test_evaluate_times_each_run_on_its_own(monkeypatch):
    """Two runs of one name (runs/t1, other/t1): the second's first plain line has its own time
    left, not one measured across the first run (the lines' tracker is made per run)."""
    import sftkd_cli.evaluate
    import sftkd_cli.report.formats
    import sftkd_cli.runs
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app
    from sftkd_cli.eta import ProgressLines

    def evaluate_run(run, *, progress, **kwargs):
        for done in (4, 8):
            progress(done, 8)
        return {"output_dir": str(run)}

    monkeypatch.setattr(ProgressLines, "EVERY", 0.0)
    monkeypatch.setattr(sftkd_cli.runs, "open_run", lambda run: None)
    monkeypatch.setattr(sftkd_cli.evaluate, "evaluate_run", evaluate_run)
    monkeypatch.setattr(sftkd_cli.report.formats, "metrics_table", lambda metrics: "")
    result = CliRunner().invoke(app, ["evaluate", "runs/t1", "other/t1"])
    assert result.exit_code == 0, result.output
    firsts = [line for line in result.output.splitlines() if line.startswith("evaluate: t1: slices 4/8")]
    assert len(firsts) == 2 and all("left" in line for line in firsts), result.output
