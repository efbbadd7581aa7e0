"""torchrun with 2 CPU processes (gloo) matches one process with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftkd_cli.runs import load_checkpoint

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def _args(tiny_dataset, runs, name, batch):
    return ["train-teacher", "--model", "D2C2", "--name", name, f"data.path={tiny_dataset}", f"run.dir={runs}",
            "train.epochs=2", f"train.batch_size={batch}", "train.threads=1", "train.device=cpu",
            "train.max_steps_per_epoch=4"]  # equal shards: no wrapped padding sample


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_two_processes_match_one_process(tiny_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "-m", "sftkd_cli", *_args(tiny_dataset, tmp_path, "single", 2)],
                   check=True, env=env, capture_output=True)
    ddp = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "sftkd_cli",
                          *_args(tiny_dataset, tmp_path, "ddp", 1)], env=env, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    multi = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert multi["epoch"] == 2
    for key, value in single["models"]["model"]["state"].items():
        torch.testing.assert_close(multi["models"]["model"]["state"][key], value, rtol=1e-3, atol=3e-4)  # Adam amplifies reduction-order rounding
    assert len((tmp_path / "ddp" / "history.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes
