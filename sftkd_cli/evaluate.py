"""`sftkd evaluate`: reconstruct a split with a trained model and score it like the paper.

Writes into the run directory: `metrics.json` (summary + conventions), `per_slice.csv` (every
metric for every slice, model and zero-filled input), `per_volume.csv` (each volume's scores in
the paper convention) and `recon.h5` (one (S,H,W) reconstruction per volume). Complex data (two
channels, real and imaginary) is scored as the magnitude images.
With `convention="fastmri"` the scores follow the `fastmri` package's evaluate.py instead (the
magnitude centre-cropped to the target's size, MSE/NMSE/PSNR/SSIM per volume, see metrics.py) and go
to `<folder>/eval-fastmri/`: metrics.json, `per_volume.csv` (one row per volume) and recon.h5.
Scores on another dataset than the model was trained on (another manifest fingerprint) go to
`<folder>/eval-data-<dataset folder>-<fingerprint[:8]>/`, so the run's own scores stay; scores of a
split other than the recipe's eval.split go to `.../eval-split-<split>/` (`eval_folders`). The
files are written under temporary names and renamed into place together only when all were
written, so a full disk or an error midway leaves the previous evaluation's files as they were.
Memory holds one volume at a time: each is scored and written into the temporary recon.h5 as
soon as its last slice is reconstructed, then let go, its memory handed back to the system
(`memory.release_heap`). The output folder is checked for writing before any work starts.

metrics.json records which checkpoint it scored: `checkpoint_sha256`, the sha256 of the bytes
loaded. Nothing locks the run while it is scored, so before writing, evaluate checks that the
run still holds that checkpoint and that the dataset's manifest is the one it read; when another
process resumed or replaced the run, or re-prepared the data, meanwhile, it refuses and writes
nothing. `scores_checkpoint` lets readers (compare, reproduce) tell stale scores.
"""

from __future__ import annotations

import csv
import io
import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from sftkd_cli import __version__
from sftkd_cli.checkpoints import check_fits_data, checkpoint_digest, checkpoint_source, load_model_digest, stopped_early_note, training_record
from sftkd_cli.choices import AMP_MODES, CHECKPOINT_NAMES, MAX_THREADS, SFT_STUDENT, SFT_TEACHER
from sftkd_cli.config import Recipe
from sftkd_cli.files import StagedFiles, check_writable, display_path, folder_lock, json_text, unlink_quietly
from sftkd_cli.data.format import MANIFEST, check_holds
from sftkd_cli.errors import SftkdError, os_error_text
from sftkd_cli.name_checks import DEVICE_NAMES, in_any_case
from sftkd_cli.eval_folders import results_folder
from sftkd_cli.layout import forced_layout, inference_layout
from sftkd_cli.memory import release_heap
from sftkd_cli.metrics import CONVENTIONS, FASTMRI_CONVENTIONS, center_crop, magnitude
from sftkd_cli.metrics_file import METRICS_FORMAT
from sftkd_cli.models import count_parameters
from sftkd_cli.recon_file import recon_attrs, write_recon_volume
from sftkd_cli.run_files import CHECKPOINT_DIGEST, CHECKPOINTS, EVAL_FILES, EVAL_PREFIX, METRICS_JSON, RECIPE_YAML, RECON_H5, SCORE_CSVS
from sftkd_cli.runs import RunDir, check_real_folder, check_recipe_data, dead_temporary_files, eval_chain, open_run
from sftkd_cli.scoring import SCORERS, Volume, VolumeScores, check_convention
from sftkd_cli.runtime import (MIN_INFERENCE_BATCH, amp_warning, autocast, check_amp, collate, cpu_threads,
                               inference_batch_size, precision_policy, select_device, slice_batches,
                               time_calls, to_device)
from sftkd_cli.training.graphs import Reconstructor, graphed_reconstructor

SliceProgress = Callable[[int, int], None]  # (slices done, slices in all)


#: what the "zero_filled" scores (the ZF_ columns) are scores of, per dataset task
INPUT_CONVENTIONS = {
    "recon": "zero_filled = the network input: |IFFT(masked k-space)|",
    "sr": "zero_filled = the network input: the low-resolution image (central 1/s x 1/s of k-space) "
          "interpolated to full size by zero-padding its k-space (sinc interpolation)",
}


