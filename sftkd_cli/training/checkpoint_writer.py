"""Checkpoints written on a background thread, so that training does not wait for the disk.

`CheckpointWriter.submit(paths, state)` takes a CPU copy of `state` (`snapshot`) right away:
the training step after it may change every weight in place. CUDA tensors are copied into
pinned memory without blocking (queued behind the work that produced them; the thread waits
for those copies before it serialises), CPU tensors are cloned. A thread then serialises the
copy once (`runs.checkpoint_bytes`) and writes it to each path in turn (`runs.write_checkpoint`,
atomically: an interrupted or failed write keeps the previous file).

One write at a time: `submit` first waits for the previous one, as does `wait` (at the end of a
fit). An exception in the thread is raised in the caller's thread by the next `submit` or
`wait`, so a failed write is never silent; since that may be an epoch later, a failed write's
error names the point of training it held (`checkpoint_at`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sftkd_cli.errors import SftkdError
from sftkd_cli.runs import checkpoint_bytes, write_checkpoint
from sftkd_cli.training.lines import checkpoint_at


def snapshot(state: Any) -> tuple[Any, list[torch.cuda.Event]]:
    """A copy of `state` that later in-place updates cannot change, and the CUDA events that
    mark its device-to-host copies done (none without CUDA tensors).

    Tensors are copied (CUDA ones to pinned CPU memory, without blocking), dicts, lists and
    tuples rebuilt; other values (numbers, strings) are immutable and kept.
    """
    devices: set[torch.device] = set()

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if value.is_cuda:
                devices.add(value.device)
                return value.detach().to("cpu", non_blocking=True)
            return value.detach().clone()
        if isinstance(value, dict):
            return {key: copy(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy(item) for item in value)
        return value

    copied = copy(state)
    events = []
    for device in devices:
        with torch.cuda.device(device):
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)
    return copied, events


class CheckpointWriter:
    """Writes one checkpoint at a time on a background thread (see the module docstring)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, paths: Sequence[Path], state: dict[str, Any]) -> None:
        """Write a copy of `state` to each of `paths`, in order, in the background."""
        self.wait()
        copied, events = snapshot(state)
        held = checkpoint_at(int(state.get("epoch", 0)), int(state.get("step_in_epoch", 0)))
        self._thread = threading.Thread(target=self._write, args=(list(paths), copied, events, held),
                                        name="sftkd-checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the write under way (if any) is done; raise its exception, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write(self, paths: list[Path], state: dict[str, Any], events: list[torch.cuda.Event], held: str) -> None:
        """Write `state` to `paths`; a failure is kept for `wait`, saying the point of training
        (`held`, e.g. 'the end of epoch 3') whose checkpoint was lost."""
        try:
            for event in events:
                event.synchronize()
            data = checkpoint_bytes(state)  # once for best and last
            for path in paths:
                write_checkpoint(path, data)
        except SftkdError as exc:
            self._error = SftkdError(f"{exc} (the checkpoint of {held})")
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by wait()
            self._error = exc

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()
