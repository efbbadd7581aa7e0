"""The bytes of an exported file (`sftkd export`): the TorchScript and ONNX writers, the model card
embedded in the file, and the publish of the file with its card beside it.

A TorchScript archive as torch.jit.save writes it holds `*.debug_pkl` entries: the source ranges
of the traced code, with this machine's absolute paths and the caller's stack, and a
`.data/serialization_id` computed over them. `reproducible_archive` rewrites it without them
(torch.jit.load reads neither; they only annotate error messages), every entry stored
uncompressed with one fixed date; and the trace numbers its classes afresh
(`_own_compilation_unit`). So the same run exported from any folder, by the command or from
Python, once or many times in one process, gives the same bytes.

The card is embedded without its `sha256` (a file cannot hold its own digest): ONNX as
`metadata_props` key `CARD_KEY`, TorchScript as the extra file `CARD_EXTRA`, read back with
`torch.jit.load(path, _extra_files={CARD_EXTRA: ""})`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sftkd_cli.errors import SftkdError
from sftkd_cli.exported import INPUT_NAMES, INSTALL_HINT, OUTPUT_NAME, require_onnxruntime
from sftkd_cli.files import StagedFiles, json_text, write_bytes_synced
from sftkd_cli.signals import on_signals

ONNX_OPSET = 17
#: the ONNX metadata_props key and the TorchScript extra file that hold the embedded card
CARD_KEY = "sftkd_card"
CARD_EXTRA = "sftkd_card.json"
#: what a TorchScript archive keeps out: machine- and caller-dependent debug records
_DROPPED = (".debug_pkl", "/.data/serialization_id")
#: held while a trace uses its own compilation unit (`_own_compilation_unit`)
_UNIT_LOCK = threading.Lock()
#: the date of every rewritten archive entry (zip's earliest), so that the bytes never carry a time
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def write_torchscript(wrapper: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> str:
    """Write `wrapper` as a TorchScript trace (any batch and size) without debug records
    (`reproducible_archive`); returns how, for the model card."""
    with warnings.catch_warnings(), _own_compilation_unit():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        # serialised in memory, then plain writes: a full disk or a file-size limit is an OSError,
        # not an exception inside torch's C++ file writer (which can abort the process)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    write_bytes_synced(path, reproducible_archive(buffer.getvalue()))
    return f"torch.jit.trace (torch {torch.__version__}; debug records left out)"


@contextlib.contextmanager
def _own_compilation_unit() -> Iterator[None]:
    """Trace into a TorchScript compilation unit of the block's own. Why: torch names traced
    classes in one unit per process, numbering repeated names (`___torch_mangle_<n>`) by what
    the process traced before, so a second export in one process wrote other bytes. The unit is
    a private attribute of torch.jit (torch 2.x); where it is gone, the process's unit is used.
    The swap is process-wide: `_UNIT_LOCK` keeps two exports of one process from overlapping
    (TorchScript work of other threads meanwhile would land in this unit)."""
    with _UNIT_LOCK:
        saved = getattr(torch.jit._state, "_python_cu", None)
        if saved is None:
            yield
            return
        torch.jit._state._python_cu = torch._C.CompilationUnit()  # torch's C++ side reads it at each trace
        try:
            yield
        finally:
            torch.jit._state._python_cu = saved


def write_onnx(wrapper: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> str:
    """Write `wrapper` as ONNX (dynamic batch); returns how it was exported, for the model card."""
    _require_onnx()
    require_onnxruntime()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes of the TorchScript-based exporter
        buffer = io.BytesIO()  # in memory, as in write_torchscript
        torch.onnx.export(
            wrapper, example, buffer, dynamo=False, opset_version=ONNX_OPSET,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_axes={"zf": {0: "batch"}, "kspace": {0: "batch"}, "mask": {0: "mask_batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    write_bytes_synced(path, buffer.getvalue())
    return f"torch.onnx.export (TorchScript-based, dynamo=False, opset {ONNX_OPSET}, torch {torch.__version__})"


def _require_onnx() -> Any:
    """The onnx module (the exporter needs it), or a one-line error naming the install extra."""
    try:
        return importlib.import_module("onnx")
    except ImportError:
        raise SftkdError(f"onnx: not installed; ONNX export needs the extra: {INSTALL_HINT}") from None


def reproducible_archive(data: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    """A TorchScript archive (`data`, torch.jit.save's zip) rewritten without its debug records
    (`_DROPPED`), every entry stored with one date, plus `extra` files (name -> bytes) in its
    `extra/` folder, where torch.jit.load's `_extra_files` finds them."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as archive, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as rewritten:
        entries = archive.infolist()
        root = entries[0].filename.split("/")[0]  # torch names every entry <archive>/...
        for entry in entries:
            if not entry.filename.endswith(_DROPPED):
                rewritten.writestr(zipfile.ZipInfo(entry.filename, _ZIP_DATE), archive.read(entry))
        for name, content in (extra or {}).items():
            rewritten.writestr(zipfile.ZipInfo(f"{root}/extra/{name}", _ZIP_DATE), content)
    return out.getvalue()


def embed_card(path: Path, fmt: str, card: dict[str, Any]) -> bytes:
    """Rewrite the exported file `path` with `card` inside it as JSON (ONNX metadata_props
    `CARD_KEY`, TorchScript extra file `CARD_EXTRA`); the model in it is left as it is.
    Returns the bytes written (the card's sha256 is theirs)."""
    text = json_text(card)
    data = path.read_bytes()
    if fmt == "torchscript":
        data = reproducible_archive(data, {CARD_EXTRA: text.encode()})
    else:
        model = _require_onnx().load_from_string(data)
        model.metadata_props.add(key=CARD_KEY, value=text)
        data = model.SerializeToString()
    write_bytes_synced(path, data)
    return data


def publish(tmp: Path, target: Path, staged: StagedFiles, done: Callable[[], None]) -> list[int]:
    """Rename the checked file `tmp` to `target`, then its card (`staged`) into place, and call
    `done`, with Ctrl-C and SIGTERM held over all three: a signal then can never leave the new file
    without its card, or beside the earlier export's card, nor come before the caller knows both
    are there. Returns the signals held (empty: none came)."""
    held: list[int] = []
    with on_signals(lambda signum, frame: held.append(int(signum)), signal.SIGINT, signal.SIGTERM):
        os.replace(tmp, target)
        staged.commit()
        done()
    return held
