"""What a resumed run may change and still continue exactly, and what its start line says
(CPU, in process): the thread count of train.threads 0, a copied or renamed run folder,
data.cache and train.checkpoint_every."""

from __future__ import annotations

import io
import json
import shutil
import signal

import pytest
import torch
from rich.console import Console

from sftkd_cli.config import load_recipe
from sftkd_cli.errors import RunInterrupted, counted
from sftkd_cli.runs import load_checkpoint, save_checkpoint
from test_engine import _fit, _signal_inside_adam, _weights
from test_hardening import fails_cleanly, invoke, train_args
from test_resume_from_best import _assert_same_run


def _same_weights(a, b) -> None:
    x, y = _weights(a), _weights(b)
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key


def test_a_resume_with_threads_0_keeps_the_thread_count_the_run_trained_with(tmp_path):
    """train.threads 0 is torch's default, which follows the machine's CPUs (set here with
    torch.set_num_threads, as another machine's default would be): a run that trained with 2
    threads and resumes where the default is 1 trains on with 2, says so in one line, and ends bit
    for bit as the uninterrupted run (with 1 thread its weights differ by ~1e-4)."""
    previous = torch.get_num_threads()
    said = io.StringIO()
    try:
        torch.set_num_threads(2)  # the first machine
        _, straight = _fit(tmp_path, "straight", False, None, "train.threads=0")
        _fit(tmp_path, "split", False, None, "train.threads=0", "train.epochs=1")
        torch.set_num_threads(1)  # the machine it resumes on
        _, resumed = _fit(tmp_path, "split", True, None, "train.threads=0", console=Console(file=said, width=300))
        assert torch.get_num_threads() == 1  # the caller's count again after the fit
    finally:
        torch.set_num_threads(previous)
    _same_weights(straight, resumed)
    assert load_checkpoint(resumed.checkpoint("last"))["threads"] == 2
    note, start = said.getvalue().splitlines()[:2]
    assert ", cpu, 2 threads, resuming at the end of epoch 1; layout" in start
    assert note == ("train.threads 0: resuming with the 2 threads the run trained with "
                                               "(torch's default here is 1), so that it continues exactly as if "
                                               "uninterrupted; set train.threads to choose")


def test_a_checkpoint_without_a_thread_count_resumes_with_a_warning(tmp_path):
    """A checkpoint of an sftkd that recorded no thread count: train.threads 0 keeps torch's
    default, and one line warns that the numbers may then differ from an uninterrupted run's."""
    _, run = _fit(tmp_path, "old", False, None, "train.threads=0", "train.epochs=1")
    last = run.checkpoint("last")
    state = load_checkpoint(last)
    del state["threads"]
    save_checkpoint(last, state)
    said = io.StringIO()
    _fit(tmp_path, "old", True, None, "train.threads=0", console=Console(file=said, width=300))
    assert said.getvalue().splitlines()[0] == (
        f"warning: {last}: records no thread count (an older sftkd saved it); resuming with torch's default "
        f"{counted(torch.get_num_threads(), 'thread')}, so if the run trained with "
        "another count its numbers will differ slightly from an uninterrupted run's; set train.threads to that "
        "count (env.json's threads)")


@pytest.mark.parametrize("saved, device, world", [
    (None, "cpu", 1),  # the run trained on CUDA or under torchrun: its checkpoints record no count
    (64, "cpu", 2),    # a resume under torchrun (one thread per process)
    (64, "cuda", 1),   # a resume on CUDA
])
def test_only_a_one_process_cpu_resume_of_a_one_process_cpu_run_keeps_its_thread_count(saved, device, world):
    """Elsewhere the numbers differ from the first run's anyway: the count is torch's default,
    with no line (a CUDA run resumed on the CPU does not take the CUDA host's count)."""
    from pathlib import Path

    from sftkd_cli.training.resume import ResumePoint, resumed_threads

    point = ResumePoint(Path("last.pt"), {"threads": saved})
    assert resumed_threads(0, point, torch.device(device), world) == (0, "")
    assert resumed_threads(3, point, torch.device(device), world) == (3, "")  # train.threads set: kept
    assert resumed_threads(0, ResumePoint(Path("last.pt"), {"threads": 64}), torch.device("cpu"), 1)[0] == 64


