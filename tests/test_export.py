"""`sftkd export`: matmul DFT, the exportable wrapper, TorchScript/ONNX files, model card, evaluate."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import time
import json
import shutil
import sys
import warnings
from pathlib import Path

import complex_data
import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import sftkd_cli.export as export_module
import sftkd_cli.export_target as target_module
from sftkd_cli.acquisition import Acquisition
from sftkd_cli.checkpoints import load_model
from sftkd_cli.cli.app import app
from sftkd_cli.config import dump_recipe, load_recipe
from sftkd_cli.data.dataset import SliceDataset
from sftkd_cli.errors import SftkdError
from sftkd_cli.export import export_run, exportable
from sftkd_cli.exported import card_path, load_exported, read_card, split_complex
from sftkd_cli.models.traceable import ExportableDCCNN, MatmulDFT, dft_matrix
from sftkd_cli.models import build_model, count_parameters
from sftkd_cli.runtime import collate

torch.set_num_threads(1)

complex_dataset = complex_data.complex_dataset  # the fixture, by name

CARD_KEYS = {
    "format", "sftkd_version", "export_format", "file", "exporter", "run", "role", "checkpoint",
    "architecture", "params", "task", "acceleration", "mask", "image_size", "image_size_dynamic", "batch_dynamic",
    "inputs", "outputs", "kspace_layout", "fft_norm", "dataset", "metrics", "check", "sha256", "normalisation",
}


@pytest.fixture(scope="module")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A D2C2 (4 channels) run trained for one step on the tiny dataset (read-only)."""
    from sftkd_cli.training.supervised import train_supervised

    runs = tmp_path_factory.mktemp("runs")
    recipe = load_recipe(None, [
        f"data.path={tiny_dataset}", "model.name=D2C2", "model.channels=4", "sft.teacher=D2C2",
        "sft.student=D2C2", "train.epochs=1", "train.max_steps_per_epoch=1", "train.device=cpu",
        f"run.dir={runs}", "run.name=tiny",
    ])
    run, _ = train_supervised(recipe, console=Console(file=io.StringIO()))
    return run.path


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, for tests that write into it."""
    return Path(shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("export", ".lock")))


def _val_batch(dataset_path: Path, n: int) -> dict[str, torch.Tensor]:
    ds = SliceDataset(dataset_path, "val", 4)
    return collate([ds[i] for i in range(n)])


def _undersampled(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(shape, generator=g)
    mask = torch.zeros(1, 1, *shape[-2:])
    mask[..., ::3, :] = 1
    kspace = torch.fft.fft2(image, norm="ortho") * mask
    return torch.fft.ifft2(kspace, norm="ortho").abs(), kspace, mask


# --------------------------------------------------------------------------- matmul DFT


@pytest.mark.parametrize("size", [(8, 6), (5, 7), (9, 4)])
@pytest.mark.parametrize("centered", [False, True])
def test_matmul_dft_equals_numpy_fft2_and_ifft2(size, centered):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 1, *size)) + 1j * rng.normal(size=(2, 1, *size))
    dft = MatmulDFT(*size, centered=centered)
    pre = (lambda a: np.fft.ifftshift(a, axes=(-2, -1))) if centered else (lambda a: a)
    post = (lambda a: np.fft.fftshift(a, axes=(-2, -1))) if centered else (lambda a: a)
    expected_fft = post(np.fft.fft2(pre(x), norm="ortho"))
    expected_ifft = post(np.fft.ifft2(pre(x), norm="ortho"))
    xr, xi = torch.tensor(x.real, dtype=torch.float32), torch.tensor(x.imag, dtype=torch.float32)
    kr, ki = dft(xr, xi)
    np.testing.assert_allclose(kr.numpy() + 1j * ki.numpy(), expected_fft, atol=1e-5)
    ir, ii = dft.inverse(xr, xi)
    np.testing.assert_allclose(ir.numpy() + 1j * ii.numpy(), expected_ifft, atol=1e-5)
    # the real-input / real-output forms used inside the data consistency
    rr, ri = dft.forward_real(xr)
    np.testing.assert_allclose(rr.numpy() + 1j * ri.numpy(), post(np.fft.fft2(pre(x.real), norm="ortho")), atol=1e-5)
    np.testing.assert_allclose(dft.inverse_real(xr, xi).numpy(), expected_ifft.real, atol=1e-5)


def test_dft_matrix_by_hand_and_unitary():
    # n = 2: [[1, 1], [1, -1]] / sqrt 2; n = 4 forward row 1 is [1, -i, -1, i] / 2
    np.testing.assert_allclose(dft_matrix(2), np.array([[1, 1], [1, -1]]) / np.sqrt(2), atol=1e-12)
    np.testing.assert_allclose(dft_matrix(4)[1], np.array([1, -1j, -1, 1j]) / 2, atol=1e-12)
    for n in (5, 6):
        m = dft_matrix(n)
        np.testing.assert_allclose(dft_matrix(n, inverse=True), m.conj().T, atol=1e-12)
        np.testing.assert_allclose(m @ m.conj().T, np.eye(n), atol=1e-12)


# --------------------------------------------------------------------------- exportable wrapper


@pytest.mark.parametrize("size", [(16, 16), (15, 13)])
@pytest.mark.parametrize("centered", [False, True])
def test_exportable_wrapper_equals_dccnn(size, centered):
    torch.manual_seed(3)
    layout = Acquisition(kspace_layout="centered" if centered else "corner")
    model = build_model("D3C2", channels=4, acquisition=layout).eval()
    zf, kspace, mask = _undersampled((2, 1, *size))
    with torch.no_grad():
        expected = model(zf, kspace, mask)
        for dft in ("matmul", "fft"):
            got = ExportableDCCNN(model, size, dft)(zf, split_complex(kspace), mask)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    wrapper = ExportableDCCNN(model, size)
    assert wrapper.blocks is model.blocks  # the trained conv blocks themselves, not copies


def test_split_complex_layout_and_errors():
    k = torch.complex(torch.ones(2, 1, 3, 3), -2 * torch.ones(2, 1, 3, 3))
    parts = split_complex(k)
    assert parts.shape == (2, 2, 3, 3) and parts.dtype == torch.float32
    assert torch.all(parts[:, 0] == 1) and torch.all(parts[:, 1] == -2)
    assert torch.equal(split_complex(parts), parts)  # already split: returned as it is
    with pytest.raises(SftkdError, match="expected"):
        split_complex(torch.ones(2, 3, 3, 3))


# --------------------------------------------------------------------------- export files


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_loads_and_matches_with_dynamic_batch(trained_run, tiny_dataset, tmp_path, fmt):
    out = tmp_path / f"model.{fmt}"
    result = export_run(trained_run, fmt, out=out)
    assert result.path == out and out.is_file() and result.card_path.is_file()
    assert result.max_abs_diff < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.name + ".card.json"])
    model, _ = load_model(trained_run)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.jit's deprecation (a FutureWarning from torch 2.14) is not the user's
        exported = load_exported(out)
    assert exported.format == fmt and exported.name == "D2C2" and exported.params == count_parameters(model)
    for n in (1, 3):
        batch = _val_batch(tiny_dataset, n)
        with torch.no_grad():
            expected = model(batch["zf"], batch["kspace"], batch["mask"])
        got = exported(batch["zf"], batch["kspace"], batch["mask"])
        assert got.shape == (n, 1, 16, 16) and got.dtype == torch.float32
        assert float((got - expected).abs().max()) < 1e-4
    if fmt == "torchscript":  # torch.fft inside: any image size
        zf, kspace, mask = _undersampled((2, 1, 12, 20))
        with torch.no_grad():
            assert float((exported(zf, kspace, mask) - model(zf, kspace, mask)).abs().max()) < 1e-5
    else:  # fixed size, only matrix products for the DFT
        import onnx

        graph = onnx.load(str(out)).graph
        ops = {node.op_type for node in graph.node}
        assert "MatMul" in ops and not ops & {"DFT", "STFT"}
        assert [i.name for i in graph.input] == ["zf", "kspace", "mask"]
        assert [d.dim_param or d.dim_value for d in graph.input[1].type.tensor_type.shape.dim] == ["batch", 2, 16, 16]
        zf, kspace, mask = _undersampled((1, 1, 12, 20))
        with pytest.raises(SftkdError, match="16x16"):
            exported(zf, kspace, mask)


def test_torchscript_files_keep_channels_last_weights_run_without_grad_and_leave_the_model_as_it_was(trained_run, tmp_path):
    """Device: CPU. A TorchScript file keeps its weights' memory layout and runs in it wherever it
    is loaded: channels_last, the faster for inference on every CPU measured (it was NCHW, as
    checkpoints load). The model handed to `exportable` keeps its own layout."""
    out = tmp_path / "model.torchscript"
    export_run(trained_run, "torchscript", out=out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation
        loaded = torch.jit.load(str(out))
    weights = [p for p in loaded.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights)
    # called plainly, as a deployment script would: a contiguous tensor without grad, ready for numpy
    zf, kspace, mask = _undersampled((2, 1, 16, 16))
    got = loaded(zf, split_complex(kspace), mask)
    assert got.is_contiguous() and not got.requires_grad and got.numpy().shape == (2, 1, 16, 16)
    model, _ = load_model(trained_run)
    exportable(model, (16, 16), fixed=False)
    assert all(p.is_contiguous() for p in model.parameters())


def test_default_out_and_card_fields(run_copy, tiny_dataset):
    last = hashlib.sha256((run_copy / "checkpoints" / "last.pt").read_bytes()).hexdigest()
    (run_copy / "metrics.json").write_text(json.dumps(  # scores of the exported model: its role, checkpoint and bytes
        {"format": 1, "model": "D2C2", "role": "teacher", "checkpoint": "last", "checkpoint_sha256": last,
         "dataset": {"split": "val", "acceleration": 4.0}, "metrics": {"PSNR": {"mean": 30.0, "std": 1.0}}}))
    result = export_run(run_copy, "onnx", checkpoint="last")
    assert result.path == run_copy / "export" / "D2C2-model.onnx"
    card = json.loads(result.card_path.read_text())
    assert CARD_KEYS <= set(card)
    model, state = load_model(run_copy, which="last")
    assert card["export_format"] == "onnx" and card["checkpoint"] == "last" and card["epoch"] == state["epoch"]
    assert card["architecture"]["name"] == "D2C2" and card["architecture"]["channels"] == 4
    assert card["params"] == count_parameters(model) == 2 * (1 * 4 * 9 + 4 + 4 * 1 * 9 + 1)
    assert card["image_size"] == [16, 16] and not card["image_size_dynamic"] and card["batch_dynamic"]
    assert [i["name"] for i in card["inputs"]] == ["zf", "kspace", "mask"] and card["outputs"][0]["name"] == "image"
    assert card["inputs"][1]["shape"] == ["batch", 2, 16, 16] and card["kspace_layout"] == "corner"
    mask = np.load(tiny_dataset / "masks" / "acc4.npy")
    assert card["acceleration"] == 4.0 and card["mask"]["kind"] == "random" and card["mask"]["seed"] == 42
    assert card["mask"]["axis"] == 0 and card["mask"]["sampled_lines"] == [int(r) for r in np.flatnonzero(mask[:, 0])]
    assert card["mask"]["lines"] == 4 and Path(card["mask"]["file"]).is_file()
    assert card["metrics"]["metrics"]["PSNR"]["mean"] == 30.0 and card["checkpoint_sha256"] == last
    assert card["check"]["max_abs_diff"] < 1e-4 and card["check"]["batches"] == [1, 3]
    assert card["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert "divided by the source volume maximum" in card["normalisation"]  # the manifest's words
    assert "multiply the output by it" in card["normalisation"]  # it said "divide", the wrong way back
    options = json.loads((tiny_dataset / "manifest.json").read_text())["options"]  # what new scans must repeat
    assert {k: card["dataset"]["slicing"][k] for k in ("slice_axis", "downsample", "size")} == {
        k: options[k] for k in ("slice_axis", "downsample", "size")}
    assert "val slices" in card["check"]["inputs"]
    ts_card = export_run(run_copy, "torchscript").card
    assert ts_card["image_size_dynamic"] and ts_card["inputs"][0]["shape"] == ["batch", 1, "H", "W"]


def _refuse(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def test_the_card_writes_nan_and_infinite_scores_as_null(run_copy):
    """A metrics.json of an earlier sftkd holds NaN/Infinity tokens (std of one volume, PSNR of an
    exact prediction): the card copies its scores as null, JSON that any parser reads."""
    last = hashlib.sha256((run_copy / "checkpoints" / "last.pt").read_bytes()).hexdigest()
    (run_copy / "metrics.json").write_text(json.dumps(
        {"format": 1, "model": "D2C2", "role": "teacher", "checkpoint": "last", "checkpoint_sha256": last,
         "dataset": {"split": "val", "acceleration": 4.0},
         "metrics": {"PSNR": {"mean": float("inf"), "std": float("nan")}, "SSIM": {"mean": 0.9, "std": 0.01}}}))
    result = export_run(run_copy, "torchscript", checkpoint="last")
    card = json.loads(result.card_path.read_text(), parse_constant=_refuse)
    assert card["metrics"]["metrics"] == {"PSNR": {"mean": None, "std": None}, "SSIM": {"mean": 0.9, "std": 0.01}}
    assert read_card(result.path)["metrics"]["metrics"]["PSNR"]["std"] is None  # sftkd reads its own card


def test_a_card_left_without_scores_is_said_in_one_note(run_copy, tmp_path):
    """After `--resume` trained on, metrics.json scored an earlier best.pt: the card got
    "metrics": null without a word (the help says the card gets its scores). Now one note says why
    and which evaluate command gives them; a card with its scores gets no note."""
    def export(name: str) -> list[str]:
        result = CliRunner().invoke(app, ["export", str(run_copy), "-f", "torchscript", "-o", str(tmp_path / name)], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert read_card(tmp_path / name)["metrics"] is None or "card has no scores" not in result.output
        return [line for line in result.output.splitlines() if "card has no scores" in line]

    best = hashlib.sha256((run_copy / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    scores = {"format": 1, "model": "D2C2", "role": "teacher", "checkpoint": "best", "checkpoint_sha256": "0" * 64,
              "dataset": {"split": "val", "acceleration": 4.0}, "metrics": {"PSNR": {"mean": 30.0, "std": 1.0}}}
    (run_copy / "metrics.json").write_text(json.dumps(scores))  # of an earlier best.pt
    assert export("earlier.ts") == [
        f"note: the card has no scores: {run_copy / 'metrics.json'} scores another checkpoint (an earlier best.pt: the "
        f"run trained on since, e.g. --resume); run `sftkd evaluate {run_copy} --checkpoint best` first, then export again"]
    (run_copy / "metrics.json").unlink()
    assert export("none.ts") == [f"note: the card has no scores: no {run_copy / 'metrics.json'} yet; "
                                 f"run `sftkd evaluate {run_copy} --checkpoint best` first, then export again"]
    (run_copy / "metrics.json").write_text(json.dumps({**scores, "checkpoint_sha256": best}))
    assert export("scored.ts") == [] and read_card(tmp_path / "scored.ts")["metrics"]["metrics"]["PSNR"]["mean"] == 30.0


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_failing_check_leaves_nothing_behind(trained_run, tmp_path, monkeypatch, fmt):
    out = tmp_path / "out" / "model.bin"
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)
    with pytest.raises(SftkdError, match="differs from the PyTorch model"):
        export_run(trained_run, fmt, out=out)
    assert not out.parent.exists()  # nor the folder made for it
    monkeypatch.undo()
    original = export_module.ExportedModel.__call__
    monkeypatch.setattr(export_module.ExportedModel, "__call__", lambda self, *a: original(self, *a) + 1e-3)
    with pytest.raises(SftkdError, match="differs"):
        export_run(trained_run, fmt, out=out)
    assert not out.parent.exists()  # nor the folder made for it


def test_the_card_records_the_mask_the_check_used_read_off_the_mask():
    rows = np.zeros((8, 6), np.float32)
    rows[[0, 1, 5]] = 1
    card = export_module._mask_card(None, 4.0, rows, None)
    assert (card["axis"], card["sampled_lines"], card["lines"]) == (0, [0, 1, 5], 3)
    recipe = {"mask": {"kind": "random", "axis": 0}}  # whatever the manifest says, the mask tells
    card = export_module._mask_card(recipe, 4.0, rows.T.copy(), "m.npy")  # fastMRI: whole columns
    assert (card["axis"], card["sampled_lines"], card["lines"], card["file"]) == (1, [0, 1, 5], 3, "m.npy")
    points = np.eye(6, dtype=np.float32)  # neither whole rows nor whole columns
    card = export_module._mask_card(None, 4.0, points, None)
    assert card["axis"] is None and card["lines"] is None and card["sampled_fraction"] == round(1 / 6, 6)


def test_another_size_records_the_mask_made_for_it_not_the_datasets(run_copy):
    card = export_run(run_copy, "onnx", size=(12, 10)).card
    assert card["mask"]["shape"] == [12, 10] and card["mask"]["file"] is None
    assert card["mask"]["axis"] == 0 and card["mask"]["lines"] == 3 and card["mask"]["kind"] == "random"


def test_missing_dataset_needs_size_then_uses_a_phantom(run_copy, tmp_path):
    recipe = load_recipe(run_copy / "recipe.yaml")
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path=str(tmp_path / "gone")))
    (run_copy / "recipe.yaml").write_text(dump_recipe(recipe))
    with pytest.raises(SftkdError, match="--size"):
        export_run(run_copy, "onnx")
    result = export_run(run_copy, "onnx", size=(12, 10))
    assert result.card["check"]["inputs"].startswith("synthetic phantom 12x10")
    assert result.card["dataset"] is None and result.card["image_size"] == [12, 10]
    assert load_exported(result.path).image_size == (12, 10)


def test_user_errors(trained_run, tmp_path, monkeypatch):
    with pytest.raises(SftkdError, match="nope: no such run directory"):
        export_run(tmp_path / "nope", "onnx")
    with pytest.raises(SftkdError, match="--format 'tflite'"):
        export_run(trained_run, "tflite")
    with pytest.raises(SftkdError, match="--checkpoint"):
        export_run(trained_run, "onnx", checkpoint="first")
    with pytest.raises(SftkdError, match=r"holds one model \(model, D2C2\), not 'student'"):
        export_run(trained_run, "onnx", role="student")
    with pytest.raises(SftkdError, match="not found"):
        load_exported(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(SftkdError, match="not an ONNX or TorchScript model"):
        load_exported(junk)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SftkdError, match=r"pip install 'sftkd\[export\]'"):
        export_run(trained_run, "onnx", out=tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_an_existing_file_is_replaced_only_if_it_is_an_earlier_export_and_with_force(run_copy, tmp_path):
    notes = tmp_path / "notes.ts"
    notes.write_text("mine")
    best = run_copy / "checkpoints" / "best.pt"
    kept = best.read_bytes()
    for target in (notes, best):
        with pytest.raises(SftkdError, match="exists and is not an sftkd export"):
            export_run(run_copy, "torchscript", out=target, force=True)
    assert notes.read_text() == "mine" and best.read_bytes() == kept and not list(best.parent.glob("*.card.json"))
    first = export_run(run_copy, "onnx").path
    with pytest.raises(SftkdError, match="an earlier export is there; pass --force"):
        export_run(run_copy, "onnx", checkpoint="last")
    assert export_run(run_copy, "onnx", checkpoint="last", force=True).card["checkpoint"] == "last"
    assert read_card(first)["checkpoint"] == "last"


def test_a_failed_rename_of_the_model_leaves_the_earlier_export_and_card(run_copy, tmp_path, monkeypatch):
    """The card is renamed in after the model: when the model's rename fails, no new card stands
    beside the earlier export (or beside no file at all), and no temporary file is left."""
    path = export_run(run_copy, "torchscript").path
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    fresh = tmp_path / "new" / "m.ts"
    fresh.parent.mkdir()
    replace = os.replace

    def model_fails(src, dst):
        if Path(dst) in (path, fresh):
            raise OSError(5, "Input/output error")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", model_fails)
    with pytest.raises(SftkdError, match=r"could not write \(Input/output error\)"):
        export_run(run_copy, "torchscript", checkpoint="last", force=True)
    with pytest.raises(SftkdError, match=r"could not write \(Input/output error\)"):
        export_run(run_copy, "torchscript", out=fresh)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before
    assert list(fresh.parent.iterdir()) == []
    assert read_card(path)["checkpoint"] == "best"


def test_a_card_that_does_not_match_its_file_is_refused(run_copy, monkeypatch):
    """An export killed between renaming the model and renaming its card (kill -9, a crash: a
    Ctrl-C or SIGTERM there waits, see test_export_files) leaves the new model with the old card:
    the card's sha256 tells, and the pair is refused."""
    path = export_run(run_copy, "torchscript").path
    replace, calls = os.replace, []

    def stopped_before_the_card(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the model went in first; the card's rename never happens
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", stopped_before_the_card)
    with pytest.raises(KeyboardInterrupt):
        export_run(run_copy, "torchscript", checkpoint="last", force=True)
    monkeypatch.undo()
    assert [Path(p).name for p in calls] == [path.name, path.name + ".card.json"]
    assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name] == []
    with pytest.raises(SftkdError, match=r"describes another file .*\(sha256 differs\)"):
        load_exported(path)


