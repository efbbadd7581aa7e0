"""`sftkd export`: a trained model as a self-contained TorchScript or ONNX file, with a model card.

The exported graph contains the data-consistency layers, so it needs only what a scanner gives:

    inputs   zf      (B,1,H,W) float32  zero-filled image |IFFT(kspace)|
             kspace  (B,2,H,W) float32  undersampled k-space, channel 0 real, channel 1 imaginary;
                                        orthonormal 2-D FFT, corner layout (no fftshift) unless
                                        the model was trained centred
             mask    (B,1,H,W) float32  0/1 sampling mask (batch 1 broadcasts)
    output   image   (B,1,H,W) float32  the reconstruction

A model trained on complex data (fastMRI k-space) takes and returns complex images as two
channels: zf (B,2,H,W) and image (B,2,H,W), channel 0 real, channel 1 imaginary; its data
consistency keeps the complex result (the card says so, and names the centred k-space layout).

A model without data consistency (VDSR, super-resolution) exports as the plain CNN, zf is the
interpolated low-resolution image; kspace and mask are accepted but unused (TorchScript), or
absent from the graph (ONNX drops unused inputs; `ExportedModel` feeds what the file declares).
What is traced comes from the model's family (`Family.exportable`, models/traceable.py), and
so does the card's architecture record; this module writes, checks and describes the file.

The batch is dynamic in both formats. torch.fft does not export to ONNX, so the ONNX graph
computes the orthonormal DFT as matrix products with fixed DFT matrices (`MatmulDFT`): the
image size is fixed there. The TorchScript file keeps torch.fft (exact, any image size).

Every export checks itself: the written file is loaded back (torch.jit.load / onnxruntime;
a TorchScript file passes the op check every loaded file gets, `exported.EXPORT_OPS`),
run on real slices of the run's dataset (or a synthetic phantom when the dataset is missing)
and compared with the PyTorch model. The file appears only when the check passes. A run
whose dataset holds data the model was not built for (`checkpoints.check_fits_data`) is refused.
The card is also embedded in the file, and a TorchScript file holds no debug records, so the
same run gives the same bytes from any folder (`export_files`). The card's `training` says
whether the run trained all the epochs it planned.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sftkd_cli import __version__
from sftkd_cli.acquisition import Acquisition
from sftkd_cli.checkpoints import check_fits_data, load_model_digest, training_record
from sftkd_cli.choices import BEST, CHECKPOINT_NAMES, MAX_SIZE, MIN_EXPORT_SIZE
from sftkd_cli.data.dataset import dataset_record
from sftkd_cli.data.format import dataset_task
from sftkd_cli.metrics_file import exported_scores
from sftkd_cli.errors import RunInterrupted, SftkdError, os_error_text
from sftkd_cli.name_checks import in_any_case
from sftkd_cli.evaluate import CHECKPOINT_DIGEST, output_dir, scored_role
from sftkd_cli.export_files import embed_card, publish, write_onnx, write_torchscript
from sftkd_cli.exported import (
    OUTPUT_NAME,
    ExportedModel,
    card_path,
    load_exported,
    require_onnxruntime,
    split_complex,
)
from sftkd_cli.models import CascadeNet, Family, count_parameters, family_of
from sftkd_cli.mri.masks import describe_box, describe_mask, sampled_lines
from sftkd_cli.export_target import FORMATS, export_target, replaceable
from sftkd_cli.files import (
    StagedFiles, json_text, made_folder, output_path, read_regular_bytes, temporary_sibling, unlink_quietly,
)
from sftkd_cli.runs import check_recipe_data, open_run
#: largest allowed |exported - PyTorch| on the check slices
TOLERANCE = 1e-4
#: 2: the mask's sampled_lines along its axis (was sampled_rows, always rows); 3: a super-resolution
#: box as box_rows x box_columns (its sampled_lines were the box's rows only); 4: `training` (epochs
#: trained and planned), the card also inside the file (`export_files.embed_card`)
CARD_FORMAT = 4


# --------------------------------------------------------------------------- writing


def exportable(model: CascadeNet, image_size: tuple[int, int], fixed: bool) -> nn.Module:
    """The traceable wrapper of a model, as its family exports it: `fixed` (ONNX) for one image
    size, else any size (TorchScript); see `Family.exportable`.

    The TorchScript wrapper is a channels_last copy (`model` is left as it is): the file keeps
    its weights' layout, and its convolutions then run channels_last wherever it is loaded,
    1.2-1.6x faster than NCHW on every CPU measured (AVX2 and AVX-512 kernels). Its weights are
    saved without requires_grad, so that a plain call returns a tensor numpy can take. ONNX
    files hold no layout (onnxruntime chooses its own)."""
    wrapper = family_of(model.name).exportable(model, image_size, fixed)
    return wrapper if fixed else copy.deepcopy(wrapper).to(memory_format=torch.channels_last).requires_grad_(False)


# --------------------------------------------------------------------------- check inputs


@dataclass
class CheckInputs:
    """Slices the export is verified on: zf, complex kspace, mask as (B,1,H,W) batches."""

    zf: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    source: str


def phantom_inputs(size: tuple[int, int], mask: np.ndarray, batch: int = 3, complex_centered: bool | None = None,
                   why: str = "no val slices of this size in the dataset") -> CheckInputs:
    """Synthetic smooth phantoms (ellipses with a gradient) undersampled by `mask`; with
    `complex_centered` set, complex ones (a smooth phase) in that k-space layout, zf as two channels.
    `why` the check has no real slices, for the card."""
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
    source = f"synthetic phantom {h}x{w} (batch {batch}; {why})"
    if complex_centered is not None:
        from sftkd_cli.mri.fft import fft2, ifft2, to_channels

        phase = torch.tensor(np.pi * (0.5 * x + 0.3 * y), dtype=torch.float32)
        kspace = (fft2(target * torch.exp(1j * phase), centered=complex_centered) * m).to(torch.complex64)
        return CheckInputs(to_channels(ifft2(kspace, centered=complex_centered)).float(), kspace, m, "complex " + source)
    kspace = torch.fft.fft2(target, norm="ortho") * m
    zf = torch.fft.ifft2(kspace, norm="ortho").abs().float()
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
    created_folder: Path | None = None  # the --out folder this export created (it did not exist)
    missing_data: Path | None = None  # no dataset there: the check ran on synthetic phantoms
    no_scores: str = ""  # why the card has no scores (`metrics_file.exported_scores`); '' when it has them


class ExportInterrupted(RunInterrupted):
    """Ctrl-C or SIGTERM came while the export was renamed into place: it waited until the file
    and its card were both there (`export_files.publish`), so the export is whole (`result`)."""

    def __init__(self, result: ExportResult, signum: int) -> None:
        super().__init__(f"export interrupted once it was written: {result.path} and its card "
                         f"{result.card_path.name} are complete", signum)
        self.result = result


def _manifest(data_path: str | Path) -> dict[str, Any] | None:
    from sftkd_cli.data.dataset import load_manifest

    try:
        return load_manifest(data_path)
    except SftkdError:
        return None


def find_dataset(recipe_file: Path, recipe_path: str, data: str | Path | None,
                 size: tuple[int, int] | None) -> tuple[Path, dict[str, Any] | None]:
    """The dataset the export is checked on, resolved (the card records it so), with its manifest:
    --data, which must be a prepared dataset, else the recipe's data.path read from here, as
    `sftkd evaluate` reads it. A data.path that is not a folder from here (relative to the folder
    training ran in, or moved since) is refused as evaluate refuses it (`check_recipe_data`), unless
    --size is given: then the manifest is None and the check runs on synthetic phantoms."""
    from sftkd_cli.data.dataset import load_manifest

    if data is not None:
        try:
            return Path(data).resolve(), load_manifest(data)
        except SftkdError as exc:
            raise SftkdError(f"--data {exc}") from None
    if size is None:
        check_recipe_data(recipe_file, recipe_path, "pass --data DIR to check the export on the dataset where it is "
                          "now (or --size H W to check it on synthetic phantoms, without data)")
    return Path(recipe_path).resolve(), _manifest(recipe_path)


def _check_trained_on(state: dict[str, Any], record: dict[str, Any], source: Path, flag: str) -> None:
    """Refuse a dataset other than the one the checkpoint was trained on (another manifest
    fingerprint; a moved one keeps it): the card gives the dataset's mask, normalisation and slicing
    as the model's. A checkpoint that recorded no fingerprint is not refused."""
    trained = (state.get("trained_on") or {}).get("fingerprint")
    if trained and trained != record["fingerprint"]:
        raise SftkdError(f"{flag} {record['path']}: dataset fingerprint {record['fingerprint'][:12]}, but {source} was "
                         f"trained on dataset {str(trained)[:12]}, whose mask and normalisation the card must give; "
                         "expected that dataset (--data DIR where it is now)")


