"""What `sftkd export` leaves on disk and says, checked from outside: the card (its training
record, and inside the file), the file's bytes, the file and its card published together, the
--out folder, the help, and the files as plain onnxruntime and torch read them. Device: CPU."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sftkd_cli
from sftkd_cli.checkpoints import load_model
from sftkd_cli.cli.app import app
from sftkd_cli.config import dump_recipe, load_recipe
from sftkd_cli.errors import SftkdError
from sftkd_cli.export import export_run
from sftkd_cli.exported import card_path, load_exported, read_card
from test_export import _val_batch, run_copy, trained_run  # noqa: F401  (the fixtures, by name)

torch.set_num_threads(1)

WIDE = {"COLUMNS": "300"}
#: the repository's folder, which no exported file may name
REPOSITORY = str(Path(sftkd_cli.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """`trained_run` exported in both formats into a folder outside it: format -> file."""
    folder = tmp_path_factory.mktemp("exports")
    return {fmt: export_run(trained_run, fmt, out=folder / f"tiny.{fmt}").path for fmt in ("torchscript", "onnx")}


def _per_sample_inputs(tiny_dataset: Path, n: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` val slices, each undersampled by its own mask (rows 0, 1 and every (i+2)th): zf, complex kspace, mask."""
    target = _val_batch(tiny_dataset, n)["target"]
    mask = torch.zeros(n, 1, *target.shape[-2:])
    for i in range(n):
        mask[i, :, : 2] = 1
        mask[i, :, :: i + 2] = 1
    kspace = torch.fft.fft2(target, norm="ortho") * mask
    return torch.fft.ifft2(kspace, norm="ortho").abs(), kspace.to(torch.complex64), mask


def _set_epochs(run: Path, epochs: int) -> None:
    recipe = load_recipe(run / "recipe.yaml")
    (run / "recipe.yaml").write_text(dump_recipe(dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=epochs))))


# --------------------------------------------------------------------------- the card


def _notes(output: str) -> list[str]:
    """export's note lines but the one for a card without scores (these runs are not evaluated)."""
    return [line for line in output.splitlines() if line.startswith("note:") and "card has no scores" not in line]


