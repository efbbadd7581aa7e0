"""The workflow on complex data (issue 16) through the CLI: `prepare-data fastmri` -> teacher,
SFT and KD on complex networks -> evaluate (paper and fastmri conventions) -> compare ->
export (TorchScript, ONNX) -> evaluate --exported; and `bench --complex`. Tiny sizes, CPU."""

from __future__ import annotations

import json

import complex_data
import h5py
import pytest
import torch

from cli_helpers import sftkd
from sftkd_cli.runs import load_checkpoint

complex_dataset = complex_data.complex_dataset  # the fixtures, by name
complex_teacher = complex_data.complex_teacher
complex_runs = complex_data.complex_runs

torch.set_num_threads(1)


def _history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_a_complex_teacher_trains_and_validation_psnr_rises(complex_teacher):
    _, runs = complex_teacher
    history = _history(runs / "teacher")
    psnrs = [row["val_psnr"] for row in history]
    assert len(psnrs) == 6 and psnrs[-1] > psnrs[0] + 1.0, psnrs  # measured: 19.91 -> 21.90 dB
    entry = load_checkpoint(runs / "teacher" / "checkpoints" / "best.pt")["models"]["model"]
    assert entry["acquisition"]["values"] == "complex" and entry["acquisition"]["channels"] == 2
    assert entry["state"]["blocks.0.convs.0.weight"].shape[1] == 2 and entry["state"]["blocks.0.convs.2.weight"].shape[0] == 2


def test_the_start_line_gives_parameters_and_the_complex_images(complex_dataset, tmp_path):
    result = sftkd("train-teacher", "--model", "D2C2", "--name", "r", f"data.path={complex_dataset}",
                   f"run.dir={tmp_path}", *complex_data.BASE, "train.epochs=1", "train.max_steps_per_epoch=1",
                   "data.max_val_slices=1")
    start = next(line for line in result.output.splitlines() if line.startswith("run "))
    assert "D2C2 (596 params, complex two-channel)" in start, start


def test_sft_and_kd_runs_on_complex_models(complex_runs):
    _, runs = complex_runs
    sft = load_checkpoint(runs / "sft" / "checkpoints" / "best.pt")
    assert {name: entry["acquisition"]["values"] for name, entry in sft["models"].items()} == {"teacher": "complex", "student": "complex"}
    kd = load_checkpoint(runs / "kd" / "checkpoints" / "best.pt")
    assert kd["method"] == "at" and kd["teacher_role"] == "sft-teacher"
    assert kd["models"]["model"]["acquisition"]["channels"] == 2
    assert all(row["val_psnr"] > 0 for row in _history(runs / "kd"))


def test_evaluate_scores_complex_runs_on_magnitudes(complex_teacher):
    _, runs = complex_teacher
    metrics = json.loads((runs / "teacher" / "metrics.json").read_text())
    assert "convention" not in metrics and "magnitudes" in metrics["conventions"]["images"]
    assert metrics["params"] == 4_410 and metrics["dataset"]["image_size"] == [40, 32]
    best = next(row for row in _history(runs / "teacher") if row["epoch"] == metrics["epoch"])
    assert metrics["metrics"]["PSNR"]["mean"] == pytest.approx(best["val_psnr"], abs=1e-6)  # the log's val PSNR
    assert metrics["metrics"]["PSNR"]["mean"] > metrics["zero_filled"]["PSNR"]["mean"]
    with h5py.File(runs / "teacher" / "recon.h5", "r") as recon:
        assert {v.shape for v in recon.values()} == {(4, 40, 32)}  # magnitude images at the stored size
        assert min(float(v[()].min()) for v in recon.values()) >= 0


def test_compare_in_the_fastmri_convention(complex_runs):
    _, runs = complex_runs
    missing = sftkd("compare", runs / "teacher", runs / "kd", "--convention", "fastmri", "--strict", ok=False)
    assert "kd" in missing.output and "--convention fastmri" in missing.output
    sftkd("evaluate", runs / "kd", "--device", "cpu", "--convention", "fastmri", "--no-recon")
    table = sftkd("compare", runs / "teacher", runs / "kd", "--convention", "fastmri", "--baseline", "kd")
    assert "over volumes (fastMRI convention)" in " ".join(table.output.split())
    data = json.loads(sftkd("compare", runs / "teacher", runs / "kd", "--convention", "fastmri", "--format", "json").output)
    assert data["metrics"] == ["NMSE", "PSNR", "SSIM"] and data["convention"] == "fastmri"
    assert data["test"].endswith("over volumes paired by name")
    teacher = json.loads((runs / "teacher" / "eval-fastmri" / "metrics.json").read_text())
    row = next(r for r in data["rows"] if r["run"] == "teacher")
    assert row["metrics"]["NMSE"]["mean"] == teacher["metrics"]["NMSE"]["mean"]
    paper = json.loads(sftkd("compare", runs / "teacher", "--format", "json").output)
    assert "convention" not in paper and "HFN" in paper["metrics"]  # the default stays the paper's
    wrong = sftkd("compare", runs / "teacher" / "eval-fastmri", ok=False)
    assert "scored in the fastmri convention" in wrong.output


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_and_evaluate_a_complex_model(complex_teacher, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    data, runs = complex_teacher
    out = tmp_path / f"teacher.{fmt}"
    sftkd("export", runs / "teacher", "--format", fmt, "--out", out)
    card = json.loads((tmp_path / f"teacher.{fmt}.card.json").read_text())
    assert card["inputs"][0]["shape"][1] == 2 and card["outputs"][0]["shape"][1] == 2
    assert card["kspace_layout"] == "centered" and card["architecture"]["values"] == "complex"
    assert card["check"]["max_abs_diff"] <= 1e-4 and "dataset" in card["check"]["inputs"]
    assert card["dataset"]["target_size"] == json.loads((data / "manifest.json").read_text())["target_size"]
    sftkd("evaluate", runs / "teacher", "--exported", out, "--device", "cpu", "--no-recon", "--convention", "fastmri")
    scored = json.loads((runs / "teacher" / f"eval-teacher-{fmt}" / "eval-fastmri" / "metrics.json").read_text())
    reference = json.loads((runs / "teacher" / "eval-fastmri" / "metrics.json").read_text())
    assert scored["metrics"]["PSNR"]["mean"] == pytest.approx(reference["metrics"]["PSNR"]["mean"], abs=1e-3)


def test_bench_complex_rows():
    from sftkd_cli.bench import run_bench

    result = run_bench(size=12, batch=1, threads=1, device="cpu", repeats=1, warmup=0, which=["teacher", "kd", "infer"],
                       methods=["at"], roof_size=8, roof_batch=1, complex_data=True)
    assert result.settings["complex"] is True
    assert {"train.teacher", "train.kd.at", "infer.D3C5.eager.b1", "infer.D5C5.torchscript.b1"} <= {row.key for row in result.rows}
    assert any(note.startswith("complex data") for note in result.notes)
    assert "complex" not in run_bench(size=12, batch=1, threads=1, device="cpu", repeats=1, warmup=0, which=["student"],
                                      roof_size=8, roof_batch=1).settings
