"""The whole training step captured in a CUDA graph and replayed (recipe key train.cuda_graphs).

A training step (forward, loss, backward, Adam step) launches hundreds of small kernels; with
the paper's small networks and images the launches, not the arithmetic, set a GPU's pace. A
CUDA graph records them once and replays them with one launch (PyTorch's "whole network
capture"). What capture needs, and how it is met here:

- Static inputs and shapes: a graph reads fixed tensors, so each batch is copied into them
  before a replay, and it is captured for one batch shape. The last, partial batch of an epoch
  gets a graph of its own (a second capture, once per run), which keeps every sample and the
  order the eager engine trains on (padding or dropping it would change what is trained).
  Graphs are also keyed by `Objective.graph_key()` (two-stage distillation runs other code in
  its feature stage).
- Adam with capturable=True (the engine builds it so when graphs are on): its step counters
  live on the GPU. The graph reads the learning rate from a 0-dim float32 tensor on the device;
  that tensor is put into the param groups only while capturing, and refreshed (`fill_`, no
  sync) from the groups' float lr before each replay. So StepLR, checkpoints and the history
  see plain floats, as in eager training, and the schedule applies to the graph.
- Warm-up: a few eager steps on a side stream before capture (lazy set-up of cuDNN, cuFFT plans,
  autograd and Adam's state), as the CUDA graphs notes require. They run on the batch about to
  be trained, and the weights, buffers and optimiser state are put back afterwards (state that
  the warm-up created is reset to Adam's initial zeros), so the warm-up leaves no trace: the
  replayed steps apply the updates eager training would (to float rounding: capturable Adam
  orders its arithmetic differently), and resuming stays exact.
- No CPU sync inside the step: the loss is a static output; the engine keeps copies of it and
  reads them together now and then (progress bar, NaN guard, checkpoints), never `.item()`
  per step.
- Mixed precision: bf16 autocast runs inside the graph with autocast's weight cache off (a
  copy cached before the capture would be replayed stale); the data consistency casts its input
  to float32, so its FFTs run in float32. fp16 is refused: its GradScaler reads the GPU every
  step to skip steps with inf/NaN gradients, which a graph cannot do.
- One process: DistributedDataParallel does part of its work on the CPU side of autograd,
  which a replay skips.

A capture that fails (an op that syncs, a kernel that cannot be captured, ...) prints one line
on the caller's console (standard error without one), "CUDA graph capture failed (<reason>);
training eagerly", and every later step runs
eagerly (the same updates). Nothing is captured again in that process: torch ends a failed
capture without telling its memory allocator, which then fails later captures (and
`torch.cuda.empty_cache`) with an internal assert (an empty graph, which ends cleanly, is the
exception). A later run in the same process (a
`reproduce` worker) says so in its one line and trains eagerly; validation and `evaluate`
reconstruct eagerly.

`graphed_inference(model, example_inputs)` captures a forward pass at a fixed batch shape (the
bench's inference rows); `graphed_reconstructor(model, ...)` keeps one such graph per batch shape
met, for validation while training and for `evaluate`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch import nn

from sftkd_cli.choices import CUDA_GRAPHS_MODES
from sftkd_cli.errors import SftkdError
from sftkd_cli.runtime import Batch, autocast

#: eager steps before a capture (the CUDA graphs notes' example uses 3)
WARMUP_STEPS = 3

#: (zf, kspace, mask) -> image: a network, its graphed replays, or an exported model
Reconstructor = Callable[..., torch.Tensor]

#: why the first capture that failed in this process failed (None while none has): no capture
#: is tried after it (see the module docstring)
_earlier_failure: str | None = None


def graphs_unsupported(device: torch.device, amp: str, world: int = 1) -> str | None:
    """Why the training step cannot be captured in this setting (None when it can)."""
    if device.type != "cuda":
        return f"needs a CUDA device; this run trains on {device.type}"
    if amp == "fp16":
        return ("not with train.amp fp16 (its gradient scaler reads the GPU every step); "
                "use train.amp bf16 or off, or train.cuda_graphs off")
    if world > 1:
        return f"not with {world} processes (DistributedDataParallel); use train.cuda_graphs auto or off"
    return None


def use_cuda_graphs(setting: str, device: torch.device, amp: str, world: int = 1) -> bool:
    """Whether a run captures its training step: train.cuda_graphs `auto` when it can (CUDA, amp
    off or bf16, one process), `on` always (an error where it cannot), `off` never."""
    if setting not in CUDA_GRAPHS_MODES:
        raise SftkdError(f"train.cuda_graphs {setting!r}: expected auto, on or off")
    if setting == "off":
        return False
    reason = graphs_unsupported(device, amp, world)
    if reason is not None and setting == "on":
        raise SftkdError(f"train.cuda_graphs on: {reason}")
    return reason is None


def optimizer_state_for(saved: dict[str, Any], capturable: bool) -> dict[str, Any]:
    """A saved Adam state dict with its param groups' `capturable` set to this run's.

    `load_state_dict` takes the flags from the saved groups and places Adam's step counters by
    them (on the GPU when capturable): so a checkpoint of an eager run resumes with graphs, and
    one written with graphs resumes eagerly."""
    return {**saved, "param_groups": [{**group, "capturable": capturable} for group in saved["param_groups"]]}


class _Kept:
    """The weights, buffers and optimiser state before a warm-up, to put back after it."""

    def __init__(self, objective: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.tensors = [*objective.parameters(), *objective.buffers()]
        self.values = [t.detach().clone() for t in self.tensors]
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in optimizer.state[p].items()}
                      for p in self.params if optimizer.state.get(p)}

    @torch.no_grad()
    def restore(self) -> None:
        """Everything back in place (the same tensors, which a graph will read)."""
        for tensor, value in zip(self.tensors, self.values):
            tensor.copy_(value)
        for p in self.params:
            now = self.optimizer.state.get(p)
            if not now:
                continue
            before = self.state.get(p)
            for key, value in now.items():
                if before is None:  # created by the warm-up: Adam's state starts as zeros
                    if isinstance(value, torch.Tensor):
                        value.zero_()
                elif isinstance(value, torch.Tensor):
                    value.copy_(before[key])
                else:
                    now[key] = before[key]


@dataclass
class _Graph:
    """One captured step: the graph, the static inputs it reads and the loss it writes."""

    graph: torch.cuda.CUDAGraph
    inputs: Batch
    loss: torch.Tensor


class _CaptureFailed(Exception):
    """A training step's capture failed: `reason` in a few words; `poisons` as `_poisons`."""

    def __init__(self, reason: str, poisons: bool) -> None:
        super().__init__(reason)
        self.reason, self.poisons = reason, poisons


