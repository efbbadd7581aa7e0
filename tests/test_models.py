"""DC-CNN models: parameter counts from the paper, taps, data consistency inside the network."""

import numpy as np
import pytest
import torch

from sftkd_cli.errors import SftkdError
from sftkd_cli.models import DCCNN, build_model, count_parameters, parse_name
from sftkd_cli.mri.fft import fft2

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "name, expected", [("D5C5", 141_765), ("D4C5", 95_525), ("D3C5", 49_285), ("D2C5", 3_045)]
)
def test_parameter_counts_match_the_paper(name, expected):
    assert count_parameters(build_model(name)) == expected


def test_parameter_counts_include_frozen_blocks():
    """A model's size does not depend on what a run trains of it (SFT freezes the student's S1)."""
    model = build_model("D3C5")
    model.blocks[0].requires_grad_(False)
    assert count_parameters(model) == 49_285


def test_parameter_count_formula_for_any_depth():
    # conv 1->32 (320) + (n-2) conv 32->32 (9248) + conv 32->1 (289), per cascade
    for n in range(2, 7):
        for m in range(1, 4):
            assert count_parameters(DCCNN(n, m)) == m * (320 + (n - 2) * 9248 + 289)


@pytest.mark.parametrize("bad", ["D1C5", "D5C0", "C5D5", "resnet", ""])
def test_bad_names_are_clear_errors(bad):
    with pytest.raises(SftkdError, match="model"):
        parse_name(bad)


def _inputs(h=12, w=10, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 1, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., ::3, :] = 1
    kspace = fft2(target) * mask
    zf = torch.fft.ifft2(kspace, norm="ortho").abs()
    return zf, kspace, mask


def test_taps_do_not_change_the_output_and_have_the_image_size():
    torch.manual_seed(0)
    model = build_model("D3C2")
    zf, k, m = _inputs()
    plain = model(zf, k, m)
    out, feats = model(zf, k, m, taps=["c1.conv2", "c2.conv3", "c2.conv1"])
    assert torch.equal(plain, out)
    assert feats["c1.conv2"].shape == (2, 32, 12, 10)
    assert feats["c2.conv3"].shape == (2, 1, 12, 10)
    assert (feats["c2.conv1"] >= 0).all()  # hidden taps are after the ReLU


def test_tap_equals_manual_computation():
    torch.manual_seed(1)
    model = build_model("D2C1", pad=0)
    zf, k, m = _inputs()
    _, feats = model(zf, k, m, taps=["c1.conv1"])
    conv = model.blocks[0].convs[0]
    expected = torch.relu(torch.nn.functional.conv2d(zf, conv.weight, conv.bias, padding=1))
    torch.testing.assert_close(feats["c1.conv1"], expected)


def test_unknown_tap_names_the_valid_range():
    with pytest.raises(SftkdError, match="c1.conv1 .. c5.conv3"):
        build_model("D3C5")(*_inputs(), taps=["c6.conv1"])


def test_padding_is_zero_padding_then_crop():
    torch.manual_seed(2)
    block = build_model("D2C1", pad=5).blocks[0]
    x = torch.rand(1, 1, 8, 8)
    c1, c2 = block.convs
    padded = torch.nn.functional.pad(x, (5, 5, 5, 5))
    h = torch.relu(torch.nn.functional.conv2d(padded, c1.weight, c1.bias, padding=1))
    h = torch.nn.functional.conv2d(h, c2.weight, c2.bias, padding=1)[..., 5:-5, 5:-5]
    torch.testing.assert_close(block(x), h)


def test_network_output_is_data_consistent_against_numpy_oracle():
    torch.manual_seed(3)
    model = build_model("D2C1")
    zf, k, m = _inputs()
    out = model(zf, k, m).detach().numpy()
    cnn = model.blocks[0](zf).detach().numpy()
    kk = np.where(m.numpy().astype(bool), k.numpy(), np.fft.fft2(cnn, norm="ortho"))
    np.testing.assert_allclose(out, np.fft.ifft2(kk, norm="ortho").real, atol=1e-5)


