"""Undersampling masks: line counts, layouts, seeding, validation, loading from files."""

from __future__ import annotations

import random
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sftkd_cli.choices import ALL_KINDS, FASTMRI_KINDS, MASK_KINDS
from sftkd_cli.errors import SftkdError
from sftkd_cli.mri.masks import (
    acceleration_of,
    load_mask,
    make_mask,
    sampled_lines,
    undersample,
)

torch.set_num_threads(1)


def _line_vector(mask: np.ndarray, axis: int) -> np.ndarray:
    """The 1-D 0/1 line pattern of a line mask (checked to be constant along the other axis)."""
    line = mask[:, 0] if axis == 0 else mask[0, :]
    expected = line[:, None] if axis == 0 else line[None, :]
    assert np.array_equal(mask, np.broadcast_to(expected, mask.shape))
    return line


# --------------------------------------------------------------------------- make_mask


@pytest.mark.parametrize(
    "n, acc, lines", [(240, 4, 60), (240, 5, 48), (150, 5, 30), (150, 4, 38), (240, 2.5, 96)]
)
@pytest.mark.parametrize("kind", ["random", "equispaced"])
def test_exact_line_counts(kind, n, acc, lines):
    assert lines == round(n / acc)  # 150 / 4 = 37.5 -> 38 (round half to even)
    for layout in ("corner", "centered"):
        mask = make_mask(kind, (n, 64), acc, seed=3, layout=layout)
        assert mask.shape == (n, 64) and mask.dtype == np.float32
        assert int(_line_vector(mask, 0).sum()) == lines
        assert np.isclose(acceleration_of(mask), n / lines)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("axis", [0, 1])
