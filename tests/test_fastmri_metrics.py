"""Metrics in fastMRI's conventions (issue 16, item 4), with the `fastmri` package's own
functions as oracles: its evaluate.py (mse, nmse, psnr, ssim, Metrics) must agree with
`metrics.score_fastmri` / `summarise_volumes` and with `sftkd evaluate --convention fastmri` to 1e-6.

The oracle is loaded from fastmri/evaluate.py by file path: `import fastmri.evaluate` pulls in
fastmri.data (torchvision, tqdm, pandas...), which its metric functions never use, so that
subpackage is stubbed while the file loads. Skipped without the package; CI installs it with
`pip install --no-deps fastmri==0.3.0 runstats==2.0.0` (runstats only for the std oracle).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import types
from pathlib import Path

import complex_data
import h5py
import numpy as np
import pytest

from sftkd_cli.errors import SftkdError
from sftkd_cli.metrics import (FASTMRI_METRIC_NAMES, center_crop, magnitude, score_fastmri, score_slices, score_volume,
                               summarise_volumes)

complex_dataset = complex_data.complex_dataset  # the fixtures, by name
complex_teacher = complex_data.complex_teacher

ORACLE_SKIP = "needs the fastmri package (pip install --no-deps fastmri==0.3.0 runstats==2.0.0)"


def fastmri_evaluate() -> types.ModuleType:
    """fastmri/evaluate.py loaded by path (fastmri.data stubbed while it loads; runstats too when
    missing); skips the test when the fastmri package is not installed."""
    spec = importlib.util.find_spec("fastmri")
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / "evaluate.py").is_file():
        pytest.skip(ORACLE_SKIP)
    stubs = {"fastmri.data": types.ModuleType("fastmri.data"),
             "fastmri.data.transforms": types.ModuleType("fastmri.data.transforms")}
    stubs["fastmri.data"].transforms = stubs["fastmri.data.transforms"]  # type: ignore[attr-defined]
    if importlib.util.find_spec("runstats") is None:
        stubs["runstats"] = types.ModuleType("runstats")
        stubs["runstats"].Statistics = object  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)  # only these keys: restoring all of sys.modules would unload numpy parts
    try:
        loader = importlib.util.spec_from_file_location("fastmri_evaluate_oracle", Path(spec.origin).parent / "evaluate.py")
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def oracle(name: str, gt: np.ndarray, pred: np.ndarray) -> float:
    """fastMRI's METRIC_FUNCS[name] on float64 copies (its ssim returns a 1-element array)."""
    value = fastmri_evaluate().METRIC_FUNCS[name](gt.astype(np.float64), pred.astype(np.float64))
    return float(np.asarray(value).reshape(-1)[0])


