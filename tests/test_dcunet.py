"""DC-UNet `ULCm` (models/dcunet.py): parameter count, the block against a hand-written U-Net,
odd sizes, data consistency against numpy, taps and their default KD roles, checkpoints, SFT and
distillation with a DC-UNet teacher through the CLI, export, and the Table 6 smoke plan."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.checkpoints import build_from_entry, load_model
from sftkd_cli.distill.methods import METHODS, build_method
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import DCUNet, build_model, count_parameters, family_of
from sftkd_cli.models.dcunet import parse_unet_name
from sftkd_cli.reproduce import DataSpec, build_stages, load_plan, run_plan
from sftkd_cli.runs import load_checkpoint
from sftkd_cli.training.kd import default_taps
from sftkd_cli.training.objectives import model_record
from sftkd_cli.training.sft import StudentFriendly
from cli_helpers import sftkd

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _inputs(h: int = 12, w: int = 10, b: int = 2, seed: int = 0):
    """A random batch undersampled on every third row: zf, kspace, mask, target."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 1, h, w, generator=g)
    mask = torch.zeros(1, 1, h, w)
    mask[..., ::3, :] = 1
    kspace = torch.fft.fft2(target, norm="ortho") * mask
    zf = torch.fft.ifft2(kspace, norm="ortho").abs()
    return zf, kspace, mask, target


# ----------------------------------------------------------------------------- architecture


def _expected_params(levels: int, channels: int, cascades: int) -> int:
    """Parameters by formula: 3x3 convs (9 cin cout + cout), 2x2 transposed convs (4 cin cout + cout)."""
    w = [channels * 2**i for i in range(levels)]

    def conv(cin: int, cout: int) -> int:
        return 9 * cin * cout + cout

    total = conv(1, w[0]) + conv(w[0], w[0]) + conv(w[0], 1)  # enc1, enc2, out
    total += sum(conv(w[i - 1], w[i]) for i in range(1, levels))  # down2..downL
    total += sum(4 * w[i + 1] * w[i] + w[i] + conv(2 * w[i], w[i]) for i in range(levels - 1))  # up_l, dec_l
    return cascades * total


def test_parameter_count_by_formula():
    assert count_parameters(build_model("U2C5")) == 275_205 == 5 * (53 * 32**2 + 24 * 32 + 1)
    assert count_parameters(build_model("D5C5")) == 141_765  # the teacher U2C5 is ~1.9x D5C5
    for levels in (2, 3, 4):
        for channels in (4, 8):
            for cascades in (1, 3):
                model = DCUNet(levels, cascades, channels=channels)
                assert count_parameters(model) == _expected_params(levels, channels, cascades)


def test_names_are_canonical_and_bad_names_are_clear():
    model = build_model(" u3c2 ")
    assert model.name == "U3C2" and model.levels == 3 and model.cascades == 2
    assert family_of("U2C5").example == "U2C5"
    for bad in ("U1C5", "U5C5", "U2C0", "UC5", "U2"):
        with pytest.raises(SftkdError, match="model"):
            parse_unet_name(bad)
    with pytest.raises(SftkdError, match="U2C5"):
        build_model("X2C5")  # the registry lists the DC-UNet form among the known ones
    with pytest.raises(SftkdError, match="65 U-Net levels; expected at most 4"):
        build_model("U65C5")  # the family's limit is the U-Net's, not the DC-CNN's 64 convs


def _manual_block(block, x: torch.Tensor, pad: int) -> torch.Tensor:
    """A 2-level U-Net written out with torch.cat (the skip concatenation), pad to even and crop."""
    h, w = x.shape[-2:]
    eh, ew = (h + 2 * pad) % 2, (w + 2 * pad) % 2
    y = F.pad(x, (pad, pad + ew, pad, pad + eh))
    e1 = F.relu(F.conv2d(y, block.enc1.weight, block.enc1.bias, padding=1))
    e2 = F.relu(F.conv2d(e1, block.enc2.weight, block.enc2.bias, padding=1))
    d2 = F.relu(F.conv2d(F.max_pool2d(e2, 2), block.down[0].weight, block.down[0].bias, padding=1))
    u1 = F.relu(F.conv_transpose2d(d2, block.up[0].weight, block.up[0].bias, stride=2))
    dec = F.relu(F.conv2d(torch.cat([e2, u1], dim=1), block.dec[0].weight, block.dec[0].bias, padding=1))
    out = F.conv2d(dec, block.out.weight, block.out.bias, padding=1)
    return out[..., pad : pad + h, pad : pad + w]


