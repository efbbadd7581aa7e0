"""NIfTI reading checks and the array helpers (crop/pad, downsampling, slice selection)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from sftkd_cli.data.volumes import (
    crop_or_pad, downsample, kept_slices, load_nifti, read_volume, spatial_shape,
    to_slices,
)
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import sha256_file


def _read(path: Path) -> np.ndarray:
    img = load_nifti(path)
    return read_volume(img, path)


# ----------------------------------------------------------------- array helpers


@pytest.mark.parametrize("n, target", [(7, 4), (8, 4), (5, 5), (4, 7), (3, 8), (6, 9)])
def test_crop_or_pad_1d_by_hand(n: int, target: int) -> None:
    rows = np.arange(1, n + 1, dtype=np.float32)
    stack = np.broadcast_to(rows[None, :, None], (2, n, 3)).copy()
    out = crop_or_pad(stack, (target, 3))
    assert out.shape == (2, target, 3) and out.dtype == np.float32
    if n >= target:
        start = (n - target) // 2  # e.g. 7 -> 4 keeps rows 2..5 (1-based)
        expected = rows[start : start + target]
    else:
        before = (target - n) // 2
        expected = np.concatenate([np.zeros(before), rows, np.zeros(target - n - before)])
    np.testing.assert_array_equal(out[0, :, 0], expected)


def test_crop_or_pad_values_by_hand() -> None:
    stack = np.arange(5 * 6, dtype=np.float32).reshape(1, 5, 6)
    np.testing.assert_array_equal(crop_or_pad(stack, (3, 2))[0], stack[0, 1:4, 2:4])
    padded = crop_or_pad(stack, (7, 6))[0]
    np.testing.assert_array_equal(padded[1:6], stack[0])
    assert not padded[0].any() and not padded[6].any()


def test_downsample_block_mean_against_loops() -> None:
    rng = np.random.default_rng(0)
    stack = rng.random((2, 7, 9)).astype(np.float32)
    out = downsample(stack, 2)
    assert out.shape == (2, 3, 4)
    for s in range(2):
        for i in range(3):
            for j in range(4):
                block = stack[s, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                assert out[s, i, j] == pytest.approx(block.mean(), rel=1e-6)
    assert downsample(stack, 1) is stack
    with pytest.raises(SftkdError, match="--downsample 10"):
        downsample(stack, 10)


def test_kept_slices() -> None:
    stack = np.zeros((5, 4, 4), dtype=np.float32)
    stack[1] = 1.0
    stack[2] = 0.1
    stack[3] = 2.0  # stack mean = 3.1 * 16 / 80 = 0.62
    np.testing.assert_array_equal(kept_slices(stack, 0.0), [1, 2, 3])  # all-zero slices always go
    np.testing.assert_array_equal(kept_slices(stack, 0.5), [1, 3])  # 0.1 < 0.5 * 0.62 <= 1.0


def test_to_slices_moves_axis() -> None:
    vol = np.arange(24).reshape(2, 3, 4)
    assert to_slices(vol, 2).shape == (4, 2, 3)
    np.testing.assert_array_equal(to_slices(vol, 2)[1], vol[:, :, 1])
    np.testing.assert_array_equal(to_slices(vol, 0)[1], vol[1])


def test_sha256_file(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path, chunk=7) == hashlib.sha256(b"abc" * 1000).hexdigest()


# ----------------------------------------------------------------- reading and validation


def test_read_valid_volume(tmp_path: Path, nifti_writer) -> None:
    data = nifti_writer.phantom((6, 5, 3))
    path = nifti_writer.write(tmp_path / "v.nii.gz", data.astype(np.int16))
    out = _read(path)
    assert out.dtype == np.float32 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, data.astype(np.int16).astype(np.float32))


def test_trailing_singleton_is_3d(tmp_path: Path, nifti_writer) -> None:
    path = nifti_writer.write(tmp_path / "v.nii", nifti_writer.phantom((6, 5, 3))[..., None])
    assert spatial_shape(load_nifti(path), path) == (6, 5, 3)
    assert _read(path).shape == (6, 5, 3)


def test_4d_is_an_error_naming_file_and_shape(tmp_path: Path, nifti_writer) -> None:
    path = nifti_writer.write(tmp_path / "cine.nii.gz", np.ones((6, 5, 3, 2), dtype=np.float32))
    with pytest.raises(SftkdError, match=r"cine\.nii\.gz: 4-D image of shape \(6, 5, 3, 2\), expected a 3-D"):
        _read(path)


def test_2d_is_an_error(tmp_path: Path, nifti_writer) -> None:
    path = nifti_writer.write(tmp_path / "flat.nii", np.ones((6, 5), dtype=np.float32))
    with pytest.raises(SftkdError, match=r"flat\.nii: 2-D image"):
        _read(path)


def test_truncated_gzip_is_an_error(tmp_path: Path, nifti_writer) -> None:
    good = nifti_writer.write(tmp_path / "good.nii.gz", nifti_writer.phantom((20, 18, 4)))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(SftkdError, match=r"bad\.nii\.gz: damaged gzip data .*truncated or corrupt"):
        _read(bad)


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_a_corrupt_byte_in_a_gzip_volume_is_an_error(tmp_path: Path, nifti_writer, where) -> None:
    """nibabel reads only the bytes its header asks for, so the gzip checksum is never checked:
    a flipped byte would give wrong voxels silently (seen: maxima of 1e28)."""
    good = nifti_writer.write(tmp_path / "good.nii.gz", nifti_writer.phantom((20, 18, 4)))
    data = bytearray(good.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(SftkdError, match=r"bad\.nii\.gz: (damaged gzip data|cannot read)"):
        _read(bad)


def test_complex_voxels_are_an_error_and_a_nan_voxel_size_reads_as_1(tmp_path: Path) -> None:
    import nibabel as nib

    from sftkd_cli.data.volumes import voxel_size

    volume = (np.ones((8, 8, 3)) * np.exp(1j * np.linspace(0, 3, 8))[:, None, None]).astype(np.complex64)
    path = tmp_path / "complex.nii"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    with pytest.raises(SftkdError, match=r"complex\.nii: complex voxels \(complex64\); expected magnitude images"):
        _read(path)
    img = nib.Nifti1Image(np.ones((8, 8, 3), dtype=np.float32), np.eye(4))
    img.header.set_zooms((1.5, float("nan"), 2.0))
    assert voxel_size(img) == (1.5, 1.0, 2.0)


def rgb_nifti(path: Path) -> Path:
    """An RGB24 NIfTI (a structured dtype: three uint8 values per voxel)."""
    import nibabel as nib

    volume = np.zeros((8, 8, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    volume["R"], volume["G"] = 200, 40
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path


def slope_overflow_nifti(path: Path) -> Path:
    """int16 voxels with scl_slope 1e38: scaled, they are beyond float32's range."""
    import nibabel as nib

    img = nib.Nifti1Image(np.full((8, 8, 3), 1000, dtype=np.int16), np.eye(4))
    img.header.set_slope_inter(1e38, 0)
    nib.save(img, path)
    return path


