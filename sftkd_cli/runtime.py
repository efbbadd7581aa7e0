"""Where and how models run: the device, mixed precision, TF32, batches on the device, CPU threads.

Shared by training, `evaluate` and `bench`, and below all three: this module imports none of
them (nor the CLI), so each can use the same device choice, autocast policy and collate.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from sftkd_cli.choices import AMP_MODES
from sftkd_cli.name_checks import check_device
from sftkd_cli.errors import SftkdError

Batch = dict[str, torch.Tensor]

#: the tensors of a dataset item that a batch holds (the other keys, volume and slice, stay behind)
TENSOR_KEYS = ("target", "zf", "kspace", "mask")



def select_device(name: str = "auto", where: str = "train.device") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; explicit names are checked (`where` names
    the setting in the error: train.device, or an option such as --device)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name, where)  # meta, mps without support, a GPU number past the GPUs: one line
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SftkdError(f"{where} {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SftkdError(f"{where} {name!r}: CUDA is not available on this machine; use cpu (or auto)")
    return device


def check_amp(amp: str, device: torch.device, option: str = "train.amp") -> None:
    """`amp` must be a known mode, and fp16 needs CUDA; `option` names the setting in the error."""
    if amp not in AMP_MODES:
        raise SftkdError(f"{option} {amp!r}: expected off, bf16 or fp16")
    if amp == "fp16" and device.type != "cuda":
        raise SftkdError(f"{option} fp16: only on CUDA; use bf16 on the CPU")


def bf16_lacking(device: torch.device) -> str | None:
    """What `device` lacks for bf16 in hardware, so that torch emulates it (None: it has it): a CPU
    without AVX512-BF16 (nor AMX, which comes with it), or an NVIDIA GPU before Ampere (compute
    capability 8.0), which has no bf16 tensor cores (a T4 or V100, say)."""
    if device.type == "cpu":
        return None if torch.cpu._is_avx512_bf16_supported() else "this CPU has no AVX512-BF16"
    if device.type == "cuda" and not torch.version.hip:
        major, minor = torch.cuda.get_device_capability(device)
        return None if major >= 8 else f"this GPU (compute capability {major}.{minor}) has no bf16 tensor cores"
    return None


def amp_warning(amp: str, device: torch.device, option: str = "train.amp") -> str | None:
    """The line that says `amp` runs but slowly on `device` (None when it does not)."""
    lacking = bf16_lacking(device) if amp == "bf16" else None
    if lacking is None:
        return None
    if device.type == "cpu":
        return (f"warning: {option} bf16: {lacking}, so bf16 is emulated, several times slower than fp32 "
                "(7-10x on a D5C5 training step); off is faster here")
    return f"warning: {option} bf16: {lacking}, so bf16 is emulated; fp16 or off is likely faster here (not measured)"


def autocast(
    device: torch.device, amp: str, option: str = "train.amp", *, cache: bool = True
) -> contextlib.AbstractContextManager:
    """Mixed precision context: bf16/fp16 autocast, or nothing (checked with `check_amp`).

    `cache=False` turns off autocast's cache of low-precision weight copies, as CUDA graph
    capture needs (a copy cached before the capture would be replayed stale)."""
    check_amp(amp, device, option)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16, cache_enabled=cache)


@contextlib.contextmanager
def precision_policy(tf32: bool) -> Iterator[None]:
    """float32 matrix products and cuDNN convolutions in TF32 (`tf32`) or in full fp32 for the block.

    TF32 (Ampere and later NVIDIA GPUs) keeps float32's range but rounds the inputs of a product
    to a 10-bit mantissa (relative error ~5e-4): faster, less exact. Training uses it only with
    train.tf32; evaluation always runs with it off, so that metrics agree across machines. Sets
    cuBLAS's and cuDNN's settings in the API this torch has (`tf32_settings`) and restores the
    caller's afterwards. CPUs never use TF32; the settings exist on every build, so this is safe
    (and a no-op for the arithmetic) there.
    """
    previous = tf32_settings()
    set_tf32_settings(tf32_settings_for(tf32, tf32))
    try:
        yield
    finally:
        set_tf32_settings(previous)


def _fp32_precision_api() -> bool:
    """Whether torch has the per-backend fp32_precision settings (2.9+). Reading the older
    allow_tf32 flags warns there, and raises once anything set the new ones."""
    cudnn = torch.backends.cudnn
    return (hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(cudnn, "conv")
            and hasattr(cudnn.conv, "fp32_precision"))


def tf32_settings() -> tuple[Any, Any]:
    """cuBLAS matmuls' and cuDNN convolutions' TF32 settings as this torch holds them:
    fp32_precision strings ('tf32', 'ieee', 'none' = inherited) on torch 2.9+, else the
    allow_tf32 flags; `set_tf32_settings` puts them back."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if _fp32_precision_api():
        return matmul.fp32_precision, cudnn.conv.fp32_precision
    return matmul.allow_tf32, cudnn.allow_tf32


