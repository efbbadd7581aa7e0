"""Recipes: YAML files with sections, `section.key=value` overrides, and validation.

A recipe is a `Recipe` of dataclass sections. Unknown sections or keys are errors that
name the key and suggest the nearest valid one; values are checked against the field types.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftkd_cli.errors import SftkdError


@dataclass
class DataConfig:
    """Which prepared dataset and acceleration (or super-resolution scale) to train and validate on."""

    path: str = "data/demo"
    acceleration: float = 4.0  # task recon: undersampling factor; task sr: scale factor (the LR image is H/s x W/s)
    task: str = "recon"  # recon | sr (super-resolution); must be what the dataset was prepared for (prepare-data --task)
    train_split: str = "train"
    val_split: str = "val"
    cache: bool = True  # hold the dataset in memory (small datasets; much faster on CPU)
    max_train_slices: int = 0  # 0 = all; >0 keeps the first N training slices (smoke runs)
    max_val_slices: int = 0


@dataclass
class ModelConfig:
    """The network trained by `train-teacher` (and the student of `distill`)."""

    name: str = ""  # empty = per command: train-teacher -> sft.teacher, distill -> sft.student
    channels: int = 32
    pad: int = 5  # zero padding around each block, as the reference code


@dataclass
class TrainConfig:
    """Optimisation, shared by every training command (the paper's settings by default)."""

    epochs: int = 150
    batch_size: int = 4
    lr: float = 1e-3
    lr_step: int = 40
    lr_gamma: float = 0.1
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = torch's default
    amp: str = "off"  # off | bf16 | fp16 (fp16 only on CUDA)
    deterministic: bool = False
    checkpoint_every: int = 0  # also save `last` every N steps (0 = only at epoch ends)
    max_steps_per_epoch: int = 0  # 0 = full epochs
    channels_last: bool = True  # NHWC memory layout: same results, 1.1-2x faster convs (sftkd bench)


@dataclass
class SFTConfig:
    """Student-friendly teacher training: teacher + shared student branches."""

    teacher: str = "D5C5"
    student: str = "D3C5"
    w_teacher: float = 1.0
    w_student: float = 1.0
    w_imit: float = 1.0
    batched: str = "auto"  # branches through a shared block as one batch: auto (on CUDA) | true | false


@dataclass
class DistillConfig:
    """Feature distillation from a trained teacher run into a student."""

    teacher_run: str = ""
    method: str = "at"
    init: str = "random"  # random | a run directory | a checkpoint file
    schedule: str = "joint"  # joint | two-stage
    stage1_epochs: int = 0  # two-stage: epochs of feature loss alone before fine-tuning
    w_rec: float = 1.0
    w_kd: float = 1.0
    w_imit: float = 0.0
    student_taps: list[str] = field(default_factory=list)  # empty = the method's default
    teacher_taps: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # method options, e.g. {p: 2}


@dataclass
class EvalConfig:
    """What `evaluate` scores."""

    split: str = "val"
    checkpoint: str = "best"  # best | last | a file path
    latency_slices: int = 8


@dataclass
class RunConfig:
    """Where the run directory goes and what it is."""

    name: str = ""  # empty = derived from the command and model
    dir: str = "runs"
    role: str = ""  # teacher | student | sft | kd (empty = derived)


@dataclass
class Recipe:
    """A whole recipe: one section per concern."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _suggest(name: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {prefix}{close[0]}?"
    return f"; valid: {', '.join(prefix + o for o in options)}"


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check `value` against a dataclass field type; allow int -> float and str -> list for lists."""
    origin = typing.get_origin(kind)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and type(value) is kind:
        return value
    if kind is str and isinstance(value, bool):  # `sft.batched=true` is read by YAML as a bool
        return "true" if value else "false"
    if kind is str and isinstance(value, (int, float)):  # e.g. `run.name=2024`
        return str(value)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if isinstance(value, list):
            return [_coerce(v, item, where) for v in value]
    if origin is dict and isinstance(value, dict):
        try:  # plain JSON data only: no self-references (asdict would recurse forever), no dates/bytes
            json.dumps(value)
        except (TypeError, ValueError):
            raise SftkdError(f"{where}: expected plain mapping data (numbers, strings, lists, mappings)") from None
        return dict(value)
    expected = getattr(kind, "__name__", str(kind))
    raise SftkdError(f"{where}: expected {expected}, got {value!r}")


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Build a validated `Recipe` from a nested dict (unknown keys are errors)."""
    if not isinstance(raw, dict):
        raise SftkdError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    recipe = Recipe()
    sections = typing.get_type_hints(Recipe)
    for section, values in raw.items():
        if section not in sections:
            raise SftkdError(f"{source}: unknown section {section!r}{_suggest(str(section), list(sections))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise SftkdError(f"{source}: section {section!r} must be a mapping")
        target = getattr(recipe, section)
        types_ = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in types_:
                name = f"{section}.{key}"
                raise SftkdError(
                    f"{source}: unknown key {name if name.isprintable() else repr(name)}"
                    f"{_suggest(str(key), list(types_), section + '.')}"
                )
            setattr(target, key, _coerce(value, types_[key], f"{source}: {section}.{key}"))
    return recipe


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (or the defaults when `path` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise SftkdError(f"{path}: recipe file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark else ""
            raise SftkdError(f"{path}: not valid YAML{at}") from None
        if not isinstance(raw, dict):
            raise SftkdError(f"{path}: expected a mapping of sections (data:, model:, train:, ...), got {type(raw).__name__}")
    apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw, source)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Apply `section.key=value` overrides in place; values are parsed as YAML scalars/lists."""
    for item in overrides:
        if "=" not in item:
            raise SftkdError(f"override {item!r}: expected section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise SftkdError(f"override {item!r}: expected section.key=value (e.g. train.epochs=5)")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise SftkdError(f"override {item!r}: section {parts[0]!r} is not a mapping")
        section[parts[1]] = value


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain nested dict (for YAML/JSON)."""
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def validate(recipe: Recipe) -> None:
    """Cross-field checks that types alone cannot express."""
    from sftkd_cli.models import cascades_of

    if recipe.model.name:
        cascades_of(recipe.model.name)  # a full check of the name (e.g. D1C5 has too few layers)
    if cascades_of(recipe.sft.teacher) != cascades_of(recipe.sft.student):
        raise SftkdError(
            f"sft: teacher {recipe.sft.teacher} and student {recipe.sft.student} must have the same number of cascades"
        )
    checks = [
        (recipe.train.epochs >= 1, "train.epochs", "at least 1"),
        (recipe.train.batch_size >= 1, "train.batch_size", "at least 1"),
        (recipe.train.lr > 0, "train.lr", "positive"),
        (recipe.train.amp in ("off", "bf16", "fp16"), "train.amp", "one of off, bf16, fp16"),
        (recipe.data.acceleration >= 1, "data.acceleration", "at least 1"),
        (recipe.distill.schedule in ("joint", "two-stage"), "distill.schedule", "joint or two-stage"),
        (recipe.train.threads >= 0, "train.threads", "0 (default) or more"),
        (recipe.train.lr_step >= 1, "train.lr_step", "at least 1"),
        (math.isfinite(recipe.train.lr), "train.lr", "a finite number"),
        (math.isfinite(recipe.train.lr_gamma) and recipe.train.lr_gamma > 0, "train.lr_gamma", "a positive finite number"),
        (0 <= recipe.train.seed < 2**32, "train.seed", "between 0 and 2**32-1"),
        (recipe.model.channels >= 1, "model.channels", "at least 1"),
        (recipe.model.pad >= 0, "model.pad", "0 or more"),
        (recipe.train.max_steps_per_epoch >= 0, "train.max_steps_per_epoch", "0 (full epochs) or more"),
        (recipe.train.checkpoint_every >= 0, "train.checkpoint_every", "0 (epoch ends only) or more"),
        (recipe.data.max_train_slices >= 0, "data.max_train_slices", "0 (all) or more"),
        (recipe.data.max_val_slices >= 0, "data.max_val_slices", "0 (all) or more"),
        (recipe.eval.latency_slices >= 0, "eval.latency_slices", "0 (skip) or more"),
        (recipe.sft.batched in ("auto", "true", "false"), "sft.batched", "auto, true or false"),
        (recipe.data.task in ("recon", "sr"), "data.task", "recon or sr (super-resolution)"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise SftkdError(f"{key}: expected {expected}")
    _check_dataset_task(recipe.data)


def _check_dataset_task(data: DataConfig) -> None:
    """When data.path is already a prepared dataset, it must have been prepared for data.task."""
    from sftkd_cli.data.dataset import check_task
    from sftkd_cli.data.files import read_regular_bytes

    path = Path(data.path) / "manifest.json"
    if not path.is_file():  # no dataset yet, or a FIFO/device: the dataset reader says so later
        return
    try:
        manifest = json.loads(read_regular_bytes(path, "manifest.json"))
    except (SftkdError, ValueError):  # unreadable: the dataset reader says so later
        return
    if isinstance(manifest, dict):
        check_task(manifest, data.path, data.task)



def with_model(recipe: Recipe, default: str) -> Recipe:
    """Fill an empty model.name with the command's default architecture."""
    if recipe.model.name:
        return recipe
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, name=default.upper()))
