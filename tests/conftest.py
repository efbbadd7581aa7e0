"""Shared test fixtures: tiny NIfTI phantoms written with nibabel, and a tiny prepared dataset.

- `phantom_volume(shape, seed)`: a positive float32 3-D volume (an ellipse whose brightness
  changes from slice to slice, plus a little noise; zero background).
- `write_nifti(path, data, zooms)`: write an array as .nii/.nii.gz (parents created).
- `acdc_tree`, `mrbrains18_tree`, `mrbrains13_tree`: tiny trees in the exact public layouts
  (images plus the label / 4-D / orig files that must never be used).
- fixture `nifti_writer`: all of the above, for tests (test modules do not import conftest).
- fixture `fake_gpu`: torch.cuda's streams and graphs stood in for on the CPU, so the CUDA-graph
  code paths run here (tests/fake_cuda.py; yields its `FakeCuda`).
- fixture `tiny_dataset` (session scope, treat as read-only): a prepared dataset folder from
  5 phantom volumes (28x24x3 -> 16x16), accelerations 4 and 5, splits train 3 / val 1 / test 1.

Devices: every test runs on the CPU unless it is marked `@pytest.mark.cuda`.
- Unmarked tests (almost all): for the whole session `torch.cuda.is_available()` reads False
  and `torch.cuda.device_count()` 0 in the test process, so `auto` (training, evaluate, bench)
  means the CPU even on a GPU machine. Their exact comparisons (resume == uninterrupted,
  exported file == checkpoint, one process == two) are CPU guarantees. Tests that start
  `sftkd` in a subprocess (kill -9, torchrun) do not inherit this and pass `train.device=cpu`;
  in-process tests whose claim is CPU-only also say `train.device=cpu` / `--device cpu`.
- `@pytest.mark.cuda` tests see the real CUDA functions and are skipped without a GPU. A
  module- or session-scoped fixture still runs under the CPU default, so these tests build
  what they need themselves.
- `@pytest.mark.nilearn` tests need the optional nilearn package (the demo template) and are
  skipped without it.

Ctrl-C: tests press it (SIGINT) in this process and in `sftkd` subprocesses. A pytest started
in the background (`cmd &` in a script) inherits SIGINT ignored, which sftkd keeps (a background
job is not stopped by the terminal's Ctrl-C): the session sets Python's default handler again.

Layout cache: the session measures its memory layouts (train.channels_last auto) into its own
temporary cache folder ($SFTKD_CACHE_DIR, shared by xdist workers and subprocesses, removed at
the end), never into the user's cache, so every run in the session makes the same choice.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

if TYPE_CHECKING:  # imported by the fixture that uses it (it imports the training code)
    from fake_cuda import FakeCuda

#: the real CUDA probes, kept before the session hides CUDA from unmarked tests
REAL_CUDA_IS_AVAILABLE = torch.cuda.is_available
REAL_CUDA_DEVICE_COUNT = torch.cuda.device_count


def pytest_configure(config: pytest.Config) -> None:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background (see the module docstring)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU and runs on it (skipped without one)")
    config.addinivalue_line("markers", "nilearn: needs the optional nilearn package (skipped without it)")
    if not hasattr(config, "workerinput"):  # the main process: xdist workers and `sftkd` subprocesses inherit it
        config._sftkd_cache = tempfile.mkdtemp(prefix="sftkd-cache-")
        os.environ["SFTKD_CACHE_DIR"] = config._sftkd_cache


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's layout cache (see the module docstring) goes with the session."""
    if hasattr(config, "_sftkd_cache"):
        shutil.rmtree(config._sftkd_cache, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `cuda` tests without a GPU and `nilearn` tests without nilearn (probed only if used)."""
    wants_cuda = any(item.get_closest_marker("cuda") for item in items)
    has_cuda = wants_cuda and REAL_CUDA_IS_AVAILABLE()
    has_nilearn = importlib.util.find_spec("nilearn") is not None  # found, never imported
    for item in items:
        if item.get_closest_marker("cuda") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if item.get_closest_marker("nilearn") and not has_nilearn:
            item.add_marker(pytest.mark.skip(reason="needs nilearn (pip install 'sftkd[demo]')"))


@pytest.fixture(scope="session", autouse=True)
def _cpu_by_default() -> Iterator[None]:
    """Hide CUDA from the test process for the session (see the module docstring, Devices)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        patch.setattr(torch.cuda, "device_count", lambda: 0)
        yield


@pytest.fixture(autouse=True)
def _real_cuda_if_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `cuda` test sees the real torch.cuda.is_available / device_count."""
    if request.node.get_closest_marker("cuda"):
        monkeypatch.setattr(torch.cuda, "is_available", REAL_CUDA_IS_AVAILABLE)
        monkeypatch.setattr(torch.cuda, "device_count", REAL_CUDA_DEVICE_COUNT)


def phantom_volume(shape: tuple[int, int, int] = (20, 18, 4), seed: int = 0) -> np.ndarray:
    """A positive float32 (X, Y, Z) phantom with zero background, different per seed."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(
        np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij"
    )
    inside = (x / 0.8) ** 2 + (y / 0.7) ** 2 <= 1.0
    core = (x / 0.3) ** 2 + ((y - 0.1) / 0.25) ** 2 <= 1.0
    out = np.zeros(shape, dtype=np.float32)
    for z in range(shape[2]):
        level = 50.0 + 10.0 * z + 5.0 * seed
        img = inside * level + core * (30.0 + 3.0 * z)
        out[:, :, z] = img + inside * rng.uniform(0, 5, size=img.shape)
    return out


