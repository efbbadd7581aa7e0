"""Checkpoints written on a background thread (sftkd_cli.training.checkpoint_writer).

Device: CPU. What the writer writes equals a synchronous save of the state at submit time (later
in-place changes do not leak in), writes happen one at a time, and an error in the thread is
raised in the training thread. The resume tests (test_engine.py, test_kill_resume.py,
test_hardening.py) run through the writer too.
"""

from __future__ import annotations

import copy
import io
import time
from typing import Any

import pytest
import torch

import sftkd_cli.files as files_module
from sftkd_cli.config import load_recipe
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import build_model
from sftkd_cli.runs import RunDir, checkpoint_bytes, load_checkpoint, save_checkpoint
from sftkd_cli.training import checkpoint_writer
from sftkd_cli.training.checkpoint_writer import CheckpointWriter, snapshot
from sftkd_cli.training.engine import Trainer
from sftkd_cli.training.objectives import Supervised
from test_engine import Phantoms, _fit as train_phantoms
from test_hardening import fails_cleanly, invoke, train_args


def _equal(a: Any, b: Any) -> bool:
    """Same structure, same values (tensors: same dtype, shape and elements)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _state() -> dict[str, Any]:
    return {"format": 1, "models": {"model": {"arch": "D2C2", "channels": 2, "pad": 5, "state": {"w": torch.arange(6.0).view(2, 3)}}},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
            "epoch": 2, "best_val_l1": 0.25, "betas": (0.9, 0.999)}


def test_a_background_checkpoint_equals_the_synchronous_one_of_the_state_at_submit(tmp_path):
    state = _state()
    expected = copy.deepcopy(state)
    writer = CheckpointWriter()
    writer.submit([tmp_path / "best.pt", tmp_path / "last.pt"], state)
    state["models"]["model"]["state"]["w"].add_(100.0)  # the next training step, in place
    state["optimizer"]["state"][0]["step"].add_(1.0)
    state["optimizer"]["param_groups"][0]["lr"] = 5e-4
    writer.wait()
    save_checkpoint(tmp_path / "sync.pt", expected)
    synchronous = load_checkpoint(tmp_path / "sync.pt")
    for name in ("best.pt", "last.pt"):
        assert _equal(load_checkpoint(tmp_path / name), synchronous), name


def test_snapshot_copies_every_tensor_and_container():
    state = _state()
    copied, events = snapshot(state)
    assert events == [] and _equal(copied, state)
    assert copied["models"]["model"]["state"]["w"].data_ptr() != state["models"]["model"]["state"]["w"].data_ptr()
    assert copied["optimizer"]["param_groups"][0] is not state["optimizer"]["param_groups"][0]


def test_writes_happen_one_at_a_time_in_order(tmp_path, monkeypatch):
    log: list[str] = []

    def slow_write(path, data):
        log.append(f"start {path.name}")
        time.sleep(0.05)  # long enough that a second write started meanwhile would show in the log
        log.append(f"end {path.name}")

    monkeypatch.setattr(checkpoint_writer, "write_checkpoint", slow_write)
    writer = CheckpointWriter()
    writer.submit([tmp_path / "a.pt", tmp_path / "b.pt"], _state())
    writer.submit([tmp_path / "c.pt"], _state())
    writer.wait()
    assert log == ["start a.pt", "end a.pt", "start b.pt", "end b.pt", "start c.pt", "end c.pt"]


def test_a_checkpoint_for_several_files_is_serialised_once(tmp_path, monkeypatch):
    """best and last of one epoch: one serialisation, the same bytes in both files."""
    calls = []
    real = checkpoint_writer.checkpoint_bytes
    monkeypatch.setattr(checkpoint_writer, "checkpoint_bytes", lambda state: calls.append(1) or real(state))
    with CheckpointWriter() as writer:
        writer.submit([tmp_path / "best.pt", tmp_path / "last.pt"], _state())
    assert calls == [1]
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert _equal(load_checkpoint(tmp_path / "last.pt"), _state())


def test_a_serialised_checkpoint_is_bytes_not_a_view_of_its_buffer():
    """A view of the BytesIO (`getbuffer`) caught in a failed write's traceback cycle crashed
    CPython 3.12.0-3.12.1's garbage collector (gh-111049): seen as a segfault in the next test."""
    data = checkpoint_bytes(_state())
    assert type(data) is bytes
    assert _equal(torch.load(io.BytesIO(data), weights_only=True), _state())