def resolve_size(size: tuple[int, int] | None, manifest: dict[str, Any] | None, data_path: str | Path) -> tuple[int, int]:
    """--size wins; else the dataset manifest's image_size."""
    if size is not None:
        if len(size) != 2 or min(size) < MIN_EXPORT_SIZE or max(size) > MAX_SIZE:
            raise SftkdError(f"--size {' '.join(str(s) for s in size)}: expected two integers H W, each from {MIN_EXPORT_SIZE} to {MAX_SIZE}")
        return int(size[0]), int(size[1])
    if manifest is None:
        raise SftkdError(f"{data_path}: dataset not found, so the image size is unknown; pass --size H W")
    return int(manifest["image_size"][0]), int(manifest["image_size"][1])


def _dataset_mask(data_path: str | Path, manifest: dict[str, Any] | None, acceleration: float) -> tuple[np.ndarray | None, str | None]:
    """The dataset's fixed mask for this acceleration and its file path (None when unavailable)."""
    if manifest is None:
        return None, None
    from sftkd_cli.data.format import group_key

    key = group_key(dataset_task(manifest), acceleration)
    relative = manifest.get("mask", {}).get("files", {}).get(key)
    if not relative:
        return None, None
    path = Path(data_path) / relative  # `masks/<name>.npy`: load_manifest checked it (`check_mask_files`)
    try:  # a regular file only (a FIFO would hang), of numbers only (never pickled objects)
        data = read_regular_bytes(path, f"the {key} mask file")
        return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32), str(path.resolve())
    except (OSError, ValueError, SftkdError):
        return None, str(path.resolve())


