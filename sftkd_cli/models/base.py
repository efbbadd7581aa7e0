"""What every network sftkd trains has in common: a chain of blocks with named feature taps.

A `CascadeNet` maps (input image, k-space, mask) to an image through `cascades` blocks.
`cascade(i, state, kspace, mask)` runs block i on a state tensor: the input image for i = 0,
the previous block's output after that. SFT relies on this: a student branch starts from the
teacher's state after block i and runs the student's blocks i+1.. (so the two networks must
agree on what a state is: an image for the DC cascades, features plus the input image for VDSR).

Feature taps are named `c{cascade}.{local}` (cascade 1-based, local name from the block, e.g.
`c3.conv2`). Taps are returned at the image size so that student and teacher maps line up.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.errors import SftkdError

_TAP = re.compile(r"^c(\d+)\.(\w+)$")

class CascadeNet(nn.Module):
    """Base class: subclasses set `cascades`, `channels` and implement the abstract methods."""

    cascades: int
    channels: int
    #: the data the network was built for (its builder's `acquisition`); kept in its checkpoint entry
    acquisition: Acquisition = Acquisition()

    @property
    def name(self) -> str:
        """Architecture name, e.g. D5C5; `build_model(name)` rebuilds the same network."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """Constructor arguments stored beside the weights in a checkpoint entry ("centered" is
        kept for readers of checkpoints older than the acquisition record)."""
        return {"arch": self.name, "channels": self.channels, "pad": 0, "centered": False,
                "acquisition": self.acquisition.record()}

    def cascade(
        self,
        index: int,
        x: torch.Tensor,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        taps: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Block `index` (0-based) on state `x`; with `taps`, store its features by local name."""
        raise NotImplementedError

    def block_taps(self, index: int) -> dict[str, int]:
        """Local tap names of block `index` (0-based) in forward order, with their channel counts."""
        raise NotImplementedError

    def default_tap(self, cascade: int, role: str) -> str:
        """The local tap name of block `cascade` (1-based) that plays `role` (see `distill.catalog.TAP_ROLES`);
        "" when the block has no such feature (e.g. VDSR4's last block has no hidden conv)."""
        raise NotImplementedError

    def tap_names(self) -> list[str]:
        """All tappable feature names, in forward order."""
        return [f"c{c + 1}.{local}" for c in range(self.cascades) for local in self.block_taps(c)]

    def tap_channels(self, name: str, where: str = "feature tap") -> int:
        """Channel count of a tapped feature; an unknown tap is an error naming `where` (the
        recipe key it came from, e.g. distill.student_taps)."""
        cascade, local = self.split_tap(name, where)
        return self.block_taps(cascade - 1)[local]

    def split_tap(self, name: str, where: str = "feature tap") -> tuple[int, str]:
        """'c3.conv2' -> (3, 'conv2'), checked against this network; errors name `where`."""
        match = _TAP.match(name)
        if match and 1 <= int(match.group(1)) <= self.cascades and match.group(2) in self.block_taps(int(match.group(1)) - 1):
            return int(match.group(1)), match.group(2)
        names = self.tap_names()
        raise SftkdError(f"{where} {name!r}: {self.name} has taps {names[0]} .. {names[-1]} (e.g. {', '.join(names[:4])})")

    def forward(
        self,
        zf: torch.Tensor,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        taps: Collection[str] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruct from the input image. With `taps`, also return those features by name."""
        if taps is None:
            x = zf
            for index in range(self.cascades):
                x = self.cascade(index, x, kspace, mask)
            return x
        wanted = [self.split_tap(name) for name in taps]
        needed = {c for c, _ in wanted}
        features: dict[str, torch.Tensor] = {}
        x = zf
        for index in range(self.cascades):
            store: dict[str, torch.Tensor] | None = {} if index + 1 in needed else None
            x = self.cascade(index, x, kspace, mask, store)
            if store is not None:
                for c, local in wanted:
                    if c == index + 1:
                        features[f"c{c}.{local}"] = store[local]
        return x, features


class DataConsistentCascade(CascadeNet):
    """A CascadeNet whose block i is a CNN `blocks[i]` (taking the image and a tap dict) followed by
    the hard data-consistency layer `dc` (DC-CNN, DC-UNet): the state between blocks is an image."""

    blocks: nn.ModuleList
    dc: nn.Module

    def record(self) -> dict[str, Any]:
        return {**super().record(), "pad": self.blocks[0].pad, "centered": self.dc.centered}

    def cascade(
        self,
        index: int,
        x: torch.Tensor,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        taps: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Block `index` (0-based) followed by data consistency."""
        return self.dc(self.blocks[index](x, taps), kspace, mask)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, frozen ones included (a model's size, whatever a run trains of it)."""
    return sum(p.numel() for p in model.parameters())
