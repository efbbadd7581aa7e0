"""Data sources: one module per folder layout (demo, acdc, mrbrains, nifti, fastmri).

A new dataset is one `Source` subclass listing its files, and its `SourceSpec` (defaults, own
options, help) in `sftkd_cli.data.catalog`; the `prepare-data` command and `reproduce` plans
follow from the spec, and `sftkd_cli.data.prepare` does the rest.
"""

from sftkd_cli.data.sources.acdc import AcdcSource
from sftkd_cli.data.sources.base import Piece, Source, SourceFile, SplitRequest, split_groups
from sftkd_cli.data.sources.demo import DemoSource
from sftkd_cli.data.sources.fastmri import FastMRISource
from sftkd_cli.data.sources.mrbrains import MRBrainsSource
from sftkd_cli.data.sources.nifti import NiftiSource

__all__ = [
    "AcdcSource", "DemoSource", "FastMRISource", "MRBrainsSource", "NiftiSource",
    "Piece", "Source", "SourceFile", "SplitRequest", "split_groups",
]