def test_a_cuda_or_torchrun_run_records_no_thread_count() -> None:
    from sftkd_cli.training.engine import Trainer

    class Fake:
        device, world = torch.device("cuda"), 1

    assert Trainer._threads_record(Fake()) is None
    Fake.device, Fake.world = torch.device("cpu"), 2
    assert Trainer._threads_record(Fake()) is None
    Fake.world = 1
    assert Trainer._threads_record(Fake()) == torch.get_num_threads()


def test_a_resume_takes_a_name_in_another_case(tiny_dataset, tmp_path):
    """Architecture and KD-method names are read in any case (D2C2 is d2c2): a resume that spells
    the run's model another way continues it; it was refused as a changed model.name."""
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_dataset, runs, "a")).exit_code == 0
    args = train_args(tiny_dataset, runs, "a", "train.epochs=2")
    args[args.index("D2C2")] = "d2c2"
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output


def test_a_copied_run_folder_resumes_as_itself_and_its_hint_names_it(tiny_dataset, tmp_path):
    """A run folder copied elsewhere under another name resumes as that folder: its recipe's
    run.name and run.dir (the original's) may differ and then follow the folder. A refusal's
    hint gives the options that name the copy, so that following it does not resume the original."""
    runs, copy = tmp_path / "runs", tmp_path / "elsewhere" / "b"
    assert invoke(*train_args(tiny_dataset, runs, "a")).exit_code == 0
    shutil.copytree(runs / "a", copy)
    refused = invoke(*train_args(tiny_dataset, copy.parent, "b", "train.epochs=2", "train.lr=0.01"), "--resume")
    assert refused.exit_code == 2
    assert refused.output.strip().endswith(f"give that file as the recipe with --resume --name b --runs-dir {copy.parent}")
    followed = invoke("train-teacher", copy / "recipe.yaml", "--name", "b", "--runs-dir", copy.parent,
                      "train.epochs=2", "--resume")
    assert followed.exit_code == 0, followed.output
    assert len((copy / "history.jsonl").read_text().splitlines()) == 2
    assert len((runs / "a" / "history.jsonl").read_text().splitlines()) == 1  # the original is left as it was
    stored = load_recipe(copy / "recipe.yaml").run
    assert (stored.name, stored.dir) == ("b", str(copy.parent))
    assert invoke("train-teacher", copy / "recipe.yaml", "train.epochs=3", "--resume").exit_code == 0  # as itself now
    assert len((copy / "history.jsonl").read_text().splitlines()) == 3


def test_a_resume_may_change_data_cache_and_checkpoint_every_and_stays_exact(tiny_dataset, tmp_path):
    """data.cache (the same arrays, from memory or from disk) and train.checkpoint_every (how
    often `last` is saved) do not change the numbers: a resume may change them, and ends bit for
    bit as the uninterrupted run."""
    assert invoke(*train_args(tiny_dataset, tmp_path / "straight", "r", "train.epochs=2")).exit_code == 0
    assert invoke(*train_args(tiny_dataset, tmp_path / "split", "r", "train.epochs=1")).exit_code == 0
    resumed = invoke(*train_args(tiny_dataset, tmp_path / "split", "r", "train.epochs=2", "data.cache=false",
                                 "train.checkpoint_every=1"), "--resume")
    assert resumed.exit_code == 0, resumed.output
    _assert_same_run(tmp_path / "split" / "r", tmp_path / "straight" / "r")


