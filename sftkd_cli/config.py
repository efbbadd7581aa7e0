"""Recipes: YAML files with sections, `section.key=value` overrides, and validation.

A recipe is a `Recipe` of dataclass sections. Unknown sections or keys are errors that
name the key and where it came from (the recipe file, a command-line override or option) and
suggest the nearest valid one; values are checked against the field types.

Every YAML text is read through `sftkd_cli.safe_yaml` (bounded, no anchors or aliases).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftkd_cli.acquisition import ACCELERATION_RULE, TASKS, is_acceleration
from sftkd_cli.choices import (AMP_MODES, BATCHED_SETTINGS, BEST, CHECKPOINT_NAMES, CUDA_GRAPHS_MODES, DEFAULT_ACCELERATION,
                               DEFAULT_AMP, DEFAULT_DATA_PATH, DEFAULT_DEVICE, DEFAULT_EPOCHS, DEFAULT_METHOD,
                               DEFAULT_RUNS_DIR, DEFAULT_THREADS, INIT_RANDOM, INIT_WORDS, JOINT, LAYOUT_SETTINGS,
                               MAX_THREADS, RUN_ROLES, SCHEDULES, STUDENT, TEACHER, TWO_STAGE)
from sftkd_cli.errors import RecipeValueError, SftkdError, did_you_mean
from sftkd_cli.name_checks import check_device, check_run_name
from sftkd_cli.recipe_words import read_words
from sftkd_cli.recipe_values import coerce_value, shown_value
from sftkd_cli.recipes import find_file
from sftkd_cli.safe_yaml import YamlRefused, load_yaml, parse_yaml, read_yaml_text, refused_error

#: the largest learning rate accepted (Adam's update overflows float32 long before 1e300)
MAX_LR = 10.0
#: the widest model.channels accepted (the paper's models use 32; a huge width ended in a torch traceback)
MAX_CHANNELS = 4096


@dataclass(frozen=True)
class Setting:
    """One recipe value from outside the recipe file, with where it came from (for errors).

    `value` is already typed: a command-line option's value as the option parsed it, a plan
    value as YAML read it. `source` names its origin, e.g. "override train.epochs=5" or "--name"."""

    key: str  # section.key
    value: Any
    source: str


@dataclass
class DataConfig:
    """Which prepared dataset and acceleration (or super-resolution scale) to train and validate on."""

    path: str = DEFAULT_DATA_PATH
    acceleration: float = DEFAULT_ACCELERATION  # task recon: undersampling factor; task sr: scale factor (the LR image is H/s x W/s)
    task: str = "recon"  # recon | sr (super-resolution); must be what the dataset was prepared for (prepare-data --task)
    train_split: str = "train"
    val_split: str = "val"
    cache: bool = True  # hold each split in memory while it fits a quarter of the free memory (else read from disk)
    max_train_slices: int = 0  # 0 = all; >0 keeps the first N training slices (smoke runs)
    max_val_slices: int = 0
    # a new mask per training slice and epoch, seeded (mask seed, epoch, volume, slice), from the
    # dataset's generated mask kind (fastMRI-style training); validation keeps the fixed mask
    mask_per_sample: bool = False


@dataclass
class ModelConfig:
    """The network trained by `train-teacher` (and the student of `distill`)."""

    name: str = ""  # empty = per command: train-teacher -> sft.teacher, distill -> sft.student
    channels: int = 32
    pad: int = 5  # zero padding around each block, as the reference code


@dataclass
class TrainConfig:
    """Optimisation, shared by every training command (the paper's settings by default)."""

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 4
    lr: float = 1e-3
    lr_step: int = 40
    lr_gamma: float = 0.1
    seed: int = 42
    device: str = DEFAULT_DEVICE  # auto | cpu | cuda | cuda:N
    threads: int = DEFAULT_THREADS  # torch CPU threads; 0 = torch's default
    amp: str = DEFAULT_AMP  # off | bf16 | fp16 (fp16 only on CUDA)
    # TF32 float32 matrix products and convolutions on NVIDIA GPUs (Ampere and later) while
    # training and validating: faster, inputs rounded to 10 mantissa bits (relative error ~5e-4);
    # false = full fp32. `evaluate` never uses TF32. No effect on CPUs.
    tf32: bool = False
    deterministic: bool = False
    checkpoint_every: int = 0  # also save `last` every N steps (0 = only at epoch ends)
    max_steps_per_epoch: int = 0  # 0 = full epochs
    channels_last: str = "auto"  # NHWC memory layout: auto (measured per machine, cached) | true | false
    # the whole training step as one CUDA graph: auto (on CUDA, amp off or bf16, one process) | on | off
    cuda_graphs: str = "auto"


@dataclass
class SFTConfig:
    """Student-friendly teacher training: teacher + shared student branches."""

    teacher: str = TEACHER
    student: str = STUDENT
    w_teacher: float = 1.0
    w_student: float = 1.0
    w_imit: float = 1.0
    batched: str = "auto"  # branches through a shared block as one batch: auto (on CUDA) | true | false


@dataclass
class DistillConfig:
    """Feature distillation from a trained teacher run into a student."""

    teacher_run: str = ""
    method: str = DEFAULT_METHOD
    init: str = INIT_RANDOM[-1]  # random | a run directory | a checkpoint file
    schedule: str = JOINT  # SCHEDULES
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
    checkpoint: str = BEST  # best | last | a file path
    latency_slices: int = 8


@dataclass
class RunConfig:
    """Where the run directory goes and what it is."""

    name: str = ""  # empty = derived from the command and model
    dir: str = DEFAULT_RUNS_DIR
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


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Build a validated `Recipe` from a nested dict (unknown keys are errors)."""
    if not isinstance(raw, dict):
        raise SftkdError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    recipe = Recipe()
    for section, values in raw.items():
        _section_type(section, source)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise SftkdError(f"{source}: section {section!r} must be a mapping")
        target = getattr(recipe, section)
        for key, value in values.items():
            setattr(target, key, coerce_value(value, _key_type(section, key, source), f"{source}: {section}.{key}"))
    _expand_home(recipe)
    read_words(recipe)
    return recipe


def _section_type(section: Any, source: str) -> type:
    """The dataclass of recipe section `section`; an unknown one is an error naming `source`."""
    sections = typing.get_type_hints(Recipe)
    if section not in sections:
        raise SftkdError(f"{source}: unknown section {section!r}{did_you_mean(section, sections, list_otherwise=True)}")
    return sections[section]


def _key_type(section: str, key: Any, source: str) -> Any:
    """The type of `section.key`; an unknown key is an error naming `source` and the nearest key."""
    types_ = typing.get_type_hints(_section_type(section, source))
    if key not in types_:
        name = f"{section}.{key}"
        raise SftkdError(
            f"{source}: unknown key {name if name.isprintable() else repr(name)}"
            f"{did_you_mean(key, types_, prefix=section + '.', list_otherwise=True)}"
        )
    return types_[key]


def _expand_home(recipe: Recipe) -> None:
    """A leading `~` in the recipe's paths means the home folder (as in a shell), not a folder named `~`."""
    recipe.data.path = os.path.expanduser(recipe.data.path)
    recipe.run.dir = os.path.expanduser(recipe.run.dir)
    recipe.distill.teacher_run = os.path.expanduser(recipe.distill.teacher_run)
    recipe.distill.init = os.path.expanduser(recipe.distill.init)
    recipe.eval.checkpoint = os.path.expanduser(recipe.eval.checkpoint)


def load_recipe(
    path: str | Path | None, overrides: Sequence[str] | None = None, settings: Sequence[Setting] = (),
) -> Recipe:
    """Load a YAML recipe (or the defaults when `path` is None), then apply the `section.key=value`
    `overrides` and then the typed `settings` (later ones win; two overrides of one key must
    agree: `refuse_repeated`). A `path` that is no file here is the recipe shipped with sftkd at
    that place, if any (`recipes/demo/student.yaml` from any folder: `find_file`). A bad key or
    value is reported against its source: the recipe file, the override string, or the setting's source."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = find_file(path)
        source = str(path)
        text = read_yaml_text(path, "recipe")
        raw = load_yaml(text, source) or {}
        if not isinstance(raw, dict):
            raise SftkdError(f"{path}: expected a recipe: a mapping of sections (data:, model:, train:, ...), "
                             f"got {type(raw).__name__}")
        if "plan" in raw:
            raise SftkdError(f"{path}: is a reproduction plan (`plan:` at the top), not a recipe; run it with "
                             f"`sftkd reproduce {path}`")
        _keep_written_text(raw, text)
    parsed = parse_overrides(overrides or [])
    refuse_repeated(parsed)
    for setting in [*parsed, *settings]:
        apply_setting(raw, setting)
    return recipe_from_dict(raw, source)


def _keep_written_text(raw: dict[str, Any], text: str) -> None:
    """The text keys of a recipe file take their values as written (`keep_written_text`)."""
    keep_written_text(raw, parse_yaml(text, as_text=True))  # the same document, every plain scalar as text


def keep_written_text(values: Any, written: Any) -> None:
    """Give the text keys (see `_is_text`) of recipe values read from YAML their text as written,
    as overrides do: YAML would read `run.name: 1.50` as 1.5 and `data.val_split: no` as false.
    `values` holds sections ({train: {amp: ...}}) or dotted keys ({train.amp: ...}, a plan's);
    `written` is the same YAML read with every plain scalar as text. A null (`~`, `null`,
    nothing) stays null: the key's type refuses it, rather than a folder named "null"."""
    if not (isinstance(values, dict) and isinstance(written, dict)):
        return
    for key, value in values.items():
        if not isinstance(key, str):
            continue
        texts = written.get(key)
        if isinstance(value, dict) and isinstance(texts, dict):  # a section
            for sub, sub_value in value.items():
                if isinstance(sub, str) and _takes_text([key, sub], sub_value, texts.get(sub)):
                    value[sub] = texts[sub]
        elif _takes_text(key.split(".", 1), value, texts):  # a dotted key
            values[key] = texts


def _takes_text(parts: list[str], value: Any, text: Any) -> bool:
    """Whether a text key's YAML `value` gives way to its written `text` (never a null)."""
    return len(parts) == 2 and _is_text(parts) and value is not None and isinstance(text, str)


def parse_overrides(overrides: Sequence[str]) -> list[Setting]:
    """`section.key=value` strings as settings; values are read as YAML (`train.lr=1e-4` is a number)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise SftkdError(f"override {item!r}: expected section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise SftkdError(f"override {item!r}: expected section.key=value (e.g. train.epochs=5)")
        shown = item if len(item) <= 80 else item[:77] + "..."
        shown = shown if shown.isprintable() else repr(shown)
        value: Any = ""
        if _is_text(parts):  # a name, path or word as typed: YAML would read run.name=1.50 as 1.5, yes as true
            value = _as_text(text.strip())
        elif text.strip():
            try:
                value = parse_yaml(text)
            except YamlRefused as exc:
                raise refused_error(exc, f"override {shown}") from None
            except (yaml.YAMLError, ValueError, OverflowError):
                value = text  # not YAML (e.g. `run.name=a: [b`): the text as it is
        out.append(Setting(".".join(parts), value, f"override {shown}"))
    return out


def _is_text(parts: list[str]) -> bool:
    """Whether section.key (as `parts`) is a text key of the recipe (a name, path or word; False
    for an unknown key)."""
    try:
        return _key_type(parts[0], parts[1], "") is str
    except SftkdError:
        return False


def _as_text(text: str) -> str:
    """An override's value for a text key: as typed, without one pair of enclosing quotes ('010' -> 010)."""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def apply_setting(raw: dict[str, Any], setting: Setting) -> None:
    """Check `setting` (section, key, type) against the recipe, naming its source, and put it into `raw`."""
    section, key = setting.key.split(".", 1)
    _section_type(section, setting.source)
    value = coerce_value(setting.value, _key_type(section, key, setting.source), f"{setting.source}: {section}.{key}")
    values = raw.setdefault(section, {})
    if values is None:
        values = raw[section] = {}
    if not isinstance(values, dict):
        raise SftkdError(f"{setting.source}: section {section!r} of the recipe is not a mapping")
    values[key] = value


def setting_value(setting: Setting) -> Any:
    """The value `setting` gives its key in a recipe (typed, words and `~` resolved), for comparing two settings."""
    section, key = setting.key.split(".", 1)
    return getattr(getattr(load_recipe(None, settings=[setting]), section), key)


#: keys whose values are names read in any case (architectures, KD methods: `D3C5` is `d3c5`)
_NAME_KEYS = frozenset({"model.name", "sft.teacher", "sft.student", "distill.method"})
#: keys whose values are paths; distill.init is one unless it is a word (`./random` is a folder)
_PATH_KEYS = frozenset({"data.path", "run.dir", "distill.teacher_run", "distill.init"})


def same_name(key: str, x: object, y: object) -> bool:
    """Whether `x` and `y` are one name of a key that reads names in any case (model.name D3C5
    and d3c5, distill.method AT and at)."""
    return key in _NAME_KEYS and isinstance(x, str) and isinstance(y, str) and x.lower() == y.lower()


def same_setting(a: Setting, b: Setting) -> bool:
    """Whether two settings of one key give it the same value: equal once typed (`setting_value`),
    a name in another case, or one path spelt two ways (`data/demo/` and `./data/demo`)."""
    key, x, y = a.key, setting_value(a), setting_value(b)
    if x == y:
        return True
    if not (isinstance(x, str) and isinstance(y, str)):
        return False
    if key in _NAME_KEYS:
        return same_name(key, x, y)
    if key in _PATH_KEYS and not (key == "distill.init" and {x, y} & set(INIT_WORDS)):
        return os.path.abspath(os.path.expanduser(x)) == os.path.abspath(os.path.expanduser(y))
    return False


def refuse_repeated(settings: Sequence[Setting]) -> None:
    """Two settings (overrides) of one key must agree (`same_setting`): the later would win silently."""
    for i, later in enumerate(settings):
        for earlier in settings[:i]:
            if earlier.key == later.key and not same_setting(earlier, later):
                raise SftkdError(f"{earlier.source} and {later.source} disagree; give {later.key} once")


@contextmanager
def naming_origin(path: str | Path | None, settings: Sequence[Setting]) -> Iterator[None]:
    """Checks run inside say where a refused value came from: the setting that gave the key its
    value (the last one: later win), else the recipe file `path` where it sets the key; nothing for a default."""
    try:
        yield
    except RecipeValueError as exc:
        given = {setting.key: setting.source for setting in settings}
        raw = (load_yaml(read_yaml_text(find_file(path), "recipe"), str(path)) if path is not None else None) or {}
        in_file = {f"{section}.{key}" for section, values in raw.items() if isinstance(values, dict) for key in values}
        origins = [o for o in dict.fromkeys(given.get(key, str(path) if key in in_file else "") for key in exc.keys) if o]
        if not origins:
            raise
        raise SftkdError(f"{' and '.join(origins)}: {exc}") from None


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain nested dict (for YAML/JSON)."""
    return dataclasses.asdict(recipe)


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def validate(recipe: Recipe) -> None:
    """Cross-field checks that types alone cannot express."""
    from sftkd_cli.models import cascades_of

    # a full check of each name (e.g. D1C5 has too few layers; pairing: check_sft_pair); sft.* first:
    # an empty model.name takes sft.student's, and the error names the key the user gave
    for key, name in (("sft.teacher", recipe.sft.teacher), ("sft.student", recipe.sft.student),
                      ("model.name", recipe.model.name)):
        try:
            if name:
                cascades_of(name)
        except SftkdError as exc:
            raise RecipeValueError(f"{key}: {exc}", key) from None
    checks = [
        (recipe.train.epochs >= 1, "train.epochs", "at least 1"),
        (recipe.data.path != "", "data.path", "a prepared dataset's folder"),
        (recipe.run.dir != "", "run.dir", f"the folder runs are kept in (default {DEFAULT_RUNS_DIR})"),
        (recipe.train.batch_size >= 1, "train.batch_size", "at least 1"),
        (0 < recipe.train.lr <= MAX_LR, "train.lr", f"a number > 0 and <= {MAX_LR:g}"),
        (recipe.train.amp in AMP_MODES, "train.amp", f"one of {', '.join(AMP_MODES)}"),
        (recipe.train.cuda_graphs in CUDA_GRAPHS_MODES, "train.cuda_graphs", "auto, on or off"),
        (is_acceleration(recipe.data.acceleration), "data.acceleration", ACCELERATION_RULE),
        (recipe.distill.schedule in SCHEDULES, "distill.schedule", " or ".join(SCHEDULES)),
        (0 <= recipe.train.threads <= MAX_THREADS, "train.threads", f"0 (default) to {MAX_THREADS}"),
        (recipe.train.lr_step >= 1, "train.lr_step", "at least 1"),
        (0 < recipe.train.lr_gamma <= 1, "train.lr_gamma",  # > 1 would grow the LR past MAX_LR, epoch by epoch
         "a number > 0 and <= 1 (a decay: StepLR multiplies train.lr by it every train.lr_step epochs)"),
        (0 <= recipe.train.seed < 2**32, "train.seed", "between 0 and 2**32-1"),
        (1 <= recipe.model.channels <= MAX_CHANNELS, "model.channels", f"1 to {MAX_CHANNELS}"),
        (recipe.model.pad >= 0, "model.pad", "0 or more"),
        (recipe.train.max_steps_per_epoch >= 0, "train.max_steps_per_epoch", "0 (full epochs) or more"),
        (recipe.train.checkpoint_every >= 0, "train.checkpoint_every", "0 (epoch ends only) or more"),
        (recipe.data.max_train_slices >= 0, "data.max_train_slices", "0 (all) or more"),
        (recipe.data.max_val_slices >= 0, "data.max_val_slices", "0 (all) or more"),
        (recipe.eval.latency_slices >= 0, "eval.latency_slices", "0 (skip) or more"),
        (recipe.sft.batched in BATCHED_SETTINGS, "sft.batched", "auto, true or false"),
        (recipe.train.channels_last in LAYOUT_SETTINGS, "train.channels_last", "auto, true or false"),
        (recipe.data.task in TASKS, "data.task", f"{' or '.join(TASKS)} (super-resolution)"),
        (recipe.run.role in ("", *RUN_ROLES), "run.role", f"{', '.join(RUN_ROLES)} (or empty: the command's)"),
        (recipe.distill.stage1_epochs >= 0, "distill.stage1_epochs", "0 or more"),
        (recipe.eval.checkpoint in CHECKPOINT_NAMES or recipe.eval.checkpoint.endswith(".pt"), "eval.checkpoint",
         "best, last or a checkpoint file (.pt)"),
    ]
    for ok, key, expected in checks:
        if not ok:
            section, name = key.split(".")
            raise RecipeValueError(f"{key}: expected {expected}, got {shown_value(getattr(getattr(recipe, section), name))}", key)
    _check_loss_weights(recipe)
    check_run_name(recipe.run.name, "run.name", allow_empty=True)
    check_device(recipe.train.device, "train.device")
    _check_dataset(recipe)


def check_sft_pair(recipe: Recipe) -> None:
    """SFT pairs teacher and student block by block: both need the same number of cascades; and
    its loss needs a weight > 0 (`_check_some_weight`). Only for SFT training: the sft section is
    also where a teacher or student run names its model."""
    from sftkd_cli.models import cascades_of

    if cascades_of(recipe.sft.teacher) != cascades_of(recipe.sft.student):
        raise SftkdError(
            f"sft: teacher {recipe.sft.teacher} and student {recipe.sft.student} must have the same number of cascades"
        )
    _check_some_weight(recipe, list(loss_weights(recipe, "sft")))


def check_distill_schedule(recipe: Recipe) -> None:
    """Distillation's own settings: a known distill.method, with train.batch_size (per process)
    2 or more for a method (or its distill.options) that relates the slices of a batch (`catalog.between_samples`);
    two-stage distillation needs both stages: with stage1_epochs 0 it would train a plain L1 student recorded as a KD run, and with
    stage1_epochs >= train.epochs no L1 stage at all; and each loss it trains with needs a weight
    > 0 (`_check_distill_weights`). Only where distillation trains: a plan may set the schedule
    and weights in `base` for every stage."""
    from sftkd_cli.distill.catalog import between_samples, method_spec

    try:  # an unknown method: refused before any work (--print-recipe too), naming where it was given
        spec = method_spec(recipe.distill.method)
    except SftkdError as exc:
        raise RecipeValueError(str(exc), "distill.method") from None
    relating = between_samples(spec.name, recipe.distill.options)
    if relating and recipe.train.batch_size < 2:  # e.g. B x B matrices: one slice gives exactly 0
        raise RecipeValueError(f"train.batch_size: expected 2 or more with distill.method {spec.name} ({relating}: "
                               f"a batch of 1 gives no KD loss), got {recipe.train.batch_size}",
                               "train.batch_size", "distill.method", "distill.options")
    stage1, epochs = recipe.distill.stage1_epochs, recipe.train.epochs
    if recipe.distill.schedule != TWO_STAGE and stage1:  # else a user who set only stage1_epochs gets joint silently
        raise RecipeValueError(f"distill.stage1_epochs: only used with distill.schedule two-stage, got {stage1} with "
                               f"{recipe.distill.schedule}; set distill.schedule=two-stage (--schedule two-stage) or "
                               "leave stage1_epochs 0", "distill.stage1_epochs", "distill.schedule")
    if recipe.distill.schedule == TWO_STAGE and not 1 <= stage1 < epochs:
        raise RecipeValueError(f"distill.stage1_epochs: expected 1 or more and fewer than train.epochs ({epochs}) "
                               f"with distill.schedule two-stage, got {stage1}", "distill.stage1_epochs", "train.epochs",
                               "distill.schedule")
    _check_distill_weights(recipe)


def _check_distill_weights(recipe: Recipe) -> None:
    """Each loss distillation trains with has a weight > 0 (the terms as `training.kd` adds them):
    joint, w_rec, w_kd or w_imit (w_kd weighs nothing with method none); two-stage, w_kd for the
    first stage (the feature loss alone) and w_rec or w_imit for the second."""
    rec, kd, imit = "distill.w_rec", "distill.w_kd", "distill.w_imit"
    if recipe.distill.schedule == TWO_STAGE:
        _check_some_weight(recipe, [kd], " with distill.schedule two-stage (its first stage trains the feature loss alone)")
        _check_some_weight(recipe, [rec, imit], " with distill.schedule two-stage (its second stage's loss)")
    elif recipe.distill.method == "none":
        _check_some_weight(recipe, [rec, imit], " with distill.method none (no feature loss)")
    else:
        _check_some_weight(recipe, [rec, kd, imit])


def _check_some_weight(recipe: Recipe, keys: list[str], when: str = "") -> None:
    """Refuse a loss whose weights `keys` are all 0: the loss is then 0, so nothing would train.
    Each weight is first checked finite and >= 0 (this can run before `validate`)."""
    _check_loss_weights(recipe)
    weights = {key: value for section in LOSS_WEIGHT_SECTIONS for key, value in loss_weights(recipe, section).items()}
    if not any(weights[key] > 0 for key in keys):
        expected, got = ("> 0", "0") if len(keys) == 1 else ("at least one > 0", "all 0")
        raise RecipeValueError(f"{', '.join(keys)}: expected {expected}{when}, got {got} (a loss weighted 0 trains nothing)",
                               *keys)


#: the recipe sections whose `w_*` keys weigh loss terms (train-sft's and distill's losses)
LOSS_WEIGHT_SECTIONS = ("sft", "distill")


def loss_weights(recipe: Recipe, section: str) -> dict[str, float]:
    """The loss weights of `section` ("sft" or "distill") by key, e.g. {"sft.w_teacher": 1.0, ...}:
    its `w_*` keys, read from the section's dataclass, so that no list of them is kept elsewhere."""
    config = getattr(recipe, section)
    return {f"{section}.{item.name}": getattr(config, item.name)
            for item in dataclasses.fields(config) if item.name.startswith("w_")}


def _check_loss_weights(recipe: Recipe) -> None:
    """Every loss weight (sft.w_*, distill.w_*) is a finite number >= 0: a negative one would be
    ignored (distill.w_imit) or turn descent into ascent, and nan/inf only fail later as a bad loss."""
    for section in LOSS_WEIGHT_SECTIONS:
        for key, value in loss_weights(recipe, section).items():
            if not (math.isfinite(value) and value >= 0):
                raise RecipeValueError(f"{key}: expected a finite number >= 0, got {value!r}", key)


def _check_dataset(recipe: Recipe) -> None:
    """When data.path is already a prepared dataset, it must have been prepared for data.task, with
    data.acceleration, and have the splits data.train_split and data.val_split (named by their keys)
    and eval.split (else `evaluate` would fail only after training)."""
    from sftkd_cli.data.dataset import check_task
    from sftkd_cli.data.format import MANIFEST, check_holds
    from sftkd_cli.files import read_regular_bytes

    data = recipe.data
    path = Path(data.path) / MANIFEST
    if not path.is_file():  # no dataset yet, or a FIFO/device: the dataset reader says so later
        return
    try:
        manifest = json.loads(read_regular_bytes(path, MANIFEST))
    except (SftkdError, ValueError):  # unreadable: the dataset reader says so later
        return
    if not isinstance(manifest, dict):
        return
    check_task(manifest, data.path, data.task)
    accelerations, splits = manifest.get("accelerations"), manifest.get("splits")
    if isinstance(accelerations, list) and all(isinstance(a, (int, float)) for a in accelerations) and isinstance(splits, dict):
        check_holds(manifest, data.path, (data.acceleration, "data.acceleration"), (recipe.eval.split, "eval.split"),
                    "; evaluate would refuse it after training")
        for key, split in (("data.train_split", data.train_split), ("data.val_split", data.val_split)):
            check_holds(manifest, data.path, (data.acceleration, "data.acceleration"), (split, key))


def with_model(recipe: Recipe, default: str) -> Recipe:
    """Fill an empty model.name with the command's default architecture."""
    if recipe.model.name:
        return recipe
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, name=default.upper()))
