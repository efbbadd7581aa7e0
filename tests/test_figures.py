"""Figures: files are written (PNG and PDF, non-empty) and what is drawn equals the inputs.

Oracles: box statistics computed here with numpy (quartiles, whiskers at the furthest points
within 1.5 IQR), line points and image arrays compared with the values written to disk,
attention maps computed by hand (sum over channels of squares, divided by the L2 norm).
"""

from __future__ import annotations

import csv
import json
import shutil

import h5py

import numpy as np
import pytest
import torch

from sftkd_cli.errors import SftkdError
from sftkd_cli.report.attention import (
    attention_maps,
    attention_residue_figure,
    attention_residues,
    attention_residues_from_runs,
)
from sftkd_cli.report.figures import (
    box_plots,
    box_plots_from_runs,
    default_box,
    read_history,
    reconstruction_grid,
    reconstruction_grid_from_runs,
    validation_curves_from_runs,
)

torch.set_num_threads(1)


def _written(paths):
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 1000
    png, pdf = sorted(paths, key=lambda p: p.suffix, reverse=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"


def _box_oracle(values: np.ndarray) -> dict[str, float]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"median": median, "q1": q1, "q3": q3, "whisker_low": inside.min(), "whisker_high": inside.max()}


def _write_per_slice(folder, psnr, ssim):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "per_slice.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["volume", "slice", "PSNR", "SSIM", "NMSE"])
        for i, (p, s) in enumerate(zip(psnr, ssim)):
            writer.writerow(["v0", i, repr(float(p)), repr(float(s)), 0.1])
    return folder


def test_box_plots_draw_the_csv_quartiles_and_whiskers(tmp_path):
    rng = np.random.default_rng(0)
    columns = {
        "teacher": (rng.normal(30, 1, 23), rng.uniform(0.8, 0.9, 23)),
        "student": (np.r_[rng.normal(28, 1, 20), 10.0], rng.uniform(0.7, 0.9, 21)),  # 10.0: an outlier
    }
    runs = {name: _write_per_slice(tmp_path / name, p, s) for name, (p, s) in columns.items()}
    out = box_plots_from_runs(runs, tmp_path / "fig" / "box")
    _written(out.paths)
    for name, (psnr, ssim) in columns.items():
        for metric, values in (("PSNR", psnr), ("SSIM", ssim)):
            drawn = out.data[metric][name]
            for key, expected in _box_oracle(values).items():
                assert drawn[key] == pytest.approx(expected, abs=1e-9), (name, metric, key)
    assert out.data["PSNR"]["student"]["outliers"] == [10.0]


def test_box_plots_name_a_missing_column(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "per_slice.csv").write_text("volume,slice,PSNR\nv,0,30\n")
    with pytest.raises(SftkdError, match="no column 'SSIM'"):
        box_plots_from_runs({"run": folder}, tmp_path / "box")


def test_validation_curves_draw_each_history(tmp_path):
    histories = {"teacher": [0.05, 0.04, 0.03], "sft": [0.06, 0.035, 0.031, 0.029]}
    runs = {}
    for name, values in histories.items():
        run = tmp_path / name
        run.mkdir()
        lines = [json.dumps({"epoch": i + 1, "train_loss": 1.0, "val_l1": v}) for i, v in enumerate(values)]
        (run / "history.jsonl").write_text("\n".join(lines) + "\n")
        runs[name] = run
    out = validation_curves_from_runs(runs, tmp_path / "curves")
    _written(out.paths)
    for name, values in histories.items():
        x, y = out.data[name]
        np.testing.assert_array_equal(x, np.arange(1, len(values) + 1))
        np.testing.assert_array_equal(y, values)


