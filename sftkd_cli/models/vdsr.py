"""VDSR `VDSR{n}`: the super-resolution network of the paper's Appendix B (Kim et al., 2016).

n 3x3 convolutions, 1 -> C -> ... -> C -> 1 (C = model.channels, 32 by default as for every
model; VDSR's own width is 64, which the SR recipes set), zero padding 1 (the size is kept),
ReLU after every conv but the last, no batch norm, and one global residual: output = input + net(input). No data consistency (the
k-space and mask arguments are ignored): the input is the low-resolution image interpolated to
full size. The paper's teacher is VDSR12, its student VDSR4.

For SFT and feature taps the n convs are split into 4 blocks of n/4 (n a multiple of 4). The
state passed between blocks is the block's last hidden feature map (C channels, after ReLU)
with the input image appended as channel C+1 (it rides along for the global residual), so a
teacher's state after block i is a valid input of the student's block i+1 when both have the
same width. Block 1 takes the image itself; block 4 ends with the C -> 1 conv and adds the input.

Taps: `c{block}.conv{j}` (both 1-based, j local to the block: VDSR12's layer 5 is c2.conv2),
after ReLU for hidden convs; the last conv of block 4 is the predicted residual (1 channel,
before the addition). Default KD roles: `last_hidden` is a block's last ReLU feature (VDSR4 has
none in block 4, so it answers "" and KD skips that block), `hidden_before_last` the one before
it, `output` the block's last conv (the state features; the residual in block 4).
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.choices import architecture_named
from sftkd_cli.errors import SftkdError
from sftkd_cli.models.base import CascadeNet
from sftkd_cli.models.family import MAX_CONVS, Family
from sftkd_cli.models.traceable import exportable_direct

_NAME = re.compile(r"^VDSR(\d+)$")
BLOCKS = 4


def parse_vdsr_name(name: str) -> int:
    """'VDSR12' -> 12 conv layers (a multiple of 4, at least 4)."""
    match = _NAME.match(name.strip().upper())
    if not match:
        raise SftkdError(f"model {name!r}: expected a name like VDSR12 (n conv layers)")
    layers = int(match.group(1))
    if layers < BLOCKS or layers % BLOCKS:
        raise SftkdError(f"model {name!r}: the number of conv layers must be a multiple of {BLOCKS} (4, 8, 12, ...)")
    return layers


class VDSR(CascadeNet):
    """VDSR with n conv layers in 4 blocks of n/4 (see the module docstring)."""

    def __init__(self, layers: int, channels: int = 64, acquisition: Acquisition | None = None) -> None:
        super().__init__()
        self.layers, self.cascades, self.channels = layers, BLOCKS, channels
        self.acquisition = acquisition or Acquisition()
        per_block = layers // BLOCKS
        widths = [1] + [channels] * (layers - 1) + [1]
        convs = [nn.Conv2d(cin, cout, kernel_size=3, padding=1) for cin, cout in pairwise(widths)]
        self.blocks = nn.ModuleList(
            nn.ModuleList(convs[b * per_block : (b + 1) * per_block]) for b in range(BLOCKS)
        )

    @property
    def name(self) -> str:
        return f"VDSR{self.layers}"

    def block_taps(self, index: int) -> dict[str, int]:
        per_block = self.layers // BLOCKS
        last = index == BLOCKS - 1
        return {f"conv{j}": (1 if last and j == per_block else self.channels) for j in range(1, per_block + 1)}

    def default_tap(self, cascade: int, role: str) -> str:
        per_block = self.layers // BLOCKS
        hidden = per_block - 1 if cascade == BLOCKS else per_block  # hidden (ReLU) convs of the block
        if role == "output":
            return f"conv{per_block}"
        j = hidden if role == "last_hidden" else hidden - 1
        return f"conv{j}" if j >= 1 else ""

    def cascade(
        self,
        index: int,
        x: torch.Tensor,
        kspace: torch.Tensor,
        mask: torch.Tensor,
        taps: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Block `index` (0-based) on the state (image for block 0, features + image after)."""
        if index == 0:
            h, image = x, x
        else:
            h, image = x[:, :-1], x[:, -1:]
        convs = self.blocks[index]
        last_block = index == BLOCKS - 1
        for j, conv in enumerate(convs, start=1):
            h = conv(h)
            if not (last_block and j == len(convs)):
                h = F.relu(h)
            if taps is not None:
                taps[f"conv{j}"] = h
        return image + h if last_block else torch.cat([h, image], dim=1)


def build_vdsr(name: str, acquisition: Acquisition, channels: int = 32, pad: int = 0) -> VDSR:
    """Build `VDSR{n}` from its name (`pad` and the k-space layout do not apply: no padding, no DC).

    The width comes from the recipe's model.channels like every model's (default 32); VDSR's own
    width, 64, is what the super-resolution recipes set."""
    return VDSR(parse_vdsr_name(name), channels=channels, acquisition=acquisition)


def _architecture(model: VDSR, fixed: bool) -> dict[str, Any]:
    return {"name": model.name, "layers": model.layers, "cascades": model.cascades, "channels": model.channels,
            "kernel": 3, "residual": "output = zf + CNN(zf) (global residual)",
            "data_consistency": "none (super-resolution): kspace and mask are unused inputs", "dft": "none"}


FAMILY = Family(
    r"VDSR(\d+)", architecture_named("VDSR12"), build_vdsr,
    (("conv layers", 4 * MAX_CONVS),),
    exportable=exportable_direct, architecture=_architecture,
    between_blocks="its hidden features with the image appended",
    io_text=("low-resolution image interpolated to full size (|IFFT| of the zero-padded central k-space box), "
             "as in the training data", "super-resolved image: zf + the CNN's residual"),
)
