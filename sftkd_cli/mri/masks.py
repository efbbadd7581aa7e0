"""Cartesian undersampling masks: make them, load them from files, apply them to images.

A mask is a float32 (H, W) array of 0/1 that samples whole lines: with `axis=0` (the paper's
choice) it picks rows, so `mask[i, :]` is constant. Two layouts exist:

- "corner": the unshifted FFT layout used by the paper's code; DC is at index 0 and the
  low frequencies wrap around to the end of the axis.
- "centered": the fftshifted layout; DC is at index N // 2.

Every mask is built in the centered layout and then moved with `np.fft.ifftshift`, so a corner
mask equals `ifftshift` of the centered one made with the same seed. Each call uses its own
`np.random.default_rng(seed)`; no global random state is read or changed.

Kinds:

- "random": the paper's 1-D variable-density mask. A fully sampled low-frequency band of
  round(center_fraction * N) lines (default 4 %: 10 of 240, 6 of 150), then further lines drawn
  without replacement with probability (1 - d / (N / 2)) ** 2 + 0.02 (d = distance from DC), so
  that the total is exactly round(N / acceleration) (Python rounding: 150 at 4x gives 38; the
  paper's own cardiac 4x mask has 37 rows).
- "equispaced": the same centre band plus equally spaced lines (seeded offset) among the
  remaining ones, again exactly round(N / acceleration) lines.
- "fastmri": fastMRI-style. A centre band (default 8 %) plus every other line independently with
  the probability that makes the *expected* acceleration equal to `acceleration`.

fastMRI's own masks (`FASTMRI_KINDS`), equal bit for bit to those of the `fastmri` package for
the same seed (`fastmri.data.subsample`, drawn with its legacy `np.random.RandomState`; a seed
may be an int or a tuple of ints, as fastMRI's own per-file tuple seeds):

- "fastmri-random": `RandomMaskFunc([cf], [acc])(shape, seed=seed)`: round(cf * N) centre lines
  (at (N - n + 1) // 2), every other line with probability (N / acc - n) / (N - n).
- "fastmri-equispaced": `EquispacedMaskFractionFunc([cf], [acc])(shape, seed=seed)`: the same centre
  plus lines every (acc (n - N)) / (n acc - N) lines (rounded), from a seeded offset.

Their centre fraction defaults to 0.32 / acc (fastMRI's pairs: 0.08 at 4x, 0.04 at 8x). fastMRI
masks select k-space columns (the width, `axis=1`) of centred k-space; `make_mask` builds the
same 1-D vector along either axis and in either layout (corner = ifftshift of centred).

A centre fraction that gives no centre line (round(cf * N) = 0, e.g. 0) is refused for every
kind (`CenterFractionError`, naming the least that gives one): every mask made here samples DC.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sftkd_cli.acquisition import KSPACE_LAYOUTS
from sftkd_cli.choices import ALL_KINDS, DEFAULT_CENTER_FRACTION, FASTMRI_CENTER_PRODUCT, FASTMRI_KINDS
from sftkd_cli.errors import SftkdError
from sftkd_cli.mri.fft import fft2_np, ifft2_np

MASK_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".mat", ".h5", ".hdf5")

# Variable density of the "random" kind: weight = (1 - d / (N/2)) ** POWER + FLOOR.
DENSITY_POWER = 2.0
DENSITY_FLOOR = 0.02


# --------------------------------------------------------------------------- validation


def _check_shape(shape: Any) -> tuple[int, int]:
    """Return `shape` as two positive ints or raise."""
    try:
        dims = tuple(int(s) for s in shape)
        ok = len(dims) == 2 and all(int(s) == s and not isinstance(s, bool) for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or min(dims) < 1:
        raise SftkdError(f"mask shape {shape!r}: expected two positive integers (H, W)")
    return dims  # type: ignore[return-value]


def _check_acceleration(acceleration: Any, n: int) -> int:
    """Return the exact number of lines round(n / acceleration) or raise."""
    try:
        acc = float(acceleration)
    except (TypeError, ValueError):
        acc = math.nan
    if isinstance(acceleration, bool) or not math.isfinite(acc) or acc < 1.0:
        raise SftkdError(f"acceleration {acceleration!r}: expected a number >= 1")
    lines = round(n / acc)
    if lines < 1:
        raise SftkdError(
            f"acceleration {acceleration!r}: too high for {n} lines; expected at most {n}x (one line)"
        )
    return lines


class CenterFractionError(SftkdError):
    """A centre fraction that does not fit the mask asked for: `problem` says why (with the
    acceleration), `fraction` is the value as given; worded 'center_fraction F: problem', which
    the prepare options name as their flag or plan key (`data.manifest.generated_mask`)."""

    def __init__(self, fraction: Any, problem: str) -> None:
        self.fraction, self.problem = fraction, problem
        super().__init__(f"center_fraction {fraction!r}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (a worker's error), not from its message
        return type(self), (self.fraction, self.problem)


def _center_lines(kind: str, center_fraction: float | None, n: int, lines: int, acceleration: Any) -> int:
    """Number of fully sampled low-frequency lines; an explicit fraction must fit in `lines`."""
    explicit = center_fraction is not None
    fraction = _fraction(kind, acceleration, center_fraction)
    count = round(fraction * n)
    if not explicit:
        return max(1, min(count, lines))
    if count == 0:
        raise CenterFractionError(center_fraction, _no_center_line(fraction, n))
    if count > lines:
        raise CenterFractionError(
            center_fraction, f"its {count} centre lines exceed the {lines} of {n} lines sampled at "
            f"{float(acceleration):g}x; expected at most {lines / n:.4f}"
        )
    return count


def _fraction(kind: str, acceleration: Any, center_fraction: Any) -> float:
    """The centre fraction a mask of `kind` is made with: `center_fraction` as given, else the
    kind's default (`default_center_fraction`); a number in [0, 1] or a `CenterFractionError`."""
    fraction = default_center_fraction(kind, acceleration) if center_fraction is None else center_fraction
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        fraction = math.nan
    if not 0.0 <= fraction <= 1.0:
        raise CenterFractionError(center_fraction, "expected a number in [0, 1]")
    return fraction


