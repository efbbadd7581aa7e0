"""Complex-valued networks (issue 16, item 2): DnCm and DC-UNet built for complex data take and
return two channels (real, imaginary) and their data consistency keeps the complex result, so
every sampled k-space value is the measured one; the teacher, SFT, every KD method and export
work on them. Tiny sizes; numpy is the oracle of the data consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmri_files import fft2c, ifft2c
from sftkd_cli.acquisition import Acquisition
from sftkd_cli.bench.measure import synthetic_batch
from sftkd_cli.checkpoints import build_from_entry
from sftkd_cli.distill.catalog import default_taps
from sftkd_cli.distill.methods import METHODS, build_method
from sftkd_cli.export import exportable, max_difference, phantom_inputs, write_onnx, write_torchscript
from sftkd_cli.exported import load_exported, split_complex
from sftkd_cli.models import build_model, count_parameters
from sftkd_cli.mri.dc import DataConsistency, complex_data_consistency, data_consistency
from sftkd_cli.mri.masks import make_mask
from sftkd_cli.training.kd import Distillation
from sftkd_cli.training.objectives import Supervised, model_record
from sftkd_cli.training.sft import StudentFriendly

COMPLEX = Acquisition(task="recon", kspace_layout="centered", values="complex", channels=2, image_size=(12, 10))



def _problem(seed: int = 0, shape: tuple[int, int] = (12, 10)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x (2,2,H,W) real/imag, k0 (2,1,H,W) measured k-space, mask (2,1,H,W), a different one per sample)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, *shape)).astype(np.float32)
    mask = (rng.random((2, 1, 1, shape[1])) < 0.4).astype(np.float32) * np.ones((2, 1, *shape), np.float32)
    k0 = (mask * (rng.standard_normal((2, 1, *shape)) + 1j * rng.standard_normal((2, 1, *shape)))).astype(np.complex64)
    return x, k0, mask


def _complex_of(x: np.ndarray) -> np.ndarray:
    return x[:, 0:1].astype(np.float64) + 1j * x[:, 1:2].astype(np.float64)


# ----------------------------------------------------------------------------- data consistency


def test_complex_dc_against_numpy_keeps_every_sampled_value():
    x, k0, mask = _problem()
    out = complex_data_consistency(torch.from_numpy(x), torch.from_numpy(k0), torch.from_numpy(mask), centered=True)
    assert out.shape == (2, 2, 12, 10) and out.dtype == torch.float32
    k = fft2c(_complex_of(x))
    expected = ifft2c((1 - mask) * k + mask * k0)  # float64 numpy twin: k_dc = (1 - m) k + m k0
    got = _complex_of(out.numpy())
    assert np.max(np.abs(got - expected)) < 1e-5
    k_out = fft2c(got)
    sampled = mask.astype(bool)
    assert sampled.any() and (~sampled).any()
    assert np.max(np.abs(k_out[sampled] - k0[sampled])) < 1e-5  # every sampled location is the measured value
    assert np.max(np.abs(k_out[~sampled] - k[~sampled])) < 1e-5  # the rest is the network's
    assert np.abs(expected.imag).max() > 0.1 and np.max(np.abs(out.numpy()[:, 1] - expected.imag[:, 0])) < 1e-5


def test_complex_dc_in_corner_layout_and_the_module_forms():
    x, k0, mask = _problem(1)
    k = np.fft.fft2(_complex_of(x), norm="ortho")
    expected = np.fft.ifft2((1 - mask) * k + mask * k0, norm="ortho")
    t = (torch.from_numpy(x), torch.from_numpy(k0), torch.from_numpy(mask))
    got = _complex_of(DataConsistency(centered=False, complex_values=True)(*t).numpy())
    assert np.max(np.abs(got - expected)) < 1e-5
    magnitude = torch.from_numpy(x[:, :1])  # the paper's real DC is the module's default, bit for bit
    assert torch.equal(DataConsistency(True)(magnitude, *t[1:]), data_consistency(magnitude, *t[1:], centered=True))


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("name, first, last", [("D3C2", "convs.0", "convs.2"), ("U2C2", "enc1", "out")])
def test_complex_models_have_two_channels_in_and_out_and_only_the_end_convs_change(name, first, last):
    magnitude, complex_model = build_model(name, 8), build_model(name, 8, acquisition=COMPLEX)
    shapes = {k: v.shape for k, v in magnitude.state_dict().items()}
    changed = {k for k, v in complex_model.state_dict().items() if v.shape != shapes[k]}
    assert set(shapes) == set(complex_model.state_dict())
    assert changed == {f"blocks.{b}.{conv}.{p}" for b in range(2) for conv in (first, last) for p in ("weight", "bias")} - {
        f"blocks.{b}.{first}.bias" for b in range(2)}  # the first conv's bias has C entries either way
    assert complex_model.dc.complex_values and complex_model.dc.centered and not magnitude.dc.complex_values
    x, k0, mask = _problem(2)
    out, feats = complex_model(torch.from_numpy(x), torch.from_numpy(k0), torch.from_numpy(mask),
                               taps=complex_model.tap_names())
    assert out.shape == (2, 2, 12, 10)
    output_tap = complex_model.default_tap(2, "output")
    assert complex_model.tap_channels(f"c2.{output_tap}") == 2 and feats[f"c2.{output_tap}"].shape[1] == 2
    hidden = complex_model.default_tap(2, "last_hidden")
    assert complex_model.tap_channels(f"c2.{hidden}") == magnitude.tap_channels(f"c2.{hidden}")
    k_out = fft2c(_complex_of(out.detach().numpy()))  # the network's output passed the complex DC last
    assert np.max(np.abs(k_out[mask.astype(bool)] - k0[mask.astype(bool)])) < 1e-5


def test_parameter_counts_named_in_bench_help():
    from sftkd_cli.choices import COMPLEX_PARAMS_TEXT, PARAMS
    from sftkd_cli.cli.bench import HELP

    for name, counts in PARAMS.items():
        assert count_parameters(build_model(name)) == counts["magnitude"]
        assert count_parameters(build_model(name, acquisition=COMPLEX)) == counts["complex"]
    assert "D5C5 on complex data: 144,650 params" in COMPLEX_PARAMS_TEXT and COMPLEX_PARAMS_TEXT in HELP


def test_a_complex_checkpoint_entry_rebuilds_the_same_network():
    torch.manual_seed(0)
    model = build_model("D2C2", 8, acquisition=COMPLEX)
    rebuilt = build_from_entry(model_record(model), "complex.pt")
    assert rebuilt.acquisition == COMPLEX and rebuilt.dc.complex_values
    x, k0, mask = (torch.from_numpy(a) for a in _problem(3))
    assert torch.equal(rebuilt(x, k0, mask), model(x, k0, mask))


# ----------------------------------------------------------------------------- training objectives


def _batch() -> dict[str, torch.Tensor]:
    batch = synthetic_batch(12, 2, torch.device("cpu"), complex_data=True)
    assert batch["zf"].shape == batch["target"].shape == (2, 2, 12, 12) and batch["kspace"].shape == (2, 1, 12, 12)
    return batch


def _backward_is_finite(objective: torch.nn.Module, batch: dict[str, torch.Tensor], trained: torch.nn.Module) -> None:
    loss, parts = objective(batch)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    grads = [p.grad for p in trained.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_teacher_and_sft_objectives_on_complex_models():
    torch.manual_seed(0)
    batch = _batch()
    acquisition = Acquisition(kspace_layout="centered", values="complex", channels=2)
    teacher = build_model("D3C3", 8, acquisition=acquisition)
    _backward_is_finite(Supervised(teacher), batch, teacher)
    teacher.zero_grad()
    student = build_model("D2C3", 8, acquisition=acquisition)
    for batched in (True, False):
        sft = StudentFriendly(teacher, student, batched=batched)
        assert sft.branches([torch.zeros(2, 2, 12, 12)] * 3, batch["kspace"], batch["mask"]).shape == (2, 2, 2, 12, 12)
        _backward_is_finite(sft, batch, teacher)
        teacher.zero_grad(), student.zero_grad()


@pytest.mark.parametrize("method", METHODS)
def test_every_kd_method_distils_between_complex_models(method):
    torch.manual_seed(0)
    batch = _batch()
    acquisition = Acquisition(kspace_layout="centered", values="complex", channels=2)
    teacher, student = build_model("D3C2", 8, acquisition=acquisition), build_model("D2C2", 4, acquisition=acquisition)
    s_taps, t_taps = default_taps(method, student, teacher)
    kd = build_method(method, [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps])
    objective = Distillation(student, teacher, kd, s_taps, t_taps, w_imit=1.0 if method == "none" else 0.0)
    _backward_is_finite(objective, batch, student)
    assert all(p.grad is None for p in teacher.parameters())  # the frozen teacher gets nothing


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", ["D2C2", "U2C1"])
def test_complex_models_export_with_two_channel_images(fmt, name, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model(name, 4, acquisition=COMPLEX).eval()
    inputs = phantom_inputs((12, 10), make_mask("random", (12, 10), 4.0, layout="centered"), complex_centered=True)
    assert inputs.zf.shape == (3, 2, 12, 10)
    wrapper = exportable(model, (12, 10), fixed=fmt == "onnx").eval()
    path = tmp_path / f"m.{fmt}"
    with torch.no_grad():
        (write_onnx if fmt == "onnx" else write_torchscript)(wrapper, (inputs.zf[:2], split_complex(inputs.kspace[:2]), inputs.mask[:2]), path)
    exported = load_exported(path)
    assert exported(inputs.zf, inputs.kspace, inputs.mask).shape == (3, 2, 12, 10)
    assert max_difference(exported, model, inputs) < 1e-5
