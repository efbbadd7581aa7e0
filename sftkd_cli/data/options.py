"""`PrepareOptions`: how `prepare-data` prepares a dataset, and the one way to build them from values.

`PrepareOptions.from_values` turns option values keyed by field name (a plan's `data.options`,
or the command's options once `--acc` / `--mask-file` are parsed here) into checked types, so the
command and `sftkd reproduce` prepare alike. Its errors, and `validate`'s, name an option as the
command spells it (`--size 32 32`) or, given `OptionNames("plan.yaml: data.options.")`, as a
plan does (`plan.yaml: data.options.size: [32]`). Light on purpose (no NumPy): command help and plan checks import it;
the mask and split modules are imported when options are validated or used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkd_cli.acquisition import ACCELERATION_RULE, KSPACE_LAYOUTS, is_acceleration
from sftkd_cli.choices import ALL_KINDS, MAX_SIZE, MIN_SIZE
from sftkd_cli.data.format import TASKS, acceleration_key
from sftkd_cli.data.option_names import OptionError, OptionNames
from sftkd_cli.errors import SftkdError
from sftkd_cli.name_checks import in_any_case

if TYPE_CHECKING:
    from sftkd_cli.data.sources.base import SplitRequest

__all__ = ["OptionError", "OptionNames", "PREPARE_KEYS", "PrepareOptions", "default_accelerations",
           "parse_accelerations", "parse_mask_files", "prepare_default"]

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
    def from_values(cls, values: Mapping[str, Any], name: OptionNames = OptionNames()) -> PrepareOptions:
        """Options from values keyed by field name (missing ones: the field defaults; no
        accelerations: those of the mask files, else 4 and 5, sr: 4). A value of the wrong type
        (a word for a number, one number for a size) is a one-line SftkdError naming the option
        as `name` does; a single value where a list goes is a list of one."""
        def get(key: str, convert: Callable[[Any], Any], expected: str) -> Any:
            value = values.get(key, _DEFAULTS[key])
            try:
                return convert(value)
            except (TypeError, ValueError):
                shown = repr(value) if name.prefix else str(value)
                raise SftkdError(f"{name(key, shown)}: expected {expected}") from None

        size = get("size", _optional(_size), f"two integers H W, each from {MIN_SIZE} to {MAX_SIZE}")
        mask_files = get("mask_files", _mask_files, "a mapping of acceleration -> mask file")
        task = get("task", lambda v: in_any_case(str(v), TASKS), "a task name")  # words in any case, as the CLI
        accelerations = get("accelerations", lambda v: tuple(_number(a) for a in _listed(v)), "a list of numbers > 1")
        return cls(
            size=size,
            slice_axis=get("slice_axis", _integer, "an integer"), downsample=get("downsample", _integer, "an integer >= 1"),
            accelerations=accelerations or default_accelerations(task, mask_files),
            mask_kind=get("mask_kind", lambda v: in_any_case(str(v), ALL_KINDS), "a mask kind"), mask_files=mask_files,
            mask_layout=get("mask_layout", lambda v: in_any_case(str(v), KSPACE_LAYOUTS), "a k-space layout"),
            center_fraction=get("center_fraction", _optional(_number), "a number in [0, 1]"),
            seed=get("seed", _integer, "an integer"),
            val_fraction=get("val_fraction", _optional(_number), "a number in [0, 1)"),
            test_fraction=get("test_fraction", _optional(_number), "a number in [0, 1)"),
            val=get("val", _ids, "a list of volume ids"), test=get("test", _ids, "a list of volume ids"),
            min_slice_mean=get("min_slice_mean", _number, "a number in [0, 1)"), force=bool(values.get("force", False)),
            task=task,
        )

    def validate(self, name: OptionNames = OptionNames()) -> None:
        """Raise a one-line SftkdError for any value out of range, naming the option as `name` does."""
        if self.task not in TASKS:
            raise SftkdError(f"{name('task', self.task)}: expected one of {', '.join(TASKS)}")
        for key, unused in (("mask_files", bool(self.mask_files)), ("center_fraction", self.center_fraction is not None)):
            if self.task == "sr" and unused:
                raise SftkdError(f"{name(key)}: not used by {name.ref('task', 'sr')} (the scale fixes the central "
                                 "k-space box); remove it")
        if self.size is not None:
            if len(self.size) != 2 or any(int(s) != s or s < MIN_SIZE or s > MAX_SIZE for s in self.size):
                shown = str(list(self.size)) if name.prefix else " ".join(str(s) for s in self.size)  # [0, 16] | 0 16
                raise SftkdError(f"{name('size', shown)}: expected two integers H W, each from {MIN_SIZE} to {MAX_SIZE}")
        if self.slice_axis not in (0, 1, 2, -1, -2, -3):
            raise SftkdError(f"{name('slice_axis', str(self.slice_axis))}: expected 0, 1 or 2 (or -1 for the last)")
        if self.downsample < 1:
            raise SftkdError(f"{name('downsample', str(self.downsample))}: expected an integer >= 1")
        if not self.accelerations:
            raise SftkdError(f"{name('accelerations')}: expected at least one acceleration")
        for acc in self.accelerations:
            if not is_acceleration(acc):
                raise SftkdError(f"{name('accelerations', f'{acc:g}')}: expected {ACCELERATION_RULE}")
        keys = [acceleration_key(a) for a in self.accelerations]
        listed = ", ".join(f"{a:g}" for a in self.accelerations)
        if len(set(keys)) != len(keys):
            raise SftkdError(f"{name('accelerations', listed)}: repeated value")
        for acc in self.mask_files:
            if acceleration_key(acc) not in keys:
                raise SftkdError(f"{name('mask_files', f'{acc:g}=...')}: acceleration {acc:g} is not among "
                                 f"{name.ref('accelerations', listed)}")
        if self.mask_kind not in ALL_KINDS:
            raise SftkdError(f"{name('mask_kind', self.mask_kind)}: expected one of {', '.join(ALL_KINDS)}")
        if self.mask_layout not in KSPACE_LAYOUTS:
            raise SftkdError(f"{name('mask_layout', self.mask_layout)}: expected one of {', '.join(KSPACE_LAYOUTS)}")
        if self.center_fraction is not None and not 0 <= self.center_fraction <= 1:
            raise SftkdError(f"{name('center_fraction', f'{self.center_fraction:g}')}: expected a number in [0, 1]")
        if not 0 <= self.seed < 2**32:  # numpy's and the fastMRI masks' seeds are 32-bit
            raise SftkdError(f"{name('seed', str(self.seed))}: expected an integer from 0 to {2**32 - 1}")
        if not 0 <= self.min_slice_mean < 1:
            raise SftkdError(f"{name('min_slice_mean', f'{self.min_slice_mean:g}')}: expected a number in [0, 1)")
        for key, ids, fraction in (("val", self.val, self.val_fraction), ("test", self.test, self.test_fraction)):
            if ids and fraction is not None:
                raise SftkdError(f"{name(key)} and {name.ref(key + '_fraction')}: give one or the other, not both")

    def record(self) -> dict[str, Any]:
        """The options as recorded in the manifest (JSON types, `force` left out)."""
        out = asdict(self)
        out.pop("force")
        if self.task == "recon":  # datasets prepared before tasks existed stay up to date
            out.pop("task")
        out["size"] = None if self.size is None else [int(s) for s in self.size]
        out["slice_axis"] = self.slice_axis % 3
        # sorted: --acc 5,4 prepares what --acc 4,5 does (one mask per acceleration, each from the same
        # seed), so a re-run or a resumed run in the other order is the same; the manifest's own
        # "accelerations" keep the order given
        out["accelerations"] = sorted(float(a) for a in self.accelerations)
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


# --------------------------------------------------------------------------- value conversions (from_values)


def _integer(value: Any) -> int:
    """An integer (or its text, or a whole float); TypeError/ValueError otherwise (a bool too)."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _number(value: Any) -> float:
    """A number (or its text); TypeError/ValueError otherwise (a bool too)."""
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`convert`, with None kept as None."""
    return lambda value: None if value is None else convert(value)


def _listed(value: Any) -> list[Any]:
    """A list or tuple as a list, one plain value as a list of one, None as []; TypeError otherwise."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    raise TypeError(value)


def _size(value: Any) -> tuple[int, int]:
    """Exactly two integers (H, W); TypeError/ValueError otherwise."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(value)
    return _integer(value[0]), _integer(value[1])


def _ids(value: Any) -> tuple[str, ...]:
    """Volume ids: a list of names (numbers are taken as their text), or one."""
    items = _listed(value)
    if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in items):
        raise TypeError(value)
    return tuple(str(v) for v in items)


def _mask_files(value: Any) -> dict[float, Path]:
    """{acceleration: mask file} (None: none); TypeError/ValueError otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(p, (str, Path)) for p in value.values()):
        raise TypeError(value)
    return {_number(a): Path(p) for a, p in value.items()}


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