def _volumes(seed: int = 0, shape: tuple[int, int, int] = (4, 24, 20)) -> tuple[np.ndarray, np.ndarray]:
    """A positive float32 ground truth whose slices differ in energy, and a noisy prediction."""
    rng = np.random.default_rng(seed)
    gt = rng.random(shape).astype(np.float32) * np.linspace(0.2, 1.0, shape[0], dtype=np.float32)[:, None, None]
    pred = (gt + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return gt, pred


# ----------------------------------------------------------------------------- the functions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_volume_metrics_agree_with_fastmri(seed):
    gt, pred = _volumes(seed)
    ours = score_fastmri(gt, pred)
    assert tuple(ours) == FASTMRI_METRIC_NAMES
    for name in FASTMRI_METRIC_NAMES:
        assert ours[name] == pytest.approx(oracle(name, gt, pred), abs=1e-6, rel=1e-6), name
        # fed fastMRI's float32 arrays as they are, its float32 arithmetic stays within 1e-6 too
        raw = float(np.asarray(fastmri_evaluate().METRIC_FUNCS[name](gt, pred)).reshape(-1)[0])
        assert ours[name] == pytest.approx(raw, rel=1e-6), name


def test_nmse_is_one_ratio_over_the_volume_not_a_mean_of_slice_ratios():
    gt, pred = _volumes(3)
    fastmri, paper = score_fastmri(gt, pred)["NMSE"], score_volume(gt, pred)["NMSE"]
    expected = float(np.sum((gt.astype(np.float64) - pred) ** 2) / np.sum(gt.astype(np.float64) ** 2))
    assert fastmri == pytest.approx(expected, rel=1e-12)
    assert paper == pytest.approx(fastmri, rel=1e-12)  # the paper convention's per-volume NMSE is that ratio too
    slices = score_slices(gt, pred)["NMSE"]
    assert abs(fastmri - slices.mean()) > 1e-3  # the slices' energies differ: not the mean of the slice ratios
    assert fastmri == pytest.approx(oracle("NMSE", gt, pred), rel=1e-9)


def test_psnr_and_ssim_use_the_volume_maximum():
    gt, pred = _volumes(4)
    r = float(gt.max())
    mse = float(np.mean((gt.astype(np.float64) - pred) ** 2))
    assert score_fastmri(gt, pred)["PSNR"] == pytest.approx(10 * np.log10(r**2 / mse), rel=1e-12)
    scaled = score_fastmri(gt * 2, pred * 2)  # PSNR and SSIM are scale-free with data_range = gt.max()
    assert scaled["PSNR"] == pytest.approx(score_fastmri(gt, pred)["PSNR"], rel=1e-9)
    assert scaled["SSIM"] == pytest.approx(oracle("SSIM", gt * 2, pred * 2), abs=1e-6)


def test_summary_is_mean_and_sample_std_over_volumes_as_fastmri_metrics():
    runstats = pytest.importorskip("runstats")
    assert runstats is not None
    metrics = fastmri_evaluate().Metrics(fastmri_evaluate().METRIC_FUNCS)
    per_volume = []
    for seed in range(4):
        gt, pred = _volumes(seed, (3, 16, 14))
        metrics.push(gt.astype(np.float64), pred.astype(np.float64))
        per_volume.append(score_fastmri(gt, pred))
    summary = summarise_volumes(per_volume)
    for name in FASTMRI_METRIC_NAMES:
        assert summary[name]["mean"] == pytest.approx(float(np.asarray(metrics.means()[name]).reshape(-1)[0]), abs=1e-6)
        assert summary[name]["std"] == pytest.approx(float(np.asarray(metrics.stddevs()[name]).reshape(-1)[0]), abs=1e-6)
    assert np.isnan(summarise_volumes(per_volume[:1])["PSNR"]["std"])  # one volume: no sample std


def test_center_crop_and_magnitude():
    image = np.arange(2 * 7 * 6, dtype=np.float32).reshape(2, 7, 6)
    cropped = center_crop(image, (4, 3))
    assert cropped.shape == (2, 4, 3) and cropped[0, 0, 0] == image[0, 1, 1]  # start (7-4)//2, (6-3)//2
    with pytest.raises(SftkdError, match="centre-crop"):
        center_crop(image, (8, 3))
    two = np.stack([np.full((3, 3), 3.0, np.float32), np.full((3, 3), -4.0, np.float32)])
    assert np.array_equal(magnitude(two), np.full((3, 3), 5.0, np.float32))
    assert magnitude(two[:1]) is not None and np.array_equal(magnitude(two[:1]), two[0])


# ----------------------------------------------------------------------------- sftkd evaluate --convention fastmri


def test_evaluate_fastmri_convention_agrees_with_the_oracle_on_a_complex_run(complex_teacher):
    """Scores from recon.h5 (the cropped magnitudes) and the dataset's magnitude targets, fed to
    fastMRI's functions, equal per_volume.csv; the summary equals the mean/std over volumes."""
    from sftkd_cli.data.dataset import SliceDataset

    data, runs = complex_teacher
    run = runs / "teacher"
    out = run / "eval-fastmri"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["convention"] == "fastmri" and set(metrics["metrics"]) == set(FASTMRI_METRIC_NAMES)
    rows = list(csv.DictReader((out / "per_volume.csv").open()))
    dataset = SliceDataset(data, "val", 4)
    targets: dict[str, list[np.ndarray]] = {}
    for i in range(len(dataset)):
        item = dataset[i]
        targets.setdefault(item["volume"], []).append(item["target_mag"][0].numpy())
    with h5py.File(out / "recon.h5", "r") as recon:
        assert len(rows) == len(recon) == len(targets) == 2
        for row in rows:
            pred, gt = recon[row["volume"]][()], np.stack(targets[row["volume"]])
            assert pred.shape == gt.shape == (int(row["slices"]), 24, 24)  # cropped to reconstruction_esc's size
            for name in FASTMRI_METRIC_NAMES:
                assert float(row[name]) == pytest.approx(oracle(name, gt, pred), abs=1e-6, rel=1e-6), name
    for name in FASTMRI_METRIC_NAMES:
        values = [float(row[name]) for row in rows]
        assert metrics["metrics"][name]["mean"] == pytest.approx(np.mean(values), abs=1e-9)
        assert metrics["metrics"][name]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9)
    assert (run / "metrics.json").exists() and (run / "per_slice.csv").exists()  # the paper scores stay beside