def test_history_reader_stops_at_a_cut_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1, "val_l1": 0.5}\n{"epoch": 2, "val_l1": NaN}\n{"epoch": 3, "val_l1": 0.25}\n{"epo')
    epochs, values = read_history(path)
    assert epochs.tolist() == [1, 3] and values.tolist() == [0.5, 0.25]


def test_grid_panels_equal_the_inputs(tmp_path):
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 1, (24, 20)).astype(np.float32)
    zf = rng.uniform(0, 1, (24, 20)).astype(np.float32)
    recons = {"teacher": target + 0.01, "Std-KD": target * 0.9, "SFT-KD": np.clip(target - 0.02, 0, 1)}
    out = reconstruction_grid(target, zf, recons, tmp_path / "grid", box=(2, 3, 8, 6))
    _written(out.paths)
    np.testing.assert_array_equal(out.data["target"], target)
    np.testing.assert_array_equal(out.data["inset"], target[2:10, 3:9])
    np.testing.assert_array_equal(out.data["ZF"], zf)
    for label, image in recons.items():
        np.testing.assert_array_equal(out.data[label], image)
        np.testing.assert_allclose(out.data[f"{label} residue"], np.abs(image - target), atol=1e-7)


def test_grid_draws_a_diverged_model_with_nan_pixels(tmp_path):
    """A NaN reconstruction (a diverged run) still gets its figure, at the image scale."""
    target = np.random.default_rng(2).uniform(0, 1, (16, 16)).astype(np.float32)
    diverged = target.copy()
    diverged[3, 4] = np.nan
    out = reconstruction_grid(target, target, {"teacher": target + 0.01, "diverged": diverged}, tmp_path / "grid")
    _written(out.paths)
    assert out.data["error_factor"] == 1.0 and out.data["error_vmax"] == pytest.approx(float(target.max()))


def test_grid_refuses_a_box_outside_the_image(tmp_path):
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(SftkdError, match="inset box"):
        reconstruction_grid(image, image, {"m": image}, tmp_path / "g", box=(4, 4, 8, 2))
    assert default_box((30, 24)) == (11, 8, 8, 8)  # side 24 // 3, centred


def test_grid_from_runs_reads_recon_and_dataset(tiny_dataset, tmp_path):
    from sftkd_cli.data.dataset import load_volume

    arrays = load_volume(tiny_dataset, "vol1", 4.0)
    slices = np.arange(arrays["image"].shape[0])
    runs = {}
    for name, scale in (("teacher", 0.9), ("SFT-KD", 0.95)):
        run = tmp_path / name
        run.mkdir()
        with h5py.File(run / "recon.h5", "w") as handle:
            handle.create_dataset("vol1", data=arrays["image"] * scale)
            handle["vol1"].attrs["slices"] = slices
        runs[name] = run
    out = reconstruction_grid_from_runs(tiny_dataset, 4.0, runs, tmp_path / "grid", volume="vol1", index=1)
    _written(out.paths)
    np.testing.assert_array_equal(out.data["target"], arrays["image"][1])
    np.testing.assert_array_equal(out.data["ZF"], arrays["zf"][1])
    np.testing.assert_allclose(out.data["teacher"], arrays["image"][1] * 0.9, rtol=1e-6)
    default = reconstruction_grid_from_runs(tiny_dataset, 4.0, runs, tmp_path / "grid2")
    middle = len(slices) // 2
    np.testing.assert_array_equal(default.data["target"], arrays["image"][middle])
    with pytest.raises(SftkdError, match="no slice 99"):
        reconstruction_grid_from_runs(tiny_dataset, 4.0, runs, tmp_path / "grid3", volume="vol1", index=99)


# ----------------------------------------------------------------------------- attention residues (Fig. 6)