def _check_mask(size: tuple[int, int], acceleration: float, manifest: dict[str, Any] | None) -> np.ndarray:
    """A mask of `size` made as the dataset's was (for a size other than the dataset's)."""
    from sftkd_cli.data.format import group_key, mask_axis
    from sftkd_cli.data.prepare import sr_box_mask
    from sftkd_cli.mri.masks import make_mask

    info = (manifest or {}).get("mask", {})
    layout = info.get("layout", "corner")
    task = dataset_task(manifest or {})
    if task == "sr":
        return sr_box_mask(size, acceleration, layout)
    axis = mask_axis(info, group_key(task, acceleration)) if info else 0
    return make_mask(info.get("kind", "random"), size, acceleration, seed=int(info.get("seed", 42)),
                     center_fraction=info.get("center_fraction"), layout=layout, axis=0 if axis is None else axis)


def _size_mask(size: tuple[int, int], acceleration: float, manifest: dict[str, Any] | None) -> np.ndarray:
    """`_check_mask` for a size that is not the dataset's (--size, or no dataset): one that no mask of
    this acceleration fits (too few lines, or centre lines) is refused naming --size."""
    try:
        return _check_mask(size, acceleration, manifest)
    except SftkdError as exc:
        raise SftkdError(f"--size {size[0]} {size[1]}: too small for the {acceleration:g}x mask ({exc}); "
                         "expected a larger size") from None


