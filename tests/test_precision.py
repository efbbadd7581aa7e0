"""The precision policy: train.tf32, evaluation in full fp32, data consistency in fp32 under autocast.

Device: the CPU (TF32's flags exist and are settable on CPU builds too; bf16 autocast runs on
every CPU), except the `cuda`-marked test (a CUDA GPU: fp16 and bf16 autocast there).
"""

from __future__ import annotations

import pytest
import torch

from cli_helpers import sftkd
from sftkd_cli import evaluate as evaluate_module
from sftkd_cli.config import load_recipe
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import build_model
from sftkd_cli.mri import dc as dc_module
from sftkd_cli.mri.dc import complex_data_consistency, data_consistency
from sftkd_cli.mri.fft import fft2
from sftkd_cli.runtime import precision_policy, set_tf32_settings, tf32_settings, tf32_settings_for
from sftkd_cli.training import engine

torch.set_num_threads(1)


def _flags() -> tuple[object, object]:
    """cuBLAS's and cuDNN's TF32 settings, in this torch's API (compare with `_on`)."""
    return tf32_settings()


def _on(matmul: bool, cudnn: bool) -> tuple[object, object]:
    """The settings that mean TF32 on (True) or off for matmuls and convolutions."""
    return tf32_settings_for(matmul, cudnn)


def _set_flags(matmul: bool, cudnn: bool) -> None:
    set_tf32_settings(_on(matmul, cudnn))


@pytest.fixture
def flags():
    """The TF32 flags set to (matmul False, cuDNN True), torch's defaults; the caller's put back after
    the test (monkeypatch cannot: torch's backend modules answer these names through __getattr__)."""
    before = _flags()
    _set_flags(False, True)
    yield
    set_tf32_settings(before)


# ---------------------------------------------------------------------------- train.tf32


def test_train_tf32_is_a_bool_off_by_default():
    assert load_recipe(None).train.tf32 is False
    assert load_recipe(None, ["train.tf32=true"]).train.tf32 is True


@pytest.mark.parametrize("value", ["maybe", "1", "[true]"])
def test_train_tf32_refuses_what_is_not_a_bool(value):
    with pytest.raises(SftkdError, match=r"override train\.tf32=.*: train\.tf32: expected true or false"):
        load_recipe(None, [f"train.tf32={value}"])


@pytest.mark.parametrize("tf32", [True, False])
def test_precision_policy_sets_both_flags_and_restores_them(flags, tf32):
    with precision_policy(tf32):
        assert _flags() == _on(tf32, tf32)
    assert _flags() == _on(False, True)
    with pytest.raises(RuntimeError, match="boom"), precision_policy(tf32):
        raise RuntimeError("boom")
    assert _flags() == _on(False, True)  # also after an error in the block


@pytest.mark.skipif(not hasattr(torch.backends, "fp32_precision"), reason="torch < 2.9 has only allow_tf32")
def test_precision_policy_keeps_to_the_fp32_precision_api_a_caller_used(flags):
    """CPU, torch 2.9+: reading the legacy allow_tf32 flags after anything set the newer
    fp32_precision settings raises in torch; the policy reads and restores the newer ones."""
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    with precision_policy(False):
        assert torch.backends.cuda.matmul.fp32_precision == "ieee" == torch.backends.cudnn.conv.fp32_precision
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


