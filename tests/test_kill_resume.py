"""A run killed with SIGKILL in the middle of an epoch resumes to the same run, bit for bit: the
same weights, optimizer and scheduler state, best checkpoint, loss sums and history.

On the CPU by default; on CUDA only with train.deterministic=true (cuDNN's default convolution
algorithms are not deterministic, so without it a resumed CUDA run is close but not equal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import json

import pytest
import torch

from sftkd_cli.runs import load_checkpoint

#: what may differ between two runs of one recipe: wall-clock times
TIMES = ("epoch_seconds", "seconds")

# The victim kills itself with SIGKILL when training hands over the checkpoint after step 3 of
# the second epoch, once the one after step 2 is on disk: steps are lost, and the point is the
# same on any machine (polling for it from outside raced the training on fast ones).
KILLED_AT = (1, 3)
_SELF_KILLING = f"""
import os, signal
from sftkd_cli.training.checkpoint_writer import CheckpointWriter
submit = CheckpointWriter.submit
def killing_submit(self, paths, state):
    if (state["epoch"], state["step_in_epoch"]) == {KILLED_AT}:
        self.wait()
        os.kill(os.getpid(), signal.SIGKILL)
    submit(self, paths, state)
CheckpointWriter.submit = killing_submit
from sftkd_cli.cli.app import main
main()
"""


def _command(tiny_dataset, runs, name, *extra, launcher=("-m", "sftkd_cli")):
    return [sys.executable, *launcher, "train-teacher", "--model", "D2C2", "--name", name,
            f"data.path={tiny_dataset}", f"run.dir={runs}", "train.epochs=3", "train.batch_size=1",
            "train.threads=1", "train.checkpoint_every=1", *extra]


DEVICES = [
    pytest.param(["train.device=cpu"], id="cpu"),
    pytest.param(["train.device=cuda", "train.deterministic=true"], id="cuda-deterministic", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize("device", DEVICES)
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tiny_dataset, tmp_path, device):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_command(tiny_dataset, tmp_path, "straight", *device), check=True, env=env, capture_output=True)

    victim = subprocess.run(_command(tiny_dataset, tmp_path, "killed", *device, launcher=("-c", _SELF_KILLING)),
                            env=env, capture_output=True, timeout=300)
    assert victim.returncode == -signal.SIGKILL, victim.stderr.decode()[-2000:]
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)
    assert (saved["epoch"], saved["step_in_epoch"]) == (KILLED_AT[0], KILLED_AT[1] - 1)

    subprocess.run(_command(tiny_dataset, tmp_path, "killed", *device, "--resume"), check=True, env=env, capture_output=True)
    for name in ("last.pt", "best.pt"):
        _assert_equal(load_checkpoint(tmp_path / "straight" / "checkpoints" / name),
                      load_checkpoint(tmp_path / "killed" / "checkpoints" / name), name)
    history = [[{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in (run / "history.jsonl").read_text().splitlines()]
               for run in (tmp_path / "straight", tmp_path / "killed")]
    assert history[0] == history[1] and len(history[0]) == 3


def _assert_equal(a: object, b: object, where: str) -> None:
    """`a` and `b` equal all through (tensors bit for bit), wall-clock times left out."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            if key not in TIMES:
                _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


def test_deterministic_training_switches_on_what_makes_cuda_resume_exact(tiny_dataset, tmp_path, monkeypatch):
    """train.deterministic=true (run here on the CPU): during the fit, deterministic torch ops and
    cuDNN algorithms, no cuDNN autotuning, a fixed cuBLAS workspace, as bit-exact resume on CUDA
    needs, and train.threads; afterwards the caller's settings again, so that a later stage
    trained in the same process (a `reproduce` worker) does not inherit them."""
    from cli_helpers import sftkd

    from sftkd_cli.training.engine import Trainer

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that undo restores it, absent or not
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    threads = torch.get_num_threads()
    seen = []
    real = Trainer._loop

    def recording(self, train_slices):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                     torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.get_num_threads()))
        return real(self, train_slices)

    monkeypatch.setattr(Trainer, "_loop", recording)
    before = (torch.are_deterministic_algorithms_enabled(), False, True, None, threads)
    try:
        for name, deterministic in (("d", "true"), ("later", "false")):
            sftkd("train-teacher", "--model", "D2C2", "--name", name, f"data.path={tiny_dataset}", f"run.dir={tmp_path}",
                  "train.epochs=1", "train.max_steps_per_epoch=1", f"train.threads={threads + 1}", "train.device=cpu",
                  f"train.deterministic={deterministic}")
            assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
                    torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                    torch.get_num_threads()) == before
        assert seen == [(True, True, False, ":4096:8", threads + 1), (*before[:4], threads + 1)]
    finally:
        torch.use_deterministic_algorithms(False)
