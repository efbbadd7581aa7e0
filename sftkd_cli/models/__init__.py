"""Reconstruction networks, found by architecture name.

Each family module defines its `Family` (name pattern, builder, limits and export hooks, see
models/family.py); `FAMILIES` lists them and `build_model(name, acquisition=...)` picks the family
whose pattern matches. Names are case-insensitive: D5C5, d3c5. A new family is its module, one
line in `FAMILIES` and its entry in `choices.ARCHITECTURES` (what command help says of it, read
without importing torch).
"""

from __future__ import annotations

import re

import torch

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import dccnn, dcunet, vdsr
from sftkd_cli.models.base import CascadeNet, count_parameters
from sftkd_cli.models.dccnn import DCCNN, parse_name
from sftkd_cli.models.dcunet import DCUNet
from sftkd_cli.models.family import MAX_CASCADES, MAX_CONVS, Family

FAMILIES: list[Family] = [dccnn.FAMILY, vdsr.FAMILY, dcunet.FAMILY]


def family_of(name: str) -> Family:
    """The family whose pattern matches `name`; a clear error listing the known forms otherwise."""
    for family in FAMILIES:
        match = re.fullmatch(family.pattern, name.strip(), flags=re.IGNORECASE | re.ASCII)
        if match:
            for digits, (what, limit) in zip(match.groups(), family.limits):
                if len(digits) > 6 or int(digits) > limit:
                    shown = name.strip() if len(name.strip()) <= 40 else name.strip()[:37] + "..."
                    raise SftkdError(f"model {shown!r}: {digits if len(digits) <= 12 else digits[:9] + '...'} {what}; "
                                     f"expected at most {limit}")
            return family
    known = "; ".join(f"{f.example} ({f.description})" for f in FAMILIES)
    raise SftkdError(f"model {name!r}: unknown architecture; expected one of: {known}")


def build_model(name: str, channels: int = 32, pad: int = 5, *, acquisition: Acquisition | None = None) -> CascadeNet:
    """Build the network called `name` (e.g. D5C5) with fresh weights, for data of `acquisition`
    (None: the family's default, `Family.default_acquisition`: for the DC families the paper's
    corner-layout magnitude images): its data consistency takes the layout."""
    family = family_of(name)
    acquisition = acquisition or family.default_acquisition()
    family.check_fits(name.strip().upper(), acquisition)
    return family.build(name.strip().upper(), acquisition, channels, pad).float()


def cascades_of(name: str) -> int:
    """Number of blocks of architecture `name` (for recipe checks): built on the meta device, so
    no memory is allocated and the global RNG is not touched."""
    with torch.device("meta"):
        return build_model(name).cascades


__all__ = ["FAMILIES", "MAX_CASCADES", "MAX_CONVS", "Acquisition", "CascadeNet", "DCCNN", "DCUNet", "Family",
           "build_model", "cascades_of", "count_parameters", "family_of", "parse_name"]
