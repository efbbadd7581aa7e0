"""DC-CNN `DnCm`: m cascades of an n-layer CNN block, each followed by data consistency.

Matches the paper's reference network: every block zero-pads its input by `pad` pixels,
runs n 3x3 convolutions (1 -> C -> ... -> C -> 1, ReLU between, no residual, no batch norm),
crops the padding away, then a hard data-consistency layer replaces the sampled k-space.
Built for complex data (`Acquisition(values="complex", channels=2)`), the block maps 2 -> C
-> ... -> C -> 2 channels (real, imaginary) and the data consistency keeps the complex result
(mri/dc.py): only the first and the last conv change.

No padding waste: when `pad` >= n (the paper: pad 5), the block pads by n and runs UNPADDED
("valid") convolutions, each map shrinking by 2 pixels, instead of computing every layer on
the full padded map and cropping at the end. The output and every tapped feature are exactly
the same (each output pixel only ever sees input within n pixels, all inside the zero pad);
the work drops by 5-10 % and no crop copies are made. ReLUs run in place (a conv does not need
its output for its backward), which halves the memory traffic between layers. On the CPU the
last conv (C -> 1 channel) runs as one matrix product plus nine shifted adds
(`conv_to_one_channel`): oneDNN is slow at one output channel, and a D3C5 step gets ~15 % faster.

Every conv output can be tapped by name for distillation: `c{cascade}.conv{layer}`
(both 1-based; hidden layers after their ReLU, the last layer before DC). Taps are cropped
to the image size. Tapping costs nothing when no tap is asked for.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.choices import architecture_named
from sftkd_cli.errors import SftkdError
from sftkd_cli.models.base import DataConsistentCascade
from sftkd_cli.models.family import MAGNITUDE_OR_COMPLEX, MAX_CASCADES, MAX_CONVS, Family
from sftkd_cli.models.traceable import dc_architecture, exportable_dc
from sftkd_cli.mri.dc import DataConsistency

_NAME = re.compile(r"^D(\d+)C(\d+)$")


def parse_name(name: str) -> tuple[int, int]:
    """'D5C5' -> (5 conv layers per block, 5 cascades)."""
    match = _NAME.match(name.strip().upper())
    if not match:
        raise SftkdError(f"model {name!r}: expected a name like D5C5 (n conv layers, m cascades)")
    layers, cascades = int(match.group(1)), int(match.group(2))
    if layers < 2 or cascades < 1:
        raise SftkdError(f"model {name!r}: needs at least 2 conv layers and 1 cascade")
    return layers, cascades


class CNNBlock(nn.Module):
    """One cascade's CNN: pad, n convs with ReLU between, crop.

    `valid=False` forces the reference code's way (every conv padded on the full map, crop at
    the end); `sftkd bench` times it to measure what the shortcut saves.
    """

    def __init__(self, layers: int, channels: int = 32, pad: int = 5, valid: bool = True, image_channels: int = 1) -> None:
        super().__init__()
        self.pad = pad
        self.valid = valid and pad >= layers  # exact shortcut, see the module docstring
        widths = [image_channels] + [channels] * (layers - 1) + [image_channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, kernel_size=3, padding=0 if self.valid else 1)
            for cin, cout in zip(widths, widths[1:])
        )

    def forward(self, x: torch.Tensor, taps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Run the block; when `taps` is a dict, store each conv output (cropped) as 'conv{j}'."""
        last = len(self.convs)
        p = last if self.valid else self.pad
        h = F.pad(x, (p, p, p, p)) if p else x
        for index, conv in enumerate(self.convs, start=1):
            one = index == last and conv.out_channels == 1
            h = conv_to_one_channel(h, conv.weight, conv.bias) if one and _gemm_applies(h, self.valid) else conv(h)
            if index < last:
                h = F.relu(h, inplace=True)
            if taps is not None:
                taps[f"conv{index}"] = _crop(h, last - index if self.valid else p)
        return h if self.valid else _crop(h, p)


