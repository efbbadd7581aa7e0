"""A crafted run folder never sends sftkd's writes outside the run (CPU).

- A model role stored in a checkpoint is a plain name: one that is a path is refused in one line
  (it names RUN/eval-<role>/ and RUN/export/<arch>-<role>.ts).
- A non-empty folder without recipe.yaml is a run only when it holds nothing but what a killed
  start leaves (.lock, temporary files, an empty checkpoints/); files of the user's that happen to
  have sftkd's names make it foreign.
- The files sftkd names inside a run (env.json, history.jsonl, recipe.yaml, the default export and
  its card) replace a symlink found there instead of writing through it; a symlinked eval-* or
  export folder inside a run is refused, and so is a symlinked checkpoints/ when training starts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sftkd_cli.errors import SftkdError
from sftkd_cli.runs import load_checkpoint, save_checkpoint
from test_hardening import fails_cleanly, invoke, snapshot, train_args, trained_run  # noqa: F401  (fixture)

torch.set_num_threads(1)


def own_run(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run whose recipe names its new folder (so it can be resumed)."""
    run = Path(shutil.copytree(trained_run, tmp_path / "runs" / trained_run.name))
    (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace(str(trained_run.parent), str(run.parent)))
    return run


# ----------------------------------------------------------------------------- model roles


def plant_role(run: Path, role: str) -> None:
    """Rename the run's model entry to `role` and make it the primary, in best.pt and last.pt."""
    for which in ("best", "last"):
        path = run / "checkpoints" / f"{which}.pt"
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["models"] = {role: state["models"]["model"]}
        state["primary"] = role
        torch.save(state, path)


@pytest.mark.parametrize("command", ["export", "evaluate"])
def test_a_role_that_is_a_path_is_refused_and_nothing_lands_outside(command, trained_run, tmp_path):
    run = own_run(trained_run, tmp_path)
    plant_role(run, "/../../../outside/planted")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ("--format", "torchscript") if command == "export" else ("--device", "cpu")
    fails_cleanly(command, run, *args, names=("best.pt", "/../../../outside/planted", "not a plain name"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "outside").exists() and not (run / "export").exists()


def test_load_checkpoint_refuses_a_primary_that_is_a_path(trained_run, tmp_path):
    state = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    state["primary"] = "../x"
    save_checkpoint(tmp_path / "best.pt", state)
    with pytest.raises(SftkdError, match=r"best.pt: model role '\.\./x' in 'primary' is not a plain name"):
        load_checkpoint(tmp_path / "best.pt")


def test_the_default_export_file_stays_in_the_runs_export_folder(tmp_path):
    from sftkd_cli.export_target import default_out

    assert default_out(tmp_path, "D3C5", "student", "onnx") == tmp_path / "export" / "D3C5-student.onnx"
    for role in ("/../../x", "..", "a/b", ""):
        with pytest.raises(SftkdError, match="not a plain name"):
            default_out(tmp_path, "D3C5", role, "torchscript")


# ----------------------------------------------------------------------------- folders that are not runs


def test_a_folder_of_the_users_files_with_sftkd_names_is_not_a_run(tiny_dataset, tmp_path):
    mine = tmp_path / "runs" / "exp"
    (mine / "checkpoints").mkdir(parents=True)
    for name in ("metrics.json", "history.jsonl", "env.json", "recon.h5", "checkpoints/best.pt"):
        (mine / name).write_text(f"the user's own {name}")
    before = snapshot(tmp_path / "runs")
    for extra in ((), ("--force",)):
        fails_cleanly(*train_args(tiny_dataset, tmp_path / "runs", "exp", *extra), names=("exp", "not an sftkd run"))
        assert snapshot(tmp_path / "runs") == before


def test_what_a_killed_start_leaves_is_taken_over(tiny_dataset, tmp_path):
    run = tmp_path / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".lock").write_text("")
    (run / ".recipe.yaml.tmp-999999").write_text("half a recipe")
    result = invoke(*train_args(tiny_dataset, tmp_path / "runs", "r"))
    assert result.exit_code == 0, result.output
    assert (run / "recipe.yaml").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert not (run / ".recipe.yaml.tmp-999999").exists()


def test_a_removal_takes_the_recipe_last(trained_run, tmp_path, monkeypatch):
    """--force (and a failed start) remove recipe.yaml last: a removal killed midway leaves a
    folder that is still a run, not one refused as the user's."""
    from sftkd_cli.runs import remove_sftkd_files

    run = own_run(trained_run, tmp_path)
    removed: list[str] = []
    unlink = Path.unlink

    def recorded(self, missing_ok=False):
        removed.append(self.name)
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", recorded)
    remove_sftkd_files(run)
    assert len(removed) > 3 and removed[-1] == "recipe.yaml", removed


