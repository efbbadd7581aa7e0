"""`sftkd reproduce`: how a plan reads its stages' state on disk, and what the dry run and the
estimate predict from it: a run trained beyond the plan's epochs, evaluations of the last
checkpoint after a resume, stage ids that would collide, a report written with problems, and
what comes after a stage that will train.

Device: CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_reproduce import quiet, statuses, write_plan
from typer.testing import CliRunner

from sftkd_cli.cli.app import app
from sftkd_cli.errors import SftkdError
from sftkd_cli.reproduce import build_stages, load_plan, run_plan
from sftkd_cli.runs import load_checkpoint

QUICK = ["train.device=cpu", "train.max_steps_per_epoch=1"]


def dry_actions(path: Path, *args: str) -> dict[str, str]:
    """The action column of `sftkd reproduce PATH --dry-run ARGS`, by stage id."""
    result = CliRunner().invoke(app, ["reproduce", str(path), "--dry-run", *args], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    rows = [line.split("│") for line in result.output.splitlines() if line.count("│") > 3]
    return {cells[1].strip(): cells[2].strip() for cells in rows}


def test_a_run_trained_beyond_the_plans_epochs_is_refused(tmp_path, tiny_dataset):
    """A finished 2-epoch run is not the 1-epoch plan's: the dry run and the run refuse it (as a
    shorter --resume is refused) and nothing is evaluated or reported as the 1-epoch plan's."""
    path = write_plan(tmp_path, tiny_dataset)
    assert not run_plan(load_plan(path, QUICK), only=["teacher"], console=quiet()).failed
    shorter = [*QUICK, "train.epochs=1"]
    actions = dry_actions(path, "--only", "teacher,eval-teacher", *shorter)
    assert actions["teacher"].startswith("refused (train.epochs 1: the run has trained into epoch 2 (")
    assert "expected 2 or more; the run differs from the plan: delete" in actions["teacher"]
    assert actions["eval-teacher"] == "blocked (teacher refused)"
    result = CliRunner().invoke(app, ["reproduce", str(path), "--only", "teacher,eval-teacher", *shorter])
    assert result.exit_code == 2 and "train.epochs 1: the run has trained into epoch 2" in result.output, result.output
    assert not (tmp_path / "runs" / "teacher" / "metrics.json").exists()
    assert load_checkpoint(tmp_path / "runs" / "teacher" / "checkpoints" / "last.pt")["epoch"] == 2  # untouched


