"""A run killed with SIGKILL in the middle of an epoch resumes to the same run, bit for bit: the
same weights, optimizer and scheduler state, best checkpoint, loss sums and history, for each
objective (train-teacher killed; train-sft and distill stopped at once in process, which leaves
the same files), with an epoch whose last batch is partial.

On the CPU by default; on CUDA only with train.deterministic=true (cuDNN's default convolution
algorithms are not deterministic, so without it a resumed CUDA run is close but not equal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import json

import pytest
import torch

from sftkd_cli.runs import load_checkpoint
from sftkd_cli.training.checkpoint_writer import CheckpointWriter
from test_hardening import invoke, trained_run  # noqa: F401  (fixture: the distilled run's teacher)

#: what may differ between two runs of one recipe: wall-clock times
TIMES = ("epoch_seconds", "seconds")

# The victim kills itself with SIGKILL when training hands over the checkpoint after step 3 of
# the second epoch, once the one after step 2 is on disk: steps are lost, and the point is the
# same on any machine (polling for it from outside raced the training on fast ones). The resumed
# run then trains steps 3 to 5 of that epoch, the last a partial batch (9 slices, 2 a batch).
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


#: each objective's command and the options that choose its models (the distilled run's teacher
#: is the `trained_run` fixture, a D2C2 trained alone)
OBJECTIVES = {
    "train-teacher": ["train-teacher", "--model", "D2C2"],
    "train-sft": ["train-sft", "--teacher", "D3C2", "--student", "D2C2"],
    "distill": ["distill", "--student", "D2C2", "--method", "at"],
}


def _args(tiny_dataset, runs, name, objective, *extra) -> list[str]:
    """The sftkd arguments of a run of `objective` (an OBJECTIVES key; a distilled run's teacher
    is `extra`'s --teacher): 2 epochs of 5 steps (9 slices, 2 a batch: the last batch partial),
    a checkpoint after every step."""
    return [*OBJECTIVES[objective], "--name", name, f"data.path={tiny_dataset}", f"run.dir={runs}", "train.epochs=2",
            "train.batch_size=2", "train.threads=1", "train.checkpoint_every=1", "data.max_val_slices=1", *extra]


DEVICES = [
    pytest.param(["train.device=cpu"], id="cpu"),
    pytest.param(["train.device=cuda", "train.deterministic=true"], id="cuda-deterministic", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize("device", DEVICES)
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tiny_dataset, tmp_path, device):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run(name: str, *extra: str, launcher: tuple[str, ...] = ("-m", "sftkd_cli")) -> subprocess.CompletedProcess:
        command = [sys.executable, *launcher, *_args(tiny_dataset, tmp_path, name, "train-teacher", *device, *extra)]
        return subprocess.run(command, env=env, capture_output=True, timeout=300)

    assert run("straight").returncode == 0
    victim = run("killed", launcher=("-c", _SELF_KILLING))
    assert victim.returncode == -signal.SIGKILL, victim.stderr.decode()[-2000:]
    assert "train 9 slices" in victim.stdout.decode() and "of 5 steps, batch 2" in victim.stdout.decode()  # 4 + a partial
    saved = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == (KILLED_AT[0], KILLED_AT[1] - 1)
    resumed = run("killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    _assert_same_run(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.parametrize("objective", ["train-sft", "distill"])
def test_sft_and_distill_stopped_mid_epoch_then_resumed_equal_uninterrupted(tiny_dataset, tmp_path, trained_run,
                                                                             monkeypatch, objective):
    """train-sft and distill (CPU, in process: two more kill -9 runs would double this file's time):
    stopped at once where the kill -9 test's victim dies, with nothing written after the checkpoint
    of the step before (what a kill leaves), and resumed, the run equals the uninterrupted one,
    their objective's state (the SFT branches, the distilled student beside its teacher) included."""
    teacher = ["--teacher", str(trained_run)] if objective == "distill" else []
    assert invoke(*_args(tiny_dataset, tmp_path, "straight", objective, *teacher)).exit_code == 0
    submit = CheckpointWriter.submit

    def stopping(self, paths, state):
        if (state["epoch"], state["step_in_epoch"]) == KILLED_AT:
            raise KeyboardInterrupt  # as a second Ctrl-C: stops at once, this checkpoint unwritten
        submit(self, paths, state)

    monkeypatch.setattr(CheckpointWriter, "submit", stopping)
    assert invoke(*_args(tiny_dataset, tmp_path, "stopped", objective, *teacher)).exit_code == 130
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == (KILLED_AT[0], KILLED_AT[1] - 1)
    resumed = invoke(*_args(tiny_dataset, tmp_path, "stopped", objective, *teacher, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    _assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def _assert_same_run(a: Path, b: Path) -> None:
    """The runs `a` and `b` are the same: both checkpoints (weights, optimizer, scheduler, best
    tracking, loss sums; bit for bit) and the history, wall-clock times left out."""
    for name in ("last.pt", "best.pt"):
        _assert_equal(load_checkpoint(a / "checkpoints" / name), load_checkpoint(b / "checkpoints" / name), name)
    history = [[{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in (run / "history.jsonl").read_text().splitlines()]
               for run in (a, b)]
    assert history[0] == history[1] and len(history[0]) == 2


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
