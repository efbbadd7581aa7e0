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
--exported` scores a file through `prepare_evaluation`.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftkd_cli.files import read_regular_bytes, sha256_file
from sftkd_cli.errors import SftkdError

INPUT_NAMES = ("zf", "kspace", "mask")
OUTPUT_NAME = "image"
INSTALL_HINT = "pip install 'sftkd[export]'"


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
    return model_path.with_name(model_path.name + ".card.json")


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
            try:
                with warnings.catch_warnings():
                    # torch.jit is deprecated (a DeprecationWarning, from torch 2.14 a FutureWarning)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", FutureWarning)
                    self._module = torch.jit.load(str(self.path), map_location=self.device).eval()
            except Exception as exc:  # torch raises many kinds for foreign zip files
                raise SftkdError(f"{path}: not a TorchScript model ({type(exc).__name__})") from None
        else:
            ort = require_onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            try:
                self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
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


def prepare_evaluation(
    path: str | Path, run_path: Path, device: str | torch.device = "cpu",
    checkpoint: str | None = None, model_role: str | None = None,
) -> ExportedEvaluation:
    """Load an exported file for `evaluate_run`; parameter count and provenance come from its card."""
    if checkpoint is not None or model_role is not None:
        raise SftkdError(f"{path}: --checkpoint and --model do not apply to an exported model (its card records them)")
    if not Path(path).is_file():
        raise SftkdError(f"{path}: exported model file not found")
    card = read_card(path)
    if card is None or not card.get("role"):
        raise SftkdError(f"{path}: refused: no model card {card_path(Path(path)).name} beside it (or one without "
                         "a role), so what the file is cannot be told; expected the card `sftkd export` wrote with it")
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
    out_dir = run_path / f"eval-{model.path.stem}-{model.format}"
    return ExportedEvaluation(model, state, role, str(card.get("checkpoint") or "exported"), out_dir, fields)