def test_an_evaluation_of_the_last_checkpoint_is_redone_after_the_run_resumed(tmp_path, tiny_dataset):
    """checkpoint: last scores last.pt, which a resumed run rewrites while best.pt may stay: the
    scores are out of date when last.pt is newer than metrics.json, whatever best.pt's age."""
    from sftkd_cli.reproduce.stages import evaluation_complete

    def evaluation(checkpoint: str):
        plan = load_plan(write_plan(tmp_path, tiny_dataset, f"  evaluate: {{checkpoint: {checkpoint}}}\n"))
        return plan, next(s for s in build_stages(plan) if s.id == "eval-teacher")

    plan, stage = evaluation("last")
    run = stage.run
    (run / "checkpoints").mkdir(parents=True)
    (run / "recon.h5").write_bytes(b"")
    metrics = {"format": 1, "dataset": {"split": "val"}, "checkpoint": "last"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    stamps = {"checkpoints/best.pt": 100, "metrics.json": 200, "checkpoints/last.pt": 150}
    for name, stamp in stamps.items():
        (run / name).touch()
        os.utime(run / name, (stamp, stamp))
    assert evaluation_complete(stage, plan)
    os.utime(run / "checkpoints" / "last.pt", (300, 300))  # resumed: last.pt moved on, best.pt did not improve
    assert not evaluation_complete(stage, plan)
    (run / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": "best"}))
    os.utime(run / "metrics.json", (200, 200))
    plan, stage = evaluation("best")  # the best checkpoint's scores still hold
    assert evaluation_complete(stage, plan)


def test_stage_ids_that_collide_are_refused_at_plan_load(tmp_path, tiny_dataset):
    """A variant named sft beside the shared sft: both evaluations would be eval-sft-student (the
    shared student never evaluated, reported done twice)."""
    extra = "  evaluate: {sft_student: true}\nshared: [sft]\nvariants:\n  - {name: sft}\n"
    path = write_plan(tmp_path, tiny_dataset, extra)
    with pytest.raises(SftkdError, match=r"two stages get the id 'eval-sft-student' .*; rename variant 'sft'$") as info:
        build_stages(load_plan(path))
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["reproduce", str(path), "--dry-run"])
    assert result.exit_code == 2 and "rename variant 'sft'" in result.output and "Traceback" not in result.output
    renamed = path.read_text().replace("{name: sft}", "{name: mine}")
    path.write_text(renamed)
    ids = [s.id for s in build_stages(load_plan(path))]
    assert len(ids) == len(set(ids)) and "eval-sft-student" in ids and "eval-mine-student" in ids


def test_a_report_written_with_problems_is_written_again(tmp_path, tiny_dataset):
    """The report failed with problems: running the plan again rewrites it (and fails again),
    instead of calling the report with its Problems section up to date."""
    extra = "paper:\n  columns: [4x Std-KD]\n  rows:\n    Teacher: [1/0.1]\n"  # nothing evaluated: a problem
    plan = load_plan(write_plan(tmp_path, tiny_dataset, extra))
    for _ in range(2):
        outcome = run_plan(plan, only=["data", "report"], console=quiet())
        assert statuses(outcome) == {"data": "skipped", "report": "failed"}
        assert "with problems: paper table" in outcome.failed[0].note
        assert "## Problems" in (plan.report_dir / "report.md").read_text()
    assert json.loads((plan.report_dir / "status.json").read_text())["problems"]
    fine = load_plan(write_plan(tmp_path, tiny_dataset))
    assert statuses(run_plan(fine, only=["data", "report"], console=quiet()))["report"] == "done"
    assert statuses(run_plan(fine, only=["data", "report"], console=quiet()))["report"] == "skipped"


def test_the_dry_run_and_the_estimate_see_what_comes_after_a_stage_that_will_train(tmp_path, tiny_dataset):
    """With finished 1-epoch runs and train.epochs=2, the teacher resumes: its evaluation and the
    report run (not skip), a distillation from it is refused (its teacher changes), the estimate
    then gives no times (the plan cannot run as it stands) and without that distillation times what
    runs, and the real run does what the dry run said."""
    from sftkd_cli.reproduce.estimate import estimate_plan

    path = write_plan(tmp_path, tiny_dataset)
    only = ["data", "teacher", "std-kd-at", "eval-teacher", "eval-std-kd-at", "report"]
    first = run_plan(load_plan(path, [*QUICK, "train.epochs=1"]), only=only, console=quiet())
    assert not first.failed, first.results
    longer = [*QUICK, "train.epochs=2"]
    actions = dry_actions(path, "--only", ",".join(only), *longer)
    assert actions["teacher"] == "resume (1/2 epochs)"
    assert actions["std-kd-at"].startswith("refused (if teacher, which will train first, changes its best checkpoint")
    assert actions["eval-teacher"] == "run (after teacher)" and actions["eval-std-kd-at"] == "blocked (std-kd-at refused)"
    assert actions["report"] == "run"
    plan = load_plan(path, longer)
    stages = build_stages(plan)
    refused = estimate_plan(plan, stages, set(only), 1, probe=False)  # the plan cannot run as it stands: no times
    assert refused.refused == ("std-kd-at",) and refused.times == ()
    runnable = {"data", "teacher", "eval-teacher", "report"}
    times = {t.id: t for t in estimate_plan(plan, stages, runnable, 1, probe=False).times}
    assert times["eval-teacher"].seconds > 0 and times["eval-teacher"].how != "complete"
    outcome = run_plan(plan, only=only, console=quiet())
    assert statuses(outcome) == {"data": "skipped", "teacher": "resumed", "std-kd-at": "failed", "eval-teacher": "done",
                                 "eval-std-kd-at": "skipped", "report": "failed"}
    # the refused run's old scores are not shown as results: the report names them among its problems
    assert "eval-std-kd-at: left out of the results" in outcome.results[-1].note


def test_an_earlier_status_with_null_seconds_is_read_as_nan(tmp_path):
    """status.json writes a NaN as null (strict JSON); the next report reads it back as NaN."""
    import math
    from types import SimpleNamespace

    from sftkd_cli.reproduce.report import _merged_status
    from sftkd_cli.reproduce.stages import StageResult

    path = tmp_path / "status.json"
    path.write_text(json.dumps({"format": 1, "stages": [{"id": "teacher", "status": "done", "seconds": None,
                                                         "note": ""}], "problems": []}))
    stages = [SimpleNamespace(id="teacher", kind="train-teacher"), SimpleNamespace(id="eval", kind="evaluate")]
    merged = _merged_status(path, stages, [StageResult("eval", "evaluate", "done", 1.0)])
    assert [r.id for r in merged] == ["teacher", "eval"] and math.isnan(merged[0].seconds)
    assert merged[0].note == "(earlier)"


def test_a_report_recording_a_failed_stage_is_written_again_once_it_is_fixed(tmp_path, tiny_dataset):
    """The data stage failed (the dataset was not there), so the report said 'failed'; once the
    cause is fixed every stage is up to date, but the report is written again, not kept saying so."""
    import shutil

    plan = load_plan(write_plan(tmp_path, tmp_path / "data"))
    outcome = run_plan(plan, only=["data", "report"], console=quiet())
    assert statuses(outcome) == {"data": "failed", "report": "done"}
    assert "| data | failed |" in (plan.report_dir / "report.md").read_text()
    shutil.copytree(tiny_dataset, tmp_path / "data")
    assert statuses(run_plan(plan, only=["data", "report"], console=quiet())) == {"data": "skipped", "report": "done"}
    assert "| data | skipped |" in (plan.report_dir / "report.md").read_text()
    assert [s["status"] for s in json.loads((plan.report_dir / "status.json").read_text())["stages"]] == ["skipped"]
    assert statuses(run_plan(plan, only=["data", "report"], console=quiet())) == {"data": "skipped", "report": "skipped"}


def test_a_stage_stopped_midway_counts_its_epochs_and_steps_as_training_does(tmp_path, monkeypatch):
    """A run stopped 6 steps into its first epoch: the plan says '0/2 epochs and 6 steps of epoch 1',
    as training's own 'resuming at epoch 1, step 6' numbers it (it said 'epoch 0/2, step 6')."""
    from types import SimpleNamespace

    import sftkd_cli.reproduce.stages as stages_module
    from sftkd_cli.config import load_recipe

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("{}\n")
    point = SimpleNamespace(path=run / "checkpoints" / "last.pt", state={"epoch": 0, "step_in_epoch": 6})
    monkeypatch.setattr(stages_module, "resume_point", lambda run_dir, hint: point)
    stage = stages_module.Stage("teacher", "teacher", recipe=load_recipe(None, ["train.epochs=2"]), run=run)
    assert stages_module.training_state(stage) == ("partial", "0/2 epochs and 6 steps of epoch 1")


def test_the_estimate_adds_no_worker_start_when_nothing_runs(tmp_path, tiny_dataset, monkeypatch):
    """Every stage done: the estimate with --jobs 2 is 0 s, not the workers' start-up time."""
    import sftkd_cli.reproduce.estimate as estimate_module

    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    stages = build_stages(plan)
    monkeypatch.setattr(estimate_module, "seconds_per_unit", lambda plan, stages, probe=True: (1.0, "scaled", ""))
    monkeypatch.setattr(estimate_module, "stage_time", lambda plan, stage, rate, how, action: estimate_module.StageTime(stage.id, 0.0, "complete"))
    monkeypatch.setattr(estimate_module, "worker_start_seconds", lambda: 2.0)
    chosen = {s.id for s in stages}
    assert estimate_module.estimate_plan(plan, stages, chosen, 2, probe=False).wall == 0


def test_a_stage_whose_last_checkpoint_is_behind_best_is_partial_and_resumed(tmp_path, tiny_dataset):
    """A kill in the final epoch after best.pt and before last.pt leaves last.pt an epoch behind:
    the stage is not complete (its `checkpoint: last` evaluation would score the older weights),
    `sftkd evaluate --checkpoint last` says so in a note, and running the stage brings last.pt up
    to date. The stale last.pt is an earlier copy of the same run's, put back."""
    import shutil

    from sftkd_cli.reproduce.stages import training_state

    path = write_plan(tmp_path, tiny_dataset, "  evaluate: {checkpoint: last}\n")
    assert not run_plan(load_plan(path, [*QUICK, "train.epochs=1"]), only=["teacher"], console=quiet()).failed
    checkpoints = tmp_path / "runs" / "teacher" / "checkpoints"
    shutil.copy2(checkpoints / "last.pt", tmp_path / "epoch1.pt")
    plan = load_plan(path, QUICK)  # 2 epochs
    assert not run_plan(plan, only=["teacher"], console=quiet()).failed
    stage = next(s for s in build_stages(plan) if s.id == "teacher")
    assert training_state(stage) == ("complete", "2/2 epochs")
    assert load_checkpoint(checkpoints / "best.pt")["epoch"] == 2  # epoch 2 improved: best.pt written then last.pt
    shutil.copy2(tmp_path / "epoch1.pt", checkpoints / "last.pt")  # as if killed between the two writes

    assert training_state(stage) == ("partial", "2/2 epochs (last.pt behind best.pt)")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "runs" / "teacher"), "--checkpoint", "last",
                                      "--device", "cpu", "--no-recon"])
    assert result.exit_code == 0, result.output
    assert "note: " in result.output and "trained 1 of its 2 planned epochs (stopped early; --resume continues it); " \
        "this is its last checkpoint, from epoch 1" in " ".join(result.output.split())
    assert statuses(run_plan(plan, only=["teacher"], console=quiet()))["teacher"] != "skipped"  # resumed
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 2
    assert training_state(stage) == ("complete", "2/2 epochs")
    (checkpoints / "last.pt").unlink()  # deleted to save space: the finished stage stays complete
    assert training_state(stage) == ("complete", "2/2 epochs")
