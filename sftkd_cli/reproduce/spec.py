"""Reading a plan file: `load_plan` checks every key and returns a `Plan` (see the package
docstring for the keys). Errors are one line naming the plan file and the key."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkd_cli.choices import CURVE_KEY, DEFAULT_ALPHA, DEFAULT_METRICS, PAPER_METRICS
from sftkd_cli.config import EvalConfig, Setting, keep_written_text, load_recipe
from sftkd_cli.safe_yaml import parse_yaml, read_yaml_file, read_yaml_text
from sftkd_cli.errors import SftkdError
from sftkd_cli.name_checks import check_split_name
from sftkd_cli.recipes import find_plan
from sftkd_cli.reproduce.data import DataSpec, data_spec
from sftkd_cli.reproduce.kinds import PLAN_FORMAT, SHAREABLE
from sftkd_cli.reproduce.paper import PaperSpec, paper_spec
from sftkd_cli.reproduce.values import as_mapping, as_metric_names, as_names, as_path, as_text, check_choice


#: recipe keys the plan sets itself, and where to set them instead
PLAN_OWNED = {
    "data.path": "data.out", "run.dir": "runs_dir", "run.name": "the stage id",
    "run.role": "the stage kind", "model.name": "sft.teacher / sft.student",
    "distill.teacher_run": "the plan's teacher and sft stages", "distill.method": "stages.kd.methods",
    "distill.init": "the stage kind: sft for SFT-KD, random for Std-KD and sft_random_init stages",
}


@dataclass(frozen=True)
class StageSpec:
    """A stage's recipe file (None: the recipes folder's, else the defaults) and overrides."""

    recipe: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """One copy of the stages: its name prefixes the run names."""

    name: str
    recipes: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """A validated plan file."""

    path: Path
    name: str
    description: str
    data: DataSpec
    base: dict[str, Any]
    runs_dir: Path
    report_dir: Path
    recipes: str | None
    variants: tuple[Variant, ...]
    shared: tuple[str, ...]
    stages: dict[str, StageSpec]  # teacher / student / sft, those the plan lists
    methods: tuple[str, ...]
    kd: dict[str, StageSpec]  # std-kd / sft-kd
    evaluate: dict[str, Any]
    compare: dict[str, Any]
    figures: dict[str, Any]
    paper: PaperSpec | None
    overrides: tuple[str, ...] = ()  # from the command line, applied to every stage last
    random_init: tuple[str, ...] = ()  # methods that also get an SFT-KD stage from a random student
    seeds: tuple[int, ...] = ()  # one run per seed of every training stage; () = the recipe's train.seed


TOP_KEYS = ("plan", "name", "description", "data", "base", "runs_dir", "report", "recipes",
            "variants", "shared", "stages", "figures", "paper", "seeds")
STAGE_KEYS = ("teacher", "student", "sft", "kd", "evaluate", "compare")
EVALUATE_DEFAULTS = {"split": EvalConfig.split, "checkpoint": EvalConfig.checkpoint, "sft_student": False}
COMPARE_DEFAULTS = {"metrics": list(DEFAULT_METRICS), "alpha": DEFAULT_ALPHA}
FIGURE_DEFAULTS = {"metrics": list(PAPER_METRICS), "curve": CURVE_KEY, "method": None, "volume": None,
                   "slice": None, "box": None}


def _flat_overrides(value: Any, where: str) -> dict[str, Any]:
    """Overrides as {'section.key': value}; accepts dotted keys or nested {section: {key: value}}."""
    flat: dict[str, Any] = {}
    for key, item in as_mapping(value, where).items():
        key = str(key)
        if "." in key:
            flat[key] = item
        elif isinstance(item, dict):
            flat.update({f"{key}.{sub}": sub_value for sub, sub_value in item.items()})
        else:
            raise SftkdError(f"{where}: {key!r}: expected section.key (e.g. train.epochs: 5)")
    for key in flat:
        if key in PLAN_OWNED:
            raise SftkdError(f"{where}: {key} is set by the plan (from {PLAN_OWNED[key]}); remove it")
    load_recipe(None, settings=as_settings(flat, where))  # a bad key or value is an error naming `where`
    return flat


def _keep_override_text(raw: Any, written: Any) -> None:
    """Recipe values in a plan (`base`, each `overrides`) keep the text of their text keys as
    written, as in a recipe file (`config.keep_written_text`); `written`: the plan read as text."""
    if isinstance(raw, dict) and isinstance(written, dict):
        for key, value in raw.items():
            if key in ("base", "overrides"):
                keep_written_text(value, written.get(key))
            else:
                _keep_override_text(value, written.get(key))
    elif isinstance(raw, list) and isinstance(written, list):
        for item, text in zip(raw, written):
            _keep_override_text(item, text)


def as_settings(flat: dict[str, Any], source: str) -> list[Setting]:
    """{'train.epochs': 5} -> recipe settings with their typed values, from `source` (for errors)."""
    return [Setting(key, value, source) for key, value in flat.items()]


def _stage_spec(value: Any, where: str) -> StageSpec:
    if isinstance(value, str):
        return StageSpec(recipe=value)
    raw = as_mapping(value, where, ("recipe", "overrides"))
    return StageSpec(as_text(raw.get("recipe"), f"{where}.recipe"), _flat_overrides(raw.get("overrides"), f"{where}.overrides"))


def _name(value: Any, where: str) -> str:
    name = as_text(value, where, optional=False)
    assert name is not None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise SftkdError(f"{where}: {name!r}: expected letters, digits, '.', '_', '+' or '-' (it names run directories)")
    return name


def load_plan(
    path: str | Path,
    overrides: Sequence[str] = (),
    runs_dir: str | Path | None = None,
    data_root: str | Path | None = None,
) -> Plan:
    """Read and validate a plan file (a path, else the plan shipped with sftkd of that name or
    place: `find_plan`); `overrides` (section.key=value) apply to every stage last."""
    path = find_plan(path)
    text = read_yaml_file(path, "plan")
    _keep_override_text(text, parse_yaml(read_yaml_text(path, "plan"), as_text=True))
    expected = f"expected a plan: a mapping with `plan: {PLAN_FORMAT}` at the top"
    if not isinstance(text, dict):
        raise SftkdError(f"{path}: {expected}, got {'an empty file' if text is None else type(text).__name__}")
    if "plan" not in text:  # before the keys are checked: a recipe has other keys
        raise SftkdError(f"{path}: {expected} (is this a recipe? use train-teacher/train-sft/distill)")
    raw = as_mapping(text, str(path), TOP_KEYS)
    if raw["plan"] != PLAN_FORMAT:
        raise SftkdError(f"{path}: plan: expected {PLAN_FORMAT} (the plan format this sftkd reads), got {raw['plan']!r}")
    where = f"{path}:"
    if data_root is not None:
        raw["data"] = {**as_mapping(raw.get("data"), f"{where} data"), "root": str(data_root)}
    data = data_spec(raw.get("data"), f"{where} data", "--data-root" if data_root is not None else None)
    base = _flat_overrides(raw.get("base"), f"{where} base")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in PLAN_OWNED:
            raise SftkdError(f"override {item!r}: {key} is set by the plan (from {PLAN_OWNED[key]})")
    load_recipe(None, list(overrides))  # errors name the override
    planned = as_path(as_text(raw.get("runs_dir"), f"{where} runs_dir") or "runs")
    runs = as_path(str(runs_dir)) if runs_dir is not None else planned
    report = as_text(raw.get("report"), f"{where} report")
    report_dir = as_path(report) if report else runs / "report"
    if report and runs != planned and report_dir.is_relative_to(planned):  # the report moves with --runs-dir
        report_dir = runs / report_dir.relative_to(planned)
    _check_apart(runs, data.out, f"{where} runs_dir {runs}" if runs_dir is None else f"--runs-dir {runs}", f"data.out {data.out}")
    stages_raw = as_mapping(raw.get("stages"), f"{where} stages", STAGE_KEYS)
    stages = {kind: _stage_spec(stages_raw[kind], f"{where} stages.{kind}") for kind in SHAREABLE if kind in stages_raw}
    methods, kd, random_init = _kd_section(stages_raw.get("kd"), f"{where} stages.kd")
    if methods and ("teacher" not in stages or "sft" not in stages):
        raise SftkdError(f"{where} stages.kd: needs stages.teacher (Std-KD) and stages.sft (SFT-KD-Recon)")
    evaluate = _options(stages_raw.get("evaluate"), f"{where} stages.evaluate", EVALUATE_DEFAULTS)
    compare = _options(stages_raw.get("compare"), f"{where} stages.compare", COMPARE_DEFAULTS)
    figures = _options(raw.get("figures"), f"{where} figures", FIGURE_DEFAULTS)
    _check_option_names(evaluate, compare, figures, where)
    if isinstance(figures["method"], str):
        figures["method"] = figures["method"].lower()  # as stages.kd.methods take it
    if figures["method"] is not None and figures["method"] not in methods:
        raise SftkdError(f"{where} figures.method: {figures['method']!r} is not among stages.kd.methods {list(methods)}")
    variants = _variants(raw.get("variants"), f"{where} variants")
    shared = as_names(raw.get("shared"), f"{where} shared")
    for kind in shared:
        if kind not in SHAREABLE:
            check_choice(kind, SHAREABLE, f"{where} shared", "stage")
        if kind not in stages:
            raise SftkdError(f"{where} shared: {kind} is not among the stages")
    if shared and not variants:
        raise SftkdError(f"{where} shared: only means something with variants")
    seeds = _seeds(raw.get("seeds"), f"{where} seeds")
    if seeds:
        _check_seed_not_overridden(base, variants, stages, kd, overrides, where)
    return Plan(
        path=path,
        name=as_text(raw.get("name"), f"{where} name") or path.stem,
        description=as_text(raw.get("description"), f"{where} description") or "",
        data=data, base=base, runs_dir=runs, report_dir=report_dir,
        recipes=as_text(raw.get("recipes"), f"{where} recipes"), variants=variants, shared=shared,
        stages=stages, methods=methods, kd=kd, evaluate=evaluate, compare=compare,
        figures=figures, paper=paper_spec(raw.get("paper"), f"{where} paper"), overrides=tuple(overrides),
        random_init=random_init, seeds=seeds,
    )


MAX_SEEDS = 100


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    """`seeds`: a list of distinct integers in 0..2**32-1 (at most MAX_SEEDS); None = ()."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise SftkdError(f"{where}: expected a list of integer seeds (e.g. [42, 43, 44]), got {value!r}")
    for seed in value:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise SftkdError(f"{where}: {seed!r}: expected an integer between 0 and 2**32-1")
    if len(set(value)) != len(value):
        raise SftkdError(f"{where}: seed {next(s for s in value if value.count(s) > 1)} is listed twice")
    if len(value) > MAX_SEEDS:
        raise SftkdError(f"{where}: {len(value)} seeds; expected at most {MAX_SEEDS}")
    return tuple(value)


