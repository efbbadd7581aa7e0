"""FLOP counting for `sftkd bench`: analytic conv FLOPs of the DC-CNNs each way computes them,
and a hook counter for any module (the KD adapters). Used for GFLOP/s and the roof fraction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sftkd_cli.models import DCCNN


def conv_flops(c_in: int, c_out: int, height: int, width: int, batch: int = 1, kernel: int = 3) -> int:
    """Multiply-adds x 2 of one stride-1 'same' convolution on (batch, c_in, height, width)."""
    return 2 * c_in * c_out * kernel * kernel * height * width * batch


def block_flops(layers: int, channels: int, pad: int, size: int, batch: int = 1, valid: bool = False,
                image_channels: int = 1) -> int:
    """Forward conv FLOPs of one DC-CNN block (1 -> C -> ... -> C -> 1; 2 -> ... -> 2 for complex
    images, `image_channels` 2) on size x size images.

    The reference way computes every conv on the padded (size + 2 pad) map; `valid` blocks
    (see models/dccnn.py) compute conv j on size + 2 (layers - j) pixels only.
    """
    widths = [image_channels] + [channels] * (layers - 1) + [image_channels]
    sides = [size + 2 * (layers - j) if valid else size + 2 * pad for j in range(1, layers + 1)]
    return sum(conv_flops(a, b, side, side, batch) for a, b, side in zip(widths, widths[1:], sides))


def model_flops(model: DCCNN, size: int, batch: int = 1) -> int:
    """Forward conv FLOPs of a whole DnCm on size x size images, as this model computes them."""
    block = model.blocks[0]
    return model.cascades * block_flops(model.layers, model.channels, block.pad, size, batch, block.valid,
                                        model.image_channels)


def sft_flops(teacher: DCCNN, student: DCCNN, size: int, batch: int) -> int:
    """Forward conv FLOPs of an SFT joint step: the teacher, then n(n-1)/2 student-block passes."""
    n = teacher.cascades
    passes = n * (n - 1) // 2  # block S(j+1) runs in j branches, j = 1..n-1
    return model_flops(teacher, size, batch) + passes * model_flops(student, size, batch) // student.cascades


def module_conv_flops(module: nn.Module, run: Callable[[], Any]) -> int:
    """Conv2d and Linear FLOPs of `module` during one call of `run`, counted from the shapes seen."""
    total = 0

    def conv_hook(layer: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = layer.kernel_size
        per_out = 2 * (layer.in_channels // layer.groups) * kh * kw
        total += per_out * output.numel()

    def linear_hook(layer: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * layer.in_features * output.numel()

    handles = []
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            handles.append(sub.register_forward_hook(conv_hook))
        elif isinstance(sub, nn.Linear):
            handles.append(sub.register_forward_hook(linear_hook))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total