def test_the_start_line_says_where_a_run_resumes_mid_epoch_and_counts_one_thread(tmp_path, monkeypatch):
    """A run stopped after step 2 of epoch 2 resumes 'at epoch 2, step 2' (as its stop said), not
    'after epoch 1'; its thread is counted in words ('1 thread', not '1 thread(s)')."""
    _signal_inside_adam(monkeypatch, signal.SIGTERM, (5,))  # epoch 2, step 2 (3 steps an epoch)
    with pytest.raises(RunInterrupted, match="at epoch 2, step 2;"):
        _fit(tmp_path, "stopped", False, None, "train.threads=1")
    monkeypatch.undo()
    said = io.StringIO()
    _fit(tmp_path, "stopped", True, None, "train.threads=1", console=Console(file=said, width=300))
    assert ", cpu, 1 thread, resuming at epoch 2, step 2; layout" in said.getvalue().splitlines()[0]


def test_a_copied_run_resumed_through_its_own_recipe_trains_the_copy(tiny_dataset, tmp_path):
    """`--resume` with a copied run's own RUN/recipe.yaml (naming the original's folder) and no
    --name or --runs-dir continues the copy; it trained the original instead."""
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_dataset, runs, "a")).exit_code == 0
    shutil.copytree(runs / "a", runs / "copy")
    original = (runs / "a" / "checkpoints" / "last.pt").read_bytes()
    result = invoke("train-teacher", runs / "copy" / "recipe.yaml", "train.epochs=2", "--resume")
    assert result.exit_code == 0, result.output
    assert f"done: {runs / 'copy'}" in " ".join(result.output.split())
    assert len((runs / "copy" / "history.jsonl").read_text().splitlines()) == 2
    assert len((runs / "a" / "history.jsonl").read_text().splitlines()) == 1  # the original is left as it was
    assert (runs / "a" / "checkpoints" / "last.pt").read_bytes() == original
    assert load_recipe(runs / "copy" / "recipe.yaml").run.name == "copy"


def test_a_copied_run_started_over_with_force_through_its_own_recipe_trains_the_copy_anew(tiny_dataset, tmp_path):
    """`--force` with a copied run's own RUN/recipe.yaml (naming the original's folder) starts the
    copy over; it was refused, its recipe "not the one sftkd wrote for a run of this name". A
    folder whose recipe.yaml names another run and that has no env.json of a training is still
    refused (it may be a user's)."""
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_dataset, runs, "a")).exit_code == 0
    shutil.copytree(runs / "a", runs / "copy")
    original = (runs / "a" / "checkpoints" / "last.pt").read_bytes()
    result = invoke("train-teacher", runs / "copy" / "recipe.yaml", "train.epochs=2", "--force")
    assert result.exit_code == 0, result.output
    assert [json.loads(row)["epoch"] for row in (runs / "copy" / "history.jsonl").read_text().splitlines()] == [1, 2]
    assert load_recipe(runs / "copy" / "recipe.yaml").run.name == "copy"
    assert (runs / "a" / "checkpoints" / "last.pt").read_bytes() == original
    shutil.copytree(runs / "a", runs / "mine")
    (runs / "mine" / "env.json").unlink()
    message = fails_cleanly(*train_args(tiny_dataset, runs, "mine"), "--force")
    assert message == (f"error: {runs / 'mine'}: its recipe.yaml is not the one sftkd wrote for a run of this name, "
                       "so --force will not empty the folder; choose another --name or --runs-dir")
    assert (runs / "mine" / "checkpoints" / "last.pt").read_bytes() == original


def test_a_projects_recipe_yaml_beside_its_own_checkpoints_folder_is_not_a_run(tiny_dataset, tmp_path, monkeypatch):
    """A recipe.yaml of the user's, beside a checkpoints/ folder of the user's project (no env.json,
    which every run that began training has), trains the run its run.name names; it was taken for a
    run's own recipe, the project folder for the run ("run already exists")."""
    project = tmp_path / "proj"
    (project / "checkpoints").mkdir(parents=True)
    (project / "recipe.yaml").write_text(f"run:\n  name: from-project\n  dir: {tmp_path / 'runs'}\n")
    monkeypatch.chdir(project)
    args = [a for a in train_args(tiny_dataset, tmp_path / "runs", "unused")
            if a not in ("--name", "unused") and not a.startswith("run.dir=")]  # the run named by the recipe alone
    result = invoke(*args[:1], "recipe.yaml", *args[1:])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "from-project" / "checkpoints" / "last.pt").is_file()
    assert sorted(p.name for p in project.iterdir()) == ["checkpoints", "recipe.yaml"]