def zero_pixdim_nifti(path: Path, nifti_writer) -> Path:
    """A valid volume whose header's pixdim[1:4] are 0 (nibabel fixes them to 1 when loading)."""
    nifti_writer.write(path, nifti_writer.phantom((8, 8, 3)))
    raw = bytearray(path.read_bytes())
    raw[80:92] = np.zeros(3, dtype=np.float32).tobytes()  # pixdim[1:4], after dim (40) and pixdim[0] (76)
    path.write_bytes(bytes(raw))
    return path


def test_rgb_voxels_are_an_error(tmp_path: Path) -> None:
    path = rgb_nifti(tmp_path / "rgb.nii.gz")
    with pytest.raises(SftkdError, match=r"rgb\.nii\.gz: RGB/structured voxels \(dtype \[\('R', 'u1'\).*\); "
                                         r"expected scalar magnitude images"):
        _read(path)


def test_scale_overflow_and_fixed_header_problems_print_nothing(tmp_path: Path, nifti_writer) -> None:
    """The overflow is the NaN/Inf error alone (no numpy warning); a zero pixdim nibabel fixes is not
    logged (sftkd reads it as 1 mm); nibabel's logger is as it was afterwards."""
    import logging
    import warnings

    from nibabel import imageglobals

    from sftkd_cli.data.volumes import voxel_size

    path = slope_overflow_nifti(tmp_path / "slope.nii")
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SftkdError, match=r"slope\.nii: 192 NaN/Inf voxel"):
        warnings.simplefilter("always")
        _read(path)
    assert not caught, [str(w.message) for w in caught]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    imageglobals.logger.addHandler(handler)
    level = imageglobals.logger.level
    try:
        img = load_nifti(zero_pixdim_nifti(tmp_path / "pixdim.nii", nifti_writer))
    finally:
        imageglobals.logger.removeHandler(handler)
    assert records == [] and imageglobals.logger.level == level
    assert voxel_size(img) == (1.0, 1.0, 1.0) and read_volume(img, tmp_path / "pixdim.nii").shape == (8, 8, 3)


def test_truncated_uncompressed_is_an_error(tmp_path: Path, nifti_writer) -> None:
    good = nifti_writer.write(tmp_path / "good.nii", nifti_writer.phantom((20, 18, 4)))
    bad = tmp_path / "short.nii"
    bad.write_bytes(good.read_bytes()[:600])
    with pytest.raises(SftkdError, match=r"short\.nii: cannot read"):
        _read(bad)


@pytest.mark.parametrize("content", [b"", b"not a nifti file at all" * 20])
def test_garbage_is_an_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(content) if content else content)
    with pytest.raises(SftkdError, match=r"junk\.nii\.gz: cannot read NIfTI"):
        _read(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SftkdError, match=r"nope\.nii\.gz: file not found"):
        load_nifti(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("value, word", [(np.nan, "NaN/Inf"), (np.inf, "NaN/Inf")])
def test_non_finite_is_an_error(tmp_path: Path, nifti_writer, value: float, word: str) -> None:
    data = nifti_writer.phantom((6, 5, 3))
    data[1, 2, 0] = value
    data[2, 2, 1] = value
    path = nifti_writer.write(tmp_path / "nan.nii.gz", data)
    with pytest.raises(SftkdError, match=rf"nan\.nii\.gz: 2 {word} voxel"):
        _read(path)


def test_all_zero_is_an_error(tmp_path: Path, nifti_writer) -> None:
    path = nifti_writer.write(tmp_path / "zero.nii.gz", np.zeros((6, 5, 3), dtype=np.float32))
    with pytest.raises(SftkdError, match=r"zero\.nii\.gz: no positive voxel"):
        _read(path)
