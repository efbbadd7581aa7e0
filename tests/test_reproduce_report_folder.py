"""`sftkd reproduce`: the report folder is sftkd's own. Its files (report.md, status.json) and the
stage logs and errors.log are never written through a link planted there, a FIFO there fails
at once instead of hanging, a `report:` folder holding the user's files is refused before any
stage runs, and a report written for another --runs-dir or other overrides is not up to date.

Device: CPU (no stage trains: the plans run only their data and report stages).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from test_reproduce import quiet, statuses, write_plan
from typer.testing import CliRunner

from sftkd_cli.cli.app import app
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import open_log_for_append
from sftkd_cli.reproduce import StageJob, build_stages, load_plan, run_plan, run_stage_job
from sftkd_cli.reproduce.report import write_report
from sftkd_cli.reproduce.stagework import log_error

ONLY = ["data", "report"]


def planted(tmp_path: Path, name: str = "victim.txt") -> Path:
    victim = tmp_path / name
    victim.write_text("the user's own\n")
    return victim


def test_report_md_and_status_json_replace_a_link_or_fifo_not_what_it_points_to(tmp_path, tiny_dataset):
    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    stages = build_stages(plan)
    plan.report_dir.mkdir(parents=True)
    victim = planted(tmp_path)
    (plan.report_dir / "report.md").symlink_to(victim)
    os.mkfifo(plan.report_dir / "status.json")  # nobody reads it: written into, it would fail or hang
    write_report(plan, stages, [], quiet())
    assert victim.read_text() == "the user's own\n"
    for name in ("report.md", "status.json"):
        assert not (plan.report_dir / name).is_symlink() and (plan.report_dir / name).is_file()
    assert (plan.report_dir / "report.md").read_text().startswith("# sftkd reproduce:")


def test_a_log_is_never_appended_through_a_link_nor_opened_on_a_fifo(tmp_path):
    victim = planted(tmp_path)
    (tmp_path / "link.log").symlink_to(victim)
    os.mkfifo(tmp_path / "fifo.log")
    for name in ("link.log", "fifo.log"):
        with pytest.raises(SftkdError, match=f"{name}: is not a regular file"):
            open_log_for_append(tmp_path / name)
    assert victim.read_text() == "the user's own\n"
    fd = open_log_for_append(tmp_path / "new.log")
    try:
        os.write(fd, b"line\n")
    finally:
        os.close(fd)
    assert (tmp_path / "new.log").read_text() == "line\n"


def test_a_stage_log_or_errors_log_that_is_a_link_is_not_written_through(tmp_path, tiny_dataset):
    """The stage whose log is a link fails with one line naming it; errors.log as a link stays as it was."""
    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    stages = build_stages(plan)
    victim = planted(tmp_path)
    logs = plan.report_dir / "logs"
    logs.mkdir(parents=True)
    (logs / "data.log").symlink_to(victim)
    result = run_stage_job(StageJob(plan, stages[0], tuple(stages), log=logs / "data.log"))
    assert result.status == "failed" and "data.log: is not a regular file" in result.note
    (plan.report_dir / "errors.log").symlink_to(victim)
    log_error(plan, stages[0], RuntimeError("boom"))
    assert victim.read_text() == "the user's own\n"


def test_the_workers_local_and_ray_do_not_write_through_a_linked_stage_log(tmp_path, tiny_dataset):
    """Both open the log for the whole process's output (file descriptors 1 and 2)."""
    from sftkd_cli.reproduce.executor import _run
    from sftkd_cli.reproduce.ray_executor import run_on_worker

    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    stages = build_stages(plan)
    victim = planted(tmp_path)
    (plan.report_dir / "logs").mkdir(parents=True)
    (plan.report_dir / "logs" / "data.log").symlink_to(victim)
    streams, handler = (os.dup(1), os.dup(2)), signal.getsignal(signal.SIGTERM)
    try:
        result = _run(StageJob(plan, stages[0], tuple(stages), log=plan.report_dir / "logs" / "data.log"), streams)
    finally:  # a worker's `_run` ends ignoring SIGTERM: this process's tests must not inherit that
        signal.signal(signal.SIGTERM, handler)
        os.close(streams[0])
        os.close(streams[1])
    assert result.status == "failed" and "is not a regular file" in result.note
    on_ray = run_on_worker(StageJob(plan, stages[0], tuple(stages), log=plan.report_dir / "logs" / "data.log"), os.getcwd())
    assert on_ray.status == "failed" and "is not a regular file" in on_ray.note
    assert victim.read_text() == "the user's own\n"


