"""Super-resolution as a task (`task: sr`): low-resolution data vs numpy oracles, the VDSR
family, SFT and every Table 9 KD method on it through the CLI, export, and the smoke plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sftkd_cli.config import load_recipe, validate
from sftkd_cli.data.dataset import SliceDataset
from sftkd_cli.data.options import PrepareOptions
from sftkd_cli.data.prepare import prepare_dataset, sr_box_mask
from sftkd_cli.data.sources import NiftiSource
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import build_model, count_parameters
from sftkd_cli.mri.masks import undersample
from sftkd_cli.reproduce import build_stages, load_plan
from sftkd_cli.runs import load_checkpoint
from sftkd_cli.training.kd import default_taps
from sftkd_cli.training.sft import StudentFriendly
from cli_helpers import sftkd
from test_hardening import fails_cleanly

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TABLE9_METHODS = ("at", "fitnets", "cc", "pkt", "ft", "nst")




@pytest.fixture(scope="module")
def sr_data(prepared_like_tiny, tmp_path_factory) -> Path:
    """The tiny dataset's 5 phantom volumes (28x24x3 -> 16x16) prepared for super-resolution at scale 4."""
    return prepared_like_tiny(tmp_path_factory.mktemp("sr") / "data", task="sr")


# ----------------------------------------------------------------------------- data


def _raw(sr_data: Path) -> Path:
    """The NIfTI folder `sr_data` was prepared from (read from its manifest)."""
    return Path(json.loads((sr_data / "manifest.json").read_text())["source_root"])


def test_box_mask_keeps_the_lowest_frequencies_in_both_layouts():
    corner = sr_box_mask((32, 30), 4)
    rows = [0, 1, 2, 3, 28, 29, 30, 31]  # n = 8: frequencies -4 .. 3
    cols = [0, 1, 2, 3, 26, 27, 28, 29]  # m = round(7.5) = 8 of 30
    expected = np.zeros((32, 30), np.float32)
    expected[np.ix_(rows, cols)] = 1
    np.testing.assert_array_equal(corner, expected)
    np.testing.assert_array_equal(sr_box_mask((32, 30), 4, "centered"), np.fft.fftshift(expected))
    odd = sr_box_mask((15, 15), 4)  # n = round(3.75) = 4: frequencies -2 .. 1
    assert np.flatnonzero(odd.any(axis=1)).tolist() == [0, 1, 13, 14]
    assert sr_box_mask((16, 16), 2.5).sum() == 6 * 6 and sr_box_mask((8, 8), 100).sum() == 1


def test_a_band_limited_image_passes_unchanged():
    # frequencies +-1 only: inside the 4x4 box of a 16x16 image at scale 4 (hand-made oracle)
    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    image = 0.5 + 0.2 * np.cos(2 * np.pi * i / 16) + 0.1 * np.sin(2 * np.pi * j / 16)
    for layout in ("corner", "centered"):
        _, zf = undersample(image, sr_box_mask((16, 16), 4, layout), centered=layout == "centered")
        np.testing.assert_allclose(zf, image, atol=1e-6)


