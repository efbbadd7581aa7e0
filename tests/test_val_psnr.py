"""One PSNR per checkpoint: the training log's validation PSNR/SSIM are `evaluate`'s (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import sftkd
from sftkd_cli.runs import load_checkpoint

torch.set_num_threads(1)


def test_history_val_psnr_of_the_best_epoch_equals_evaluate_on_the_same_split(tmp_path, nifti_writer):
    raw = tmp_path / "raw"
    for i in range(4):
        volume = nifti_writer.phantom((28, 24, 3), seed=i)
        volume[0, 0, :] = 4 * volume.max()  # a bright corner the 16x16 crop drops: stored maximum ~0.3, not 1
        nifti_writer.write(raw / f"vol{i}.nii.gz", volume)
    data, runs = tmp_path / "data", tmp_path / "runs"
    sftkd("prepare-data", "nifti", raw, "--out", data, "--size", "16", "16", "--val", "vol1", "--test", "vol3",
          "--acc", "4")
    sftkd("train-teacher", "--model", "D2C2", "--name", "r", f"data.path={data}", f"run.dir={runs}",
          "train.epochs=2", "train.batch_size=2", "train.threads=1", "train.device=cpu", "eval.latency_slices=1")
    sftkd("evaluate", runs / "r", "--split", "val", "--checkpoint", "best", "--device", "cpu", "--no-recon")

    best = load_checkpoint(runs / "r" / "checkpoints" / "best.pt")["epoch"]
    row = [json.loads(line) for line in (runs / "r" / "history.jsonl").read_text().splitlines()][best - 1]
    metrics = json.loads((runs / "r" / "metrics.json").read_text())
    assert metrics["checkpoint"] == "best" and metrics["dataset"]["split"] == "val"
    # equal up to float rounding (evaluate batches and lays out the slices differently)
    assert row["val_psnr"] == pytest.approx(metrics["metrics"]["PSNR"]["mean"], abs=1e-3)
    assert row["val_ssim"] == pytest.approx(metrics["metrics"]["SSIM"]["mean"], abs=1e-5)
