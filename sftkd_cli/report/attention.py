"""Fig. 6 of the paper: per cascade, |A_student - A_teacher| of the AT attention maps of a
distilled student and its own teacher on one slice, one row per student.

Unlike the other figures (`sftkd_cli.report.figures`, which read files only), this one runs
the two networks of each run on a slice, so it loads checkpoints and torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftkd_cli.choices import BEST
from sftkd_cli.distill.catalog import default_taps
from sftkd_cli.data.format import check_volume_slice
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import display_path
from sftkd_cli.report.compare import RunResult
from sftkd_cli.report.figures import FigureOutput, new_figure, default_slice, heading, save_figure
from sftkd_cli.run_files import RECIPE_YAML, RECON_H5

#: the compare option naming the figure's VOLUME:SLICE, in errors about that slice
ATTENTION_SLICE = "--attention-slice"

def attention_maps(features) -> np.ndarray:
    """AT attention maps (B, H, W) of feature maps (B, C, H, W), as the AT loss compares them.

    `AttentionTransfer.attention` with p=2 and per-sample normalisation: the channel mean of the
    squared activations, L2-normalised over the H*W pixels of each sample (a channel sum gives
    the same map: the normalisation cancels the factor C). The "batch" normalisation of the
    reference is not used here: over a batch of one slice it would make every pixel 1.
    """
    import torch

    from sftkd_cli.distill.methods import AttentionTransfer

    if features.ndim != 4:
        raise SftkdError(f"attention maps: expected features (B, C, H, W), got shape {tuple(features.shape)}")
    b, c, h, w = features.shape
    at = AttentionTransfer((c,), (c,), p=2.0, normalize="sample")
    with torch.no_grad():
        return at.attention(features.float()).reshape(b, h, w).cpu().numpy()


def attention_residues(student, teacher, zf, kspace, mask) -> dict[int, np.ndarray]:
    """{cascade (1-based): |A_student - A_teacher| (H, W)} on one slice (a torch batch of one).

    The taps are `distill.catalog.default_taps("at", ...)`: the student's last hidden conv against
    the teacher's second-to-last hidden conv of the same cascade (what AT distils), whatever
    method the student was distilled with, so that students of different methods compare alike.
    Cascades where a network has no such tap are left out, as in distillation.
    """
    import torch

    s_taps, t_taps = default_taps("at", student, teacher)
    if not s_taps:
        raise SftkdError(f"attention residues: {student.name} and {teacher.name} share no AT feature taps")
    with torch.no_grad():
        _, s_feats = student.eval()(zf, kspace, mask, taps=s_taps)
        _, t_feats = teacher.eval()(zf, kspace, mask, taps=t_taps)
    return {student.split_tap(s)[0]: np.abs(attention_maps(s_feats[s])[0] - attention_maps(t_feats[t])[0])
            for s, t in zip(s_taps, t_taps)}


def attention_residue_figure(
    residues: Mapping[str, Mapping[int, np.ndarray]], stem: Path, title: str = "", context: str = ""
) -> FigureOutput:
    """Fig. 6: one row per student (label -> {cascade: residue map}), one column per cascade.

    One colour scale for every panel (0 .. the largest residue), the panel's mean residue printed
    in it. `data[label]` holds the cascades ("cascades"), the drawn arrays ("maps") and the
    printed means ("means", read back from the drawn arrays); `data["vmax"]` the top of the scale.
    """
    if not residues:
        raise SftkdError("attention residues: no students to show")
    cascades = sorted(next(iter(residues.values())))
    if not cascades or any(sorted(maps) != cascades for maps in residues.values()):
        raise SftkdError(f"attention residues: every student needs the same cascades, got {[sorted(m) for m in residues.values()]}")
    vmax = max([float(np.max(m)) for maps in residues.values() for m in maps.values()] + [1e-12])
    figure = new_figure(max(4.5, 1.7 * len(cascades) + 1.2), max(3.0, 1.8 * len(residues) + 0.9))  # room for labels
    axes = figure.subplots(len(residues), len(cascades), squeeze=False)
    data: dict[str, Any] = {"vmax": vmax}
    drawn = None
    for i, (label, maps) in enumerate(residues.items()):
        data[label] = {"cascades": cascades, "maps": [], "means": []}
        for j, cascade in enumerate(cascades):
            residue, ax = maps[cascade], axes[i][j]
            drawn = ax.imshow(np.asarray(residue, dtype=np.float32), cmap="inferno", vmin=0.0, vmax=vmax, interpolation="nearest")
            shown = np.asarray(drawn.get_array(), dtype=np.float64)
            mean = float(shown.mean())
            data[label]["maps"].append(shown)
            data[label]["means"].append(mean)
            ax.text(0.03, 0.04, f"mean {mean:.2e}", transform=ax.transAxes, color="white", fontsize=7,
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"cascade {cascade}", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    bar = figure.colorbar(drawn, ax=list(axes.flat), shrink=0.8)
    bar.set_label("|A_student - A_teacher|\n[unitless, maps L2-normalised]", fontsize=8)
    # wrapped to the figure's width: with few cascades the figure is narrower than the heading
    figure.suptitle(heading("AT attention-map residues to the teacher per cascade", title, context), fontsize=10, wrap=True)
    return FigureOutput(save_figure(figure, stem), data, figure)


def _teacher_run(run: Path, state: Mapping[str, Any]) -> Path:
    """The teacher a distilled run learnt from: its checkpoint's teacher_run (else its recipe's).

    That path was written relative to the directory training ran in, so a relative one is looked
    for as the run's sibling of the same name first (the plan layout runs/<plan>/*), then from
    here. When the checkpoint records the teacher checkpoint's sha256 (`teacher_sha256`), only a
    run whose best checkpoint has it is taken: another teacher of the same name (a copied or
    retrained one) would give residues to the wrong maps.
    """
    from sftkd_cli.checkpoints import checkpoint_digest
    from sftkd_cli.runs import open_run

    recorded = state.get("teacher_run") or open_run(run).load_recipe().distill.teacher_run
    if not recorded:
        raise SftkdError(f"{run}: not a distilled run (no teacher_run); the attention residues compare a KD student with its teacher")
    path = Path(str(recorded))
    candidates = [path] if path.is_absolute() else [run.parent / path.name, path]
    candidates = list(dict.fromkeys(candidates))
    digest = state.get("teacher_sha256")
    found = [c for c in candidates if (has := checkpoint_digest(c)) is not None and has == (digest or has)]
    if not found:
        what = "found with the checkpoint it learnt from (retrained or replaced?)" if digest else "found"
        raise SftkdError(f"{run}: its teacher run {recorded} is not {what} (looked in "
                         f"{', '.join(map(str, candidates))})")
    return found[0]


def _load_pair(run: Path, checkpoint: str = BEST):
    """(student, teacher) models of a distilled run; an SFT run's teacher is its 'teacher' entry."""
    from sftkd_cli.checkpoints import (
        build_from_entry,
        load_model,
        model_entry,
        resolve_checkpoint,
    )
    from sftkd_cli.runs import load_checkpoint

    student, state = load_model(run, which=checkpoint)
    if state.get("role") != "kd":
        raise SftkdError(f"{run}: role {state.get('role')!r} is not a distilled run (kd); expected a Std-KD or SFT-KD run")
    teacher_run = _teacher_run(run, state)
    path = resolve_checkpoint(teacher_run, BEST)
    t_state = load_checkpoint(path)
    _, entry = model_entry(t_state, "teacher" if t_state.get("role") == "sft" else None, path)
    return student, build_from_entry(entry, path)


