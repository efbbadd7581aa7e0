"""The plan's data stage: the `data:` block (which source, where from, where to, prepare options)
and preparing the dataset from it exactly as `sftkd prepare-data <source>` would.

Self-contained on purpose: everything the plan knows about data sources lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from sftkd_cli.data.prepare import SOURCE_DEFAULTS  # one home for prepare-data's per-source defaults
from sftkd_cli.errors import SftkdError, did_you_mean
from sftkd_cli.reproduce.values import as_mapping, as_path, as_text


SOURCES: tuple[str, ...] = ("demo", "acdc", "mrbrains", "nifti", "prepared")
#: `sftkd prepare-data <source>` defaults, so a plan prepares exactly what the command would
SOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    "demo": {"template": "icbm152", "template_path": None, "slab": 8, "gap": 2},
    "acdc": {}, "mrbrains": {"modality": "T1"}, "nifti": {"pattern": "*.nii.gz"}, "prepared": {},
}
PREPARE_KEYS: tuple[str, ...] = (
    "size", "slice_axis", "downsample", "accelerations", "mask_kind", "mask_files", "mask_layout",
    "center_fraction", "seed", "val_fraction", "test_fraction", "val", "test", "min_slice_mean", "task",
)


@dataclass(frozen=True)
class DataSpec:
    """How to get the prepared dataset every stage trains on."""

    source: str
    out: Path
    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


def data_spec(value: Any, where: str) -> DataSpec:
    """The plan's `data:` block, checked (source name, raw folder when the source needs one, options)."""
    raw = as_mapping(value, where, ("source", "root", "out", "options"))
    source = as_text(raw.get("source"), f"{where}.source") or "demo"
    if source not in SOURCES:
        raise SftkdError(f"{where}.source: {source!r}{did_you_mean(source, SOURCES, list_otherwise=True)}")
    out = as_text(raw.get("out"), f"{where}.out")
    if out is None:
        raise SftkdError(f"{where}.out: expected the prepared dataset folder (e.g. data/demo)")
    root = as_text(raw.get("root"), f"{where}.root")
    if source in ("acdc", "mrbrains", "nifti") and root is None:
        raise SftkdError(f"{where}.root: source {source} needs the raw data folder")
    options = as_mapping(raw.get("options"), f"{where}.options", (*PREPARE_KEYS, *SOURCE_OPTIONS[source]))
    if source == "prepared" and options:
        raise SftkdError(f"{where}.options: source prepared uses {out} as it is; remove the options")
    return DataSpec(source, as_path(out), None if root is None else as_path(root), options)


def prepare_data(data: DataSpec, plan_path: Path, console: Console) -> bool:
    """Prepare (or check) the plan's dataset (`plan_path` names the plan in errors); returns True
    when something was written."""
    from sftkd_cli.data.dataset import load_manifest

    if data.source == "prepared":
        load_manifest(data.out)  # a clear error when it is not a prepared dataset
        return False
    from sftkd_cli.data.prepare import PrepareOptions, default_accelerations, prepare_dataset

    options = {**SOURCE_DEFAULTS[data.source], **{k: v for k, v in data.options.items() if k in PREPARE_KEYS}}
    extra = {**SOURCE_OPTIONS[data.source], **{k: v for k, v in data.options.items() if k not in PREPARE_KEYS}}
    try:
        mask_files = {float(a): Path(p) for a, p in (options.get("mask_files") or {}).items()}
        task = str(options.get("task", "recon"))
        accelerations = options.get("accelerations") or default_accelerations(task, mask_files)
        prepared = PrepareOptions(
            size=None if options.get("size") is None else (int(options["size"][0]), int(options["size"][1])),
            slice_axis=int(options.get("slice_axis", 2)),
            downsample=int(options.get("downsample", 1)),
            accelerations=tuple(float(a) for a in accelerations),
            mask_kind=str(options.get("mask_kind", "random")),
            mask_files=mask_files,
            mask_layout=str(options.get("mask_layout", "corner")),
            center_fraction=options.get("center_fraction"),
            seed=int(options.get("seed", 42)),
            val_fraction=options.get("val_fraction"),
            test_fraction=options.get("test_fraction"),
            val=tuple(str(v) for v in options.get("val") or ()),
            test=tuple(str(v) for v in options.get("test") or ()),
            min_slice_mean=float(options.get("min_slice_mean", 0.0)),
            task=task,
        )
    except (TypeError, ValueError, IndexError) as exc:
        raise SftkdError(f"{plan_path}: data.options: {exc}") from None
    source = _source(data, extra)
    try:
        source.files()
    except SftkdError as exc:  # e.g. the demo's template package (nilearn) is not installed
        prepared.validate()
        if not _prepared_alike(data.out, {"source": source.name, **source.options(), **prepared.record()}):
            raise
        console.print(f"dataset {data.out}: up to date (prepared with these options; its source could not be "
                      f"read to compare checksums: {exc})", highlight=False, markup=False)
        return False
    result = prepare_dataset(source, data.out, prepared)
    console.print(f"dataset {data.out}: " + ("up to date" if result.unchanged else f"prepared in {result.seconds:.1f} s"), highlight=False)
    return not result.unchanged


def _prepared_alike(out: Path, options: dict[str, Any]) -> bool:
    """Whether `out` holds a complete dataset that prepare-data wrote with exactly `options`: what
    the data stage can tell without reading the source (whose checksums it then cannot compare)."""
    from sftkd_cli.data.dataset import load_manifest

    try:
        manifest = load_manifest(out)
    except SftkdError:
        return False
    if manifest.get("options") != options:
        return False
    volumes, mask = manifest.get("volumes"), manifest.get("mask")
    if not isinstance(volumes, dict) or not isinstance(mask, dict) or not isinstance(mask.get("files", {}), dict):
        return False
    files = [v.get("file") if isinstance(v, dict) else None for v in volumes.values()]
    files += list(mask.get("files", {}).values())
    return all(isinstance(name, str) and name and (out / name).is_file() for name in files)


def _source(data: DataSpec, extra: dict[str, Any]):
    """The data source the plan names, built with its source options (`extra`)."""
    from sftkd_cli.data.sources import AcdcSource, DemoSource, MRBrainsSource, NiftiSource

    if data.source == "demo":
        path = extra.get("template_path")
        return DemoSource(str(extra["template"]), None if path is None else Path(path), slab=int(extra["slab"]), gap=int(extra["gap"]))
    assert data.root is not None
    if data.source == "acdc":
        return AcdcSource(data.root)
    if data.source == "mrbrains":
        return MRBrainsSource(data.root, str(extra["modality"]))
    return NiftiSource(data.root, str(extra["pattern"]))