def test_the_card_says_how_many_planned_epochs_the_run_trained_and_the_command_notes_an_early_stop(run_copy, tmp_path):  # noqa: F811
    """A run that planned 5 epochs and stopped after 1 (its recipe says 5, its last checkpoint 1)
    is exported with a card saying so, and one note line; a finished run gets no note."""
    done = CliRunner().invoke(app, ["export", str(run_copy), "-f", "torchscript", "-o", str(tmp_path / "done.ts")], env=WIDE)
    assert done.exit_code == 0, done.output
    assert read_card(tmp_path / "done.ts")["training"] == {
        "epochs_trained": 1, "epochs_planned": 1, "finished": True, "checkpoint": "best", "checkpoint_epoch": 1,
        "checkpoint_step_in_epoch": 0}
    assert "planned epochs" not in done.output  # (its note: the card has no scores, as the run is not evaluated)
    _set_epochs(run_copy, 5)
    stopped = CliRunner().invoke(app, ["export", str(run_copy), "-f", "torchscript", "-o", str(tmp_path / "early.ts"),
                                       "--checkpoint", "last"], env=WIDE)
    assert stopped.exit_code == 0, stopped.output
    assert read_card(tmp_path / "early.ts")["training"] == {
        "epochs_trained": 1, "epochs_planned": 5, "finished": False, "checkpoint": "last", "checkpoint_epoch": 1,
        "checkpoint_step_in_epoch": 0}
    notes = _notes(stopped.output)
    assert notes == [f"note: {run_copy} trained 1 of its 5 planned epochs (stopped early; --resume continues it); "
                     "this is its last checkpoint, from epoch 1"], stopped.output


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_card_is_embedded_in_the_file_as_plain_onnx_and_torch_read_it(exports, fmt):
    """Without its sha256 (a file cannot hold its own digest), the card beside the file is inside it."""
    path = exports[fmt]
    beside = json.loads(card_path(path).read_text())
    if fmt == "onnx":
        import onnx

        props = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
        embedded = json.loads(props["sftkd_card"])
    else:
        extra = {"sftkd_card.json": ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation
            torch.jit.load(str(path), _extra_files=extra)
        embedded = json.loads(extra["sftkd_card.json"])
    assert embedded == {key: value for key, value in beside.items() if key != "sha256"}
    assert embedded["file"] == path.name and embedded["export_format"] == fmt


# --------------------------------------------------------------------------- the bytes


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {entry.filename: archive.read(entry) for entry in archive.infolist()}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_same_run_exported_from_two_folders_by_two_callers_gives_the_same_bytes(trained_run, tmp_path, monkeypatch, fmt):  # noqa: F811
    """TorchScript kept *.debug_pkl entries naming this repository's files and the caller's stack
    (a run exported twice gave two files); no entry names the repository or the working folder now."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    name = f"m{'.ts' if fmt == 'torchscript' else '.onnx'}"
    monkeypatch.chdir(first)
    export_run(os.path.relpath(trained_run), fmt, out=Path(name))  # from Python, a relative run path
    monkeypatch.chdir(second)
    result = CliRunner().invoke(app, ["export", str(trained_run), "-f", fmt, "-o", name])  # the command
    assert result.exit_code == 0, result.output
    data = (first / name).read_bytes()
    assert data == (second / name).read_bytes()
    for where in (REPOSITORY, str(first), str(second)):
        assert where.encode() not in data
    if fmt == "torchscript":
        entries = _entries(first / name)
        assert not [entry for entry in entries if entry.endswith(".debug_pkl")]
        assert not [entry for entry, content in entries.items() if REPOSITORY.encode() in content]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation
            loaded = torch.jit.load(str(first / name))
        model, _ = load_model(trained_run)
        zf, kspace, mask = _per_sample_inputs(Path(load_recipe(trained_run / "recipe.yaml").data.path), 2)
        with torch.no_grad():
            torch.testing.assert_close(loaded(zf, torch.cat([kspace.real, kspace.imag], 1), mask),
                                       model(zf, kspace, mask), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- publishing


def test_a_signal_between_the_two_renames_waits_until_the_model_and_its_card_are_both_in_place(trained_run, tmp_path, monkeypatch):  # noqa: F811
    """SIGTERM right after the model's rename: the card's rename still happens, the pair is whole
    and matches, and the command says so in one line, exit 143. (It exited saying 'nothing
    written' and left the new model without a card, which --force then refused to replace.)"""
    out = tmp_path / "m.ts"
    replace = os.replace

    def terminated_after_the_model(src, dst):
        replace(src, dst)
        if Path(dst) == out:
            signal.raise_signal(signal.SIGTERM)

    def not_taken(signum, frame):  # the test's own: were export not to take SIGTERM, this fails the test
        raise AssertionError("SIGTERM not handled by export")

    monkeypatch.setattr(os, "replace", terminated_after_the_model)
    previous = signal.signal(signal.SIGTERM, not_taken)
    try:
        result = CliRunner().invoke(app, ["export", str(trained_run), "-f", "torchscript", "-o", str(out)], env=WIDE)
        assert signal.getsignal(signal.SIGTERM) is not_taken  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    assert result.exit_code == 143, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: export interrupted once it was written: {out} and its card m.ts.card.json are complete"]
    said = result.stdout.splitlines()  # the export is whole, so it is said as every export is
    assert said[0].startswith("exported ") and said[0].endswith(f"as torchscript: {out}"), said
    assert any(line.startswith("check: max |exported - PyTorch| = ") for line in said), said
    assert read_card(out)["file"] == "m.ts" and load_exported(out).card["sha256"]  # the card matches the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ts", "m.ts.card.json"]  # no temporary file left


def test_a_ctrl_c_just_after_the_file_and_its_card_are_in_place_says_the_export_is_complete(trained_run, tmp_path, monkeypatch):  # noqa: F811
    """Ctrl-C in the instant after both renames (here: while the temporary file's name is cleaned
    up) stops the export as whole, with its lines, not as 'nothing written' (it said so)."""
    import sftkd_cli.export as export_module

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "unlink_quietly", interrupted)
    out = tmp_path / "m.ts"
    result = CliRunner().invoke(app, ["export", str(trained_run), "-f", "torchscript", "-o", str(out)], env=WIDE)
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: export interrupted once it was written: {out} and its card m.ts.card.json are complete"]
    assert result.stdout.startswith("exported ") and read_card(out)["file"] == "m.ts"


def test_an_out_folder_that_does_not_exist_is_created_and_said(trained_run, tmp_path):  # noqa: F811
    out = tmp_path / "new" / "dir" / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(trained_run), "-f", "onnx", "-o", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert f"note: created folder {tmp_path / 'new'} for --out (it did not exist)" in result.output.splitlines()
    assert out.is_file() and card_path(out).is_file()
    again = CliRunner().invoke(app, ["export", str(trained_run), "-f", "onnx", "-o", str(out), "--force"], env=WIDE)
    assert again.exit_code == 0 and "created folder" not in again.output, again.output


def test_export_help_says_how_inputs_are_scaled_and_where_the_readme_tells_more():
    result = CliRunner().invoke(app, ["export", "--help"], env=WIDE)
    text = " ".join(result.output.split())
    assert "Inputs are float32 and scaled as the training data was" in text and "multiply the output by it" in text
    assert "mask is 0/1" in text and "mask batch B or 1" in text
    assert "README: 'Using an exported model'" in text
    readme = (Path(REPOSITORY) / "README.md").read_text(encoding="utf-8")
    assert "\n### Using an exported model\n" in readme


# --------------------------------------------------------------------------- consumers


def test_onnx_takes_a_mask_per_sample(exports, trained_run, tiny_dataset):  # noqa: F811
    """The mask's batch is its own dynamic axis: three slices with three different masks."""
    zf, kspace, mask = _per_sample_inputs(tiny_dataset)
    assert not torch.equal(mask[0], mask[1])
    model, _ = load_model(trained_run)
    with torch.no_grad():
        expected = model(zf, kspace, mask)
    for fmt in ("onnx", "torchscript"):
        torch.testing.assert_close(load_exported(exports[fmt])(zf, kspace, mask), expected, atol=1e-5, rtol=0)


#: run in a fresh interpreter that never imports sftkd: the files as any deployment reads them
RAW_CONSUMER = """
import json, sys, warnings
import numpy as np, onnxruntime, torch
warnings.simplefilter("ignore")
data = np.load(sys.argv[1])
feeds = {name: data[name] for name in ("zf", "kspace", "mask")}
session = onnxruntime.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
by_onnx = session.run(["image"], {i.name: feeds[i.name] for i in session.get_inputs()})[0]
by_torch = torch.jit.load(sys.argv[3])(*(torch.from_numpy(feeds[name]) for name in ("zf", "kspace", "mask"))).numpy()
print(json.dumps({"onnx": float(np.abs(by_onnx - data["expected"]).max()),
                  "torchscript": float(np.abs(by_torch - data["expected"]).max()),
                  "sftkd": sorted(name for name in sys.modules if name.startswith("sftkd"))}))
"""


def test_plain_onnxruntime_and_torch_in_a_process_without_sftkd_give_the_models_output(exports, trained_run, tiny_dataset, tmp_path):  # noqa: F811
    """Both files, loaded by onnxruntime and torch.jit.load alone, reproduce the PyTorch model's
    output that the test saved, to 1e-5 (the ONNX file computes the DFT as matrix products)."""
    zf, kspace, mask = _per_sample_inputs(tiny_dataset, 2)
    model, _ = load_model(trained_run)
    with torch.no_grad():
        expected = model(zf, kspace, mask)
    arrays = {"zf": zf, "kspace": torch.cat([kspace.real, kspace.imag], 1), "mask": mask, "expected": expected}
    np.savez(tmp_path / "inputs.npz", **{name: t.numpy().astype(np.float32) for name, t in arrays.items()})
    done = subprocess.run([sys.executable, "-c", RAW_CONSUMER, str(tmp_path / "inputs.npz"), str(exports["onnx"]),
                           str(exports["torchscript"])], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["sftkd"] == [] and measured["onnx"] <= 1e-5 and measured["torchscript"] <= 1e-5, measured


# --------------------------------------------------------------------------- the data checked on, the paths taken


def _relative_data_run(run: Path, tiny_dataset: Path, trained_in: Path) -> Path:
    """`run` as trained in `trained_in` with the relative data.path data/tiny (a link to the dataset there)."""
    (trained_in / "data").mkdir(parents=True)
    (trained_in / "data" / "tiny").symlink_to(tiny_dataset, target_is_directory=True)
    recipe = load_recipe(run / "recipe.yaml")
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path="data/tiny"))
    (run / "recipe.yaml").write_text(dump_recipe(recipe))
    return run


