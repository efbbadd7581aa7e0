"""Safety of run directories and checkpoints, through the CLI (CPU).

- A crafted checkpoint (a pickle whose `__reduce__` writes a file) is refused with one line
  at every entry point that reads checkpoints, and its payload never runs.
- `--force` removes only what sftkd wrote into a run; a run name is one plain path component;
  a folder that is not a run is never filled or emptied.
- A run never replaces the run it reads from (teacher, init).
- Outputs given by path (`--out`, `--json`) write through a symlink's target or into a device
  file instead of replacing them.
- `--resume` with a readable but wrong `last.pt` ends in one line.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.runs import load_checkpoint
from test_compare import make_run, slice_values
from test_hardening import copy_dataset, copy_run, fails_cleanly, invoke, snapshot, train_args, trained_run  # noqa: F401  (fixture)

torch.set_num_threads(1)


class Payload:
    """Unpickling this object writes `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "payload ran"))


def write_payload(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "models": Payload(marker)}, path)
    return path


def poisoned_run(trained_run: Path, tmp_path: Path, marker: Path, which: str = "best") -> Path:
    run = Path(shutil.copytree(trained_run, tmp_path / trained_run.name))
    write_payload(run / "checkpoints" / f"{which}.pt", marker)
    return run


# ----------------------------------------------------------------------------- crafted checkpoints


ENTRY_POINTS = [
    "train --init-from FILE", "distill --teacher RUN", "distill --init-from FILE", "evaluate --checkpoint FILE",
    "evaluate RUN", "train --resume", "export RUN", "compare --attention", "reproduce --dry-run",
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(entry, tiny_dataset, trained_run, tmp_path):
    marker = tmp_path / "pwned"
    loose = write_payload(tmp_path / "evil.pt", marker)
    runs = tmp_path / "runs"
    distill = ["distill", "--student", "D2C2", "--method", "at", "--name", "kd", f"data.path={tiny_dataset}",
               f"run.dir={runs}", "train.epochs=1", "train.threads=1", "train.max_steps_per_epoch=1"]
    if entry == "train --init-from FILE":
        fails_cleanly(*train_args(tiny_dataset, runs, "r", "--init-from", loose), names=("evil.pt", "refused"))
    elif entry == "distill --teacher RUN":
        fails_cleanly(*distill, "--teacher", poisoned_run(trained_run, tmp_path, marker), names=("best.pt", "refused"))
    elif entry == "distill --init-from FILE":
        fails_cleanly(*distill, "--teacher", trained_run, "--init-from", loose, names=("evil.pt", "refused"))
    elif entry == "evaluate --checkpoint FILE":
        fails_cleanly("evaluate", copy_run(trained_run, tmp_path), "--checkpoint", loose, names=("evil.pt", "refused"))
    elif entry == "evaluate RUN":
        fails_cleanly("evaluate", poisoned_run(trained_run, tmp_path, marker), names=("best.pt", "refused"))
    elif entry == "train --resume":
        run = poisoned_run(trained_run, tmp_path, marker, "last")
        recipe = (run / "recipe.yaml").read_text().replace(str(trained_run.parent), str(run.parent))
        (run / "recipe.yaml").write_text(recipe)
        fails_cleanly(*train_args(tiny_dataset, run.parent, run.name, "--resume"), names=("last.pt", "refused"))
    elif entry == "export RUN":
        fails_cleanly("export", poisoned_run(trained_run, tmp_path, marker), "--format", "torchscript",
                      names=("best.pt", "refused"))
    elif entry == "compare --attention":
        teacher = make_run(tmp_path, "teacher", "teacher", slice_values(1, 0.0))
        student = make_run(tmp_path, "std-kd-at", "kd", slice_values(2, 0.3), method="at", teacher_role="teacher")
        write_payload(student / "checkpoints" / "best.pt", marker)
        for run in (teacher, student):  # point the evaluated runs at a dataset that exists
            (run / "recipe.yaml").write_text(f"run:\n  name: {run.name}\ndata:\n  path: {tiny_dataset}\n")
        result = invoke("compare", teacher, student, "--attention", tmp_path / "fig" / "attention")
        assert result.exit_code == 2 and "refused" in result.output and "Traceback" not in result.output, result.output
    elif entry == "reproduce --dry-run":
        plan = tmp_path / "plan.yaml"
        plan.write_text(f"plan: 1\ndata:\n  source: prepared\n  out: {tiny_dataset}\nruns_dir: {runs}\n"
                        "base:\n  train.epochs: 1\nstages:\n  teacher: {}\n")
        stage = runs / "teacher"
        result = invoke("reproduce", plan, "--dry-run")  # learn the teacher stage's run folder name
        names = [line.split()[1] for line in result.output.splitlines() if line.strip().startswith("teacher")]
        stage = runs / (names[0] if names else "teacher")
        shutil.copytree(trained_run, stage)
        write_payload(stage / "checkpoints" / "last.pt", marker)
        result = invoke("reproduce", plan, "--dry-run")
        assert result.exit_code == 2 and "refused" in result.output and "Traceback" not in result.output, result.output
    assert not marker.exists(), f"{entry}: the checkpoint's payload ran"


def test_sftkd_checkpoints_still_load(trained_run):
    from sftkd_cli.runs import load_checkpoint

    state = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    assert state["format"] == 1 and state["models"]


# ----------------------------------------------------------------------------- --force and run names


def test_force_on_a_user_folder_is_refused_and_deletes_nothing(tiny_dataset, tmp_path):
    home = tmp_path / "home"
    (home / "Documents" / "taxes").mkdir(parents=True)
    (home / "Documents" / "notes.txt").write_text("mine")
    (home / "Documents" / "taxes" / "2026.pdf").write_bytes(b"%PDF")
    before = snapshot(home)
    for extra in ((), ("--force",)):
        fails_cleanly(*train_args(tiny_dataset, home, "Documents", *extra), names=("Documents", "not an sftkd run"))
        assert snapshot(home) == before


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_never_wipe_the_runs_folder(name, tiny_dataset, trained_run, tmp_path):
    runs = tmp_path / "work" / "runs"
    shutil.copytree(trained_run, runs / "teacher")
    (tmp_path / "work" / "data.txt").write_text("dataset")
    before = snapshot(tmp_path / "work")
    result = invoke(*train_args(tiny_dataset, runs, name, "--force"))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert snapshot(tmp_path / "work") == before


def test_force_removes_only_what_sftkd_wrote(tiny_dataset, trained_run, tmp_path):
    run = Path(shutil.copytree(trained_run, tmp_path / "runs" / trained_run.name))
    (run / "NOTES.md").write_text("why this run exists")
    (run / "analysis").mkdir()
    (run / "analysis" / "plot.py").write_text("print(1)")
    (run / "export").mkdir()
    (run / "export" / "readme.txt").write_text("keep")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "metrics.json").write_text("{}")  # reached through a symlinked eval folder: not the run's
    (run / "eval-linked").symlink_to(outside, target_is_directory=True)
    nested = [run / "eval-fastmri", run / "eval-amp-bf16" / "eval-fastmri", run / "eval-student" / "eval-data-x-1" / "eval-amp-bf16"]
    for folder in nested:  # the old model's scores, at every depth evaluate writes to
        folder.mkdir(parents=True)
        for name in ("metrics.json", "per_volume.csv", "per_slice.csv", "recon.h5"):
            (folder / name).write_text("old")
    (run / "eval-student" / "mine.txt").write_text("keep")
    old_history = (run / "history.jsonl").read_text()
    (run / "history.jsonl").write_text(old_history + old_history)  # a marker the retraining must replace
    invoke_ok = invoke(*train_args(tiny_dataset, run.parent, run.name, "--force"))
    assert invoke_ok.exit_code == 0, invoke_ok.output
    assert (run / "NOTES.md").read_text() == "why this run exists"
    assert (run / "analysis" / "plot.py").read_text() == "print(1)"
    assert (run / "export" / "readme.txt").read_text() == "keep"
    assert (outside / "metrics.json").read_text() == "{}"
    assert (run / "history.jsonl").read_text().count("\n") == old_history.count("\n")
    assert not any(folder.exists() for folder in nested[:2]) and not (run / "eval-student" / "eval-data-x-1").exists()
    assert [p.name for p in (run / "eval-student").iterdir()] == ["mine.txt"]


def test_a_run_never_replaces_the_run_it_reads(tiny_dataset, trained_run, tmp_path):
    runs = tmp_path / "runs"
    teacher = Path(shutil.copytree(trained_run, runs / "X"))
    before = snapshot(teacher)
    kd = ["distill", "--teacher", teacher, "--student", "D2C2", "--method", "at", "--name", "X", "--force",
          f"data.path={tiny_dataset}", f"run.dir={runs}", "train.epochs=1", "train.threads=1"]
    fails_cleanly(*kd, names=("lies inside the run directory",))
    fails_cleanly(*train_args(tiny_dataset, runs, "X", "--force", "--init-from", teacher / "checkpoints" / "best.pt"),
                  names=("lies inside the run directory",))
    assert snapshot(teacher) == before


def test_a_failed_run_creation_leaves_nothing(tiny_dataset, tmp_path, monkeypatch):
    import errno

    import sftkd_cli.runs as runs_module

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(runs_module, "write_run_file", read_only)
    fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "r"), names=("Read-only file system",))
    assert not (tmp_path / "runs" / "r").exists()


def test_a_name_too_long_for_the_filesystem_is_one_line(trained_run, tmp_path):
    fails_cleanly("export", copy_run(trained_run, tmp_path), "--format", "torchscript", "--out", tmp_path / ("y" * 260 + ".ts"),
                  names=("File name too long",))
    fails_cleanly("compare", *evaluated_pair(tmp_path), "-f", "csv", "--out", tmp_path / ("z" * 260 + ".csv"),
                  names=("File name too long",))


# ----------------------------------------------------------------------------- symlinks and device files


def evaluated_pair(tmp_path: Path) -> list[Path]:
    return [make_run(tmp_path, "teacher", "teacher", slice_values(1, 0.0)),
            make_run(tmp_path, "student", "student", slice_values(2, 0.3))]


def test_out_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "results" / "table.csv"
    target.parent.mkdir()
    target.write_text("run,role,params,latency_ms_per_slice,PSNR_mean\n")  # an earlier compare's: replaceable
    link = tmp_path / "latest.csv"
    link.symlink_to(target)
    result = invoke("compare", *evaluated_pair(tmp_path), "-f", "csv", "--out", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_text().startswith("run,")


def test_out_into_a_device_file_writes_into_it(tmp_path):
    import os
    import stat

    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    except OSError:  # not root: the real one (a user who cannot replace it still sees a refusal fail)
        device = Path(os.devnull)
    result = invoke("compare", *evaluated_pair(tmp_path), "-f", "csv", "--out", device)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(device).st_mode), "the device file was replaced by a regular file"


def test_out_into_a_fifo_is_read_by_its_reader_or_refused(tmp_path):
    import os
    import select
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = invoke("compare", *evaluated_pair(tmp_path), "-f", "csv", "--out", fifo)
    assert result.exit_code == 2 and "no process is reading" in result.output, result.output
    received: list[bytes] = []
    ready = threading.Event()

    def reader() -> None:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader from now on
        ready.set()
        select.select([fd], [], [], 20)  # until the writer's data arrives
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            received.append(handle.read())

    thread = threading.Thread(target=reader)
    thread.start()
    ready.wait(5)
    result = invoke("compare", *evaluated_pair(tmp_path / "again"), "-f", "csv", "--out", fifo)
    thread.join(10)
    assert result.exit_code == 0, result.output
    assert received and received[0].startswith(b"run,") and fifo.is_fifo()


def test_export_refuses_a_device_file(trained_run, tmp_path):
    import os

    fifo = tmp_path / "model.ts"
    os.mkfifo(fifo)
    fails_cleanly("export", copy_run(trained_run, tmp_path), "--format", "torchscript", "--out", fifo,
                  names=("device file or FIFO",))
    assert fifo.is_fifo()


# ----------------------------------------------------------------------------- --resume with a wrong last.pt


@pytest.mark.parametrize("damage", ["other architecture", "no objective"])
def test_resume_with_a_wrong_last_checkpoint_is_one_line(damage, tiny_dataset, trained_run, tmp_path):
    from sftkd_cli.runs import load_checkpoint, save_checkpoint

    run = Path(shutil.copytree(trained_run, tmp_path / trained_run.name))
    (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace(str(trained_run.parent), str(run.parent)))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    if damage == "no objective":
        del state["objective"]
    else:
        state["objective"] = {k.replace("blocks.0", "blocks.7"): v[..., :1] for k, v in state["objective"].items()}
    save_checkpoint(run / "checkpoints" / "last.pt", state)
    fails_cleanly(*train_args(tiny_dataset, run.parent, run.name, "--resume", "train.epochs=2"),
                  names=("last.pt", "does not fit"))


# ----------------------------------------------------------------------------- what a model was trained_run on


def prepared(tmp_path: Path, name: str, **options) -> Path:
    from conftest import phantom_volume, write_nifti

    from sftkd_cli.data.options import PrepareOptions
    from sftkd_cli.data.prepare import prepare_dataset
    from sftkd_cli.data.sources import NiftiSource

    raw = tmp_path / f"raw-{name}"
    for i in range(3):
        write_nifti(raw / f"vol{i}.nii.gz", phantom_volume((20, 18, 3), seed=i))
    settings = {"size": (16, 16), "accelerations": (4.0,), "val": ("vol1",), "test": ("vol2",), **options}
    prepare_dataset(NiftiSource(raw), tmp_path / name, PrepareOptions(**settings))
    return tmp_path / name


def test_a_centred_dataset_trains_a_centred_model_whose_dc_keeps_the_target(tmp_path):
    from sftkd_cli.checkpoints import load_model
    from sftkd_cli.data.dataset import SliceDataset
    from sftkd_cli.mri.dc import data_consistency

    data = prepared(tmp_path, "centred", mask_layout="centered")
    result = invoke(*train_args(data, tmp_path / "runs", "c"))
    assert result.exit_code == 0, result.output
    model, state = load_model(tmp_path / "runs" / "c")
    assert model.dc.centered and state["trained_on"]["kspace_layout"] == "centered"
    sample = SliceDataset(data, "val", 4.0)[0]
    target = sample["target"][None]
    kept = data_consistency(target, sample["kspace"][None], sample["mask"][None], centered=model.dc.centered)
    assert torch.allclose(kept, target, atol=1e-5), float((kept - target).abs().max())
    # the same target through the corner-layout DC (what every model got before) is not kept
    wrong = data_consistency(target, sample["kspace"][None], sample["mask"][None], centered=False)
    assert float((wrong - target).abs().max()) > 0.05

    corner = prepared(tmp_path, "corner")
    fails_cleanly("evaluate", tmp_path / "runs" / "c", "--data", corner, names=("centered k-space", "corner"))


def test_images_too_small_for_ssim_are_refused_before_a_run_is_made(tmp_path, monkeypatch):
    import sftkd_cli.data.options as options_module
    from sftkd_cli.choices import MIN_SIZE, SSIM_WINDOW

    assert MIN_SIZE == SSIM_WINDOW == 7  # prepare-data makes no dataset training would refuse
    with monkeypatch.context() as older:  # prepared by an older sftkd, which allowed a side of 4
        older.setattr(options_module, "MIN_SIZE", 4)
        data = prepared(tmp_path, "tiny", size=(6, 5))
    fails_cleanly(*train_args(data, tmp_path / "runs", "r"), names=("6x5", "too small"))
    assert not (tmp_path / "runs" / "r").exists()


def test_distilling_from_a_teacher_of_another_acceleration_is_refused(tiny_dataset, trained_run, tmp_path):
    kd = ["distill", "--teacher", trained_run, "--student", "D2C2", "--method", "at", "--name", "kd",
          f"data.path={tiny_dataset}", f"run.dir={tmp_path / 'runs'}", "train.epochs=1", "train.threads=1"]
    fails_cleanly(*kd, "--acc", "5", names=("acceleration 4x", "5x"))
    assert not (tmp_path / "runs" / "kd").exists()


def test_scores_without_recon_do_not_sit_beside_an_older_recon(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    assert invoke("evaluate", run, "--device", "cpu").exit_code == 0
    assert (run / "recon.h5").is_file()
    result = invoke("evaluate", run, "--device", "cpu", "--no-recon")
    assert result.exit_code == 0, result.output
    assert (run / "metrics.json").is_file() and not (run / "recon.h5").exists()


def test_scores_on_another_dataset_are_filed_apart_and_keep_the_runs_own(tiny_dataset, trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    assert invoke("evaluate", run, "--device", "cpu").exit_code == 0
    own = snapshot(run)
    other = copy_dataset(tiny_dataset, tmp_path)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "note": "re-prepared"}))  # another fingerprint
    result = invoke("evaluate", run, "--device", "cpu", "--data", other)
    assert result.exit_code == 0, result.output
    scored = list(run.glob("eval-data-data-*/metrics.json"))
    assert len(scored) == 1 and json.loads(scored[0].read_text())["dataset"]["path"] == str(other)
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("eval-data-")} == own
    assert invoke("evaluate", run, "--device", "cpu", "--data", tiny_dataset).exit_code == 0  # its own data: the run's files
    assert json.loads((run / "metrics.json").read_text())["dataset"]["path"] == str(tiny_dataset)


def test_a_user_folder_with_its_own_recipe_yaml_is_not_a_run(tiny_dataset, tmp_path):
    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "recipe.yaml").write_text("train:\n  epochs: 3\n")  # a valid recipe the user keeps with notes
    (mine / "notes.md").write_text("mine")
    before = snapshot(tmp_path / "runs")
    fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "mine", "--force"), names=("not an sftkd run",))
    (mine / "checkpoints").mkdir()  # even with a checkpoints/ folder of their own
    (mine / "checkpoints" / "README.txt").write_text("my checkpoints")
    before = snapshot(tmp_path / "runs")
    fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "mine", "--force"), names=("not the one sftkd wrote",))
    assert snapshot(tmp_path / "runs") == before


@pytest.mark.parametrize("command", ["compare", "export"])
def test_out_as_a_loop_of_links_is_refused_and_kept(command, trained_run, tmp_path):
    loop = tmp_path / "loop.out"
    loop.symlink_to(tmp_path / "loop2.out")
    (tmp_path / "loop2.out").symlink_to(loop)
    if command == "compare":
        fails_cleanly("compare", *evaluated_pair(tmp_path), "-f", "csv", "--out", loop, names=("loop",))
    else:
        fails_cleanly("export", copy_run(trained_run, tmp_path), "--format", "torchscript", "--out", loop, names=("loop",))
    assert loop.is_symlink() and (tmp_path / "loop2.out").is_symlink()


def test_an_unusable_device_leaves_no_run_folder(tiny_dataset, tmp_path, monkeypatch):
    import sftkd_cli.config as config

    monkeypatch.setattr(config, "check_device", lambda name, where="train.device": None)  # past the recipe check
    fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "r", "train.device=cuda:7"), names=("cuda",))
    assert not (tmp_path / "runs" / "r").exists()


def _tiny_recipe(tmp_path: Path):
    from sftkd_cli.config import load_recipe

    return load_recipe(None, ["train.device=cpu", f"run.dir={tmp_path / 'runs'}", "run.name=r", "run.role=teacher"])


def test_force_keeps_the_run_locked(tmp_path):
    """--force removes the old run's files but not the lock it holds: a second process is refused
    (a new .lock would have let it train in the same folder at once)."""
    from sftkd_cli.runs import RunDir

    recipe = _tiny_recipe(tmp_path)
    first = RunDir(tmp_path / "runs" / "r")
    first.prepare(recipe, resume=False, force=False)
    first.unlock()
    forced = RunDir(first.path)
    forced.prepare(recipe, resume=False, force=True)
    try:
        with pytest.raises(SftkdError, match="another sftkd process is using this run"):
            RunDir(first.path).prepare(recipe, resume=True, force=False)
    finally:
        forced.unlock()


def test_a_start_that_loses_the_lock_race_leaves_the_winners_run(tmp_path, monkeypatch):
    """Two new starts of one run: the one refused by the lock removes nothing (the folder it saw
    missing is now the other's run)."""
    from sftkd_cli.runs import RunDir

    recipe = _tiny_recipe(tmp_path)
    winner, loser = RunDir(tmp_path / "runs" / "r"), RunDir(tmp_path / "runs" / "r")
    lock = RunDir.lock

    def winner_first(self):
        if self is loser:  # the winner starts between the loser's look and its lock
            winner.prepare(recipe, resume=False, force=False)
        lock(self)

    monkeypatch.setattr(RunDir, "lock", winner_first)
    try:
        with pytest.raises(SftkdError, match="another sftkd process is using this run"):
            loser.prepare(recipe, resume=False, force=False)
        assert winner.recipe_file.is_file() and (winner.path / ".lock").is_file()
    finally:
        winner.unlock()


def test_fp16_on_the_cpu_leaves_no_run_folder(tiny_dataset, tmp_path):
    fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "r", "train.amp=fp16"), names=("fp16", "only on CUDA"))
    assert not (tmp_path / "runs" / "r").exists()


def _failing_step(at_call: int, error: Exception):
    """Trainer._train_step that raises `error` at its `at_call`-th call."""
    from sftkd_cli.training.engine import Trainer

    original, calls = Trainer._train_step, []

    def step(self, *args):
        calls.append(1)
        if len(calls) == at_call:
            raise error
        return original(self, *args)

    return step


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing_to_block_the_retry(tiny_dataset, tmp_path, monkeypatch):
    from sftkd_cli.training.engine import Trainer

    runs = tmp_path / "runs"
    monkeypatch.setattr(Trainer, "_train_step", _failing_step(1, SftkdError("loss became nan at epoch 1, step 1")))
    fails_cleanly(*train_args(tiny_dataset, runs, "r"), names=("loss became nan",), after_epochs=True)
    assert not (runs / "r").exists()
    monkeypatch.undo()
    assert invoke(*train_args(tiny_dataset, runs, "r")).exit_code == 0  # no --force needed


@pytest.mark.parametrize("stop", ["failed in epoch 2", "interrupted in epoch 2"])
def test_a_run_with_a_checkpoint_failed_or_interrupted_is_kept_for_resume(stop, tiny_dataset, tmp_path, monkeypatch):
    from sftkd_cli.training.engine import Trainer

    runs = tmp_path / "runs"
    error = SftkdError("boom") if stop == "failed in epoch 2" else RunInterrupted("stopped")
    monkeypatch.setattr(Trainer, "_train_step", _failing_step(3, error))  # epoch 2, step 1: epoch 1's checkpoint is saved
    invoke(*train_args(tiny_dataset, runs, "r", "train.epochs=2"))
    assert (runs / "r" / "recipe.yaml").is_file()
    assert (runs / "r" / "checkpoints" / "last.pt").is_file()
    monkeypatch.undo()
    assert invoke(*train_args(tiny_dataset, runs, "r", "train.epochs=2", "--resume")).exit_code == 0


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm", "second ctrl-c in epoch 1"])
def test_a_new_run_interrupted_before_its_first_checkpoint_leaves_nothing_to_block_the_retry(stop, tiny_dataset, tmp_path,
                                                                                            monkeypatch):
    """Ctrl-C or SIGTERM while the run starts (the memory layout is measured before the fit's own
    signal handling) or a second Ctrl-C in epoch 1: nothing was saved, so the run is removed, as a
    failed start is, and the same command starts it again; the message does not say it kept anything."""
    from sftkd_cli.training.engine import Trainer

    runs = tmp_path / "runs"
    if stop == "second ctrl-c in epoch 1":
        stopped = RunInterrupted(f"{runs / 'r'}: stopped at once; --resume continues from the last checkpoint")
        monkeypatch.setattr(Trainer, "_train_step", _failing_step(1, stopped))
    else:
        def choose_layout(self, *args):
            if stop == "ctrl-c":
                raise KeyboardInterrupt  # what Python's own Ctrl-C handler raises
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # what a SIGTERM now runs

        monkeypatch.setattr(Trainer, "_choose_layout", choose_layout)
    result = invoke(*train_args(tiny_dataset, runs, "r"))
    assert result.exit_code == (143 if stop == "sigterm" else 130), result.output
    by = "SIGTERM" if stop == "sigterm" else "Ctrl-C"
    assert f"stopped by {by} before its first checkpoint; nothing was saved" in " ".join(result.output.split())
    assert "kept" not in result.output and "--resume" not in result.output
    assert not (runs / "r").exists()
    monkeypatch.undo()
    assert invoke(*train_args(tiny_dataset, runs, "r")).exit_code == 0  # no --force needed


def test_resume_without_the_checkpoints_of_a_trained_run_is_refused(tiny_dataset, tmp_path):
    """It would start over, replacing the history of epochs whose checkpoints were written (a
    best.pt that agrees with the history is resumed from instead, and a stop before epoch 1's
    checkpoints landed starts over: test_resume_from_best.py)."""
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_dataset, runs, "r", "train.epochs=2")).exit_code == 0
    (runs / "r" / "checkpoints" / "last.pt").unlink()
    (runs / "r" / "checkpoints" / "best.pt").unlink()
    before = snapshot(runs / "r")
    fails_cleanly(*train_args(tiny_dataset, runs, "r", "train.epochs=3", "--resume"),
                  names=("last.pt: missing, and so is best.pt (history.jsonl has 2 rows)", "--force"))
    assert snapshot(runs / "r") == before


def test_resume_on_changed_data_is_refused_and_on_moved_data_or_a_moved_run_continues(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path)
    runs = tmp_path / "runs"
    assert invoke(*train_args(data, runs, "r")).exit_code == 0
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "note": "re-prepared"}))  # other data at the same path
    before = snapshot(runs / "r")
    fails_cleanly(*train_args(data, runs, "r", "train.epochs=2", "--resume"), names=("trained on another dataset",))
    assert snapshot(runs / "r") == before
    moved = Path(shutil.move(runs, tmp_path / "moved"))  # the run moved, its data too (the original bytes)
    shutil.copytree(tiny_dataset, tmp_path / "data2")
    result = invoke(*train_args(tmp_path / "data2", moved, "r", "train.epochs=2", "--resume"))
    assert result.exit_code == 0, result.output
    assert load_checkpoint(moved / "r" / "checkpoints" / "last.pt")["epoch"] == 2
    before = snapshot(moved / "r")
    fails_cleanly(*train_args(tmp_path / "data2", moved, "r", "train.epochs=1", "--resume"),
                  names=("train.epochs 1: the run has trained into epoch 2", "expected 2 or more"))
    assert snapshot(moved / "r") == before  # its recipe still says 2 epochs


@pytest.mark.parametrize("args", [["bench", "--size", "100000"], ["bench", "--batch", "100000000"],
                                  ["bench", "--threads", "100000"]])
def test_sizes_beyond_the_limits_are_one_line(args):
    fails_cleanly(*args, names=("expected an integer from",))


def test_export_size_beyond_the_limit_is_one_line(trained_run, tmp_path):
    fails_cleanly("export", copy_run(trained_run, tmp_path), "--format", "torchscript", "--size", "100000", "100000",
                  names=("--size", "4096"))


@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 37.3 GiB"),  # NumPy
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                                "allocate 40000000000 bytes (37.3 GiB)"),  # torch on the CPU
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 37.3 GiB")],
                         ids=["numpy", "torch-cpu", "torch-cuda"])
def test_running_out_of_memory_is_one_line(trained_run, tmp_path, monkeypatch, error):
    import sftkd_cli.export as export_module

    def no_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(export_module, "phantom_inputs", no_memory)
    monkeypatch.setattr(export_module, "dataset_inputs", no_memory)
    fails_cleanly("export", copy_run(trained_run, tmp_path), "--format", "torchscript", names=("out of memory", "37.3 GiB"))


def test_a_file_size_limit_while_exporting_or_checkpointing_is_one_line(tiny_dataset, trained_run, tmp_path):
    """A real RLIMIT_FSIZE in a child process: torch's own file writers aborted or raised RuntimeError."""
    import resource
    import signal
    import subprocess
    import sys

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    run = copy_run(trained_run, tmp_path)
    export = [sys.executable, "-m", "sftkd_cli", "export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]
    resume = [sys.executable, "-m", "sftkd_cli", *map(str, train_args(tiny_dataset, tmp_path / "runs", "big", "train.epochs=1"))]
    for argv in (export, resume):
        done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limited, timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and "Traceback" not in done.stderr, (argv[3], done.returncode, done.stderr[-2000:])
        assert lines[-1].startswith("error: ") and "too large" in lines[-1].lower(), lines
    assert not (tmp_path / "m.ts").exists()


def test_evaluate_takes_a_plans_runs_folder(trained_run, tmp_path):
    plan = tmp_path / "runs" / "demo"
    shutil.copytree(trained_run, plan / trained_run.name)
    (plan / "report").mkdir()
    result = invoke("evaluate", plan, "--device", "cpu", "--no-recon")
    assert result.exit_code == 0, result.output
    assert (plan / trained_run.name / "metrics.json").is_file()


def test_git_commit_only_for_a_checkout_of_sftkd(tmp_path):
    """An installed copy inside a user's own repository (a venv in their project) records no
    commit rather than theirs."""
    import subprocess

    from sftkd_cli.runs import git_commit

    repo = tmp_path / "project"
    (repo / "sftkd_cli").mkdir(parents=True)
    (repo / "venv" / "site-packages" / "sftkd_cli").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "sftkd_cli" / "x.py").write_text("")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert git_commit(repo / "sftkd_cli") == head
    assert git_commit(repo / "venv" / "site-packages" / "sftkd_cli") is None
    assert git_commit(tmp_path / "nowhere") is None


def _refuse(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def test_history_and_env_write_nan_as_null_and_resume_reads_it(tmp_path):
    """val_l1 is NaN without validation slices: history.jsonl holds null there (one compact line
    per row, JSON that strict parsers read), and resume still sees the row agree with best.pt."""
    from sftkd_cli.runs import RunDir
    from sftkd_cli.training.resume import _agrees

    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.write_history([{"epoch": 1, "train_loss": 0.5, "val_l1": float("nan"), "lr": 1e-3, "seconds": float("inf")}])
    run.write_env({"seed": 0, "took": float("nan")})
    lines = run.history_file.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0], parse_constant=_refuse) == {
        "epoch": 1, "train_loss": 0.5, "val_l1": None, "lr": 1e-3, "seconds": None}
    assert json.loads((run.path / "env.json").read_text(), parse_constant=_refuse) == {"seed": 0, "took": None}
    best = {"epoch": 1, "best_epoch": 1, "best_val_l1": float("nan")}
    assert _agrees(run.checkpoint("best"), best, run.read_history())
