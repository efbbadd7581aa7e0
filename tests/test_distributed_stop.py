"""torchrun (2 CPU processes, gloo): a stop or a failure that reaches one process only.

The processes stop at the same step, rank 0 saves and says so once; a process whose peer failed
says so in one line; a nan on rank 1 names the checkpoint rank 0 kept."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cli_helpers import sftkd
from sftkd_cli.runs import load_checkpoint
from test_distributed import ENV, TORCHRUN

pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")

#: `sftkd ARGS` with rank 1 disturbed before its step (EPOCH, STEP) (0-based): signalled, or its loss inf
WRAPPER = '''
import math, os, signal, sys
from sftkd_cli.training import engine
from sftkd_cli.cli.app import main

what, at = sys.argv[1], (int(sys.argv[2]), int(sys.argv[3]))
step = engine.Trainer._train_step

def disturbed(self, loop, batch, epoch, index):
    if self.rank == 1 and (epoch, index) == at:
        if what == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._check_finite(math.inf, epoch, index)
    return step(self, loop, batch, epoch, index)

engine.Trainer._train_step = disturbed
sys.argv = ["sftkd", *sys.argv[4:]]
main()
'''


def _args(tiny_dataset: Path, runs: Path, *extra: str) -> list[str]:
    return ["train-teacher", "--model", "D2C2", "--name", "r", f"data.path={tiny_dataset}", f"run.dir={runs}",
            "train.epochs=2", "train.batch_size=1", "train.threads=1", "train.device=cpu",
            "train.max_steps_per_epoch=4", "train.channels_last=false", *extra]


def _disturbed(tmp_path: Path, what: str, epoch: int, step: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`sftkd ARGS` in 2 processes under torchrun, rank 1 disturbed (`WRAPPER`) before step (epoch, step)."""
    script = tmp_path / "disturbed.py"
    script.write_text(WRAPPER)
    return subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", f"--log-dir={tmp_path / 'torchrun'}",
                           str(script), what, str(epoch), str(step), *args],
                          env=ENV, capture_output=True, text=True, timeout=150)


def _rank_tracebacks(stderr: str) -> bool:
    return "[rank0]:" in stderr or "[rank1]:" in stderr


def test_a_stop_on_one_process_stops_both_at_one_step_and_saves(tiny_dataset, tmp_path):
    ddp = _disturbed(tmp_path, "sigterm", 0, 1, _args(tiny_dataset, tmp_path))
    assert ddp.returncode != 0
    assert not _rank_tracebacks(ddp.stderr), ddp.stderr[-3000:]
    # rank 0 says it once (rank 1, signalled, stays quiet; both exit 143)
    assert ddp.stderr.count("stopped by SIGTERM at epoch 1, step 2; continue with --resume") == 1, ddp.stderr[-3000:]
    assert ddp.stderr.count("SIGTERM: stopping") == 0, ddp.stderr[-3000:]
    assert "exitcode  : 143" in ddp.stderr and "exitcode  : 1 " not in ddp.stderr, ddp.stderr[-3000:]
    last = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step_in_epoch"], last["world_size"]) == (0, 2, 2)  # saved, not deleted as a failed new run
    # one process would train other slices for the rest of the epoch than the two did: refused in one line
    one = sftkd(*_args(tiny_dataset, tmp_path), "--resume", ok=False)
    lines = [line for line in one.output.splitlines() if line.strip()]
    assert one.exit_code == 2 and len(lines) == 1, one.output
    for words in ("by 2 processes", "1 process would", "resume with torchrun --nproc_per_node=2"):
        assert words in lines[0], lines[0]


def test_a_failure_on_one_process_is_one_line_on_the_other(tiny_dataset, tmp_path):
    ddp = _disturbed(tmp_path, "inf", 1, 1, _args(tiny_dataset, tmp_path))
    assert ddp.returncode != 0
    assert not _rank_tracebacks(ddp.stderr), ddp.stderr[-3000:]
    # rank 1 knows the checkpoint rank 0 wrote after epoch 1
    assert ("loss became inf at epoch 2, step 2; training stopped, the last good checkpoint (the end of epoch 1) "
            "is kept") in ddp.stderr, ddp.stderr[-3000:]
    peer = [line for line in ddp.stderr.splitlines() if "another training process failed or was killed" in line]
    assert len(peer) == 1 and "this one stopped with it (torch: " in peer[0], ddp.stderr[-3000:]  # torch's words, in case
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["epoch"] == 1
