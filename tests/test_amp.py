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


@pytest.mark.parametrize("native", [True, False], ids=["avx512-bf16", "emulated"])
def test_bf16_on_a_cpu_that_emulates_it_says_so(run, tiny_dataset, tmp_path, monkeypatch, native):
    """Device: CPU (its bf16 support stood in for). Without AVX512-BF16 bf16 runs several times
    slower than fp32: training and evaluate say so in one line, and only then."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    trained = runner.invoke(app, ["train-teacher", "--model", "D2C2", "--name", "b", f"data.path={tiny_dataset}",
                                  f"run.dir={tmp_path}", "train.epochs=1", "train.max_steps_per_epoch=1",
                                  "train.threads=1", "train.device=cpu", "train.amp=bf16"])
    scored = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--amp", "bf16"])
    assert trained.exit_code == 0 and scored.exit_code == 0, trained.output + scored.output
    for result, option in ((trained, "train.amp"), (scored, "--amp")):
        warned = [line for line in result.output.splitlines() if line.startswith("warning: ")]
        assert warned == ([] if native else [f"warning: {option} bf16: this CPU has no AVX512-BF16, so bf16 is "
                                             "emulated, several times slower than fp32 (7-10x on a D5C5 training "
                                             "step); off is faster here"])


def test_evaluate_run_warns_on_the_console_it_is_given(run, monkeypatch, capsys):
    """From Python the bf16 warning went to stderr by print, past the caller's console."""
    import io

    from rich.console import Console

    from sftkd_cli.evaluate import evaluate_run

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    console = Console(file=io.StringIO())
    evaluate_run(run, device="cpu", amp="bf16", write_recon=False, console=console)
    assert console.file.getvalue().startswith("warning: --amp bf16: this CPU has no AVX512-BF16")
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("capability, warned", [((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_bf16_on_a_gpu_before_ampere_says_it_is_emulated(monkeypatch, capability, warned):
    """Device: none needed (the GPU's compute capability stood in for). A T4 (7.5) or V100 (7.0)
    has no bf16 tensor cores, so torch emulates bf16 there: training and evaluate say so, as on a
    CPU without AVX512-BF16; Ampere (8.0) and later have them."""
    from sftkd_cli.runtime import amp_warning

    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    line = amp_warning("bf16", torch.device("cuda"), "--amp")
    assert line == (f"warning: --amp bf16: this GPU (compute capability {capability[0]}.{capability[1]}) has no bf16 "
                    "tensor cores, so bf16 is emulated; fp16 or off is likely faster here (not measured)"
                    if warned else None)
    assert amp_warning("fp16", torch.device("cuda")) is None and amp_warning("off", torch.device("cuda")) is None
