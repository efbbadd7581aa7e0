"""Where a run starts from: `train-teacher --init-from` stopped before its first checkpoint
resumes from that start (not from random weights), the start is recorded in the checkpoints,
and a resume given another start is refused in one line; `distill --init-from sft` starts from
the SFT run's student blocks, never its teacher (CPU, through the CLI)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sftkd_cli.runs import load_checkpoint, save_checkpoint
from test_hardening import fails_cleanly, invoke, snapshot, train_args, trained_run  # noqa: F401  (fixture)
from test_resume_from_best import _assert_same_run, stop_before_writing

torch.set_num_threads(1)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["models"]["model"]["state"]


def test_init_from_stopped_before_its_first_checkpoint_resumes_from_the_init(tiny_dataset, tmp_path, trained_run,
                                                                            monkeypatch):
    runs, init = tmp_path / "runs", ("--init-from", trained_run)
    assert invoke(*train_args(tiny_dataset, runs, "straight", *init)).exit_code == 0
    stop_before_writing(monkeypatch, (0, 1))
    stopped = invoke(*train_args(tiny_dataset, runs, "r", *init, "train.checkpoint_every=1"))
    monkeypatch.undo()
    assert stopped.exit_code != 0 and not list((runs / "r" / "checkpoints").iterdir()), stopped.output
    # no checkpoint yet, so nothing holds the start but the command that made the run: it must be given again
    fails_cleanly(*train_args(tiny_dataset, runs, "r", "train.checkpoint_every=1", "--resume"),
                  names=("started with --init-from", str(trained_run), "no checkpoint yet"))
    result = invoke(*train_args(tiny_dataset, runs, "r", *init, "train.checkpoint_every=1", "--resume"))
    assert result.exit_code == 0, result.output
    _assert_same_run(runs / "r", runs / "straight")
    assert invoke(*train_args(tiny_dataset, runs, "random")).exit_code == 0
    assert any(not torch.equal(a, b) for a, b in zip(_weights(runs / "r").values(), _weights(runs / "random").values()))
    saved = load_checkpoint(runs / "r" / "checkpoints" / "last.pt")
    best = trained_run / "checkpoints" / "best.pt"
    assert saved["init"] == f"{best}:model" and saved["init_sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert load_checkpoint(runs / "random" / "checkpoints" / "last.pt")["init"] == "random"


def test_a_resume_with_another_start_is_refused(tiny_dataset, tmp_path, trained_run):
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_dataset, runs, "init", "--init-from", trained_run)).exit_code == 0
    assert invoke(*train_args(tiny_dataset, runs, "random")).exit_code == 0
    before = snapshot(runs)
    for name, start, said in (("init", ("--init-from", runs / "random"), ("not the checkpoint", "started from", "or without --init-from")),
                              ("init", ("--init-from", runs / "gone"), ("gone", "no such run directory")),
                              ("random", ("--init-from", trained_run), ("random weights", "without --init-from"))):
        fails_cleanly(*train_args(tiny_dataset, runs, name, "train.epochs=2", "--resume", *start), names=said)
    assert snapshot(runs) == before
    same = ("--init-from", trained_run / "checkpoints" / "best.pt")  # the same checkpoint, named another way
    result = invoke(*train_args(tiny_dataset, runs, "init", "train.epochs=2", "--resume", *same))
    assert result.exit_code == 0, result.output
    # without --init-from (its run may be gone since): the checkpoint holds the weights and keeps the record
    result = invoke(*train_args(tiny_dataset, runs, "init", "train.epochs=3", "--resume"))
    assert result.exit_code == 0, result.output
    assert load_checkpoint(runs / "init" / "checkpoints" / "last.pt")["init"] == f"{trained_run / 'checkpoints' / 'best.pt'}:model"
    last = runs / "init" / "checkpoints" / "last.pt"  # as an sftkd that recorded no start wrote it
    state = load_checkpoint(last)
    del state["init"], state["init_sha256"]
    save_checkpoint(last, state)
    result = invoke(*train_args(tiny_dataset, runs, "init", "train.epochs=4", "--resume"))
    assert result.exit_code == 0 and load_checkpoint(last)["init"] == "unknown", result.output  # not "random"


def _options(data: Path, runs: Path, name: str) -> list[object]:
    return ["--name", name, f"data.path={data}", f"run.dir={runs}", "train.device=cpu", "train.epochs=1",
            "train.batch_size=2", "train.threads=1", "train.max_steps_per_epoch=1", "data.max_val_slices=1",
            "eval.latency_slices=1"]


def test_distill_init_sft_starts_from_the_sft_runs_student_blocks(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    for name, teacher in (("sft", "D3C2"), ("same", "D2C2")):
        result = invoke("train-sft", "--teacher", teacher, "--student", "D2C2", *_options(tiny_dataset, runs, name))
        assert result.exit_code == 0, result.output

    def distill(sft: str, student: str, *extra: str) -> list[object]:
        return ["distill", "--teacher", runs / sft, "--student", student, "--method", "at", "--init-from", "sft",
                *_options(tiny_dataset, runs, f"kd-{sft}"), *extra]

    # the student blocks are D2C2: a D3C2 student is refused, not started from the D3C2 teacher
    fails_cleanly(*distill("sft", "D3C2"), names=("student is D2C2", "the model to start is D3C2"))
    assert not (runs / "kd-sft").exists()
    # teacher and student of one architecture: the student's blocks, not "exactly one D2C2 model"
    result = invoke(*distill("same", "D2C2", "train.lr=1e-30"))  # lr=1e-30: the updates vanish
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(runs / "kd-same" / "checkpoints" / "last.pt")
    assert saved["init"].endswith(":student")
    blocks = load_checkpoint(runs / "same" / "checkpoints" / "best.pt")["models"]["student"]["state"]
    for key, value in blocks.items():
        assert torch.equal(saved["models"]["model"]["state"][key], value), key
