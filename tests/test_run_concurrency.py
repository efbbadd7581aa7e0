"""Runs used by several sftkd processes at once (CPU, tiny data; the other process is this test
process holding a lock, or a file swapped in at a chosen moment: no timings).

- distill reads the teacher's checkpoint once: the teacher, its recorded sha256 and the SFT
  student blocks it starts from are the same file, even if the teacher run saves a new one meanwhile.
- distill refuses a teacher run that another process is still training.
- Starting or resuming a run, and an evaluate in its folder, remove only the temporary files of
  processes no longer running (evaluate and export write into a run without its lock).
- A second start of a run that another process holds is told so, not "run already exists".
- A run with no checkpoint yet is said to have none, and `--checkpoint` is suggested only to a
  command that has it, naming a checkpoint the run has.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sftkd_cli.checkpoints import load_model, resolve_checkpoint
from sftkd_cli.errors import SftkdError
from sftkd_cli.runs import RunDir, load_checkpoint, save_checkpoint
from test_hardening import fails_cleanly, invoke

torch.set_num_threads(1)


def _base(data: Path, runs: Path) -> list[str]:
    return [f"data.path={data}", f"run.dir={runs}", "train.epochs=1", "train.batch_size=2", "train.threads=1",
            "train.device=cpu", "train.max_steps_per_epoch=1", "data.max_val_slices=1", "eval.latency_slices=1",
            "sft.teacher=D3C2", "sft.student=D2C2"]


@pytest.fixture(scope="module")
def sft_run(tiny_dataset, tmp_path_factory) -> Path:
    """A finished tiny SFT run (read-only: tests copy it)."""
    runs = tmp_path_factory.mktemp("concurrency-runs")
    result = invoke("train-sft", "--name", "sft", *_base(tiny_dataset, runs))
    assert result.exit_code == 0, result.output
    return runs / "sft"


def _copy(run: Path, runs: Path) -> Path:
    return Path(shutil.copytree(run, runs / run.name))


def _dead_pid() -> int:
    """The id of a process that has ended (the one just run)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def _distill(teacher: Path, data: Path, runs: Path, name: str = "kd", *extra: str):
    return ["distill", "--teacher", teacher, "--student", "D2C2", "--method", "at", "--name", name,
            *_base(data, runs), *extra]


# ------------------------------------------------------------------ distill reads its teacher once


def test_distill_uses_and_records_the_teacher_file_it_read(sft_run, tiny_dataset, tmp_path, monkeypatch):
    """The teacher run saves a new best.pt just after distill has read it: the recorded sha256 and
    the student blocks it starts from are still those of the file it read."""
    teacher = _copy(sft_run, tmp_path / "runs")
    best = teacher / "checkpoints" / "best.pt"
    read = hashlib.sha256(best.read_bytes()).hexdigest()
    original = load_checkpoint(best)
    newer = load_checkpoint(best)
    newer["epoch"] += 1
    for value in newer["models"]["student"]["state"].values():
        value.add_(1.0)
    real_load = torch.load
    swapped = []

    def load_then_replace(*args, **kwargs):
        state = real_load(*args, **kwargs)
        if not swapped:  # the teacher run saves a better epoch right after distill's first read
            swapped.append(True)
            save_checkpoint(best, newer)
        return state

    monkeypatch.setattr(torch, "load", load_then_replace)
    result = invoke(*_distill(teacher, tiny_dataset, tmp_path / "runs", "kd", "--init-from", "sft", "train.lr=1e-30"))
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    assert swapped and hashlib.sha256(best.read_bytes()).hexdigest() != read
    distilled = load_checkpoint(tmp_path / "runs" / "kd" / "checkpoints" / "last.pt")
    assert distilled["teacher_sha256"] == distilled["init_sha256"] == read
    for key, value in original["models"]["student"]["state"].items():  # lr=1e-30: updates vanish
        assert torch.equal(distilled["models"]["model"]["state"][key], value), key