def test_evaluate_fastmri_convention_on_magnitude_data_scores_whole_volumes(tiny_dataset, tmp_path):
    from cli_helpers import sftkd

    runs = tmp_path / "runs"
    sftkd("train-teacher", "--model", "D2C2", "--name", "mag", f"data.path={tiny_dataset}", f"run.dir={runs}",
          "train.device=cpu", "train.epochs=1", "train.batch_size=2", "train.threads=1", "eval.latency_slices=1")
    sftkd("evaluate", runs / "mag", "--device", "cpu")
    paper = (runs / "mag" / "metrics.json").read_bytes()
    sftkd("evaluate", runs / "mag", "--device", "cpu", "--convention", "fastmri")
    assert (runs / "mag" / "metrics.json").read_bytes() == paper  # the paper scores are left as they were
    out = runs / "mag" / "eval-fastmri"
    with h5py.File(runs / "mag" / "recon.h5", "r") as recon, h5py.File(out / "recon.h5", "r") as cropped:
        for row in csv.DictReader((out / "per_volume.csv").open()):
            assert np.array_equal(recon[row["volume"]][()], cropped[row["volume"]][()])  # no crop: target size
    bad = sftkd("evaluate", runs / "mag", "--device", "cpu", "--convention", "nyu", ok=False)
    assert "--convention 'nyu'" in bad.output


def _refuse(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def test_a_one_volume_evaluation_writes_json_any_parser_reads_and_compare_reads_it(tiny_dataset, tmp_path):
    """The std over one volume is NaN: metrics.json holds null there, not Python's NaN token."""
    from cli_helpers import sftkd

    runs = tmp_path / "runs"
    sftkd("train-teacher", "--model", "D2C2", "--name", "one", f"data.path={tiny_dataset}", f"run.dir={runs}",
          "train.device=cpu", "train.epochs=1", "train.batch_size=3", "train.threads=1", "eval.latency_slices=0")
    sftkd("evaluate", runs / "one", "--device", "cpu", "--convention", "fastmri", "--no-recon")
    info = json.loads((runs / "one" / "eval-fastmri" / "metrics.json").read_text(), parse_constant=_refuse)
    assert info["dataset"]["volumes"] == 1 and info["metrics"]["PSNR"]["std"] is None
    assert isinstance(info["metrics"]["PSNR"]["mean"], float)
    table = sftkd("compare", runs / "one", "--convention", "fastmri", "--format", "csv").stdout
    rows = list(csv.DictReader(table.splitlines()))
    assert rows[-1]["run"] == "one" and rows[-1]["PSNR_std"] == "nan"
    assert float(rows[-1]["PSNR_mean"]) == pytest.approx(info["metrics"]["PSNR"]["mean"])
