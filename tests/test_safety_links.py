"""Planted names in output folders never make sftkd delete or write outside them (CPU only).

- `prepare-data` trusts an install marker (`.prepare-data-install.json`, left by an install that
  was killed midway) only as far as `install` writes it: a marker that is a symbolic link, that
  lists a name of another shape (a file of the user's, a path through a linked folder), or a
  `masks` folder that is a link, is refused in one line with nothing removed; only regular
  files are removed, and the marker is rewritten as a new file, never through a link.
- A temporary file (`.<name>.tmp-<pid>`) that someone planted as a symbolic link is replaced,
  never written through: evaluate and export leave the link's target as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_hardening import _prepare as prepare
from test_hardening import copy_run, fails_cleanly, invoke, raw_folder, trained_run  # noqa: F401  (fixtures)

from sftkd_cli.data.output import INSTALL_MARKER, finish_interrupted_install
from sftkd_cli.export import card_path
from sftkd_cli.files import StagedFiles, temporary_sibling, write_bytes_synced

torch.set_num_threads(1)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the output with a file of the user's that nothing may touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("secret")
    (folder / "secret.h5").write_text("secret h5")
    return folder


# ----------------------------------------------------------------------------- the install marker


@pytest.mark.parametrize("listed", [
    ["link/secret.txt", "notes.txt"], ["link/secret.h5"], ["notes.txt"], ["masks/../notes.txt"],
    ["/abs/secret.h5"], {"notes.txt": 1},
], ids=["repro", "h5-through-link", "user-file", "dot-dot", "absolute", "not-a-list"])
def test_a_planted_marker_listing_other_names_deletes_nothing(raw_folder, outside, tmp_path, listed):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "link").symlink_to(outside)
    (out / INSTALL_MARKER).write_text(json.dumps(listed))
    fails_cleanly(*prepare(raw_folder, out), names=(INSTALL_MARKER, "nothing there is changed"))
    assert (outside / "secret.txt").read_text() == "secret" and (outside / "secret.h5").read_text() == "secret h5"
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / INSTALL_MARKER).read_text()) == listed


@pytest.mark.parametrize("inputs", ["real", "missing"])
def test_a_marker_that_is_a_link_is_neither_followed_nor_rewritten(raw_folder, outside, tmp_path, inputs):
    out = tmp_path / "ds2"
    out.mkdir()
    (outside / "list.json").write_text('["secret.h5"]')
    (out / INSTALL_MARKER).symlink_to(outside / "list.json")
    raw = raw_folder if inputs == "real" else tmp_path / "nonexistent"
    fails_cleanly(*prepare(raw, out), names=(INSTALL_MARKER, "symbolic link"))
    assert (outside / "list.json").read_text() == '["secret.h5"]'
    assert (out / INSTALL_MARKER).is_symlink()


def test_a_masks_folder_that_is_a_link_is_refused_before_removing_anything(raw_folder, outside, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (outside / "x4.npy").write_text("user's")
    (out / "masks").symlink_to(outside)
    (out / "vol0.h5").write_text("old volume")
    (out / INSTALL_MARKER).write_text(json.dumps(["masks/x4.npy", "vol0.h5"]))
    fails_cleanly(*prepare(raw_folder, out), names=("masks",))
    assert (outside / "x4.npy").read_text() == "user's" and (out / "vol0.h5").read_text() == "old volume"


def test_only_regular_files_listed_are_removed_and_the_marker_is_a_new_file(outside, tmp_path):
    """A listed name that is a link stays (its target too); the regular files listed go; the
    marker, rewritten, is a fresh regular file (a link swapped in for its temporary name is not
    written through)."""
    out = tmp_path / "ds"
    (out / "masks").mkdir(parents=True)
    (out / "v0.h5").symlink_to(outside / "secret.h5")
    (out / "masks" / "m.npy").symlink_to(outside / "secret.txt")
    (out / "v1.h5").write_text("old")
    (out / "masks" / "x4.npy").write_text("old mask")
    (out / INSTALL_MARKER).write_text(json.dumps(["v0.h5", "v1.h5", "masks/m.npy", "masks/x4.npy", "v9.h5"]))
    temporary_sibling(out / INSTALL_MARKER).symlink_to(outside / "secret.txt")
    finish_interrupted_install(out)
    assert (out / "v0.h5").is_symlink() and (out / "masks" / "m.npy").is_symlink()
    assert not (out / "v1.h5").exists() and not (out / "masks" / "x4.npy").exists()
    assert (outside / "secret.h5").read_text() == "secret h5" and (outside / "secret.txt").read_text() == "secret"
    marker = out / INSTALL_MARKER
    assert not marker.is_symlink() and json.loads(marker.read_text()) == []


# ----------------------------------------------------------------------------- temporary files


def test_write_bytes_synced_replaces_a_planted_link_instead_of_writing_through_it(outside, tmp_path):
    path = tmp_path / ".f.tmp-1"
    path.symlink_to(outside / "secret.txt")
    write_bytes_synced(path, b"new")
    assert not path.is_symlink() and path.read_bytes() == b"new"
    assert (outside / "secret.txt").read_text() == "secret"

    final = tmp_path / "out.csv"
    temporary_sibling(final).symlink_to(outside / "secret.h5")
    with StagedFiles() as staged:
        staged.add(final, b"a,b\n")
        staged.commit()
    assert not final.is_symlink() and final.read_bytes() == b"a,b\n"
    assert (outside / "secret.h5").read_text() == "secret h5"


def test_evaluate_does_not_write_through_a_planted_temporary_link(trained_run, outside, tmp_path):
    run = copy_run(trained_run, tmp_path)
    temporary_sibling(run / "per_slice.csv").symlink_to(outside / "secret.txt")
    result = invoke("evaluate", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (run / "per_slice.csv").is_symlink() and (run / "per_slice.csv").read_text().startswith("volume")


def test_export_does_not_write_through_a_planted_temporary_link(trained_run, outside, tmp_path):
    target = tmp_path / "m.ts"
    temporary_sibling(target).symlink_to(outside / "secret.txt")
    temporary_sibling(card_path(target)).symlink_to(outside / "secret.h5")
    result = invoke("export", trained_run, "--format", "torchscript", "--out", target)
    assert result.exit_code == 0, result.output
    assert (outside / "secret.txt").read_text() == "secret" and (outside / "secret.h5").read_text() == "secret h5"
    assert not target.is_symlink() and not card_path(target).is_symlink()
    assert json.loads(card_path(target).read_text())["file"] == "m.ts"
