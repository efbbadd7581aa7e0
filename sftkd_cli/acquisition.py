"""What a dataset holds and a model must fit: the acquisition record shared by data and models.

`prepare-data` writes it into the manifest (key "acquisition"); the model builder takes it,
so a network's data consistency follows the data's k-space layout instead of a loose keyword
default; checkpoints keep it (`trained_on`) so that training, evaluate and export refuse a
model used on data of another acquisition. Light on purpose (no NumPy, no torch): command
help and the data and model layers all import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sftkd_cli.errors import SftkdError

#: what a dataset is prepared for: undersampled k-space (recon) or a low-resolution input (sr)
TASKS: tuple[str, ...] = ("recon", "sr")
#: where the k-space origin lies: at the array corner (unshifted, the paper's) or centred (fftshift)
KSPACE_LAYOUTS: tuple[str, ...] = ("corner", "centered")
#: what a pixel holds: a real magnitude image, or a complex one (two channels, real and imaginary)
VALUES: tuple[str, ...] = ("magnitude", "complex")
#: what an acceleration (prepare-data --acc, data.acceleration; the scale factor for sr) must be
ACCELERATION_RULE = "a number > 1 (1 is fully sampled, or not downsampled: nothing to reconstruct)"


def is_acceleration(value: float) -> bool:
    """Whether `value` follows ACCELERATION_RULE (finite too): the one rule for data and training."""
    return math.isfinite(value) and value > 1


@dataclass(frozen=True)
class Acquisition:
    """The data a model reconstructs: task, k-space layout, value kind, image channels and size.

    The defaults are the paper's (magnitude images, corner k-space, reconstruction); `image_size`
    None means "any size" (a model built before the data is known, e.g. for a parameter count).
    """

    task: str = "recon"
    kspace_layout: str = "corner"
    values: str = "magnitude"
    channels: int = 1
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (("task", self.task, TASKS), ("kspace_layout", self.kspace_layout, KSPACE_LAYOUTS),
                                     ("values", self.values, VALUES)):
            if value not in allowed:
                raise SftkdError(f"acquisition {name} {value!r}: expected one of {', '.join(allowed)}")
        if not isinstance(self.channels, int) or isinstance(self.channels, bool) or self.channels < 1:
            raise SftkdError(f"acquisition channels {self.channels!r}: expected a positive integer")

    @property
    def centered(self) -> bool:
        """Whether the k-space origin is centred (the data consistency must fftshift around the FFT)."""
        return self.kspace_layout == "centered"

    def record(self) -> dict[str, Any]:
        """JSON-ready form (manifest "acquisition", checkpoint "trained_on")."""
        return {"task": self.task, "kspace_layout": self.kspace_layout, "values": self.values,
                "channels": self.channels, "image_size": None if self.image_size is None else list(self.image_size)}

    @classmethod
    def from_record(cls, record: dict[str, Any], where: str = "acquisition") -> Acquisition:
        """Read `record()`'s form back; older files without some keys get the paper's defaults."""
        if not isinstance(record, dict):
            raise SftkdError(f"{where}: expected a mapping, got {type(record).__name__}")
        size = record.get("image_size")
        try:
            image_size = None if size is None else (int(size[0]), int(size[1]))
        except (TypeError, ValueError, IndexError, KeyError):
            raise SftkdError(f"{where}: image_size {size!r}, expected [H, W]") from None
        return cls(task=str(record.get("task", "recon")), kspace_layout=str(record.get("kspace_layout", "corner")),
                   values=str(record.get("values", "magnitude")), channels=record.get("channels", 1),
                   image_size=image_size)