@contextlib.contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """The block on a new side stream that starts after the current stream's work, which in turn
    waits for the block's (the warm-up before a capture, as the CUDA graphs notes do it)."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)


@contextlib.contextmanager
def _capturing(graph: torch.cuda.CUDAGraph, device: torch.device) -> Iterator[None]:
    """`torch.cuda.graph(graph)` on a new stream of `device`, with `device` current (a capture
    records the current device's work only: on cuda:1 without this, the graph came out empty
    and replays did nothing), thread_local (the checkpoint writer's thread may use CUDA
    meanwhile). A graph that recorded nothing fails, rather than be replayed as a no-op. When
    the capture fails, ending it raises before torch.cuda.graph gives the stream back: the
    caller's stream is set again."""
    with torch.cuda.device(device), warnings.catch_warnings():
        warnings.filterwarnings("error", message="The CUDA Graph is empty")
        stream = torch.cuda.current_stream(device)
        try:
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(device), capture_error_mode="thread_local"):
                yield
        except BaseException:
            torch.cuda.set_stream(stream)
            raise


def _reason(exc: BaseException) -> str:
    """An exception in a few words for the one-line capture message."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _capture_failed(reason: str, poisons: bool = True) -> str:
    """The one line that says a capture failed and why; the first reason of a capture that
    `poisons` the process (all but an empty graph, which ends cleanly) is kept (`_earlier_failure`)."""
    global _earlier_failure
    if poisons:
        _earlier_failure = _earlier_failure or reason
    return f"CUDA graph capture failed ({reason})"


def _poisons(exc: BaseException) -> bool:
    """Whether a capture that ended with `exc` leaves torch's allocator mid-capture: every failure
    but the empty graph (torch's warning, raised as an error in `_capturing` after a clean end)."""
    return not isinstance(exc, UserWarning)


def _capture_refused() -> str | None:
    """The one line saying why no capture is tried (a capture failed earlier in this process),
    or None when captures may go ahead."""
    if _earlier_failure is None:
        return None
    return (f"CUDA graph capture failed (not tried: one failed earlier in this process ({_earlier_failure}), "
            "which leaves torch's memory allocator mid-capture)")


class GraphedStep:
    """The training step of `objective` (its loss, backward and `optimizer.step()`), replayed
    from CUDA graphs captured per (batch shapes, key); see the module docstring."""

    def __init__(
        self,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp: str = "off",
        *,
        warmup: int = WARMUP_STEPS,
        console: Console | None = None,
    ) -> None:
        reason = graphs_unsupported(device, amp)
        if reason is not None:
            raise SftkdError(f"CUDA graphs: {reason}")
        if not all(group.get("capturable") for group in optimizer.param_groups):
            raise SftkdError("CUDA graphs: the optimizer must be built with capturable=True")
        self.objective, self.optimizer, self.device, self.amp = objective, optimizer, device, amp
        self.warmup = warmup
        self.console = console  # where a failed capture is said (None: standard error)
        self.failed = False  # set by a failed capture: every later step runs eagerly
        self.failure = ""  # then why, in one line: "CUDA graph capture failed (<reason>)"
        self._graphs: dict[Hashable, _Graph] = {}
        self._lrs = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=device) for g in optimizer.param_groups]
        self._lr_values: list[float | None] = [None] * len(self._lrs)
        # torch warns once when a capturable optimiser steps outside a capture; here that is
        # on purpose (warm-up, eager fallback)
        optimizer._warned_capturable_if_run_uncaptured = True  # type: ignore[attr-defined]

    @property
    def captured(self) -> int:
        """How many graphs are held (one per batch shape and key)."""
        return len(self._graphs)

    def step(self, batch: Batch, key: Hashable = ()) -> torch.Tensor | None:
        """One training step on `batch` (tensors on the device) by replay, capturing its graph
        first if its shapes or `key` are new. Returns the loss, a 0-dim device tensor not yet
        read; None when the capture failed (`failed` is then set: run the step eagerly)."""
        if self.failed:
            return None
        index = (key, tuple((name, tuple(value.shape), value.dtype) for name, value in sorted(batch.items())))
        graph = self._graphs.get(index)
        if graph is None:
            graph = self._capture(batch)
            if graph is None:
                return None
            self._graphs[index] = graph
        else:
            for name, static in graph.inputs.items():
                static.copy_(batch[name])
        self._refresh_lrs()
        graph.graph.replay()
        return graph.loss.clone()

    def _body(self, batch: Batch) -> torch.Tensor:
        """What is captured: forward, loss, backward and the optimiser step (grads start as None)."""
        with autocast(self.device, self.amp, cache=False):
            loss, _ = self.objective(batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _capture(self, batch: Batch) -> _Graph | None:
        refused = _capture_refused()
        if refused is not None:
            return self._fail(refused)
        inputs = {name: value.clone() for name, value in batch.items()}
        self._warm_up(inputs)
        self.optimizer.zero_grad(set_to_none=True)  # backward makes .grad in the graph's own memory
        graph = torch.cuda.CUDAGraph()
        try:
            loss = self._record(graph, inputs)
        except _CaptureFailed as failure:
            self.optimizer.zero_grad(set_to_none=True)
            return self._fail(_capture_failed(failure.reason, failure.poisons))
        return _Graph(graph, inputs, loss)

    def _fail(self, line: str) -> None:
        """Every step from now on eager, said in one line."""
        self.failed, self.failure = True, line
        self._graphs.clear()
        say(self.console, f"{line}; training eagerly")

    def _warm_up(self, inputs: Batch) -> None:
        """`warmup` eager steps on a side stream, then the weights and state put back."""
        kept = _Kept(self.objective, self.optimizer)
        with _side_stream(self.device), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            for _ in range(self.warmup):
                self.optimizer.zero_grad(set_to_none=True)
                self._body(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        kept.restore()

    def _record(self, graph: torch.cuda.CUDAGraph, inputs: Batch) -> torch.Tensor:
        """Capture `_body` with the lr tensors in the param groups (their floats put back after)."""
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        failure: list[BaseException] = []
        for group, tensor in zip(groups, self._lrs):
            group["lr"] = tensor
        try:
            with _capturing(graph, self.device):
                try:
                    return self._body(inputs)
                except Exception as exc:
                    failure.append(exc)
                    raise
        except Exception as exc:  # the body's error, or the capture's own (ending an invalid capture)
            raise _CaptureFailed(_reason(failure[0] if failure else exc), _poisons(exc)) from exc
        finally:
            for group, lr in zip(groups, floats):
                group["lr"] = lr

    def _refresh_lrs(self) -> None:
        """The graph's lr tensors set to the param groups' lr (StepLR changes those), when changed."""
        for i, (group, tensor) in enumerate(zip(self.optimizer.param_groups, self._lrs)):
            value = float(group["lr"])
            if value != self._lr_values[i]:
                tensor.fill_(value)
                self._lr_values[i] = value


def graphed_inference(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], *, amp: str = "off", warmup: int = WARMUP_STEPS,
) -> Callable[..., torch.Tensor]:
    """`model`'s forward pass at the shapes of `example_inputs` (CUDA tensors) as a CUDA graph.

    Call the result with tensors of those shapes and dtypes: they are copied into the graph's
    static inputs and the graph is replayed. It returns the graph's static output tensor, which
    the next call overwrites (clone it to keep it). Runs under no_grad, with `amp` autocast
    (off, bf16 or fp16); the model's train/eval mode is the caller's. A model whose forward
    cannot be captured is an SftkdError naming the reason.
    """
    refused = _capture_refused()
    if refused is not None:
        raise SftkdError(refused)
    inputs = [x.detach().clone() for x in example_inputs]
    device = _one_cuda_device(inputs)
    with _side_stream(device), torch.no_grad(), autocast(device, amp, "amp", cache=False):
        for _ in range(warmup):
            model(*inputs)
    graph = torch.cuda.CUDAGraph()
    try:
        with _capturing(graph, device), torch.no_grad(), autocast(device, amp, "amp", cache=False):
            output = model(*inputs)
    except Exception as exc:  # noqa: BLE001 - any capture failure, in one line
        raise SftkdError(_capture_failed(_reason(exc), _poisons(exc))) from exc
    if not isinstance(output, torch.Tensor):
        raise SftkdError(f"graphed inference: the model returned {type(output).__name__}; expected one tensor")
    expected = [(tuple(x.shape), x.dtype) for x in inputs]

    def replay(*args: torch.Tensor) -> torch.Tensor:
        got = [(tuple(x.shape), x.dtype) for x in args]
        if got != expected:
            raise SftkdError(f"graphed inference: inputs {_shapes(got)}; the graph was captured for {_shapes(expected)}")
        for static, x in zip(inputs, args):
            static.copy_(x)
        graph.replay()
        return output

    return replay


def graphed_reconstructor(model: Reconstructor, device: torch.device, amp: str, setting: str,
                          console: Console | None = None) -> tuple[Reconstructor, bool]:
    """`model` (called with zf, kspace, mask) as evaluate and validation run it, and whether from
    CUDA graphs: unless `setting` (the run's train.cuda_graphs) is off, on CUDA each batch shape's
    forward pass is captured once and replayed (a batch then costs one launch); elsewhere, or
    with fp16, or after a failed capture in this process (said then), eagerly. A capture that
    fails says so in one line on `console` (None: standard error) and that shape runs eagerly.
    A replayed output is overwritten by the next replay: copy what is kept."""
    if setting == "off" or graphs_unsupported(device, amp) is not None or _capture_refused() is not None:
        return model, False
    runners: dict[tuple, Reconstructor] = {}

    def run(zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shapes = (tuple(zf.shape), tuple(kspace.shape), tuple(mask.shape))
        if shapes not in runners:
            if _capture_refused() is not None:  # a capture failed since: said once, where it failed
                runners[shapes] = model
            else:
                try:
                    runners[shapes] = graphed_inference(model, (zf, kspace, mask), amp=amp)
                except SftkdError as exc:
                    say(console, f"{exc}; reconstructing eagerly")
                    runners[shapes] = model
        return runners[shapes](zf, kspace, mask)

    return run, True


def say(console: Console | None, line: str) -> None:
    """One line of warning on `console` (None: standard error), as written: no markup, never wrapped."""
    (console or Console(stderr=True)).print(line, highlight=False, markup=False, soft_wrap=True)


def _one_cuda_device(inputs: Sequence[torch.Tensor]) -> torch.device:
    """The one CUDA device all `inputs` are on; an SftkdError naming what was found otherwise."""
    devices = {x.device for x in inputs}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        found = ", ".join(sorted(str(d) for d in devices)) or "no inputs"
        raise SftkdError(f"graphed inference: needs inputs on one CUDA device; got {found}")
    return next(iter(devices))


def _shapes(items: list[tuple[tuple[int, ...], torch.dtype]]) -> str:
    return ", ".join("x".join(map(str, shape)) + f" {str(dtype).removeprefix('torch.')}" for shape, dtype in items) or "none"