def test_a_symlinked_out_keeps_the_card_beside_the_file_and_it_is_found(run_copy, tmp_path):
    from sftkd_cli.evaluate import evaluate_run

    (tmp_path / "real").mkdir()
    link = tmp_path / "link.ts"
    link.symlink_to(tmp_path / "real" / "m.ts")
    export_run(run_copy, "torchscript", out=link)
    assert link.is_symlink() and (tmp_path / "real" / "m.ts.card.json").is_file()
    assert read_card(link)["role"] == "model"
    assert evaluate_run(run_copy, device="cpu", write_recon=False, exported=link)["exported"]["format"] == "torchscript"


# --------------------------------------------------------------------------- evaluate and CLI


def test_evaluate_scores_an_exported_file_like_the_checkpoint(run_copy):
    from sftkd_cli.evaluate import evaluate_run

    reference = evaluate_run(run_copy, device="cpu", write_recon=False)
    own = (run_copy / "metrics.json").read_bytes()
    onnx_file = export_run(run_copy, "onnx").path
    scored = evaluate_run(run_copy, device="cpu", write_recon=False, exported=onnx_file)
    assert (run_copy / "metrics.json").read_bytes() == own  # the run's own evaluation is kept
    out = run_copy / "eval-D2C2-model-onnx"
    assert scored["output_dir"] == str(out) and (out / "metrics.json").is_file() and (out / "per_slice.csv").is_file()
    assert scored["params"] == reference["params"] and scored["model"] == "D2C2" and scored["run"] == "run-onnx"
    assert scored["exported"]["format"] == "onnx" and scored["checkpoint"] == "best"
    for name in ("PSNR", "SSIM", "NMSE"):
        assert scored["metrics"][name]["mean"] == pytest.approx(reference["metrics"][name]["mean"], rel=1e-4)
    from sftkd_cli.report.compare import load_run_result

    assert load_run_result(out).params == reference["params"]  # `sftkd compare` reads it like a run
    with pytest.raises(SftkdError, match="do not apply"):
        evaluate_run(run_copy, device="cpu", exported=onnx_file, checkpoint="last")