def distilled_runs(results: Sequence[RunResult]) -> dict[str, Path]:
    """The distilled runs (role kd) among compared results, name -> run folder as given: the
    students `compare --attention` draws; none at all is refused."""
    students = {run.name: Path(run.label) for run in results if run.role == "kd"}
    if not students:
        raise SftkdError("--attention: no distilled run (role kd) among the compared runs")
    return students


def figure_data(runs: Mapping[str, Path], dataset: str | Path | None) -> tuple[Path, float]:
    """The dataset the figure reads (`dataset`, else the first run's recipe's data.path, which must
    be a folder from here) and the first run's acceleration."""
    from sftkd_cli.runs import check_recipe_data, open_run

    if not runs:
        raise SftkdError("attention residues: no distilled runs to show")
    first = Path(next(iter(runs.values())))
    recipe = open_run(first).load_recipe()
    if dataset is None:
        check_recipe_data(first / RECIPE_YAML, recipe.data.path, "pass the dataset where it is now (compare --attention-data DIR)")
    return Path(dataset if dataset is not None else recipe.data.path), float(recipe.data.acceleration)


def check_attention_slice(runs: Mapping[str, Path], dataset: Path | None, volume: str | None, index: int | None) -> None:
    """`compare --attention`'s dataset, and the --attention-slice VOLUME:SLICE when given, checked
    before compare tabulates or writes anything: a slice the dataset lacks is one error line, not a
    failure after the table and --out were written."""
    from sftkd_cli.data.dataset import check_acceleration, load_manifest

    root, acceleration = figure_data(runs, dataset)
    manifest = load_manifest(root)
    check_acceleration(manifest, root, acceleration)
    if volume is not None and index is not None:
        check_volume_slice(manifest, display_path(root), volume, index, (ATTENTION_SLICE, ATTENTION_SLICE))