def _center_fraction(info: dict[str, Any], task: str, acceleration: float, mask_file: str | None) -> float | None:
    """The centre fraction the mask was made with: the manifest's, or where it records none (the
    default was used) the one `make_mask` used (`masks.default_center_fraction`). None for a mask
    of the user's file (`origin` file), a super-resolution box, or no known kind."""
    from sftkd_cli.data.format import group_key
    from sftkd_cli.mri.masks import default_center_fraction

    entry = (info.get("per_acceleration") or {}).get(group_key(task, acceleration)) or {}
    kind = info.get("kind")
    if (mask_file is not None and entry.get("origin") == "file") or not isinstance(kind, str):
        return None
    if info.get("center_fraction") is not None:
        return info["center_fraction"]
    return default_center_fraction(kind, acceleration)


def _mask_card(manifest: dict[str, Any] | None, acceleration: float, mask: np.ndarray | None, mask_file: str | None) -> dict[str, Any]:
    """The card's record of the mask the export was checked with: how it was made (the manifest's
    recipe) and what it samples, read off the mask itself (`describe_mask`: the axis of its whole
    lines, None for a 2-D pattern, and the lines sampled along it). No `mask` (no dataset: the check
    used a stand-in): all null with a note, never a mask the model was not trained with."""
    info = dict((manifest or {}).get("mask", {}))
    card: dict[str, Any] = {
        "kind": info.get("kind"), "seed": info.get("seed"), "layout": info.get("layout"),
        "center_fraction": _center_fraction(info, dataset_task(manifest or {}), acceleration, mask_file), "file": mask_file,
        "shape": None, "axis": None, "lines": None, "sampled_fraction": None, "sampled_lines": None,
    }
    if mask is None:
        card["note"] = ("unknown: no dataset recorded, the check used a stand-in mask; use the mask of the "
                        "dataset the model was trained on")
    else:
        axis = info["axis"] if info.get("axis") in (0, 1) else 0
        if info.get("kind") == "sr-box":  # no whole lines: the box's rows and columns
            card.update({"shape": list(mask.shape), **describe_box(mask, axis), "sampled_lines": None,
                         "box_rows": sampled_lines(mask, 0).tolist(), "box_columns": sampled_lines(mask, 1).tolist()})
        else:
            described = describe_mask(mask, axis)
            axis = described["axis"]
            card.update({
                "shape": list(mask.shape), **described,
                "sampled_lines": None if axis is None else [int(i) for i in sampled_lines(mask, axis)],
            })
    return card


#: the card's words for centred k-space (mri.fft's convention, fastMRI's)
CENTRED_TEXT = ("centred as fastMRI's fft2c/ifft2c: ifftshift before the FFT and fftshift after it (low "
                "frequencies at the centre; for odd sizes the two shifts differ)")


