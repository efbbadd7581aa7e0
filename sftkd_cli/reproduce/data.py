"""The plan's data stage: the `data:` block (which source, where from, where to, prepare options)
and preparing the dataset from it exactly as `sftkd prepare-data <source>` would.

What each source needs (its defaults, its own options, whether it reads a raw folder) comes from
the source catalog (`sftkd_cli.data.catalog`), which the `prepare-data` command is generated from.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from sftkd_cli.data.catalog import SOURCES as CATALOG
from sftkd_cli.data.options import PREPARE_KEYS, OptionError, OptionNames, PrepareOptions
from sftkd_cli.data.output import DatasetDiffers
from sftkd_cli.errors import SftkdError, did_you_mean
from sftkd_cli.files import display_path
from sftkd_cli.reproduce.values import as_mapping, as_path, as_text, check_choice

if TYPE_CHECKING:
    from sftkd_cli.data.sources.base import Source


#: a plan's `data.source`: a catalog source, or "prepared" (a prepared dataset, used as it is)
SOURCES: tuple[str, ...] = (*CATALOG, "prepared")


@dataclass(frozen=True)
class DataSpec:
    """How to get the prepared dataset every stage trains on."""

    source: str
    out: Path
    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


def data_spec(value: Any, where: str, root_option: str | None = None) -> DataSpec:
    """The plan's `data:` block, checked (source name, raw folder when the source needs one and
    only then, options); `root_option` names the command-line option that set its root, if one did."""
    raw = as_mapping(value, where, ("source", "root", "out", "options"))
    source = as_text(raw.get("source"), f"{where}.source") or "demo"
    check_choice(source, SOURCES, f"{where}.source", "source")
    out = as_text(raw.get("out"), f"{where}.out")
    if out is None:
        raise SftkdError(f"{where}.out: expected the prepared dataset folder (e.g. data/demo)")
    root = as_text(raw.get("root"), f"{where}.root")
    if source in CATALOG and CATALOG[source].needs_root and root is None:
        raise SftkdError(f"{where}.root: source {source} needs the raw data folder")
    if root is not None and not reads_root(source):
        given = f"{root_option} {root}" if root_option else f"{where}.root {root}"
        raise SftkdError(f"{given}: the plan's data source {source} reads no raw data folder; "
                         f"expected {'no ' + root_option if root_option else 'no data.root'} for it")
    own = [o.key for o in CATALOG[source].options] if source in CATALOG else []
    options = as_mapping(raw.get("options"), f"{where}.options", (*PREPARE_KEYS, *own))
    if source == "prepared" and options:
        raise SftkdError(f"{where}.options: source prepared uses {out} as it is; remove the options")
    if source in CATALOG:
        checked_options(source, options, where)  # a wrong value fails when the plan is read
    return DataSpec(source, as_path(out), None if root is None else as_path(root), options)


def reads_root(source: str) -> bool:
    """Whether a plan's data source prepares its dataset from a raw data folder (data.root,
    --data-root): not `prepared` (a dataset used as it is), nor a source that needs none (demo)."""
    return source in CATALOG and CATALOG[source].needs_root


def checked_options(source: str, options: dict[str, Any], where: str) -> PrepareOptions:
    """The plan's data.options as `prepare-data <source>` takes them, every value checked (its
    type, then its range, the source's own options too); errors name `where`.options.<key>."""
    spec, name = CATALOG[source], OptionNames(f"{where}.options.")
    prepared = spec.prepare_options(options, name)
    prepared.validate(name)
    spec.own_values(options, name)
    return prepared