class _ConvToOneChannel(torch.autograd.Function):
    """Unpadded 3x3 convolution C -> 1 of a channels_last (B, C, H, W) tensor as one GEMM.

    y = W^T X^T gives, for each of the 9 kernel taps k, the channel-weighted map y_k of the
    whole input (one pass over it); the output is the sum of the nine maps, each shifted by its
    tap's offset. The backward is two GEMMs of the same shapes. Exact up to float rounding.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, channels)  # a view for channels_last input
        taps = weight.reshape(channels, 9)
        maps = torch.mm(taps.t(), rows.t()).view(9, batch, height, width)
        out = _shifted(maps, 0) + bias
        for k in range(1, 9):
            out.add_(_shifted(maps, k))
        ctx.save_for_backward(rows, taps)
        ctx.shape = x.shape
        return out.unsqueeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, taps = ctx.saved_tensors
        batch, channels, height, width = ctx.shape
        grad = grad[:, 0]
        grad_maps = grad.new_zeros(9, batch, height, width)
        for k in range(9):
            _shifted(grad_maps, k).copy_(grad)
        grad_maps = grad_maps.view(9, -1)
        grad_x = torch.mm(grad_maps.t(), taps.t()).view(batch, height, width, channels).permute(0, 3, 1, 2)
        grad_w = torch.mm(grad_maps, rows).t().reshape(1, channels, 3, 3)
        return grad_x, grad_w, grad.sum().reshape(1)


def _shifted(maps: torch.Tensor, k: int) -> torch.Tensor:
    """The window of tap k's map that lands on the (H-2, W-2) output."""
    dy, dx = divmod(k, 3)
    return maps[k, :, dy : maps.shape[-2] - 2 + dy, dx : maps.shape[-1] - 2 + dx]


def conv_to_one_channel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`F.conv2d(x, weight, bias)` for a (1, C, 3, 3) weight and no padding, as one GEMM."""
    return _ConvToOneChannel.apply(x, weight, bias)


def _gemm_applies(x: torch.Tensor, valid: bool) -> bool:
    """The GEMM form of the last conv: measured on CPUs, plain fp32/fp64, channels_last, not traced."""
    return (
        valid
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.is_autocast_enabled("cpu")
        and not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                 or torch.onnx.is_in_onnx_export())
    )


def _crop(x: torch.Tensor, p: int) -> torch.Tensor:
    return x[..., p : x.shape[-2] - p, p : x.shape[-1] - p] if p else x


class DCCNN(DataConsistentCascade):
    """The deep-cascade network DnCm (n conv layers per block, m cascades)."""

    def __init__(
        self, layers: int, cascades: int, channels: int = 32, pad: int = 5,
        acquisition: Acquisition | None = None, valid: bool = True,
    ) -> None:
        super().__init__()
        self.layers, self.cascades, self.channels = layers, cascades, channels
        self.acquisition = acquisition or Acquisition()
        self.image_channels = self.acquisition.channels  # 1 (magnitude) or 2 (complex: real, imaginary)
        self.blocks = nn.ModuleList(
            CNNBlock(layers, channels, pad, valid, self.image_channels) for _ in range(cascades)
        )
        self.dc = DataConsistency(centered=self.acquisition.centered,
                                  complex_values=self.acquisition.values == "complex")

    @property
    def name(self) -> str:
        return f"D{self.layers}C{self.cascades}"

    def block_taps(self, index: int) -> dict[str, int]:
        return {f"conv{j}": (self.image_channels if j == self.layers else self.channels) for j in range(1, self.layers + 1)}

    def default_tap(self, cascade: int, role: str) -> str:
        hidden = {"last_hidden": 1, "hidden_before_last": 2}
        return f"conv{self.layers}" if role == "output" else f"conv{max(1, self.layers - hidden[role])}"


def build_dccnn(name: str, acquisition: Acquisition, channels: int = 32, pad: int = 5) -> DCCNN:
    """Build `DnCm` from its name for the acquisition's images (1 channel, or 2 for complex data),
    its data consistency in the acquisition's k-space layout."""
    layers, cascades = parse_name(name)
    return DCCNN(layers, cascades, channels=channels, pad=pad, acquisition=acquisition)


def _architecture(model: DCCNN, fixed: bool) -> dict[str, Any]:
    return dc_architecture(model, {"layers": model.layers}, fixed)


FAMILY = Family(
    r"D(\d+)C(\d+)", architecture_named("D5C5"), build_dccnn,
    (("conv layers per cascade", MAX_CONVS), ("cascades", MAX_CASCADES)),
    exportable=exportable_dc, architecture=_architecture, accepts=MAGNITUDE_OR_COMPLEX,
)
