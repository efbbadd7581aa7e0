"""`sftkd bench`: how fast are training, SFT, KD and inference on this machine?

Everything runs on synthetic inputs (a random phantom, the paper's 1-D random row mask at
4x, its k-space and zero-filled image), so no dataset is needed. Each measurement is the
median wall time of `repeats` calls after `warmup` untimed calls:

- training steps (forward + backward + Adam step, as the engine does them): teacher D5C5 and
  student D3C5 (Supervised), the SFT joint step with the student branches batched through
  each shared block and branch by branch, and one KD step per method with the frozen teacher
  under `no_grad`;
- inference of D5C5 and D3C5 under `torch.inference_mode`, at batch 1 and at `batch`: eager,
  TorchScript (the trace `sftkd export` writes, loaded back as `evaluate --exported` runs it),
  ONNX (the file `sftkd export --format onnx` writes, run in onnxruntime; fp32 on the CPU, with
  the `export` extra installed) and (optionally) `torch.compile`d with frozen weights;
- bf16: teacher and student training steps and inference in fp32 and under bf16 autocast,
  side by side (CPUs with AVX512-BF16 and GPUs; with --precision fp32 only).

Each of these has a "reference way" twin measured in the same run: the same work done as the
paper's code does it (NCHW layout, every conv padded on the full padded map, the KD teacher's
features built with autograd so the backward runs through the teacher, SFT branch by branch).
On a noisy shared machine the ratio of the two is the figure to trust; the reference code's
own timings (measured on this machine class) are shown beside them at the settings they were taken.

Throughput is reported in GFLOP/s of convolution work, counted analytically
(2 * Cin * Cout * 9 * H' * W' per 3x3 conv on the maps each way computes; a training
step counts as 3x its forward), against a "roof": the best GFLOP/s of one large 32->32 3x3
conv measured in the same run, on the same device, threads and precision. FFTs, activations
and the KD losses' matrix products are not counted, so the fractions are lower bounds.
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sftkd_cli import __version__
from sftkd_cli.choices import BENCH_PARTS, MAX_SIZE, MAX_THREADS
from sftkd_cli.distill.methods import METHODS, KDMethod, NoKD, build_method
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import DCCNN, build_model, parse_name
from sftkd_cli.mri.masks import make_mask, undersample
from sftkd_cli.training.engine import select_device
from sftkd_cli.training.kd import Distillation, default_taps
from sftkd_cli.training.objectives import Batch, Supervised, TeacherObjective
from sftkd_cli.training.sft import StudentFriendly

TEACHER = "D5C5"
STUDENT = "D3C5"
PARTS: tuple[str, ...] = BENCH_PARTS
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
ACCELERATION = 4.0

#: The settings at which the public reference code was timed.
REFERENCE_SETTINGS: dict[str, Any] = {"device": "cpu", "threads": 1, "batch": 4, "size": 150, "precision": "fp32"}
#: Reference seconds per training step and per inference slice, at REFERENCE_SETTINGS.
REFERENCE_STEP_S: dict[str, float] = {"teacher": 1.1, "sft": 1.65, "kd": 1.3}
REFERENCE_SLICE_S: dict[str, float] = {TEACHER: 0.050, STUDENT: 0.025}


# --------------------------------------------------------------------------- FLOP counting


def conv_flops(c_in: int, c_out: int, height: int, width: int, batch: int = 1, kernel: int = 3) -> int:
    """Multiply-adds x 2 of one stride-1 'same' convolution on (batch, c_in, height, width)."""
    return 2 * c_in * c_out * kernel * kernel * height * width * batch


def block_flops(layers: int, channels: int, pad: int, size: int, batch: int = 1, valid: bool = False) -> int:
    """Forward conv FLOPs of one DC-CNN block (1 -> C -> ... -> C -> 1) on size x size images.

    The reference way computes every conv on the padded (size + 2 pad) map; `valid` blocks
    (see models/dccnn.py) compute conv j on size + 2 (layers - j) pixels only.
    """
    widths = [1] + [channels] * (layers - 1) + [1]
    sides = [size + 2 * (layers - j) if valid else size + 2 * pad for j in range(1, layers + 1)]
    return sum(conv_flops(a, b, side, side, batch) for a, b, side in zip(widths, widths[1:], sides))


def model_flops(model: DCCNN, size: int, batch: int = 1) -> int:
    """Forward conv FLOPs of a whole DnCm on size x size images, as this model computes them."""
    block = model.blocks[0]
    return model.cascades * block_flops(model.layers, model.channels, block.pad, size, batch, block.valid)


def sft_flops(teacher: DCCNN, student: DCCNN, size: int, batch: int) -> int:
    """Forward conv FLOPs of an SFT joint step: the teacher, then n(n-1)/2 student-block passes."""
    n = teacher.cascades
    passes = n * (n - 1) // 2  # block S(j+1) runs in j branches, j = 1..n-1
    return model_flops(teacher, size, batch) + passes * model_flops(student, size, batch) // student.cascades


def reference_way(name: str) -> DCCNN:
    """The network as the reference code computes it: every conv padded on the full padded map.

    Same weights layout and output as `build_model(name)`; timed in NCHW (the reference does not
    use channels_last) to measure, in the same run, what sftkd's choices buy.
    """
    layers, cascades = parse_name(name)
    return DCCNN(layers, cascades, valid=False)


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


# --------------------------------------------------------------------------- results


@dataclass
class BenchRow:
    """One measurement: median seconds per call of something that processes `slices` slices."""

    key: str
    what: str
    group: str  # "train" or "infer"
    seconds: float
    samples: list[float]
    slices: int
    flops: int
    roof_gflops: float
    reference_s: float | None = None  # same unit as `reference_unit`
    reference_unit: str = "step"  # "step" (seconds per call) or "slice" (seconds per slice)
    note: str = ""
    baseline_s: float | None = None  # the same work done the reference way, timed in this run

    @property
    def in_run_speedup(self) -> float | None:
        """Reference-way time / our time, both measured in this run (> 1: we are faster)."""
        return None if self.baseline_s is None else self.baseline_s / self.seconds

    @property
    def ms(self) -> float:
        return self.seconds * 1e3

    @property
    def ms_per_slice(self) -> float:
        return self.seconds * 1e3 / self.slices

    @property
    def slices_per_s(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else math.inf

    @property
    def gflops(self) -> float:
        return self.flops / 1e9 / self.seconds if self.seconds > 0 else math.inf

    @property
    def roof_fraction(self) -> float:
        return self.gflops / self.roof_gflops if self.roof_gflops > 0 else math.nan

    @property
    def speedup(self) -> float | None:
        """Reference time / our time (> 1: we are faster); None without a reference."""
        if self.reference_s is None:
            return None
        ours = self.seconds if self.reference_unit == "step" else self.seconds / self.slices
        return self.reference_s / ours

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "what": self.what,
            "group": self.group,
            "seconds": self.seconds,
            "ms": self.ms,
            "ms_per_slice": self.ms_per_slice,
            "slices_per_s": self.slices_per_s,
            "gflop": self.flops / 1e9,
            "gflops": self.gflops,
            "roof_fraction": self.roof_fraction,
            "reference": None if self.reference_s is None else {"seconds": self.reference_s, "per": self.reference_unit},
            "speedup": self.speedup,
            "reference_way_s": self.baseline_s,
            "speedup_in_run": self.in_run_speedup,
            "samples_s": list(self.samples),
            "note": self.note,
        }


@dataclass
class BenchResult:
    """Everything `run_bench` measured, plus the settings and machine it measured on."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    roof_gflops: float
    roof: dict[str, Any]  # what was measured: shape, best format, GFLOP/s per memory format
    reference_applies: bool
    rows: list[BenchRow] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> BenchRow:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(key)

    def has(self, key: str) -> bool:
        return any(row.key == key for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "sftkd_version": __version__,
            "settings": dict(self.settings),
            "machine": dict(self.machine),
            "roof": {"gflops": self.roof_gflops, **self.roof},
            "reference": {
                "applies": self.reference_applies,
                "settings": dict(REFERENCE_SETTINGS),
                "step_s": dict(REFERENCE_STEP_S),
                "slice_s": dict(REFERENCE_SLICE_S),
            },
            "rows": [row.to_dict() for row in self.rows],
            "ratios": dict(self.ratios),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- set-up


def reference_applies(device: torch.device, threads: int, batch: int, size: int, precision: str) -> bool:
    """Whether the reference timings were taken at exactly these settings."""
    here = {"device": device.type, "threads": threads, "batch": batch, "size": size, "precision": precision}
    return here == REFERENCE_SETTINGS


def synthetic_batch(size: int, batch: int, device: torch.device, seed: int = 0) -> Batch:
    """A batch of random ellipse phantoms in [0, 1], undersampled at 4x with the paper's row mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    images = np.zeros((batch, size, size), dtype=np.float32)
    for b in range(batch):
        for _ in range(6):
            cx, cy = rng.uniform(-0.4, 0.4, 2)
            ax, ay = rng.uniform(0.1, 0.6, 2)
            images[b] += rng.uniform(0.2, 1.0) * (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0)
        images[b] /= max(float(images[b].max()), 1e-6)
    mask = make_mask("random", (size, size), ACCELERATION)
    kspace, zf = undersample(images, mask)
    as_batch = lambda a: torch.from_numpy(np.ascontiguousarray(a))[:, None].to(device)  # noqa: E731
    return {
        "target": as_batch(images),
        "zf": as_batch(zf),
        "kspace": as_batch(kspace),
        "mask": torch.from_numpy(mask)[None, None].expand(batch, 1, size, size).contiguous().to(device),
    }


def slice_batch(batch: Batch, n: int) -> Batch:
    """The first `n` samples of a batch."""
    return {k: v[:n] for k, v in batch.items()}


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    """Device name, threads and versions for the report header."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {
        "device": str(device),
        "name": name,
        "threads": threads,
        "torch": torch.__version__,
        "cpu_capability": _cpu_capability(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch or unusual builds
        return "unknown"


def _check(settings: dict[str, Any]) -> None:
    """One-line SftkdErrors for impossible settings."""
    limits = (("size", 8, MAX_SIZE), ("batch", 1, 1024), ("threads", 1, MAX_THREADS), ("repeats", 1, 10_000),
              ("warmup", 0, 10_000))
    for key, low, high in limits:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SftkdError(f"bench --{key} {value!r}: expected an integer from {low} to {high}")
    if settings["precision"] not in PRECISIONS:
        raise SftkdError(f"bench --precision {settings['precision']!r}: expected fp32 or bf16")


def check_parts(which: Sequence[str] | None) -> list[str]:
    """Validate `--only`: a subset of PARTS (all when empty)."""
    if not which:
        return list(PARTS)
    parts = [w.strip().lower() for w in which if w.strip()]
    for part in parts:
        if part not in PARTS:
            raise SftkdError(f"bench --only {part!r}: expected some of {','.join(PARTS)}")
    return [p for p in PARTS if p in parts]


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """Validate `--methods`: KD method names (all of them when empty)."""
    if not methods:
        return list(METHODS)
    names = [m.strip().lower() for m in methods if m.strip()]
    for name in names:
        if name not in METHODS:
            raise SftkdError(f"bench --methods {name!r}: expected some of {','.join(METHODS)}")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- timing


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` after `warmup` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        samples.append(time.perf_counter() - start)
    return samples


def train_step_fn(objective: nn.Module, batch: Batch, device: torch.device, precision: str,
                  also_clear: nn.Module | None = None, channels_last: bool = True) -> Callable[[], float]:
    """One engine-style training step: autocast forward, zero grads, backward, Adam step.

    Models run in the channels_last layout, as the engine (train.channels_last) and evaluate do;
    `channels_last=False` keeps NCHW, as the reference code does.
    """
    objective.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def step() -> float:
        with precision_context(device, precision):
            loss, _ = objective(batch)
        optimizer.zero_grad(set_to_none=True)
        if also_clear is not None:
            also_clear.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def measure_roof(device: torch.device, precision: str, repeats: int, batch: int = 16,
                 channels: int = 32, size: int = 256) -> dict[str, tuple[float, float]]:
    """Best (GFLOP/s, seconds) of one channels->channels 3x3 conv forward on (batch, C, size, size),
    per memory format ("contiguous" NCHW and "channels_last" NHWC: oneDNN is often much faster
    with the latter on CPUs). The roof is the better of the two."""
    flops = conv_flops(channels, channels, size, size, batch)
    found: dict[str, tuple[float, float]] = {}
    for fmt, memory_format in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        conv = nn.Conv2d(channels, channels, 3, padding=1).to(device).eval().to(memory_format=memory_format)
        x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=memory_format)

        def run(conv: nn.Module = conv, x: torch.Tensor = x) -> None:
            with torch.inference_mode(), precision_context(device, precision):
                conv(x)

        best = min(time_calls(run, device, max(repeats, 3), 1))
        found[fmt] = (flops / 1e9 / best, best)
        del conv, x
    return found


# --------------------------------------------------------------------------- KD, the reference way


class TeacherBackpropKD(TeacherObjective):
    """The reference code's KD step, for comparison: the same loss as `Distillation`
    (joint schedule), but the teacher keeps requires_grad=True and its features are built
    with autograd on and not detached, so backward also runs through the teacher.
    `kd_objectives` gives it reference-way networks (padded convs), timed in NCHW."""

    def __init__(self, student: DCCNN, teacher: DCCNN, method: KDMethod, student_taps: list[str],
                 teacher_taps: list[str], w_imit: float = 0.0) -> None:
        super().__init__()
        self.model, self.kd = student, method
        teacher.train().requires_grad_(True)
        self.hold_teacher(teacher)  # not optimised, as in the reference
        self.student_taps, self.teacher_taps, self.w_imit = student_taps, teacher_taps, w_imit

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        zf, kspace, mask, target = batch["zf"], batch["kspace"], batch["mask"], batch["target"]
        t_out, t_feats = self.teacher(zf, kspace, mask, taps=self.teacher_taps)
        s_out, s_feats = self.model(zf, kspace, mask, taps=self.student_taps)
        students = [s_feats[n] for n in self.student_taps]
        teachers = [t_feats[n] for n in self.teacher_taps]
        if isinstance(self.kd, NoKD) or not students:
            kd = self.kd(students, teachers)
        else:  # KDMethod.forward would detach the teacher maps: call the formula directly
            with torch.autocast(device_type=zf.device.type, enabled=False):
                kd = self.kd.loss([s.float() for s in students], [t.float() for t in teachers])
        rec = F.l1_loss(s_out, target)
        imit = F.l1_loss(s_out, t_out) if self.w_imit > 0 else zf.new_zeros(())
        return rec + kd + self.w_imit * imit, {"rec": rec, "kd": kd, "imit": imit}


def kd_objectives(method: str, batch: Batch, seed: int = 0) -> tuple[Distillation, TeacherBackpropKD, int]:
    """Both KD variants for `method` (same initial weights) and the adapters' forward conv FLOPs."""
    torch.manual_seed(seed)
    teacher, student = build_model(TEACHER), build_model(STUDENT)
    s_taps, t_taps = default_taps(method, student, teacher)
    kd = build_method(method, [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps])
    w_imit = 1.0 if method == "none" else 0.0  # "none" is output imitation only
    nograd = Distillation(student, teacher, kd, s_taps, t_taps, w_rec=1.0, w_kd=1.0, w_imit=w_imit)
    twin_teacher, twin_student = reference_way(TEACHER), reference_way(STUDENT)
    twin_teacher.load_state_dict(teacher.state_dict())
    twin_student.load_state_dict(student.state_dict())
    twin_kd = build_method(method, kd.student_channels, kd.teacher_channels)
    twin_kd.load_state_dict(kd.state_dict())
    backprop = TeacherBackpropKD(twin_student, twin_teacher, twin_kd, s_taps, t_taps, w_imit=w_imit)
    n = next(iter(batch.values())).shape[0]
    adapter = n * _adapter_flops(nograd, slice_batch(batch, 1)) if any(True for _ in kd.parameters()) else 0
    return nograd, backprop, adapter


def _adapter_flops(objective: Distillation, batch: Batch) -> int:
    """Forward conv/linear FLOPs of a KD method's adapters on this batch (run on the CPU, untimed)."""
    cpu = {k: v.cpu() for k, v in batch.items()}
    with torch.no_grad():
        _, t_feats = objective.teacher(cpu["zf"], cpu["kspace"], cpu["mask"], taps=objective.teacher_taps)
        _, s_feats = objective.model(cpu["zf"], cpu["kspace"], cpu["mask"], taps=objective.student_taps)
        students = [s_feats[n] for n in objective.student_taps]
        teachers = [t_feats[n] for n in objective.teacher_taps]
        return module_conv_flops(objective.kd, lambda: objective.kd(students, teachers))


# --------------------------------------------------------------------------- the bench


Progress = Callable[[str], None]


def run_bench(
    size: int = 150,
    batch: int = 4,
    threads: int = 1,
    precision: str = "fp32",
    device: str = "auto",
    repeats: int = 5,
    warmup: int = 2,
    which: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    compile: bool = False,
    roof_size: int = 256,
    roof_batch: int = 16,
    progress: Progress | None = None,
) -> BenchResult:
    """Measure training-step and inference speed on synthetic data (see the module docstring).

    `which`: parts to run (teacher, student, sft, kd, infer; all by default); `methods`: KD
    methods for the kd part (all by default). Sets torch's thread count to `threads` for the
    duration and restores it afterwards. Never needs a dataset.
    """
    settings = {"size": size, "batch": batch, "threads": threads, "precision": precision, "repeats": repeats,
                "warmup": warmup}
    _check(settings)
    parts, kd_methods = check_parts(which), check_methods(methods)
    dev = select_device(device)
    say = progress or (lambda message: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        settings.update(device=str(dev), parts=parts, methods=kd_methods if "kd" in parts else [],
                        compile=compile, acceleration=ACCELERATION)
        roof_shape = (roof_batch, 32, roof_size, roof_size)
        say(f"roof: one 32->32 3x3 conv on {roof_shape}")
        roofs = measure_roof(dev, precision, repeats, roof_batch, 32, roof_size)
        result = BenchResult(
            settings=settings,
            machine=machine_info(dev, threads),
            roof_gflops=0.0,
            roof={},
            reference_applies=reference_applies(dev, threads, batch, size, precision),
        )
        data = synthetic_batch(size, batch, dev)
        bench = _Bench(result, data, dev, size, batch, precision, repeats, warmup, say)
        if "teacher" in parts or "student" in parts:
            bench.supervised([name for part, name in (("teacher", TEACHER), ("student", STUDENT)) if part in parts])
        if "sft" in parts:
            bench.sft()
        if "kd" in parts:
            bench.kd(kd_methods)
        if "infer" in parts:
            bench.inference(compile)
        if "bf16" in parts:
            bench.bf16()
        say("roof again (a noisy machine can spoil one measurement)")
        again = measure_roof(dev, precision, repeats, roof_batch, 32, roof_size)
        _set_roof(result, roof_shape, {fmt: max(roofs[fmt], again[fmt]) for fmt in roofs})
        _add_ratios(result, kd_methods)
        _add_notes(result)
        return result
    finally:
        torch.set_num_threads(previous_threads)


def _set_roof(result: BenchResult, shape: tuple[int, ...], roofs: dict[str, tuple[float, float]]) -> None:
    """Record the roof (the best memory format) and give every row its fraction of it."""
    best = max(roofs, key=lambda fmt: roofs[fmt][0])
    result.roof_gflops = roofs[best][0]
    result.roof = {"what": f"Conv2d 32->32 3x3 forward on {shape}, best of start and end of the run",
                   "format": best, "seconds": roofs[best][1],
                   "gflops_by_format": {fmt: gf for fmt, (gf, _) in roofs.items()}}
    for row in result.rows:
        row.roof_gflops = result.roof_gflops


@dataclass
class _Bench:
    """The measurements of one `run_bench` call (shared inputs and settings)."""

    result: BenchResult
    data: Batch
    device: torch.device
    size: int
    batch: int
    precision: str
    repeats: int
    warmup: int
    say: Progress

    def _row(self, key: str, what: str, group: str, fn: Callable[[], Any], slices: int, flops: int,
             reference: tuple[float, str] | None = None, note: str = "", warmup: int | None = None,
             baseline: str | None = None) -> BenchRow:
        """Time `fn`; `baseline` is the key of the reference-way row of the same work (timed before)."""
        self.say(what)
        samples = time_calls(fn, self.device, self.repeats, self.warmup if warmup is None else warmup)
        applies = self.result.reference_applies and reference is not None
        row = BenchRow(key, what, group, statistics.median(samples), samples, slices, flops, 0.0,
                       reference_s=reference[0] if applies else None,
                       reference_unit=reference[1] if reference else "step", note=note,
                       baseline_s=self.result.row(baseline).seconds if baseline and self.result.has(baseline) else None)
        self.result.rows.append(row)
        return row

    def _step(self, objective: nn.Module, reference_way: bool = False, also_clear: nn.Module | None = None) -> Callable[[], float]:
        return train_step_fn(objective, self.data, self.device, self.precision, also_clear=also_clear,
                             channels_last=not reference_way)

    def supervised(self, names: list[str]) -> None:
        for name in names:
            role = "teacher" if name == TEACHER else "student"
            reference = (REFERENCE_STEP_S["teacher"], "step") if role == "teacher" else None
            baseline = f"train.{role}.reference"
            torch.manual_seed(0)
            model = reference_way(name)
            self._row(baseline, f"{role} {name} train, reference way", "train", self._step(Supervised(model), True),
                      self.batch, 3 * model_flops(model, self.size, self.batch), reference)
            torch.manual_seed(0)
            model = build_model(name)
            self._row(f"train.{role}", f"{role} {name} train", "train", self._step(Supervised(model)), self.batch,
                      3 * model_flops(model, self.size, self.batch), reference, baseline=baseline)

    def sft(self) -> None:
        reference = (REFERENCE_STEP_S["sft"], "step")
        for key, label, batched, make in (("reference", "reference way", False, reference_way),
                                          ("batched", "batched", True, build_model),
                                          ("naive", "per branch", False, build_model)):
            torch.manual_seed(0)
            teacher, student = make(TEACHER), make(STUDENT)
            objective = StudentFriendly(teacher, student, batched=batched)
            self._row(f"train.sft.{key}", f"SFT step, {label}", "train", self._step(objective, key == "reference"),
                      self.batch, 3 * sft_flops(teacher, student, self.size, self.batch), reference,
                      baseline=None if key == "reference" else "train.sft.reference")

    def kd(self, methods: list[str]) -> None:
        reference = (REFERENCE_STEP_S["kd"], "step")
        for method in methods:
            nograd, backprop, adapter = kd_objectives(method, self.data)
            t_fwd = model_flops(backprop.teacher, self.size, self.batch)
            s_fwd = model_flops(backprop.model, self.size, self.batch)
            step = self._step(backprop, True, also_clear=backprop.teacher)
            self._row(f"train.kd_backprop.{method}", f"KD {method}, reference way (backprop T)", "train",
                      step, self.batch, 3 * (t_fwd + s_fwd + adapter), reference)
            del backprop, step
            t_fwd = model_flops(nograd.teacher, self.size, self.batch)
            s_fwd = model_flops(nograd.model, self.size, self.batch)
            self._row(f"train.kd.{method}", f"KD {method} (no_grad T)", "train", self._step(nograd), self.batch,
                      t_fwd + 3 * (s_fwd + adapter), reference, baseline=f"train.kd_backprop.{method}")
            del nograd

    def inference(self, compile: bool) -> None:
        for name in (TEACHER, STUDENT):
            torch.manual_seed(0)
            reference = reference_way(name).to(self.device).eval()
            self._infer_rows(name, reference, "reference", reference)
            model = build_model(name).to(self.device, memory_format=torch.channels_last).eval()
            model.load_state_dict(reference.state_dict())
            self._infer_rows(name, model, "eager", model)
            self._infer_rows(name, model, "torchscript", None)
            self._infer_rows(name, model, "onnx", None)
            if compile:
                self._infer_rows(name, model, "compiled", None)

    def bf16(self) -> None:
        """bf16 autocast against fp32, both timed here: teacher/student training steps, inference at --batch."""
        if self.precision != "fp32":
            self.result.notes.append(f"bf16 rows: skipped (they compare against fp32; this run is --precision {self.precision})")
            return
        if self.device.type == "cpu" and not torch.cpu._is_avx512_bf16_supported():
            self.result.notes.append("bf16 rows: skipped (this CPU has no AVX512-BF16; bf16 would be emulated)")
            return
        for name in (TEACHER, STUDENT):
            torch.manual_seed(0)
            model = build_model(name)
            flops = 3 * model_flops(model, self.size, self.batch)
            for precision in ("fp32", "bf16"):
                step = train_step_fn(Supervised(model), self.data, self.device, precision)
                self._row(f"bf16.train.{name}.{precision}", f"{name} train, {precision}", "train", step, self.batch,
                          flops, baseline=f"bf16.train.{name}.fp32" if precision == "bf16" else None)
            model = model.eval()
            for precision in ("fp32", "bf16"):
                def run(model: DCCNN = model, precision: str = precision) -> None:
                    with torch.inference_mode(), precision_context(self.device, precision):
                        model(self.data["zf"], self.data["kspace"], self.data["mask"])

                self._row(f"bf16.infer.{name}.{precision}", f"{name} infer b{self.batch}, {precision}", "infer", run,
                          self.batch, model_flops(model, self.size, self.batch),
                          baseline=f"bf16.infer.{name}.fp32" if precision == "bf16" else None)

    def _runner(self, name: str, model: DCCNN, mode: str, data: Batch) -> tuple[Callable | None, str]:
        """The callable that `mode` times (built and warmed up here), and a note; None if unavailable."""
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # "no code generation for complex operators": the DC FFTs
                warnings.filterwarnings("ignore")
                if mode == "torchscript":
                    runner = torchscript_runner(model, data)
                elif mode == "onnx":
                    runner = onnx_runner(model, data, self.device, self.precision)
                else:
                    runner = torch.compile(model, dynamic=False)
                    self.say(f"compiling {name} for batch {data['zf'].shape[0]}")
                    with torch.inference_mode(), precision_context(self.device, self.precision), _freezing():
                        runner(data["zf"], data["kspace"], data["mask"])
                    _synchronize(self.device)
        except Exception as exc:  # inductor needs a C++ compiler on the CPU; ONNX the export extra, fp32, CPU
            what = {"compiled": "torch.compile", "torchscript": "TorchScript", "onnx": "ONNX"}[mode]
            self.result.notes.append(f"{what} {name} (batch {data['zf'].shape[0]}): skipped ({_one_line(exc)})")
            return None, ""
        took = time.perf_counter() - start
        if mode == "torchscript":
            return runner, f"traced, saved and loaded in {took:.1f} s (as `sftkd export` files run)"
        if mode == "onnx":
            return runner, (f"exported and loaded in {took:.1f} s; onnxruntime {torch.get_num_threads()} thread(s), "
                            "DC as matrix-product DFTs (as `sftkd export --format onnx` files run)")
        return runner, f"compiled in {took:.1f} s (inductor, frozen weights); the DC layer's complex FFTs stay eager"

    def _infer_rows(self, name: str, model: DCCNN, mode: str, runner: Callable | None) -> None:
        sizes = [1] if self.batch == 1 else [1, self.batch]
        for n in sizes:
            data = slice_batch(self.data, n)
            note = ""
            if mode in ("torchscript", "onnx", "compiled"):  # built per batch size
                runner, note = self._runner(name, model, mode, data)
                if runner is None:
                    return

            def run(data: Batch = data, runner: Callable = runner) -> None:
                with torch.inference_mode(), precision_context(self.device, self.precision):
                    runner(data["zf"], data["kspace"], data["mask"])

            reference = (REFERENCE_SLICE_S[name], "slice") if n == self.batch else None
            label = {"eager": "", "reference": ", reference way"}.get(mode, f" {mode}")
            self._row(f"infer.{name}.{mode}.b{n}", f"{name} infer b{n}{label}", "infer", run, n,
                      model_flops(model, self.size, n), reference, note,
                      warmup=max(self.warmup, 1) if mode != "eager" else None,
                      baseline=None if mode == "reference" else f"infer.{name}.reference.b{n}")


@contextlib.contextmanager
def _freezing() -> Iterator[None]:
    """Inductor with frozen weights (constant folding, prepacked oneDNN convs, fused ReLU) while compiling."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


def torchscript_runner(model: DCCNN, data: Batch) -> Callable:
    """The model as `sftkd export --format torchscript` writes it (a trace with torch.fft DC),
    loaded back as `sftkd evaluate --exported` runs it."""
    return _exported_runner(model, data, "torchscript")


def onnx_runner(model: DCCNN, data: Batch, device: torch.device, precision: str) -> Callable:
    """The model as `sftkd export --format onnx` writes it (DC as DFT matrix products for this
    image size), run in onnxruntime as `sftkd evaluate --exported` runs it (fp32, on the CPU)."""
    if device.type != "cpu" or precision != "fp32":
        raise SftkdError(f"onnxruntime runs the exported file in fp32 on the CPU, not {precision} on {device.type}")
    return _exported_runner(model, data, "onnx")


def _exported_runner(model: DCCNN, data: Batch, fmt: str) -> Callable:
    """Write `model` with export's own writer for `fmt` to a temporary file and load it as evaluate does."""
    from sftkd_cli.export import exportable, load_exported, split_complex, write_onnx, write_torchscript

    wrapper = exportable(model, tuple(data["zf"].shape[-2:]), fixed=fmt == "onnx").eval()
    example = (data["zf"], split_complex(data["kspace"]), data["mask"])
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        path = Path(folder) / f"model.{fmt}"
        (write_onnx if fmt == "onnx" else write_torchscript)(wrapper, example, path)
        return load_exported(path, device=data["zf"].device, threads=torch.get_num_threads())


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _ratio(result: BenchResult, top: str, bottom: str) -> float | None:
    if result.has(top) and result.has(bottom):
        return result.row(top).seconds / result.row(bottom).seconds
    return None


def _add_ratios(result: BenchResult, methods: list[str]) -> None:
    """Slower / faster time ratios that answer the design questions."""
    pairs = {
        "sft_naive_over_batched": ("train.sft.naive", "train.sft.batched"),
        "teacher_over_student_train": ("train.teacher", "train.student"),
        "teacher_over_student_latency_b1": (f"infer.{TEACHER}.eager.b1", f"infer.{STUDENT}.eager.b1"),
        f"teacher_over_student_latency_b{result.settings['batch']}": (
            f"infer.{TEACHER}.eager.b{result.settings['batch']}", f"infer.{STUDENT}.eager.b{result.settings['batch']}"),
    }
    for method in methods:
        pairs[f"kd_backprop_over_nograd.{method}"] = (f"train.kd_backprop.{method}", f"train.kd.{method}")
    for name in (TEACHER, STUDENT):
        for n in sorted({1, result.settings["batch"]}):
            pairs[f"compile_speedup.{name}.b{n}"] = (f"infer.{name}.eager.b{n}", f"infer.{name}.compiled.b{n}")
            pairs[f"torchscript_speedup.{name}.b{n}"] = (f"infer.{name}.eager.b{n}", f"infer.{name}.torchscript.b{n}")
            pairs[f"onnx_speedup.{name}.b{n}"] = (f"infer.{name}.eager.b{n}", f"infer.{name}.onnx.b{n}")
    for name in (TEACHER, STUDENT):
        for group in ("train", "infer"):
            pairs[f"bf16_speedup.{group}.{name}"] = (f"bf16.{group}.{name}.fp32", f"bf16.{group}.{name}.bf16")
    for key, (top, bottom) in pairs.items():
        value = _ratio(result, top, bottom)
        if value is not None:
            result.ratios[key] = value


def _add_notes(result: BenchResult) -> None:
    result.notes.append(
        "GFLOP/s counts conv FLOPs only (2*Cin*Cout*9*H'*W' per conv on the maps each way computes: padded maps "
        "for the reference way, shrinking valid maps for ours; training = 3x forward, "
        "teacher forward 1x in KD no_grad); DC FFTs and loss maths are not counted."
    )
    if not result.reference_applies:
        result.notes.append(
            "reference: n/a (different settings); the reference was timed at "
            + ", ".join(f"{k} {v}" for k, v in REFERENCE_SETTINGS.items())
        )