def _flags_seen_by(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[tuple[bool, bool]]:
    """The TF32 flags at each call of `module.name` (wrapped for the test), in a list that fills as it is called."""
    seen: list[tuple[bool, bool]] = []
    real = getattr(module, name)

    def recording(*args, **kwargs):
        seen.append(_flags())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return seen


def test_training_runs_under_train_tf32_and_restores_the_flags(flags, tiny_dataset, tmp_path, monkeypatch):
    seen = _flags_seen_by(monkeypatch, engine, "validate")
    for tf32 in ("true", "false"):
        sftkd("train-teacher", "--model", "D2C2", "--name", f"tf32-{tf32}", f"data.path={tiny_dataset}",
              f"run.dir={tmp_path}", "train.epochs=1", "train.max_steps_per_epoch=1", "data.max_val_slices=1",
              "train.threads=1", "train.device=cpu", f"train.tf32={tf32}")
        assert _flags() == _on(False, True)
    assert seen == [_on(True, True), _on(False, False)]


def test_evaluate_runs_without_tf32_whatever_the_caller_set(flags, tiny_dataset, tmp_path, monkeypatch):
    sftkd("train-teacher", "--model", "D2C2", "--name", "r", f"data.path={tiny_dataset}", f"run.dir={tmp_path}",
          "train.epochs=1", "train.max_steps_per_epoch=1", "train.threads=1", "train.device=cpu",
          "train.tf32=true", "eval.latency_slices=0")
    _set_flags(True, True)
    seen = _flags_seen_by(monkeypatch, evaluate_module, "reconstruct_split")
    evaluate_module.evaluate_run(tmp_path / "r", device="cpu", write_recon=False)
    assert seen == [_on(False, False)] and _flags() == _on(True, True)


@pytest.mark.cuda
def test_evaluate_on_cuda_scores_like_the_cpu(tiny_dataset, tmp_path):
    """Device: a CUDA GPU and the CPU score one checkpoint. With cuDNN's default TF32 they read
    ~2e-4 dB apart (22.58026 vs 22.58003 dB, measured on an H200); in full fp32 only the
    kernels' summation order differs, which moves a PSNR by far less than 5e-5 dB."""
    sftkd("train-teacher", "--model", "D2C2", "--name", "r", f"data.path={tiny_dataset}", f"run.dir={tmp_path}",
          "train.epochs=1", "train.max_steps_per_epoch=2", "train.device=cpu", "eval.latency_slices=0")
    scores = {device: evaluate_module.evaluate_run(tmp_path / "r", device=device, write_recon=False)["metrics"]
              for device in ("cpu", "cuda")}
    assert scores["cuda"]["PSNR"]["mean"] == pytest.approx(scores["cpu"]["PSNR"]["mean"], abs=5e-5)
    assert scores["cuda"]["SSIM"]["mean"] == pytest.approx(scores["cpu"]["SSIM"]["mean"], abs=1e-6)


# -------------------------------------------------------------- data consistency in fp32


def _case(channels: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bf16 network output (B,C,11,8), measured complex64 k-space and a row mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, 11, 8, generator=g).to(torch.bfloat16)
    target = torch.randn(2, 1, 11, 8, generator=g) + 1j * torch.randn(2, 1, 11, 8, generator=g)
    mask = (torch.rand(1, 1, 11, 1, generator=g) < 0.4).float().expand(1, 1, 11, 8)
    return x, (fft2(target.to(torch.complex64)) * mask).to(torch.complex64), mask


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("channels, layer", [(1, data_consistency), (2, complex_data_consistency)],
                         ids=["magnitude", "complex"])
def test_data_consistency_under_bf16_autocast_is_the_fp32_one(channels, layer, centered):
    x, kspace, mask = _case(channels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, kspace, mask, centered)
    reference = layer(x.float(), kspace, mask, centered)  # the same (bf16-rounded) input, no autocast
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)


def test_the_ffts_run_with_autocast_off_on_float32(monkeypatch):
    seen: list[tuple[bool, torch.dtype]] = []

    def recording(x: torch.Tensor, centered: bool = False) -> torch.Tensor:
        seen.append((torch.is_autocast_enabled("cpu"), x.dtype))
        return fft2(x, centered)

    monkeypatch.setattr(dc_module, "fft2", recording)
    for channels, layer in ((1, data_consistency), (2, complex_data_consistency)):
        x, kspace, mask = _case(channels, seed=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x, kspace, mask)
            assert torch.is_autocast_enabled("cpu")  # switched back on after the layer
    assert seen == [(False, torch.float32), (False, torch.complex64)]


@pytest.mark.parametrize("name, channels", [("D2C2", 1), ("D2C2", 2)])
def test_a_cascade_under_bf16_autocast_returns_float32_images(name, channels):
    from sftkd_cli.acquisition import Acquisition

    values = "complex" if channels == 2 else "magnitude"
    model = build_model(name, acquisition=Acquisition(values=values, channels=channels)).eval()
    x, kspace, mask = _case(channels, seed=2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.float(), kspace, mask)
    assert out.dtype == torch.float32 and out.shape == x.shape


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_data_consistency_under_cuda_autocast_is_the_fp32_one(dtype):
    """Device: a CUDA GPU; fp16 and bf16 autocast there, the FFTs still in complex64."""
    for channels, layer in ((1, data_consistency), (2, complex_data_consistency)):
        x, kspace, mask = (t.cuda() for t in _case(channels, seed=3))
        x = x.to(dtype)
        with torch.autocast("cuda", dtype=dtype):
            out = layer(x, kspace, mask, True)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, layer(x.float(), kspace, mask, True), rtol=0, atol=1e-6)
