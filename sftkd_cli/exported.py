"""Exported model files (`sftkd export`) read back: a callable like the PyTorch model, and its card.

An exported file takes what a scanner gives and returns the reconstruction:

    inputs   zf      (B,1,H,W) float32  zero-filled image |IFFT(kspace)|
             kspace  (B,2,H,W) float32  undersampled k-space, channel 0 real, channel 1 imaginary
             mask    (B,1,H,W) float32  0/1 sampling mask (batch 1 broadcasts)
    output   image   (B,1,H,W) float32  the reconstruction

(a model trained on complex data: zf and image (B,2,H,W), channel 0 real, channel 1 imaginary).
ONNX files run in onnxruntime on the CPU and feed only the inputs the graph declares (a graph
without data consistency drops the unused kspace and mask); TorchScript files run in torch.
The model card beside the file (`<file>.card.json`) says what it is; `sftkd evaluate
--exported` scores a file through `prepare_evaluation`, which first refuses a file whose card
says it does not fit the data (as a checkpoint is refused) or belongs to another run.

A TorchScript file is code, not only weights: a crafted one can call any torch op, e.g.
aten::from_file, which creates and writes files. So before it runs, a TorchScript file is
checked: code that would run while loading (a `__setstate__`) is refused before torch.jit.load,
and after loading every node of every method and hook (inlined, nested blocks included) must be
one of `EXPORT_OPS`, the ops `sftkd export` itself writes. ONNX files run in onnxruntime, whose
operators do not touch files.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.checkpoints import checkpoint_digest, refuse_other_data
from sftkd_cli.choices import CHECKPOINT_NAMES
from sftkd_cli.data.dataset import record_acquisition
from sftkd_cli.files import display_path, read_regular_bytes, sha256_file
from sftkd_cli.errors import SftkdError
from sftkd_cli.run_files import CARD_SUFFIX, CHECKPOINT_DIGEST, EVAL_PREFIX

INPUT_NAMES = ("zf", "kspace", "mask")
OUTPUT_NAME = "image"
INSTALL_HINT = "pip install 'sftkd[export]'"

#: Every TorchScript node kind a file written by `sftkd export --format torchscript` holds (what
#: `check_export_ops` lets run). Derived (torch 2.13) by exporting each family with its own
#: wrapper and writer (`Family.exportable`, `export.write_torchscript`): DnCm and ULCm of several
#: sizes with pad 5, 1 and 0 for magnitude and complex images, corner and centred k-space, and
#: VDSRn; even and odd image sizes, batch 1 and 2, mask batch 1 and B; then listing the node
#: kinds of every method and hook of the loaded file. tests/test_exported_ops.py exports every
#: variant again and fails when one holds a kind missing here: a model change that adds an op
#: must add it here (after checking that the op reads and writes no files), so that the test
#: fails loudly instead of users' own exports being refused.
EXPORT_OPS: frozenset[str] = frozenset({
    "aten::Int", "aten::_convolution", "aten::add", "aten::cat", "aten::complex", "aten::contiguous",
    "aten::fft_fft2", "aten::fft_fftshift", "aten::fft_ifft2", "aten::fft_ifftshift", "aten::imag",
    "aten::max_pool2d", "aten::ne", "aten::neg", "aten::pad", "aten::real", "aten::relu", "aten::relu_",
    "aten::remainder", "aten::size", "aten::slice", "aten::sub", "aten::to", "aten::where",
    "prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::NumToTensor",
})
#: the end of every refusal of a TorchScript file
UNTRUSTED = "only load exported models you trust"
#: the method TorchScript runs while loading a file (on unpickling a module or object that has it)
LOAD_TIME_METHOD = b"__setstate__"


def split_complex(kspace: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) complex -> (B,2,H,W) float32 [real, imaginary]; a (B,2,H,W) real tensor passes."""
    if torch.is_complex(kspace):
        return torch.cat([kspace.real, kspace.imag], dim=1).float()
    if kspace.dim() != 4 or kspace.shape[1] != 2:
        raise SftkdError(f"kspace shape {tuple(kspace.shape)}: expected (B,1,H,W) complex or (B,2,H,W) real/imaginary")
    return kspace.float()


def require_onnxruntime() -> Any:
    """The onnxruntime module, or a one-line error naming the install extra."""
    try:
        import onnxruntime
    except ImportError:
        raise SftkdError(f"onnxruntime: not installed; ONNX export needs the extra: {INSTALL_HINT}") from None
    return onnxruntime