def _io_spec(size: tuple[int, int], fixed: bool, centered: bool, family: Family,
             acquisition: Acquisition | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The card's inputs and outputs; a model without data consistency reads zf alone; zf and the
    output have the model's image channels (2, real and imaginary, for complex data)."""
    acquisition = acquisition or Acquisition()
    h, w = (size[0], size[1]) if fixed else ("H", "W")
    zf_text, output_text = family.io_for(acquisition)
    c = acquisition.channels
    zf = {"name": "zf", "shape": ["batch", c, h, w], "dtype": "float32", "description": zf_text}
    outputs = [{"name": OUTPUT_NAME, "shape": ["batch", c, h, w], "dtype": "float32", "description": output_text}]
    if not family.data_consistency:  # ONNX drops the unused inputs; TorchScript keeps the three-input signature
        unused = "unused by this super-resolution model (any values; kept for one interface)"
        return [zf] + ([] if fixed else [
            {"name": "kspace", "shape": ["batch", 2, h, w], "dtype": "float32", "description": unused},
            {"name": "mask", "shape": ["mask_batch", 1, h, w], "dtype": "float32", "description": unused},
        ]), outputs
    layout = CENTRED_TEXT if centered else "corner (no fftshift, low frequencies at the corners)"
    inputs = [
        zf,
        {"name": "kspace", "shape": ["batch", 2, h, w], "dtype": "float32",
         "description": f"undersampled k-space, channel 0 real, channel 1 imaginary; orthonormal 2-D FFT of the image, {layout}; unsampled entries 0"},
        {"name": "mask", "shape": ["mask_batch", 1, h, w], "dtype": "float32",
         "description": "sampling mask, 1 = sampled (any non-zero counts as sampled); mask_batch is the batch or 1; "
                        "the card's mask.sampled_lines are lines along mask.axis of the (H, W) image "
                        "(0: rows, mask[..., i, :] = 1; 1: columns, mask[..., :, i] = 1); a super-resolution "
                        "box is mask.box_rows x mask.box_columns"},
    ]
    return inputs, outputs


def export_run(
    run_dir: str | Path,
    fmt: str,
    *,
    out: str | Path | None = None,
    role: str | None = None,
    checkpoint: str | None = None,
    size: tuple[int, int] | None = None,
    force: bool = False,
    data: str | Path | None = None,
) -> ExportResult:
    """Export a run's model as TorchScript or ONNX with a model card; verified before it is kept.

    The check runs on `data` (--data), else on the recipe's data.path read from here, as evaluate
    reads it (`find_dataset`). An existing file at the target is replaced only with `force`, and
    only when it is an earlier export (its card beside it). `checkpoint` None: the recipe's
    eval.checkpoint when best or last, as evaluate scores it (so the card gets its scores), else best."""
    fmt = in_any_case(fmt, tuple(FORMATS))  # in any case, as the command takes it
    checkpoint = None if checkpoint is None else in_any_case(checkpoint, CHECKPOINT_NAMES)
    if fmt not in FORMATS:
        raise SftkdError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if checkpoint is not None and checkpoint not in CHECKPOINT_NAMES:
        raise SftkdError(f"--checkpoint {checkpoint!r}: expected best or last")
    if fmt == "onnx":
        require_onnxruntime()
    run = open_run(run_dir)
    if run.busy():  # its best.pt and last.pt change with every epoch: which weights shipped would be chance
        raise SftkdError(f"{run_dir}: still training (another sftkd process holds it); export it once it is done")
    recipe = run.load_recipe()
    checkpoint = checkpoint or (recipe.eval.checkpoint if recipe.eval.checkpoint in CHECKPOINT_NAMES else BEST)
    model, state, digest = load_model_digest(run.path, role, checkpoint, "--checkpoint")
    model = model.eval()
    entry_role = role or state["primary"]
    target = export_target(out, run.path, model.name, entry_role, fmt)  # --out's own errors before the data's
    data_path, manifest = find_dataset(run.recipe_file, recipe.data.path, data, size)
    acceleration = float(recipe.data.acceleration)
    if manifest is not None:  # the checks below read this dataset: it must hold the data the model fits
        record = dataset_record(data_path, acceleration)
        check_fits_data(state, model.record(), record, run.path, same_acquisition=False)
        _check_trained_on(state, record, run.path, "--data" if data is not None else "data.path")
    family = family_of(model.name)
    image_size = resolve_size(size, manifest, data_path)
    inputs, checked_mask = _check_inputs(model, data_path, acceleration, manifest, image_size)
    fixed = fmt == "onnx"
    wrapper = exportable(model, image_size, fixed).eval()
    example = (inputs.zf[:2], split_complex(inputs.kspace[:2]), inputs.mask[:2])
    published: list[ExportResult] = []  # the result, once the file and its card are both in place
    # a failed export leaves no folder it made behind
    with _whole_once_published(published), made_folder(target.parent) as made_folders:
        # said, not silent: the outermost folder of --out that was not there
        made = made_folders[-1] if made_folders and out is not None else None
        target = replaceable(target, out, force)
        tmp = temporary_sibling(target)
        try:
            with torch.no_grad():
                exporter = (write_onnx if fixed else write_torchscript)(wrapper, example, tmp)
            exported = _load_written(tmp, target)
            diff = max_difference(exported, model, inputs)
            if not diff <= TOLERANCE:
                raise SftkdError(
                    f"{target}: exported model differs from the PyTorch model by {diff:.3g} "
                    f"(tolerance {TOLERANCE:g}); nothing written"
                )
            runtime = "torch.jit.load" if not fixed else f"onnxruntime {require_onnxruntime().__version__} (CPUExecutionProvider)"
            inputs_spec, outputs_spec = _io_spec(image_size, fixed, wrapper.centered, family, model.acquisition)
            scores, no_scores = exported_scores(output_dir(run.path, state, entry_role),
                                                scored_role(state.get("role") or recipe.run.role, entry_role), checkpoint, digest)
            card = {
                "format": CARD_FORMAT,
                "sftkd_version": __version__,
                "export_format": fmt,
                "file": target.name,
                "sha256": None,  # ties the card to this file (`read_card` checks it); set once the card is in it
                "exporter": exporter,
                "run": run.path.name,
                "run_path": str(run.path.resolve()),  # evaluate --exported tells its run by it, from any folder
                "role": entry_role,
                "run_role": state.get("role"),
                "primary": state.get("primary"),
                "init": state.get("init"),
                "teacher_role": state.get("teacher_role"),
                "checkpoint": checkpoint,
                CHECKPOINT_DIGEST: digest,  # the bytes exported: what the card's metrics must have scored
                "epoch": state.get("epoch"),
                "training": training_record(run.path, recipe.train.epochs, checkpoint, state),
                "architecture": family.architecture(model, fixed),
                "params": count_parameters(model),
                "task": model.acquisition.task,  # evaluate --exported refuses data of another task
                "acceleration": acceleration,
                "mask": _mask_card(manifest, acceleration, *checked_mask),
                "image_size": list(image_size),
                "image_size_dynamic": not fixed,
                "batch_dynamic": True,
                "inputs": inputs_spec,
                "outputs": outputs_spec,
                "normalisation": _normalisation(manifest),
                "kspace_layout": "centered" if wrapper.centered else "corner",
                "fft_norm": "ortho",
                "dataset": None if manifest is None else {
                    "path": str(data_path), "source": manifest.get("source"),  # resolved, as mask.file
                    "image_size": manifest.get("image_size"), "fingerprint": _fingerprint(data_path),
                    # complex data: the magnitude target's size, the centre crop fastMRI's scores use
                    **({"target_size": manifest["target_size"]} if "target_size" in manifest else {}),
                    "slicing": _slicing(manifest),
                },
                "metrics": scores,
                "check": {
                    "max_abs_diff": diff, "tolerance": TOLERANCE, "inputs": inputs.source,
                    "batches": sorted({1, len(inputs.zf)}), "runtime": runtime,
                    "reference": f"the PyTorch {model.name}" + (" (torch.fft data consistency)" if family.data_consistency else ""),
                },
            }
            # the card goes into the file (all but its sha256), which is loaded and checked again
            written = embed_card(tmp, fmt, {key: value for key, value in card.items() if key != "sha256"})
            _load_written(tmp, target)
            card["sha256"] = hashlib.sha256(written).hexdigest()
            # the card is written under a temporary name and renamed after the model: a failed rename
            # of the model leaves an earlier export and its card as they were. A link at the card's
            # name is replaced in RUN/export; given as --out, its target is written
            card_file = card_path(target) if out is None else output_path(card_path(target))
            with StagedFiles() as staged:
                try:
                    staged.add(card_file, json_text(card).encode())
                except OSError as exc:
                    raise SftkdError(f"{card_path(target)}: could not write ({os_error_text(exc)})") from None
                result = ExportResult(target, card_path(target), diff, card, made, None if manifest is not None else data_path,
                                      no_scores)
                # Ctrl-C / SIGTERM wait until both are in place
                held = publish(tmp, target, staged, lambda: published.append(result))
            if held:  # the export is whole: say so, then stop as the signal asked
                raise ExportInterrupted(result, held[0])
        except OSError as exc:
            raise SftkdError(f"--out {target}: could not write ({os_error_text(exc)})") from None
        finally:
            unlink_quietly(tmp)
        return result


@contextlib.contextmanager
def _whole_once_published(published: list[ExportResult]) -> Iterator[None]:
    """A Ctrl-C (KeyboardInterrupt) once the file and its card are both in place (`published`
    holds the result) stops the export as whole (`ExportInterrupted`), not as 'nothing written'."""
    try:
        yield
    except KeyboardInterrupt:
        if published:
            raise ExportInterrupted(published[0], signal.SIGINT) from None
        raise


def _load_written(tmp: Path, target: Path) -> ExportedModel:
    """The file just written to `tmp` for `target`, loaded as every exported file is (with its checks)."""
    try:
        return load_exported(tmp)
    except SftkdError as exc:  # e.g. a torch whose trace holds an op not in exported.EXPORT_OPS
        raise SftkdError(f"{target}: the written file fails the check every exported file gets on loading, "
                         f"nothing written ({exc})") from None


def _check_inputs(model: CascadeNet, data_path: Path, acceleration: float, manifest: dict[str, Any] | None,
                  image_size: tuple[int, int]) -> tuple[CheckInputs, tuple[np.ndarray, str | None]]:
    """The slices the exported file is checked on (the dataset's, or phantoms where it is not at
    hand) and the mask they use with its file, for the card: the dataset's, or one made as the
    dataset's was for another --size; (None, None) without a dataset (the phantoms' mask is a stand-in)."""
    mask, mask_file = _dataset_mask(data_path, manifest, acceleration)
    inputs = dataset_inputs(data_path, acceleration, image_size) if manifest is not None else None
    fits = mask is not None and tuple(mask.shape) == tuple(image_size)
    checked_mask = (mask, mask_file) if fits or inputs is not None else (_size_mask(image_size, acceleration, manifest), None)
    if inputs is None:
        complex_centered = model.acquisition.centered if model.acquisition.values == "complex" else None
        inputs = phantom_inputs(image_size, checked_mask[0], complex_centered=complex_centered,
                                why="no dataset; a stand-in mask" if manifest is None else "no val slices of this size in the dataset")
    return inputs, (checked_mask if manifest is not None else (None, None))  # the card records no stand-in


def _slicing(manifest: dict[str, Any]) -> dict[str, Any]:
    """How prepare-data cut and shaped the training slices (its options), which new scans must repeat."""
    options = manifest.get("options") or {}
    return {"slice_axis": options.get("slice_axis"), "downsample": options.get("downsample"),
            "size": options.get("size"),
            "meaning": "slices cut along slice_axis of each volume, each downsample x downsample pixel block "
                       "averaged, then centre-cropped / zero-padded to size in the image domain (no resampling; "
                       "null: kept as they were)"}


def _normalisation(manifest: dict[str, Any] | None) -> str:
    """How the inputs must be scaled (the training data's normalisation), for the card."""
    how = (manifest or {}).get("normalisation") or "unknown (no dataset manifest)"
    return (f"as the training data: {how}. Divide zf and kspace of a new volume by that volume's "
            "factor, and multiply the output by it to get back the original scale. A scan without its "
            "fully sampled image lacks that factor: the maximum over the volume of its zero-filled images "
            "is the nearest stand-in, not what training used")


def _fingerprint(data_path: str | Path) -> str | None:
    from sftkd_cli.data.dataset import dataset_fingerprint

    try:
        return dataset_fingerprint(data_path)
    except SftkdError:
        return None