def least_center_fraction(n: int) -> float:
    """The smallest centre fraction, in steps of 0.0001, that gives one centre line of `n`:
    round(fraction * n) >= 1, as `make_mask` counts them (0.5 / n rounds to none: half to even)."""
    steps = 5000 // n
    while round(steps / 10000 * n) < 1:
        steps += 1
    return steps / 10000


def _no_center_line(fraction: float, n: int) -> str:
    """The problem of a centre fraction that gives no centre line of `n` (`CenterFractionError`):
    the mask would not be sure to sample k-space's centre (DC), which every mask made here samples."""
    return (f"gives no centre line of {n} ({fraction:g} x {n} rounds to 0), so the mask could miss k-space's "
            f"centre (DC); expected at least {least_center_fraction(n):g}")


def _center_band(n: int, count: int) -> np.ndarray:
    """Boolean (n,) vector, centered layout, with `count` lines around DC (index n // 2) set."""
    band = np.zeros(n, dtype=bool)
    start = n // 2 - count // 2
    band[start : start + count] = True
    return band


# --------------------------------------------------------------------------- 1-D line selections


def _random_lines(n: int, lines: int, band: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centre band plus lines drawn without replacement with a density decaying away from DC."""
    chosen = band.copy()
    extra = lines - int(band.sum())
    if extra > 0:
        candidates = np.flatnonzero(~band)
        distance = np.abs(candidates - n // 2) / max(n / 2.0, 1.0)
        weight = np.clip(1.0 - distance, 0.0, None) ** DENSITY_POWER + DENSITY_FLOOR
        picked = rng.choice(candidates, size=extra, replace=False, p=weight / weight.sum())
        chosen[picked] = True
    return chosen


def _equispaced_lines(n: int, lines: int, band: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centre band plus lines at equal steps (random offset) among the lines outside the band."""
    chosen = band.copy()
    extra = lines - int(band.sum())
    if extra > 0:
        candidates = np.flatnonzero(~band)
        step = len(candidates) / extra  # >= 1, so the picks below are distinct
        offset = rng.uniform(0.0, step)
        picks = np.floor(offset + step * np.arange(extra)).astype(int)
        chosen[candidates[np.minimum(picks, len(candidates) - 1)]] = True
    return chosen


def _fastmri_lines(
    n: int, acceleration: float, band: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Centre band plus independent lines with probability giving expected acceleration."""
    n_center = int(band.sum())
    outside = n - n_center
    prob = (n / acceleration - n_center) / outside if outside > 0 else 0.0
    prob = min(max(prob, 0.0), 1.0)
    return band | (rng.uniform(size=n) < prob)


def fastmri_center_fraction(acceleration: float) -> float:
    """fastMRI's usual centre fraction for an acceleration: 0.32 / acc (0.08 at 4x, 0.04 at 8x)."""
    return FASTMRI_CENTER_PRODUCT / float(acceleration)


def default_center_fraction(kind: str, acceleration: float) -> float | None:
    """The centre fraction `make_mask` uses for a mask of `kind` when none is given: fastMRI's
    kinds scale it with the acceleration, the others have one (None: a kind it does not make)."""
    return fastmri_center_fraction(acceleration) if kind in FASTMRI_KINDS else DEFAULT_CENTER_FRACTION.get(kind)


def _fastmri_vector(kind: str, n: int, acceleration: float, center_fraction: float | None,
                    seed: int | tuple[int, ...]) -> np.ndarray:
    """The centred (n,) float32 line vector of fastMRI's RandomMaskFunc / EquispacedMaskFractionFunc
    with one (center fraction, acceleration) pair, drawn exactly as `fastmri.data.subsample` draws it
    (same RandomState calls in the same order), so that the same seed gives the same mask."""
    fraction = _fraction(kind, acceleration, center_fraction)
    low = round(n * fraction)
    if (low * acceleration >= n and acceleration > 1) or low * acceleration == n:
        raise CenterFractionError(
            fraction, f"its {low} centre lines reach the {n / acceleration:.4g} lines of "
            f"{acceleration:g}x over {n}; expected fewer than 1 / {acceleration:g} of the lines"
        )
    if low == 0:  # fastMRI's package would draw such a mask; sftkd's masks always sample DC
        default = "" if center_fraction is not None else f"fastMRI's default at {acceleration:g}x (0.32 / acc) "
        raise CenterFractionError(fraction, default + _no_center_line(fraction, n))
    rng = np.random.RandomState()
    rng.seed(seed)
    rng.randint(1)  # MaskFunc.choose_acceleration among one pair: fastMRI draws it, so must we
    center = np.zeros(n, dtype=np.float32)
    pad = (n - low + 1) // 2
    center[pad : pad + low] = 1
    if kind == "fastmri-random":
        prob = (n / acceleration - low) / (n - low) if n > low else 0.0
        accel = (rng.uniform(size=n) < prob).astype(np.float32)
    else:
        adjusted = (acceleration * (low - n)) / (low * acceleration - n)
        offset = rng.randint(0, high=round(adjusted))
        accel = np.zeros(n)
        accel[np.around(np.arange(offset, n - 1, adjusted)).astype(np.uint)] = 1.0
        accel = accel.astype(np.float32)
    return np.maximum(center, accel)


def _check_seed(seed: Any) -> int | tuple[int, ...]:
    """A seed is a non-negative integer, or a tuple of them below 2**32 (e.g. seed, epoch, volume, slice)."""
    def ok(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and 0 <= value
    if ok(seed):
        return int(seed)
    if isinstance(seed, tuple) and seed and all(ok(v) and v < 2**32 for v in seed):
        return tuple(int(v) for v in seed)
    raise SftkdError(f"mask seed {seed!r}: expected a non-negative integer")


# --------------------------------------------------------------------------- public API


def make_mask(
    kind: str,
    shape: tuple[int, int],
    acceleration: float,
    seed: int | tuple[int, ...] = 42,
    center_fraction: float | None = None,
    layout: str = "corner",
    axis: int = 0,
) -> np.ndarray:
    """Build a float32 (H, W) 0/1 line mask; see the module docstring for the kinds. `seed` may be
    a tuple of non-negative integers (a mask per sample: seed, epoch, volume, slice)."""
    if kind not in ALL_KINDS:
        raise SftkdError(f"mask kind {kind!r}: expected one of {', '.join(ALL_KINDS)}")
    if layout not in KSPACE_LAYOUTS:
        raise SftkdError(f"mask layout {layout!r}: expected one of {', '.join(KSPACE_LAYOUTS)}")
    if isinstance(axis, bool) or axis not in (0, 1):
        raise SftkdError(f"mask axis {axis!r}: expected 0 (rows) or 1 (columns)")
    seed = _check_seed(seed)
    dims = _check_shape(shape)
    n = dims[axis]
    lines = _check_acceleration(acceleration, n)
    if kind in FASTMRI_KINDS:
        chosen = _fastmri_vector(kind, n, float(acceleration), center_fraction, seed)
    else:
        band = _center_band(n, _center_lines(kind, center_fraction, n, lines, acceleration))
        rng = np.random.default_rng(seed)
        if kind == "random":
            chosen = _random_lines(n, lines, band, rng)
        elif kind == "equispaced":
            chosen = _equispaced_lines(n, lines, band, rng)
        else:
            chosen = _fastmri_lines(n, float(acceleration), band, rng)
    if layout == "corner":
        chosen = np.fft.ifftshift(chosen)
    line = chosen.astype(np.float32)
    mask = np.broadcast_to(line[:, None] if axis == 0 else line[None, :], dims)
    return np.ascontiguousarray(mask, dtype=np.float32)


def acceleration_of(mask: np.ndarray) -> float:
    """Actual acceleration of a 0/1 mask: number of entries / number of sampled entries."""
    sampled = float(np.asarray(mask).sum())
    if sampled <= 0:
        raise SftkdError("mask: expected at least one sampled entry, found none")
    return float(np.asarray(mask).size) / sampled


#: a mask's actual acceleration (entries / sampled entries) may differ from the one it is labelled
#: with by at most this factor either way (fastMRI-style masks only reach theirs on average)
ACCELERATION_TOLERANCE = 1.5


def check_mask_acceleration(mask: np.ndarray, acceleration: float, where: str) -> None:
    """Refuse a mask whose sampling disagrees with its label: all zeros (samples nothing), all ones
    (no undersampling at all), or an actual acceleration more than ACCELERATION_TOLERANCE times
    off `acceleration`. `where` names the mask (file, or file and dataset) in the error."""
    mask = np.asarray(mask)
    sampled = int(np.count_nonzero(mask))
    if sampled == 0:
        raise SftkdError(f"{where}: all zeros (samples nothing); expected a mask sampling about "
                         f"1/{acceleration:g} of k-space for {acceleration:g}x")
    actual = mask.size / sampled
    if sampled == mask.size or not 1 / ACCELERATION_TOLERANCE <= actual / acceleration <= ACCELERATION_TOLERANCE:
        what = "all ones (no undersampling)" if sampled == mask.size else f"samples {sampled} of {mask.size} entries"
        raise SftkdError(f"{where}: {what}, an acceleration of {actual:.2f}x, labelled {acceleration:g}x; "
                         f"expected {acceleration / ACCELERATION_TOLERANCE:.3g}x to {acceleration * ACCELERATION_TOLERANCE:.3g}x")


def dc_index(n: int, layout: str) -> int:
    """Where DC sits along an axis of `n` entries in a k-space `layout`: 0 in the corner layout,
    n // 2 in the centred one (np.fft.fftshift's, so `fft2_np(centered=True)`'s; every mask made
    here samples it)."""
    return n // 2 if layout == "centered" else 0


def check_mask_dc(mask: np.ndarray, layout: str, where: str, declared: str, remedy: str,
                  default_axis: int = 0) -> None:
    """Refuse a mask that does not sample k-space's DC in `layout` (`dc_index` along both axes: the
    DC line of a line mask): most likely a mask made for the other layout, which would silently
    undersample the wrong lines. `where` names the mask, `declared` the layout it is used in
    ('--mask-layout corner'), `remedy` what to do when it samples the other layout's DC instead."""
    mask = np.asarray(mask)
    axis = line_axis(mask, default_axis)

    def at(lay: str) -> str:
        entry = tuple(dc_index(n, lay) for n in mask.shape)
        return f"entry {entry}" if axis is None else f"{('row', 'column')[axis]} {entry[axis]}"

    def samples(lay: str) -> bool:
        return bool(mask[tuple(dc_index(n, lay) for n in mask.shape)] != 0)

    if samples(layout):
        return
    other = "corner" if layout == "centered" else "centered"
    what = f"the DC {'entry' if axis is None else 'line'} of {declared} ({at(layout)})"
    if samples(other):
        raise SftkdError(f"{where}: does not sample {what}; it samples the {other} layout's ({at(other)}): {remedy}")
    raise SftkdError(f"{where}: does not sample {what}, nor the {other} layout's ({at(other)}); expected a mask "
                     "that samples k-space's centre")


def sampled_lines(mask: np.ndarray, axis: int = 0) -> np.ndarray:
    """Indices of the lines along `axis` that are sampled (any non-zero entry on the line)."""
    other = 1 - axis
    return np.flatnonzero(np.asarray(mask).any(axis=other))


def line_axis(mask: np.ndarray, default: int) -> int | None:
    """The axis whose whole lines a 2-D mask samples: 0 when every row is all 0 or all 1 (rows
    sampled, the paper's), 1 when every column is (fastMRI's); `default` when both hold (all ones
    or all zeros); None when neither (a 2-D pattern, e.g. a user's variable-density mask)."""
    sampled = np.asarray(mask) != 0
    whole_rows = bool(np.all(sampled == sampled[:, :1]))
    whole_columns = bool(np.all(sampled == sampled[:1, :]))
    if whole_rows and whole_columns:
        return default
    return 0 if whole_rows else 1 if whole_columns else None


def describe_mask(mask: np.ndarray, default_axis: int) -> dict[str, Any]:
    """What a dataset's manifest and a model card record about a 2-D mask, worked out from the mask
    itself: "axis" of its whole lines (`line_axis`; None when it samples no whole lines), "lines"
    sampled along that axis (None likewise) and the "sampled_fraction" of k-space."""
    axis = line_axis(mask, default_axis)
    return {
        "axis": axis,
        "lines": None if axis is None else int(sampled_lines(mask, axis).size),
        "sampled_fraction": round(float(np.asarray(mask).mean()), 6),
    }


def describe_box(mask: np.ndarray, axis: int) -> dict[str, Any]:
    """`describe_mask` for a super-resolution box mask (the central k-space box: no whole lines):
    its rows and columns as "box", the lines along `axis` and the "sampled_fraction"."""
    sampled = np.asarray(mask) != 0
    box = [int(np.count_nonzero(sampled.any(axis=1))), int(np.count_nonzero(sampled.any(axis=0)))]
    return {"axis": axis, "lines": box[axis], "sampled_fraction": round(float(np.asarray(mask).mean()), 6), "box": box}


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        if "mask" in keys:
            return data["mask"]
        if len(keys) == 1:
            return data[keys[0]]
    raise SftkdError(f"{path}: expected an array named 'mask' or a single array, found {keys}")


def _read_h5(path: Path, transpose: bool = False) -> np.ndarray:
    import h5py

    from sftkd_cli.h5_data import h5_array

    with h5py.File(path, "r") as f:
        link = f.get("mask", getlink=True)  # a 'mask' linked from elsewhere is refused, never followed
        if (link is not None and not isinstance(link, h5py.HardLink)) or isinstance(f.get("mask"), h5py.Dataset):
            array = h5_array(f, "mask", str(path))[()]
        else:
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            names = [n for n in names if not n.split("/")[-1].startswith("#")]
            if len(names) != 1:
                raise SftkdError(
                    f"{path}: expected a dataset named 'mask' or a single dataset, found {names}"
                )
            array = h5_array(f, names[0], str(path))[()]
    array = np.asarray(array)
    # MATLAB v7.3 files store arrays column-major, so h5py sees them transposed.
    return array.T if transpose else array


def _read_mat(path: Path) -> np.ndarray:
    import h5py
    import scipy.io
    from scipy.io.matlab import MatReadError

    if h5py.is_hdf5(path):  # MATLAB v7.3 files are HDF5
        return _read_h5(path, transpose=True)
    # what scipy raises for a file that is not MAT, cut short or damaged (OSError without errno:
    # "could not read bytes"); one that cannot be opened is left to `load_mask`
    try:
        data = scipy.io.loadmat(path)
    except (MatReadError, OSError, ValueError, TypeError, IndexError, KeyError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise SftkdError(f"{path}: not a readable MATLAB .mat file ({_first_clause(exc)}); "
                         "expected a 2-D 0/1 mask") from None
    arrays = {
        k: v
        for k, v in data.items()
        if not k.startswith("__") and isinstance(v, np.ndarray) and v.ndim == 2
        and v.dtype.kind in "biuf"
    }
    if "mask" in arrays:
        return arrays["mask"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    found = [k for k in data if not k.startswith("__")]
    raise SftkdError(
        f"{path}: expected a single 2-D numeric array (or one named 'mask'), found {found}"
    )


def _first_clause(exc: Exception) -> str:
    """An exception's text up to its first sentence or clause (scipy's goes on with advice on
    its own API); its type's name when it has none or is a KeyError (whose text is the key)."""
    text = re.split(r"\n|; |\. ", str(exc), maxsplit=1)[0].strip().rstrip(".")
    return type(exc).__name__ if not text or isinstance(exc, KeyError) else text


#: the first bytes of a NumPy file, and what it is called: suffix -> (signature, name)
_NUMPY_SIGNATURES = {".npy": (b"\x93NUMPY", "a NumPy .npy file"), ".npz": (b"PK", "a NumPy .npz file")}


def _read_numpy(path: Path, suffix: str) -> np.ndarray:
    """A .npy or .npz mask's array; a file of another kind, or of Python objects, is a one-line error."""
    signature, kind = _NUMPY_SIGNATURES[suffix]
    with open(path, "rb") as f:
        if f.read(len(signature)) != signature:
            raise SftkdError(f"{path}: not {kind}; expected a 2-D 0/1 mask")
    try:
        return np.load(path, allow_pickle=False) if suffix == ".npy" else _read_npz(path)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise SftkdError(f"{path}: holds Python objects, not numbers; expected a 2-D 0/1 mask") from None


def _read_mask_file(path: Path) -> np.ndarray:
    """Read the raw array from a mask file according to its suffix."""
    suffix = path.suffix.lower()
    if suffix in _NUMPY_SIGNATURES:
        return _read_numpy(path, suffix)
    if suffix == ".mat":
        return _read_mat(path)
    import h5py

    if not h5py.is_hdf5(path):
        raise SftkdError(f"{path}: not an HDF5 file; expected a 2-D 0/1 mask")
    return _read_h5(path)


def check_mask_values(array: np.ndarray, where: str) -> None:
    """Refuse a mask that is not real, finite and 0/1 (NaN would count as sampled), naming `where`
    (a mask file, or a prepared file and its dataset)."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise SftkdError(f"{where}: expected a real numeric mask, found dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise SftkdError(f"{where}: expected finite mask values, found NaN or inf")
    values = np.unique(array)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:6].astype(float))
        raise SftkdError(f"{where}: expected mask values in {{0, 1}}, found {shown}")


def load_mask(path: str | Path, shape: tuple[int, int] | None = None, line: bool = False) -> np.ndarray:
    """Load a 2-D 0/1 mask from .npy, .npz, .mat or .h5 and return it as float32.

    Checks: the file exists and is readable, the array is 2-D, real, finite, all values are 0 or 1,
    and its shape equals `shape` when given. The mask is returned as stored (no layout change).
    With `line`, a fastMRI 1-D mask vector is accepted too: (W,), (1, W) or (W, 1), returned as a
    (1, W) vector of sampled k-space columns (`expand_line_mask` broadcasts it over the rows).
    """
    path = Path(path)
    if path.suffix.lower() not in MASK_SUFFIXES:
        raise SftkdError(f"{path}: expected a mask file ending in {', '.join(MASK_SUFFIXES)}")
    if not path.is_file():
        raise SftkdError(f"{path}: mask file not found")
    try:
        array = np.asarray(_read_mask_file(path))
    except SftkdError:
        raise
    except Exception as exc:  # corrupt or unreadable file: report it in one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SftkdError(f"{path}: cannot read mask file ({reason})") from exc
    if line and (array.ndim == 1 or (array.ndim == 2 and 1 in array.shape)):
        array = array.reshape(1, -1)
    if array.ndim != 2:
        expected = "a 2-D mask or a 1-D vector of columns" if line else "a 2-D mask"
        raise SftkdError(f"{path}: expected {expected}, found shape {tuple(array.shape)}")
    check_mask_values(array, str(path))
    if shape is not None:
        expected = _check_shape(shape)
        if tuple(array.shape) != expected:
            raise SftkdError(
                f"{path}: expected mask shape {expected}, found {tuple(array.shape)}"
            )
    return np.ascontiguousarray(array, dtype=np.float32)


def expand_line_mask(mask: np.ndarray, size: tuple[int, int], where: str) -> np.ndarray:
    """A (1, W) column vector (fastMRI's 1-D masks, see `load_mask(line=True)`) broadcast to the
    (H, W) image size; a full (H, W) mask as it is. Any other shape is an error naming `where`."""
    mask = np.asarray(mask)
    h, w = int(size[0]), int(size[1])
    if mask.shape == (1, w) and h != 1:
        return np.ascontiguousarray(np.broadcast_to(mask, (h, w)), dtype=np.float32)
    if mask.shape != (h, w):
        raise SftkdError(f"{where}: shape {tuple(mask.shape)}, expected {(h, w)} to match the k-space "
                         f"or a vector of its {w} columns")
    return mask


def undersample(
    image: np.ndarray, mask: np.ndarray, centered: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate an acquisition: (masked orthonormal k-space complex64, zero-filled |IFFT| float32).

    `image` is real (H, W) or (S, H, W); `mask` is a 0/1 (H, W) array in the layout given by
    `centered` (False = corner, the paper's layout).
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim not in (2, 3) or image.dtype.kind not in "biuf":
        raise SftkdError(
            f"image: expected a real (H, W) or (S, H, W) array, found shape {tuple(image.shape)} "
            f"dtype {image.dtype}"
        )
    if mask.ndim != 2 or tuple(mask.shape) != tuple(image.shape[-2:]):
        raise SftkdError(
            f"mask: expected shape {tuple(image.shape[-2:])} to match the image, "
            f"found {tuple(mask.shape)}"
        )
    if not np.all(np.isin(mask, (0, 1))):
        raise SftkdError("mask: expected values in {0, 1}")
    kspace = fft2_np(image.astype(np.float64), centered=centered) * mask.astype(np.float64)
    zf = np.abs(ifft2_np(kspace, centered=centered))
    return kspace.astype(np.complex64), zf.astype(np.float32)