def _trained_export(data: Path, runs: Path, name: str, *overrides: str) -> Path:
    """A run trained for one step on `data`, exported as TorchScript into its RUN/export; the file."""
    from sftkd_cli.training.supervised import train_supervised

    recipe = load_recipe(None, [f"data.path={data}", "model.channels=4", "train.epochs=1", "train.max_steps_per_epoch=1",
                                "train.device=cpu", "eval.latency_slices=1", f"run.dir={runs}", f"run.name={name}",
                                *overrides])
    run, _ = train_supervised(recipe, console=Console(file=io.StringIO()))
    return export_run(run.path, "torchscript").path


D2C2 = ("model.name=D2C2", "sft.teacher=D2C2", "sft.student=D2C2")


@pytest.fixture(scope="module")
def own_export(trained_run, tmp_path_factory) -> Path:
    """`trained_run` exported as TorchScript into a folder outside it (the run stays read-only)."""
    return export_run(trained_run, "torchscript", out=tmp_path_factory.mktemp("own") / "tiny.ts").path


@pytest.fixture(scope="module")
def centred_dataset(prepared_like_tiny, tmp_path_factory) -> Path:
    """The tiny dataset's volumes prepared with centred k-space (fftshift), acceleration 4."""
    return prepared_like_tiny(tmp_path_factory.mktemp("centred") / "data", mask_layout="centered")


