"""fastMRI single-coil raw k-space (Zbontar et al., 2018): ROOT/**/*.h5, one volume per file.

Each file holds `kspace` complex64 (slices, H, W), centred (fftshifted) k-space (knee: 640 x 368
and a few other widths), `reconstruction_esc` float32 (slices, 320, 320), fastMRI's magnitude
target, and attrs `max`, `norm`, `acquisition` (CORPD_FBK, CORPDFS_FBK), `patient_id`.

Listing reads each file's header only (shapes, dtypes, attrs), never its k-space. Refused in one
line: multi-coil files (4-D kspace or `reconstruction_rss`: not supported yet), anything else that
is not this layout. Test and challenge files (no `reconstruction_esc`, undersampled k-space with its
`mask`, as unpacking fastMRI's tarballs puts singlecoil_test_v2/ beside singlecoil_train/) have no
target to learn from: they are skipped and counted in one line (`note`); a file without the target
that is not one (no `mask`, not under a folder named with test or challenge as a word) is refused, as is a ROOT
holding test files only. `--acquisition` keeps only files of those acquisitions.

Split by file (the volume id is the file name without .h5): files under a folder whose name ends
in `_train` / `_val` (fastMRI's singlecoil_train/, singlecoil_val/) are train / val; other files are
split by a seeded --val-fraction (default 25 %). With --val or --val-fraction, val is drawn from the
training files and the `_val` folder becomes test (fastMRI's own test set has no fully sampled
k-space), as ACDC's testing/ folder.

Sampling as fastMRI's SliceDataset, seeded by --seed: `volume_sample_rate` keeps round(n x rate)
files (at least one) of a seeded permutation of the sorted volume ids of each split folder (train,
val and unsorted files each on their own, as fastMRI samples each split); `sample_rate` keeps
round(N x rate) of all N slices in a seeded permutation (volumes left without slices are dropped).
Only one of the two may be below 1, as in fastMRI.
"""

from __future__ import annotations

import re

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sftkd_cli.choices import MIN_SIZE
from sftkd_cli.data.sources.base import (
    Piece, Source, SourceFile, SplitRequest, check_root, check_volume_id, regular_files, split_groups,
)
from sftkd_cli.errors import SftkdError, counted
from sftkd_cli.files import display_path

#: fastMRI's single-coil target (the magnitude image, centre-cropped)
TARGET = "reconstruction_esc"
#: fastMRI's multi-coil target: its presence marks a multi-coil file
MULTICOIL_TARGET = "reconstruction_rss"
#: the most bytes of k-space one file may declare (a knee volume is ~70 MB; a brain one ~300 MB)
MAX_FILE_KSPACE_BYTES = 8 << 30
_SPLIT_SUFFIXES = {"_train": "train", "_val": "val"}


@dataclass(frozen=True)
class FastMRIInfo:
    """What listing read from one file's header."""

    slices: int
    shape: tuple[int, int]
    target_shape: tuple[int, int]
    max: float
    acquisition: str


def _attr_text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


#: the words of a folder name: runs of letters (split where CamelCase starts a word) and of digits
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _test_folder(name: str) -> bool:
    """A folder named as fastMRI's test / challenge folders are: test or challenge as one of its
    words (singlecoil_test_v2, knee_challenge, test2, TestSet; not latest_scans or contest)."""
    return any(word.lower() in ("test", "challenge") for word in _WORDS.findall(name))


def _is_test_file(f: Any, folders: tuple[str, ...]) -> bool:
    """A fastMRI test / challenge file (asked of a file without a target): it holds the sampling
    `mask` of its undersampled k-space, or one of `folders` (its folders under ROOT) is named like
    singlecoil_test_v2/ or singlecoil_challenge/."""
    return "mask" in f or any(_test_folder(part) for part in folders)


