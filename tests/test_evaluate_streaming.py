"""`sftkd evaluate` holds one volume at a time: each volume is scored and written into recon.h5
as soon as its last slice is reconstructed, then let go; an evaluation that fails midway leaves
the previous results as they were (CPU)."""

from __future__ import annotations

import errno
import hashlib
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cli_helpers import sftkd
import sftkd_cli.evaluate as evaluate_mod
import sftkd_cli.scoring as scoring
from sftkd_cli.evaluate import evaluate_run

torch.set_num_threads(1)

SLICES_PER_VOLUME = 3  # tiny_dataset's train split: 9 slices in 3 volumes


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    sftkd("train-teacher", "--model", "D2C2", "--name", "t", f"data.path={tiny_dataset}", f"run.dir={runs}",
          "train.epochs=1", "train.batch_size=3", "train.threads=1", "train.device=cpu", "eval.latency_slices=0")
    return runs / "t"


class SpiedModel:
    """The evaluated model, recording at each call how many slice images evaluate holds (of those
    `scored_images` made, weak references) and how many volumes were scored; raises at call `fail_at`."""

    def __init__(self, model, spies: Spies, fail_at: int | None = None) -> None:
        self.model, self.spies, self.fail_at = model, spies, fail_at
        self.calls: list[tuple[int, int]] = []  # (slice images alive, score_slices calls) at each call

    def __call__(self, zf, kspace, mask):
        if len(self.calls) == self.fail_at:
            raise RuntimeError("the model failed")
        self.calls.append((sum(ref() is not None for ref in self.spies.images), self.spies.scored))
        return self.model(zf, kspace, mask)


class Spies:
    """What `_spy` records: the model (once evaluate made it), the reconstructed slice images, the scoring."""

    def __init__(self) -> None:
        self.model: SpiedModel | None = None
        self.images: list[weakref.ref] = []
        self.scored = 0


def _spy(monkeypatch, fail_at: int | None = None) -> Spies:
    """Wrap the model evaluate runs in a SpiedModel, and spy on scored_images and score_slices."""
    spies = Spies()
    real_graphed, real_score, real_images = (evaluate_mod.graphed_reconstructor, scoring.score_slices,
                                             evaluate_mod.scored_images)

    def graphed(model, *args, **kwargs):
        runner, flag = real_graphed(model, *args, **kwargs)
        spies.model = SpiedModel(runner, spies, fail_at)
        return spies.model, flag

    def score_slices(target, pred):
        spies.scored += 1
        return real_score(target, pred)

    def scored_images(item, pred, convention):
        images = real_images(item, pred, convention)
        spies.images.append(weakref.ref(images[2]))
        return images

    monkeypatch.setattr(evaluate_mod, "graphed_reconstructor", graphed)
    monkeypatch.setattr(scoring, "score_slices", score_slices)
    monkeypatch.setattr(evaluate_mod, "scored_images", scored_images)
    return spies


def test_evaluate_holds_one_volume_at_a_time(run, monkeypatch):
    spies = _spy(monkeypatch)
    out = Path(evaluate_run(run, split="train", device="cpu", batch_size=1)["output_dir"])
    calls = spies.model.calls
    assert len(calls) == 3 * SLICES_PER_VOLUME
    # the slices of the volume being reconstructed are held, never those of the volumes before
    assert [live for live, _ in calls] == [0, 1, 2, 3, 1, 2, 3, 1, 2]
    # a volume is scored (score_slices: model and zf) once the next volume's first slice shows it complete
    assert [scored for _, scored in calls] == [0, 0, 0, 0, 2, 2, 2, 4, 4]
    with h5py.File(out / "recon.h5", "r") as recon:
        assert list(recon) == ["vol0", "vol2", "vol4"]
        assert all(recon[name].shape == (SLICES_PER_VOLUME, 16, 16) for name in recon)