def _check_seed_not_overridden(base: dict[str, Any], variants: Sequence[Variant], stages: dict[str, StageSpec],
                               kd: dict[str, StageSpec], overrides: Sequence[str], where: str) -> None:
    """With `seeds`, the plan sets train.seed itself; setting it elsewhere too is an error."""
    places = [("base", base)] + [(f"variants {v.name}", v.overrides) for v in variants]
    places += [(f"stages.{k}", spec.overrides) for k, spec in {**stages, **kd}.items()]
    for name, flat in places:
        if "train.seed" in flat:
            raise SftkdError(f"{where} {name}: train.seed is set by the plan's seeds; remove it")
    for item in overrides:
        if item.split("=", 1)[0].strip() == "train.seed":
            raise SftkdError(f"override {item!r}: train.seed is set by the plan's seeds")


def _check_apart(runs: Path, data: Path, runs_what: str, data_what: str) -> None:
    """The runs folder and the dataset folder must not be the same or one inside the other:
    rebuilding the dataset (`prepare-data --force`) would then remove runs, or a run the data."""
    a, b = runs.resolve(), data.resolve()
    if a == b or a in b.parents or b in a.parents:
        relation = "is" if a == b else "is inside" if b in a.parents else "contains"
        raise SftkdError(f"{runs_what}: {relation} the dataset folder ({data_what}); expected separate folders")