def read_card(model_path: str | Path) -> dict[str, Any] | None:
    """The model card of an exported file (`<file>.card.json` beside it, or beside the file a
    symlink points to, where `sftkd export` writes it), or None when there is none.

    Only a regular file of bounded size is read (a FIFO or /dev/zero link is refused). A card that
    records its file's sha256 and does not match it (a card left beside another file, say by an
    export stopped between writing the two) is refused."""
    model = Path(os.path.realpath(model_path))
    path = card_path(model)
    if not path.exists() and not path.is_symlink():
        return None
    card = load_card(path)
    if card is None:
        return None
    if card.get("sha256") and model.is_file() and sha256_file(model) != card["sha256"]:
        raise SftkdError(f"{path}: this card describes another file than {model_path} (sha256 differs); "
                         "export the model again")
    return card


def load_card(path: Path) -> dict[str, Any] | None:
    """The JSON object in a model card file, None when it holds another JSON value; one-line
    errors for a file that is not a bounded regular file of JSON."""
    try:
        card = json.loads(read_regular_bytes(path, "model card"))
    except ValueError:
        raise SftkdError(f"{path}: unreadable model card; expected JSON written by `sftkd export`") from None
    return card if isinstance(card, dict) else None


def card_path(model_path: Path) -> Path:
    """Where the model card of an exported file lies: `<file>.card.json` beside it."""
    return model_path.with_name(model_path.name + CARD_SUFFIX)


class ExportedModel:
    """An exported file as a callable `model(zf, kspace, mask) -> (B,C,H,W) tensor`, like the PyTorch model.

    `kspace` may be complex (B,1,H,W) (as SliceDataset gives it) or (B,2,H,W) real/imaginary.
    ONNX files run in onnxruntime on the CPU (`threads` intra-op threads); TorchScript files run
    with torch on `device`. The result is returned on the device of `zf`.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SftkdError(f"{path}: exported model file not found")
        self.card = read_card(self.path)
        self.format = "torchscript" if zipfile.is_zipfile(self.path) else "onnx"
        self.device = torch.device(device) if self.format == "torchscript" else torch.device("cpu")
        self._module: Any = None
        self._session: Any = None
        if self.format == "torchscript":
            check_no_load_time_code(self.path)
            try:
                with warnings.catch_warnings():
                    # torch.jit is deprecated (a DeprecationWarning, from torch 2.14 a FutureWarning)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                    # read through Python's file object: torch's own path handling refuses a name
                    # that is not UTF-8 (TypeError), which Linux allows
                    with open(self.path, "rb") as handle:
                        self._module = torch.jit.load(handle, map_location=self.device).eval()
            except Exception as exc:  # torch raises many kinds for foreign zip files
                raise SftkdError(f"{path}: not a TorchScript model ({type(exc).__name__})") from None
            check_export_ops(self._module, self.path)
        else:
            ort = require_onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            try:
                # the file's bytes, not its name: onnxruntime, like torch, refuses a name that is not UTF-8
                self._session = ort.InferenceSession(self.path.read_bytes(), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types
                raise SftkdError(f"{path}: not an ONNX or TorchScript model ({type(exc).__name__})") from None
        self.image_size = self._fixed_size()

    def _fixed_size(self) -> tuple[int, int] | None:
        if self._session is None:
            return None
        dims = self._session.get_inputs()[0].shape[-2:]
        return (int(dims[0]), int(dims[1])) if all(isinstance(d, int) for d in dims) else None

    @property
    def name(self) -> str:
        """Architecture from the model card (e.g. D3C5), else the file name."""
        return str((self.card or {}).get("architecture", {}).get("name") or self.path.name)

    @property
    def params(self) -> int | None:
        """Parameter count from the model card (the exported file does not say)."""
        value = (self.card or {}).get("params")
        return int(value) if isinstance(value, int) else None

    def __call__(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        k2 = split_complex(kspace)
        if self.image_size is not None and tuple(zf.shape[-2:]) != self.image_size:
            raise SftkdError(
                f"{self.path}: exported for images {self.image_size[0]}x{self.image_size[1]}, "
                f"got {zf.shape[-2]}x{zf.shape[-1]}"
            )
        if self._module is not None:
            with torch.no_grad():
                out = self._module(zf.float().to(self.device), k2.to(self.device), mask.float().to(self.device))
            return out.to(zf.device)
        declared = {i.name for i in self._session.get_inputs()}  # a VDSR graph has only zf
        feeds = {
            name: np.ascontiguousarray(t.detach().float().cpu().numpy())
            for name, t in zip(INPUT_NAMES, (zf, k2, mask)) if name in declared
        }
        (out,) = self._session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(out).to(zf.device)


def check_no_load_time_code(path: Path) -> None:
    """Refuse a TorchScript archive with a `__setstate__` anywhere in it, before it is loaded:
    torch.jit.load runs that method, so no check after loading could stop it. Every entry is
    read decompressed, and the raw file too (an entry only another zip reader would see)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()  # duplicate names included
            found = any(_mentions(archive.open(entry), LOAD_TIME_METHOD) for entry in entries)
        with open(path, "rb") as raw:
            found = found or _mentions(raw, LOAD_TIME_METHOD)
    except (OSError, zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, RuntimeError, ValueError) as exc:
        # a foreign or encrypted zip file (RuntimeError: a password is needed)
        raise SftkdError(f"{path}: not a TorchScript model ({type(exc).__name__})") from None
    if found:
        raise SftkdError(f"{path}: refused: TorchScript code that runs while loading (__setstate__) is not "
                         f"something sftkd export writes; {UNTRUSTED}")