def prepare_data(data: DataSpec, plan_path: Path, console: Console) -> bool:
    """Prepare (or check) the plan's dataset (`plan_path` names the plan in errors); returns True
    when something was written."""
    from sftkd_cli.data.dataset import load_manifest

    if data.source == "prepared":
        load_manifest(data.out)  # a clear error when it is not a prepared dataset
        return False
    from sftkd_cli.data.prepare import prepare_dataset

    where = f"{plan_path}: data"
    names = OptionNames(f"{where}.options.")  # a plan's keys, as its errors and warnings name them
    prepared = checked_options(data.source, data.options, where)
    source = CATALOG[data.source].make_source(data.root, data.options)
    try:
        source.files()
    except SftkdError as exc:  # e.g. the demo's template package (nilearn) is not installed
        if not _prepared_alike(data.out, source, prepared):
            raise
        console.print(f"dataset {data.out}: up to date (prepared with these options; its source could not be "
                      f"read to compare checksums: {exc})", highlight=False, markup=False)
        return False
    try:
        result = prepare_dataset(source, data.out, prepared)
    except OptionError as exc:  # found while preparing (--downsample too large, an unknown --val id): the plan's key
        raise exc.worded(names) from None
    except DatasetDiffers as exc:  # reproduce has no --force: say what a plan's user can do
        command = shlex.join(["sftkd", "prepare-data", data.source, *([str(data.root)] if data.root else []),
                              "--out", str(data.out), "--force"])
        raise SftkdError(f"{where}.out {display_path(data.out)}: existing dataset {exc.why}; move it away and run "
                         f"the plan again (its data stage prepares it anew), or rebuild it with `{command}` and "
                         "the plan's data.options") from None
    console.print(f"dataset {data.out}: " + ("up to date" if result.unchanged else f"prepared in {result.seconds:.1f} s"),
                  highlight=False, markup=False, soft_wrap=True)
    if warning := result.padding_warning(names):
        console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    return not result.unchanged


def check_split(out: Path, split: str, where: str) -> None:
    """`split` (the plan's stages.evaluate.split) must be a non-empty split of the dataset at
    `out`: the data stage checks it once the dataset exists, before any training, since the plan
    file alone cannot know the dataset's split names. `where` names the plan and key."""
    from sftkd_cli.data.dataset import load_manifest, split_volumes

    try:
        manifest = load_manifest(out)
    except SftkdError as exc:
        raise SftkdError(f"{where}: {exc}") from None
    splits = [str(s) for s in manifest["splits"]]
    nearest = did_you_mean(split, splits) if split not in splits else ""  # not for a split that is there but empty
    try:
        split_volumes(manifest, out, split)
    except SftkdError as exc:
        raise SftkdError(f"{where}: {exc}{nearest}") from None


def check_figure_slice(out: Path, split: str, volume: str | None, index: int | None, where: str) -> None:
    """The plan's figures.volume and figures.slice, checked against the dataset at `out` by the
    data stage (after `check_split`), before any training rather than in the report after all of
    it: the volume must be one of `split`'s (the evaluated ones the figures show), the slice one
    that volume has (`data.format.check_volume_slice`). `where` names the plan."""
    from sftkd_cli.data.dataset import load_manifest, split_volumes
    from sftkd_cli.data.format import check_volume_slice

    if volume is None and index is None:
        return
    manifest = load_manifest(out)
    split_volumes(manifest, out, split)  # a split the dataset lacks, or an empty one: its own error
    try:
        check_volume_slice(manifest, display_path(out), volume, index, ("figures.volume", "figures.slice"), split)
    except SftkdError as exc:
        raise SftkdError(f"{where}: {exc}") from None


def existing_dataset_problem(data: DataSpec, split: str, volume: str | None, index: int | None, plan_path: Path) -> str:
    """What the data stage would refuse (`check_split`, `check_figure_slice`) in the dataset the
    plan will use where a dry run can already tell: one used as it is (source prepared), or one at
    data.out prepared with the plan's options. '' otherwise, also where the data stage will prepare
    the dataset anew (only it can then tell)."""
    if data.source != "prepared":
        try:
            prepared = checked_options(data.source, data.options, f"{plan_path}: data")
            source = CATALOG[data.source].make_source(data.root, data.options)
        except SftkdError:
            return ""
        if not _prepared_alike(data.out, source, prepared):
            return ""
    try:
        check_split(data.out, split, f"{plan_path}: stages.evaluate.split")
        check_figure_slice(data.out, split, volume, index, str(plan_path))
    except SftkdError as exc:
        return str(exc)
    return ""


def _prepared_alike(out: Path, source: Source, prepared: PrepareOptions) -> bool:
    """Whether `out` holds a complete dataset that prepare-data wrote from `source` with exactly
    `prepared`'s options: what can be told without reading the source (whose checksums it then
    cannot compare)."""
    from sftkd_cli.data.dataset import load_manifest

    try:
        manifest = load_manifest(out)
    except SftkdError:
        return False
    if manifest.get("options") != {"source": source.name, **source.options(), **prepared.record()}:
        return False
    volumes, mask = manifest.get("volumes"), manifest.get("mask")
    if not isinstance(volumes, dict) or not isinstance(mask, dict) or not isinstance(mask.get("files", {}), dict):
        return False
    files = [v.get("file") if isinstance(v, dict) else None for v in volumes.values()]
    files += list(mask.get("files", {}).values())
    return all(isinstance(name, str) and name and (out / name).is_file() for name in files)