def test_attention_maps_match_a_hand_computed_map():
    features = torch.tensor([
        [[[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]],  # squares summed: [[2, 4], [4, 2]], norm sqrt(40)
        [[[3.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -4.0]]],  # [[9, 0], [0, 16]], norm sqrt(337)
    ])
    expected = np.array([[[2, 4], [4, 2]] / np.sqrt(40.0), [[9, 0], [0, 16]] / np.sqrt(337.0)])
    np.testing.assert_allclose(attention_maps(features), expected, rtol=1e-6)
    with pytest.raises(SftkdError, match="expected features"):
        attention_maps(torch.zeros(2, 3, 4))


def _pair(seed: int = 0):
    from sftkd_cli.models import build_model

    torch.manual_seed(seed)
    return build_model("D2C2"), build_model("D3C2")


def _numpy_attention(feature: torch.Tensor) -> np.ndarray:
    squares = (feature[0].double().numpy() ** 2).sum(axis=0)
    return squares / np.sqrt((squares**2).sum())


def test_attention_residues_per_cascade_at_the_default_at_taps():
    from sftkd_cli.training.kd import default_taps

    student, teacher = _pair()
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 1, (16, 16)).astype(np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[::2] = 1
    kspace = torch.from_numpy((np.fft.fft2(image, norm="ortho") * mask).astype(np.complex64))[None, None]
    zf, mask_t = torch.from_numpy(image)[None, None], torch.from_numpy(mask)[None, None]
    residues = attention_residues(student, teacher, zf, kspace, mask_t)
    s_taps, t_taps = default_taps("at", student, teacher)
    with torch.no_grad():
        _, s_feats = student(zf, kspace, mask_t, taps=s_taps)
        _, t_feats = teacher(zf, kspace, mask_t, taps=t_taps)
    assert list(residues) == [1, 2] and [int(tap[1]) for tap in s_taps] == [1, 2]
    for residue, s, t in zip(residues.values(), s_taps, t_taps):
        assert residue.shape == (16, 16)
        np.testing.assert_allclose(residue, np.abs(_numpy_attention(s_feats[s]) - _numpy_attention(t_feats[t])), atol=1e-6)
    assert all(np.abs(r).sum() > 0 for r in residues.values())


def test_attention_figure_writes_files_and_draws_the_residues(tmp_path):
    rng = np.random.default_rng(4)
    residues = {"Std-KD (at)": {c: rng.uniform(0, 0.02, (12, 10)) for c in (1, 2, 4)},
                "SFT-KD (at)": {c: rng.uniform(0, 0.01, (12, 10)) for c in (4, 2, 1)}}
    out = attention_residue_figure(residues, tmp_path / "fig" / "attention")
    _written(out.paths)
    assert out.data["vmax"] == pytest.approx(max(r.max() for maps in residues.values() for r in maps.values()), rel=1e-6)
    for label, maps in residues.items():
        assert out.data[label]["cascades"] == [1, 2, 4]
        for drawn, mean, cascade in zip(out.data[label]["maps"], out.data[label]["means"], [1, 2, 4]):
            np.testing.assert_allclose(drawn, maps[cascade], rtol=1e-6)
            assert mean == pytest.approx(maps[cascade].mean(), rel=1e-6)
    with pytest.raises(SftkdError, match="same cascades"):
        attention_residue_figure({"a": {1: np.zeros((2, 2))}, "b": {1: np.zeros((2, 2)), 2: np.zeros((2, 2))}}, tmp_path / "bad")


def _write_run(folder, dataset, role, models, teacher_run=None):
    from sftkd_cli.config import dump_recipe, load_recipe
    from sftkd_cli.runs import CHECKPOINT_FORMAT
    from sftkd_cli.training.objectives import model_record

    (folder / "checkpoints").mkdir(parents=True)
    (folder / "recipe.yaml").write_text(dump_recipe(load_recipe(None, [f"data.path={dataset}", "data.acceleration=4"])))
    state = {"format": CHECKPOINT_FORMAT, "role": role, "primary": next(iter(models)),
             "models": {name: model_record(model) for name, model in models.items()}}
    if teacher_run is not None:
        state["teacher_run"] = str(teacher_run)
    torch.save(state, folder / "checkpoints" / "best.pt")
    return folder


def test_attention_takes_the_teacher_the_student_learnt_from(tiny_dataset, tmp_path, monkeypatch):
    """A relative teacher_run is the run's sibling before a same-named folder here; with the
    teacher checkpoint's sha256 recorded, a retrained (replaced) teacher is refused."""
    import hashlib

    from sftkd_cli.data.dataset import load_volume

    student, teacher = _pair(0)
    _, other = _pair(1)
    runs = tmp_path / "plan" / "runs"
    _write_run(runs / "teacher", tiny_dataset, "teacher", {"model": teacher})
    _write_run(tmp_path / "here" / "runs" / "teacher", tiny_dataset, "teacher", {"model": other})
    kd = _write_run(runs / "kd", tiny_dataset, "kd", {"model": student}, "runs/teacher")
    monkeypatch.chdir(tmp_path / "here")
    out = attention_residues_from_runs({"KD": kd}, tmp_path / "a")
    arrays = load_volume(tiny_dataset, "vol1", 4.0)
    index = arrays["image"].shape[0] // 2
    inputs = (torch.from_numpy(arrays["zf"][index])[None, None], torch.from_numpy(arrays["kspace"][index])[None, None],
              torch.from_numpy(arrays["mask"])[None, None])
    for drawn, expected in zip(out.data["KD"]["maps"], attention_residues(student, teacher, *inputs).values()):
        np.testing.assert_allclose(drawn, expected, atol=1e-6)

    best = kd / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=False)
    state["teacher_sha256"] = hashlib.sha256((runs / "teacher" / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    torch.save(state, best)
    assert attention_residues_from_runs({"KD": kd}, tmp_path / "b").data["KD"]["means"] == out.data["KD"]["means"]
    shutil.rmtree(runs / "teacher")
    _write_run(runs / "teacher", tiny_dataset, "teacher", {"model": other})  # retrained since
    with pytest.raises(SftkdError, match="not found with the checkpoint it learnt from"):
        attention_residues_from_runs({"KD": kd}, tmp_path / "c")


def test_attention_residues_from_runs_use_each_students_own_teacher(tiny_dataset, tmp_path):
    from sftkd_cli.data.dataset import load_volume

    runs = tmp_path / "runs"
    std_student, teacher = _pair(0)
    sft_student, sft_teacher = _pair(1)
    sft_branch, _ = _pair(2)  # the SFT run's own student entry: must not be used as the teacher
    _write_run(runs / "teacher", tiny_dataset, "teacher", {"model": teacher})
    _write_run(runs / "sft", tiny_dataset, "sft", {"teacher": sft_teacher, "student": sft_branch})
    students = {
        "Std-KD": _write_run(runs / "std-kd-at", tiny_dataset, "kd", {"model": std_student}, runs / "teacher"),
        # recorded relative to another working directory: found as the run's sibling
        "SFT-KD": _write_run(runs / "sft-kd-at", tiny_dataset, "kd", {"model": sft_student}, "elsewhere/runs/sft"),
    }
    out = attention_residues_from_runs(students, tmp_path / "attention")
    _written(out.paths)
    arrays = load_volume(tiny_dataset, "vol1", 4.0)  # the only validation volume; its middle slice
    index = arrays["image"].shape[0] // 2
    inputs = (torch.from_numpy(arrays["zf"][index])[None, None], torch.from_numpy(arrays["kspace"][index])[None, None],
              torch.from_numpy(arrays["mask"])[None, None])
    for label, (student, its_teacher) in {"Std-KD": (std_student, teacher), "SFT-KD": (sft_student, sft_teacher)}.items():
        expected_maps = attention_residues(student, its_teacher, *inputs)
        assert out.data[label]["cascades"] == sorted(expected_maps) == [1, 2]
        for drawn, expected in zip(out.data[label]["maps"], expected_maps.values()):
            np.testing.assert_allclose(drawn, expected, atol=1e-6)
    with pytest.raises(SftkdError, match="not a distilled run"):
        attention_residues_from_runs({"teacher": runs / "teacher"}, tmp_path / "bad")
    with pytest.raises(SftkdError, match="99 is not a slice of volume"):
        attention_residues_from_runs(students, tmp_path / "bad", volume="vol1", index=99)



# ----------------------------------------------------------------------------- labels, insets, error scale


def _image_axes(figure):
    """The figure's top-level panels that show an image, in drawing order (not insets nor colourbars)."""
    return [ax for ax in figure.axes if ax.get_images() and ax.get_visible() and ax.get_label() != "<colorbar>"
            and not any(ax in other.child_axes for other in figure.axes)]


def test_box_plots_label_units_and_title_each_panel_with_the_slice_count(tmp_path):
    rng = np.random.default_rng(5)
    runs = {"teacher": {"PSNR": rng.normal(30, 1, 24), "SSIM": rng.uniform(0.8, 0.9, 24)},
            "student": {"PSNR": rng.normal(28, 1, 21), "SSIM": rng.uniform(0.7, 0.9, 21)}}
    out = box_plots(runs, tmp_path / "box", context="demo")
    _written(out.paths)
    psnr_ax, ssim_ax = out.figure.axes
    assert psnr_ax.get_ylabel() == "PSNR [dB]" and ssim_ax.get_ylabel() == "SSIM [unitless]"
    assert psnr_ax.get_title() == "Per-slice PSNR [dB] (21-24 slices)"
    assert ssim_ax.get_title() == "Per-slice SSIM [unitless] (21-24 slices)"
    assert psnr_ax.get_xlabel() == "model"
    assert out.figure.get_suptitle() == "Per-slice PSNR and SSIM of each model (demo)"
    same = box_plots({"a": {"NMSE": np.ones(3)}}, tmp_path / "nmse", metrics=("NMSE",), title="My heading")
    assert same.figure.axes[0].get_title() == "Per-slice NMSE [unitless] (3 slices)"
    assert same.figure.get_suptitle() == "My heading"


def test_validation_curves_label_epochs_and_units(tmp_path):
    run = tmp_path / "teacher"
    run.mkdir()
    rows = [{"epoch": i, "val_l1": 0.1 / i, "val_psnr": 25.0 + i} for i in (1, 2, 3)]
    (run / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    l1 = validation_curves_from_runs({"teacher": run}, tmp_path / "l1", context="demo")
    _written(l1.paths)
    (ax,) = l1.figure.axes
    assert ax.get_xlabel() == "epoch"
    assert ax.get_ylabel() == "validation L1 [mean |error|, volume max = 1]"
    assert ax.get_title() == "Validation L1 per epoch (demo)"
    (ax,) = validation_curves_from_runs({"teacher": run}, tmp_path / "psnr", key="val_psnr").figure.axes
    assert (ax.get_ylabel(), ax.get_title()) == ("validation PSNR [dB]", "Validation PSNR per epoch")


def _grid_inputs():
    """A 16x16 target, its ZF and three reconstructions whose errors differ in size (one with a hot pixel)."""
    rng = np.random.default_rng(6)
    target = rng.uniform(0.2, 1.0, (16, 16)).astype(np.float32)
    zf = rng.uniform(0, 1, (16, 16)).astype(np.float32)
    hot = target + rng.normal(0, 0.02, target.shape).astype(np.float32)
    hot[0, 0] += 0.8  # one extreme pixel must not set the scale
    recons = {"teacher": target + rng.normal(0, 0.01, target.shape).astype(np.float32),
              "Std-KD": hot, "SFT-KD": target + rng.normal(0, 0.015, target.shape).astype(np.float32)}
    return target, zf, recons


def test_grid_has_one_inset_per_image_panel_outlined_where_it_comes_from(tmp_path):
    from matplotlib.patches import Rectangle

    target, zf, recons = _grid_inputs()
    box = (3, 5, 6, 4)
    out = reconstruction_grid(target, zf, recons, tmp_path / "grid", box=box, context="vol1, slice 2, 4x")
    _written(out.paths)
    shown = {"target": target, "ZF": zf, **recons}
    panels = [ax for ax in _image_axes(out.figure) if ax.get_title() in shown]
    assert [ax.get_title() for ax in panels] == list(shown)
    for ax in panels:
        assert len(ax.child_axes) == 1, ax.get_title()
        np.testing.assert_array_equal(ax.child_axes[0].get_images()[0].get_array(), shown[ax.get_title()][3:9, 5:9])
        (outline,) = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert (outline.get_xy(), outline.get_width(), outline.get_height()) == ((4.5, 2.5), 4, 6)
    errors = [ax for ax in _image_axes(out.figure) if ax.get_title().startswith("|")]
    assert len(errors) == 3 and all(not ax.child_axes for ax in errors)
    assert set(out.data["insets"]) == set(shown)
    assert out.figure.get_suptitle().endswith("(vol1, slice 2, 4x)") and "|error|" in out.figure.get_suptitle()


def test_grid_error_maps_share_one_scale_covering_the_pooled_99th_percentile(tmp_path):
    target, zf, recons = _grid_inputs()
    out = reconstruction_grid(target, zf, recons, tmp_path / "grid")
    residues = [np.abs(image - target) for image in recons.values()]
    expected = float(np.percentile(np.concatenate([r.ravel() for r in residues]), 99))
    assert expected < max(float(np.percentile(r, 99.5)) for r in residues)  # not the old per-model maximum
    drawn = [ax.get_images()[0] for ax in _image_axes(out.figure) if ax.get_title().startswith("|")]
    assert len(drawn) == 3 and all(image.norm is drawn[0].norm for image in drawn)
    assert out.data["error_percentile"] == pytest.approx(expected, rel=1e-6)
    factor = out.data["error_factor"]
    assert drawn[0].norm.vmin == 0.0 and drawn[0].norm.vmax == pytest.approx(target.max() / factor, rel=1e-6)
    assert drawn[0].norm.vmax >= expected  # the scale covers the 99th percentile
    assert out.data["error_vmax"] == drawn[0].norm.vmax
    assert factor >= 1 and factor <= target.max() / expected < factor * 2.5
    (colourbar,) = [image.colorbar for image in drawn if image.colorbar is not None]  # one, for all error maps
    label = colourbar.ax.get_ylabel()
    assert f"|error| ×{factor:g}" in label and f"{target.max() / factor:.2g}" in label and f"P99 = {expected:.2g}" in label
    cropped = reconstruction_grid(target, zf, recons, tmp_path / "crop", box=(4, 4, 8, 8), crop_errors=True)
    crops = [r[4:12, 4:12] for r in residues]
    assert cropped.data["error_percentile"] == pytest.approx(float(np.percentile(np.concatenate([c.ravel() for c in crops]), 99)), rel=1e-6)
    for label, crop in zip(recons, crops):
        np.testing.assert_allclose(cropped.data[f"{label} residue"], crop, atol=1e-7)


@pytest.mark.parametrize("error", [0.35, 0.05, 0.6, 2.0])  # the reviewer's case: image scale 0.92, P99 0.35 -> x2, not 2.63
def test_grid_error_label_states_the_amplification_drawn(tmp_path, error):
    """The error scale times the labelled k is the image scale, so '|error| ×k' is exact."""
    target = np.full((16, 16), 0.92, dtype=np.float32)
    recon = target - np.float32(error)  # |error| = `error` everywhere: its 99th percentile too
    out = reconstruction_grid(target, target * 0.5, {"model": recon}, tmp_path / "grid")
    (drawn,) = [ax.get_images()[0] for ax in _image_axes(out.figure) if ax.get_title().startswith("|")]
    factor = out.data["error_factor"]
    assert drawn.norm.vmax * factor == pytest.approx(0.92, rel=1e-6)  # error scale x k = the grey scale's top
    assert drawn.norm.vmax >= error * (1 - 1e-6)  # the scale still covers the 99th percentile of the errors
    assert factor == {0.35: 2, 0.05: 10, 0.6: 1, 2.0: 0.2}[error]
    assert f"×{factor:g}" in drawn.colorbar.ax.get_ylabel() and f"×{factor:g}" in out.figure.get_suptitle()
    ticks = [t for t in drawn.colorbar.get_ticks() if 0 <= t <= drawn.norm.vmax * (1 + 1e-9)]
    assert ticks and max(ticks) <= drawn.norm.vmax  # ticks in error units, on the drawn scale


def test_a_stem_ending_in_a_figure_format_names_the_figure(tmp_path):
    """`--attention out/att.png` writes out/att.png and out/att.pdf, not att.png.png; other dots stay."""
    residues = {"Std-KD (at)": {1: np.full((4, 4), 0.01)}}
    for given, stem in (("att.png", "att"), ("att.PDF", "att"), ("fig.v2", "fig.v2")):
        out = attention_residue_figure(residues, tmp_path / "out" / given)
        assert [p.name for p in out.paths] == [f"{stem}.png", f"{stem}.pdf"]
    _written(out.paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["att.pdf", "att.png", "fig.v2.pdf", "fig.v2.png"]


def test_attention_figure_titles_and_colourbar_say_what_is_drawn(tmp_path):
    rng = np.random.default_rng(7)
    out = attention_residue_figure({"Std-KD (at)": {1: rng.uniform(0, 0.01, (8, 8))}}, tmp_path / "att", context="vol1, slice 2, 4x")
    _written(out.paths)
    assert out.figure.get_suptitle() == "AT attention-map residues to the teacher per cascade (vol1, slice 2, 4x)"
    (panel,) = _image_axes(out.figure)
    assert panel.get_title() == "cascade 1" and panel.get_ylabel() == "Std-KD (at)"
    assert "unitless" in panel.get_images()[0].colorbar.ax.get_ylabel()  # the only panel carries the colourbar


def test_attention_figure_keeps_its_title_and_colourbar_label_inside_with_few_cascades(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rng = np.random.default_rng(3)
    maps = {1: rng.uniform(0, 0.01, (8, 8)), 2: rng.uniform(0, 0.01, (8, 8))}
    out = attention_residue_figure({"Std-KD (AT)": maps}, tmp_path / "att",
                                   context="icbm152_z077-084, slice 4, 4x, the same slice for every student")
    canvas = FigureCanvasAgg(out.figure)
    canvas.draw()
    inside = out.figure.bbox
    label = _image_axes(out.figure)[-1].get_images()[0].colorbar.ax.yaxis.label  # the last image carries the bar
    for text in (out.figure._suptitle, label):
        box = text.get_window_extent(canvas.get_renderer())
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1, text.get_text()


def test_attention_names_the_recipe_when_its_dataset_is_not_there(tiny_dataset, tmp_path, monkeypatch):
    from sftkd_cli.config import dump_recipe, load_recipe

    student, teacher = _pair(0)
    runs = tmp_path / "runs"
    _write_run(runs / "teacher", tiny_dataset, "teacher", {"model": teacher})
    kd = _write_run(runs / "kd", tiny_dataset, "kd", {"model": student}, runs / "teacher")
    (kd / "recipe.yaml").write_text(dump_recipe(load_recipe(None, ["data.path=data/tiny", "data.acceleration=4"])))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SftkdError, match=r"kd/recipe.yaml: data.path 'data/tiny' is not a folder .*--attention-data DIR"):
        attention_residues_from_runs({"KD": kd}, tmp_path / "a")
    assert attention_residues_from_runs({"KD": kd}, tmp_path / "a", dataset=tiny_dataset).data["KD"]["cascades"] == [1, 2]


def _drawn():
    from sftkd_cli.report.figures import new_figure

    figure = new_figure(2.0, 2.0)
    figure.subplots().plot([0, 1], [1, 0])
    return figure


def test_save_figure_writes_no_link_planted_at_its_temporary_name(tmp_path):
    """savefig(tmp) followed a link planted at `.fig.png.tmp-<pid>` and wrote the figure into its target."""
    import os

    from sftkd_cli.report.figures import save_figure

    victim = tmp_path / "victim.txt"
    victim.write_text("kept\n")
    for fmt in ("png", "pdf"):
        (tmp_path / f".fig.{fmt}.tmp-{os.getpid()}").symlink_to(victim)
    _written(save_figure(_drawn(), tmp_path / "fig"))
    assert victim.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png", "victim.txt"]


def test_figures_sftkd_wrote_are_told_from_others_by_their_metadata(tmp_path):
    """`compare --attention thesis/fig6` replaced the user's fig6.png and fig6.pdf without a word."""
    from sftkd_cli.report.figures import check_figure_targets, save_figure

    stem = tmp_path / "fig6"
    check_figure_targets(stem, "--attention", force=False)  # nothing there yet
    save_figure(_drawn(), stem)
    check_figure_targets(stem.with_suffix(".pdf"), "--attention", force=False)  # sftkd's own: replaced again
    other = _drawn()
    for fmt in ("png", "pdf"):  # the same drawing, saved by someone else's matplotlib
        other.savefig(tmp_path / f"fig6.{fmt}", format=fmt)
        with pytest.raises(SftkdError, match=rf"^--attention {tmp_path / f'fig6.{fmt}'}: exists and is not a figure "
                                             r"sftkd wrote .*pass --force"):
            check_figure_targets(stem, "--attention", force=False)
        check_figure_targets(stem, "--attention", force=True)
        save_figure(_drawn(), stem)
    (tmp_path / "fig6.png").write_bytes(b"")  # an empty placeholder: nothing to lose
    check_figure_targets(stem, "--attention", force=False)