def test_a_renamed_run_resumes_through_its_own_recipe_from_another_folder(tiny_dataset, tmp_path, monkeypatch):
    """A run whose recipe names it relatively (run.dir runs), renamed and resumed from another
    folder through its RUN/recipe.yaml, continues that folder; it was refused as 'nothing to
    resume' (runs/a from there), whose advice started a new run elsewhere. --name still wins, and
    its 'nothing to resume' says how to name a run's folder."""
    monkeypatch.chdir(tmp_path)
    assert invoke(*train_args(tiny_dataset, "runs", "a")).exit_code == 0
    (tmp_path / "runs" / "a").rename(tmp_path / "runs" / "b")
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    result = invoke("train-teacher", "../runs/b/recipe.yaml", "train.epochs=2", "--resume")
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "runs" / "b" / "history.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "other" / "runs").exists()
    refused = invoke("train-teacher", "../runs/b/recipe.yaml", "--name", "gone", "train.epochs=3", "--resume")
    assert refused.exit_code == 2  # a --name given wins over the recipe's folder
    assert "../runs/gone: nothing to resume" in refused.output
    assert "give its RUN/recipe.yaml as the recipe, or --name and --runs-dir" in " ".join(refused.output.split())
    monkeypatch.chdir(tmp_path / "runs" / "b")  # the bare file name, inside the run: '.' has no name of its own
    result = invoke("train-teacher", "recipe.yaml", "train.epochs=3", "--resume")
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "runs" / "b" / "history.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in (tmp_path / "runs" / "b").iterdir() if p.is_dir()) == ["checkpoints"]


def test_a_resume_refuses_a_history_that_lacks_rows_of_its_checkpoint(tiny_dataset, tmp_path):
    """A resume keeps the history's rows up to its checkpoint and rewrites the file: one whose line
    2 (of 3) was damaged ended with epochs [1, 4] (row 3 lost), a missing one with [4]. Now either
    is refused in one line before any work, and the file is left as it was; a damaged line after
    every row of the checkpoint's epochs still resumes (those rows are all it keeps)."""
    runs = tmp_path / "runs"
    assert invoke(*train_args(tiny_dataset, runs, "r", "train.epochs=3")).exit_code == 0
    history = runs / "r" / "history.jsonl"
    lines = history.read_text().splitlines(keepends=True)
    history.write_text(lines[0] + '{"epoch": 2, "train_lo\n' + lines[2])
    damaged = history.read_bytes()
    resume = [*train_args(tiny_dataset, runs, "r", "train.epochs=4"), "--resume"]
    fails_cleanly(*resume, names=(f"{history}: line 2 is not JSON (1 row (epochs 1) before it)",
                                  "has finished 3 epochs", "restore the file"))
    assert history.read_bytes() == damaged
    history.write_text(lines[0] + "[2]\n" + lines[2])  # JSON, but not epoch 2's row
    fails_cleanly(*resume, names=(f"{history}: holds 3 rows (epochs 1, ?, 3)", "has finished 3 epochs"))
    history.write_text(lines[0] + lines[0] + lines[2])  # epoch 1's row twice
    fails_cleanly(*resume, names=(f"{history}: holds 3 rows (epochs 1, 1, 3)",))
    history.unlink()
    fails_cleanly(*resume, names=(f"{history}: is missing", "has finished 3 epochs"))
    assert not history.exists()
    last = runs / "r" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert state["epoch"] == 3
    history.write_text("".join(lines) + '{"epoch": 4, "train_lo\n')  # after the 3 rows the checkpoint has
    result = invoke(*resume)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["epoch"] for line in history.read_text().splitlines()] == [1, 2, 3, 4]