def test_binary_and_constant_along_other_axis(kind, axis):
    shape = (40, 30)
    mask = make_mask(kind, shape, 4, seed=1, axis=axis)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    line = _line_vector(mask, axis)
    assert line.shape == (shape[axis],)
    assert np.array_equal(sampled_lines(mask, axis), np.flatnonzero(line))


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("n", [240, 150, 149, 151])
def test_center_band_fully_sampled(kind, n):
    fraction = {"random": 0.04, "equispaced": 0.04, "fastmri": 0.08}[kind]
    count = round(fraction * n)
    centered = _line_vector(make_mask(kind, (n, 8), 4, layout="centered"), 0)
    corner = _line_vector(make_mask(kind, (n, 8), 4, layout="corner"), 0)
    dc = n // 2
    band = np.arange(dc - count // 2, dc - count // 2 + count)  # centered indices around DC
    assert centered[band].all()
    # In the corner layout the same band sits at index 0 and wraps to the end.
    assert corner[(band - dc) % n].all()
    assert corner[0] == 1 and centered[dc] == 1


def test_default_center_band_sizes():
    """About 4 % of lines: 10 of 240 and 6 of 150 around DC for the paper's kind."""
    for n, count in [(240, 10), (150, 6)]:
        line = _line_vector(make_mask("random", (n, 4), 4, layout="centered"), 0)
        dc = n // 2
        assert line[dc - count // 2 : dc - count // 2 + count].all()
        explicit = _line_vector(
            make_mask("random", (n, 4), 4, layout="centered", center_fraction=count / n), 0
        )
        assert np.array_equal(line, explicit)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", [(240, 240), (150, 150), (149, 151), (7, 7), (151, 10)])
@pytest.mark.parametrize("axis", [0, 1])
def test_corner_is_ifftshift_of_centered(kind, shape, axis):
    centered = make_mask(kind, shape, 4, seed=5, layout="centered", axis=axis)
    corner = make_mask(kind, shape, 4, seed=5, layout="corner", axis=axis)
    assert np.array_equal(corner, np.fft.ifftshift(centered))
    assert np.array_equal(np.fft.fftshift(corner), centered)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_seeding(kind):
    a = make_mask(kind, (240, 16), 4, seed=7)
    b = make_mask(kind, (240, 16), 4, seed=7)
    c = make_mask(kind, (240, 16), 4, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_global_rng_untouched():
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    np_state = np.random.get_state()
    py_state = random.getstate()
    torch_state = torch.random.get_rng_state().clone()
    for kind in MASK_KINDS:
        make_mask(kind, (64, 64), 4, seed=1)
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])
    assert np_state[2:] == after[2:]
    assert random.getstate() == py_state
    assert torch.equal(torch.random.get_rng_state(), torch_state)


def test_random_density_decays_from_dc():
    """Over many seeds, lines near DC are sampled more often than lines near the edge."""
    n = 120
    freq = np.mean(
        [_line_vector(make_mask("random", (n, 2), 4, seed=s, layout="centered"), 0) for s in range(60)],
        axis=0,
    )
    dist = np.abs(np.arange(n) - n // 2)
    assert freq[(dist >= 5) & (dist < 20)].mean() > 2 * freq[dist >= 45].mean()


def test_equispaced_is_evenly_spaced_outside_band():
    n, acc = 240, 4
    line = _line_vector(make_mask("equispaced", (n, 4), acc, layout="centered"), 0)
    dc, count = n // 2, 10
    band = np.zeros(n, dtype=bool)
    band[dc - count // 2 : dc - count // 2 + count] = True
    outside = np.flatnonzero(line[~band])  # positions among the non-band lines
    gaps = np.diff(outside)
    assert len(outside) == 60 - count
    assert gaps.max() - gaps.min() <= 1  # steps of 230/50 = 4.6 -> gaps of 4 or 5


def test_fastmri_expected_acceleration():
    n, acc = 200, 4
    counts = [make_mask("fastmri", (n, 2), acc, seed=s)[:, 0].sum() for s in range(200)]
    assert abs(np.mean(counts) - n / acc) < 1.0
    assert len(set(counts)) > 1  # not exact per mask: that is how fastMRI does it


def test_acceleration_one_is_full():
    for kind in MASK_KINDS:
        assert make_mask(kind, (9, 5), 1).all()


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_odd_and_tiny_sizes(kind):
    for shape, acc in [((7, 7), 4), ((149, 151), 5), ((151, 149), 3), ((3, 5), 2), ((1, 4), 1)]:
        for axis in (0, 1):
            mask = make_mask(kind, shape, acc, axis=axis)
            assert mask.shape == shape
            assert mask.sum() > 0


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=300),
    acc=st.floats(min_value=1.0, max_value=12.0),
    seed=st.integers(min_value=0, max_value=2**31),
    axis=st.sampled_from([0, 1]),
    kind=st.sampled_from(["random", "equispaced"]),
)
def test_property_exact_count(n, acc, seed, axis, kind):
    lines = round(n / acc)
    shape = (n, 3) if axis == 0 else (3, n)
    if lines < 1:
        with pytest.raises(SftkdError):
            make_mask(kind, shape, acc, seed=seed, axis=axis)
        return
    mask = make_mask(kind, shape, acc, seed=seed, axis=axis, layout="centered")
    line = _line_vector(mask, axis)
    assert int(line.sum()) == lines
    assert line[n // 2] == 1  # DC always sampled
    corner = make_mask(kind, shape, acc, seed=seed, axis=axis, layout="corner")
    assert np.array_equal(corner, np.fft.ifftshift(mask))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(acceleration=0.5), "acceleration"),
        (dict(acceleration=float("nan")), "acceleration"),
        (dict(acceleration="fast"), "acceleration"),
        (dict(acceleration=1000), "too high"),
        (dict(kind="poisson"), "kind"),
        (dict(layout="shifted"), "layout"),
        (dict(axis=2), "axis"),
        (dict(axis=-1), "axis"),
        (dict(shape=(0, 10)), "shape"),
        (dict(shape=(10,)), "shape"),
        (dict(shape=(10, 10, 3)), "shape"),
        (dict(shape=(10.5, 10)), "shape"),
        (dict(shape="abc"), "shape"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(center_fraction=1.5), "center_fraction"),
        (dict(center_fraction=0.5), "center_fraction"),  # 120 centre lines > 60 allowed at 4x
    ],
)
def test_make_mask_errors(kwargs, words):
    args = dict(kind="random", shape=(240, 240), acceleration=4)
    args.update(kwargs)
    with pytest.raises(SftkdError, match=words):
        make_mask(**args)