def test_a_report_folder_holding_the_users_files_is_refused_before_any_stage(tmp_path, tiny_dataset):
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "report.md").write_text("notes\n")
    (docs / "box.png").write_text("photo\n")
    path = write_plan(tmp_path, tiny_dataset, f"report: {docs}\n")
    (docs / "thesis.tex").write_text("draft\n")  # no report file's name: not the report's business
    with pytest.raises(SftkdError, match=r"mydocs: holds box.png, report.md, which sftkd reproduce did not write"):
        build_stages(load_plan(path))
    result = CliRunner().invoke(app, ["reproduce", str(path), "--dry-run"])
    assert result.exit_code != 0 and "`report:` folder" in result.output
    assert (docs / "report.md").read_text() == "notes\n" and (docs / "box.png").read_text() == "photo\n"
    assert sorted(p.name for p in docs.iterdir()) == ["box.png", "report.md", "thesis.tex"]


def test_a_report_folder_of_its_own_logs_or_report_is_run_again(tmp_path, tiny_dataset):
    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    (plan.report_dir / "logs").mkdir(parents=True)
    (plan.report_dir / "logs" / "data.log").write_text("--- earlier\n")  # --jobs stopped before the report
    assert statuses(run_plan(plan, only=ONLY, console=quiet()))["report"] == "done"
    (plan.report_dir / "notes.txt").write_text("mine\n")  # beside sftkd's status.json: the folder is sftkd's
    assert statuses(run_plan(load_plan(plan.path), only=ONLY, console=quiet()))["report"] == "skipped"


def test_a_shared_report_folder_is_stale_for_another_runs_folder_or_overrides(tmp_path, tiny_dataset):
    """B, then A with train.seed=7, then B again: each report is written anew for its own runs,
    not called up to date, and the other runs folder's status rows are not merged in."""
    path = write_plan(tmp_path, tiny_dataset, f"report: {tmp_path / 'shared'}\n")
    runs_a, runs_b = tmp_path / "runs" / "A", tmp_path / "runs" / "B"
    assert statuses(run_plan(load_plan(path, runs_dir=runs_b), only=ONLY, console=quiet()))["report"] == "done"
    assert statuses(run_plan(load_plan(path, ["train.seed=7"], runs_dir=runs_a), only=["report"], console=quiet())) == {"report": "done"}
    status = json.loads((tmp_path / "shared" / "status.json").read_text())
    assert status["stages"] == [] and status["written_for"]["overrides"] == ["train.seed=7"]
    assert statuses(run_plan(load_plan(path, runs_dir=runs_b), only=ONLY, console=quiet()))["report"] == "done"
    text = (tmp_path / "shared" / "report.md").read_text()
    assert f"- runs: `{runs_b}`" in text and "train.seed=7" not in text
    assert statuses(run_plan(load_plan(path, runs_dir=runs_b), only=ONLY, console=quiet()))["report"] == "skipped"