def _kd_section(value: Any, where: str) -> tuple[tuple[str, ...], dict[str, StageSpec], tuple[str, ...]]:
    """(methods, {'std-kd': spec, 'sft-kd': spec}, methods with an extra random-init SFT-KD stage)."""
    raw = as_mapping(value, where, ("methods", "std", "sft", "sft_random_init"))
    methods = _method_names(raw.get("methods"), f"{where}.methods")
    if len(set(methods)) != len(methods):
        raise SftkdError(f"{where}.methods: a method is listed twice")
    return methods, {"std-kd": _stage_spec(raw.get("std"), f"{where}.std"),
                     "sft-kd": _stage_spec(raw.get("sft"), f"{where}.sft")}, _random_init(raw.get("sft_random_init"), methods, where)


def _random_init(value: Any, methods: tuple[str, ...], where: str) -> tuple[str, ...]:
    """stages.kd.sft_random_init: true (every method), false/absent (none) or a list of the methods."""
    if value is None or value is False:
        return ()
    if value is True:
        return methods
    chosen = _method_names(value, f"{where}.sft_random_init")
    for method in chosen:
        if method not in methods:
            raise SftkdError(f"{where}.sft_random_init: {method!r} is not among stages.kd.methods {list(methods)}")
    return tuple(m for m in methods if m in chosen)


