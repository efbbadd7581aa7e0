"""Names that are not UTF-8 (CPU).

Linux allows any bytes in a file name but '/' and NUL; Python keeps the bytes that are not UTF-8
as surrogates ('\\udcff' for 0xFF). An output folder, a run folder or a data.path so named works
like any other: evaluate writes there, and recon.h5 (whose text
attributes must be UTF-8) records such names as `files.text_name` writes them (\\xNN).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import h5py
import torch
from test_hardening import trained_run  # noqa: F401  (trained_run: fixture)

from sftkd_cli.config import dump_recipe, load_recipe
from sftkd_cli.evaluate import evaluate_run

torch.set_num_threads(1)

#: the byte 0xFF of a file name, as Python decodes it
BAD = "\udcff"


def test_a_run_whose_data_path_is_not_utf8_is_evaluated(trained_run, tiny_dataset, tmp_path):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    data = Path(shutil.copytree(tiny_dataset, tmp_path / f"data{BAD}"))
    recipe = load_recipe(run / "recipe.yaml")
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=str(data)))
    (run / "recipe.yaml").write_text(dump_recipe(recipe))
    evaluate_run(run, device="cpu")
    with h5py.File(run / "recon.h5") as f:
        assert f.attrs["dataset"] == str(data).replace(BAD, "\\xff")