def test_a_report_folder_holding_runs_or_an_interrupted_first_report_is_sftkds(tmp_path, tiny_dataset):
    """The report replaces only its own files: a `report:` that is the runs folder (holding the
    stage runs, no report yet) is taken, and so is one whose first report stopped after its compare
    files and figures and before its status.json (all signed or told by content as sftkd's)."""
    runs = tmp_path / "runs"
    path = write_plan(tmp_path, tiny_dataset, f"report: {runs}\n")
    evaluated = ["data", "teacher", "student", "eval-teacher", "eval-student"]
    assert not run_plan(load_plan(path), only=evaluated, console=quiet()).failed
    assert statuses(run_plan(load_plan(path), only=ONLY, console=quiet()))["report"] == "done"
    written = sorted(p.name for p in runs.iterdir() if p.is_file())
    (runs / "status.json").unlink()  # as if stopped before the report's last file
    (runs / "report.md").unlink()
    build_stages(load_plan(path))  # not refused
    assert {"compare.csv", "compare.json"} <= set(written)
    (runs / "compare.csv").write_text("my,own\n")
    with pytest.raises(SftkdError, match=r"holds compare.csv, which sftkd reproduce did not write"):
        build_stages(load_plan(path))


def test_a_status_json_of_an_earlier_sftkd_keeps_its_rows_and_the_report_is_written_again(tmp_path, tiny_dataset):
    """An earlier sftkd recorded no `written_for`: its rows are this plan's (kept for the stages
    not run now), and the report is not up to date until written once more."""
    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    assert statuses(run_plan(plan, only=["data", "teacher", "report"], console=quiet()))["report"] == "done"
    status_file = plan.report_dir / "status.json"
    status = json.loads(status_file.read_text())
    del status["written_for"]
    status_file.write_text(json.dumps(status))
    assert statuses(run_plan(load_plan(plan.path), only=["report"], console=quiet())) == {"report": "done"}
    rows = {row["id"] for row in json.loads(status_file.read_text())["stages"]}
    assert {"data", "teacher"} <= rows


def test_a_report_folder_inside_the_plans_runs_folder_moves_with_runs_dir(tmp_path, tiny_dataset):
    """The shipped table3/table5 plans keep their report in their runs folder: with --runs-dir
    elsewhere, the report goes along (it replaced the report of the plan's own runs folder); a
    report folder outside it stays where the plan says."""
    path = write_plan(tmp_path, tiny_dataset, f"report: {tmp_path / 'runs' / 'report-x'}\n")
    assert load_plan(path).report_dir == tmp_path / "runs" / "report-x"
    assert load_plan(path, runs_dir=tmp_path / "other").report_dir == tmp_path / "other" / "report-x"
    outside = write_plan(tmp_path, tiny_dataset, f"report: {tmp_path / 'docs'}\n", name="outside.yaml")
    assert load_plan(outside, runs_dir=tmp_path / "other").report_dir == tmp_path / "docs"


def test_an_empty_file_of_the_users_named_like_a_compare_file_survives_a_report_rewrite(tmp_path, tiny_dataset):
    """A report rewrite removes its earlier compare files and figures, told by their content as
    sftkd's: an empty file counted as sftkd's, so the user's empty compare-notes.json in the
    report folder was deleted. Only a file holding sftkd's content is removed now."""
    path = write_plan(tmp_path, tiny_dataset)
    plan = load_plan(path)
    assert statuses(run_plan(plan, only=ONLY, console=quiet()))["report"] == "done"
    notes = plan.report_dir / "compare-notes.json"
    notes.write_bytes(b"")
    rewritten = run_plan(load_plan(path, ["train.seed=7"]), only=ONLY, console=quiet())
    assert statuses(rewritten)["report"] == "done"  # written anew for other overrides
    assert notes.is_file() and notes.read_bytes() == b""


def test_only_plain_report_file_names_a_status_json_lists_are_ever_removed():
    """status.json's "files" is read as plain names of the report's compare files and figures:
    a path, report.md, status.json, another name or a damaged list removes nothing."""
    from sftkd_cli.reproduce.report_folder import recorded_files

    listed = ["compare.csv", "box-a.png", "compare/../../victim.csv", "report.md", "status.json", "notes.txt", 3]
    assert recorded_files({"files": listed}) == {"compare.csv", "box-a.png"}
    assert recorded_files({"files": "compare.csv"}) == set() and recorded_files({}) == set() and recorded_files(None) == set()