def _mentions(stream: Any, marker: bytes, chunk: int = 1 << 20) -> bool:
    """Whether `marker` occurs in a binary stream, read in bounded chunks (a zip bomb never fills memory)."""
    tail = b""
    with stream:
        while block := stream.read(chunk):
            if marker in tail + block:
                return True
            tail = block[-(len(marker) - 1):]
    return False


def check_export_ops(module: Any, path: Path) -> None:
    """Refuse a loaded TorchScript module that could do more than an `sftkd export` file, before
    it runs: one line naming the first node kind outside `EXPORT_OPS` (e.g. aten::from_file),
    found in any method or forward (pre-)hook of the module or its submodules."""
    for sub in module.modules():
        functions = [(name, sub._c._get_method(name)) for name in sub._c._method_names()]
        functions += [(hook.name, hook) for hook in [*sub._c._get_forward_pre_hooks(), *sub._c._get_forward_hooks()]]
        for name, function in functions:
            for kind in node_kinds(function.inlined_graph):
                if kind not in EXPORT_OPS:
                    raise SftkdError(f"{path}: refused: TorchScript op {kind} (in {name}) is not one sftkd export "
                                     f"writes; {UNTRUSTED}")


def node_kinds(graph: torch.Graph) -> Iterator[str]:
    """The kind of every node of a TorchScript graph in order, the nodes inside prim::If and
    prim::Loop blocks included (no recursion: a crafted deep nesting cannot overflow the stack)."""
    pending = list(reversed(list(graph.nodes())))
    while pending:
        node = pending.pop()
        yield node.kind()
        for block in reversed(list(node.blocks())):
            pending.extend(reversed(list(block.nodes())))


def load_exported(path: str | Path, device: str | torch.device = "cpu", threads: int | None = None) -> ExportedModel:
    """Load an exported TorchScript or ONNX file as a callable (zf, kspace, mask) -> image."""
    return ExportedModel(path, device, threads)


@dataclass
class ExportedEvaluation:
    """What `evaluate_run` needs to score an exported file instead of a checkpoint."""

    model: ExportedModel
    state: dict[str, Any]  # checkpoint-like metadata from the card: role, primary, epoch, init, teacher_role
    role: str  # the exported model's entry in its run (model, teacher, student)
    checkpoint: str  # the checkpoint it was exported from (best, last)
    out_dir: Path  # RUN/eval-<file stem>-<format>/, so the run's own metrics.json is kept
    fields: dict[str, Any]  # extra metrics.json fields: the run label and the exported file


def card_task(card: dict[str, Any]) -> str | None:
    """The task an exported model was trained for: the card's `task`, or on a card of an earlier
    sftkd, what its mask's kind says (sr-box: super-resolution); None when the card cannot tell."""
    if card.get("task") is not None:
        return str(card["task"])
    kind = _mapping(card.get("mask")).get("kind")
    return None if kind is None else "sr" if kind == "sr-box" else "recon"


def card_acquisition(card: dict[str, Any], have: Acquisition, where: str) -> Acquisition:
    """The acquisition the model of a card was built for. Its architecture record names the values
    and image channels of complex models only (magnitude, 1 otherwise); what a card of an earlier
    sftkd does not record is taken from `have`, the data's, so that check passes."""
    arch = _mapping(card.get("architecture"))
    recorded = {"task": card_task(card), "kspace_layout": card.get("kspace_layout"),
                "values": arch.get("values", "magnitude"), "channels": arch.get("image_channels", 1)}
    return Acquisition.from_record({**have.record(), **{k: v for k, v in recorded.items() if v is not None}}, where)