def test_distill_records_the_sha256_of_the_checkpoint_it_starts_from(sft_run, tiny_dataset, tmp_path):
    """A student started from another checkpoint (--init-from FILE) records that file's sha256;
    a random start records none."""
    teacher = _copy(sft_run, tmp_path / "runs")
    start = tmp_path / "start.pt"
    state = load_checkpoint(teacher / "checkpoints" / "best.pt")
    state["primary"], state["models"] = "student", {"student": state["models"]["student"]}
    save_checkpoint(start, state)
    runs = tmp_path / "runs"
    assert invoke(*_distill(teacher, tiny_dataset, runs, "kd-file", "--init-from", start)).exit_code == 0
    assert invoke(*_distill(teacher, tiny_dataset, runs, "kd-random")).exit_code == 0
    from_file = load_checkpoint(runs / "kd-file" / "checkpoints" / "last.pt")
    assert from_file["init"].startswith(str(start)) and from_file["init_sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    random = load_checkpoint(runs / "kd-random" / "checkpoints" / "last.pt")
    assert random["init"] == "random" and random["init_sha256"] is None


# ------------------------------------------------------------------ a teacher still training


def test_export_refuses_a_run_still_training(sft_run, tmp_path):
    """Its checkpoints change with every epoch: nothing is exported while another process trains it."""
    run = _copy(sft_run, tmp_path / "runs")
    training = RunDir(run)
    training.lock()
    try:
        line = fails_cleanly("export", run, "-f", "torchscript", names=(f"{run}: still training", "once it is done"))
        assert "another sftkd process holds it" in line
    finally:
        training.unlock()
    assert not (run / "export").exists()
    assert invoke("export", run, "-f", "torchscript").exit_code == 0  # finished: exported


def test_distill_refuses_a_teacher_run_still_training(sft_run, tiny_dataset, tmp_path):
    teacher = _copy(sft_run, tmp_path / "runs")
    training = RunDir(teacher)
    training.lock()  # another process trains the teacher run
    try:
        line = fails_cleanly(*_distill(teacher, tiny_dataset, tmp_path / "runs"),
                             names=(f"teacher run {teacher} is still training", "wait for it to finish"))
        assert "another sftkd process holds it" in line
    finally:
        training.unlock()
    assert not (tmp_path / "runs" / "kd").exists()
    result = invoke(*_distill(teacher, tiny_dataset, tmp_path / "runs"))  # finished: distill goes on
    assert result.exit_code == 0, result.output
    distilled = load_checkpoint(tmp_path / "runs" / "kd" / "checkpoints" / "last.pt")
    assert distilled["teacher_epoch"] == load_checkpoint(teacher / "checkpoints" / "best.pt")["epoch"] == 1


# ------------------------------------------------------------------ temporary files of live processes


def _tiny_recipe(tmp_path: Path):
    from sftkd_cli.config import load_recipe

    return load_recipe(None, ["train.device=cpu", f"run.dir={tmp_path / 'runs'}", "run.name=r", "run.role=teacher"])


@pytest.mark.parametrize("resume, force", [(True, False), (False, True)])
def test_a_start_keeps_the_temporary_files_of_live_processes(tmp_path, resume, force):
    """An evaluate or export writing into the run (this process: alive) keeps its temporary files
    when a `train --resume` or `--force` starts; a killed process's are removed."""
    recipe = _tiny_recipe(tmp_path)
    first = RunDir(tmp_path / "runs" / "r")
    first.prepare(recipe, resume=False, force=False)
    first.unlock()
    live = [first.path / f".metrics.json.tmp-{os.getpid()}",
            first.path / "export" / f".D2C2-model.ts.tmp-{os.getpid()}"]
    dead_pid = _dead_pid()
    dead = [first.path / f".per_slice.csv.tmp-{dead_pid}", first.path / "checkpoints" / f".last.pt.tmp-{dead_pid}",
            first.path / "eval-student" / f".recon.h5.tmp-{dead_pid}",
            first.path / "eval-student" / "eval-amp-bf16" / f".recon.h5.tmp-{dead_pid}"]
    live.append(first.path / "eval-student" / f".metrics.json.tmp-{os.getpid()}")
    (first.path / "export").mkdir()
    (first.path / "eval-student" / "eval-amp-bf16").mkdir(parents=True)
    for path in live + dead:
        path.write_text("being written")
    again = RunDir(first.path)
    again.prepare(recipe, resume=resume, force=force)
    again.unlock()
    assert all(path.exists() for path in live)
    assert not any(path.exists() for path in dead)


def test_evaluate_removes_the_temporary_files_a_killed_evaluate_left_in_its_folder(sft_run, tmp_path):
    """A killed evaluate left `.recon.h5.tmp-<pid>` in its folder: the next evaluate there removes
    it; one of a process still running (this one's parent) stays."""
    from sftkd_cli.evaluate import evaluate_run

    run = _copy(sft_run, tmp_path / "runs")
    out = run / "eval-student"
    out.mkdir(exist_ok=True)
    dead, live = out / f".recon.h5.tmp-{_dead_pid()}", out / f".recon.h5.tmp-{os.getppid()}"
    dead.write_text("left by a kill -9")
    live.write_text("being written")
    evaluate_run(run, model_role="student", device="cpu")
    assert (out / "metrics.json").is_file() and live.exists() and not dead.exists()


def test_prepare_data_and_runs_share_one_rule_for_stale_files(tmp_path):
    """prepare-data's `remove_stale` and a run start ask the same helper (knowledge in one place)."""
    from sftkd_cli.data.output import remove_stale
    from sftkd_cli.files import left_by_dead_process

    dead_pid, own = _dead_pid(), os.getpid()
    assert left_by_dead_process(Path(f".x.tmp-{dead_pid}")) and left_by_dead_process(Path(f".x.old-{dead_pid}"))
    assert not left_by_dead_process(Path(f".x.tmp-{own}")) and not left_by_dead_process(Path("x.pt"))
    (tmp_path / f".out.tmp-{dead_pid}").mkdir()
    (tmp_path / f".out.tmp-{own}").mkdir()
    assert remove_stale(tmp_path / "out") == [tmp_path / f".out.tmp-{dead_pid}"]
    assert left_by_dead_process(Path(".x.tmp-99999999999999999999"))  # no pid is that large: no OverflowError


def test_a_lock_held_for_an_instant_is_not_a_training_run(tmp_path):
    """Several distillations probing one teacher at once each hold its lock for an instant: a probe
    meeting another's is not "still training", and a trainer starting then is not refused."""
    import threading

    from filelock import FileLock

    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    (run.path / ".lock").touch()

    def hold_briefly() -> None:
        with FileLock(run.path / ".lock", timeout=5):
            held.set()
            threading.Event().wait(0.1)

    for check in (lambda: run.busy() is False, lambda: run.lock() is None):
        held = threading.Event()
        probe = threading.Thread(target=hold_briefly)
        probe.start()
        held.wait(5)
        assert check()
        probe.join()
    run.unlock()


# ------------------------------------------------------------------ a run another process holds


@pytest.mark.parametrize("resume, force", [(False, False), (True, False), (False, True)])
def test_a_second_start_of_a_held_run_is_told_another_process_uses_it(tmp_path, resume, force):
    """The first start has written its recipe and holds the run: the second is refused for that,
    not with "run already exists" (whose --resume/--force would not help, and `reproduce` has neither)."""
    recipe = _tiny_recipe(tmp_path)
    first = RunDir(tmp_path / "runs" / "r")
    first.prepare(recipe, resume=False, force=False)
    try:
        with pytest.raises(SftkdError, match="another sftkd process is using this run"):
            RunDir(first.path).prepare(recipe, resume=resume, force=force)
        assert first.recipe_file.is_file()
    finally:
        first.unlock()
    with pytest.raises(SftkdError, match="run already exists; use --resume"):  # once it is free
        RunDir(first.path).prepare(recipe, resume=False, force=False)


# ------------------------------------------------------------------ runs with no checkpoint yet


def test_a_run_without_checkpoints_is_said_to_have_none(tmp_path):
    recipe = _tiny_recipe(tmp_path)
    run = RunDir(tmp_path / "runs" / "r")
    run.prepare(recipe, resume=False, force=False)
    run.unlock()
    for which in ("best", "last"):
        with pytest.raises(SftkdError) as refused:
            load_model(run.path, which=which, option="--checkpoint")
        assert "has no checkpoint yet (stopped before its first epoch ended, or still training)" in str(refused.value)
        assert "--checkpoint" not in str(refused.value)


def test_checkpoint_is_suggested_only_where_the_run_has_it_and_the_caller_has_the_option(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.pt").write_bytes(b"a checkpoint")
    (tmp_path / "run" / "recipe.yaml").write_text("")  # a run (a folder without one is not: test_safety_checkpoints.py)
    with pytest.raises(SftkdError, match=r"has no best checkpoint, only last; try `--checkpoint last`$"):
        resolve_checkpoint(tmp_path / "run", "best", "--checkpoint")
    with pytest.raises(SftkdError) as refused:  # distill, --init-from: no such option to suggest
        resolve_checkpoint(tmp_path / "run", "best")
    assert str(refused.value).endswith("has no best checkpoint, only last")


def test_evaluate_and_distill_of_a_run_killed_before_its_first_checkpoint(tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    run = RunDir(runs / "t")
    from sftkd_cli.config import load_recipe

    run.prepare(load_recipe(None, ["train.device=cpu", f"data.path={tiny_dataset}", f"run.dir={runs}", "run.name=t",
                                   "run.role=teacher"]), resume=False, force=False)
    run.unlock()
    line = fails_cleanly("evaluate", run.path, "--checkpoint", "last", "--device", "cpu", names=("has no checkpoint yet",))
    assert "try" not in line
    line = fails_cleanly(*_distill(run.path, tiny_dataset, runs), names=("has no checkpoint yet",))
    assert "--checkpoint" not in line


def test_a_failed_start_of_a_new_run_removes_the_folders_it_made(tmp_path, monkeypatch):
    """A new run below folders that did not exist: a start that fails (its recipe cannot be
    written, or the run's name is too long) removes those folders too, not only the run's."""
    import errno

    import sftkd_cli.runs as runs_module
    from sftkd_cli.config import load_recipe

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs_module, "write_run_file", disk_full)
    recipe = load_recipe(None, ["train.device=cpu", "run.role=teacher"])
    with pytest.raises(SftkdError, match="could not create the run .No space left on device"):
        RunDir(tmp_path / "runs" / "new" / "r").prepare(recipe, resume=False, force=False)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SftkdError, match="File name too long"):
        RunDir(tmp_path / "runs" / "new" / ("r" * 300)).prepare(recipe, resume=False, force=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")  # a folder that was there stays, with what it holds
    monkeypatch.setattr(runs_module, "write_run_file", disk_full)
    with pytest.raises(SftkdError):
        RunDir(tmp_path / "runs" / "new" / "r").prepare(recipe, resume=False, force=False)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["notes.txt"]
