"""data.mask_per_sample in training: each epoch draws new masks, and a resumed run gets the same ones.

Device: CPU (tiny complex fastMRI-format data from tests/complex_data.py, one thread).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import complex_data
from cli_helpers import sftkd
from sftkd_cli.runs import load_checkpoint

complex_dataset = complex_data.complex_dataset

TINY = (*complex_data.BASE, "train.max_steps_per_epoch=3", "--model", "D2C2")


def _weights(run) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["models"]["model"]["state"]


def test_per_sample_masks_reach_training_and_resume_exactly(complex_dataset, tmp_path):
    base = [f"data.path={complex_dataset}", f"run.dir={tmp_path}", *TINY]
    sftkd("train-teacher", "--name", "fixed", *base, "train.epochs=2")
    sftkd("train-teacher", "--name", "straight", *base, "train.epochs=2", "data.mask_per_sample=true")
    sftkd("train-teacher", "--name", "resumed", *base, "train.epochs=1", "data.mask_per_sample=true")
    sftkd("train-teacher", "--name", "resumed", *base, "train.epochs=2", "data.mask_per_sample=true", "--resume")
    straight, resumed, fixed = (_weights(tmp_path / name) for name in ("straight", "resumed", "fixed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), "a resumed run saw other masks"
    assert any(not torch.equal(straight[k], fixed[k]) for k in straight), "per-sample masks never reached training"


def test_the_engine_tells_the_training_split_each_epoch(complex_dataset, tmp_path, monkeypatch):
    from sftkd_cli.data.dataset import SliceDataset

    seen: list[tuple[str, int]] = []
    real = SliceDataset.set_epoch

    def recording(self: SliceDataset, epoch: int) -> None:
        seen.append((self.split, epoch))
        real(self, epoch)

    monkeypatch.setattr(SliceDataset, "set_epoch", recording)
    base = [f"data.path={complex_dataset}", f"run.dir={tmp_path}", *TINY, "data.mask_per_sample=true"]
    sftkd("train-teacher", "--name", "r", *base, "train.epochs=1")
    sftkd("train-teacher", "--name", "r", *base, "train.epochs=3", "--resume")
    assert seen == [("train", 0), ("train", 1), ("train", 2)]


def test_per_sample_masks_need_the_recon_task_and_a_generated_mask_at_that_acceleration(tiny_dataset, tmp_path):
    """Only the requested acceleration's mask must have been generated (another may come from a
    file); super-resolution data is refused for what it is, not for "masks from files"."""
    from sftkd_cli.data.dataset import SliceDataset
    from sftkd_cli.data.options import PrepareOptions
    from sftkd_cli.data.prepare import prepare_dataset
    from sftkd_cli.data.sources import NiftiSource
    from sftkd_cli.errors import SftkdError
    from sftkd_cli.mri.masks import make_mask

    raw = NiftiSource(tiny_dataset.parent / "raw")
    np.save(tmp_path / "m5.npy", make_mask("equispaced", (16, 16), 5, seed=3))
    mixed = tmp_path / "mixed"
    prepare_dataset(raw, mixed, PrepareOptions(size=(16, 16), accelerations=(4.0, 5.0), val=("vol1",), test=("vol3",),
                                               mask_files={5.0: tmp_path / "m5.npy"}))
    drawn = SliceDataset(mixed, "train", 4, mask_per_sample=True)  # acc 4's mask was generated: drawn per sample
    assert not np.array_equal(drawn[0]["mask"].numpy(), SliceDataset(mixed, "train", 4)[0]["mask"].numpy())
    with pytest.raises(SftkdError, match=r"^data.mask_per_sample: the 5x mask of dataset .* comes from a file"):
        SliceDataset(mixed, "train", 5, mask_per_sample=True)
    sr = tmp_path / "sr"
    prepare_dataset(raw, sr, PrepareOptions(size=(16, 16), accelerations=(4.0,), val=("vol1",), test=("vol3",), task="sr"))
    with pytest.raises(SftkdError, match=r"is prepared for task sr; per-sample masks exist for the recon task only"):
        SliceDataset(sr, "train", 4, task="sr", mask_per_sample=True)


def test_per_sample_masks_without_a_centre_line_are_refused(nifti_writer, tmp_path):
    """12 lines at 8x: fastMRI's centre fraction 0.04 rounds to no centre line, so about a fifth of
    the masks drawn per sample would hold no line at all: prepare-data refuses that fraction now;
    a dataset prepared before it did (its manifest says so here) is refused per sample, naming why."""
    from sftkd_cli.data.dataset import SliceDataset
    from sftkd_cli.data.options import PrepareOptions
    from sftkd_cli.data.prepare import prepare_dataset
    from sftkd_cli.data.sources import NiftiSource
    from sftkd_cli.errors import SftkdError

    for i in range(4):
        nifti_writer.write(tmp_path / "raw" / f"vol{i}.nii.gz", nifti_writer.phantom((20, 20, 2), seed=i))

    def prepared(size: int, kind: str = "fastmri-random", fraction: float | None = None) -> Path:
        out = tmp_path / f"d{size}{kind}"
        prepare_dataset(NiftiSource(tmp_path / "raw"), out, PrepareOptions(
            size=(size, size), accelerations=(8.0,), val=("vol1",), test=("vol3",), mask_kind=kind, seed=1,
            center_fraction=fraction))
        return out

    with pytest.raises(SftkdError, match=r"^--center-fraction 0.04: fastMRI's default at 8x .* no centre line of 12"):
        prepared(12)
    assert len(SliceDataset(prepared(13), "train", 8, mask_per_sample=True)) > 0  # 13 lines: one centre line
    for kind, nothing in (("random", ""), ("fastmri", " or sample nothing")):
        older = prepared(16, kind, 0.1)
        manifest = json.loads((older / "manifest.json").read_text())
        manifest["mask"]["center_fraction"] = 0.0  # as prepare-data wrote it before it refused 0
        (older / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(SftkdError, match=rf"^data.mask_per_sample: a {kind} mask of 16 lines with centre fraction 0 "
                                             rf"has no centre line, so a mask drawn per sample can miss k-space's centre "
                                             rf"\(DC\){nothing}; expected a centre fraction above 0"):
            SliceDataset(older, "train", 8, mask_per_sample=True)


@pytest.mark.parametrize("fraction, lines, expected", [
    (0.1, 5, "expected at least 6 lines"),  # 5 x 0.1 = 0.5, which Python rounds to 0
    (0.0, 50, "expected a centre fraction above 0"),
])
@pytest.mark.parametrize("kind", ["fastmri-random", "fastmri-equispaced", "fastmri", "random", "equispaced"])
def test_the_refusal_names_a_number_of_lines_that_would_do(fraction, lines, expected, kind):
    from sftkd_cli.data.complex_slices import check_drawable
    from sftkd_cli.errors import SftkdError

    spec = {"kind": kind, "axis": 0, "center_fraction": fraction}
    with pytest.raises(SftkdError, match=rf"mask of {lines} lines .* {expected} \(or data.mask_per_sample=false\)$"):
        check_drawable(spec, (lines, 16), 8.0)
    if fraction:
        check_drawable(spec, (lines + 1, 16), 8.0)  # the number named does