def test_acceleration_of_empty_mask():
    with pytest.raises(SftkdError):
        acceleration_of(np.zeros((4, 4)))


# --------------------------------------------------------------------------- load_mask


def _paper_like_mask(h: int = 150, w: int = 150) -> np.ndarray:
    """A float64 0/1 row mask in corner layout, as the paper's published .mat masks."""
    return make_mask("random", (h, w), 5, seed=11).astype(np.float64)


def test_load_npy(tmp_path):
    mask = _paper_like_mask()
    np.save(tmp_path / "m.npy", mask.astype(np.uint8))
    got = load_mask(tmp_path / "m.npy", shape=(150, 150))
    assert got.dtype == np.float32 and np.array_equal(got, mask)


def test_load_npz_single_and_named(tmp_path):
    mask = _paper_like_mask()
    np.savez(tmp_path / "single.npz", anything=mask)
    np.savez(tmp_path / "named.npz", mask=mask, other=np.ones(3))
    np.savez(tmp_path / "two.npz", a=mask, b=mask)
    assert np.array_equal(load_mask(tmp_path / "single.npz"), mask)
    assert np.array_equal(load_mask(str(tmp_path / "named.npz")), mask)
    with pytest.raises(SftkdError, match="two.npz"):
        load_mask(tmp_path / "two.npz")


def test_load_paper_style_mat(tmp_path):
    mask = _paper_like_mask()
    scipy.io.savemat(tmp_path / "mask_5x.mat", {"Umask": mask})
    got = load_mask(tmp_path / "mask_5x.mat", shape=(150, 150))
    assert got.dtype == np.float32 and np.array_equal(got, mask)
    assert int(got[:, 0].sum()) == 30 and got[0].all()  # rows sampled, DC row at index 0


def test_load_mat_picks_named_or_single_2d(tmp_path):
    mask = _paper_like_mask(20, 20)
    scipy.io.savemat(tmp_path / "named.mat", {"mask": mask, "other": mask})
    scipy.io.savemat(tmp_path / "extra.mat", {"m": mask, "note": "text"})
    scipy.io.savemat(tmp_path / "two.mat", {"a": mask, "b": mask})
    assert np.array_equal(load_mask(tmp_path / "named.mat"), mask)
    assert np.array_equal(load_mask(tmp_path / "extra.mat"), mask)
    with pytest.raises(SftkdError, match="two.mat"):
        load_mask(tmp_path / "two.mat")


def test_load_mat_v73_is_transposed_back(tmp_path):
    """MATLAB v7.3 .mat files are HDF5 with column-major (transposed) arrays."""
    mask = _paper_like_mask(20, 12)
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["Umask"] = mask.T
    header = b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM"
    with open(path, "r+b") as f:  # the 128-byte MATLAB header lives in the HDF5 user block
        f.write(header)
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(path)  # scipy cannot read it: the HDF5 path is needed
    assert np.array_equal(load_mask(path, shape=(20, 12)), mask)


def test_load_h5(tmp_path):
    mask = _paper_like_mask()
    with h5py.File(tmp_path / "named.h5", "w") as f:
        f["mask"] = mask
        f["other"] = np.ones(3)
    with h5py.File(tmp_path / "single.h5", "w") as f:
        f.create_group("g")["m"] = mask.astype(bool)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = mask
        f["b"] = mask
    assert np.array_equal(load_mask(tmp_path / "named.h5"), mask)
    assert np.array_equal(load_mask(tmp_path / "single.h5"), mask)
    with pytest.raises(SftkdError, match="two.h5"):
        load_mask(tmp_path / "two.h5")


