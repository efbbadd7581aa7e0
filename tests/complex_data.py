"""Fixtures for the complex-data tests (issue 16): a tiny fastMRI-format dataset prepared by
`sftkd prepare-data fastmri`, and a few short runs on it. Test modules import the fixtures by
name (`complex_dataset = complex_data.complex_dataset`); treat what they return as read-only.

The dataset: 6 synthetic single-coil files (tests/fastmri_files.py) of 4 slices, k-space 40 x 32,
reconstruction_esc 24 x 24; 4 files train, 2 val (16 / 8 slices); 4x and 5x column masks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import sftkd
from fastmri_files import write_folder

#: the recipe overrides of every complex run: CPU, one thread, small widths, quick epochs
BASE = ("train.device=cpu", "train.threads=1", "train.batch_size=2", "model.channels=8",
        "eval.latency_slices=1", "sft.teacher=D3C2", "sft.student=D2C2")


@pytest.fixture(scope="module")
def complex_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared complex dataset (manifest acquisition: complex, 2 channels, centred k-space)."""
    base = tmp_path_factory.mktemp("complex")
    write_folder(base / "raw", files=6, slices=4, shape=(40, 32), crop=(24, 24))
    sftkd("prepare-data", "fastmri", base / "raw", "--out", base / "data")
    return base / "data"


@pytest.fixture(scope="module")
def complex_teacher(complex_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, runs folder) with `teacher`: D3C5, 6 epochs, evaluated in both conventions."""
    runs = tmp_path_factory.mktemp("complex-runs")
    sftkd("train-teacher", "--model", "D3C5", "--name", "teacher", f"data.path={complex_dataset}", f"run.dir={runs}",
          *BASE, "train.epochs=6")
    sftkd("evaluate", runs / "teacher", "--device", "cpu")
    sftkd("evaluate", runs / "teacher", "--device", "cpu", "--convention", "fastmri")
    return complex_dataset, runs


@pytest.fixture(scope="module")
def complex_runs(complex_teacher: tuple[Path, Path]) -> tuple[Path, Path]:
    """`complex_teacher`'s folder plus `sft` (D3C2 + D2C2) and `kd` (AT from the SFT teacher), 2 epochs each."""
    data, runs = complex_teacher
    base = [f"data.path={data}", f"run.dir={runs}", *BASE, "train.epochs=2"]
    sftkd("train-sft", "--name", "sft", *base)
    sftkd("distill", "--teacher", runs / "sft", "--method", "at", "--name", "kd", *base)
    return data, runs