def _reference_block(block, x, pad):
    """The paper's code: pad by `pad`, every conv with padding 1 on the full map, crop at the end."""
    h, taps = torch.nn.functional.pad(x, (pad,) * 4), {}
    for j, conv in enumerate(block.convs, start=1):
        h = torch.nn.functional.conv2d(h, conv.weight, conv.bias, padding=1)
        if j < len(block.convs):
            h = torch.relu(h)
        taps[f"conv{j}"] = h[..., pad:-pad, pad:-pad]
    return h[..., pad:-pad, pad:-pad], taps


@pytest.mark.parametrize("name, pad", [("D3C1", 5), ("D5C1", 5), ("D4C1", 4), ("D3C1", 7)])
def test_valid_convolutions_equal_the_reference_padding(name, pad):
    """pad >= layers runs unpadded convs on a smaller pad: output, taps and gradients are the reference's."""
    torch.manual_seed(4)
    block = build_model(name, pad=pad).blocks[0]
    assert block.valid and all(conv.padding == (0, 0) for conv in block.convs)
    x = torch.rand(2, 1, 11, 9, requires_grad=True)
    taps: dict = {}
    out = block(x, taps)
    ref, ref_taps = _reference_block(block, x, pad)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert taps.keys() == ref_taps.keys()
    for key in taps:
        torch.testing.assert_close(taps[key], ref_taps[key], atol=1e-6, rtol=1e-5)
    weights = [x, *block.parameters()]
    ours = torch.autograd.grad((out * ref.detach().cos()).sum() + taps["conv1"].sum(), weights)
    theirs = torch.autograd.grad((ref * ref.detach().cos()).sum() + ref_taps["conv1"].sum(), weights)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_pad_smaller_than_the_depth_keeps_padded_convolutions():
    torch.manual_seed(5)
    block = build_model("D5C1", pad=2).blocks[0]
    assert not block.valid
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(block(x), _reference_block(block, x, 2)[0])


def test_unknown_architectures_list_the_known_forms():
    with pytest.raises(SftkdError, match="unknown architecture.*D5C5"):
        build_model("resnet50")


def test_conv_to_one_channel_equals_conv2d_with_gradients():
    from sftkd_cli.models.dccnn import conv_to_one_channel

    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 9, 7, dtype=torch.float64, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(1, 5, 3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(1, dtype=torch.float64, generator=g)
    torch.testing.assert_close(conv_to_one_channel(x, w, b), torch.nn.functional.conv2d(x, w, b))
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, w, b))
    assert torch.autograd.gradcheck(conv_to_one_channel, inputs)


def test_the_last_conv_takes_the_gemm_path_in_channels_last_and_matches_the_reference():
    """The block output and gradients in channels_last (GEMM last conv) equal the reference's."""
    torch.manual_seed(7)
    block = build_model("D3C1").blocks[0].to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 11, 9).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = block(x)
    ref, _ = _reference_block(block, x, 5)
    assert out.grad_fn is not None and "ConvToOneChannel" in type(out.grad_fn).__name__
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weights = [x, *block.parameters()]
    for a, b in zip(torch.autograd.grad(out.square().sum(), weights), torch.autograd.grad(ref.square().sum(), weights)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cascades_of_checks_the_name_without_touching_the_global_rng():
    from sftkd_cli.models import cascades_of

    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    assert cascades_of("D5C5") == 5 and cascades_of("u2c3") == 3 and cascades_of("VDSR12") == 4
    assert torch.equal(torch.rand(1), expected)
    with pytest.raises(SftkdError, match="at least 2 conv layers"):
        cascades_of("D1C5")


def test_the_families_take_their_names_from_the_light_help_record():
    # command help (no torch) lists choices.ARCHITECTURES; each family is built from its entry
    from sftkd_cli.choices import ARCHITECTURES
    from sftkd_cli.models import FAMILIES, family_of

    assert tuple(f.about for f in FAMILIES) == ARCHITECTURES
    assert [family_of(a.example).about for a in ARCHITECTURES] == list(ARCHITECTURES)
