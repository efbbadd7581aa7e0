"""`sftkd export`: a trained DnCm as a self-contained TorchScript or ONNX file, with a model card.

The exported graph contains the data-consistency layers, so it needs only what a scanner gives:

    inputs   zf      (B,1,H,W) float32  zero-filled image |IFFT(kspace)|
             kspace  (B,2,H,W) float32  undersampled k-space, channel 0 real, channel 1 imaginary;
                                        orthonormal 2-D FFT, corner layout (no fftshift) unless
                                        the model was trained centred
             mask    (B,1,H,W) float32  0/1 sampling mask (batch 1 broadcasts)
    output   image   (B,1,H,W) float32  the reconstruction

A VDSR (super-resolution) model has no data consistency: its graph is the plain CNN, zf is the
interpolated low-resolution image; kspace and mask are accepted but unused (TorchScript), or
absent from the graph (ONNX drops unused inputs; `ExportedModel` feeds what the file declares).

The batch is dynamic in both formats. torch.fft does not export to ONNX, so the ONNX graph
computes the orthonormal DFT as matrix products with fixed DFT matrices (`MatmulDFT`): the
image size is fixed there. The TorchScript file keeps torch.fft (exact, any image size).

Every export checks itself: the written file is loaded back (torch.jit.load / onnxruntime),
run on real slices of the run's dataset (or a synthetic phantom when the dataset is missing)
and compared with the PyTorch model. The file appears only when the check passes.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sftkd_cli import __version__
from sftkd_cli.checkpoints import load_model
from sftkd_cli.choices import MAX_SIZE
from sftkd_cli.data.files import check_writable, read_regular_bytes, temporary_sibling, unlink_quietly, write_bytes_synced
from sftkd_cli.errors import SftkdError, os_error_text
from sftkd_cli.models import DCCNN, DCUNet, count_parameters
from sftkd_cli.models.vdsr import VDSR
from sftkd_cli.mri.dc import data_consistency
from sftkd_cli.runs import atomic_write_text, is_special_file, make_folder, open_run, output_path

#: export format -> default file suffix
FORMATS: dict[str, str] = {"torchscript": ".ts", "onnx": ".onnx"}
#: largest allowed |exported - PyTorch| on the check slices
TOLERANCE = 1e-4
ONNX_OPSET = 17
CARD_FORMAT = 1
INPUT_NAMES = ("zf", "kspace", "mask")
OUTPUT_NAME = "image"
INSTALL_HINT = "pip install 'sftkd[export]'"


# --------------------------------------------------------------------------- matmul DFT


def dft_matrix(n: int, inverse: bool = False, centered: bool = False) -> np.ndarray:
    """The orthonormal n-point DFT matrix (complex128): `M @ x` is the FFT of `x` along axis 0.

    Entries exp(-+2 pi i j k / n) / sqrt(n), with j*k reduced modulo n for accuracy. The inverse
    is the conjugate transpose. `centered` folds ifftshift (before) and fftshift (after) into it.
    """
    index = np.arange(n)
    phase = np.outer(index, index) % n
    sign = 1.0 if inverse else -1.0
    matrix = np.exp(sign * 2j * np.pi * phase / n) / math.sqrt(n)
    if centered:
        matrix = np.fft.fftshift(matrix @ np.fft.ifftshift(np.eye(n), axes=0), axes=0)
    return matrix


class MatmulDFT(nn.Module):
    """Orthonormal 2-D DFT of the last two axes as real matrix products (exports to ONNX MatMul).

    FFT(x) = F_H x F_W^T with F = Fr + i Fi; the inverse uses the conjugate matrices. Complex
    tensors are carried as (real, imaginary) pairs of float32 tensors.
    """

    def __init__(self, height: int, width: int, centered: bool = False) -> None:
        super().__init__()
        self.size = (height, width)
        for name, n, inverse, transpose in (
            ("h", height, False, False), ("w", width, False, True),
            ("ih", height, True, False), ("iw", width, True, True),
        ):
            m = dft_matrix(n, inverse, centered)
            m = m.T if transpose else m
            self.register_buffer(f"{name}_re", torch.tensor(m.real, dtype=torch.float32))
            self.register_buffer(f"{name}_im", torch.tensor(m.imag, dtype=torch.float32))

    def forward_real(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FFT of a real image: F_H x F_W^T as (real, imaginary)."""
        tr, ti = self.h_re @ x, self.h_im @ x
        return tr @ self.w_re - ti @ self.w_im, tr @ self.w_im + ti @ self.w_re

    def inverse_real(self, kr: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        """Real part of the inverse FFT of (kr + i ki)."""
        ur = self.ih_re @ kr - self.ih_im @ ki
        ui = self.ih_re @ ki + self.ih_im @ kr
        return ur @ self.iw_re - ui @ self.iw_im

    def forward(self, xr: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FFT of a complex image (xr + i xi) as (real, imaginary)."""
        tr = self.h_re @ xr - self.h_im @ xi
        ti = self.h_re @ xi + self.h_im @ xr
        return tr @ self.w_re - ti @ self.w_im, tr @ self.w_im + ti @ self.w_re

    def inverse(self, kr: torch.Tensor, ki: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse FFT of (kr + i ki) as (real, imaginary)."""
        ur = self.ih_re @ kr - self.ih_im @ ki
        ui = self.ih_re @ ki + self.ih_im @ kr
        return ur @ self.iw_re - ui @ self.iw_im, ur @ self.iw_im + ui @ self.iw_re


# --------------------------------------------------------------------------- exportable model


class ExportableDCCNN(nn.Module):
    """A trained DCCNN with a traceable interface: forward(zf, kspace (B,2,H,W) real, mask).

    It reuses the model's conv blocks (same weights, same modules) and replaces only the
    data consistency: `dft="matmul"` uses `MatmulDFT` for a fixed `image_size` (ONNX),
    `dft="fft"` the library's torch.fft data consistency (TorchScript, any size).
    """

    def __init__(self, model: DCCNN, image_size: tuple[int, int] | None = None, dft: str = "matmul") -> None:
        super().__init__()
        if dft not in ("matmul", "fft"):
            raise SftkdError(f"dft {dft!r}: expected matmul or fft")
        if dft == "matmul" and image_size is None:
            raise SftkdError("image size: the matmul DFT needs a fixed image size (H, W)")
        self.blocks = model.blocks
        self.centered = bool(model.dc.centered)
        self.dft_kind = dft
        self.image_size = tuple(image_size) if image_size is not None else None
        self.dft = MatmulDFT(*image_size, centered=self.centered) if dft == "matmul" else None

    def data_consistency(self, x: torch.Tensor, kspace: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
        """real(IFFT(where(mask, kspace, FFT(x)))), with k-space as (B,2,H,W) real/imaginary."""
        kr, ki = kspace[:, 0:1], kspace[:, 1:2]
        if self.dft is None:
            return data_consistency(x, torch.complex(kr, ki), sampled, self.centered)
        xr, xi = self.dft.forward_real(x)
        return self.dft.inverse_real(torch.where(sampled, kr, xr), torch.where(sampled, ki, xi))

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        sampled = mask != 0
        x = zf
        for block in self.blocks:
            x = self.data_consistency(block(x), kspace, sampled)
        return x


class ExportableVDSR(nn.Module):
    """A trained VDSR behind the export interface forward(zf, kspace, mask): kspace and mask are unused."""

    def __init__(self, model: VDSR) -> None:
        super().__init__()
        self.model = model
        self.centered = False

    def forward(self, zf: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(zf, kspace, mask)


def exportable(model: nn.Module, image_size: tuple[int, int], fixed: bool) -> nn.Module:
    """The traceable wrapper of a model: VDSR as it is, DC-CNN with its DFT for the format."""
    if isinstance(model, VDSR):
        return ExportableVDSR(model)
    return ExportableDCCNN(model, image_size, "matmul" if fixed else "fft")  # type: ignore[arg-type]


def _architecture(model: nn.Module, fixed: bool) -> dict[str, Any]:
    """The model card's architecture section."""
    if isinstance(model, VDSR):
        return {"name": model.name, "layers": model.layers, "cascades": model.cascades, "channels": model.channels,
                "kernel": 3, "residual": "output = zf + CNN(zf) (global residual)",
                "data_consistency": "none (super-resolution): kspace and mask are unused inputs", "dft": "none"}
    depth = {"levels": model.levels} if isinstance(model, DCUNet) else {"layers": model.layers}  # U-Net blocks: levels
    return {"name": model.name, **depth, "cascades": model.cascades,
            "channels": model.channels, "pad": model.blocks[0].pad, "kernel": 3,
            "data_consistency": "hard, after every block: real(IFFT(where(mask, kspace, FFT(x)))), orthonormal",
            "dft": "matrix products with fixed DFT matrices" if fixed else "torch.fft"}


def split_complex(kspace: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) complex -> (B,2,H,W) float32 [real, imaginary]; a (B,2,H,W) real tensor passes."""
    if torch.is_complex(kspace):
        return torch.cat([kspace.real, kspace.imag], dim=1).float()
    if kspace.dim() != 4 or kspace.shape[1] != 2:
        raise SftkdError(f"kspace shape {tuple(kspace.shape)}: expected (B,1,H,W) complex or (B,2,H,W) real/imaginary")
    return kspace.float()


# --------------------------------------------------------------------------- loading exported files


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise SftkdError(f"onnxruntime: not installed; ONNX export needs the extra: {INSTALL_HINT}") from None
    return onnxruntime


def read_card(model_path: str | Path) -> dict[str, Any] | None:
    """The model card beside an exported file (`<file>.card.json`), or None when there is none.

    Only a regular file of bounded size is read (a FIFO or /dev/zero link is refused)."""
    path = card_path(Path(model_path))
    if not path.exists() and not path.is_symlink():
        return None
    try:
        card = json.loads(read_regular_bytes(path, "model card"))
    except ValueError:
        raise SftkdError(f"{path}: unreadable model card; expected JSON written by `sftkd export`") from None
    return card if isinstance(card, dict) else None


def card_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".card.json")


class ExportedModel:
    """An exported file as a callable `model(zf, kspace, mask) -> (B,1,H,W) tensor`, like a DCCNN.

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
                    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
                    self._module = torch.jit.load(str(self.path), map_location=self.device).eval()
            except Exception as exc:  # torch raises many kinds for foreign zip files
                raise SftkdError(f"{path}: not a TorchScript model ({type(exc).__name__})") from None
        else:
            ort = _onnxruntime()
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


# --------------------------------------------------------------------------- writing


def write_torchscript(wrapper: ExportableDCCNN, example: tuple[torch.Tensor, ...], path: Path) -> str:
    """Write `wrapper` as a TorchScript trace (any batch and size); returns how, for the model card."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        # serialised in memory, then plain writes: a full disk or a file-size limit is an OSError,
        # not an exception inside torch's C++ file writer (which can abort the process)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    write_bytes_synced(path, buffer.getvalue())
    return f"torch.jit.trace (torch {torch.__version__})"


def write_onnx(wrapper: ExportableDCCNN, example: tuple[torch.Tensor, ...], path: Path) -> str:
    """Write `wrapper` as ONNX (dynamic batch); returns how it was exported, for the model card."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise SftkdError(f"onnx: not installed; ONNX export needs the extra: {INSTALL_HINT}") from None
    _onnxruntime()
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


# --------------------------------------------------------------------------- check inputs


@dataclass
class CheckInputs:
    """Slices the export is verified on: zf, complex kspace, mask as (B,1,H,W) batches."""

    zf: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    source: str


def phantom_inputs(size: tuple[int, int], mask: np.ndarray, batch: int = 3) -> CheckInputs:
    """Synthetic smooth phantoms (ellipses with a gradient) undersampled by `mask`."""
    h, w = size
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    images = []
    for i in range(batch):
        outer = (x / (0.8 - 0.1 * i)) ** 2 + (y / 0.7) ** 2 <= 1.0
        inner = ((x - 0.2 * i) / 0.3) ** 2 + (y / 0.25) ** 2 <= 1.0
        image = outer * (0.5 + 0.2 * x) + inner * 0.4
        images.append(image / image.max())
    target = torch.tensor(np.stack(images)[:, None], dtype=torch.float32)
    m = torch.tensor(mask, dtype=torch.float32).expand(batch, 1, h, w).contiguous()
    kspace = torch.fft.fft2(target, norm="ortho") * m
    zf = torch.fft.ifft2(kspace, norm="ortho").abs().float()
    source = f"synthetic phantom {h}x{w} (batch {batch}; no val slices of this size in the dataset)"
    return CheckInputs(zf, kspace.to(torch.complex64), m, source)


def dataset_inputs(path: str | Path, acceleration: float, size: tuple[int, int], batch: int = 3) -> CheckInputs | None:
    """Up to `batch` real slices of the dataset's val split, or None when unavailable/mismatched."""
    from sftkd_cli.data.dataset import SliceDataset

    try:
        dataset = SliceDataset(path, "val", acceleration)
        if len(dataset) == 0:
            return None
        items = [dataset[i] for i in range(min(batch, len(dataset)))]
    except SftkdError:
        return None
    if tuple(items[0]["zf"].shape[-2:]) != tuple(size):
        return None
    stack = lambda key: torch.stack([item[key] for item in items])  # noqa: E731
    names = ", ".join(f"{item['volume']}/{item['slice']}" for item in items)
    return CheckInputs(stack("zf"), stack("kspace"), stack("mask"), f"dataset {path} val slices {names}")


def max_difference(exported: ExportedModel, reference: nn.Module, inputs: CheckInputs) -> float:
    """Largest |exported - reference| over batch 1 (first slice) and the whole batch."""
    worst = 0.0
    with torch.no_grad():
        for n in sorted({1, len(inputs.zf)}):
            zf, kspace, mask = inputs.zf[:n], inputs.kspace[:n], inputs.mask[:n]
            expected = reference(zf, kspace, mask)
            got = exported(zf, kspace, mask)
            if got.shape != expected.shape:
                raise SftkdError(f"{exported.path}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
            worst = max(worst, float((got - expected).abs().max()))
    return worst


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """A verified export: the file, its model card and the measured difference from PyTorch."""

    path: Path
    card_path: Path
    max_abs_diff: float
    card: dict[str, Any]


def _manifest(data_path: str | Path) -> dict[str, Any] | None:
    from sftkd_cli.data.dataset import load_manifest

    try:
        return load_manifest(data_path)
    except SftkdError:
        return None


def resolve_size(size: tuple[int, int] | None, manifest: dict[str, Any] | None, data_path: str | Path) -> tuple[int, int]:
    """--size wins; else the dataset manifest's image_size."""
    if size is not None:
        if len(size) != 2 or min(size) < 1 or max(size) > MAX_SIZE:
            raise SftkdError(f"--size {size}: expected two integers H W from 1 to {MAX_SIZE}")
        return int(size[0]), int(size[1])
    if manifest is None:
        raise SftkdError(f"{data_path}: dataset not found, so the image size is unknown; pass --size H W")
    return int(manifest["image_size"][0]), int(manifest["image_size"][1])


def _dataset_mask(data_path: str | Path, manifest: dict[str, Any] | None, acceleration: float) -> tuple[np.ndarray | None, str | None]:
    """The dataset's fixed mask for this acceleration and its file path (None when unavailable)."""
    if manifest is None:
        return None, None
    from sftkd_cli.data.prepare import group_key

    key = group_key(str(manifest.get("task", "recon")), acceleration)
    relative = manifest.get("mask", {}).get("files", {}).get(key)
    if not relative:
        return None, None
    path = Path(data_path) / relative
    try:
        return np.load(path).astype(np.float32), str(path.resolve())
    except (OSError, ValueError):
        return None, str(path.resolve())


def _check_mask(size: tuple[int, int], acceleration: float, manifest: dict[str, Any] | None, mask: np.ndarray | None) -> np.ndarray:
    """A mask for the phantom check: the dataset's when it fits, else a generated one."""
    from sftkd_cli.data.prepare import sr_box_mask
    from sftkd_cli.mri.masks import make_mask

    if mask is not None and tuple(mask.shape) == tuple(size):
        return mask
    info = (manifest or {}).get("mask", {})
    layout = info.get("layout", "corner")
    if (manifest or {}).get("task") == "sr":
        return sr_box_mask(size, acceleration, layout)
    return make_mask(info.get("kind", "random"), size, acceleration, seed=int(info.get("seed", 42)), layout=layout)


def _last_metrics(run_path: Path) -> dict[str, Any] | None:
    """The run's last evaluation (metrics.json), summarised for the card; None when absent."""
    path = run_path / "metrics.json"
    if not path.exists():
        return None
    try:
        info = json.loads(read_regular_bytes(path, "metrics.json"))  # a FIFO or /dev/zero is never read
    except (SftkdError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    return {
        "file": str(path),
        "model": info.get("model"),
        "role": info.get("role"),
        "checkpoint": info.get("checkpoint"),
        "split": (info.get("dataset") or {}).get("split"),
        "acceleration": (info.get("dataset") or {}).get("acceleration"),
        "latency_ms_per_slice": info.get("latency_ms_per_slice"),
        "metrics": info.get("metrics"),
        "zero_filled": info.get("zero_filled"),
    }


def _mask_card(manifest: dict[str, Any] | None, acceleration: float, mask: np.ndarray | None, mask_file: str | None) -> dict[str, Any]:
    info = dict((manifest or {}).get("mask", {}))
    card: dict[str, Any] = {
        "kind": info.get("kind"), "seed": info.get("seed"), "layout": info.get("layout"),
        "axis": info.get("axis"), "center_fraction": info.get("center_fraction"), "file": mask_file,
    }
    if mask is not None:
        rows = np.flatnonzero(mask.any(axis=1))
        card.update({
            "shape": list(mask.shape),
            "sampled_rows": [int(r) for r in rows],
            "lines": int(len(rows)),
            "sampled_fraction": round(float(mask.mean()), 6),
            "whole_rows": bool(np.all(mask[rows] == 1)) if len(rows) else True,
        })
    return card


def _io_spec(size: tuple[int, int], fixed: bool, centered: bool, sr: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    h, w = (size[0], size[1]) if fixed else ("H", "W")
    if sr:  # ONNX drops the unused inputs; TorchScript keeps the three-input signature
        unused = "unused by this super-resolution model (any values; kept for one interface)"
        zf = {"name": "zf", "shape": ["batch", 1, h, w], "dtype": "float32",
              "description": "low-resolution image interpolated to full size (|IFFT| of the zero-padded central "
                             "k-space box), as in the training data"}
        return [zf] + ([] if fixed else [
            {"name": "kspace", "shape": ["batch", 2, h, w], "dtype": "float32", "description": unused},
            {"name": "mask", "shape": ["mask_batch", 1, h, w], "dtype": "float32", "description": unused},
        ]), [{"name": OUTPUT_NAME, "shape": ["batch", 1, h, w], "dtype": "float32",
             "description": "super-resolved image: zf + the CNN's residual"}]
    layout = "centred (fftshift)" if centered else "corner (no fftshift, low frequencies at the corners)"
    inputs = [
        {"name": "zf", "shape": ["batch", 1, h, w], "dtype": "float32",
         "description": "zero-filled image |IFFT(kspace)| (orthonormal), as in the training data"},
        {"name": "kspace", "shape": ["batch", 2, h, w], "dtype": "float32",
         "description": f"undersampled k-space, channel 0 real, channel 1 imaginary; orthonormal 2-D FFT of the image, {layout}; unsampled entries 0"},
        {"name": "mask", "shape": ["mask_batch", 1, h, w], "dtype": "float32",
         "description": "sampling mask, 1 = sampled (any non-zero counts as sampled); mask_batch is the batch or 1"},
    ]
    outputs = [{"name": OUTPUT_NAME, "shape": ["batch", 1, h, w], "dtype": "float32",
                "description": "reconstructed image (real), after the last data-consistency layer"}]
    return inputs, outputs


def default_out(run_path: Path, arch: str, role: str, fmt: str) -> Path:
    """RUN/export/<arch>-<role>.<ext>, e.g. runs/x/export/D3C5-student.onnx."""
    return run_path / "export" / f"{arch}-{role}{FORMATS[fmt]}"


def export_run(
    run_dir: str | Path,
    fmt: str,
    *,
    out: str | Path | None = None,
    role: str | None = None,
    checkpoint: str = "best",
    size: tuple[int, int] | None = None,
) -> ExportResult:
    """Export a run's model as TorchScript or ONNX with a model card; verified before it is kept."""
    if fmt not in FORMATS:
        raise SftkdError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if checkpoint not in ("best", "last"):
        raise SftkdError(f"--checkpoint {checkpoint!r}: expected best or last")
    if fmt == "onnx":
        _onnxruntime()
    run = open_run(run_dir)
    recipe = run.load_recipe()
    model, state = load_model(run.path, role, checkpoint)
    model = model.eval()
    entry_role = role or state["primary"]
    data_path = recipe.data.path
    acceleration = float(recipe.data.acceleration)
    manifest = _manifest(data_path)
    image_size = resolve_size(size, manifest, data_path)
    mask, mask_file = _dataset_mask(data_path, manifest, acceleration)
    inputs = dataset_inputs(data_path, acceleration, image_size) if manifest is not None else None
    if inputs is None:
        inputs = phantom_inputs(image_size, _check_mask(image_size, acceleration, manifest, mask))

    fixed = fmt == "onnx"
    wrapper = exportable(model, image_size, fixed).eval()
    example = (inputs.zf[:2], split_complex(inputs.kspace[:2]), inputs.mask[:2])
    target = Path(out) if out is not None else default_out(run.path, model.name, entry_role, fmt)
    if target.is_dir():
        raise SftkdError(f"--out {target}: is a directory; expected a file name")
    make_folder(target.parent)
    check_writable(target.parent, "--out")  # before tracing and checking, not after
    target = output_path(target)  # through a symlink: its target is replaced, the link kept
    if is_special_file(target) or is_special_file(card_path(target)):
        raise SftkdError(f"--out {out}: a device file or FIFO; expected a regular file (the model and its card)")
    tmp = temporary_sibling(target)
    try:
        with torch.no_grad():
            exporter = (write_onnx if fixed else write_torchscript)(wrapper, example, tmp)
        diff = max_difference(load_exported(tmp), model, inputs)
        if not diff <= TOLERANCE:
            raise SftkdError(
                f"{target}: exported model differs from the PyTorch model by {diff:.3g} "
                f"(tolerance {TOLERANCE:g}); nothing written"
            )
        runtime = "torch.jit.load" if not fixed else f"onnxruntime {_onnxruntime().__version__} (CPUExecutionProvider)"
        inputs_spec, outputs_spec = _io_spec(image_size, fixed, wrapper.centered, isinstance(model, VDSR))
        card = {
            "format": CARD_FORMAT,
            "sftkd_version": __version__,
            "export_format": fmt,
            "file": target.name,
            "exporter": exporter,
            "run": run.path.name,
            "run_path": str(run.path),
            "role": entry_role,
            "run_role": state.get("role"),
            "primary": state.get("primary"),
            "init": state.get("init"),
            "teacher_role": state.get("teacher_role"),
            "checkpoint": checkpoint,
            "epoch": state.get("epoch"),
            "architecture": _architecture(model, fixed),
            "params": count_parameters(model),
            "acceleration": acceleration,
            "mask": _mask_card(manifest, acceleration, mask, mask_file),
            "image_size": list(image_size),
            "image_size_dynamic": not fixed,
            "batch_dynamic": True,
            "inputs": inputs_spec,
            "outputs": outputs_spec,
            "kspace_layout": "centered" if wrapper.centered else "corner",
            "fft_norm": "ortho",
            "dataset": None if manifest is None else {
                "path": str(data_path), "source": manifest.get("source"),
                "image_size": manifest.get("image_size"), "fingerprint": _fingerprint(data_path),
            },
            "metrics": _last_metrics(run.path),
            "check": {
                "max_abs_diff": diff, "tolerance": TOLERANCE, "inputs": inputs.source,
                "batches": sorted({1, len(inputs.zf)}), "runtime": runtime,
                "reference": f"the PyTorch {model.name}" + ("" if isinstance(model, VDSR) else " (torch.fft data consistency)"),
            },
        }
        atomic_write_text(card_path(target), json.dumps(card, indent=2, allow_nan=True))
        os.replace(tmp, target)
    except OSError as exc:
        raise SftkdError(f"--out {target}: could not write ({os_error_text(exc)})") from None
    finally:
        unlink_quietly(tmp)
    return ExportResult(target, card_path(target), diff, card)


def _fingerprint(data_path: str | Path) -> str | None:
    from sftkd_cli.data.dataset import dataset_fingerprint

    try:
        return dataset_fingerprint(data_path)
    except SftkdError:
        return None