def read_info(path: Path, root: Path) -> FastMRIInfo | None:
    """Check one file's layout from its header (no k-space is read) and return its facts; None for
    a test or challenge file (no target: `_is_test_file`, judged by the folders under `root`)."""
    import h5py

    from sftkd_cli.h5_data import check_in_file

    where = display_path(path)
    try:
        with h5py.File(path, "r") as f:
            for name in ("kspace", TARGET, MULTICOIL_TARGET, "mask"):  # links are refused before h5py follows one
                check_in_file(f, name, where)
            kspace = f.get("kspace")
            if MULTICOIL_TARGET in f or (isinstance(kspace, h5py.Dataset) and kspace.ndim == 4):
                raise SftkdError(f"{where}: a multi-coil fastMRI file (kspace {tuple(kspace.shape) if kspace is not None else '?'}"
                                 f"{', ' + MULTICOIL_TARGET if MULTICOIL_TARGET in f else ''}); multi-coil data is not supported "
                                 "yet: expected single-coil files (kspace (slices, H, W) and reconstruction_esc)")
            if not isinstance(kspace, h5py.Dataset) or kspace.ndim != 3 or kspace.dtype.kind != "c":
                found = "none" if kspace is None else f"{getattr(kspace, 'shape', '?')} {getattr(kspace, 'dtype', '')}"
                raise SftkdError(f"{where}: kspace {found}; expected a complex (slices, H, W) dataset (fastMRI single-coil)")
            target = f.get(TARGET)
            if target is None and _is_test_file(f, path.relative_to(root).parent.parts):
                return None
            if not isinstance(target, h5py.Dataset):
                raise SftkdError(no_target(where))
            slices, h, w = (int(s) for s in kspace.shape)
            if target.ndim != 3 or int(target.shape[0]) != slices or target.dtype.kind != "f":
                raise SftkdError(f"{where}: {TARGET} {tuple(target.shape)} {target.dtype}; expected real "
                                 f"({slices}, h, w), one image per k-space slice")
            th, tw = int(target.shape[1]), int(target.shape[2])
            if slices < 1 or min(h, w, th, tw) < MIN_SIZE:  # training and SSIM need no less
                raise SftkdError(f"{where}: kspace {tuple(kspace.shape)}, {TARGET} {tuple(target.shape)}; "
                                 f"expected slices of at least {MIN_SIZE} x {MIN_SIZE}")
            if slices * h * w * 8 > MAX_FILE_KSPACE_BYTES:
                raise SftkdError(f"{where}: kspace {tuple(kspace.shape)} declares more than "
                                 f"{MAX_FILE_KSPACE_BYTES >> 30} GiB; expected one fastMRI volume")
            vmax = float(f.attrs["max"]) if "max" in f.attrs else None
            acquisition = _attr_text(f.attrs.get("acquisition", ""))
    except SftkdError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise SftkdError(f"{where}: cannot read as a fastMRI file ({exc}); expected HDF5 with kspace and {TARGET}") from None
    if vmax is not None and not (np.isfinite(vmax) and vmax > 0):
        raise SftkdError(f"{where}: attribute max {vmax!r}; expected a positive number (the max of {TARGET})")
    return FastMRIInfo(slices, (h, w), (th, tw), vmax if vmax is not None else 0.0, acquisition)


def no_target(where: str) -> str:
    """The refusal of a file (or a ROOT of test files only) without fastMRI's fully sampled target."""
    return (f"{where}: no {TARGET} (a fastMRI test file holds undersampled k-space only); "
            "expected fully sampled single-coil training or validation files")


def _split_folder(path: Path, root: Path) -> str | None:
    """'train'/'val' for a file under a folder named like fastMRI's singlecoil_train/ or _val/."""
    for parent in path.relative_to(root).parents:
        for suffix, split in _SPLIT_SUFFIXES.items():
            if parent.name.endswith(suffix):
                return split
    return None


