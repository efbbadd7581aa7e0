"""A real training run timed epoch by epoch, for `sftkd bench`'s epoch part.

A training step timed alone says nothing of what an epoch spends around its steps: gathering
batches, reading losses, validation (forward passes and PSNR/SSIM), the history and the
checkpoints. Here the engine itself (`Trainer.fit`, as `train-teacher` runs it) trains on
synthetic slices in a temporary run directory, and the wall time from the end of one epoch to
the end of the next is taken: everything an epoch costs, its checkpoints handed to the writer.
The first epoch (layout measurement, CUDA graph captures) is not counted.
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import Dataset

from sftkd_cli.bench.measure import synthetic_batch
from sftkd_cli.config import load_recipe, validate
from sftkd_cli.runs import RunDir
from sftkd_cli.training.engine import FitState, Trainer
from sftkd_cli.training.objectives import Objective


class SyntheticSlices(Dataset):
    """`n` synthetic slices (`synthetic_batch`'s phantoms at 4x) as dataset items of one volume."""

    def __init__(self, size: int, n: int, seed: int, complex_data: bool = False) -> None:
        self.tensors = synthetic_batch(size, n, torch.device("cpu"), seed=seed, complex_data=complex_data)

    def __len__(self) -> int:
        return int(self.tensors["zf"].shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**{key: value[index] for key, value in self.tensors.items()}, "volume": "synthetic", "slice": index}


class _EpochClock(Trainer):
    """The engine, noting when each epoch has ended (validated, history written, checkpoints handed over)."""

    ends: list[float]

    def _finish_epoch(self, state: FitState, loop: Any, val_ds: Dataset) -> None:
        super()._finish_epoch(state, loop, val_ds)
        self.ends.append(time.perf_counter())


def epoch_seconds(objective: Objective, train: Dataset, val: Dataset, *, epochs: int, batch: int, device: torch.device,
                  amp: str, tf32: bool = False) -> list[float]:
    """Train `objective` for `epochs` epochs with the engine (recipe defaults otherwise, the
    caller's thread count) in a temporary run directory; the wall seconds of epochs 2..`epochs`."""
    with tempfile.TemporaryDirectory(prefix="sftkd-bench-") as folder:
        recipe = load_recipe(None, [f"train.epochs={epochs}", f"train.batch_size={batch}", f"train.device={device}",
                                    f"train.threads={torch.get_num_threads()}", f"train.amp={amp}", f"train.tf32={tf32}",
                                    f"run.dir={folder}", "run.name=epochs", "run.role=teacher"])
        validate(recipe)
        run = RunDir(Path(folder) / "epochs")
        run.prepare(recipe, resume=False, force=False)
        trainer = _EpochClock(objective, recipe, run, console=Console(file=io.StringIO()))
        trainer.ends = []
        try:
            trainer.fit(train, val)
        finally:
            run.unlock()
    return [end - start for start, end in zip(trainer.ends, trainer.ends[1:])]
