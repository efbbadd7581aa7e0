"""A run killed with SIGKILL in the middle of an epoch resumes to the same weights, bit for bit.

On the CPU by default; on CUDA only with train.deterministic=true (cuDNN's default convolution
algorithms are not deterministic, so without it a resumed CUDA run is close but not equal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sftkd_cli.runs import load_checkpoint


def _command(tiny_dataset, runs, name, *extra):
    return [sys.executable, "-m", "sftkd_cli", "train-teacher", "--model", "D2C2", "--name", name,
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

    victim = subprocess.Popen(_command(tiny_dataset, tmp_path, "killed", *device), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        if last.exists():
            try:
                state = load_checkpoint(last)
            except Exception:  # noqa: BLE001 - only a committed file counts; keep polling
                state = {}
            if state.get("epoch") == 1 and state.get("step_in_epoch", 0) > 0:
                break
        time.sleep(0.02)
    assert victim.poll() is None, "training finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert load_checkpoint(last)  # never a corrupt checkpoint

    subprocess.run(_command(tiny_dataset, tmp_path, "killed", *device, "--resume"), check=True, env=env, capture_output=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["models"]["model"]["state"]
    b = load_checkpoint(last)["models"]["model"]["state"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_deterministic_training_switches_on_what_makes_cuda_resume_exact(tiny_dataset, tmp_path, monkeypatch):
    """train.deterministic=true (run here on the CPU): deterministic torch ops and cuDNN algorithms,
    no cuDNN autotuning, and a fixed cuBLAS workspace, as bit-exact resume on CUDA needs."""
    from cli_helpers import sftkd

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    try:
        sftkd("train-teacher", "--model", "D2C2", "--name", "d", f"data.path={tiny_dataset}", f"run.dir={tmp_path}",
              "train.epochs=1", "train.max_steps_per_epoch=1", "train.threads=1", "train.device=cpu",
              "train.deterministic=true")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