def _files(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (hidden ones too), 'dir' for folders."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("convention", ["paper", "fastmri"])
def test_an_evaluation_failing_on_the_last_volume_leaves_the_previous_results(run, tmp_path, monkeypatch, convention):
    import shutil

    copy = Path(shutil.copytree(run, tmp_path / "run"))
    out = Path(evaluate_run(copy, split="train", device="cpu")["output_dir"])  # the previous results (paper convention)
    before = _files(copy)
    assert {"metrics.json", "recon.h5"} <= set(_files(out))
    _spy(monkeypatch, fail_at=2 * SLICES_PER_VOLUME)  # the first slice of the last volume
    with pytest.raises(RuntimeError, match="the model failed"):
        evaluate_run(copy, split="train", device="cpu", batch_size=1, convention=convention)
    assert _files(copy) == before  # no temporary recon.h5, no new eval-fastmri/ folder


def test_h5_writer_keeps_a_failed_write_from_h5py(tmp_path):
    """A full disk in the middle of an HDF5 file: h5py never sees the error (it could crash);
    check() and close() raise it as an OSError, and the writes after it are dropped."""
    from sftkd_cli.files import H5Writer

    writer = H5Writer(tmp_path / "f.h5")
    raw = writer._raw

    class FullDisk:
        def __init__(self, file) -> None:
            self.file, self.budget = file, 200_000

        def write(self, data):
            if self.budget < len(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            self.budget -= len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    raw._file = FullDisk(raw._file)
    rng = np.random.default_rng(0)
    with pytest.raises(OSError, match="No space left on device"):
        for i in range(10):
            writer.file.create_dataset(f"v{i}", data=rng.random((4, 64, 64), dtype=np.float32), compression="gzip")
            writer.check()
    assert 0 < i < 9
    with pytest.raises(OSError, match="No space left on device"):
        writer.close()


def _scored_with_dropped_slices(run: Path, tmp_path: Path, count: int, depth: int, dropped: list[int], seed: int,
                                zooms: tuple[float, float, float]) -> tuple[Path, Path]:
    """`count` phantom volumes v0, v1, ... of `depth` slices whose input slices `dropped` are empty,
    prepared (16x16, v1 for val) and `run` evaluated on their train split: (dataset, results folder)."""
    from conftest import phantom_volume, write_nifti
    from sftkd_cli.data.options import PrepareOptions
    from sftkd_cli.data.prepare import prepare_dataset
    from sftkd_cli.data.sources import NiftiSource

    for i in range(count):
        volume = phantom_volume((20, 18, depth), seed=seed + i)
        volume[:, :, dropped] = 0.0
        write_nifti(tmp_path / "raw" / f"v{i}.nii.gz", volume, zooms=zooms)
    data = tmp_path / "data"
    prepare_dataset(NiftiSource(tmp_path / "raw"), data, PrepareOptions(size=(16, 16), accelerations=(4.0,), val=("v1",)))
    return data, Path(evaluate_run(run, data=data, split="train", device="cpu")["output_dir"])


def test_recon_h5_and_per_slice_csv_say_where_each_slice_comes_from(run, tmp_path):
    """CPU: each reconstruction carries its slices' indices in the input (not their positions:
    the inputs' empty first slices are dropped) and the prepared file's provenance (source file,
    max, voxel size, affine); recon.h5 says what produced it."""
    import csv

    data, out = _scored_with_dropped_slices(run, tmp_path, 3, 4, [0], seed=0, zooms=(1.5, 1.5, 8.0))
    with (out / "per_slice.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with h5py.File(out / "recon.h5", "r") as recon:
        assert {recon.attrs[k] for k in ("run", "split", "convention", "checkpoint")} == {"t", "train", "paper", "best"}
        assert list(recon) == ["v0", "v2"]
        for name in recon:
            with h5py.File(data / f"{name}.h5", "r") as prepared:
                attrs, stored = recon[name].attrs, prepared["source_slice"][()]
                np.testing.assert_array_equal(attrs["source_slice"], stored[attrs["slices"]])
                for key in ("source_file", "max", "voxel_size", "affine"):
                    np.testing.assert_array_equal(attrs[key], prepared.attrs[key])
            listed = [(int(r["slice"]), int(r["source_slice"])) for r in rows if r["volume"] == name]
            assert listed == [(int(s), int(stored[s])) for s in attrs["slices"]]


def test_readme_snippet_writes_a_recon_as_nifti_over_its_input(run, tmp_path, monkeypatch):
    """CPU: the README's recon.h5 -> NIfTI lines, run on a volume whose first and third input
    slices were dropped: each voxel of the NIfTI lies where the prepared affine puts that pixel, in
    input units, and the dropped slice between stays empty."""
    import nibabel as nib

    _, out = _scored_with_dropped_slices(run, tmp_path, 2, 5, [0, 2], seed=5, zooms=(1.5, 1.25, 8.0))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("reconstruction can be laid over its input:\n\n```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("runs/demo/teacher/recon.h5", str(out / "recon.h5")).replace("icbm152_z027-034", "v0")
    code = code.replace("runs/demo/teacher/recon.nii.gz", "recon.nii.gz")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    written = nib.load(tmp_path / "recon.nii.gz")
    with h5py.File(out / "recon.h5", "r") as recon:
        v = recon["v0"]
        pred, stored, affine, vmax = v[()], list(v.attrs["source_slice"]), v.attrs["affine"], v.attrs["max"]
    assert stored == [1, 3, 4]
    image = np.asarray(written.dataobj)
    assert image.shape == (16, 16, 4) and not image[:, :, 1].any()  # input slices 1..4; 2 was dropped
    for r, c, s in [(0, 0, 0), (3, 7, 1), (15, 2, 2), (9, 15, 0)]:
        k = stored[s] - 1
        np.testing.assert_allclose(written.affine @ [r, c, k, 1], affine @ [stored[s], r, c, 1], atol=1e-4)
        assert image[r, c, k] == pytest.approx(pred[s, r, c] * vmax, rel=1e-6)


def test_recon_h5_names_the_model_that_produced_it_as_metrics_json_does(run, tmp_path):
    """recon.h5 said run and checkpoint only: an SFT run's student (eval-student/recon.h5) read as
    the teacher's, an exported file's recon.h5 did not name the file, and amp was not recorded."""
    import json
    import shutil

    from sftkd_cli.export import export_run

    copy = Path(shutil.copytree(run, tmp_path / "t"))
    for scored in (None, export_run(copy, "torchscript").path):
        out = Path(evaluate_run(copy, device="cpu", exported=scored)["output_dir"])
        metrics = json.loads((out / "metrics.json").read_text())
        with h5py.File(out / "recon.h5", "r") as recon:
            attrs = dict(recon.attrs)
        for key in ("run", "role", "model", "amp", "checkpoint"):
            assert attrs[key] == metrics[key], key
        if scored is None:
            assert attrs["checkpoint_sha256"] == metrics["checkpoint_sha256"]
            assert "exported" not in attrs
        else:
            assert attrs["run"] == "t-torchscript" and attrs["exported"] == str(scored)


def test_per_volume_scores_of_the_paper_convention_are_written_beside_per_slice(run, tmp_path):
    """metrics.json gave only volume_mean of the per-volume PSNR/NMSE (a whole volume's, not the
    mean of its slices'), which per_slice.csv cannot give back: per_volume.csv has each volume's."""
    import csv
    import json
    import shutil

    copy = Path(shutil.copytree(run, tmp_path / "t"))
    out = Path(evaluate_run(copy, device="cpu")["output_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "per_volume.csv").open(newline="") as handle:
        volumes = list(csv.DictReader(handle))
    with (out / "per_slice.csv").open(newline="") as handle:
        slices = list(csv.DictReader(handle))
    assert [row["volume"] for row in volumes] == sorted({row["volume"] for row in slices})
    for name in ("PSNR", "NMSE", "ZF_PSNR"):
        summary = metrics["zero_filled" if name.startswith("ZF_") else "metrics"][name.removeprefix("ZF_")]
        assert np.mean([float(row[name]) for row in volumes]) == pytest.approx(summary["volume_mean"])
    for row in volumes:
        mine = [r for r in slices if r["volume"] == row["volume"]]
        assert int(row["slices"]) == len(mine)
        assert float(row["SSIM"]) == pytest.approx(np.mean([float(r["SSIM"]) for r in mine]))
        assert float(row["ZF_SSIM"]) == pytest.approx(np.mean([float(r["ZF_SSIM"]) for r in mine]))