def _oracle_lr(image: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy only: the n x m low-resolution image (centred crop of the spectrum) and its sinc
    interpolation back to H x W (the crop zero-padded in place), both as magnitudes."""
    h, w = image.shape
    n, m = h // scale, w // scale
    spectrum = np.fft.fftshift(np.fft.fft2(image, norm="ortho"))
    r0, c0 = h // 2 - n // 2, w // 2 - m // 2
    crop = spectrum[r0 : r0 + n, c0 : c0 + m]
    low = np.fft.ifft2(np.fft.ifftshift(crop), norm="ortho")
    padded = np.zeros_like(spectrum)
    padded[r0 : r0 + n, c0 : c0 + m] = crop
    return np.abs(low), np.abs(np.fft.ifft2(np.fft.ifftshift(padded), norm="ortho"))


def test_prepared_sr_data_matches_a_numpy_oracle(sr_data):
    manifest = json.loads((sr_data / "manifest.json").read_text())
    assert manifest["task"] == "sr" and manifest["scales"] == manifest["accelerations"] == [4.0]
    assert manifest["mask"]["files"] == {"sr4": "masks/sr4.npy"} and manifest["mask"]["per_acceleration"]["sr4"]["box"] == [4, 4]
    with h5py.File(sr_data / "vol0.h5", "r") as f:
        assert set(f) == {"image", "source_slice", "sr4"} and f["sr4"].attrs["scale"] == 4.0
        images, zf, kspace, mask = (f[k][()] for k in ("image", "sr4/zf", "sr4/kspace", "sr4/mask"))
    assert kspace.dtype == np.complex64 and zf.dtype == mask.dtype == np.float32
    np.testing.assert_array_equal(mask, sr_box_mask((16, 16), 4))
    np.testing.assert_array_equal(np.load(sr_data / "masks" / "sr4.npy"), mask)
    for s in range(len(images)):
        low, full = _oracle_lr(images[s].astype(np.float64), 4)
        np.testing.assert_allclose(zf[s], full, atol=1e-6)
        # sinc interpolation passes through the low-resolution samples (ortho scaling sqrt(nm/HW))
        np.testing.assert_allclose(zf[s][::4, ::4], low * 4 / 16, atol=1e-6)
        np.testing.assert_allclose(kspace[s], np.fft.fft2(images[s], norm="ortho") * mask, atol=1e-6)
        assert np.all(kspace[s][mask == 0] == 0)


def test_centered_layout_gives_the_same_input(tmp_path, sr_data):
    options = PrepareOptions(size=(16, 16), accelerations=(4.0,), val=("vol1",), test=("vol3",), task="sr",
                             mask_layout="centered")
    prepare_dataset(NiftiSource(_raw(sr_data)), tmp_path / "c", options)
    with h5py.File(sr_data / "vol2.h5", "r") as a, h5py.File(tmp_path / "c" / "vol2.h5", "r") as b:
        np.testing.assert_allclose(b["sr4/zf"][()], a["sr4/zf"][()], atol=1e-6)
        np.testing.assert_array_equal(b["sr4/mask"][()], np.fft.fftshift(a["sr4/mask"][()]))


def test_prepare_data_cli_task_sr_and_its_errors(tmp_path, sr_data):
    raw = _raw(sr_data)
    result = sftkd("prepare-data", "nifti", raw, "--out", tmp_path / "d", "--size", 16, 16, "--task", "sr",
                   "--scale", 2, "--val", "vol1")
    assert "2x: low resolution 8 x 8" in result.output
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["task"] == "sr" and manifest["options"]["task"] == "sr" and manifest["scales"] == [2.0]
    for extra, message in ((["--task", "sr", "--mask-file", "m.npy"], "--mask-file: not used by --task sr"),
                           (["--task", "sr", "--center-fraction", "0.1"], "--center-fraction: not used by --task sr"),
                           (["--task", "superres"], "--task superres: expected one of recon, sr")):
        bad = sftkd("prepare-data", "nifti", raw, "--out", tmp_path / "e", *extra, ok=False)
        assert bad.exit_code == 2 and message in bad.output and not (tmp_path / "e").exists()


def test_recon_datasets_keep_their_recorded_options(tiny_dataset):
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert manifest["task"] == "recon" and "task" not in manifest["options"] and "scales" not in manifest


def test_slice_dataset_reads_the_sr_group_and_refuses_other_tasks(sr_data, tiny_dataset):
    ds = SliceDataset(sr_data, "val", 4, task="sr")
    item = ds[0]
    with h5py.File(sr_data / "vol1.h5", "r") as f:
        np.testing.assert_array_equal(item["zf"][0].numpy(), f["sr4/zf"][0])
    assert ds.task == "sr" and item["mask"].sum() == 16
    with pytest.raises(SftkdError, match=r"data.task recon: dataset .* was prepared for task sr; set data.task=sr"):
        SliceDataset(sr_data, "val", 4, task="recon")
    with pytest.raises(SftkdError, match=r"data.task sr: dataset .* was prepared for task recon"):
        SliceDataset(tiny_dataset, "val", 4, task="sr")
    with pytest.raises(SftkdError, match=r"^scale 2 not in dataset .* \(has 4\)$"):
        SliceDataset(sr_data, "val", 2)
    with pytest.raises(SftkdError, match="data.task recon: dataset"):  # recipes are checked before training
        validate(load_recipe(None, [f"data.path={sr_data}"]))
    with pytest.raises(SftkdError, match="data.task: expected recon or sr"):
        validate(load_recipe(None, ["data.task=superres"]))
    validate(load_recipe(None, [f"data.path={sr_data}", "data.task=sr", "sft.teacher=VDSR12", "sft.student=VDSR4"]))


# ----------------------------------------------------------------------------- model


def _vdsr_params(n: int, c: int) -> int:
    return (9 * c + c) + (n - 2) * (9 * c * c + c) + (9 * c + 1)


@pytest.mark.parametrize("name, channels, expected", [("VDSR12", 64, 370_497), ("VDSR4", 64, 75_073),
                                                      ("VDSR12", 32, 93_089), ("VDSR4", 32, 19_105)])
def test_vdsr_parameter_counts(name, channels, expected):
    assert count_parameters(build_model(name, channels)) == expected == _vdsr_params(int(name[4:]), channels)


@pytest.mark.parametrize("bad", ["VDSR6", "VDSR0", "VDSR", "vdsr3"])
def test_bad_vdsr_names_are_clear_errors(bad):
    with pytest.raises(SftkdError, match="model"):
        build_model(bad)


def _flat_vdsr(model, x: torch.Tensor) -> torch.Tensor:
    """Oracle: VDSR as one plain chain of convs (ReLU between), plus the input."""
    convs = [conv for block in model.blocks for conv in block]
    h = x
    for k, conv in enumerate(convs):
        h = F.conv2d(h, conv.weight, conv.bias, padding=1)
        if k < len(convs) - 1:
            h = torch.relu(h)
    return x + h


def test_vdsr_is_a_global_residual_cnn_and_its_state_carries_the_input():
    torch.manual_seed(0)
    model = build_model("VDSR8", 6)
    x = torch.rand(2, 1, 12, 10)
    out = model(x, None, None)
    torch.testing.assert_close(out, _flat_vdsr(model, x))
    state = model.cascade(0, x, None, None)
    assert state.shape == (2, 7, 12, 10) and torch.equal(state[:, -1:], x)
    last = model.blocks[-1][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    assert torch.equal(model(x, None, None), x)  # a zero residual returns the input exactly
    rebuilt = build_model(model.record()["arch"], model.record()["channels"])
    rebuilt.load_state_dict(model.state_dict(), strict=True)


def test_vdsr_taps_and_default_pairs_for_table9():
    torch.manual_seed(0)
    teacher, student = build_model("VDSR12", 4), build_model("VDSR4", 4)
    x = torch.rand(1, 1, 8, 8)
    out, feats = student(x, None, None, taps=["c2.conv1", "c4.conv1"])
    assert feats["c2.conv1"].shape == (1, 4, 8, 8) and (feats["c2.conv1"] >= 0).all()
    torch.testing.assert_close(out, x + feats["c4.conv1"])  # block 4's last conv is the residual
    hidden = [f"c{c}.conv1" for c in (1, 2, 3)]
    assert default_taps("at", student, teacher) == (hidden, ["c1.conv2", "c2.conv2", "c3.conv2"])
    assert default_taps("fitnets", student, teacher) == (["c2.conv1"], ["c2.conv3"])
    for method in ("cc", "pkt", "ft", "nst"):  # VDSR4's block 4 has no hidden conv: left out
        assert default_taps(method, student, teacher) == (hidden, ["c1.conv3", "c2.conv3", "c3.conv3"])


# ----------------------------------------------------------------------------- SFT


def _sr_batch(seed: int = 0, b: int = 2, size: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 1, size, size, generator=g)
    mask = torch.tensor(sr_box_mask((size, size), 3))[None, None]
    kspace = torch.fft.fft2(target, norm="ortho") * mask
    return {"target": target, "zf": torch.fft.ifft2(kspace, norm="ortho").abs(), "kspace": kspace, "mask": mask}


def _oracle_branch(teacher, student, zf: torch.Tensor, start: int) -> torch.Tensor:
    """Teacher convs up to the end of block `start`, then the student's from block start+1, then + zf."""
    t_convs = [c for block in teacher.blocks[:start] for c in block]
    s_convs = [c for block in student.blocks[start:] for c in block]
    h = zf
    for k, conv in enumerate(t_convs + s_convs):
        h = F.conv2d(h, conv.weight, conv.bias, padding=1)
        if k < len(t_convs) + len(s_convs) - 1:
            h = torch.relu(h)
    return zf + h


def test_sft_with_vdsr_is_the_papers_formula():
    torch.manual_seed(0)
    teacher, student = build_model("VDSR12", 4), build_model("VDSR4", 4)
    batch = _sr_batch()
    sft = StudentFriendly(teacher, student, w_teacher=1.0, w_student=0.5, w_imit=0.25, batched=False)
    loss, parts = sft(batch)
    t_out = _flat_vdsr(teacher, batch["zf"])
    branches = [_oracle_branch(teacher, student, batch["zf"], i) for i in (1, 2, 3)]
    student_l1 = sum(F.l1_loss(b, batch["target"]) for b in branches) / 3
    imit_l1 = sum(F.l1_loss(b, t_out) for b in branches) / 3
    torch.testing.assert_close(parts["teacher"], F.l1_loss(t_out, batch["target"]))
    torch.testing.assert_close(parts["student"], student_l1)
    torch.testing.assert_close(parts["imit"], imit_l1)
    torch.testing.assert_close(loss, F.l1_loss(t_out, batch["target"]) + 0.5 * student_l1 + 0.25 * imit_l1)
    loss.backward()
    assert all(p.grad is None for p in student.blocks[0].parameters())  # S1 is in no branch
    assert all(p.grad is not None for p in teacher.parameters())


def test_sft_batched_branches_equal_the_loop_for_vdsr():
    torch.manual_seed(0)
    teacher, student = build_model("VDSR8", 4), build_model("VDSR4", 4)
    batch = _sr_batch()
    loss_b, _ = StudentFriendly(teacher, student, batched=True)(batch)
    loss_n, _ = StudentFriendly(teacher, student, batched=False)(batch)
    torch.testing.assert_close(loss_b, loss_n)


@pytest.mark.parametrize("teacher, student", [("D3C4", "VDSR4"), ("VDSR4", "D3C4"), ("VDSR4", "U2C4")])
def test_sft_refuses_a_pair_whose_blocks_pass_different_states(teacher, student):
    # VDSR passes features + image between its blocks, the DC families the image: equal block
    # counts are not enough (this crashed with a conv channel error inside the first step)
    with pytest.raises(SftkdError, match=rf"^sft: {teacher} passes .* between its blocks, {student} passes "):
        StudentFriendly(build_model(teacher, 4), build_model(student, 4))
    StudentFriendly(build_model("D3C4", 4), build_model("U2C4", 4))  # both pass the image: a valid pair


def test_train_sft_refuses_a_vdsr_and_dc_pair_in_one_line(sr_data, tmp_path):
    fails_cleanly("train-sft", "--name", "mixed", f"data.path={sr_data}", "data.task=sr", "data.acceleration=4",
                  f"run.dir={tmp_path}", "train.epochs=1", "train.threads=1", "model.channels=4",
                  "sft.teacher=D3C4", "sft.student=VDSR4", names=("sft: D3C4 passes the image between its blocks, VDSR4",))
    assert not (tmp_path / "mixed").exists()


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def sr_runs(sr_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("sr-runs")
    base = [f"data.path={sr_data}", "data.task=sr", "data.acceleration=4", f"run.dir={runs}", "train.epochs=1",
            "train.batch_size=2", "train.threads=1", "model.channels=4", "sft.teacher=VDSR12", "sft.student=VDSR4",
            "eval.latency_slices=1"]
    sftkd("train-teacher", "--model", "VDSR12", "--name", "teacher", *base)
    sftkd("train-sft", "--name", "sft", *base)
    return runs, base


@pytest.mark.parametrize("method", TABLE9_METHODS)
def test_every_table9_method_distills_a_vdsr_student(sr_runs, method):
    runs, base = sr_runs
    for teacher, init in (("teacher", "random"), ("sft", "sft")):
        name = f"{teacher}-kd-{method}"
        sftkd("distill", "--teacher", runs / teacher, "--student", "VDSR4", "--method", method, "--init-from", init,
              "--name", name, *base, "train.max_steps_per_epoch=1")
        state = load_checkpoint(runs / name / "checkpoints" / "last.pt")
        assert state["method"] == method and state["epoch"] == 1 and len(state["student_taps"]) == (1 if method == "fitnets" else 3)
        assert state["models"]["model"]["arch"] == "VDSR4" and state["models"]["model"]["channels"] == 4


def test_evaluate_labels_the_sr_input_and_export_works(sr_runs):
    runs, _ = sr_runs
    result = sftkd("evaluate", runs / "teacher")
    assert "LR interpolated" in result.output and "super-resolution" in result.output
    metrics = json.loads((runs / "teacher" / "metrics.json").read_text())
    assert metrics["model"] == "VDSR12" and metrics["dataset"]["task"] == "sr"
    assert "low-resolution" in metrics["conventions"]["input"] and metrics["params"] == _vdsr_params(12, 4)
    for fmt, inputs in (("torchscript", 3), ("onnx", 1)):
        sftkd("export", runs / "teacher", "--format", fmt)
        card = json.loads(next((runs / "teacher" / "export").glob(f"*.{'ts' if fmt == 'torchscript' else 'onnx'}.card.json")).read_text())
        assert card["architecture"]["name"] == "VDSR12" and card["check"]["max_abs_diff"] <= 1e-4
        assert len(card["inputs"]) == inputs and card["mask"]["sampled_fraction"] == 1 / 16
    exported = next((runs / "teacher" / "export").glob("*.onnx"))
    scored = sftkd("evaluate", runs / "teacher", "--exported", exported)
    assert "LR interpolated" in scored.output


def test_evaluate_of_an_sr_run_on_recon_data_names_the_runs_task(sr_runs, tiny_dataset, tmp_path):
    # evaluate takes no overrides: "set data.task=recon" was advice it could not follow
    runs, _ = sr_runs
    line = fails_cleanly("evaluate", runs / "teacher", "--data", tiny_dataset, "--device", "cpu", "--no-recon",
                         names=("its model was trained for task sr", "prepared for task recon", "--task sr"))
    assert "set data.task" not in line
    # a recon dataset without the run's scale (4x): its task is named first, not the missing acceleration
    other = tmp_path / "recon5"
    shutil.copytree(tiny_dataset, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["accelerations"] = [5.0]
    (other / "manifest.json").write_text(json.dumps(manifest))
    fails_cleanly("evaluate", runs / "teacher", "--data", other, "--device", "cpu", "--no-recon",
                  names=("its model was trained for task sr", "prepared for task recon"))


# ----------------------------------------------------------------------------- plans


def test_a_plan_preparing_sr_data_needs_sr_stages(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("plan: 1\ndata:\n  source: demo\n  out: d\n  options: {task: sr, accelerations: [4]}\n"
                    "base: {sft.teacher: VDSR8, sft.student: VDSR4}\nstages:\n  teacher: {}\n")
    with pytest.raises(SftkdError, match="stage teacher: data.task recon: the plan prepares data for task sr"):
        build_stages(load_plan(plan))


def test_a_plan_reads_its_data_options_words_in_any_case(tmp_path):
    """`options: {task: SR}` is task sr, as `base: data.task: SR` and `prepare-data --task SR` are:
    the stage check agrees, and the options prepare-data gets are the words."""
    from sftkd_cli.data.options import PrepareOptions

    plan = tmp_path / "plan.yaml"
    plan.write_text("plan: 1\ndata:\n  source: demo\n  out: d\n  options: {task: SR, accelerations: [4]}\n"
                    "base: {data.task: sr, sft.teacher: VDSR8, sft.student: VDSR4}\nstages:\n  teacher: {}\n")
    assert "teacher" in [stage.id for stage in build_stages(load_plan(plan))]  # not refused
    options = PrepareOptions.from_values({"task": "SR", "mask_kind": "Random", "mask_layout": "CENTERED"})
    assert (options.task, options.mask_kind, options.mask_layout) == ("sr", "random", "centered")


def test_table9_plan_and_recipes(monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = load_plan(ROOT / "recipes" / "plans" / "table9-sr.yaml")
    stages = {s.id: s for s in build_stages(plan) if s.recipe is not None and s.kind != "evaluate"}
    assert len(stages) == 3 + 2 * len(TABLE9_METHODS)
    for stage in stages.values():
        r = stage.recipe
        assert (r.data.task, r.data.acceleration, r.model.channels, r.train.epochs) == ("sr", 4.0, 64, 150)
        assert (r.sft.teacher, r.sft.student) == ("VDSR12", "VDSR4")
    assert stages["teacher"].recipe.model.name == "VDSR12" and stages["sft-kd-nst"].recipe.model.name == "VDSR4"
    assert plan.paper is not None and plan.paper.rows["FT"] == ("29.99/0.8665", "30.04/0.8677")


@pytest.mark.nilearn  # the demo template ships in nilearn (optional: sftkd[demo])
def test_smoke_sr_plan_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the plan's data/ and runs/ folders go here
    sftkd("reproduce", ROOT / "recipes" / "plans" / "smoke-sr.yaml")
    runs = tmp_path / "runs" / "smoke-sr"
    for name in ("teacher", "student", "sft", "std-kd-at", "sft-kd-at", "std-kd-ft", "sft-kd-ft"):
        metrics = json.loads((runs / name / "metrics.json").read_text())
        assert metrics["dataset"]["task"] == "sr" and metrics["model"] in ("VDSR12", "VDSR4")
    text = (runs / "report" / "report.md").read_text()
    assert "Table 9" in text and "| AT |" in text and "| FT |" in text, text
    assert (runs / "report" / "grid.png").is_file() and (runs / "report" / "attention.png").is_file()
    assert "LR interpolated" in text  # the input row of the compare table is named for the task
    assert "| Demo | LR interp. |" in text and "| ZF |" not in text  # and the paper layout's (Table 9's) input row
    note = next(line for line in text.splitlines() if line.startswith("Paper: "))
    assert note.startswith("Paper: SFT-KD-Recon (MIDL 2023), Table 9,") and "Table 1" not in note, note
    from sftkd_cli.report.figures import reconstruction_grid_from_runs

    grid = reconstruction_grid_from_runs(tmp_path / "data" / "smoke-sr", 4, {"teacher": runs / "teacher"}, tmp_path / "g")
    assert "LR interp." in grid.data and "ZF" not in grid.data


def test_prepare_defaults_are_one_rule_for_the_cli_and_plans():
    from sftkd_cli.data.options import default_accelerations

    assert default_accelerations("sr", {}) == (4.0,)
    assert default_accelerations("recon", {}) == (4.0, 5.0)
    assert default_accelerations("recon", {5.0: Path("m5.npy"), 4.0: Path("m4.npy")}) == (4.0, 5.0)
