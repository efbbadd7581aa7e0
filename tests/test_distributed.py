"""torchrun: 2 CPU processes (gloo, train.device=cpu, also where CUDA is present) match one process
with the same global batch; the backend follows train.device; more processes than GPUs is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import sftkd
from sftkd_cli.errors import SftkdError
from sftkd_cli.runs import load_checkpoint, save_checkpoint

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def _args(tiny_dataset, runs, name, batch):
    return ["train-teacher", "--model", "D2C2", "--name", name, f"data.path={tiny_dataset}", f"run.dir={runs}",
            "train.epochs=2", f"train.batch_size={batch}", "train.threads=1", "train.device=cpu",
            "train.max_steps_per_epoch=4",  # equal shards: no wrapped padding sample
            "train.channels_last=true"]  # the layout CUDA trains in (and the one whose strides DDP warned about)


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(processes: int, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`sftkd ARGS` in `processes` processes under torchrun, its logs in `tmp_path` (not a /tmp folder left behind)."""
    return subprocess.run([TORCHRUN, "--standalone", f"--nproc_per_node={processes}", f"--log-dir={tmp_path / 'torchrun'}",
                           "-m", "sftkd_cli", *args], env=ENV, capture_output=True, text=True)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_two_processes_match_one_process(tiny_dataset, tmp_path):
    subprocess.run([sys.executable, "-m", "sftkd_cli", *_args(tiny_dataset, tmp_path, "single", 2)],
                   check=True, env=ENV, capture_output=True)
    ddp = _torchrun(2, _args(tiny_dataset, tmp_path, "ddp", 1), tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "Warning" not in ddp.stderr, ddp.stderr[-3000:]
    assert ddp.stdout.count("done:") == 1 and " nan " not in ddp.stdout, ddp.stdout  # rank 0's line alone
    assert "batch 1 x 2 processes" in ddp.stdout, ddp.stdout  # the start line: batch_size is per process
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    multi = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert multi["epoch"] == 2
    a = torch.cat([v.flatten() for v in single["models"]["model"]["state"].values()])
    b = torch.cat([v.flatten() for v in multi["models"]["model"]["state"].values()])
    diff = (a - b).abs()
    # Gradients differ only by reduction-order rounding. Adam turns a near-zero gradient's
    # rounding into a step of up to lr (1e-3), so a few weights may differ by ~2 steps;
    # almost all must agree to float precision (a wrong shard makes most of them differ).
    assert diff.max() < 2e-3
    assert diff.median() < 1e-6 and (diff > 1e-5).float().mean() < 0.05
    assert len((tmp_path / "ddp" / "history.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes
    # the train loss is over both processes' samples, as the single process's batches of 2 (not rank 0's alone)
    single_rows, ddp_rows = (_history(tmp_path / name) for name in ("single", "ddp"))
    assert [r["train_loss"] for r in ddp_rows] == pytest.approx([r["train_loss"] for r in single_rows], rel=1e-5)


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["sft", "kd-joint", "kd-two-stage"])
def test_an_objective_that_says_it_uses_every_parameter_does(objective):
    """DistributedDataParallel skips its per-step search for unused parameters (and its warning
    that it found none) where the objective says every trained one gets a gradient in every step:
    it must hold, else DDP fails; two-stage distillation leaves some out in each stage."""
    from sftkd_cli.distill.methods import build_method
    from sftkd_cli.models import build_model
    from sftkd_cli.training.kd import Distillation, default_taps
    from sftkd_cli.training.sft import StudentFriendly
    from test_sft_kd import _batch

    torch.manual_seed(0)
    teacher, student = build_model("D4C3"), build_model("D2C3")
    if objective == "sft":
        objectives = [StudentFriendly(teacher, student)]
    else:
        s_taps, t_taps = default_taps("ft", student, teacher)  # FT: trained adapters
        kd = build_method("ft", [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps])
        schedule = objective.removeprefix("kd-")
        objectives = [Distillation(student, teacher, kd, s_taps, t_taps, schedule=schedule, stage1_epochs=1)]
    for model in objectives:
        every = []
        for epoch in (0, 1):
            model.begin_epoch(epoch)
            model.zero_grad(set_to_none=True)
            model(_batch())[0].backward()
            every.append(all(p.grad is not None for p in model.parameters() if p.requires_grad))
        assert model.uses_every_parameter == all(every), every


def _as_rank_1_of_2(monkeypatch, gpus: int) -> list[tuple[str, object]]:
    """This process poses as torchrun's rank 1 of 2 on a machine with `gpus` GPUs (CUDA faked).

    The process group never starts: `init_process_group` records its backend and stops the run.
    Returns the calls made: ("init", backend) and ("set_device", index).
    """
    import torch.distributed as dist

    calls: list[tuple[str, object]] = []

    def init_process_group(backend, *args, **kwargs):
        calls.append(("init", backend))
        raise SftkdError(f"stopped before starting {backend}")

    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    return calls


def _train(tiny_dataset, runs, *extra):
    return sftkd("train-teacher", "--model", "D2C2", "--name", "r", f"data.path={tiny_dataset}", f"run.dir={runs}",
                 "train.epochs=1", "train.threads=1", *extra, ok=False)


def test_a_mid_epoch_resume_keeps_its_number_of_processes(tiny_dataset, tmp_path, monkeypatch):
    """Resuming in the middle of an epoch with another number of processes would train other
    slices: refused in one line, before the process group starts (a checkpoint of an earlier sftkd,
    which does not say, continues as it did then). At an epoch's end the number may change."""
    args = ["train-teacher", "--model", "D2C2", "--name", "r", f"data.path={tiny_dataset}", f"run.dir={tmp_path}",
            "train.threads=1", "train.device=cpu", "train.max_steps_per_epoch=2"]
    sftkd(*args, "train.epochs=1")
    path = tmp_path / "r" / "checkpoints" / "last.pt"
    last = load_checkpoint(path)
    assert last["world_size"] == 1 and json.loads((tmp_path / "r" / "env.json").read_text())["world_size"] == 1
    calls = _as_rank_1_of_2(monkeypatch, gpus=0)
    at_epoch_end = sftkd(*args, "train.epochs=2", "--resume", ok=False)
    assert "stopped before starting gloo" in at_epoch_end.output and calls == [("init", "gloo")], at_epoch_end.output
    last["epoch"], last["step_in_epoch"] = 1, 1
    save_checkpoint(path, last)
    calls.clear()
    quiet = sftkd(*args, "train.epochs=2", "--resume", ok=False)  # rank 1: rank 0 says it, once
    assert quiet.exit_code == 2 and not quiet.output.strip() and calls == [], quiet.output
    monkeypatch.setenv("RANK", "0")
    mid_epoch = sftkd(*args, "train.epochs=2", "--resume", ok=False)
    lines = [line for line in mid_epoch.output.splitlines() if line.strip()]
    assert mid_epoch.exit_code == 2 and len(lines) == 1 and calls == [], mid_epoch.output
    for words in ("middle of epoch 2 (step 1) by 1 process;", "2 processes would train other slices",
                  "resume with one process (without torchrun), or start over with --force;"):
        assert words in lines[0], lines[0]
    del last["world_size"]  # as sftkd wrote it before it recorded the number: unknown, so not refused
    save_checkpoint(path, last)
    unknown = sftkd(*args, "train.epochs=2", "--resume", ok=False)
    assert "stopped before starting gloo" in unknown.output and calls == [("init", "gloo")], unknown.output


@pytest.mark.parametrize("command", ["prepare-data", "evaluate", "compare", "export", "bench", "reproduce"])
def test_under_torchrun_only_training_commands_run(monkeypatch, command):
    """Another command would run once in each process (two evaluations, a second export refused):
    one line, from rank 0, before its arguments are read."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = sftkd(command, "x", ok=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    for words in (f"sftkd {command} runs in one process", "torchrun started 2 processes",
                  "only train-teacher, train-sft and distill", "without torchrun"):
        assert words in lines[0], lines[0]
    monkeypatch.setenv("RANK", "1")
    result = sftkd(command, "x", ok=False)
    assert result.exit_code == 2 and not result.output.strip(), result.output
    assert sftkd("train-teacher", "--help").exit_code == 0


@pytest.mark.parametrize("value", ["abc", "", "0", "-2"])
def test_a_world_size_that_is_not_a_number_of_processes(tiny_dataset, tmp_path, monkeypatch, value):
    """WORLD_SIZE set by hand or by another launcher: training, which would start a process group
    on it, says so in one line (not a ValueError traceback); other commands never read it."""
    monkeypatch.setenv("WORLD_SIZE", value)
    result = _train(tiny_dataset, tmp_path)
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        f"error: environment variable WORLD_SIZE={value!r}: expected a whole number of processes >= 1 "
        "(torchrun sets it; unset it to run in one process)"], result.output
    elsewhere = sftkd("evaluate", str(tmp_path / "nothing"), ok=False)
    assert "WORLD_SIZE" not in elsewhere.output and "no such run directory" in elsewhere.output, elsewhere.output


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_more_processes_than_gpus_is_one_line(tiny_dataset, tmp_path, monkeypatch, device):
    calls = _as_rank_1_of_2(monkeypatch, gpus=1)
    result = _train(tiny_dataset, tmp_path, f"train.device={device}")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    for words in (f"train.device={device}", "2 processes", "1 CUDA device", "--nproc_per_node=1", "train.device=cpu"):
        assert words in lines[0], lines[0]
    assert calls == []  # refused before any GPU is chosen or any process group starts
    assert not (tmp_path / "r").exists()


def test_cpu_training_uses_gloo_where_cuda_is_present(tiny_dataset, tmp_path, monkeypatch):
    calls = _as_rank_1_of_2(monkeypatch, gpus=1)
    result = _train(tiny_dataset, tmp_path, "train.device=cpu")
    assert result.exit_code == 2 and "stopped before starting gloo" in result.output, result.output
    assert calls == [("init", "gloo")]


def test_one_process_per_gpu_uses_nccl_on_its_local_rank(tiny_dataset, tmp_path, monkeypatch):
    calls = _as_rank_1_of_2(monkeypatch, gpus=2)
    result = _train(tiny_dataset, tmp_path, "train.device=cuda")
    assert "stopped before starting nccl" in result.output, result.output
    assert calls == [("set_device", 1), ("init", "nccl")]


def test_an_explicit_gpu_index_under_torchrun_is_one_line(tiny_dataset, tmp_path, monkeypatch):
    calls = _as_rank_1_of_2(monkeypatch, gpus=2)
    result = _train(tiny_dataset, tmp_path, "train.device=cuda:0")
    assert result.exit_code == 2 and "cuda:LOCAL_RANK" in result.output and calls == [], result.output


@pytest.mark.cuda
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_torchrun_with_more_processes_than_gpus_says_so(tiny_dataset, tmp_path):
    """On a real GPU machine: one process more than there are GPUs gets the one-line refusal."""
    processes = torch.cuda.device_count() + 1
    ddp = _torchrun(processes, [*(a for a in _args(tiny_dataset, tmp_path, "ddp", 1) if a != "train.device=cpu"),
                                "train.device=cuda"], tmp_path)
    assert ddp.returncode != 0
    assert f"{processes} processes on this machine" in ddp.stdout + ddp.stderr, ddp.stderr[-3000:]
    assert not (tmp_path / "ddp").exists()


@pytest.mark.parametrize("backend, expected", [("nccl", {"device_ids": [3]}), ("gloo", {})])
def test_an_nccl_barrier_names_this_process_gpu(monkeypatch, backend, expected):
    """CPU (torch.distributed stood in for): an NCCL barrier without device_ids warns on every
    torch version; a gloo one takes none."""
    import torch.distributed as dist

    from sftkd_cli.training.session import barrier

    calls = []
    monkeypatch.setattr(dist, "get_backend", lambda: backend)
    monkeypatch.setattr(dist, "barrier", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    barrier(1)
    assert calls == []  # one process: nothing to wait for
    barrier(2)
    assert calls == [expected]