@pytest.mark.parametrize("pad, size", [(0, (11, 9)), (5, (11, 9)), (0, (8, 6)), (2, (7, 7))])
def test_block_equals_a_hand_written_unet(pad, size):
    torch.manual_seed(3)
    block = build_model("U2C1", channels=4, pad=pad).blocks[0]
    x = torch.rand(2, 1, *size)
    torch.testing.assert_close(block(x), _manual_block(block, x, pad))


@pytest.mark.parametrize("name, size", [("U2C2", (150, 150)), ("U2C2", (11, 9)), ("U3C1", (11, 9)), ("U4C1", (5, 7))])
def test_odd_sizes_keep_the_image_size(name, size):
    model = build_model(name, channels=4, pad=0 if size[0] < 10 else 5)
    zf, k, m, _ = _inputs(*size, b=1)
    assert model(zf, k, m).shape == (1, 1, *size)


def test_output_is_data_consistent_numpy_oracle():
    torch.manual_seed(4)
    model = build_model("U2C2", channels=4)
    zf, k, m, _ = _inputs(11, 9)
    with torch.no_grad():
        out, feats = model(zf, k, m, taps=["c2.out"])
    block = feats["c2.out"].numpy().astype(np.float64)  # the last block's output before DC
    k_np, sampled = k.numpy(), m.numpy().astype(bool)
    expected = np.real(np.fft.ifft2(np.where(sampled, k_np, np.fft.fft2(block, norm="ortho")), norm="ortho"))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


# ----------------------------------------------------------------------------- taps


def test_taps_have_the_image_size_and_do_not_change_the_output():
    torch.manual_seed(5)
    model = build_model("U3C2", channels=4)
    zf, k, m, _ = _inputs(11, 9)
    names = model.tap_names()
    assert names[:9] == [f"c1.{t}" for t in ("enc1", "enc2", "down2", "down3", "up2", "dec2", "up1", "dec1", "out")]
    plain = model(zf, k, m)
    out, feats = model(zf, k, m, taps=names)
    assert torch.equal(plain, out)
    for name in names:
        assert feats[name].shape == (2, model.tap_channels(name), 11, 9), name
        if not name.endswith(".out"):
            assert (feats[name] >= 0).all(), name  # hidden taps are after the ReLU
    assert model.block_taps(0) == {"enc1": 4, "enc2": 4, "down2": 8, "down3": 16, "up2": 8, "dec2": 8,
                                   "up1": 4, "dec1": 4, "out": 1}


def test_low_resolution_taps_are_nearest_upsampled_then_cropped():
    torch.manual_seed(6)
    model = build_model("U2C1", channels=4, pad=1)
    block = model.blocks[0]
    zf, k, m, _ = _inputs(7, 5, b=1)
    _, feats = model(zf, k, m, taps=["c1.down2"])
    y = F.pad(zf, (1, 2, 1, 2))  # pad 1, then up to an even size: 10 x 8
    e2 = F.relu(block.enc2(F.relu(block.enc1(y))))
    d2 = F.relu(block.down[0](F.max_pool2d(e2, 2)))  # 5 x 4
    full = d2.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    torch.testing.assert_close(feats["c1.down2"], full[..., 1:8, 1:6])


