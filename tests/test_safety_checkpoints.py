"""Files given as checkpoints that sftkd cannot use, through the CLI (CPU): each ends in one line
(exit 2) that says what the file is, naming it (and the key at fault), and what was expected.

- Not a PyTorch file at all (a text file, a download's error page, a zip such as a NumPy .npz),
  empty or cut short: said so, not "refused ... could run code"; an empty last.pt on --resume
  says what --resume can do.
- A PyTorch file sftkd did not write (a plain state_dict), or another checkpoint format.
- An sftkd-shaped checkpoint whose model entries or trained_on record have wrong types.
- A folder that is not a run given where a run is expected; --model on a run of one model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_hardening import copy_run, fails_cleanly, train_args, trained_run  # noqa: F401  (trained_run: fixture)

from sftkd_cli.errors import SftkdError
from sftkd_cli.runs import RunDir, load_checkpoint, save_checkpoint
from sftkd_cli.training.resume import resume_point

torch.set_num_threads(1)


def damaged_run(trained_run: Path, tmp_path: Path, which: str, data: bytes) -> Path:
    """A copy of the trained run whose `which` checkpoint holds `data`, its recipe pointing at the copy."""
    run = Path(shutil.copytree(trained_run, tmp_path / trained_run.name))
    (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace(str(trained_run.parent), str(run.parent)))
    (run / "checkpoints" / f"{which}.pt").write_bytes(data)
    return run


def changed(trained_run: Path, change) -> dict:
    state = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    change(state)
    return state


# ----------------------------------------------------------------------------- model entries of wrong types

ENTRY_DAMAGE = {
    "arch-int": (lambda s: s["models"]["model"].update(arch=5), "model 'model': arch is 5; expected an architecture name"),
    "channels-text": (lambda s: s["models"]["model"].update(channels="x"), "model 'model': channels is 'x'; expected a whole number"),
    "pad-missing": (lambda s: s["models"]["model"].pop("pad"), "model 'model' has no 'pad'"),
    "state-list": (lambda s: s["models"]["model"].update(state=[1, 2]), "model 'model': state is a list; expected a mapping"),
    "entry-number": (lambda s: s["models"].update(model=5), "model 'model' is 5; expected a model entry"),
    "trained-on-text": (lambda s: s.update(trained_on="x"), "trained_on is 'x'; expected a mapping"),
}


@pytest.mark.parametrize("damage", list(ENTRY_DAMAGE))
def test_a_checkpoint_whose_entries_have_wrong_types_is_one_line(damage, trained_run, tiny_dataset, tmp_path):
    change, said = ENTRY_DAMAGE[damage]
    loose = tmp_path / "bad.pt"
    save_checkpoint(loose, changed(trained_run, change))
    fails_cleanly("evaluate", damaged_run(trained_run, tmp_path, "best", loose.read_bytes()), "--device", "cpu",
                  names=("best.pt", said))
    fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "r", "--init-from", loose), names=("bad.pt", said))


# ----------------------------------------------------------------------------- files that are not sftkd checkpoints


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"<html><body>404 Not Found</body></html>"],
                         ids=["text", "html"])
def test_a_file_that_is_not_a_pytorch_file_is_said_to_be_one(content, trained_run, tiny_dataset, tmp_path):
    loose = tmp_path / "download.pt"
    loose.write_bytes(content)
    line = fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "r", "--init-from", loose),
                         names=("download.pt: not a PyTorch checkpoint file; expected a .pt that sftkd wrote",))
    assert "code" not in line


def test_an_empty_or_truncated_checkpoint_is_said_to_be_one(trained_run, tmp_path):
    whole = (trained_run / "checkpoints" / "best.pt").read_bytes()
    for data, said in ((b"", "empty or truncated (0 bytes)"), (whole[:3000], "truncated or damaged checkpoint")):
        run = damaged_run(trained_run, tmp_path / str(len(data)), "best", data)
        fails_cleanly("evaluate", run, "--device", "cpu", names=("best.pt", said))


@pytest.mark.parametrize("kind", ["npz", "zip"])
def test_a_zip_that_is_not_a_pytorch_checkpoint_is_said_to_be_one(kind, trained_run, tiny_dataset, tmp_path):
    """A NumPy .npz or any other zip starts as a torch zip does ('PK'): it has no data.pkl, and is
    said so, not "truncated or damaged"; a .pt cut short still is."""
    import zipfile

    import numpy as np

    loose = tmp_path / "weights.pt"
    if kind == "npz":
        with open(loose, "wb") as handle:
            np.savez(handle, w=np.zeros(3))
    else:
        with zipfile.ZipFile(loose, "w") as archive:
            archive.writestr("model/weights.bin", b"\0" * 8)
    said = "weights.pt: a zip file but not a PyTorch checkpoint (no data.pkl); expected a .pt that sftkd wrote"
    fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "r", "--init-from", loose), names=(said,))
    with pytest.raises(SftkdError, match=r"^x\.pt: a zip file but not a PyTorch checkpoint \(no data\.pkl\)"):
        load_checkpoint(Path("x.pt"), data=loose.read_bytes())  # the bytes a caller has read already
    whole = (trained_run / "checkpoints" / "best.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole[:-100])  # the zip's directory at its end is cut off
    for data in (None, cut.read_bytes()):
        with pytest.raises(SftkdError, match=r"cut\.pt: truncated or damaged checkpoint \(\w+\); expected a whole"):
            load_checkpoint(cut, data=data)


def test_resume_from_an_empty_last_checkpoint_says_what_it_can_do(trained_run, tiny_dataset, tmp_path):
    run = damaged_run(trained_run, tmp_path, "last", b"")
    resume = train_args(tiny_dataset, run.parent, run.name, "--resume", "train.epochs=2")
    fails_cleanly(*resume, names=("last.pt: empty or truncated (0 bytes)",
                                  "restore it, remove it to resume from best.pt (the state after epoch 1), "
                                  "or start over with --force"))
    (run / "checkpoints" / "best.pt").write_bytes(b"")  # best.pt cannot serve either
    line = fails_cleanly(*resume, names=("last.pt: empty or truncated", "restore it, or start over with --force"))
    assert "remove it" not in line
    with pytest.raises(SftkdError, match=r"restore it, or delete \S+ to train it anew$"):  # a plan: no --force
        resume_point(RunDir(run), "delete runs/x to train it anew")


@pytest.mark.parametrize("kind", ["state_dict", "format 2"])
def test_a_pytorch_file_sftkd_did_not_write_is_said_to_be_one(kind, trained_run, tiny_dataset, tmp_path):
    loose = tmp_path / "foreign.pt"
    state = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    if kind == "state_dict":  # what torch.save(model.state_dict(), path) writes
        torch.save(state["models"]["model"]["state"], loose)
        said = ("foreign.pt: a PyTorch file that sftkd did not write", "a run folder or its checkpoints/best.pt or last.pt")
    else:
        torch.save({**state, "format": 2}, loose)
        said = ("foreign.pt: checkpoint format 2; this sftkd reads format 1",)
    fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "r", "--init-from", loose), names=said)


# ----------------------------------------------------------------------------- folders and models that are not there


def test_a_folder_that_is_not_a_run_is_said_to_be_one(trained_run, tiny_dataset, tmp_path):
    runs = tmp_path / "runs"
    fails_cleanly("distill", "--teacher", tiny_dataset, "--student", "D2C2", "--method", "at", "--name", "kd",
                  f"data.path={tiny_dataset}", f"run.dir={runs}", names=(f"{tiny_dataset}: not an sftkd run directory (no recipe.yaml)",))
    (tmp_path / "empty").mkdir()
    fails_cleanly(*train_args(tiny_dataset, runs, "r", "--init-from", tmp_path / "empty"),
                  names=("empty: not an sftkd run directory (no recipe.yaml)",))
    assert not runs.exists() or not any(runs.iterdir())


def test_a_folder_holding_only_checkpoints_still_gives_them(trained_run, tmp_path):
    """A copy of a run's checkpoints/ alone (no recipe.yaml) is read as before: only a folder without
    the checkpoint asked for is checked for being a run."""
    from sftkd_cli.checkpoints import resolve_checkpoint

    shutil.copytree(trained_run / "checkpoints", tmp_path / "copy" / "checkpoints")
    assert resolve_checkpoint(tmp_path / "copy") == tmp_path / "copy" / "checkpoints" / "best.pt"


def test_model_over_runs_some_of_which_lack_it_is_refused_before_any_is_evaluated(trained_run, tmp_path):
    """`evaluate runs/demo --model student` scored the SFT run's student, then failed on the next
    run ("holds one model"), exit 2, the later runs unevaluated. Now every run is checked first."""
    plan = tmp_path / "plan"
    plan.mkdir()
    sft = Path(shutil.copytree(trained_run, plan / "sft"))
    for name in ("best", "last"):  # an SFT run's checkpoint: a teacher and a student entry
        state = load_checkpoint(sft / "checkpoints" / f"{name}.pt")
        entry = state["models"].pop("model")
        state["models"].update(teacher=entry, student=entry)
        state["primary"] = "teacher"
        save_checkpoint(sft / "checkpoints" / f"{name}.pt", state)
    teacher = Path(shutil.copytree(trained_run, plan / "teacher"))
    fails_cleanly("evaluate", sft, teacher, "--model", "student", "--device", "cpu",
                  names=(f"--model student: not in {teacher} (holds model)", f"give only {sft} with --model student",
                         "nothing was evaluated"))
    assert not (sft / "eval-student").exists()


def test_model_on_a_run_of_one_model_says_what_model_picks(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    for command in (["evaluate", run, "--device", "cpu"], ["export", run, "--format", "torchscript"]):
        fails_cleanly(*command, "--model", "student",
                      names=("best.pt: holds one model (model, D2C2), not 'student': --model picks the teacher or "
                             "student of an SFT run; leave it out for this run",))


def test_checkpoint_source_reads_a_name_from_the_run_and_a_file_as_itself(tmp_path):
    """evaluate and `check_runs_hold` read --checkpoint (or eval.checkpoint) one way."""
    from sftkd_cli.checkpoints import checkpoint_source

    assert checkpoint_source(tmp_path, "last") == (tmp_path, "last")
    assert checkpoint_source(tmp_path, "elsewhere/x.pt") == ("elsewhere/x.pt", "best")
