"""`sftkd evaluate --amp bf16`: mixed-precision scoring beside the full-precision scores (on the CPU:
the fp16 refusal and the bf16-vs-fp32 closeness are CPU statements)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sftkd_cli.cli.app import app

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = runner.invoke(app, ["train-teacher", "--model", "D2C2", "--name", "t", f"data.path={tiny_dataset}",
                                 f"run.dir={runs}", "train.epochs=1", "train.threads=1", "train.device=cpu",
                                 "eval.latency_slices=1"])
    assert result.exit_code == 0, result.output
    return runs / "t"


def test_bf16_scores_go_beside_the_fp32_scores(run):
    assert runner.invoke(app, ["evaluate", str(run), "--device", "cpu"]).exit_code == 0
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--amp", "bf16"])
    assert result.exit_code == 0, result.output
    full = json.loads((run / "metrics.json").read_text())
    half = json.loads((run / "eval-amp-bf16" / "metrics.json").read_text())
    assert full["amp"] == "off" and half["amp"] == "bf16"
    # bf16 keeps 8 bits of mantissa: close to, but not exactly, the fp32 reconstruction
    assert half["metrics"]["PSNR"]["mean"] == pytest.approx(full["metrics"]["PSNR"]["mean"], abs=1.0)
    assert half["metrics"]["PSNR"]["mean"] != full["metrics"]["PSNR"]["mean"]
    assert half["zero_filled"] == full["zero_filled"]  # the input is not touched by autocast


@pytest.mark.parametrize("amp, word", [("fp16", "only on CUDA"), ("fp8", "expected off, bf16 or fp16")])
def test_bad_amp_is_one_line(run, amp, word):
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--amp", amp])
    assert result.exit_code == 2 and word in result.output and "Traceback" not in result.output
    assert not (run / f"eval-amp-{amp}").exists()