def _options(value: Any, where: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A small options block: known keys only, each of its default's type (None: any)."""
    out = {**defaults, **as_mapping(value, where, tuple(defaults))}
    for key, default in defaults.items():
        item = out[key]
        if default is None:  # optional figure settings, checked below
            continue
        if isinstance(default, bool) or isinstance(default, str):
            ok = type(item) is type(default)
        elif isinstance(default, float):
            item = out[key] = _number(item)
            ok = isinstance(item, (int, float)) and not isinstance(item, bool) and 0 < item < 1
        else:  # lists of names
            ok = isinstance(item, list) and bool(item) and all(isinstance(v, str) for v in item)
        if not ok:
            raise SftkdError(f"{where}.{key}: expected {_describe(default)}, got {item!r}")
    box, index, volume = out.get("box"), out.get("slice"), out.get("volume")
    if box is not None and not (isinstance(box, list) and len(box) == 4 and all(isinstance(b, int) for b in box)):
        raise SftkdError(f"{where}.box: expected [row, column, height, width] of the inset, got {box!r}")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        raise SftkdError(f"{where}.slice: expected a slice number (0 or more), got {index!r}")
    if volume is not None and not isinstance(volume, str):
        raise SftkdError(f"{where}.volume: expected a volume id (a string), got {volume!r}")
    return out


def _check_option_names(evaluate: dict[str, Any], compare: dict[str, Any], figures: dict[str, Any], where: str) -> None:
    """The names in the options blocks that the plan file alone can check: a typo fails at load
    (and --dry-run), not after all the training. stages.evaluate.split names a split of the
    dataset, which may not exist yet: the data stage checks it is there (`data.check_split`); here,
    that it is a plain name."""
    from sftkd_cli.report.figures import CURVE_LABELS
    from sftkd_cli.choices import CHECKPOINT_NAMES

    check_choice(evaluate["checkpoint"], CHECKPOINT_NAMES, f"{where} stages.evaluate.checkpoint", "checkpoint")
    check_split_name(evaluate["split"], f"{where} stages.evaluate.split")  # it names RUN/eval-split-<split>/
    as_metric_names(compare["metrics"], f"{where} stages.compare.metrics")
    as_metric_names(figures["metrics"], f"{where} figures.metrics")
    check_choice(figures["curve"], tuple(CURVE_LABELS), f"{where} figures.curve", "curve")


def _number(item: Any) -> Any:
    """A number written as text reads as that number (YAML reads 1e-2, without a point, as text;
    it stays text elsewhere, where a name such as 1e3 must keep its spelling); other values as they are."""
    if isinstance(item, str):
        try:
            return float(item)
        except ValueError:
            return item
    return item


def _describe(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, float):
        return "a number between 0 and 1"
    return "a list of names"


def _method_names(value: Any, where: str) -> tuple[str, ...]:
    """A list of KD method names, in any case as `sftkd distill --method` takes them, lower-cased."""
    from sftkd_cli.distill.catalog import CATALOG

    methods = tuple(name.lower() for name in as_names(value, where))
    for method in methods:
        check_choice(method, tuple(CATALOG), where, "method")
    return methods


def _variants(value: Any, where: str) -> tuple[Variant, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise SftkdError(f"{where}: expected a list of {{name, recipes, overrides}}")
    out = []
    for i, item in enumerate(value):
        raw = as_mapping(item, f"{where}[{i}]", ("name", "recipes", "overrides"))
        out.append(Variant(_name(raw.get("name"), f"{where}[{i}].name"), as_text(raw.get("recipes"), f"{where}[{i}].recipes"),
                           _flat_overrides(raw.get("overrides"), f"{where}[{i}].overrides")))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise SftkdError(f"{where}: two variants named {next(n for n in names if names.count(n) > 1)!r}")
    return tuple(out)
