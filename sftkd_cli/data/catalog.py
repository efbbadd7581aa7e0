"""What sftkd knows about each data source besides its folder layout: the one home of a source.

A `SourceSpec` names the `Source` class (imported only when a dataset is prepared), the source's
defaults for the shared prepare options (image size, slicing, ...), its own options (flag, type,
default, help), whether it reads a ROOT folder, and its command help. `sftkd prepare-data
<source>` is generated from it and `sftkd reproduce` plans are checked and prepared with it, so
both prepare alike. Light on purpose (no NumPy, no h5py): command help imports it.

Adding a data source: its `Source` subclass in `sftkd_cli/data/sources/<name>.py` and its
`SourceSpec` in `SOURCES` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkd_cli.choices import DEMO_TEMPLATES
from sftkd_cli.data.options import PREPARE_KEYS, OptionNames, PrepareOptions, prepare_default
from sftkd_cli.errors import SftkdError, did_you_mean

if TYPE_CHECKING:
    from sftkd_cli.data.sources.base import Source


@dataclass(frozen=True)
class SourceOption:
    """An option of one source only: `key` is the `Source` keyword, the plan's `data.options` key
    and the manifest's `options` key; `flag` is how the command spells it. In help it follows the
    shared option `after`."""

    key: str
    flag: str
    type: type
    default: Any
    metavar: str
    help: str
    after: str = "out"
    choices: tuple[str, ...] = ()  # the values it takes, when a few names
    minimum: int | None = None  # its least value, when a number

    def value(self, raw: Any) -> Any:
        """`raw` as the option's type (None stays None)."""
        return None if raw is None else self.type(raw)

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (already of the option's type), or None when it is fine."""
        if value is None:
            return None
        if self.choices and value not in self.choices:
            return f"expected one of {', '.join(self.choices)}{did_you_mean(value, self.choices)}"
        if self.minimum is not None and value < self.minimum:
            return f"expected an integer >= {self.minimum}"
        return None


@dataclass(frozen=True)
class SourceSpec:
    """One data source: its name (`prepare-data <name>`, a plan's `data.source`), its `Source`
    class as 'module:Class', its help paragraphs and example commands, its defaults for the shared
    prepare options, its own options, whether it reads a ROOT folder (else `default_out` is the
    --out default), and the shared options it decides itself (its command does not offer them)."""

    name: str
    source_class: str
    help: str
    examples: tuple[str, ...]
    defaults: Mapping[str, Any]
    options: tuple[SourceOption, ...] = ()
    needs_root: bool = True
    default_out: str | None = None
    decides: tuple[str, ...] = ()
    decides_why: str = ""  # why it decides them, for the error that refuses one
    label: str = ""  # the dataset's name in tables (compare's Dataset column); the name when empty

    def option_default(self, key: str) -> Any:
        """The default of a shared prepare option for this source (e.g. acdc 'size' -> (150, 150))."""
        return self.defaults[key] if key in self.defaults else prepare_default(key)

    def prepare_options(self, values: Mapping[str, Any], name: OptionNames = OptionNames()) -> PrepareOptions:
        """`PrepareOptions` from option values keyed by field name (a plan's `data.options`, the
        command's parsed options); this source's defaults fill the missing ones, its own options
        are ignored. A key that is neither (`acc` for `accelerations`), a value of the wrong type,
        or a value for an option the source decides itself (`unused`), is an SftkdError naming the
        option as `name` does."""
        shared = [f.name for f in fields(PrepareOptions)]
        for key in values:
            if key not in shared and key not in (o.key for o in self.options):
                raise SftkdError(self._unknown(key, shared))
        for key in self.decides:
            if values.get(key) is not None:
                raise SftkdError(self.unused(key, name))
        return PrepareOptions.from_values({**self.defaults, **{k: v for k, v in values.items() if k in shared}}, name)

    def _unknown(self, key: object, shared: list[str]) -> str:
        """The one line refusing option `key`, which neither the shared options nor this source's
        own have: the key, the nearest one (a command's flag: `acc` is `accelerations`), the keys it takes."""
        takes = [k for k in shared if k not in self.decides] + [o.key for o in self.options]
        flags = {OptionNames()(k).removeprefix("--").replace("-", "_"): k for k in shared}
        nearest = (f"; did you mean {flags[key]}?" if isinstance(key, str) and key in flags
                   else did_you_mean(key, takes))
        return f"prepare option {key!r}: not an option of source {self.name} (it takes {', '.join(takes)}){nearest}"

    def unused(self, key: str, name: OptionNames = OptionNames()) -> str:
        """The one line refusing the shared option `key`, which this source decides itself: the
        option as `name` spells it, the source, why, and the options it takes."""
        takes = [name.ref(k) for k in PREPARE_KEYS if k not in self.decides]
        takes += [option.flag if not name.prefix else option.key for option in self.options]
        return f"{name(key)}: not used by source {self.name} ({self.decides_why}); it takes {', '.join(takes)}"

    def own_values(self, values: Mapping[str, Any], name: OptionNames = OptionNames()) -> dict[str, Any]:
        """This source's own options from `values` as their types (missing ones: their defaults;
        other keys ignored); a value of the wrong type is an SftkdError naming the option as
        `name` does (the command's flag is the option's own, not derived from its key)."""
        out = {}
        for option in self.options:
            raw = values.get(option.key, option.default)
            shown = f"{option.flag} {raw}" if not name.prefix else name(option.key, repr(raw))
            try:
                out[option.key] = option.value(raw)
            except (TypeError, ValueError):
                expected = {int: "an integer", float: "a number"}.get(option.type, "a string")
                raise SftkdError(f"{shown}: expected {expected}") from None
            problem = option.problem(out[option.key])
            if problem:
                raise SftkdError(f"{shown}: {problem}")
        return out

    def make_source(self, root: Path | None, values: Mapping[str, Any]) -> Source:
        """The `Source`, built from its own options in `values` (`own_values`)."""
        module, class_name = self.source_class.split(":")
        cls = getattr(importlib.import_module(module), class_name)
        kwargs = self.own_values(values)
        if not self.needs_root:
            return cls(**kwargs)
        assert root is not None, f"source {self.name} needs a root folder"
        return cls(Path(root), **kwargs)


#: every data source, in the order help lists them
SOURCES: dict[str, SourceSpec] = {spec.name: spec for spec in (
    SourceSpec(
        "demo", "sftkd_cli.data.sources.demo:DemoSource",
        help="Built-in demo: a real T1 brain template shipped in an installable package (nilearn's "
             "ICBM152 2009a; pip install 'sftkd\\[demo]'), or Colin27 from Debian's mricron-data.\n\n"
             "Axial slices, 2x in-plane block-mean downsampling (2 mm) and a centre 96 x 96 crop; slices "
             "darker than 0.3 x the volume mean are skipped. Split into slabs of 8 slices separated by 2 "
             "skipped slices, in the pattern train, val, train, test, train (about 60/20/20).",
        examples=("sftkd prepare-data demo",
                  "sftkd prepare-data demo --out data/demo-colin --source colin27",
                  "sftkd prepare-data demo --out data/demo-sr --task sr --scale 4"),
        defaults={"size": (96, 96), "slice_axis": 2, "downsample": 2, "min_slice_mean": 0.3},
        options=(
            SourceOption("template", "--source", str, "icbm152", "NAME",
                         "Template: icbm152 (nilearn) | colin27 (mricron-data).", choices=DEMO_TEMPLATES),
            SourceOption("template_path", "--template", Path, None, "FILE", "Explicit path of the template NIfTI file."),
            SourceOption("slab", "--slab", int, 8, "N", "Slices per split slab.", after="downsample", minimum=1),
            SourceOption("gap", "--gap", int, 2, "N", "Slices skipped between slabs (>= 1).", after="downsample",
                         minimum=1),
        ),
        needs_root=False, default_out="data/demo",
        decides=("slice_axis", "val_fraction", "test_fraction", "val", "test"),
        decides_why="it cuts the template into axial slabs and assigns them to train, val and test itself",
        label="Demo",
    ),
    SourceSpec(
        "acdc", "sftkd_cli.data.sources.acdc:AcdcSource",
        help="ACDC cardiac MRI: the ED/ES image frames of training|testing/patientNNN/ (never labels or "
             "4-D cines), slices along the last axis, centre 150 x 150.\n\n"
             "Split by patient: training/ -> train and testing/ -> val (the paper's 150/50). Without "
             "testing/, or with --val/--val-fraction, a seeded 25 % of the training patients is val and "
             "testing/ becomes test.",
        examples=("sftkd prepare-data acdc /data/ACDC --out data/acdc",
                  "sftkd prepare-data acdc /data/ACDC --out data/acdc-5x --acc 5",
                  "sftkd prepare-data acdc /data/ACDC --out data/acdc-f --mask-file 4=mask4.npy"),
        defaults={"size": (150, 150), "slice_axis": -1},
        label="Cardiac",
    ),
    SourceSpec(
        "mrbrains", "sftkd_cli.data.sources.mrbrains:MRBrainsSource",
        help="MRBrainS18 (training/<id>/pre/reg_T1.nii.gz) or MRBrainS13 (TrainingData/<n>/T1.nii): one "
             "modality, slices along the last axis, 240 x 240.\n\n"
             "Split by volume: a seeded 25 % for val (7 volumes -> 5 train, 2 val, as in the paper), or "
             "--val IDs.",
        examples=("sftkd prepare-data mrbrains /data/MRBrainS18 --out data/mrbrains",
                  "sftkd prepare-data mrbrains /data/MRBrainS18 --out data/sr --task sr --scale 4"),
        defaults={"size": (240, 240), "slice_axis": -1},
        options=(SourceOption("modality", "--modality", str, "T1", "NAME", "T1 | FLAIR | IR."),),
        label="MRBrainS",
    ),
    SourceSpec(
        "nifti", "sftkd_cli.data.sources.nifti:NiftiSource",
        help="Any folder of 3-D NIfTI volumes matched by --pattern (at any depth). Without --size all "
             "volumes must share one in-plane size.\n\n"
             "Split by subject for BIDS names, else by file: files under a sub-<label> folder or named "
             "sub-<label>_... go to one split per subject (--val sub-01 names subjects); other files "
             "each on their own (--val names volume ids). A seeded --val-fraction, or --val IDs.",
        examples=("sftkd prepare-data nifti /data/scans --out data/scans --size 128 128",
                  "sftkd prepare-data nifti /data/scans --out data/t2 --pattern '*_T2w.nii.gz'"),
        defaults={"size": None, "slice_axis": 2},
        options=(SourceOption("pattern", "--pattern", str, "*.nii.gz", "GLOB",
                              "Glob of volume files; matched at any depth unless it has '/'."),),
        label="NIfTI",
    ),
    SourceSpec(
        "fastmri", "sftkd_cli.data.sources.fastmri:FastMRISource",
        help="fastMRI single-coil raw k-space (ROOT/**/*.h5: kspace, reconstruction_esc), kept complex: "
             "the full centred k-space and fastMRI's magnitude target per volume, divided by the file's max; "
             "masks sample k-space columns and are applied when slices are read. Multi-coil files are not "
             "supported yet; test and challenge files (no reconstruction_esc) are skipped, counted in one line.\n\n"
             "Split by file: singlecoil_train/ -> train and singlecoil_val/ -> val; otherwise, or with "
             "--val/--val-fraction (the val folder then becomes test), a seeded 25 % for val. --mask-kind "
             "fastmri-random | fastmri-equispaced give the fastmri package's masks for --seed (RandomMaskFunc, EquispacedMaskFractionFunc).",
        examples=("sftkd prepare-data fastmri /data/knee --out data/knee",
                  "sftkd prepare-data fastmri /data/knee -o data/pd --acquisition CORPD_FBK",
                  "sftkd prepare-data fastmri /data/knee -o data/k10 --volume-sample-rate 0.1"),
        defaults={"size": None, "mask_kind": "fastmri-random", "mask_layout": "centered"},
        options=(
            SourceOption("acquisition", "--acquisition", str, None, "NAME",
                         "Keep only files of this fastMRI acquisition (e.g. CORPD_FBK; comma list)."),
            SourceOption("sample_rate", "--sample-rate", float, 1.0, "F",
                         "Seeded fraction of all slices to keep (as fastMRI's SliceDataset).", after="test"),
            SourceOption("volume_sample_rate", "--volume-sample-rate", float, 1.0, "F",
                         "Seeded fraction of the volumes (files) of each split folder to keep (at least one).",
                         after="test"),
        ),
        decides=("slice_axis", "downsample", "min_slice_mean", "mask_layout", "task"),
        decides_why="it reads raw k-space: no slicing, downsampling or slice filter; centred k-space; "
                    "reconstruction only",
        label="fastMRI",
    ),
)}

#: each source's defaults for the shared prepare options (a view of `SOURCES`)
SOURCE_DEFAULTS: dict[str, Mapping[str, Any]] = {name: spec.defaults for name, spec in SOURCES.items()}


def source_label(source: str) -> str:
    """A dataset's name in tables from the source its manifest records ('demo/icbm152' -> 'Demo');
    an unknown source reads as recorded."""
    spec = SOURCES.get(source.split("/", 1)[0])
    return (spec.label or spec.name) if spec else source