def test_default_taps_pair_a_d3c5_student_with_a_dcunet_teacher():
    student, teacher = build_model("D3C5"), build_model("U2C5")
    s_taps, t_taps = default_taps("at", student, teacher)
    assert s_taps == [f"c{c}.conv2" for c in range(1, 6)] and t_taps == [f"c{c}.enc2" for c in range(1, 6)]
    assert default_taps("fitnets", student, teacher) == (["c3.conv3"], ["c3.out"])
    assert default_taps("sp", student, teacher)[1] == [f"c{c}.dec1" for c in range(1, 6)]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_the_default_taps(method):
    torch.manual_seed(7)
    student, teacher = build_model("D3C2", channels=4), build_model("U2C2", channels=6)
    zf, k, m, _ = _inputs(9, 7, b=3)
    s_taps, t_taps = default_taps(method, student, teacher)
    kd = build_method(method, [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps])
    _, s_feats = student(zf, k, m, taps=s_taps)
    with torch.no_grad():
        _, t_feats = teacher(zf, k, m, taps=t_taps)
    loss = kd([s_feats[t] for t in s_taps], [t_feats[t] for t in t_taps])
    assert loss.dim() == 0 and torch.isfinite(loss)
    if method != "none":
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_at_loss_between_d3c5_and_dcunet_by_hand():
    torch.manual_seed(8)
    student, teacher = build_model("D3C2", channels=4), build_model("U2C2", channels=6)
    zf, k, m, _ = _inputs(9, 7, b=2)
    _, s = student(zf, k, m, taps=["c1.conv2"])
    _, t = teacher(zf, k, m, taps=["c1.enc2"])
    loss = build_method("at", [4], [6])([s["c1.conv2"]], [t["c1.enc2"]])

    def attention(f: np.ndarray) -> np.ndarray:
        q = (f.astype(np.float64) ** 2).mean(axis=1).reshape(len(f), -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    expected = ((attention(s["c1.conv2"].detach().numpy()) - attention(t["c1.enc2"].detach().numpy())) ** 2).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- checkpoints and SFT


def test_checkpoint_entry_round_trip():
    torch.manual_seed(9)
    model = build_model("U3C2", channels=4, pad=3, acquisition=Acquisition(kspace_layout="centered"))
    entry = model_record(model)
    assert {k: entry[k] for k in ("arch", "channels", "pad", "centered")} == {
        "arch": "U3C2", "channels": 4, "pad": 3, "centered": True}
    rebuilt = build_from_entry(entry)
    assert isinstance(rebuilt, DCUNet) and rebuilt.record() == model.record()
    zf, k, m, _ = _inputs(11, 9)
    torch.testing.assert_close(rebuilt(zf, k, m), model(zf, k, m))
    entry["arch"] = "U2C2"
    with pytest.raises(SftkdError, match="does not fit its architecture 'U2C2'"):
        build_from_entry(entry)


def test_sft_loss_with_a_dcunet_teacher_is_the_formula():
    torch.manual_seed(10)
    teacher, student = build_model("U2C3", channels=4), build_model("D3C3", channels=4)
    zf, k, m, x = _inputs(11, 9)
    batch = {"zf": zf, "kspace": k, "mask": m, "target": x}
    loss, _ = StudentFriendly(teacher, student, 1.0, 0.5, 2.0, batched=False)(batch)
    loss_batched, _ = StudentFriendly(teacher, student, 1.0, 0.5, 2.0, batched=True)(batch)
    t1 = teacher.cascade(0, zf, k, m)
    t2 = teacher.cascade(1, t1, k, m)
    t3 = teacher.cascade(2, t2, k, m)
    branch1 = student.cascade(2, student.cascade(1, t1, k, m), k, m)  # T1 -> S2 -> S3
    branch2 = student.cascade(2, t2, k, m)  # T2 -> S3
    expected = (F.l1_loss(t3, x) + 0.5 * (F.l1_loss(branch1, x) + F.l1_loss(branch2, x)) / 2
                + 2.0 * (F.l1_loss(branch1, t3) + F.l1_loss(branch2, t3)) / 2)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss_batched, expected)


# ----------------------------------------------------------------------------- through the CLI




@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """A U2C5 teacher run and a U2C5 SFT run with D3C5 branches on the tiny dataset (1 epoch)."""
    runs = tmp_path_factory.mktemp("dcunet-runs")
    base = [f"data.path={tiny_dataset}", f"run.dir={runs}", "train.epochs=1", "train.batch_size=2",
            "train.threads=1", "train.max_steps_per_epoch=2", "model.channels=8", "eval.latency_slices=1"]
    sftkd("train-teacher", "--model", "U2C5", "--name", "teacher", *base)
    sftkd("train-sft", "--name", "sft", *base, "sft.teacher=U2C5", "sft.student=D3C5")
    return runs, base


def test_cli_sft_with_a_dcunet_teacher_and_its_loss(runs, tiny_dataset):
    path, _ = runs
    state = load_checkpoint(path / "sft" / "checkpoints" / "last.pt")
    assert {role: e["arch"] for role, e in state["models"].items()} == {"teacher": "U2C5", "student": "D3C5"}
    teacher = build_from_entry(state["models"]["teacher"])
    student = build_from_entry(state["models"]["student"])
    from sftkd_cli.data.dataset import SliceDataset

    items = [SliceDataset(tiny_dataset, "train", 4.0)[i] for i in range(2)]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("zf", "kspace", "mask", "target")}
    loss, _ = StudentFriendly(teacher, student)(batch)
    states = [batch["zf"]]
    for i in range(5):
        states.append(teacher.cascade(i, states[-1], batch["kspace"], batch["mask"]))
    branches = []
    for start in range(1, 5):  # T_start -> S_(start+1) .. S_5
        x = states[start]
        for j in range(start, 5):
            x = student.cascade(j, x, batch["kspace"], batch["mask"])
        branches.append(x)
    target, out = batch["target"], states[-1]
    expected = (F.l1_loss(out, target) + sum(F.l1_loss(b, target) for b in branches) / 4
                + sum(F.l1_loss(b, out) for b in branches) / 4)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("teacher, init", [("teacher", "random"), ("sft", "sft")])