def test_a_relative_data_path_is_found_as_evaluate_finds_it_or_given_with_data(run_copy, tiny_dataset, tmp_path, monkeypatch):  # noqa: F811
    """From another folder than training's, the recipe's relative data.path is refused as evaluate
    refuses it, naming --data (it said 'dataset not found ... pass --size', and --size gave a card
    without dataset, normalisation or mask recipe, silently); --data gives the dataset, and the
    card records its path resolved, the same from any folder (so are the bytes)."""
    run = _relative_data_run(run_copy, tiny_dataset, tmp_path / "train")
    monkeypatch.chdir(tmp_path / "train")
    card = export_run(run, "onnx", out=tmp_path / "here.onnx").card
    assert card["dataset"]["path"] == str(tiny_dataset.resolve()) and "val slices" in card["check"]["inputs"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(SftkdError, match=r"data.path 'data/tiny' is not a folder \(read from here, .*\); pass --data DIR"):
        export_run(run, "onnx", out=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    given = export_run(run, "onnx", out=tmp_path / "given.onnx", data=os.path.relpath(tiny_dataset))
    assert given.card["dataset"] == card["dataset"] and given.card["mask"] == card["mask"]
    assert given.card["normalisation"] == card["normalisation"] and "val slices" in given.card["check"]["inputs"]
    outs = []
    for folder in (tmp_path / "train", elsewhere):  # the command, --data as typed relative to each folder
        monkeypatch.chdir(folder)
        outs.append(folder / "m.ts")  # the same name: the card holds it
        result = CliRunner().invoke(app, ["export", str(run), "-f", "torchscript", "-o", str(outs[-1]),
                                          "--data", os.path.relpath(tiny_dataset)], env=WIDE)
        assert result.exit_code == 0 and _notes(result.output) == [], result.output
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with pytest.raises(SftkdError, match=rf"^--data {re.escape(str(tmp_path))}: not a prepared dataset"):
        export_run(run, "onnx", out=tmp_path / "x.onnx", data=tmp_path)  # the error names the flag


def test_an_export_checked_on_phantoms_for_want_of_a_dataset_says_so(run_copy, tiny_dataset, tmp_path, monkeypatch):  # noqa: F811
    run = _relative_data_run(run_copy, tiny_dataset, tmp_path / "train")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.onnx"
    result = CliRunner().invoke(app, ["export", str(run), "-f", "onnx", "-o", str(out), "--size", "12", "10"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert _notes(result.output) == [f"note: no dataset at {tmp_path / 'data' / 'tiny'} (RUN's data.path, read from here): checked on "
                     "synthetic phantoms with a stand-in mask, and the card records no dataset, normalisation or mask "
                     "(mask.sampled_lines null); pass --data DIR where the dataset is now"]
    card = read_card(out)
    assert card["dataset"] is None and card["check"]["inputs"] == "synthetic phantom 12x10 (batch 3; no dataset; a stand-in mask)"
    # the stand-in (a random mask, seed 42) is not the mask the model was trained with: none is given as usable
    assert card["mask"]["kind"] is None and card["mask"]["sampled_lines"] is None and card["mask"]["axis"] is None
    assert card["mask"]["note"].startswith("unknown: no dataset recorded")
    help_text = " ".join(CliRunner().invoke(app, ["export", "--help"], env=WIDE).output.split())
    assert "--data -d DIR Dataset directory (default: the run's data.path)" in help_text


def test_a_dataset_other_than_the_one_trained_on_is_refused_naming_both(run_copy, prepared_like_tiny, tmp_path):  # noqa: F811
    """A model trained on random-mask data, checked on an equispaced dataset, gave a card whose mask
    (and normalisation) were that dataset's, presented as the model's; now refused in one line,
    nothing written. The dataset it was trained on, moved (the same fingerprint), is taken."""
    other = prepared_like_tiny(tmp_path / "eq", mask_kind="equispaced")
    out = tmp_path / "m.onnx"
    with pytest.raises(SftkdError, match=rf"^--data {re.escape(str(other))}: dataset fingerprint \w{{12}}, but "
                       rf"{re.escape(str(run_copy))} was trained on dataset \w{{12}}, .*expected that dataset"):
        export_run(run_copy, "onnx", out=out, data=other)
    assert not out.exists() and not card_path(out).exists()
    recipe = load_recipe(run_copy / "recipe.yaml")
    moved = Path(shutil.copytree(recipe.data.path, tmp_path / "moved"))
    assert export_run(run_copy, "onnx", out=out, data=moved).card["mask"]["kind"] == "random"
    (run_copy / "recipe.yaml").write_text(dump_recipe(dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=str(other)))))
    with pytest.raises(SftkdError, match=rf"^data.path {re.escape(str(other))}: dataset fingerprint"):
        export_run(run_copy, "onnx", out=tmp_path / "n.onnx")


def test_a_file_at_the_cards_path_that_is_not_an_export_card_is_never_replaced(run_copy, tmp_path):  # noqa: F811
    notes = tmp_path / "y.onnx.card.json"
    notes.write_text('{"my": "notes"}')
    for force in ([], ["--force"]):
        result = CliRunner().invoke(app, ["export", str(run_copy), "-f", "onnx", "-o", str(tmp_path / "y.onnx"), *force], env=WIDE)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == (f"error: --out {tmp_path / 'y.onnx'}: its model card's path {notes} holds a file "
                                         "that is not an sftkd export card (of y.onnx); expected a new file name, or that "
                                         "file moved away")
    assert notes.read_text() == '{"my": "notes"}' and not (tmp_path / "y.onnx").exists()
    first = export_run(run_copy, "onnx", out=tmp_path / "z.onnx")  # the card of an export whose file has gone: replaced
    first.path.unlink()
    assert export_run(run_copy, "onnx", out=tmp_path / "z.onnx").path.is_file()


def test_an_out_ending_in_a_path_separator_is_refused(trained_run, tmp_path):  # noqa: F811
    out = str(tmp_path / "newdir") + os.sep
    result = CliRunner().invoke(app, ["export", str(trained_run), "-f", "onnx", "-o", out], env=WIDE)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: --out {out}: ends with a path separator; expected a file path, e.g. {out}D2C2-model.onnx"
    assert not (tmp_path / "newdir").exists()
    nowhere = ["--data", str(tmp_path)]  # no dataset either: --out's own error comes first, before any data is read
    again = CliRunner().invoke(app, ["export", str(trained_run), "-f", "onnx", "-o", out, *nowhere], env=WIDE)
    assert again.exit_code == 2 and again.stderr == result.stderr, again.output


def test_a_size_too_small_names_size_and_what_is_expected(run_copy):  # noqa: F811
    import sftkd_cli.export as export_module

    with pytest.raises(SftkdError) as info:
        export_run(run_copy, "onnx", size=(1, 1))
    assert str(info.value) == "--size 1 1: expected two integers H W, each from 4 to 4096"
    assert export_run(run_copy, "onnx", size=(4, 4)).card["image_size"] == [4, 4]  # the smallest: 1 row of 4 at 4x
    with pytest.raises(SftkdError) as info:  # no 16x mask of 4 lines
        export_module._size_mask((4, 4), 16.0, {"mask": {"kind": "random", "axis": 0}})
    assert str(info.value).startswith("--size 4 4: too small for the 16x mask (acceleration 16.0: too high for 4 lines")
    assert str(info.value).endswith("; expected a larger size")


def test_the_card_records_the_centre_fraction_a_default_mask_was_made_with(run_copy):  # noqa: F811
    """The manifest records null for the default centre fraction: the card gives the value used."""
    import sftkd_cli.export as export_module
    from sftkd_cli.choices import DEFAULT_CENTER_FRACTION
    from sftkd_cli.mri.masks import fastmri_center_fraction, make_mask

    assert json.loads((Path(load_recipe(run_copy / "recipe.yaml").data.path) / "manifest.json").read_text())["mask"]["center_fraction"] is None
    card = export_run(run_copy, "onnx").card
    assert card["mask"]["center_fraction"] == DEFAULT_CENTER_FRACTION["random"] == 0.04
    rows = make_mask("random", (16, 16), 4.0)
    for mask, expected in (({"kind": "fastmri-random"}, fastmri_center_fraction(4.0)), ({"kind": "fastmri"}, 0.08),
                           ({"kind": "random", "center_fraction": 0.1}, 0.1), ({"kind": "sr-box"}, None), ({}, None)):
        assert export_module._mask_card({"mask": mask}, 4.0, rows, None)["center_fraction"] == expected, mask
    user = {"kind": "random", "per_acceleration": {"acc4": {"origin": "file"}}}  # a mask of the user's file: unknown
    assert export_module._mask_card({"mask": user}, 4.0, rows, "m.npy")["center_fraction"] is None


def test_an_export_removes_what_an_export_of_the_same_file_killed_while_writing_left(trained_run, tmp_path):  # noqa: F811
    """`kill -9` during an export leaves `.<name>.tmp-<pid>` in the --out folder; the next export
    of that file removes its own and its card's, and nothing else: another program's temporary
    file, and one whose process still runs, stay."""
    out = tmp_path / "models" / "m.onnx"
    out.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    left = [out.parent / f".m.onnx.tmp-{dead}", out.parent / f".m.onnx.card.json.tmp-{dead}"]
    kept = [out.parent / f".notes.txt.tmp-{dead}", out.parent / f".m.onnx.tmp-{os.getppid()}",
            out.parent / f".m.onnx.tmp-notes.tmp-{dead}"]  # another file's temporary name that starts alike
    for path in (*left, *kept):
        path.write_bytes(b"partial")
    result = CliRunner().invoke(app, ["export", str(trained_run), "-f", "onnx", "-o", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in left) and all(path.exists() for path in kept)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["m.onnx", "m.onnx.card.json", *(p.name for p in kept)])
