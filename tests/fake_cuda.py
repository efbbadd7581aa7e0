"""A stand-in for torch.cuda's streams and graphs on the CPU, so that the CUDA-graph code paths
(`GraphedStep`, `graphed_inference`, the bench's CUDA plan) run in CPU tests.

Tests get it as the `fake_gpu` fixture (tests/conftest.py), which yields the `FakeCuda` in use.

- Streams do nothing (the CPU runs everything in order); the device checks are passed and
  capturable Adam is allowed on the CPU.
- A training step's capture (GraphedStep) runs the step, as the body of `torch.cuda.graph`
  runs, but then puts the weights and the optimiser state back: a capture computes nothing.
  Its replay runs the captured step again as the graph would: on the static inputs, with the
  lr tensors the graph reads (refreshed by GraphedStep before each replay), writing the static
  loss in place.
- An inference capture (graphed_inference) records the outermost module call made inside it
  (the module, its static inputs, its output tensor and the autocast in force), then fills the
  output with NaN: a capture computes nothing, so an output not rewritten by a replay shows.
  Its replay runs that forward again on the static inputs under no_grad and copies the result
  into the output tensor in place.
- `FakeCuda.fail_capture_of(module)`: the captures of that module (a training step's objective,
  an inference pass's model) fail at their end, as a capture of an op that syncs does.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from sftkd_cli.training import engine, graphs
from sftkd_cli.training.graphs import GraphedStep, _Kept

#: what a capture of an op that syncs raises (the first line of torch's message)
CAPTURE_ERROR = "operation not permitted when stream is capturing"


class FakeStream:
    """torch.cuda.Stream on the CPU: nothing to wait for."""

    def wait_stream(self, other: object) -> None:
        pass


class FakeGraph:
    """torch.cuda.CUDAGraph on the CPU: `replay` runs what its capture recorded."""

    def __init__(self) -> None:
        self.recorded: Callable[[], None] | None = None

    def replay(self) -> None:
        if self.recorded is None:
            raise RuntimeError("replay of a CUDA graph that was never captured")
        self.recorded()


def _never(module: nn.Module) -> bool:
    return False


@dataclass
class FakeCuda:
    """The stand-in in use: which captures fail, and how many captures and replays it saw."""

    fail_capture_of: Callable[[nn.Module], bool] = _never
    captured: list[nn.Module] = field(default_factory=list, repr=False)  # the objectives and models captured
    replays: int = 0
    step: GraphedStep | None = field(default=None, repr=False)  # the training step being captured (None: inference)

    @contextlib.contextmanager
    def capturing(self, graph: FakeGraph, device: torch.device) -> Iterator[None]:
        """Stands in for graphs._capturing: a training step's or a forward pass's capture."""
        if self.step is None:
            with self._capturing_forward(graph):
                yield
            return
        step = self.step
        kept = _Kept(step.objective, step.optimizer)
        try:
            yield
            self._end_capture(step.objective)
        finally:
            kept.restore()
        graph.recorded = lambda: self._replay_step(step, graph)

    def _end_capture(self, module: nn.Module) -> None:
        if self.fail_capture_of(module):
            raise RuntimeError(f"{CAPTURE_ERROR}\nCUDA kernel errors ...")
        self.captured.append(module)

    def _replay_step(self, step: GraphedStep, graph: FakeGraph) -> None:
        """The captured training step again: the lr the graph's tensors hold, grads written afresh."""
        self.replays += 1
        captured = next(g for g in step._graphs.values() if g.graph is graph)
        groups = step.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        for group, tensor in zip(groups, step._lrs):  # the value the lr tensor holds at replay (as a
            group["lr"] = tensor.item()  # float: Adam divides by a float scalar and a tensor differently)
        try:
            step.optimizer.zero_grad(set_to_none=True)
            captured.loss.copy_(step._body(captured.inputs))
        finally:
            for group, lr in zip(groups, floats):
                group["lr"] = lr

    @contextlib.contextmanager
    def _capturing_forward(self, graph: FakeGraph) -> Iterator[None]:
        """Record the outermost module call inside the block (module, inputs, output, autocast)."""
        calls: list[dict[str, Any]] = []

        def before(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not calls:
                kind = next(a.device.type for a in args if isinstance(a, torch.Tensor))
                amp = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
                calls.append({"module": module, "args": args, "output": None, "device": kind, "amp": amp})

        def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if calls and calls[0]["module"] is module and calls[0]["output"] is None:
                calls[0]["output"] = output

        hooks = [nn.modules.module.register_module_forward_pre_hook(before),
                 nn.modules.module.register_module_forward_hook(after)]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
        if not calls:
            raise AssertionError("the fake CUDA graph saw no module call inside its capture")
        call = calls[0]
        self._end_capture(call["module"])
        if isinstance(call["output"], torch.Tensor):
            call["output"].fill_(float("nan"))  # a capture computes nothing
        graph.recorded = lambda: self._replay_forward(call)

    def _replay_forward(self, call: dict[str, Any]) -> None:
        """The captured forward pass again on the static inputs, written into its output in place."""
        self.replays += 1
        amp = (torch.autocast(call["device"], dtype=call["amp"], cache_enabled=False) if call["amp"] is not None
               else contextlib.nullcontext())
        with torch.no_grad(), amp:
            fresh = call["module"](*call["args"])
        call["output"].copy_(fresh)


def _one_device(inputs: Sequence[torch.Tensor]) -> torch.device:
    """graphs._one_cuda_device without the CUDA check: the one device of `inputs`."""
    devices = {x.device for x in inputs}
    assert len(devices) == 1, devices
    return next(iter(devices))


def install(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """Put the stand-in in place for one test (undone with `monkeypatch`); returns it."""
    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(graphs, "_capturing", fake.capturing)
    monkeypatch.setattr(graphs, "_earlier_failure", None)  # a failed capture marks the process: this test's only
    monkeypatch.setattr(graphs, "_one_cuda_device", _one_device)
    monkeypatch.setattr(graphs, "graphs_unsupported", lambda device, amp, world=1: None)
    monkeypatch.setattr(engine, "use_cuda_graphs", lambda setting, device, amp, world=1: setting != "off")
    monkeypatch.setattr(importlib.import_module("torch.optim.adam"), "_get_capturable_supported_devices",
                        lambda supports_xla=True: ["cpu"])
    real_capture = GraphedStep._capture

    def capture(self: GraphedStep, batch: graphs.Batch) -> Any:
        fake.step = self
        try:
            return real_capture(self, batch)
        finally:
            fake.step = None

    monkeypatch.setattr(GraphedStep, "_capture", capture)
    return fake