class FastMRISource(Source):
    """fastMRI single-coil files (see module docstring); prepared as complex data."""

    name = "fastmri"
    values = "complex"

    def __init__(self, root: Path, acquisition: str | None = None, sample_rate: float = 1.0,
                 volume_sample_rate: float = 1.0) -> None:
        super().__init__(root)
        self.acquisitions = tuple(a.strip() for a in (acquisition or "").split(",") if a.strip())
        self.sample_rate = float(sample_rate)
        self.volume_sample_rate = float(volume_sample_rate)
        for flag, rate in (("--sample-rate", self.sample_rate), ("--volume-sample-rate", self.volume_sample_rate)):
            if not 0 < rate <= 1:
                raise SftkdError(f"{flag} {rate:g}: expected a number in (0, 1]")
        if self.sample_rate < 1 and self.volume_sample_rate < 1:
            raise SftkdError("--sample-rate and --volume-sample-rate: give one or the other (as fastMRI), not both")
        self.info: dict[str, FastMRIInfo] = {}
        self._listed: dict[str, Any] = {}
        self._test_files: list[str] = []

    def options(self) -> dict[str, Any]:
        return {**super().options(), "acquisition": ",".join(self.acquisitions) or None,
                "sample_rate": self.sample_rate, "volume_sample_rate": self.volume_sample_rate}

    def details(self) -> dict[str, Any]:
        return {"layout": "fastMRI single-coil ROOT/**/*.h5 (kspace, reconstruction_esc)", **self._listed}

    def files(self) -> list[SourceFile]:
        """The single-coil files (headers checked), filtered by acquisition."""
        root = check_root(self.root)  # type: ignore[arg-type]
        paths = regular_files(root.rglob("*.h5"))
        if not paths:
            raise SftkdError(f"{display_path(root)}: no .h5 files found; expected fastMRI single-coil files "
                             "(e.g. singlecoil_train/file1000001.h5)")
        out: list[SourceFile] = []
        seen: dict[str, Path] = {}
        skipped: dict[str, int] = {}
        self._test_files = []
        for path in paths:
            info = read_info(path, root)
            if info is None:
                self._test_files.append(path.relative_to(root).as_posix())
                continue
            if self.acquisitions and info.acquisition not in self.acquisitions:
                skipped[info.acquisition or "(none)"] = skipped.get(info.acquisition or "(none)", 0) + 1
                continue
            volume = check_volume_id(path.name[: -len(".h5")], display_path(path))
            if volume in seen:
                raise SftkdError(f"{display_path(path)}: volume id {volume!r} also used by {display_path(seen[volume])}; "
                                 "expected unique file names")
            seen[volume] = path
            file = SourceFile(path, path.relative_to(root).as_posix(), volume, volume, None, _split_folder(path, root) or "")
            self.info[file.rel] = info
            out.append(file)
        if not out and not skipped:
            raise SftkdError(no_target(f"{display_path(root)}: {self._test_folders()}"))
        if not out:
            found = ", ".join(f"{k} ({n})" for k, n in sorted(skipped.items()))
            raise SftkdError(f"{display_path(root)}: no file of acquisition {', '.join(self.acquisitions)}; "
                             f"found {found}")
        self._listed = {"files": len(out), "skipped_acquisitions": skipped, "skipped_test_files": len(self._test_files)}
        return out

    def _test_folders(self) -> str:
        """The skipped test files in words: '12 test files (singlecoil_test_v2/...)'."""
        folders = sorted({rel.rpartition("/")[0] or "." for rel in self._test_files})
        named = ", ".join(f"{folder}/..." for folder in folders[:3]) + (", ..." if len(folders) > 3 else "")
        return f"{counted(len(self._test_files), 'test file')} ({named})"

    def note(self) -> str:
        """'skipped 12 test files without a target (singlecoil_test_v2/...)' after `files()`; '' when none."""
        if not self._test_files:
            return ""
        return f"skipped {self._test_folders()} without a target ({TARGET}): fastMRI test data holds undersampled k-space only"

    def sample_volumes(self, files: list[SourceFile], seed: int = 42) -> list[SourceFile]:
        """The files kept by the seeded `volume_sample_rate` (all of them at 1), drawn in each split
        folder (`_train`, `_val`, the others) on its own, as fastMRI samples each split's dataset, and
        at least one file of each: a val folder never vanishes (a train file would become val)."""
        if self.volume_sample_rate >= 1:
            return files
        keep: set[str] = set()
        for folder in sorted({f.folder for f in files}):
            ids = sorted(f.volume for f in files if f.folder == folder)
            count = max(1, round(len(ids) * self.volume_sample_rate))
            keep |= {ids[i] for i in np.random.default_rng([seed, 1]).permutation(len(ids))[:count]}
        self._listed["sampled_files"] = len(keep)
        return [f for f in files if f.volume in keep]

    def slice_rows(self, files: list[SourceFile], seed: int = 42) -> dict[str, np.ndarray]:
        """The source slices each file keeps (sorted), after the seeded `sample_rate` over all slices."""
        counts = [self.info[f.rel].slices for f in files]
        if self.sample_rate >= 1:
            return {f.rel: np.arange(n) for f, n in zip(files, counts)}
        pairs = np.array([(i, s) for i, n in enumerate(counts) for s in range(n)], dtype=np.int64)
        keep = np.random.default_rng([seed, 2]).permutation(len(pairs))[: round(len(pairs) * self.sample_rate)]
        if len(keep) == 0:
            raise SftkdError(f"--sample-rate {self.sample_rate:g}: keeps none of the {len(pairs)} slices")
        chosen = pairs[np.sort(keep)]
        return {f.rel: np.sort(chosen[chosen[:, 0] == i, 1]) for i, f in enumerate(files)}

    def split_pieces(self, pieces: list[Piece], request: SplitRequest) -> dict[str, str]:
        """Files of a `_val` folder are val (test when val is asked for explicitly); the others are
        split by group (val drawn from them when there is no `_val` folder or it is asked for)."""
        val_folder = {p.file.group for p in pieces if p.file.folder == "val"}
        explicit_val = bool(request.val) or request.val_fraction is not None
        if val_folder and not explicit_val:
            fixed, default_val = {g: "val" for g in val_folder}, 0.0
        else:
            fixed, default_val = {g: "test" for g in val_folder}, self.default_val_fraction
        by_group = split_groups([p.file.group for p in pieces], fixed, request, default_val)
        return {p.volume: by_group[p.file.group] for p in pieces}