def check_card_fits(card: dict[str, Any], path: str | Path, data: dict[str, Any], run_path: Path) -> None:
    """Refuse, in one line, an exported file used on data its model does not fit (`data`, the
    dataset record scored: the checks a checkpoint gets, `refuse_other_data`, and the acceleration
    it was trained at), or one exported from another run than `run_path`: its scores would be
    filed and labelled as that run's. A field a card of an earlier sftkd lacks is not checked."""
    _check_owner(card, Path(path), run_path)  # first: another run's model is not a data mismatch
    have = record_acquisition(data)
    name = _mapping(card.get("architecture")).get("name")
    if isinstance(name, str):
        model = card_acquisition(card, have, f"{path}: model card")
        refuse_other_data(name, model, have, path, data.get("path", "the dataset"))
    recorded, scored = card.get("acceleration"), data.get("acceleration")
    if isinstance(recorded, (int, float)) and scored is not None and float(recorded) != float(scored):
        what = "scale" if have.task == "sr" else "acceleration"
        raise SftkdError(f"{path}: exported from a model trained at {what} {recorded:g}x, but this evaluation "
                         f"scores {what} {scored:g}x (data.acceleration of {display_path(run_path)}); "
                         f"use an export of a model trained at {scored:g}x")


def _check_owner(card: dict[str, Any], path: Path, run_path: Path) -> None:
    """Refuse a file exported from another run than `run_path` (`_belongs_to`), naming the run its
    card records, and the command to score it there only where that run still is."""
    owner = card.get("run_path")
    if not isinstance(owner, str) or _belongs_to(card, owner, run_path):
        return
    there = Path(owner).is_absolute() and Path(owner).is_dir()
    where = (f"evaluate it with its own run: sftkd evaluate {display_path(owner)} --exported {path}" if there else
             f"that run is no longer at {display_path(owner)}" if Path(owner).is_absolute() else
             "that run was recorded relative to where it was exported")
    raise SftkdError(f"{path}: exported from run {display_path(owner)}, not {display_path(run_path)}, so its "
                     f"scores would be filed as this run's; {where}")


def _mapping(value: Any) -> dict[str, Any]:
    """A card's sub-record, or {} where a card holds none (or no mapping there)."""
    return value if isinstance(value, dict) else {}


def _belongs_to(card: dict[str, Any], owner: str, run_path: Path) -> bool:
    """Whether an exported file whose card names run `owner` (its run_path) is run `run_path`'s:
    the checkpoint it was exported from is one of the run's (best.pt, last.pt, byte for byte), or
    the card's absolute run_path is the run's folder. Else (the run trained further since, or moved)
    it is another run's while the recorded folder is still there; if that is gone, or the path is a
    relative one of an earlier sftkd, the run's folder name must be the card's `run`."""
    run = os.path.realpath(run_path)
    absolute = Path(owner).is_absolute()
    if absolute and os.path.realpath(owner) == run:  # the cheap test first: no checkpoint is hashed
        return True
    digest = card.get(CHECKPOINT_DIGEST)
    if isinstance(digest, str) and digest in {checkpoint_digest(run_path, which) for which in CHECKPOINT_NAMES}:
        return True
    if absolute and Path(owner).is_dir():
        return False
    return card.get("run") == Path(run).name


def prepare_evaluation(
    path: str | Path, run_path: Path, device: str | torch.device = "cpu",
    checkpoint: str | None = None, model_role: str | None = None, data: dict[str, Any] | None = None,
) -> ExportedEvaluation:
    """Load an exported file for `evaluate_run`; parameter count and provenance come from its card.
    With `data` (the dataset record scored), a file that does not fit it, or of another run, is
    refused first (`check_card_fits`)."""
    if checkpoint is not None or model_role is not None:
        raise SftkdError(f"{path}: --checkpoint and --model do not apply to an exported model (its card records them)")
    if not Path(path).is_file():
        raise SftkdError(f"{path}: exported model file not found")
    card = read_card(path)
    if card is None or not card.get("role"):
        raise SftkdError(f"{path}: refused: no model card {card_path(Path(path)).name} beside it (or one without "
                         "a role), so what the file is cannot be told; expected the card `sftkd export` wrote with it")
    if data is not None:
        check_card_fits(card, path, data, run_path)
    model = load_exported(path, device)
    role = str(card.get("role") or "model")
    state = {
        "role": card.get("run_role"), "primary": card.get("primary") or role, "epoch": card.get("epoch"),
        "init": card.get("init"), "teacher_role": card.get("teacher_role"),
        "trained_on": {"fingerprint": (card.get("dataset") or {}).get("fingerprint")},
    }
    label = run_path.name if role == state["primary"] else f"{run_path.name}-{role}"
    runtime = "torch.jit" if model.format == "torchscript" else "onnxruntime (CPUExecutionProvider)"
    fields = {
        "run": f"{label}-{model.format}",
        "exported": {"file": str(model.path), "format": model.format, "runtime": runtime,
                     "card": str(card_path(model.path)) if model.card is not None else None},
    }
    out_dir = run_path / f"{EVAL_PREFIX}{model.path.stem}-{model.format}"
    return ExportedEvaluation(model, state, role, str(card.get("checkpoint") or "exported"), out_dir, fields)