def test_cli_distills_a_d3c5_from_a_dcunet_run_with_at(runs, teacher, init):
    path, base = runs
    name = f"kd-{teacher}"
    sftkd("distill", "--teacher", path / teacher, "--student", "D3C5", "--method", "at", "--init-from", init,
          "--name", name, *base)
    state = load_checkpoint(path / name / "checkpoints" / "last.pt")
    assert state["models"]["model"]["arch"] == "D3C5" and state["method"] == "at"
    assert state["teacher_taps"] == [f"c{c}.enc2" for c in range(1, 6)]
    assert state["student_taps"] == [f"c{c}.conv2" for c in range(1, 6)]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_a_dcunet_run_matches_pytorch(runs, fmt, tmp_path):
    from sftkd_cli.export import export_run
    from sftkd_cli.exported import load_exported

    path, _ = runs
    result = export_run(path / "teacher", fmt, out=tmp_path / f"teacher.{fmt}")
    assert result.card["architecture"]["name"] == "U2C5" and result.card["architecture"]["levels"] == 2
    assert result.card["params"] == count_parameters(load_model(path / "teacher")[0])
    model, _ = load_model(path / "teacher")
    zf, k, m, _ = _inputs(16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(result.path)(zf, k, m), model.eval()(zf, k, m), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- plans


def test_table6_plan_trains_a_dcunet_teacher_and_d3c5_students(monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = load_plan(ROOT / "recipes" / "plans" / "table6-dcunet.yaml")
    stages = {s.id: s for s in build_stages(plan) if s.recipe is not None and s.kind != "evaluate"}
    assert set(stages) == {"teacher", "student", "sft", "std-kd-at", "sft-kd-at"}
    assert stages["teacher"].recipe.model.name == "U2C5"
    assert (stages["sft"].recipe.sft.teacher, stages["sft"].recipe.sft.student) == ("U2C5", "D3C5")
    for kd in ("student", "std-kd-at", "sft-kd-at"):
        assert stages[kd].recipe.model.name == "D3C5" and stages[kd].recipe.train.epochs == 150
    assert stages["sft-kd-at"].recipe.distill.teacher_run == str(plan.runs_dir / "sft")
    assert plan.paper is not None and plan.paper.layout == "models"
    assert plan.paper.rows["PSNR"] == ("40.11 +/- 2.588", "40.18 +/- 2.692", "39.47 +/- 1.823",
                                       "39.77 +/- 1.899", "39.89 +/- 1.997")
    assert plan.paper.rows["SSIM"][4] == "0.978 +/- 0.006585"


def test_smoke_dcunet_plan_end_to_end(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = load_plan(ROOT / "recipes" / "plans" / "smoke-dcunet.yaml")
    runs = tmp_path / "runs"
    plan = dataclasses.replace(plan, data=DataSpec("prepared", tiny_dataset), runs_dir=runs, report_dir=runs / "report")
    outcome = run_plan(plan, console=Console(file=io.StringIO(), width=200))
    assert not outcome.failed
    assert {r.id: r.status for r in outcome.results if r.status != "done"} == {"data": "skipped"}
    assert load_checkpoint(runs / "teacher" / "checkpoints" / "best.pt")["models"]["model"]["arch"] == "U2C2"
    assert load_checkpoint(runs / "sft-kd-at" / "checkpoints" / "best.pt")["teacher_taps"] == ["c1.enc2", "c2.enc2"]
    text = (runs / "report" / "report.md").read_text()
    psnr = next(line for line in text.splitlines() if line.startswith("| PSNR |"))
    teacher = json.loads((runs / "teacher" / "metrics.json").read_text())["metrics"]["PSNR"]["volume_mean"]
    assert f"| PSNR | {teacher:.2f} | 40.11 +/- 2.588 |" in psnr and "| 39.89 +/- 1.997 |" in psnr  # ours: over volumes
