"""Planted names in output folders never make sftkd delete or write outside them (CPU only).

- A temporary file (`.<name>.tmp-<pid>`) that someone planted as a symbolic link is replaced,
  never written through: evaluate and export leave the link's target as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_hardening import copy_run, invoke, trained_run  # noqa: F401  (fixtures)

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