def attention_residues_from_runs(
    runs: Mapping[str, Path],
    stem: Path,
    dataset: str | Path | None = None,
    acceleration: float | None = None,
    volume: str | None = None,
    index: int | None = None,
    split: str = "val",
    checkpoint: str = BEST,
    title: str = "",
    context: str = "",
    keys: tuple[str, str] = (ATTENTION_SLICE, ATTENTION_SLICE),
) -> FigureOutput:
    """Fig. 6 from distilled run directories (label -> run), each student against its own teacher.

    Dataset and acceleration default to the first run's recipe; the slice to the grid's
    (middle slice of the middle volume of the first run's recon.h5), else the middle slice of
    the middle volume of `split`. Runs on the CPU: one slice through two models per student.
    `keys` name where the volume and slice came from in an error about them.
    """
    import torch

    from sftkd_cli.data.dataset import load_manifest, load_volume, split_volumes

    runs = {label: Path(run) for label, run in runs.items()}
    dataset, recorded = figure_data(runs, dataset)
    first = next(iter(runs.values()))
    acceleration = float(acceleration if acceleration is not None else recorded)
    if volume is None or index is None:
        if (first / RECON_H5).is_file():
            volume, index = default_slice(first / RECON_H5, volume, index)
        else:
            manifest = load_manifest(dataset)
            names = split_volumes(manifest, dataset, split)
            volume = volume if volume is not None else names[len(names) // 2]
            if volume not in manifest["volumes"]:
                raise SftkdError(f"{dataset}: no volume {volume!r}")
            index = index if index is not None else int(manifest["volumes"][volume]["slices"]) // 2
    check_volume_slice(load_manifest(dataset), display_path(dataset), volume, index, keys)
    arrays = load_volume(dataset, volume, acceleration)
    zf = np.asarray(arrays["zf"][index])
    zf = np.stack([zf.real, zf.imag]) if np.iscomplexobj(zf) else zf[None]  # complex data: real, imaginary channels
    zf = torch.from_numpy(zf.astype(np.float32))[None]
    kspace = torch.from_numpy(np.asarray(arrays["kspace"][index], dtype=np.complex64))[None, None]
    mask = torch.from_numpy(np.asarray(arrays["mask"], dtype=np.float32))[None, None]
    residues = {}
    for label, run in runs.items():
        student, teacher = _load_pair(run, checkpoint)
        residues[label] = attention_residues(student, teacher, zf, kspace, mask)
    where = ", ".join(part for part in (context, f"{volume}, slice {index}, {acceleration:g}x") if part)
    return attention_residue_figure(residues, stem, title, where)