def write_nifti(
    path: str | Path, data: np.ndarray, zooms: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> Path:
    """Write `data` as a NIfTI-1 file with the given voxel sizes; returns the path."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms[:3], 1.0])
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))  # zooms come from the affine
    return path


def acdc_tree(root: Path, training=(1, 2, 3), testing=(), shape=(20, 18, 4)) -> Path:
    """ACDC layout: patientNNN_frameXX images (ED, ES), _gt labels, _4d cine and Info.cfg."""
    for folder, ids in (("training", training), ("testing", testing)):
        for pid in ids:
            name = f"patient{pid:03d}"
            d = root / folder / name
            ed, es = 1, 10 + pid
            for frame in (ed, es):
                write_nifti(d / f"{name}_frame{frame:02d}.nii.gz", phantom_volume(shape, seed=pid + frame))
                write_nifti(d / f"{name}_frame{frame:02d}_gt.nii.gz", np.ones(shape, dtype=np.uint8))
            write_nifti(d / f"{name}_4d.nii.gz", np.ones((*shape, 3), dtype=np.float32))
            (d / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    return root


def mrbrains18_tree(root: Path, ids=("1", "4", "5", "7", "14", "070", "148"), shape=(24, 24, 4)) -> Path:
    """MRBrainS18 layout: pre/ holds FLAIR and the T1 / IR registered to it (reg_T1, reg_IR, in
    `shape`) and the native, unregistered T1 / IR (another shape, as in the real data)."""
    native = (shape[0] + 4, shape[1] + 2, shape[2] + 2)
    for i, sid in enumerate(ids):
        d = root / "training" / sid
        for name in ("pre/reg_T1", "pre/FLAIR", "pre/reg_IR"):
            write_nifti(d / f"{name}.nii.gz", phantom_volume(shape, seed=i))
        for name in ("pre/T1", "pre/IR", "orig/T1", "orig/FLAIR"):
            write_nifti(d / f"{name}.nii.gz", phantom_volume(native, seed=i))
        write_nifti(d / "segm.nii.gz", np.ones(shape, dtype=np.uint8))
    return root


def mrbrains13_tree(root: Path, n=5, shape=(24, 24, 4)) -> Path:
    for i in range(1, n + 1):
        d = root / "TrainingData" / str(i)
        for name in ("T1", "T1_IR", "T2_FLAIR", "T1_1mm"):
            write_nifti(d / f"{name}.nii", phantom_volume(shape, seed=i))
        write_nifti(d / "LabelsForTraining.nii", np.ones(shape, dtype=np.uint8))
        write_nifti(d / "LabelsForTesting.nii", np.ones(shape, dtype=np.uint8))
    return root


class _NiftiWriter:
    phantom = staticmethod(phantom_volume)
    write = staticmethod(write_nifti)
    acdc_tree = staticmethod(acdc_tree)
    mrbrains18_tree = staticmethod(mrbrains18_tree)
    mrbrains13_tree = staticmethod(mrbrains13_tree)


@pytest.fixture
def nifti_writer() -> _NiftiWriter:
    """`nifti_writer.phantom(shape, seed)`, `.write(path, data, zooms)`, and the layout builders
    `.acdc_tree(root, training, testing)`, `.mrbrains18_tree(root, ids)`, `.mrbrains13_tree(root, n)`."""
    return _NiftiWriter()


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """`read_only(folder)`: chmod a-w the folder and everything in it (undone afterwards). As root,
    whom chmod does not stop, `os.access` is made to say so too, as it says for a user (the
    writability checks ask it); writes themselves would still succeed there, so tests also check
    that nothing changed."""
    denied: list[Path] = []
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(os.path.abspath(path)) in denied:
            return False
        return real_access(path, mode, *args, **kwargs)

    def make(folder: Path) -> None:
        for path in (folder, *folder.rglob("*")):
            path.chmod(path.stat().st_mode & ~0o222)
            denied.append(Path(os.path.abspath(path)))
        if real_access(folder, os.W_OK):  # root
            monkeypatch.setattr(os, "access", access)

    yield make
    for path in denied:
        path.chmod(path.stat().st_mode | 0o200)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """GraphedStep and graphed_inference run on the CPU (see tests/fake_cuda.py); returns the FakeCuda."""
    from fake_cuda import install

    return install(monkeypatch)


@pytest.fixture(scope="session")
def prepared_like_tiny(tiny_dataset: Path) -> Callable[..., Path]:
    """`prepared_like_tiny(out, **changes)`: the tiny dataset's raw volumes prepared again into
    `out` at acceleration (or scale) 4 with `changes` to its options (task="sr",
    mask_layout="centered", ...); returns `out`."""
    from sftkd_cli.data.options import PrepareOptions
    from sftkd_cli.data.prepare import prepare_dataset
    from sftkd_cli.data.sources import NiftiSource

    def prepare(out: Path, **changes: object) -> Path:
        options = PrepareOptions(size=(16, 16), accelerations=(4.0,), val=("vol1",), test=("vol3",), **changes)  # type: ignore[arg-type]
        prepare_dataset(NiftiSource(tiny_dataset.parent / "raw"), out, options)
        return out

    return prepare


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared dataset (read-only): volumes vol0..vol4, 16x16, acc 4 and 5."""
    from sftkd_cli.data.options import PrepareOptions
    from sftkd_cli.data.prepare import prepare_dataset
    from sftkd_cli.data.sources import NiftiSource

    base = tmp_path_factory.mktemp("tiny_dataset")
    for i in range(5):
        write_nifti(base / "raw" / f"vol{i}.nii.gz", phantom_volume((28, 24, 3), seed=i))
    options = PrepareOptions(size=(16, 16), accelerations=(4.0, 5.0), val=("vol1",), test=("vol3",))
    prepare_dataset(NiftiSource(base / "raw"), base / "data", options)
    return base / "data"