@pytest.fixture(scope="module")
def sr_export(prepared_like_tiny, tmp_path_factory) -> Path:
    """A VDSR4 trained for super-resolution (scale 4) on the tiny dataset's volumes, exported."""
    base = tmp_path_factory.mktemp("sr")
    prepared_like_tiny(base / "data", task="sr")
    return _trained_export(base / "data", base / "runs", "sr", "model.name=VDSR4", "sft.teacher=VDSR4",
                           "sft.student=VDSR4", "data.task=sr")


@pytest.fixture(scope="module")
def complex_export(complex_dataset, tmp_path_factory) -> Path:
    """A D2C2 trained on complex data (2 channels, centred k-space), exported."""
    return _trained_export(complex_dataset, tmp_path_factory.mktemp("cx-runs"), "cx", *D2C2)


@pytest.fixture(scope="module")
def five_export(tiny_dataset, tmp_path_factory) -> Path:
    """A D2C2 trained at acceleration 5 on the tiny dataset, exported."""
    return _trained_export(tiny_dataset, tmp_path_factory.mktemp("five-runs"), "five", *D2C2, "data.acceleration=5")


def _files(*folders: Path) -> set[Path]:
    return {path for folder in folders for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def other_export(tiny_dataset, tmp_path_factory) -> Path:
    """Another D2C2 run trained like `trained_run` on the same data (other weights), exported."""
    return _trained_export(tiny_dataset, tmp_path_factory.mktemp("other-runs"), "other", *D2C2, "train.seed=7")


@pytest.fixture
def foreign_copy(run_copy, other_export) -> Path:
    """`other_export` and its card copied into `run_copy`'s export folder: inside RUN, not RUN's."""
    (run_copy / "export").mkdir(exist_ok=True)
    for source in (other_export, card_path(other_export)):
        shutil.copy2(source, run_copy / "export" / source.name)
    return run_copy / "export" / other_export.name


OTHER_RUN = ("exported from run {owner}, not {run}, so its scores would be filed as this run's; "
             "evaluate it with its own run: sftkd evaluate {owner} --exported {file}")


@pytest.mark.parametrize("run, data, export, expected", [
    ("own", "tiny_dataset", "complex_export", "its data consistency expects centered k-space but {data} stores corner"),
    ("own", "centred_dataset", "complex_export", "built for image values complex, but {data} holds image values magnitude"),
    ("own", "centred_dataset", "own_export", "its data consistency expects corner k-space but {data} stores centered"),
    # another run's export is refused as such first, not for the 5x it was trained at
    ("trained_run", None, "five_export", OTHER_RUN),
    ("run_copy", None, "other_export", OTHER_RUN),
    ("run_copy", None, "foreign_copy", OTHER_RUN),
], ids=["complex-on-magnitude", "complex-values", "corner-on-centred", "another-run-5x",
        "another-run", "another-run-copied-inside"])
def test_evaluate_refuses_an_exported_model_that_does_not_fit_as_a_checkpoint_is(request, run, data, export, expected):
    """What the card records is checked against the data as a checkpoint's entry is: one line, exit 2, nothing written."""
    file = request.getfixturevalue(export)
    owner = read_card(file)["run_path"]
    run_path = Path(owner) if run == "own" else request.getfixturevalue(run)
    data_path = request.getfixturevalue(data) if data else Path(load_recipe(run_path / "recipe.yaml").data.path)
    before = _files(run_path, file.parent)
    result = CliRunner().invoke(app, ["evaluate", str(run_path), "--device", "cpu", "--exported", str(file),
                                      *(["--data", str(data_path)] if data else [])])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    line = " ".join(result.stderr.split())  # rich may wrap the line
    assert f"{file}: " in line and expected.format(data=data_path, owner=owner, run=run_path, file=file) in line, line
    assert _files(run_path, file.parent) == before


@pytest.mark.parametrize("export, data, acceleration, expected", [
    ("sr_export", "tiny_dataset", 4, "built for task sr, but {data} holds task recon"),
    ("own_export", "sr_data", 4, "built for task recon, but {data} holds task sr"),
    ("own_export", "tiny_dataset", 5, "trained at acceleration 4x, but this evaluation scores acceleration 5x"),
], ids=["sr-on-recon", "recon-on-sr", "4x-at-5x"])
def test_the_card_is_checked_against_the_data_scored(request, export, data, acceleration, expected):
    """Checks that `evaluate RUN --exported` meets only for a run whose checkpoint passes its own
    (for one trained further since its export, say): the file its run's own, the data another."""
    from sftkd_cli.data.dataset import dataset_record
    from sftkd_cli.exported import check_card_fits

    file = request.getfixturevalue(export)
    card = read_card(file)
    data_path = request.getfixturevalue("sr_export").parents[3] / "data" if data == "sr_data" else request.getfixturevalue(data)
    with pytest.raises(SftkdError) as refused:
        check_card_fits(card, file, dataset_record(data_path, acceleration), Path(card["run_path"]))
    assert f"{file}: " in str(refused.value) and expected.format(data=data_path) in str(refused.value), refused.value


def test_an_export_inside_its_run_scores_after_the_run_moved(trained_run, tmp_path):
    """The card's run_path is where the run was; an export that lies in the run still belongs to it."""
    from sftkd_cli.evaluate import evaluate_run

    old = Path(shutil.copytree(trained_run, tmp_path / "old", ignore=shutil.ignore_patterns("export", ".lock")))
    file = export_run(old, "torchscript").path
    moved = old.rename(tmp_path / "moved")
    scored = evaluate_run(moved, device="cpu", write_recon=False, exported=moved / file.relative_to(old))
    assert scored["run"] == "moved-torchscript" and Path(scored["output_dir"]).parent == moved


def test_an_export_given_a_relative_run_path_is_its_runs_from_any_folder_and_after_a_move(run_copy, tmp_path, monkeypatch):
    """`sftkd export run --out /elsewhere/m.ts` typed in the run's parent: evaluated from another
    folder, and after the run moved (the file outside it), it is still the run's."""
    from sftkd_cli.evaluate import evaluate_run

    (tmp_path / "out").mkdir()
    monkeypatch.chdir(run_copy.parent)
    file = export_run(Path(run_copy.name), "torchscript", out=tmp_path / "out" / "m.ts").path.resolve()
    monkeypatch.chdir(tmp_path / "out")
    assert evaluate_run(run_copy, device="cpu", write_recon=False, exported=file)["run"] == "run-torchscript"
    moved = run_copy.rename(tmp_path / "moved")
    assert evaluate_run(moved, device="cpu", write_recon=False, exported=file)["run"] == "moved-torchscript"


def test_a_run_trained_further_or_a_card_of_an_earlier_sftkd_is_told_by_path_and_name(own_export, trained_run, tmp_path):
    """The exported checkpoint replaced since: the card's absolute run_path decides; a relative
    one (earlier sftkd) or a folder gone: the run's name. Another run still there is refused, its
    command suggested only while it exists."""
    from sftkd_cli.exported import _check_owner

    card = {**read_card(own_export), "checkpoint_sha256": "0" * 64}  # as after further training
    _check_owner(card, own_export, trained_run)
    _check_owner({**card, "run_path": trained_run.name}, own_export, trained_run)
    _check_owner({**card, "run_path": str(tmp_path / "gone" / trained_run.name)}, own_export, trained_run)
    with pytest.raises(SftkdError, match=f"that run is no longer at {tmp_path / 'gone' / 'x'}$"):
        _check_owner({**card, "run_path": str(tmp_path / "gone" / "x"), "run": "x"}, own_export, trained_run)
    with pytest.raises(SftkdError, match="recorded relative to where it was exported$"):
        _check_owner({**card, "run_path": "x", "run": "x"}, own_export, trained_run)
    with pytest.raises(SftkdError, match="evaluate it with its own run: sftkd evaluate"):
        _check_owner({**card, "run_path": str(tmp_path)}, own_export, trained_run.parent / "elsewhere" / trained_run.name)


def test_a_card_of_an_earlier_sftkd_is_checked_on_what_it_records():
    """Cards before `task` tell an SR model by its mask; a field they lack is taken from the data (not checked)."""
    from sftkd_cli.exported import card_acquisition, card_task

    have = Acquisition(task="recon", kspace_layout="centered", values="complex", channels=2, image_size=(40, 32))
    assert card_task({"task": "sr", "mask": {"kind": "random"}}) == "sr"
    assert card_task({"mask": {"kind": "sr-box"}}) == "sr" and card_task({"mask": {"kind": "random"}}) == "recon"
    assert card_task({"mask": {}}) is None and card_task({}) is None
    assert card_acquisition({"architecture": {"values": "complex", "image_channels": 2}}, have, "card") == have
    old = card_acquisition({"mask": {"kind": "sr-box"}, "kspace_layout": "corner", "architecture": {}}, have, "card")
    assert (old.task, old.kspace_layout, old.values, old.channels) == ("sr", "corner", "magnitude", 1)


def test_cli_export(trained_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    result = runner.invoke(app, ["export", str(trained_run), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "cli.onnx.card.json").is_file()
    assert "max |exported - PyTorch|" in result.output and "16x16 fixed" in result.output
    assert "inputs zf (batch,1,16,16), kspace (batch,2,16,16), mask (mask_batch,1,16,16) -> image" in result.output
    bad = runner.invoke(app, ["export", str(trained_run), "--format", "tflite"])
    assert bad.exit_code == 2 and "tflite" in bad.output
    missing = runner.invoke(app, ["export", str(tmp_path / "none"), "--format", "torchscript"])
    assert missing.exit_code == 2 and "none: no such run directory" in missing.output
    again = runner.invoke(app, ["export", str(trained_run), "--format", "onnx", "--out", str(out)])
    assert again.exit_code == 2 and "pass --force" in again.stderr
    assert runner.invoke(app, ["export", str(trained_run), "-f", "onnx", "-o", str(out), "--force"]).exit_code == 0


def test_cli_export_stopped_by_sigterm_writes_nothing(trained_run, tmp_path, monkeypatch):
    """SIGTERM is taken as Ctrl-C: the temporary file goes, one line, exit 143 (as shells report SIGTERM)."""
    write = export_module.write_torchscript

    def terminated(wrapper, example, tmp):
        write(wrapper, example, tmp)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    def not_taken(signum, frame):  # the test's own: were export not to take SIGTERM, this fails the test
        raise AssertionError("SIGTERM not handled by export")  # (instead of killing the test process)

    monkeypatch.setattr(export_module, "write_torchscript", terminated)
    previous = signal.signal(signal.SIGTERM, not_taken)
    try:
        out = tmp_path / "stopped" / "m.ts"
        result = CliRunner().invoke(app, ["export", str(trained_run), "-f", "torchscript", "-o", str(out)])
        assert signal.getsignal(signal.SIGTERM) is not_taken  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 143 and "export interrupted: nothing written" in result.stderr, result.output
    assert not out.parent.exists()  # nor the folder made for it


def test_a_mask_for_another_size_is_made_as_the_datasets_was():
    """fastMRI data: columns (axis 1), its centre fraction, centred layout."""
    from sftkd_cli.mri.masks import make_mask

    manifest = {"task": "recon", "mask": {"kind": "fastmri-random", "seed": 7, "layout": "centered", "axis": 1,
                                          "center_fraction": 0.08, "per_acceleration": {"acc4": {"file": "masks/acc4.npy"}}}}
    mask = export_module._check_mask((48, 40), 4.0, manifest)
    expected = make_mask("fastmri-random", (48, 40), 4.0, seed=7, center_fraction=0.08, layout="centered", axis=1)
    np.testing.assert_array_equal(mask, expected)
    assert export_module._mask_card(manifest, 4.0, mask, None)["axis"] == 1


def test_force_never_replaces_a_file_beside_a_card_that_is_not_its_export_card(run_copy):
    best = run_copy / "checkpoints" / "best.pt"
    kept = best.read_bytes()
    for stray in ("{}", json.dumps({"file": "other.ts", "export_format": "torchscript"}), "not json"):
        (run_copy / "checkpoints" / "best.pt.card.json").write_text(stray)
        with pytest.raises(SftkdError, match="is not an sftkd export"):
            export_run(run_copy, "torchscript", out=best, force=True)
    assert best.read_bytes() == kept


def test_the_default_checkpoint_is_the_recipes_eval_checkpoint_as_evaluate_scores_it(run_copy, tmp_path):
    """Export took best whatever eval.checkpoint said, so the card's scores (of `last`, evaluate's) came out null."""
    recipe = load_recipe(run_copy / "recipe.yaml")
    (run_copy / "recipe.yaml").write_text(dump_recipe(dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, checkpoint="last"))))
    assert export_run(run_copy, "torchscript", out=tmp_path / "a.ts").card["checkpoint"] == "last"
    assert export_run(run_copy, "torchscript", out=tmp_path / "b.ts", checkpoint="best").card["checkpoint"] == "best"
    help_text = " ".join(CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "300"}).output.split())
    assert "best: the epoch of lowest validation L1 of the run's primary model (an SFT run's teacher, so --model " \
           "student exports the student of that epoch); last: the last epoch. Default: the recipe's eval.checkpoint" in help_text