# ----------------------------------------------------------------------------- symlinks planted in a run


def elsewhere(tmp_path: Path) -> Path:
    """A file outside the run that planted links point at."""
    folder = tmp_path / "elsewhere"
    folder.mkdir(exist_ok=True)
    (folder / "precious.txt").write_text("the user's")
    return folder / "precious.txt"


def test_resume_replaces_links_to_outside_files_instead_of_writing_through_them(tiny_dataset, trained_run, tmp_path):
    run = own_run(trained_run, tmp_path)
    outside = elsewhere(tmp_path).parent
    for name in ("env.json", "history.jsonl"):  # what the resume reads through the links is the run's own
        (run / name).rename(outside / name)
        (run / name).symlink_to(outside / name)
    before = snapshot(outside)
    result = invoke(*train_args(tiny_dataset, run.parent, run.name, "--resume", "train.epochs=2"))
    assert result.exit_code == 0, result.output
    assert snapshot(outside) == before
    for name in ("env.json", "history.jsonl"):
        assert (run / name).is_file() and not (run / name).is_symlink(), name
    assert len((run / "history.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("start", ["--force", "--resume", "new"])
def test_training_refuses_a_symlinked_checkpoints_folder(start, tiny_dataset, trained_run, tmp_path):
    """checkpoints/ as a link out of the run is refused before anything is written: best.pt and
    last.pt would replace the files of the folder it points at (a new run, --force, --resume)."""
    run = own_run(trained_run, tmp_path)
    outside = elsewhere(tmp_path).parent
    shutil.move(run / "checkpoints", outside / "checkpoints")  # the user's best.pt and last.pt there
    if start == "new":
        shutil.rmtree(run)
        run.mkdir()
    (run / "checkpoints").symlink_to(outside / "checkpoints", target_is_directory=True)
    before = snapshot(tmp_path)
    extra = () if start == "new" else (start, "train.epochs=2")
    fails_cleanly(*train_args(tiny_dataset, run.parent, run.name, *extra), names=("checkpoints", "symbolic link inside run"))
    assert snapshot(tmp_path) == before


def test_export_replaces_a_dangling_link_at_its_default_file(trained_run, tmp_path):
    run = own_run(trained_run, tmp_path)
    (run / "export").mkdir()
    planted = tmp_path / "elsewhere" / "planted.ts"
    for name in ("D2C2-model.ts", "D2C2-model.ts.card.json"):
        (run / "export" / name).symlink_to(planted.with_name(name))  # dangling: the target does not exist yet
    result = invoke("export", run, "--format", "torchscript")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "elsewhere").exists()
    for name in ("D2C2-model.ts", "D2C2-model.ts.card.json"):
        assert (run / "export" / name).is_file() and not (run / "export" / name).is_symlink(), name


def test_export_refuses_a_symlinked_export_folder(trained_run, tmp_path):
    run = own_run(trained_run, tmp_path)
    outside = elsewhere(tmp_path).parent
    (run / "export").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    fails_cleanly("export", run, "--format", "torchscript", names=("export", "symbolic link inside run"))
    assert snapshot(outside) == before


@pytest.mark.parametrize("folder", ["eval-fastmri", "eval-amp-bf16"])
def test_evaluate_refuses_a_symlinked_eval_folder(folder, trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)  # emulated: no warning before refusing
    run = own_run(trained_run, tmp_path)
    outside = elsewhere(tmp_path).parent
    for name in ("metrics.json", "per_slice.csv", "per_volume.csv", "recon.h5"):
        (outside / name).write_text("the user's")
    (run / folder).symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    args = ("--convention", "fastmri") if folder == "eval-fastmri" else ("--amp", "bf16", "--no-recon")
    fails_cleanly("evaluate", run, "--device", "cpu", *args, names=(folder, "symbolic link inside run"))
    assert snapshot(outside) == before


def test_user_paths_still_write_through_links(trained_run, tmp_path):
    """--out is the user's path: a link there keeps sending the file to its target (as documented)."""
    run = own_run(trained_run, tmp_path)
    target = tmp_path / "elsewhere" / "model.ts"
    target.parent.mkdir()
    (tmp_path / "latest.ts").symlink_to(target)
    result = invoke("export", run, "--format", "torchscript", "--out", tmp_path / "latest.ts")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "latest.ts").is_symlink() and target.is_file()
