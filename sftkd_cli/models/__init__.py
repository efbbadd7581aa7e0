"""Reconstruction networks, found by architecture name.

Each family registers a name pattern, a builder and a short description; `build_model(name)`
picks the family whose pattern matches. Names are case-insensitive: D5C5, d3c5.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sftkd_cli.errors import SftkdError
from sftkd_cli.models.base import CascadeNet, count_parameters
from sftkd_cli.models.dccnn import DCCNN, build_dccnn, parse_name
from sftkd_cli.models.dcunet import DCUNet, build_dcunet
from sftkd_cli.models.vdsr import build_vdsr


@dataclass(frozen=True)
class Family:
    """One architecture family: names matching `pattern` are built by `build`."""

    pattern: str  # one group per number in the name
    example: str
    description: str
    build: Callable[..., CascadeNet]
    limits: tuple[tuple[str, int], ...]  # (what the number counts, its largest value), per group


#: the largest number of cascades, and of convs per cascade, a name may ask for (the paper's
#: networks have 5); larger names would take minutes just to build, or never finish
MAX_CASCADES = 64
MAX_CONVS = 64

FAMILIES: list[Family] = [
    Family(r"D(\d+)C(\d+)", "D5C5", "DC-CNN: m cascades of n 3x3 convs, data consistency after each", build_dccnn,
           (("conv layers per cascade", MAX_CONVS), ("cascades", MAX_CASCADES))),
    Family(r"VDSR(\d+)", "VDSR12", "VDSR (super-resolution): n 3x3 convs in 4 blocks, input + residual, no DC", build_vdsr,
           (("conv layers", 4 * MAX_CONVS),)),
    Family(r"U(\d+)C(\d+)", "U2C5", "DC-UNet: m cascades of an L-level U-Net, data consistency after each", build_dcunet,
           (("U-Net levels", MAX_CONVS), ("cascades", MAX_CASCADES))),
]


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


def build_model(name: str, channels: int = 32, pad: int = 5, centered: bool = False) -> CascadeNet:
    """Build the network called `name` (e.g. D5C5) with fresh weights."""
    return family_of(name).build(name.strip().upper(), channels=channels, pad=pad, centered=centered)


def cascades_of(name: str) -> int:
    """Number of blocks of architecture `name` (for recipe checks): built on the meta device, so
    no memory is allocated and the global RNG is not touched."""
    with torch.device("meta"):
        return build_model(name).cascades


__all__ = ["FAMILIES", "CascadeNet", "DCCNN", "DCUNet", "Family", "build_model", "cascades_of", "count_parameters",
           "family_of", "parse_name"]
