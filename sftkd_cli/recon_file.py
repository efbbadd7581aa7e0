"""recon.h5, the reconstructions an evaluation scored: one dataset per volume, with where its
slices come from (the prepared file's provenance) and, on the file, what produced it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sftkd_cli.files import H5Writer, text_name
from sftkd_cli.run_files import CHECKPOINT_DIGEST
from sftkd_cli.scoring import Volume


def recon_attrs(run: str, checkpoint: str, data: Path, split: str, acceleration: float, task: str,
                convention: str, *, role: str, model: str, amp: str, digest: str | None = None,
                exported: Path | None = None) -> dict[str, Any]:
    """recon.h5's own attributes: what produced it, as metrics.json says (`run` its run label, e.g.
    demo-sft-student for an SFT run's student; `role`, `model`, `amp`, `checkpoint_sha256` when
    known, `exported` when an exported file was scored), so that two runs' or two models' recon.h5
    are told apart, and what its numbers are. Names are `text_name`d: an HDF5 text attribute must be
    UTF-8, while a run folder or data.path on Linux need not be (metrics.json keeps them exactly)."""
    provenance: dict[str, Any] = {"role": role, "model": model, "amp": amp}
    if digest is not None:
        provenance[CHECKPOINT_DIGEST] = digest
    if exported is not None:
        provenance["exported"] = text_name(str(exported))
    return {
        "run": text_name(run), "checkpoint": text_name(str(checkpoint)), **provenance,
        "dataset": text_name(str(data)), "split": split,
        "acceleration": float(acceleration), "task": task, "convention": convention,
        "contents": "one dataset per volume: the reconstructed images that were scored, (S,H,W) float32 "
                    + ("magnitudes centre-cropped to the target's size" if convention == "fastmri" else
                       "at the stored size") + ", in the prepared dataset's scale (x / max: multiply by the "
                    "attribute max for input units); attributes slices (position in the prepared volume), "
                    "source_slice (slice index in the input) and what prepare-data recorded of the volume "
                    "(source_file, max, normalisation; voxel_size (slice, row, column; mm) and affine "
                    "((source slice, row, column, 1) -> scanner mm) for NIfTI inputs)",
    }


def write_recon_volume(recon: H5Writer, name: str, v: Volume, origin: dict[str, Any]) -> None:
    """Add one volume's reconstruction to recon.h5: dataset `name`, (S,H,W) float32, gzip 1, with
    its slice positions (`slices`), their indices in the input (`source_slice`) and `origin`, the
    prepared file's provenance attributes; raises the OSError of a failed write."""
    recon.file.create_dataset(name, data=v["pred"].astype(np.float32), compression="gzip", compression_opts=1)
    recon.file[name].attrs.update({"slices": v["slices"], "source_slice": v["source_slice"], **origin})
    recon.check()