def test_force_never_replaces_a_users_file_put_where_an_export_was_beside_its_stale_card(run_copy, tmp_path):
    """The card beside it names the file, but the bytes are the user's (not the card's sha256): kept."""
    out = tmp_path / "foo.ts"
    export_run(run_copy, "torchscript", out=out)
    out.write_text("my own precious model")
    with pytest.raises(SftkdError, match=r"foo.ts: exists and is not an sftkd export \(its model card foo.ts.card.json "
                                         r"records another sha256 \(the file was replaced since\)\)"):
        export_run(run_copy, "torchscript", out=out, force=True)
    assert out.read_text() == "my own precious model"
    (tmp_path / "foo.ts.card.json").unlink()
    with pytest.raises(SftkdError, match=r"foo.ts: exists and is not an sftkd export \(no model card foo.ts.card.json for it"):
        export_run(run_copy, "torchscript", out=out, force=True)


def test_a_super_resolution_card_records_the_box_as_the_manifest_does():
    from sftkd_cli.data.prepare import sr_box_mask

    box = sr_box_mask((16, 12), 4.0, "corner")
    card = export_module._mask_card({"task": "sr", "mask": {"kind": "sr-box", "axis": 0}}, 4.0, box, None)
    assert card["box"] == [4, 3] and (card["axis"], card["lines"]) == (0, 4) and card["sampled_lines"] is None
    # the box's rows and columns give the mask back (whole rows would sample far more: the card said rows only)
    rebuilt = np.zeros(box.shape)
    rebuilt[np.ix_(card["box_rows"], card["box_columns"])] = 1
    assert np.array_equal(rebuilt != 0, box != 0)


