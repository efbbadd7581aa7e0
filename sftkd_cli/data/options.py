"""`PrepareOptions`: how `prepare-data` prepares a dataset, and the one way to build them from values.

`PrepareOptions.from_values` turns option values keyed by field name (a plan's `data.options`,
or the command's options once `--acc` / `--mask-file` are parsed here) into checked types, so the
command and `sftkd reproduce` prepare alike. Light on purpose (no NumPy): command help and plan
checks import it; the mask and split modules are imported when options are validated or used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkd_cli.choices import ALL_KINDS, MAX_SIZE
from sftkd_cli.data.format import TASKS, acceleration_key
from sftkd_cli.errors import SftkdError

if TYPE_CHECKING:
    from sftkd_cli.data.sources.base import SplitRequest

_MASK_PAIR = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*=(.+)$")


@dataclass
class PrepareOptions:
    """Everything `prepare_dataset` needs besides the source and output folder.

    size: (H, W) centre crop/pad, or None to keep the native in-plane size (all volumes must agree).
    mask_files: acceleration -> mask file; other accelerations get a generated `mask_kind` mask.
    val/test: explicit group ids (patients for ACDC); *_fraction: seeded share of the groups
    (None: the source's default). force: rebuild an existing dataset made with other options.
    """

    size: tuple[int, int] | None = None
    slice_axis: int = 2
    downsample: int = 1
    accelerations: tuple[float, ...] = (4.0, 5.0)
    mask_kind: str = "random"
    mask_files: dict[float, Path] = field(default_factory=dict)
    mask_layout: str = "corner"
    center_fraction: float | None = None
    seed: int = 42
    val_fraction: float | None = None
    test_fraction: float | None = None
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    min_slice_mean: float = 0.0
    force: bool = False
    task: str = "recon"  # recon: undersampled k-space per acceleration | sr: low-resolution input per scale

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> PrepareOptions:
        """Options from values keyed by field name (missing ones: the field defaults; no
        accelerations: those of the mask files, else 4 and 5, sr: 4). Raises TypeError,
        ValueError or IndexError for a value of the wrong type (callers say where it came from)."""
        def get(key: str) -> Any:
            return values.get(key, _DEFAULTS[key])

        size = get("size")
        mask_files = {float(a): Path(p) for a, p in (get("mask_files") or {}).items()}
        task = str(get("task"))
        accelerations = get("accelerations") or default_accelerations(task, mask_files)
        return cls(
            size=None if size is None else (int(size[0]), int(size[1])),
            slice_axis=int(get("slice_axis")), downsample=int(get("downsample")),
            accelerations=tuple(float(a) for a in accelerations),
            mask_kind=str(get("mask_kind")), mask_files=mask_files, mask_layout=str(get("mask_layout")),
            center_fraction=get("center_fraction"), seed=int(get("seed")),
            val_fraction=get("val_fraction"), test_fraction=get("test_fraction"),
            val=tuple(str(v) for v in get("val") or ()), test=tuple(str(v) for v in get("test") or ()),
            min_slice_mean=float(get("min_slice_mean")), force=bool(get("force")), task=task,
        )

    def validate(self) -> None:
        """Raise a one-line SftkdError for any value out of range."""
        from sftkd_cli.mri.masks import LAYOUTS

        if self.task not in TASKS:
            raise SftkdError(f"--task {self.task}: expected one of {', '.join(TASKS)}")
        if self.task == "sr" and self.mask_files:
            raise SftkdError("--mask-file: not used by --task sr (the scale fixes the central k-space box); remove it")
        if self.task == "sr" and self.center_fraction is not None:
            raise SftkdError("--center-fraction: not used by --task sr (the scale fixes the central k-space box); remove it")
        if self.size is not None:
            if len(self.size) != 2 or any(int(s) != s or s < 4 or s > MAX_SIZE for s in self.size):
                raise SftkdError(f"--size {self.size}: expected two integers H W, "
                                 f"each from 4 to {MAX_SIZE}")
        if self.slice_axis not in (0, 1, 2, -1, -2, -3):
            raise SftkdError(f"--slice-axis {self.slice_axis}: expected 0, 1 or 2 (or -1 for the last)")
        if self.downsample < 1:
            raise SftkdError(f"--downsample {self.downsample}: expected an integer >= 1")
        if not self.accelerations:
            raise SftkdError("--acc: expected at least one acceleration")
        for acc in self.accelerations:
            if not (math.isfinite(acc) and acc > 1):
                raise SftkdError(f"--acc {acc:g}: expected a number > 1")
        keys = [acceleration_key(a) for a in self.accelerations]
        if len(set(keys)) != len(keys):
            raise SftkdError(f"--acc {', '.join(f'{a:g}' for a in self.accelerations)}: repeated value")
        for acc in self.mask_files:
            if acceleration_key(acc) not in keys:
                raise SftkdError(
                    f"--mask-file {acc:g}=...: acceleration {acc:g} is not among --acc "
                    f"{', '.join(f'{a:g}' for a in self.accelerations)}"
                )
        if self.mask_kind not in ALL_KINDS:
            raise SftkdError(f"--mask-kind {self.mask_kind}: expected one of {', '.join(ALL_KINDS)}")
        if self.mask_layout not in LAYOUTS:
            raise SftkdError(f"--mask-layout {self.mask_layout}: expected one of {', '.join(LAYOUTS)}")
        if self.center_fraction is not None and not 0 <= self.center_fraction <= 1:
            raise SftkdError(f"--center-fraction {self.center_fraction:g}: expected a number in [0, 1]")
        if not 0 <= self.seed < 2**32:  # numpy's and the fastMRI masks' seeds are 32-bit
            raise SftkdError(f"--seed {self.seed}: expected an integer from 0 to {2**32 - 1}")
        if not 0 <= self.min_slice_mean < 1:
            raise SftkdError(f"--min-slice-mean {self.min_slice_mean:g}: expected a number in [0, 1)")

    def record(self) -> dict[str, Any]:
        """The options as recorded in the manifest (JSON types, `force` left out)."""
        out = asdict(self)
        out.pop("force")
        if self.task == "recon":  # datasets prepared before tasks existed stay up to date
            out.pop("task")
        out["size"] = None if self.size is None else [int(s) for s in self.size]
        out["slice_axis"] = self.slice_axis % 3
        out["accelerations"] = [float(a) for a in self.accelerations]
        out["mask_files"] = {
            acceleration_key(a): str(Path(p).resolve()) for a, p in sorted(self.mask_files.items())
        }
        out["val"], out["test"] = list(self.val), list(self.test)
        return out

    def split_request(self) -> SplitRequest:
        """The split settings handed to the source."""
        from sftkd_cli.data.sources.base import SplitRequest

        return SplitRequest(
            self.val_fraction, self.test_fraction, tuple(self.val), tuple(self.test), self.seed
        )


_DEFAULTS: dict[str, Any] = {**{f.name: f.default for f in fields(PrepareOptions)}, "mask_files": None}
#: the options a plan may set in `data.options` (all fields but `force`), in field order
PREPARE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(PrepareOptions) if f.name != "force")


def prepare_default(key: str) -> Any:
    """The default of option `key` when the source sets none (e.g. 'seed' -> 42)."""
    return _DEFAULTS[key]


# --------------------------------------------------------------------------- command-line values


def parse_accelerations(values: list[str] | None) -> tuple[float, ...]:
    """'4', '5' or '4,5' (repeatable) -> (4.0, 5.0); empty -> ()."""
    out: list[float] = []
    for value in values or []:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(float(part))
            except ValueError:
                raise SftkdError(f"--acc {part}: expected a number such as 4 or 2.5") from None
    return tuple(out)


def default_accelerations(task: str, mask_files: dict[float, Path]) -> tuple[float, ...]:
    """What prepare-data prepares without --acc: the mask files' accelerations, else 4 (sr) or 4 and 5."""
    return tuple(sorted(mask_files)) if mask_files else (4.0,) if task == "sr" else (4.0, 5.0)


def parse_mask_files(values: list[str] | None, accelerations: tuple[float, ...]) -> dict[float, Path]:
    """'ACC=PATH' pairs, or one bare PATH when there is exactly one acceleration."""
    out: dict[float, Path] = {}
    for value in values or []:
        match = _MASK_PAIR.match(value)
        if match:
            acc, path = float(match.group(1)), Path(match.group(2).strip())
        elif len(accelerations) == 1:
            acc, path = accelerations[0], Path(value)
        else:
            raise SftkdError(
                f"--mask-file {value}: expected ACC=PATH (e.g. 4={value}); a bare path needs exactly "
                "one --acc"
            )
        if acc in out:
            raise SftkdError(f"--mask-file {value}: acceleration {acc:g} already has a mask file")
        out[acc] = path
    return out

