"""The plan's report shows only scores that are current for the plan: an evaluation of a run the
plan now refuses (another override, other data) or of a checkpoint that has moved on since is
left out of the tables, the verdict and the figures, and named among the report's problems."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from rich.console import Console

from sftkd_cli.reproduce import load_plan, run_plan

torch.set_num_threads(1)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def write_plan(tmp_path: Path, data: Path, student: str = "{}", epochs: int = 1) -> Path:
    """A teacher and a student, one epoch each, on the prepared `data`; `student` is its stage block."""
    path = tmp_path / "plan.yaml"
    path.write_text(
        f"plan: 1\ndata:\n  source: prepared\n  out: {data}\nruns_dir: {tmp_path / 'runs'}\n"
        f"base:\n  train.epochs: {epochs}\n  train.batch_size: 2\n  train.threads: 1\n  train.device: cpu\n"
        "  sft.teacher: D3C2\n  sft.student: D2C2\n  eval.latency_slices: 1\n"
        f"stages:\n  teacher: {{}}\n  student: {student}\n")
    return path


def results_rows(text: str) -> list[str]:
    """The first column of the tables above the plan status table (results, verdict, paper layout)."""
    head = text.split("## Plan status")[0]
    return [line.split(" | ")[0].lstrip("| ") for line in head.splitlines() if line.startswith("| ")]


def report_of(tmp_path: Path) -> tuple[str, list[str]]:
    report = tmp_path / "runs" / "report"
    return (report / "report.md").read_text(), json.loads((report / "status.json").read_text())["problems"]


def test_a_run_refused_for_a_changed_override_is_left_out_of_the_report(tmp_path, tiny_dataset):
    first = run_plan(load_plan(write_plan(tmp_path, tiny_dataset)), console=quiet())
    assert not first.failed, first.results
    text, problems = report_of(tmp_path)
    assert "Student" in results_rows(text) and problems == []

    plan = load_plan(write_plan(tmp_path, tiny_dataset, "{overrides: {train.lr: 0.002}}"))
    outcome = run_plan(plan, console=quiet())
    status = {r.id: r for r in outcome.results}
    assert status["student"].status == "failed" and "train.lr was" in status["student"].note
    text, problems = report_of(tmp_path)
    assert "Student" not in results_rows(text) and "Teacher" in results_rows(text)
    assert [p for p in problems if p.startswith("eval-student: left out of the results: ")], problems
    assert "train.lr was" in next(p for p in problems if p.startswith("eval-student"))
    assert "- left out of the results (see Problems): eval-student" in text and "## Problems" in text
    assert not any(p.startswith("eval-teacher") for p in problems)


def test_a_retrained_run_whose_evaluation_did_not_run_is_left_out(tmp_path, tiny_dataset):
    """--only student,report after the student's epochs grew: the student trains on, its old
    metrics.json is not of the new checkpoint, so the report leaves it out and says so."""
    assert not run_plan(load_plan(write_plan(tmp_path, tiny_dataset)), console=quiet()).failed
    plan = load_plan(write_plan(tmp_path, tiny_dataset, "{overrides: {train.epochs: 2}}"))
    outcome = run_plan(plan, only=["student", "report"], console=quiet())
    status = {r.id: r for r in outcome.results}
    assert status["student"].status == "resumed", outcome.results
    assert status["report"].status == "failed" and "eval-student: left out" in status["report"].note
    text, problems = report_of(tmp_path)
    assert "Student" not in results_rows(text) and "Teacher" in results_rows(text)
    assert any(p.startswith("eval-student: left out") and "current best checkpoint" in p for p in problems), problems


def test_runs_of_other_data_are_left_out_when_the_plans_data_is_missing(tmp_path, tiny_dataset):
    assert not run_plan(load_plan(write_plan(tmp_path, tiny_dataset)), console=quiet()).failed
    plan = load_plan(write_plan(tmp_path, tmp_path / "nodata"))
    outcome = run_plan(plan, console=quiet())
    assert {r.id: r.status for r in outcome.results}["data"] == "failed"
    text, problems = report_of(tmp_path)
    assert results_rows(text) == [] and "No evaluated runs yet." in text
    assert sorted(p.split(":")[0] for p in problems if "left out of the results" in p) == ["eval-student", "eval-teacher"]
    assert all("(other data)" in p for p in problems if "left out of the results" in p), problems


def test_an_earlier_reports_compare_files_and_figures_of_runs_now_left_out_are_removed(tmp_path, tiny_dataset):
    """The runs the report now leaves out had compare files and figures from the earlier report:
    they go too (else they sit beside report.md as its results); the user's files there stay."""
    assert not run_plan(load_plan(write_plan(tmp_path, tiny_dataset)), console=quiet()).failed
    report = tmp_path / "runs" / "report"
    drawn = {"compare.csv", "compare.json", "box.png", "box.pdf", "curves.png", "grid.png"}
    assert drawn <= {p.name for p in report.iterdir()}
    (report / "notes.txt").write_text("mine")
    (report / "box-mine.png").write_bytes(b"not a figure of sftkd's")
    plan = load_plan(write_plan(tmp_path, tmp_path / "nodata"))
    assert {r.id: r.status for r in run_plan(plan, console=quiet()).results}["data"] == "failed"
    text, _ = report_of(tmp_path)
    assert "No evaluated runs yet." in text
    assert sorted(p.name for p in report.iterdir() if p.is_file()) == ["box-mine.png", "notes.txt", "report.md", "status.json"]


def test_the_users_compare_file_in_the_report_folder_survives_a_report_rewrite(tmp_path, tiny_dataset):
    """The report removed any compare file or figure of sftkd's content it did not write again, so
    `sftkd compare ... --out <report>/compare-my-seeds.csv` was deleted by the next report. Now it
    removes only the files its previous status.json lists ("files"); a status.json of an earlier
    sftkd, without that list, has nothing removed."""
    import os

    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app
    from sftkd_cli.report.formats import written_by_compare

    path = write_plan(tmp_path, tiny_dataset)
    assert not run_plan(load_plan(path), console=quiet()).failed
    report, runs = tmp_path / "runs" / "report", tmp_path / "runs"
    status = json.loads((report / "status.json").read_text())
    assert {"compare.csv", "compare.json", "box.png", "grid.png"} <= set(status["files"])
    mine = report / "compare-my-seeds.csv"
    result = CliRunner().invoke(app, ["compare", str(runs / "teacher"), str(runs / "student"), "--out", str(mine)])
    assert result.exit_code == 0, result.output
    assert written_by_compare(mine.read_bytes())  # sftkd's content, the user's file
    kept = mine.read_bytes()

    def rewrite() -> None:
        later = path.stat().st_mtime + 1000  # the plan edited: the report is written anew
        os.utime(path, (later, later))
        assert {r.id: r.status for r in run_plan(load_plan(path), only=["report"], console=quiet()).results} == {"report": "done"}

    rewrite()
    assert mine.read_bytes() == kept and (report / "compare.csv").is_file()
    status = json.loads((report / "status.json").read_text())
    assert "compare-my-seeds.csv" not in status["files"]
    del status["files"]  # as an earlier sftkd wrote it
    (report / "status.json").write_text(json.dumps(status))
    (report / "compare-s9.csv").write_bytes((report / "compare.csv").read_bytes())  # none of this report's
    rewrite()
    assert mine.read_bytes() == kept and (report / "compare-s9.csv").is_file()