def test_an_error_in_the_writer_is_raised_by_the_next_save_or_wait(tmp_path, monkeypatch):
    def disk_full(path, data):
        raise SftkdError(f"{path}: could not write checkpoint (No space left on device); the previous one is kept")

    monkeypatch.setattr(checkpoint_writer, "write_checkpoint", disk_full)
    writer = CheckpointWriter()
    writer.submit([tmp_path / "a.pt"], _state())  # returns: the write fails in the background
    with pytest.raises(SftkdError, match=r"a.pt: could not write checkpoint .* \(the checkpoint of the end of epoch 2\)$"):
        writer.wait()  # found later (the next save, an epoch on): the error names the epoch it lost
    writer.wait()  # raised once
    writer.submit([tmp_path / "b.pt"], _state())
    with pytest.raises(SftkdError, match="b.pt: could not write checkpoint"):
        writer.submit([tmp_path / "c.pt"], _state())  # the next save raises the previous one's error
    writer.wait()


def test_a_failed_write_during_training_stops_fit_with_one_line(tmp_path, monkeypatch):
    real_write = files_module.write_bytes_synced

    def no_space(tmp, data):  # the checkpoints only (env.json and the history are written)
        if ".pt.tmp" in str(tmp):
            raise OSError(28, "No space left on device")
        real_write(tmp, data)

    recipe = load_recipe(None, ["train.epochs=2", "train.batch_size=2", "train.device=cpu", f"run.dir={tmp_path}",
                                "run.name=r", "run.role=teacher"])
    run = RunDir(tmp_path / "r")
    run.prepare(recipe, resume=False, force=False)
    monkeypatch.setattr(files_module, "write_bytes_synced", no_space)
    torch.manual_seed(0)
    try:
        with pytest.raises(SftkdError, match=r"checkpoints/best.pt: could not write checkpoint \(No space left on device\); "
                                              r"nothing written \(the checkpoint of the end of epoch 1\)$"):  # the first best.pt: no previous one to keep
            Trainer(Supervised(build_model("D2C2")), recipe, run).fit(Phantoms(4), Phantoms(2, seed=1))
    finally:
        run.unlock()
    assert not run.checkpoint("best").exists() and not run.checkpoint("last").exists()  # the job stopped at best


def test_a_run_checkpointed_in_the_background_equals_one_checkpointed_synchronously(tmp_path, monkeypatch):
    """The engine hands the writer live tensors: the files equal those of saving on the spot."""
    def fit(name: str) -> dict[str, Any]:
        _, run = train_phantoms(tmp_path, name, False, None, "train.checkpoint_every=1", train=Phantoms(5))
        return load_checkpoint(run.checkpoint("last"))

    background = fit("background")

    def on_the_spot(self, paths, state):
        for path in paths:
            save_checkpoint(path, state)

    monkeypatch.setattr(CheckpointWriter, "submit", on_the_spot)
    synchronous = fit("synchronous")
    for state in (background, synchronous):  # wall-clock seconds of the epoch so far: differ run to run
        assert state.pop("epoch_seconds") >= 0
    assert _equal(background, synchronous)


def test_a_resume_into_an_unwritable_checkpoints_folder_is_refused_before_any_work(tiny_dataset, tmp_path, read_only):
    """A failed background write is seen only at the next save, an epoch (and a history row) on:
    training checks first that it can write checkpoints/, and changes nothing when it cannot."""
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_dataset, runs, "r")).exit_code == 0
    run = runs / "r"
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}
    read_only(run / "checkpoints")
    fails_cleanly(*train_args(tiny_dataset, runs, "r", "train.epochs=2"), "--resume",
                  names=("checkpoints folder", str(run / "checkpoints"), "not writable"))
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"} == before
