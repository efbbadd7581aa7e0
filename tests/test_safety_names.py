"""Names that are not UTF-8 (CPU).

Linux allows any bytes in a file name but '/' and NUL; Python keeps the bytes that are not UTF-8
as surrogates ('\\udcff' for 0xFF). An output folder, a run folder or a data.path so named works
like any other: prepare-data, evaluate and export write there, stdout shows it, and recon.h5 (whose text
attributes must be UTF-8) records such names as `files.text_name` writes them (\\xNN).
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import sys
from pathlib import Path

import h5py
import pytest
import torch
from test_hardening import invoke, trained_run  # noqa: F401  (trained_run: fixture)

import sftkd_cli.export as export_module
from sftkd_cli.cli.app import _replace_what_the_terminal_cannot_show
from sftkd_cli.config import dump_recipe, load_recipe
from sftkd_cli.errors import SftkdError
from sftkd_cli.evaluate import evaluate_run
from sftkd_cli.export import export_run
from sftkd_cli.files import check_writable

torch.set_num_threads(1)

#: the byte 0xFF of a file name, as Python decodes it
BAD = "\udcff"


def test_an_output_folder_whose_name_is_not_utf8_is_writable(tmp_path):
    """prepare-data --out, evaluate and export check their output folder first (`check_writable`):
    such a name is measured in its bytes, as the file system does."""
    check_writable(tmp_path / f"data{BAD}", "--out", extra=16)
    check_writable(tmp_path / ("d" * 238 + BAD), "--out", extra=16)  # 239 bytes + 16 = 255: fits (UTF-8 text: 241)
    with pytest.raises(SftkdError, match="more than the file system allows"):
        check_writable(tmp_path / ("d" * 245 + BAD), "--out", extra=16)  # 246 bytes, +16 for the temporary twin


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_run_whose_folder_name_is_not_utf8_is_evaluated_and_exported(trained_run, tmp_path, fmt):
    run = Path(shutil.copytree(trained_run, tmp_path / f"run{BAD}"))
    exported = export_run(run, fmt).path
    for scored in (None, exported):
        evaluate_run(run, device="cpu", exported=scored)
    with h5py.File(run / "recon.h5") as f:
        assert f.attrs["run"] == "run\\xff"


def test_a_strict_utf8_stdout_shows_a_name_that_is_not_utf8_escaped(monkeypatch):
    """A UTF-8 terminal's stdout refuses surrogates: sftkd's entry point makes it escape them."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    _replace_what_the_terminal_cannot_show()
    print(f"wrote run{BAD}/metrics.json ±", file=stdout, flush=True)
    assert stdout.buffer.getvalue().decode() == "wrote run\\udcff/metrics.json ±\n"


def test_a_failed_export_leaves_no_folder_it_made(trained_run, tmp_path, monkeypatch):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # the exported file's check fails
    for out in ([], ["--out", tmp_path / "new" / "deeper" / "m.ts"]):
        result = invoke("export", run, "-f", "torchscript", *out)
        assert result.exit_code == 2 and "differs from the PyTorch model" in result.output, result.output
    assert not (run / "export").exists() and not (tmp_path / "new").exists()


def test_a_run_whose_data_path_is_not_utf8_is_evaluated(trained_run, tiny_dataset, tmp_path):
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    data = Path(shutil.copytree(tiny_dataset, tmp_path / f"data{BAD}"))
    recipe = load_recipe(run / "recipe.yaml")
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=str(data)))
    (run / "recipe.yaml").write_text(dump_recipe(recipe))
    evaluate_run(run, device="cpu")
    with h5py.File(run / "recon.h5") as f:
        assert f.attrs["dataset"] == str(data).replace(BAD, "\\xff")



def test_a_run_folder_with_brackets_is_printed_as_named(trained_run, tmp_path):
    """Brackets in a run folder are text, not rich markup: evaluate's table title and its "wrote"
    line name runs/lr[x], not runs/lr."""
    run = Path(shutil.copytree(trained_run, tmp_path / "lr[x]"))
    result = invoke("evaluate", run, "--device", "cpu", "--no-recon")
    assert result.exit_code == 0, result.output
    assert f"wrote {run}/metrics.json" in result.stdout and "lr[x]:" in result.stdout


def test_two_long_names_that_start_alike_get_their_own_temporary_files(tmp_path):
    """A name too long for `.<name>.tmp-<pid>` is cut and ends with a hash of the whole name: an
    export `X.ts` and its card `X.ts.card.json` never share (and delete) one temporary file."""
    from sftkd_cli.files import left_by_dead_process, temporary_sibling

    model = tmp_path / ("m" * 230 + ".ts")
    card = tmp_path / f"{model.name}.card.json"
    names = {temporary_sibling(path).name for path in (model, card, tmp_path / ("é" * 120 + ".ts"))}
    assert len(names) == 3 and all(len(name.encode()) <= 255 for name in names)
    assert all(not left_by_dead_process(tmp_path / name) for name in names)  # this process's: cleanup keeps them
    assert temporary_sibling(tmp_path / "x.ts").name.startswith(".x.ts.tmp-")


def test_an_export_with_a_long_name_writes_the_file_and_its_card(trained_run, tmp_path):
    out = tmp_path / ("m" * 230 + ".ts")  # its card's name, 240 characters, fits in 255
    result = export_run(trained_run, "torchscript", out=out)
    assert out.is_file() and result.card_path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, result.card_path.name])


@pytest.mark.parametrize("given, folder", [(".", "demo"), ("./", "demo"), ("../demo", "demo"), ("sub/..", "demo"),
                                           ("..", "data"), ("sub/", "sub"), ("sub", "sub")])
def test_default_run_name_is_the_data_folder_own_name(given, folder, tmp_path, monkeypatch):
    """`--data .` named the run after "data" (the empty name of `.`), not the folder it is."""
    from sftkd_cli.config import load_recipe
    from sftkd_cli.training.session import default_run_name

    (tmp_path / "data" / "demo" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "data" / "demo")
    recipe = load_recipe(None, [f"data.path={given}"])
    assert default_run_name(recipe, "teacher", "D5C5") == f"{folder}-teacher-D5C5-4x"