@pytest.mark.parametrize("case", ["not writable", "a directory", "not an export"])
@pytest.mark.parametrize("given", [False, True])
def test_export_target_errors_say_out_only_when_it_was_given(tmp_path, monkeypatch, case, given):
    """Without --out the run's own export folder is named, never '--out' the user did not write."""
    monkeypatch.chdir(tmp_path)
    run = Path("runs/t7")
    target = Path("mine/m.onnx") if given else target_module.default_out(run, "D2C2", "teacher", "onnx")
    target.parent.mkdir(parents=True)
    if case == "a directory":
        target.mkdir()
    elif case == "not an export":
        target.write_text("mine")
    else:
        monkeypatch.setattr("sftkd_cli.files.os.access", lambda *args, **kwargs: False)
    out = target if given else None
    with pytest.raises(SftkdError) as info:
        target_module.replaceable(target_module.export_target(out, run, "D2C2", "teacher", "onnx"), out, force=False)
    message = str(info.value)
    expected = {"not writable": f"export folder {target.parent}: folder {target.parent} is not writable",
                "a directory": f"{target}: is a directory; expected a file name",
                "not an export": f"{target.resolve() if given else target}: exists and is not an sftkd export"}[case]
    if given:
        expected = f"--out {expected.removeprefix('export folder ')}"
    assert message.startswith(expected), message
    assert ("--out" in message) == given


