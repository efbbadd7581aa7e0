"""How `sftkd bench` measures: synthetic inputs, precision, timed calls, an engine-style
training step, the conv roof, and the machine it measured on."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.bench.flops import conv_flops
from sftkd_cli.mri.fft import fft2, ifft2, to_channels
from sftkd_cli.mri.masks import make_mask, undersample
from sftkd_cli.layout import cpu_name
from sftkd_cli.runtime import autocast, time_calls
from sftkd_cli.training.objectives import Batch

#: the undersampling factor of the synthetic inputs (the paper's 4x random row mask)
ACCELERATION = 4.0
#: what `bench --complex` builds its networks for: complex images in fastMRI's centred k-space
COMPLEX = Acquisition(kspace_layout="centered", values="complex", channels=2)


def synthetic_batch(size: int, batch: int, device: torch.device, seed: int = 0, complex_data: bool = False) -> Batch:
    """A batch of random ellipse phantoms in [0, 1], undersampled at 4x with the paper's row mask;
    `complex_data`: the phantoms times a smooth random phase, in centred k-space (zf and target
    as two channels, real and imaginary, as a complex dataset's batches)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    images = np.zeros((batch, size, size), dtype=np.float32)
    for b in range(batch):
        for _ in range(6):
            cx, cy = rng.uniform(-0.4, 0.4, 2)
            ax, ay = rng.uniform(0.1, 0.6, 2)
            images[b] += rng.uniform(0.2, 1.0) * (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0)
        images[b] /= max(float(images[b].max()), 1e-6)
    if complex_data:
        return _complex_batch(images, rng, device)
    mask = make_mask("random", (size, size), ACCELERATION)
    kspace, zf = undersample(images, mask)
    as_batch = lambda a: torch.from_numpy(np.ascontiguousarray(a))[:, None].to(device)  # noqa: E731
    return {
        "target": as_batch(images),
        "zf": as_batch(zf),
        "kspace": as_batch(kspace),
        "mask": torch.from_numpy(mask)[None, None].expand(batch, 1, size, size).contiguous().to(device),
    }


def _complex_batch(images: np.ndarray, rng: np.random.Generator, device: torch.device) -> Batch:
    """`synthetic_batch` of complex images: magnitude `images` with a smooth phase per image."""
    batch, size = images.shape[0], images.shape[-1]
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    phases = np.stack([np.pi * (rng.uniform(-0.5, 0.5) * x + rng.uniform(-0.5, 0.5) * y) for _ in range(batch)])
    target = torch.from_numpy((images * np.exp(1j * phases)).astype(np.complex64))[:, None]
    mask = torch.from_numpy(make_mask("random", (size, size), ACCELERATION, layout="centered"))[None, None]
    kspace = fft2(target, centered=True) * mask
    return {
        "target": to_channels(target).float().contiguous().to(device),
        "zf": to_channels(ifft2(kspace, centered=True)).float().contiguous().to(device),
        "kspace": kspace.to(torch.complex64).to(device),
        "mask": mask.expand(batch, 1, size, size).contiguous().to(device),
    }


def slice_batch(batch: Batch, n: int) -> Batch:
    """The first `n` samples of a batch."""
    return {k: v[:n] for k, v in batch.items()}


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device, or nothing for fp32 (runtime's autocast policy)."""
    return autocast(device, "bf16" if precision == "bf16" else "off", "bench --precision")


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    """Device name, threads and versions for the report header."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name()
    return {
        "device": str(device),
        "name": name,
        "threads": threads,
        "torch": torch.__version__,
        "cpu_capability": _cpu_capability(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch or unusual builds
        return "unknown"


def train_step_fn(objective: nn.Module, batch: Batch, device: torch.device, precision: str,
                  also_clear: nn.Module | None = None, channels_last: bool = True) -> Callable[[], float]:
    """The engine's eager training step (`training.engine.eager_step`) on `batch`, with Adam.

    Models run in the channels_last layout, as the engine (train.channels_last) and evaluate do;
    `channels_last=False` keeps NCHW, as the reference code does. `also_clear`: a module outside
    the optimiser whose gradients are dropped before each step (they would pile up otherwise).
    """
    from sftkd_cli.training.engine import eager_step

    objective.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    amp = "bf16" if precision == "bf16" else "off"

    def step() -> float:
        if also_clear is not None:
            also_clear.zero_grad(set_to_none=True)
        return eager_step(objective, batch, optimizer, scaler, device, amp)

    return step


#: a measured conv roof per memory format: (GFLOP/s, seconds, shape) of the best shape
Roofs = dict[str, tuple[float, float, tuple[int, ...]]]


def measure_roof(device: torch.device, precision: str, repeats: int, shapes: Sequence[tuple[int, int, int, int]]) -> Roofs:
    """Best (GFLOP/s, seconds, shape) of one C->C 3x3 conv forward over `shapes` (N, C, H, W), per
    memory format ("contiguous" NCHW and "channels_last" NHWC: oneDNN is often much faster with
    the latter on CPUs). The roof is the best of them all: a large map is the best on a GPU, while
    on a CPU the workload's own small maps can run faster than a large one (they stay in cache),
    so a roof from the large map alone would be exceeded."""
    found: Roofs = {}
    for fmt, memory_format in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for shape in shapes:
            batch, channels, height, width = shape
            conv = nn.Conv2d(channels, channels, 3, padding=1).to(device, torch.float32).eval().to(memory_format=memory_format)
            x = torch.randn(*shape, device=device, dtype=torch.float32).contiguous(memory_format=memory_format)

            def run(conv: nn.Module = conv, x: torch.Tensor = x) -> None:
                with torch.inference_mode(), precision_context(device, precision):
                    conv(x)

            best = min(time_calls(run, device, max(repeats, 3), 1))
            gflops = conv_flops(channels, channels, height, width, batch) / 1e9 / best
            if fmt not in found or gflops > found[fmt][0]:
                found[fmt] = (gflops, best, tuple(shape))
            del conv, x
    return found