def scored_images(item: dict[str, Any], pred: np.ndarray, convention: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target, zf, pred) of one slice as the convention scores them, (h,w) real images.

    paper: the magnitudes at the stored size. fastmri: the target is the dataset's magnitude
    target (`target_mag`, fastMRI's reconstruction_esc) when it has one, else |target|; zf and
    pred are centre-cropped to its size."""
    target, zf = magnitude(item["target"].numpy()), magnitude(item["zf"].numpy())
    pred = magnitude(pred)
    if convention == "paper":
        return target, zf, pred
    if item.get("target_mag") is not None:
        target = np.asarray(item["target_mag"], dtype=np.float32)
        target = target[0] if target.ndim == 3 else target
    # copies: a view would keep the whole uncropped magnitude alive
    return target, center_crop(zf, target.shape).copy(), center_crop(pred, target.shape).copy()


VolumeSink = Callable[[str, Volume], None]  # (volume name, volume)


def _stack(rows: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> Volume:
    """One volume's (slice, target, zf, pred) rows as (S,H,W) arrays, in slice order."""
    rows.sort(key=lambda r: r[0])
    return {
        "slices": np.array([r[0] for r in rows]),
        "target": np.stack([r[1] for r in rows]),
        "zf": np.stack([r[2] for r in rows]),
        "pred": np.stack([r[3] for r in rows]),
    }


def reconstruct_split(model: Reconstructor, dataset, device: torch.device, batch_size: int = MIN_INFERENCE_BATCH,
                      amp: str = "off", progress: SliceProgress | None = None,
                      convention: str = "paper", each_volume: VolumeSink | None = None) -> dict[str, Volume]:
    """Run the model over every slice; returns {volume: {slices, target, zf, pred}} as (S,H,W)
    arrays, the images `convention` scores (see `scored_images`: magnitudes; fastmri: centre-cropped).

    With `each_volume`, each volume is handed to it as soon as its last slice is reconstructed
    and not kept (the result is then empty): memory holds one volume, not the split (the heap is
    trimmed after each one: `memory.release_heap`). This relies on the dataset's order, volume
    after volume (SliceDataset's); a volume whose slices come back after another volume's is
    refused. `progress(done, total)` is called after each batch (the CLI shows it as a bar). The
    batch size changes nothing but speed and memory (up to float rounding of the device's kernels)."""
    check_batch_size(batch_size)
    kept: dict[str, Volume] = {}
    sink: VolumeSink = each_volume or kept.__setitem__
    finished: set[str] = set()
    current, rows = None, []
    with torch.inference_mode(), autocast(device, amp, "--amp"):
        done = 0
        for items in slice_batches(dataset, batch_size):
            batch = to_device(collate(items), device)
            pred = model(batch["zf"], batch["kspace"], batch["mask"]).float().cpu().numpy()
            for item, p in zip(items, pred):
                if item["volume"] != current:
                    if current is not None:
                        sink(current, _stack(rows))
                        finished.add(current)
                    current, rows = item["volume"], []
                    release_heap()  # the last volume's freed memory back to the system (else glibc's heap grows)
                    if current in finished:
                        raise SftkdError(f"evaluate: the slices of volume {current!r} come back after another "
                                         "volume's; expected the dataset's slices volume by volume")
                rows.append((int(item["slice"]), *scored_images(item, p, convention)))
            done += len(items)
            if progress:
                progress(done, len(dataset))
        if current is not None:
            sink(current, _stack(rows))
    return kept


def measure_latency(model: Reconstructor, dataset, device: torch.device, slices: int = 8, amp: str = "off") -> float:
    """Median milliseconds to reconstruct one slice (batch 1), after two warm-up runs."""
    if len(dataset) == 0 or slices <= 0:
        return float("nan")
    batch = to_device(collate([dataset[0]]), device)
    with torch.inference_mode(), autocast(device, amp, "--amp"):
        seconds = time_calls(lambda: model(batch["zf"], batch["kspace"], batch["mask"]), device, slices, 2)
    return float(np.median(seconds)) * 1000


def _csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")  # as compare's CSV: not csv's \r\n
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def check_output(out: Path, run: Path) -> None:
    """Refuse, before any work, an output folder evaluate could not write its files into, or one
    inside `run` reached through a symbolic link (its files would be replaced outside the run)."""
    check_writable(out, "evaluate: output folder")
    check_real_folder(out, run)
    for name in EVAL_FILES:
        if (out / name).is_dir():
            raise SftkdError(f"{display_path(out / name)}: is a folder; expected the file evaluate writes there")


@contextmanager
def staged_outputs(out: Path) -> Iterator[StagedFiles]:
    """One evaluation's files, written together: under temporary names in `out` while the work
    goes on, renamed by the caller's `commit()` at the end (metrics.json last).

    On any failure (disk full, file-size limit, read-only, an error in the model, Ctrl-C) the
    temporary files are removed, and so are the folders made for them: the previous outputs
    stay as they were. Temporary files a killed evaluation left in `out` are removed first. One
    evaluation at a time writes into `out` (`folder_lock`): a second is refused in one line."""
    made = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        with StagedFiles() as staged:
            with writing(out):
                out.mkdir(parents=True, exist_ok=True)
            # two evaluations of one folder would rename their files in turn: mixed results
            with folder_lock(out, f"{display_path(out)}: another sftkd evaluate is writing its results "
                                  "there; wait for it to finish"):
                for stale in dead_temporary_files(out):
                    unlink_quietly(stale)
                yield staged
    except BaseException:
        for folder in made:  # innermost first; one that is not empty stays, and so do those above it
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@contextmanager
def writing(out: Path) -> Iterator[None]:
    """Turn an OSError of writing the evaluation into `out` (disk full, file-size limit) into one line."""
    try:
        yield
    except OSError as exc:
        kept = "the previous results there are unchanged" if (out / METRICS_JSON).exists() else "nothing written"
        raise SftkdError(f"{display_path(out)}: cannot write the evaluation ({os_error_text(exc)}); {kept}") from None


def _checkpoint_of_run(run_path: Path, which: str, given_as: str) -> None:
    """A checkpoint file scored under a run's name must be one of that run's: another run's
    checkpoint would overwrite this run's metrics.json with scores labelled as this run.
    `given_as` names where `which` came from (--checkpoint, or the run's eval.checkpoint)."""
    path = Path(which)
    if not path.is_file():
        raise SftkdError(f"{given_as} {which or repr(which)}: expected best, last or a checkpoint file of run "
                         f"{display_path(run_path)}; no such file")
    try:
        inside = run_path.resolve() in path.resolve().parents
    except OSError:
        inside = False
    if not inside:
        owner = path.parent.parent if path.parent.name == CHECKPOINTS else None
        hint = (f"evaluate its own run: sftkd evaluate {display_path(owner)} --data <dataset>"
                if owner is not None and (owner / RECIPE_YAML).is_file() else
                "evaluate the run it belongs to (with --data for this dataset)")
        raise SftkdError(f"{given_as} {which}: refused: not a checkpoint of run {display_path(run_path)}, so its "
                         f"scores would be filed as that run's; {hint}")


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str | None = None,
    checkpoint: str | None = None,
    model_role: str | None = None,
    device: str = "auto",
    write_recon: bool = True,
    exported: str | Path | None = None,
    amp: str = "off",
    threads: int | None = None,
    progress: SliceProgress | None = None,
    convention: str = "paper",
    batch_size: int | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Evaluate a run's model on a split; writes metrics.json, per_slice.csv, per_volume.csv, recon.h5 and
    returns what metrics.json holds. Warnings go to `console` (None: standard error).

    `convention` "fastmri" scores as the fastmri package does (module docstring) into
    `<the usual folder>/eval-fastmri/`, with per_volume.csv instead of per_slice.csv.

    `threads` sets torch's CPU threads for the scoring and the latency measurement (None: the
    run's train.threads, as in training; 0: torch's default); the caller's setting is restored.

    The model runs in full fp32 (TF32 off, whatever the run trained with: `precision_policy`),
    so that scores agree across machines. With `amp` bf16 (or fp16 on CUDA) it runs under
    autocast instead and the scores go to `<the usual folder>/eval-amp-<amp>/`, so they sit
    beside the full-precision ones.

    `batch_size` slices go through the model at once (None: `eval_batch_size`'s default).

    On another dataset than the model was trained on (`data`, or a re-prepared data.path), the
    scores go to `<the usual folder>/eval-data-<dataset folder>-<fingerprint[:8]>/`; on a `split`
    other than the recipe's eval.split, to `.../eval-split-<split>/` (below any eval-data-*).

    With `exported` (a file from `sftkd export`), that file is scored instead of a checkpoint,
    on the run's dataset, into RUN/eval-<file stem>-<format>/ (params from its model card).
    """
    # the words in any case, as the command takes them (BF16, PAPER, BEST, CPU)
    amp, convention, device = in_any_case(amp, AMP_MODES), in_any_case(convention, SCORE_CSVS), in_any_case(device, DEVICE_NAMES)
    checkpoint = None if checkpoint is None else in_any_case(checkpoint, CHECKPOINT_NAMES)
    check_evaluate_options(threads, batch_size, convention)
    run = open_run(run_dir)
    recipe = run.load_recipe()
    with cpu_threads(recipe.train.threads if threads is None else threads), precision_policy(tf32=False):
        return _evaluate(run, recipe, data=data, split=split, checkpoint=checkpoint, model_role=model_role,
                         device=device, write_recon=write_recon, exported=exported, amp=amp, progress=progress,
                         convention=convention, batch_size=eval_batch_size(recipe, batch_size),
                         console=console or Console(stderr=True))


def check_evaluate_options(threads: int | None, batch_size: int | None, convention: str) -> None:
    """`evaluate_run`'s own options, checked before any work (the command: before its first run):
    `threads` and `batch_size` when given, and the score `convention`."""
    if threads is not None:
        check_threads(threads)
    if batch_size is not None:
        check_batch_size(batch_size)
    check_convention(convention)


def check_batch_size(batch_size: int) -> None:
    """`--batch-size` must be a whole number of slices, at least 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SftkdError(f"--batch-size {batch_size!r}: expected a number of slices, 1 or more")


def eval_batch_size(recipe: Recipe, batch_size: int | None = None) -> int:
    """The slices per forward pass: `batch_size`, or the run's train.batch_size but at least
    MIN_INFERENCE_BATCH (`runtime.inference_batch_size`, as validation while training)."""
    return batch_size if batch_size is not None else inference_batch_size(recipe.train.batch_size)


def check_threads(threads: int) -> None:
    """`--threads` follows train.threads' rule: a whole number (numpy's too), 0 (torch's default) to MAX_THREADS."""
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or not 0 <= threads <= MAX_THREADS:
        raise SftkdError(f"--threads {threads!r}: expected a whole number from 0 (torch default) to {MAX_THREADS}")


@dataclass
class _ScoredModel:
    """The model an evaluation scores, given as a checkpoint or as an exported file."""

    runner: Reconstructor  # what reconstructs the slices: the model, its CUDA graphs, or the exported file
    name: str  # the architecture, e.g. D3C5
    state: dict[str, Any]  # the checkpoint (or the exported file's card, checkpoint-like)
    role: str  # the model's entry in its run (model, teacher, student)
    checkpoint: str  # best, last or a checkpoint file
    params: int
    out: Path  # the results folder before the data/amp/convention levels
    device: torch.device
    graphed: bool = False  # replayed from CUDA graphs
    extra: dict[str, Any] = field(default_factory=dict)  # more metrics.json fields
    digest: str | None = None  # the checkpoint file's sha256, checked again before the scores are kept
    file: Path | None = None  # that checkpoint file


def _checkpoint_model(run: RunDir, recipe: Recipe, dataset: Any, record: dict[str, Any], checkpoint: str | None,
                      model_role: str | None, device: torch.device, amp: str, batch_size: int,
                      console: Console) -> _ScoredModel:
    """A checkpoint's model on `device`, in the memory layout inference runs fastest in here (measured
    on a first batch unless train.channels_last forces it), replayed from CUDA graphs where they apply."""
    which = checkpoint or recipe.eval.checkpoint
    source, name = checkpoint_source(run.path, which)
    model, state, digest = load_model_digest(source, model_role, name, "--checkpoint")
    entry_role = model_role or state["primary"]
    check_fits_data(state, model.record(), record, source, same_acquisition=False)
    layout = forced_layout(recipe.train.channels_last, device)
    if layout is None:  # measured on a first batch
        first = to_device(collate([dataset[i] for i in range(min(batch_size, len(dataset)))]), device)
        layout = inference_layout(recipe.train.channels_last, model.to(device).eval(), first, device, amp)
    model = model.to(device, memory_format=layout.memory_format).eval()
    runner, graphed = graphed_reconstructor(model, device, amp, recipe.train.cuda_graphs, console)
    return _ScoredModel(runner, model.name, state, entry_role, which, count_parameters(model),
                        output_dir(run.path, state, entry_role), device, graphed, digest=digest,
                        file=run.checkpoint(name) if source == run.path else Path(source))  # a name, else a file


def _exported_model(exported: str | Path, run: RunDir, device: torch.device, checkpoint: str | None,
                    model_role: str | None, record: dict[str, Any]) -> _ScoredModel:
    """An exported file of the run (TorchScript or ONNX) that fits the data `record`, with what its model card says."""
    from sftkd_cli.exported import prepare_evaluation

    target = prepare_evaluation(exported, run.path, device, checkpoint, model_role, record)
    model = target.model
    return _ScoredModel(model, model.name, target.state, target.role, target.checkpoint, model.params,
                        target.out_dir, model.device, extra=target.fields)


def _evaluate(
    run: RunDir,
    recipe: Recipe,
    *,
    data: str | Path | None,
    split: str | None,
    checkpoint: str | None,
    model_role: str | None,
    device: str,
    write_recon: bool,
    exported: str | Path | None,
    amp: str,
    progress: SliceProgress | None,
    convention: str = "paper",
    batch_size: int = MIN_INFERENCE_BATCH,
    console: Console,
) -> dict[str, Any]:
    """The body of `evaluate_run`, with torch's threads and the precision policy already set."""
    from sftkd_cli.data.dataset import SliceDataset, check_task, dataset_record, load_manifest

    if exported is None and run.busy():  # its best.pt and last.pt change with every epoch, as export says
        raise SftkdError(f"{display_path(run.path)}: still training (another sftkd process holds it); evaluate it "
                         "once it is done")
    if exported is None and (checkpoint or recipe.eval.checkpoint) not in CHECKPOINT_NAMES:
        given_as = "--checkpoint" if checkpoint else f"eval.checkpoint ({display_path(run.recipe_file)})"
        _checkpoint_of_run(run.path, str(checkpoint or recipe.eval.checkpoint), given_as)
    data_path = Path(data or recipe.data.path)
    if data is None:
        check_recipe_data(run.recipe_file, recipe.data.path, "pass --data DIR to evaluate on the dataset where it is now")
    manifest = load_manifest(data_path)
    check_task(manifest, data_path, recipe.data.task, trained=run.path)  # another task first: its accelerations differ
    recipe_file = display_path(run.recipe_file)  # the dataset lacks what the run's recipe or --split asks: say which
    check_holds(manifest, display_path(data_path), (recipe.data.acceleration, f"data.acceleration ({recipe_file})"),
                (split, "--split") if split else (recipe.eval.split, f"eval.split ({recipe_file})"))
    split = split or recipe.eval.split
    dataset = SliceDataset(data_path, split, recipe.data.acceleration, cache=False, task=recipe.data.task, trained=run.path)
    if len(dataset) == 0:
        raise SftkdError(f"{data_path}: split {split!r} has no slices")
    record = dataset_record(data_path, dataset.acceleration)  # read once: the checks and metrics.json use it
    torch_device = select_device(device, "--device")
    check_amp(amp, torch_device, "--amp")
    if exported is not None and amp != "off":
        raise SftkdError(f"{exported}: --amp applies to checkpoints, not to exported models")
    run_folder = _folder_identity(run.path)
    if exported is None:
        scored_model = _checkpoint_model(run, recipe, dataset, record, checkpoint, model_role, torch_device, amp,
                                         batch_size, console)
    else:
        scored_model = _exported_model(exported, run, torch_device, checkpoint, model_role, record)
    state, entry_role, which = scored_model.state, scored_model.role, scored_model.checkpoint
    torch_device, runner = scored_model.device, scored_model.runner
    out = results_folder(scored_model.out, state, record, data_path, amp, convention,
                         None if split == recipe.eval.split else split)
    check_output(out, run.path)
    if warning := amp_warning(amp, torch_device, "--amp"):  # once the work is sure to start
        console.print(warning, highlight=False, markup=False, soft_wrap=True)
    if exported is None and which in CHECKPOINT_NAMES:  # a run stopped early, or last.pt behind best.pt: as export says
        if note := stopped_early_note(run.path, training_record(run.path, recipe.train.epochs, which, state)):
            console.print(note, highlight=False, markup=False, soft_wrap=True)
    score_one, summarise_all = SCORERS[convention]
    label = scored_model.extra.get("run") or (run.path.name if entry_role == state["primary"]
                                              else f"{run.path.name}-{entry_role}")
    role = scored_role(state.get("role") or recipe.run.role, entry_role)
    with staged_outputs(out) as staged:
        with writing(out):
            recon = staged.add_h5(out / RECON_H5) if write_recon else None
            if recon is not None:
                recon.file.attrs.update(recon_attrs(
                    label, which, data_path, split, recipe.data.acceleration, dataset.task, convention, role=role,
                    model=scored_model.name, amp=amp, digest=scored_model.digest,
                    exported=None if exported is None else Path(scored_model.extra["exported"]["file"])))
        scored: list[VolumeScores] = []

        def take(name: str, volume: Volume) -> None:
            """Score a finished volume and write its reconstruction; then it is let go."""
            origin = dataset.provenance(name)
            volume["source_slice"] = origin.pop("source_slice")[volume["slices"]]
            scored.append(score_one(name, volume))
            if recon is not None:
                with writing(out):
                    write_recon_volume(recon, name, volume, origin)

        reconstruct_split(runner, dataset, torch_device, batch_size=batch_size, amp=amp, progress=progress,
                          convention=convention, each_volume=take)
        tables, summary, zf_summary = summarise_all(scored)
        metrics = {
            "format": METRICS_FORMAT,
            "sftkd_version": __version__,
            "run": label,
            "model": scored_model.name,
            "role": role,
            "method": recipe.distill.method if state.get("role") == "kd" else None,
            "teacher_role": state.get("teacher_role"),
            "init": state.get("init"),
            "params": scored_model.params,
            "checkpoint": which,
            CHECKPOINT_DIGEST: scored_model.digest,
            "epoch": state.get("epoch"),
            "dataset": {
                "path": str(data_path),
                "source": dataset.manifest.get("source"),
                "fingerprint": record["fingerprint"],
                "split": split,
                "acceleration": float(recipe.data.acceleration),
                "task": dataset.task,
                "image_size": record["image_size"],
                "volumes": len(scored),
                "slices": sum(v.slices for v in scored),
            },
            "latency_ms_per_slice": measure_latency(runner, dataset, torch_device, recipe.eval.latency_slices, amp),
            "amp": amp,
            "cuda_graphs": scored_model.graphed,
            "batch_size": batch_size,
            "device": str(torch_device),
            "threads": torch.get_num_threads(),
            "conventions": _conventions(convention, dataset.task, record),
            "metrics": summary,
            "zero_filled": zf_summary,
            **scored_model.extra,
        }
        if convention != "paper":  # paper files keep their keys as they were
            metrics["convention"] = convention
        metrics["output_dir"] = str(out)
        with writing(out):
            for name, rows in zip(SCORE_CSVS[convention], tables, strict=True):
                staged.add(out / name, _csv_text(rows).encode())
            staged.add(out / METRICS_JSON, json_text(metrics).encode())  # renamed last
        if scored_model.digest is not None:  # the last moment before the renames: scores of what is there now, or none
            check_still_scored(run.path, run_folder, scored_model.file, scored_model.digest)
        check_same_dataset(data_path, record["fingerprint"])
        with writing(out):
            staged.commit()
    if not write_recon:  # a recon.h5 of an earlier evaluation would sit beside these scores as theirs
        (out / RECON_H5).unlink(missing_ok=True)
    return metrics


def _folder_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder: tells the run folder from another put in its place."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def check_still_scored(run_path: Path, folder: tuple[int, int] | None, checkpoint: Path, digest: str) -> None:
    """Refuse, in one line, to file scores under a run that changed while they were computed:
    its folder replaced, or the scored checkpoint (sha256 `digest`) resumed past or trained anew
    (`train --resume`, `--force`) by another process; evaluate takes no lock on the run."""
    if _folder_identity(run_path) != folder:
        raise SftkdError(f"{display_path(run_path)}: the run folder was replaced while evaluate scored it; "
                         f"nothing written: run sftkd evaluate {display_path(run_path)} again")
    now = checkpoint_digest(checkpoint)
    if now != digest:
        busy = RunDir(run_path).busy()
        how = "removed" if now is None else f"replaced ({'the run is training' if busy else 'the run was resumed or trained anew'})"
        raise SftkdError(f"{display_path(checkpoint)}: {how} while evaluate scored it; nothing written: "
                         f"run sftkd evaluate {display_path(run_path)} again to score the checkpoint it holds now")


def check_same_dataset(data_path: Path, fingerprint: str) -> None:
    """Refuse, in one line, scores of a dataset re-prepared (`prepare-data --force`) while evaluate
    read it: its volumes are opened one by one, so the slices may mix the old and the new data."""
    from sftkd_cli.data.dataset import dataset_fingerprint

    try:
        now = dataset_fingerprint(data_path)
    except SftkdError:  # prepare-data removes the manifest while it installs the new files
        now = None
    if now != fingerprint:
        shown = "unreadable" if now is None else now[:12]
        raise SftkdError(f"{display_path(data_path / MANIFEST)}: the dataset changed while evaluate read it "
                         f"(fingerprint {fingerprint[:12]}, now {shown}: prepared again meanwhile); nothing written: "
                         "run sftkd evaluate again")


def scored_checkpoint(folder: Path, info: dict[str, Any]) -> Path | None:
    """The checkpoint file that the metrics.json `info` in results folder `folder` (RUN or an
    eval-* folder within it) scored: best or last of that run, or the file it names; None for
    an exported model's scores or a folder in no run."""
    which = info.get("checkpoint")
    if info.get("exported") is not None or not isinstance(which, str):
        return None
    if which not in CHECKPOINT_NAMES:
        return Path(which)
    run, _ = eval_chain(folder)
    return RunDir(run).checkpoint(which) if (run / RECIPE_YAML).is_file() else None


def scores_checkpoint(info: dict[str, Any], checkpoint: Path) -> bool | None:
    """Whether the metrics.json `info` holds the scores of `checkpoint` as the file is now (its
    recorded sha256 against the file's); None when that cannot be told: no digest recorded (a
    metrics.json of an sftkd before it, or an exported model's) or no such file now."""
    digest = info.get(CHECKPOINT_DIGEST)
    now = checkpoint_digest(checkpoint) if isinstance(digest, str) and checkpoint.is_file() else None
    return None if now is None else now == digest


def _conventions(convention: str, task: str, record: dict[str, Any]) -> dict[str, str]:
    """metrics.json's "conventions": how each metric, the aggregation and the input were scored."""
    complex_values = record.get("acquisition", {}).get("values") == "complex"
    if convention == "fastmri":
        found = {**FASTMRI_CONVENTIONS, "input": INPUT_CONVENTIONS[task]}
    else:
        found = {**CONVENTIONS, "aggregation": "mean and population std (ddof 0) over slices; volume_mean = mean over volumes of per-volume values (PSNR and NMSE on the whole volume; the reference evaluate.py's mean)",
                 "input": INPUT_CONVENTIONS[task]}
    if complex_values:
        found["input"] = "zero_filled = the magnitude of the network input IFFT(masked k-space) (complex)"
        if convention == "paper":
            found["images"] = "magnitudes of the complex reconstruction and target, at the stored size"
    elif convention == "paper":
        found["images"] = "the whole stored (H, W) image, including any zero padding prepare-data --size added"
    return found


def output_dir(run_path: Path, state: dict[str, Any], entry_role: str) -> Path:
    """The run dir for its primary model; `RUN/eval-<model>/` for another (e.g. an SFT run's student)."""
    return run_path if entry_role == state["primary"] else run_path / f"{EVAL_PREFIX}{entry_role}"


def scored_role(run_role: str, entry: str) -> str:
    """Role of the evaluated model: an SFT run holds the sft-teacher and the sft-student."""
    if run_role == "sft":
        return SFT_STUDENT if entry == "student" else SFT_TEACHER
    return run_role
