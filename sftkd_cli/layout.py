"""The memory layout the networks run in, NCHW or channels_last, chosen per machine by measuring.

Why measured: which layout is faster for these small convolutions (32 channels, 1-channel ends,
shrinking valid maps) depends on the CPU and on the work, and no rule by instruction set held:
- on a 2-vCPU AVX-512 EPYC, channels_last was 1.2-1.5x faster than NCHW for training and
  inference alike;
- on a 2-vCPU AVX2 EPYC it made the D5C5 training step 1.45x slower;
- on the AVX-512 machine with oneDNN and ATen limited to AVX2 kernels, training was tied and
  inference 1.2-1.6x faster in channels_last.

So with `train.channels_last: auto` a CPU run times a few steps of its own work in both layouts
(about six steps, interleaved, fastest of each) and keeps the faster one. The answer is cached
per machine and work in a small JSON file (`$SFTKD_CACHE_DIR`, else `$XDG_CACHE_HOME/sftkd`, else
`~/.cache/sftkd`), so a machine measures each kind of work once and every later run, a resumed
one included, makes the same choice. Concurrent runs (`reproduce --jobs`) take a file lock around
the measurement, so they agree. On CUDA `auto` is channels_last without measuring (the steps
there are launch-bound; both layouts time alike). Both layouts compute the same networks; results
differ only by floating-point rounding.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from sftkd_cli.choices import LAYOUT_SETTINGS
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import atomic_write_text, read_regular_bytes
from sftkd_cli.runtime import Batch, autocast

#: the cache file's name in the cache folder
CACHE_FILE = "layouts.json"
#: timed rounds per layout, after one untimed call each
ROUNDS = 2

#: builds, for a memory format, one unit of the work to time (a training step, a forward pass)
WorkFactory = Callable[[torch.memory_format], Callable[[], None]]


@dataclass(frozen=True)
class LayoutChoice:
    """The layout a run uses and how it was chosen (said in the run's start line)."""

    channels_last: bool
    how: str  # e.g. "measured here: 0.45 s against 0.52 s in NCHW", "set by train.channels_last"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def name(self) -> str:
        return "channels_last" if self.channels_last else "NCHW"

    def describe(self) -> str:
        return f"{self.name} ({self.how})"


def check_setting(value: object, option: str = "train.channels_last") -> str:
    """`value` as one of LAYOUT_SETTINGS (YAML's booleans read as true/false), else one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value not in LAYOUT_SETTINGS:
        raise SftkdError(f"{option} {value!r}: expected auto, true or false")
    return str(value)


def forced_layout(setting: object, device: torch.device) -> LayoutChoice | None:
    """The layout when nothing needs measuring: `setting` true/false, or `auto` off the CPU
    (channels_last); None when `auto` measures (on the CPU). Callers check it before building
    the work to measure."""
    setting = check_setting(setting)
    if setting != "auto":
        return LayoutChoice(setting == "true", "set by train.channels_last")
    if device.type != "cpu":
        return LayoutChoice(True, f"auto on {device.type}")
    return None


def choose_layout(setting: object, device: torch.device, work: str, factory: WorkFactory) -> LayoutChoice:
    """The layout for `work` (a key naming the networks, input shape and precision) on `device`.

    `setting` true/false forces it; `auto` is channels_last on CUDA and measured on the CPU with
    `factory` (its callables must leave the caller's models alone: build them on copies); the
    machine's earlier answer for `work` is reused, a new one stored.
    """
    forced = forced_layout(setting, device)
    if forced is not None:
        return forced
    key = f"{machine_key()} | {work}"
    folder = cache_dir()
    path = folder / CACHE_FILE if folder is not None else None  # None: no cache, measured each time
    with _locked(path):
        known = _read_cache(path)
        if key in known:
            return LayoutChoice(known[key]["channels_last"], f"measured earlier on this machine: {known[key]['times']}")
        channels_last, times = _measure(factory)
        known[key] = {"channels_last": channels_last, "times": times}
        with contextlib.suppress(OSError, SftkdError):  # an unwritable cache only costs a measurement next time
            if path is not None:
                atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True) + "\n")
    return LayoutChoice(channels_last, f"measured here: {times}")


def on_copies(module: nn.Module, work: Callable[[nn.Module], None]) -> WorkFactory:
    """A WorkFactory that runs `work` on a copy of `module` converted to each layout (the
    original keeps its weights, gradients, layout and statistics)."""
    def make(memory_format: torch.memory_format) -> Callable[[], None]:
        twin = copy.deepcopy(module).to(memory_format=memory_format)
        return lambda: work(twin)

    return make


def training_layout(setting: object, objective: nn.Module, batch: Batch, device: torch.device,
                    amp: str = "off") -> LayoutChoice:
    """The layout for training `objective` (forward, loss, backward) on batches like `batch`."""
    def step(twin: nn.Module) -> None:
        with autocast(device, amp):
            loss, _ = twin(batch)
        loss.backward()
        twin.zero_grad(set_to_none=True)

    models = getattr(objective, "models", dict)()
    names = [f"{role}={model.name}" for role, model in models.items()]
    params = _count(objective)
    teacher, method = getattr(objective, "teacher", None), getattr(objective, "kd", None)  # distillation's
    if teacher is not None:
        names.append(f"teacher={teacher.name}")
        params += _count(teacher)
    if method is not None:
        names.append(f"kd={type(method).__name__}")
    work = (f"train {type(objective).__name__}[{','.join(names)}] of {params} params on "
            f"{tuple(batch['zf'].shape)}, amp {amp}")
    return choose_layout(setting, device, work, on_copies(objective, step))


def inference_layout(setting: object, model: nn.Module, batch: Batch, device: torch.device,
                     amp: str = "off") -> LayoutChoice:
    """The layout for reconstructing with `model` (forward passes) batches like `batch`."""
    def forward(twin: nn.Module) -> None:
        with torch.inference_mode(), autocast(device, amp):
            twin(batch["zf"], batch["kspace"], batch["mask"])

    work = (f"infer {getattr(model, 'name', type(model).__name__)} of {_count(model)} params on "
            f"{tuple(batch['zf'].shape)}, amp {amp}")
    return choose_layout(setting, device, work, on_copies(model, forward))


def _count(module: nn.Module) -> int:
    """Parameters of `module`: part of a cache key, so that a model's width (model.channels) and a
    KD method's adapters make other work than the same names at another size."""
    return sum(p.numel() for p in module.parameters())


def _measure(factory: WorkFactory) -> tuple[bool, str]:
    """Time the work in both layouts, interleaved (so a busy machine slows both alike); whether
    channels_last won, and the times in words."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        runs = {fmt: factory(fmt) for fmt in (torch.contiguous_format, torch.channels_last)}
        best = dict.fromkeys(runs, float("inf"))
        for round_ in range(ROUNDS + 1):
            for fmt, run in runs.items():
                start = time.perf_counter()
                run()
                took = time.perf_counter() - start
                if round_:  # the first call of each is a warm-up
                    best[fmt] = min(best[fmt], took)
    last, nchw = best[torch.channels_last], best[torch.contiguous_format]
    channels_last = last < nchw
    loser = "NCHW" if channels_last else "channels_last"
    return channels_last, f"{_seconds(min(last, nchw))} against {_seconds(max(last, nchw))} in {loser}"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.1 else f"{value * 1e3:.1f} ms"


def machine_key() -> str:
    """What makes timings comparable: the CPU, its kernels' instruction set, torch and its threads."""
    return (f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} CPUs), "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")  # a cache key: spelled as ever


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_dir() -> Path | None:
    """$SFTKD_CACHE_DIR, else $XDG_CACHE_HOME/sftkd, else ~/.cache/sftkd; None when there is no
    home directory to put it in (a user without one): layouts are then measured each time."""
    if os.environ.get("SFTKD_CACHE_DIR"):
        return Path(os.environ["SFTKD_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "sftkd"
    try:
        return Path.home() / ".cache" / "sftkd"
    except (RuntimeError, KeyError):  # no $HOME and no passwd entry
        return None


def _read_cache(path: Path | None) -> dict[str, dict]:
    """The cached answers; no cache, a missing, unreadable or malformed one (or a FIFO in its place)
    reads as empty: it is only a cache."""
    if path is None:
        return {}
    try:
        known = json.loads(read_regular_bytes(path, "layout cache"))
    except (SftkdError, ValueError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(v, dict) and isinstance(v.get("channels_last"), bool)
            and isinstance(v.get("times"), str)}


@contextlib.contextmanager
def _locked(path: Path | None) -> Iterator[None]:
    """An exclusive lock on `path`.lock for the block (filelock, as run directories are locked);
    none when there is no cache or it cannot be taken (no folder, not writable)."""
    if path is None:
        yield
        return
    lock = FileLock(str(path) + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()