def set_tf32_settings(settings: tuple[Any, Any]) -> None:
    """Set what `tf32_settings` returns (or `tf32_settings_for` makes)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if _fp32_precision_api():
        matmul.fp32_precision, cudnn.conv.fp32_precision = settings
    else:
        matmul.allow_tf32, cudnn.allow_tf32 = settings


def tf32_settings_for(matmul: bool, conv: bool) -> tuple[Any, Any]:
    """The settings that turn TF32 on or off for matmuls and convolutions, in this torch's API."""
    if _fp32_precision_api():
        return ("tf32" if matmul else "ieee"), ("tf32" if conv else "ieee")
    return bool(matmul), bool(conv)


#: the environment variable that fixes cuBLAS's workspace, and the value that makes its matrix
#: products deterministic; read once per process, when cuBLAS starts
CUBLAS_WORKSPACE, DETERMINISTIC_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG", ":4096:8"


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """With `enabled` (train.deterministic), deterministic kernels for the block; without, the
    caller's settings as they are.

    The CPU kernels are deterministic already (for a fixed thread count). On CUDA, cuDNN picks
    non-deterministic convolution algorithms by default, so a resumed run only matches an
    uninterrupted one bit for bit with this: deterministic cuDNN algorithms, no cuDNN
    autotuning, deterministic torch ops (an op without one fails instead of drifting) and a
    fixed cuBLAS workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts: in a process that
    used cuBLAS before without it, torch refuses the deterministic fit's matrix products, so a
    `reproduce` stage sets it before its process's first CUDA work: `reproduce.jobs`). The
    caller's settings are put back afterwards, so that one stage's setting does not carry over
    to the next stage trained in the same process.
    """
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                cudnn.deterministic, cudnn.benchmark, os.environ.get(CUBLAS_WORKSPACE))
    os.environ.setdefault(CUBLAS_WORKSPACE, DETERMINISTIC_WORKSPACE)
    cudnn.deterministic, cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        algorithms, warn_only, cudnn.deterministic, cudnn.benchmark, workspace = previous
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)


def collate(items: Sequence[dict[str, Any]]) -> Batch:
    """Stack dataset items into a batch (tensors only)."""
    return {key: torch.stack([item[key] for item in items]) for key in TENSOR_KEYS}


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on `device` (copied without blocking where the device allows it)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so wall times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` after `warmup` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


@contextlib.contextmanager
def random_states_kept(device: torch.device) -> Iterator[None]:
    """Python's, NumPy's and torch's random states (the CPU's and `device`'s) put back as they were
    after the body, which may seed them (the bench seeds its models and trains an engine run)."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def slice_batches(dataset: Any, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """The dataset's items in order, `batch_size` at a time (the last batch may be smaller)."""
    for start in range(0, len(dataset), batch_size):
        yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]


#: the smallest default batch of slices per forward pass when scoring (`inference_batch_size`)
MIN_INFERENCE_BATCH = 8


def inference_batch_size(train_batch_size: int) -> int:
    """Slices per forward pass when scoring (validation, and `evaluate` by default): the training
    batch, but at least MIN_INFERENCE_BATCH. Inference keeps no activations for gradients, so what
    trained fits, and fewer, larger passes launch fewer kernels (what sets a GPU's pace here)."""
    return max(train_batch_size, MIN_INFERENCE_BATCH)


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to `count` for the block (None or 0: as they are); the caller's
    thread count is restored afterwards."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