@pytest.mark.parametrize("size", [(0, 0), (16, 5000), (1, 1), (3, 16)])
def test_an_export_size_out_of_range_is_shown_as_typed(size):
    """'--size 0 0', as the command line reads, not a Python tuple '(0, 0)'."""
    with pytest.raises(SftkdError) as info:
        export_module.resolve_size(size, None, "data")
    assert str(info.value) == f"--size {size[0]} {size[1]}: expected two integers H W, each from 4 to 4096"


def test_an_out_name_ending_in_the_other_formats_suffix_is_refused(trained_run, tmp_path):
    """An ONNX file named .ts would fail later in torch.jit.load: the other format's suffix is
    refused before anything is written (another name, such as TorchScript's common .pt, is kept)."""
    for fmt, name, other, suffix in (("onnx", "m.ts", "torchscript", ".onnx"), ("torchscript", "m.onnx", "onnx", ".ts"),
                                     ("torchscript", "up.ONNX", "onnx", ".ts"), ("onnx", "m.Ts", "torchscript", ".onnx")):
        out = tmp_path / "out" / name
        result = CliRunner().invoke(app, ["export", str(trained_run), "-f", fmt, "-o", str(out)])
        message = f"--out {out}: {out.suffix} names a {other} export; a {fmt} export's name ends in {suffix}"
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert not (tmp_path / "out").exists()
    assert CliRunner().invoke(app, ["export", str(trained_run), "-f", "torchscript", "-o", str(tmp_path / "m.pt")]).exit_code == 0
