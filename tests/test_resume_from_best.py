"""`--resume` after a stop between an epoch's two checkpoint writes (best.pt, then last.pt):
it continues from best.pt, which holds that epoch's complete state, and ends bit for bit as an
uninterrupted run; without a consistent state it still refuses in one line (CPU, through the CLI).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sftkd_cli.errors import SftkdError
from sftkd_cli.runs import load_checkpoint
from sftkd_cli.training import checkpoint_writer
from sftkd_cli.training.checkpoint_writer import CheckpointWriter
from test_hardening import fails_cleanly, invoke, snapshot, train_args, trained_run  # noqa: F401  (fixture)

torch.set_num_threads(1)


def _train(data: Path, runs: Path, epochs: int, *extra: str):
    return invoke(*train_args(data, runs, "r", f"train.epochs={epochs}", *extra))


def _assert_same_run(a: Path, b: Path) -> None:
    """Same weights, optimiser state and history (but the seconds) in the runs `a` and `b`, bit for bit."""
    x, y = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (a, b))
    assert x["epoch"] == y["epoch"]
    assert x["objective"].keys() == y["objective"].keys()
    for key, value in x["objective"].items():
        assert torch.equal(value, y["objective"][key]), key
    for index, state in x["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, y["optimizer"]["state"][index][key]), (index, key)
    rows = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (run / "history.jsonl").read_text().splitlines()] for run in (a, b)]
    assert rows[0] == rows[1]


def stop_before_writing(monkeypatch, at: tuple[int, int]) -> None:
    """End the process (as a kill -9 would: SystemExit, which nothing cleans up after) when
    training hands over the checkpoint of (epoch, step) `at`, before it is written: the run has no
    checkpoint of it. (A Ctrl-C there would remove a new run that has no checkpoint yet.)"""
    submit = CheckpointWriter.submit

    def stopping(self, paths, state):
        if (state["epoch"], state["step_in_epoch"]) == at:
            raise SystemExit(137)
        submit(self, paths, state)

    monkeypatch.setattr(CheckpointWriter, "submit", stopping)


@pytest.fixture
def straight(tiny_dataset, tmp_path) -> Path:
    """An uninterrupted 2-epoch run."""
    assert _train(tiny_dataset, tmp_path / "straight", 2).exit_code == 0
    return tmp_path / "straight" / "r"


def test_a_kill_after_best_before_last_of_epoch_1_resumes_from_best(tiny_dataset, tmp_path, straight):
    runs = tmp_path / "runs"
    assert _train(tiny_dataset, runs, 1).exit_code == 0
    (runs / "r" / "checkpoints" / "last.pt").unlink()  # the kill window: best.pt written, last.pt not yet
    result = _train(tiny_dataset, runs, 2, "--resume")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "resuming from" in line]
    assert len(notes) == 1 and "last.pt: missing" in notes[0] and "best.pt" in notes[0], result.output
    _assert_same_run(runs / "r", straight)


def test_a_failed_write_of_last_after_best_resumes_from_best(tiny_dataset, tmp_path, straight, monkeypatch):
    real_write, failed = checkpoint_writer.write_checkpoint, []

    def disk_full_once(path, data):  # epoch 1's last.pt fails; best.pt before it was written
        if path.name == "last.pt" and not failed:
            failed.append(path)
            raise SftkdError(f"{path}: could not write checkpoint (No space left on device); the previous one is kept")
        real_write(path, data)

    runs = tmp_path / "runs"
    monkeypatch.setattr(checkpoint_writer, "write_checkpoint", disk_full_once)
    fails_cleanly(*train_args(tiny_dataset, runs, "r", "train.epochs=2"), names=("last.pt: could not write",),
                  after_epochs=True)
    monkeypatch.undo()
    assert load_checkpoint(runs / "r" / "checkpoints" / "best.pt")["epoch"] >= 1
    assert not (runs / "r" / "checkpoints" / "last.pt").exists()
    result = _train(tiny_dataset, runs, 2, "--resume")
    assert result.exit_code == 0, result.output
    _assert_same_run(runs / "r", straight)


def test_a_last_checkpoint_behind_best_resumes_from_best(tiny_dataset, tmp_path, straight):
    """last.pt one epoch behind best.pt (a stop between the writes of epoch 2): best.pt is newer."""
    runs = tmp_path / "runs"
    assert _train(tiny_dataset, runs, 1).exit_code == 0
    older = shutil.copy(runs / "r" / "checkpoints" / "last.pt", tmp_path / "epoch1.pt")
    assert _train(tiny_dataset, runs, 2, "--resume").exit_code == 0
    best = load_checkpoint(runs / "r" / "checkpoints" / "best.pt")
    assert best["epoch"] == best["best_epoch"] == 2  # epoch 2 improved: best.pt was written with it
    shutil.copy(older, runs / "r" / "checkpoints" / "last.pt")
    result = _train(tiny_dataset, runs, 2, "--resume")
    assert result.exit_code == 0, result.output
    assert "last.pt: saved after epoch 1" in result.output and "resuming from" in result.output, result.output
    _assert_same_run(runs / "r", straight)


def test_a_distillation_resumed_from_best_keeps_its_init_record(tiny_dataset, tmp_path, trained_run):
    """The `init` a resumed distillation records comes from the run's checkpoint (best.pt here),
    not from reloading --init-from, which may be gone by then."""
    init = shutil.copy(trained_run / "checkpoints" / "best.pt", tmp_path / "init.pt")
    args = ["distill", "--student", "D2C2", "--method", "at", "--name", "kd", "--teacher", trained_run,
            "--init-from", init, f"data.path={tiny_dataset}", f"run.dir={tmp_path / 'runs'}", "train.device=cpu",
            "train.threads=1", "train.max_steps_per_epoch=1", "data.max_val_slices=1"]
    assert invoke(*args, "train.epochs=1").exit_code == 0
    checkpoints = tmp_path / "runs" / "kd" / "checkpoints"
    (checkpoints / "last.pt").unlink()
    Path(init).unlink()
    result = invoke(*args, "train.epochs=2", "--resume")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(checkpoints / "last.pt")["init"] == load_checkpoint(checkpoints / "best.pt")["init"] != "random"


def test_a_kill_after_the_history_row_of_epoch_1_before_its_checkpoints_starts_over(tiny_dataset, tmp_path,
                                                                                   straight, monkeypatch):
    """history.jsonl is written first: a kill before epoch 1's checkpoints land leaves its row and
    no checkpoint. --resume drops the row, says so and starts over (kill -9 loses at most the epoch)."""
    runs = tmp_path / "runs"
    stop_before_writing(monkeypatch, (1, 0))
    assert _train(tiny_dataset, runs, 2).exit_code != 0
    monkeypatch.undo()
    assert len((runs / "r" / "history.jsonl").read_text().splitlines()) == 1
    assert not list((runs / "r" / "checkpoints").iterdir())
    result = _train(tiny_dataset, runs, 2, "--resume")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "history.jsonl" in line]
    assert len(notes) == 1 and "dropped; starting over from epoch 1" in notes[0], result.output
    _assert_same_run(runs / "r", straight)


def test_a_run_evaluated_whose_checkpoints_were_removed_does_not_start_over(tiny_dataset, tmp_path):
    """One history row and no checkpoint also after the checkpoints of a finished, evaluated run
    were removed: starting over would drop what its scores describe, so --resume refuses."""
    runs = tmp_path / "runs"
    assert _train(tiny_dataset, runs, 1).exit_code == 0
    (runs / "r" / "metrics.json").write_text("{}")  # as `sftkd evaluate` leaves one
    for checkpoint in (runs / "r" / "checkpoints").iterdir():
        checkpoint.unlink()
    before = snapshot(runs / "r")
    fails_cleanly(*train_args(tiny_dataset, runs, "r", "train.epochs=2", "--resume"),
                  names=("last.pt: missing", "history.jsonl has 1 row", "--force"))
    assert snapshot(runs / "r") == before


@pytest.mark.parametrize("damage", ["no history", "another val_l1", "best of epoch 1, history of 0"])
def test_without_a_consistent_state_resume_is_refused(tiny_dataset, tmp_path, damage):
    """last.pt missing and best.pt not the state history.jsonl records: it would continue from
    a state that is not the run's, so it is refused as before (nothing is written)."""
    runs = tmp_path / "runs"
    assert _train(tiny_dataset, runs, 1).exit_code == 0
    (runs / "r" / "checkpoints" / "last.pt").unlink()
    history = runs / "r" / "history.jsonl"
    if damage == "no history":
        history.unlink()
    elif damage == "another val_l1":
        row = json.loads(history.read_text())
        history.write_text(json.dumps({**row, "val_l1": row["val_l1"] + 1.0}) + "\n")
    else:
        history.write_text("")
    before = snapshot(runs / "r")
    fails_cleanly(*train_args(tiny_dataset, runs, "r", "train.epochs=2", "--resume"),
                  names=("last.pt: missing, and best.pt does not hold", "--force"))
    assert snapshot(runs / "r") == before