def test_load_mask_errors(tmp_path):
    mask = _paper_like_mask(10, 10)
    np.save(tmp_path / "ok.npy", mask)
    with pytest.raises(SftkdError, match=r"ok.npy.*\(12, 10\).*\(10, 10\)"):
        load_mask(tmp_path / "ok.npy", shape=(12, 10))

    np.save(tmp_path / "gray.npy", mask * 0.5)
    with pytest.raises(SftkdError, match=r"gray.npy.*\{0, 1\}.*0\.5"):
        load_mask(tmp_path / "gray.npy")

    np.save(tmp_path / "cube.npy", np.ones((2, 10, 10)))
    with pytest.raises(SftkdError, match=r"cube.npy.*2-D.*\(2, 10, 10\)"):
        load_mask(tmp_path / "cube.npy")

    bad = mask.copy()
    bad[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(SftkdError, match="nan.npy.*finite"):
        load_mask(tmp_path / "nan.npy")

    np.save(tmp_path / "complex.npy", mask.astype(np.complex64))
    with pytest.raises(SftkdError, match="complex.npy"):
        load_mask(tmp_path / "complex.npy")

    with pytest.raises(SftkdError, match="missing.mat.*not found"):
        load_mask(tmp_path / "missing.mat")

    with pytest.raises(SftkdError, match="mask.png"):
        load_mask(tmp_path / "mask.png")

    (tmp_path / "corrupt.mat").write_bytes(b"this is not a mask file at all")
    with pytest.raises(SftkdError, match="corrupt.mat: not a readable MATLAB .mat file"):
        load_mask(tmp_path / "corrupt.mat")
    (tmp_path / "short.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")  # a .npy cut short
    with pytest.raises(SftkdError, match="short.npy: cannot read mask file"):
        load_mask(tmp_path / "short.npy")


@pytest.mark.parametrize("damage, reason", [
    ("text", "index out of range"), ("empty", "Mat file appears to be truncated"),
    ("cut", "could not read bytes"), ("garbled", "Expecting miMATRIX type here, got 4294967295"),
    ("cut v4", "Not enough bytes to read matrix 'mask'")])
def test_a_damaged_or_foreign_mat_mask_is_named_so(tmp_path, monkeypatch, damage, reason):
    """Not scipy's exception (or its advice on loadmat's arguments): what the file is not, why in
    a few words, and what a mask is, as for .npy, .npz and .h5 files."""
    import scipy.io

    monkeypatch.chdir(tmp_path)
    scipy.io.savemat("whole.mat", {"mask": np.ones((8, 8))}, format="4" if damage == "cut v4" else "5")
    whole = Path("whole.mat").read_bytes()
    data = {"text": b"this is not a mask file at all", "empty": b"", "cut": whole[:200], "cut v4": whole[:60],
            "garbled": whole[:128] + b"\xff" * 200}[damage]
    Path("m.mat").write_bytes(data)
    with pytest.raises(SftkdError) as info:
        load_mask("m.mat")
    assert str(info.value) == f"m.mat: not a readable MATLAB .mat file ({reason}); expected a 2-D 0/1 mask"


@pytest.mark.parametrize("name, kind", [("m.npy", "a NumPy .npy file"), ("m.npz", "a NumPy .npz file"),
                                        ("m.h5", "an HDF5 file")])
def test_a_mask_file_of_another_kind_is_named_so(tmp_path, monkeypatch, name, kind):
    """Not numpy's own advice (allow_pickle, pickle.load): what the file is not, and what a mask is."""
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(b"this is not a mask file at all")
    with pytest.raises(SftkdError) as info:
        load_mask(name)
    assert str(info.value) == f"{name}: not {kind}; expected a 2-D 0/1 mask"


@pytest.mark.parametrize("name", ["objects.npy", "objects.npz"])
def test_a_numpy_mask_of_python_objects_is_refused_in_words(tmp_path, name):
    objects = np.array([{"a": 1}], dtype=object)
    if name.endswith(".npy"):
        np.save(tmp_path / name, objects)
    else:
        np.savez(tmp_path / name, mask=objects)
    with pytest.raises(SftkdError) as info:
        load_mask(tmp_path / name)
    assert str(info.value) == f"{tmp_path / name}: holds Python objects, not numbers; expected a 2-D 0/1 mask"


def test_load_mask_error_is_one_line(tmp_path):
    (tmp_path / "corrupt.h5").write_bytes(b"\x00" * 64)
    with pytest.raises(SftkdError) as info:
        load_mask(tmp_path / "corrupt.h5")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- undersample


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("shape", [(12, 10), (3, 9, 7)])
def test_undersample_matches_numpy(shape, centered):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    mask = make_mask("random", shape[-2:], 3, layout="centered" if centered else "corner")
    kspace, zf = undersample(image, mask, centered=centered)
    assert kspace.dtype == np.complex64 and zf.dtype == np.float32
    assert kspace.shape == shape and zf.shape == shape
    axes = (-2, -1)
    full = np.fft.fft2(np.fft.ifftshift(image, axes=axes) if centered else image, axes=axes, norm="ortho")
    if centered:
        full = np.fft.fftshift(full, axes=axes)
    np.testing.assert_allclose(kspace, mask * full, atol=1e-5)
    k = np.fft.ifftshift(mask * full, axes=axes) if centered else mask * full
    x = np.fft.ifft2(k, axes=axes, norm="ortho")
    if centered:
        x = np.fft.fftshift(x, axes=axes)
    np.testing.assert_allclose(zf, np.abs(x), atol=1e-5)


def test_undersample_full_mask_returns_image():
    image = np.random.default_rng(1).random((8, 6))
    _, zf = undersample(image, np.ones((8, 6)))
    np.testing.assert_allclose(zf, image, atol=1e-6)


def test_undersample_errors():
    image = np.zeros((2, 8, 6), dtype=np.float32)
    with pytest.raises(SftkdError, match=r"mask.*\(8, 6\).*\(6, 8\)"):
        undersample(image, np.ones((6, 8)))
    with pytest.raises(SftkdError, match="mask"):
        undersample(image, np.ones((1, 8, 6)))
    with pytest.raises(SftkdError, match="mask"):
        undersample(image, np.full((8, 6), 0.5))
    with pytest.raises(SftkdError, match="image"):
        undersample(np.zeros(8), np.ones((8, 6)))
    with pytest.raises(SftkdError, match="image"):
        undersample(image.astype(np.complex64), np.ones((8, 6)))


# --------------------------------------------------------------------------- fastMRI's own masks


def _fastmri_subsample():
    """fastmri.data.subsample, loaded from its file: importing the package itself pulls in
    torchvision, pandas and tqdm, which subsample.py does not need (it needs numpy and torch)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fastmri")
    if spec is None or spec.origin is None:
        pytest.skip("needs the fastmri package (pip install --no-deps fastmri==0.3.0)")
    path = Path(spec.origin).parent / "data" / "subsample.py"
    module_spec = importlib.util.spec_from_file_location("fastmri_subsample_oracle", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind, oracle", [("fastmri-random", "RandomMaskFunc"), ("fastmri-equispaced", "EquispacedMaskFractionFunc")])
def test_fastmri_kinds_equal_the_fastmri_package_bit_for_bit(kind, oracle):
    subsample = _fastmri_subsample()
    cls = getattr(subsample, oracle)
    compared = 0
    for width in (368, 372, 367, 320, 33):
        for acc, fraction in ((4, 0.08), (8, 0.04), (4, None), (5, None), (6, 0.06), (2, 0.1)):
            for seed in (0, 42, 12345, (1, 2, 3, 4), (42, 3, 4000000000, 17)):
                ours = make_mask(kind, (6, width), acc, seed=seed, center_fraction=fraction, layout="centered", axis=1)
                theirs, low = cls([0.32 / acc if fraction is None else fraction], [acc])((6, width, 2), seed=seed)
                line = theirs.numpy().reshape(-1)
                assert line.dtype == np.float32 and np.array_equal(_line_vector(ours, 1), line), (width, acc, fraction, seed)
                compared += 1
    assert compared == 150


def test_fastmri_kinds_layout_axis_and_defaults():
    for kind in ("fastmri-random", "fastmri-equispaced"):
        centered = make_mask(kind, (20, 368), 4, seed=3, layout="centered", axis=1)
        assert np.array_equal(make_mask(kind, (20, 368), 4, seed=3, layout="corner", axis=1), np.fft.ifftshift(centered))
        rows = make_mask(kind, (368, 20), 4, seed=3, layout="centered", axis=0)
        assert np.array_equal(_line_vector(rows, 0), _line_vector(centered, 1))
        line = _line_vector(centered, 1)
        assert line[(368 - 29 + 1) // 2 : (368 - 29 + 1) // 2 + 29].all()  # round(0.08 * 368) = 29 centre columns
        explicit = make_mask(kind, (20, 368), 4, seed=3, center_fraction=0.08, layout="centered", axis=1)
        assert np.array_equal(centered, explicit)  # default centre fraction at 4x: 0.32 / 4
        assert not np.array_equal(centered, make_mask(kind, (20, 368), 4, seed=(3, 1), layout="centered", axis=1))
    equi = _line_vector(make_mask("fastmri-equispaced", (4, 368), 4, seed=1, layout="centered", axis=1), 1)
    assert abs(equi.sum() - 368 / 4) <= 2  # fraction-matched spacing: close to N / acc lines


def test_fastmri_kinds_refuse_a_centre_that_fills_the_lines():
    # fastMRI's random mask would silently be the centre band alone here; equispaced would crash
    for kind in ("fastmri-random", "fastmri-equispaced"):
        with pytest.raises(SftkdError, match="center_fraction 0.1: its 37 centre lines"):
            make_mask(kind, (8, 368), 10, center_fraction=0.1, layout="centered", axis=1)
        with pytest.raises(SftkdError, match="center_fraction"):
            make_mask(kind, (8, 368), 4, center_fraction=1.5)


def test_tuple_seeds():
    a = make_mask("random", (64, 8), 4, seed=(1, 2, 3))
    assert np.array_equal(a, make_mask("random", (64, 8), 4, seed=(1, 2, 3)))
    assert not np.array_equal(a, make_mask("random", (64, 8), 4, seed=(1, 2, 4)))
    for bad in ((1, -2), (), (1, 2**32), (1.5,), (True,)):
        with pytest.raises(SftkdError, match="seed"):
            make_mask("random", (64, 8), 4, seed=bad)


@pytest.mark.parametrize("shape", [(16,), (1, 16), (16, 1)])
def test_fastmri_line_vectors_load_and_expand(tmp_path, shape):
    from sftkd_cli.mri.masks import expand_line_mask

    line = _line_vector(make_mask("fastmri-random", (2, 16), 4, seed=0, layout="centered", axis=1), 1)
    np.save(tmp_path / "line.npy", line.reshape(shape))
    if len(shape) == 1:  # without line=True a mask file holds a 2-D mask, as before
        with pytest.raises(SftkdError, match="expected a 2-D mask, found shape"):
            load_mask(tmp_path / "line.npy")
    else:
        assert load_mask(tmp_path / "line.npy").shape == shape
    vector = load_mask(tmp_path / "line.npy", line=True)
    assert vector.shape == (1, 16) and vector.dtype == np.float32
    full = expand_line_mask(vector, (10, 16), "m")
    assert full.shape == (10, 16) and np.array_equal(_line_vector(full, 1), line)
    with pytest.raises(SftkdError, match=r"m: shape \(1, 16\), expected \(10, 12\).*12 columns"):
        expand_line_mask(vector, (10, 12), "m")


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_generated_mask_samples_dc_or_is_refused_naming_the_least_fraction(kind):
    """A centre fraction that rounds to no centre line (0, or too small for the size) is refused
    for every kind, naming the least that gives one; every mask made samples DC (`dc_index`)."""
    from sftkd_cli.mri.masks import CenterFractionError, dc_index, least_center_fraction

    for n in (4, 5, 8, 12, 33, 48, 50):
        least = least_center_fraction(n)
        assert round(least * n) == 1 and round((least - 0.0001) * n) == 0
        for fraction in (0.0, least - 0.0001):
            with pytest.raises(CenterFractionError, match=rf"gives no centre line of {n} .* at least {least:g}$"):
                make_mask(kind, (n, 4), 4, center_fraction=fraction)
        for acc in (acc for acc in (2, 4, 8) if round(n / acc) >= 1):
            for fraction in (None, least):
                for layout in ("corner", "centered"):
                    try:
                        mask = make_mask(kind, (n, 4), acc, seed=(1, n), center_fraction=fraction, layout=layout)
                    except CenterFractionError as exc:  # fastMRI's default is too small, or the centre too big
                        assert kind in FASTMRI_KINDS or "exceed" in str(exc), (n, acc, fraction)
                        continue
                    assert mask[dc_index(n, layout)].all(), (n, acc, fraction, layout)
