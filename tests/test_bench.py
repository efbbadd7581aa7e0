"""`sftkd bench`: result structure, FLOP counting against hand counts and torch's counter,
the reference-way twins and layouts, and the CLI. Tiny settings only; no assertion ever looks at a timing."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import statistics
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sftkd_cli.bench import (
    BenchRow,
    block_flops,
    conv_flops,
    kd_objectives,
    model_flops,
    module_conv_flops,
    onnx_runner,
    run_bench,
    reference_way,
    sft_flops,
    synthetic_batch,
    torchscript_runner,
    train_step_fn,
)
from sftkd_cli.cli.app import app
from sftkd_cli.bench.display import header
from sftkd_cli.distill.methods import METHODS
from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.models import DCCNN
from test_precision import _flags, _flags_seen_by, _on

torch.set_num_threads(1)

#: every bench here runs on the CPU (the ONNX rows, the threads and the reference column are CPU things)
TINY = dict(size=16, batch=2, threads=1, repeats=1, warmup=0, roof_size=16, roof_batch=2, device="cpu")
CLI_TINY = ["bench", "--device", "cpu", "--size", "16", "--batch", "2", "--repeats", "1", "--warmup", "0",
            "--roof-size", "16"]
WIDE = {"COLUMNS": "200"}


#: ONNX rows need the `export` extra (onnx, onnxruntime), which the README's set-up installs
HAS_ORT = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))
INFER_MODES = ("reference", "eager", "torchscript", "onnx") if HAS_ORT else ("reference", "eager", "torchscript")

#: bf16 autocast rows, each beside its fp32 twin (only where the CPU has AVX512-BF16)
BF16_ROWS = [f"bf16.{group}.{m}.{p}" for m in ("D5C5", "D3C5") for group in ("train", "infer") for p in ("fp32", "bf16")
             ] if torch.cpu._is_avx512_bf16_supported() else []


@pytest.fixture(scope="module")
def result():
    return run_bench(**TINY, methods=["at", "fitnets"])


# --------------------------------------------------------------------------- FLOPs


def test_conv_flops_by_hand():
    # 2 * Cin * Cout * 3 * 3 * H * W * B
    assert conv_flops(1, 32, 10, 10, batch=2) == 2 * 1 * 32 * 9 * 100 * 2
    assert conv_flops(32, 32, 160, 160) == 2 * 32 * 32 * 9 * 25600


def test_model_flops_tiny_by_hand():
    # D2C2, 4 channels, pad 1, 6x6 images -> 8x8 padded maps; convs 1->4 and 4->1
    model = DCCNN(layers=2, cascades=2, channels=4, pad=1)
    per_conv = 2 * 1 * 4 * 9 * 8 * 8  # 4608, the same for 1->4 and 4->1
    assert block_flops(2, 4, 1, 6) == 2 * per_conv
    assert model_flops(model, 6, batch=3) == 2 * 2 * per_conv * 3 == 55296


def test_d5c5_flops_by_hand():
    # per pixel: 1->32 and 32->1 cost 2*32*9 each, three 32->32 cost 2*32*32*9 each
    per_pixel = 2 * (2 * 32 * 9) + 3 * (2 * 32 * 32 * 9)
    assert model_flops(reference_way("D5C5"), 150, batch=4) == 5 * per_pixel * 160 * 160 * 4  # all on 160x160
    # valid convs: conv j on 150 + 2 (5 - j) pixels, i.e. 158, 156, 154, 152, 150
    small, big = 2 * 32 * 9, 2 * 32 * 32 * 9
    per_image = small * 158**2 + big * (156**2 + 154**2 + 152**2) + small * 150**2
    assert model_flops(DCCNN(layers=5, cascades=5), 150, batch=4) == 5 * per_image * 4


def test_sft_flops_by_hand():
    teacher, student = DCCNN(3, 3, channels=4, pad=1), DCCNN(2, 3, channels=4, pad=1)
    # branches: after T1 -> S2, S3; after T2 -> S3: three student-block passes
    expected = model_flops(teacher, 6, 2) + 3 * block_flops(2, 4, 1, 6, 2)  # pad 1 < 2 layers: padded maps
    assert sft_flops(teacher, student, 6, 2) == expected


@pytest.mark.parametrize("pad, valid", [(2, True), (5, True), (5, False)])
def test_model_flops_match_torch_flop_counter(pad, valid):
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = DCCNN(layers=3, cascades=2, channels=8, pad=pad, valid=valid)
    data = synthetic_batch(12, 2, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(data["zf"], data["kspace"], data["mask"])
    assert counter.get_total_flops() == model_flops(model, 12, batch=2)


def test_module_conv_flops_counts_conv_and_linear():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(5 * 4 * 4, 7))
    x = torch.zeros(2, 3, 4, 4)
    expected = conv_flops(3, 5, 4, 4, batch=2) + 2 * (5 * 16) * 7 * 2
    assert module_conv_flops(net, lambda: net(x)) == expected


# --------------------------------------------------------------------------- rows


def test_row_figures():
    infer = BenchRow("k", "w", "infer", 0.1, [0.1], 4, 10**9, 100.0, baseline_s=0.25)
    assert infer.in_run_speedup == pytest.approx(2.5)
    assert infer.gflops == pytest.approx(10.0) and infer.roof_fraction == pytest.approx(0.1)
    assert infer.slices_per_s == pytest.approx(40.0) and infer.ms_per_slice == pytest.approx(25.0)


# --------------------------------------------------------------------------- run_bench


def test_result_structure(result):
    keys = [row.key for row in result.rows]
    infer = [f"infer.{m}.{mode}.b{n}" for m in ("D5C5", "D3C5") for mode in INFER_MODES for n in (1, 2)]
    assert keys == [
        "train.teacher.reference", "train.teacher", "train.student.reference", "train.student",
        "train.sft.reference", "train.sft",
        "train.kd_backprop.at", "train.kd.at", "train.kd_backprop.fitnets", "train.kd.fitnets", *infer, *BF16_ROWS,
        "epoch.teacher",
    ]
    for row in result.rows:
        assert len(row.samples) == (2 if row.key == "epoch.teacher" else 1)
        assert row.seconds > 0 and math.isfinite(row.seconds)
        assert row.flops > 0
    assert result.row("infer.D5C5.eager.b1").slices == 1 and result.row("train.teacher").slices == 2
    assert result.row("train.teacher").flops == 3 * model_flops(DCCNN(5, 5), 16, 2)
    assert result.row("train.teacher.reference").flops == 3 * model_flops(reference_way("D5C5"), 16, 2)
    assert result.row("infer.D3C5.eager.b2").flops == model_flops(DCCNN(3, 5), 16, 2)
    # the reference way also does the teacher's backward (2 more teacher forwards), on padded maps
    t_ref, s_ref = model_flops(reference_way("D5C5"), 16, 2), model_flops(reference_way("D3C5"), 16, 2)
    t_fwd, s_fwd = model_flops(DCCNN(5, 5), 16, 2), model_flops(DCCNN(3, 5), 16, 2)
    for method in ("at", "fitnets"):
        adapter = result.row(f"train.kd.{method}").flops - t_fwd - 3 * s_fwd
        assert result.row(f"train.kd_backprop.{method}").flops == 3 * (t_ref + s_ref) + adapter
    # every row of ours carries the speed-up over its reference-way twin timed in this run
    for row in result.rows:
        twin = (row.key.endswith((".reference", ".fp32")) or ".reference." in row.key
                or row.key.startswith(("train.kd_backprop", "epoch.")))  # an epoch is set against its steps
        assert (row.baseline_s is None) == twin
    assert result.row("train.kd.at").baseline_s == result.row("train.kd_backprop.at").seconds
    assert result.row("infer.D3C5.torchscript.b2").in_run_speedup == pytest.approx(
        result.row("infer.D3C5.reference.b2").seconds / result.row("infer.D3C5.torchscript.b2").seconds)
    if HAS_ORT:
        assert result.row("infer.D3C5.onnx.b2").in_run_speedup == pytest.approx(
            result.row("infer.D3C5.reference.b2").seconds / result.row("infer.D3C5.onnx.b2").seconds)
        assert result.ratios["onnx_speedup.D3C5.b2"] == pytest.approx(
            result.row("infer.D3C5.eager.b2").seconds / result.row("infer.D3C5.onnx.b2").seconds)
    else:
        assert any(note.startswith("ONNX D5C5 (batch 1): skipped") for note in result.notes)
    assert set(result.ratios) >= {
        "teacher_over_student_train", "teacher_over_student_latency_b1",
        "teacher_over_student_latency_b2", "kd_backprop_over_nograd.at", "kd_backprop_over_nograd.fitnets",
    }
    assert result.ratio_labels.keys() == result.ratios.keys()  # each ratio says in words what it compares
    assert result.ratio_labels["kd_backprop_over_nograd.at"] == "KD at step, reference way (backprop through the teacher) / ours"
    assert result.roof_gflops > 0
    assert set(result.roof["gflops_by_format"]) == {"contiguous", "channels_last"}
    # ours run in the layout the engine chooses here, and say which; the twins run in NCHW
    ours = [row for row in result.rows if row.key in ("train.teacher", "train.sft", "train.kd.at", "infer.D5C5.eager.b1")]
    assert all(re.fullmatch(r"layout (NCHW|channels_last) \(measured .*\)", row.note) for row in ours), ours
    assert result.row("train.sft").what == "SFT step, per branch"  # sft.batched auto on the CPU
    data = json.loads(json.dumps(result.to_dict()))
    assert "reference" not in data and len(data["rows"]) == len(result.rows)
    assert data["machine"]["threads"] == 1 and data["settings"]["precision"] == "fp32"


def test_the_epoch_part_sets_a_real_training_runs_epochs_against_their_steps(result):
    """The engine trains 3 epochs of 16 steps (batch 2) with 24 validation slices; epochs 2 and 3
    are timed, from the end of one to the end of the next, against 16 x the teacher's step row."""
    row, step = result.row("epoch.teacher"), result.row("train.teacher")
    assert row.what == "teacher D5C5 epoch (16 steps, 24 val)" and row.group == "train"
    assert row.slices == 32 and row.seconds == statistics.median(row.samples)
    assert row.flops == 16 * step.flops + model_flops(DCCNN(5, 5), 16, 24)
    assert result.ratios["epoch_over_steps.teacher"] == pytest.approx(row.seconds / (16 * step.seconds))
    assert row.note.startswith(f"16 steps x {step.ms:.1f} ms (teacher D5C5 train) = ")


def test_run_bench_takes_names_as_the_command_does():
    """--precision BF16 and --only 'kd,infer' worked; run_bench(precision="BF16") was refused and
    which="infer" was read letter by letter ("bench --only 'i'")."""
    from sftkd_cli.bench.runner import check_parts

    assert check_parts(["KD,infer", " "]) == ["kd", "infer"] and check_parts(None) == check_parts([])
    with pytest.raises(SftkdError, match=r"^which 'infer': expected a list of names"):
        run_bench(which="infer")
    with pytest.raises(SftkdError, match=r"^bench --only 'bogus'"):  # past the precision
        run_bench(precision="BF16", which=["bogus"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_row_has_its_precisions_roof(monkeypatch, precision):
    """Device: CPU. The epoch row was made outside `_row` and said fp32 in a bf16 run, so it had no
    roof ("% roof" blank, NaN in the JSON). Every row now says the precision it ran in and has
    that precision's roof. The epoch's fit is stood in for (its timing is not the point here)."""
    from sftkd_cli.bench import epoch as epoch_module

    monkeypatch.setattr(epoch_module, "epoch_seconds", lambda *args, **kwargs: [0.5, 0.5])
    res = run_bench(**TINY, which=["student", "epoch"], precision=precision)
    assert [row.precision for row in res.rows] == [precision] * len(res.rows) and res.has("epoch.teacher")
    assert all(row.roof_gflops == res.roof_gflops and math.isfinite(row.roof_fraction) for row in res.rows)


def test_the_epoch_part_trains_with_the_engine(monkeypatch):
    """Alone, it times the teacher's step first (its twin too); the fit is the engine's, in a
    temporary run directory that is gone afterwards."""
    from sftkd_cli.bench import epoch as epoch_module

    seen = {}
    real = epoch_module.epoch_seconds

    def spy(objective, train, val, **kwargs):
        seen.update(kwargs, train=len(train), val=len(val), item=train[0])
        return real(objective, train, val, **kwargs)

    monkeypatch.setattr(epoch_module, "epoch_seconds", spy)
    folders = []  # the run's own temporary folder (others' may come and go meanwhile: xdist)
    real_folder = tempfile.TemporaryDirectory

    def folder(**kwargs):
        made = real_folder(**kwargs)
        folders.append(Path(made.name))
        return made

    monkeypatch.setattr(epoch_module.tempfile, "TemporaryDirectory", folder)
    res = run_bench(**TINY, which=["epoch"])
    assert [row.key for row in res.rows] == ["train.teacher.reference", "train.teacher", "epoch.teacher"]
    assert (seen["train"], seen["val"], seen["epochs"], seen["batch"], seen["amp"], seen["tf32"]) == (
        32, 24, 3, 2, "off", False)
    assert set(seen["item"]) == {"target", "zf", "kspace", "mask", "volume", "slice"}
    assert seen["item"]["zf"].shape == (1, 16, 16)
    assert len(folders) == 1 and folders[0].name.startswith("sftkd-bench-") and not folders[0].exists()
    res = CliRunner().invoke(app, ["bench", "--help"], env=WIDE)
    assert "epoch" in res.output


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_set_for_the_run_as_training_sets_it_and_restored(monkeypatch, tf32):
    """Training runs with TF32 off unless train.tf32: so does bench unless --tf32 (flags only on the CPU)."""
    from sftkd_cli.bench import runner

    seen = _flags_seen_by(monkeypatch, runner, "measure_roof")
    before = _flags()
    res = run_bench(**TINY, which=["student"], tf32=tf32)
    assert seen == [_on(tf32, tf32)] * 2 and res.settings["tf32"] is tf32
    assert _flags() == before


def test_threads_are_restored_and_parts_selected():
    before = torch.get_num_threads()
    res = run_bench(**{**TINY, "threads": 2}, which=["student", "infer", "bf16"], precision="bf16")
    assert torch.get_num_threads() == before
    assert [row.key for row in res.rows][:2] == ["train.student.reference", "train.student"]
    assert any("bf16 rows: skipped" in note for note in res.notes)
    assert not any(row.key.startswith(("train.teacher", "train.sft", "train.kd")) for row in res.rows)
    assert res.machine["threads"] == 2 and res.settings["precision"] == "bf16"


def test_kd_variants_differ_only_in_teacher_gradients():
    data = synthetic_batch(16, 2, torch.device("cpu"))
    nograd, backprop, adapter_flops = kd_objectives("ft", data)
    # FT: per tap, paraphraser 32->32->16->16, decoder 16->16->32->32, translator 32->32->16->16 (3x3)
    per_pixel = sum(2 * a * b * 9 for a, b in [(32, 32), (32, 16), (16, 16)] * 2 + [(16, 16), (16, 32), (32, 32)])
    assert adapter_flops == 5 * per_pixel * 16 * 16 * 2  # 5 taps (one per cascade), batch 2
    train_step_fn(nograd, data, torch.device("cpu"), "fp32")()
    train_step_fn(backprop, data, torch.device("cpu"), "fp32", also_clear=backprop.teacher)()
    assert all(p.grad is None for p in nograd.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backprop.teacher.parameters())
    teacher_ids = {id(p) for p in backprop.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in backprop.parameters()}  # never optimised


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_builds_both_variants(method):
    data = synthetic_batch(16, 2, torch.device("cpu"))
    nograd, backprop, adapter_flops = kd_objectives(method, data)
    assert adapter_flops >= 0
    for objective in (nograd, backprop):
        loss, _ = objective(data)
        assert torch.isfinite(loss)


def test_compile_failure_is_a_note(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    res = run_bench(**TINY, which=["infer"], compile=True)
    assert not any("compiled" in row.key for row in res.rows)
    assert any("torch.compile" in note and "no compiler here" in note for note in res.notes)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"which": ["teachr"]}, "--only"), ({"methods": ["atx"]}, "--methods"),
     ({"precision": "fp16"}, "--precision"), ({"threads": 0}, "--threads"), ({"size": 4}, "--size"),
     ({"roof_size": 0}, "--roof-size 0"), ({"roof_size": 30_000}, "--roof-size 30000")],
)
def test_bad_settings_are_one_line_errors(kwargs, word):
    with pytest.raises(SftkdError, match=word):
        run_bench(**{**TINY, **kwargs})


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), RunInterrupted("stopped by SIGTERM")], ids=["ctrl-c", "engine"])
def test_an_interrupted_run_keeps_the_rows_measured_so_far(monkeypatch, stop):
    """Ctrl-C (or the engine's RunInterrupted from the epoch part) between rows: the result holds
    the rows before it, says where it stopped, and the roof is the start's (measured once)."""
    from sftkd_cli.bench import runner

    roofs = []
    real_roof = runner.measure_roof
    monkeypatch.setattr(runner, "measure_roof", lambda *args: roofs.append(args) or real_roof(*args))

    def progress(message):
        if message == "student D3C5 train, reference way":
            raise stop

    res = run_bench(**TINY, which=["teacher", "student"], progress=progress)
    assert [row.key for row in res.rows] == ["train.teacher.reference", "train.teacher"]
    assert res.complete is False and res.to_dict()["complete"] is False
    assert "interrupted while timing 'student D3C5 train, reference way': the 2 rows measured before it kept" in res.notes[0]
    assert len(roofs) == 1 and res.roof_gflops > 0 and all(row.roof_gflops == res.roof_gflops for row in res.rows)
    assert "teacher_over_student_train" not in res.ratios


@pytest.mark.parametrize("where", ["message", "measurement"])
def test_a_run_interrupted_while_the_roof_is_measured_again_keeps_every_row(monkeypatch, where):
    """Ctrl-C in the last stretch of a run, the roof measured again: every row is kept, the roof
    is the start's, and the result says it was interrupted."""
    from sftkd_cli.bench import runner

    real_roof = runner.measure_roof
    calls = []

    def roof(*args):
        calls.append(args)
        if len(calls) == 2 and where == "measurement":
            raise KeyboardInterrupt
        return real_roof(*args)

    def progress(message):
        if message.startswith("roof again") and where == "message":
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "measure_roof", roof)
    res = run_bench(**TINY, which=["student"], progress=progress)
    assert [row.key for row in res.rows] == ["train.student.reference", "train.student"]
    assert res.complete is False and "interrupted while measuring the roof again: every row kept" in res.notes[0]
    assert res.roof["what"].endswith("start of the run") and res.roof_gflops > 0


@pytest.mark.parametrize("at", ["roof", "student D3C5 train, reference way"])
def test_a_run_interrupted_before_its_first_row_has_nothing_to_keep(at):
    """During the first roof or the first row: a KeyboardInterrupt (the engine's RunInterrupted too)."""
    def progress(message):
        if message.startswith(at):
            raise RunInterrupted("stopped by SIGTERM") if at != "roof" else KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(**TINY, which=["student"], progress=progress)


def test_a_complete_run_says_so(result):
    assert result.complete is True and result.to_dict()["complete"] is True
    assert not any("interrupted" in note for note in result.notes)


# --------------------------------------------------------------------------- CLI


def test_cli_json_to_stdout():
    res = CliRunner().invoke(app, [*CLI_TINY, "--only", "teacher,kd,infer", "--methods", "at", "--json", "-"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    keys = [row["key"] for row in data["rows"]]
    assert keys[:4] == ["train.teacher.reference", "train.teacher", "train.kd_backprop.at", "train.kd.at"]
    assert all("reference" not in row and "speedup" not in row for row in data["rows"])
    assert data["settings"]["size"] == 16 and data["roof"]["gflops"] > 0


def test_cli_json_writes_nan_and_infinity_as_null(monkeypatch):
    """A zero time (infinite throughput) or roof (NaN fraction): --json is JSON strict parsers read."""
    import sftkd_cli.bench as bench_package
    from sftkd_cli.bench import BenchResult

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    row = BenchRow("infer.x", "x", "infer", 0.0, [0.0], 1, 10, 0.0)
    fake = BenchResult({"size": 16}, {}, 0.0, {}, rows=[row], ratios={"x": float("nan")})
    monkeypatch.setattr(bench_package, "run_bench", lambda **kw: fake)
    res = CliRunner().invoke(app, [*CLI_TINY, "--json", "-"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout, parse_constant=refuse)
    assert data["rows"][0]["slices_per_s"] is None and data["rows"][0]["roof_fraction"] is None
    assert data["ratios"] == {"x": None} and data["rows"][0]["seconds"] == 0.0


def test_cli_table_and_json_file(tmp_path):
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, [*CLI_TINY, "--only", "teacher,infer", "--json", str(out)], env=WIDE)
    assert res.exit_code == 0, res.output
    for word in ("roof", "teacher D5C5 train", "D3C5 infer b1", "GFLOP/s", "vs ref", "layout",
                 "reference way", "torchscript", *(["onnx", "eager / ONNX (onnxruntime)"] if HAS_ORT else [])):
        assert word in res.stdout
    assert json.loads(out.read_text())["rows"][1]["key"] == "train.teacher"


def test_cli_errors_exit_2(tmp_path):
    res = CliRunner().invoke(app, [*CLI_TINY, "--only", "nope"])
    assert res.exit_code == 2 and "--only" in res.output
    res = CliRunner().invoke(app, [*CLI_TINY, "--json", str(tmp_path / "missing" / "b.json")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_a_json_target_that_cannot_be_written_is_refused_before_anything_is_measured(monkeypatch, tmp_path):
    import sftkd_cli.bench as bench_package

    monkeypatch.setattr(bench_package, "run_bench", lambda **kw: pytest.fail("measured before --json was checked"))
    (tmp_path / "a_file").write_text("x")
    for target, why in ((tmp_path, "is a directory"), ("", "is a directory"),
                        (tmp_path / "a_file" / "b.json", "is a file, not a folder")):
        res = CliRunner().invoke(app, [*CLI_TINY, "--json", str(target)])
        assert res.exit_code == 2 and why in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output


def test_the_bf16_rows_run_in_the_layout_chosen_for_bf16(monkeypatch):
    """As `train.amp=bf16` and evaluate in bf16 choose it (cached apart from fp32's), for training
    and for inference alike."""
    import sftkd_cli.bench.runner as runner
    from sftkd_cli.layout import LayoutChoice

    asked: list[tuple[str, str]] = []

    def chooser(kind):
        def choose(setting, module, batch, device, amp="off"):
            asked.append((kind, amp))
            return LayoutChoice(False, "measured (test)")
        return choose

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(runner, "training_layout", chooser("train"))
    monkeypatch.setattr(runner, "inference_layout", chooser("infer"))
    result = run_bench(**{**TINY, "size": 8, "roof_size": 8}, which=["bf16"])
    assert {("train", "off"), ("train", "bf16"), ("infer", "off"), ("infer", "bf16")} <= set(asked)
    assert "layout" in result.row("bf16.infer.D3C5.bf16").note


@pytest.mark.parametrize("to", ["file", "stdout"])
def test_cli_sigterm_keeps_the_rows_measured_so_far(monkeypatch, tmp_path, to):
    """SIGTERM during the third timed row (as a job scheduler or a time limit sends it): the two rows
    before it are shown and written with "complete": false, exit 143, SIGTERM's handler put back."""
    import os
    import signal

    from sftkd_cli.bench import runner

    calls = []
    real = runner.time_calls

    def time_calls(*args):
        calls.append(args)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(runner, "time_calls", time_calls)
    outside = []  # SIGTERM's handler around the command (not the default one, which would end pytest)

    def before(signum, frame):
        outside.append(signum)

    previous = signal.signal(signal.SIGTERM, before)
    try:
        out = tmp_path / "bench.json"
        res = CliRunner().invoke(app, [*CLI_TINY, "--only", "teacher,student",
                                       "--json", str(out) if to == "file" else "-"], env=WIDE)
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert res.exit_code == 143 and outside == [], res.output
    data = json.loads(out.read_text() if to == "file" else res.stdout)
    assert data["complete"] is False and [row["key"] for row in data["rows"]] == ["train.teacher.reference", "train.teacher"]
    assert "interrupted while timing 'student D3C5 train, reference way'" in data["notes"][0]
    if to == "file":
        assert re.search(r"^\s*teacher D5C5 train ", res.stdout, re.M) and not re.search(r"^\s*student ", res.stdout, re.M)
        assert f'bench interrupted: kept 2 rows, in {out} with "complete": false' in " ".join(res.stderr.split())


def test_cli_interrupted_before_the_first_row(monkeypatch, tmp_path):
    from sftkd_cli.bench import runner

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "measure_roof", interrupted)
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, [*CLI_TINY, "--json", str(out)])
    assert res.exit_code == 130 and "bench interrupted before its first row was measured: nothing to keep" in res.stderr
    assert not out.exists()


def test_reference_way_and_torchscript_compute_the_same_images():
    """The twins timed against each other do the same work: equal outputs for equal weights."""
    data = synthetic_batch(16, 2, torch.device("cpu"))
    torch.manual_seed(0)
    reference = reference_way("D3C5").eval()
    ours = DCCNN(3, 5).eval().to(memory_format=torch.channels_last)
    ours.load_state_dict(reference.state_dict())
    args = (data["zf"], data["kspace"], data["mask"])
    with torch.no_grad():
        expected = reference(*args)
        torch.testing.assert_close(ours(*args), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torchscript_runner(ours, data)(*args), expected, atol=1e-5, rtol=1e-4)
        if HAS_ORT:
            torch.testing.assert_close(onnx_runner(ours, data, torch.device("cpu"), "fp32")(*args), expected,
                                       atol=1e-5, rtol=1e-4)


def test_onnx_rows_are_fp32_cpu_only():
    """onnxruntime runs the exported file in fp32 on the CPU: other settings get a note, not a wrong row."""
    data = synthetic_batch(16, 1, torch.device("cpu"))
    with pytest.raises(SftkdError, match="fp32 on the CPU, not bf16 on cpu"):
        onnx_runner(DCCNN(3, 5), data, torch.device("cpu"), "bf16")


def test_bf16_rows_are_timed_against_their_fp32_twins(monkeypatch):
    """Device: CPU (AVX512-BF16 stood in for, so that the rows are made on any CPU)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    result = run_bench(**{**TINY, "size": 8, "roof_size": 8}, which=["bf16"])
    for m in ("D5C5", "D3C5"):
        for group in ("train", "infer"):
            fast, slow = result.row(f"bf16.{group}.{m}.bf16"), result.row(f"bf16.{group}.{m}.fp32")
            assert fast.baseline_s == slow.seconds and fast.flops == slow.flops
            assert result.ratios[f"bf16_speedup.{group}.{m}"] == pytest.approx(slow.seconds / fast.seconds)


def test_the_roof_is_the_best_of_a_large_map_and_the_runs_own_in_each_rows_precision(monkeypatch):
    """Device: CPU (AVX512-BF16 stood in for). On a CPU the run's own small maps can beat a large
    map (cache), so the roof is measured on all of them; bf16 rows are held against a roof measured
    under bf16 autocast, fp32 rows against the fp32 one. measure_roof is stood in for by fixed
    figures, so that which roof each row gets is known."""
    from sftkd_cli.bench import runner

    calls = []

    def roof(device, precision, repeats, shapes):
        calls.append((precision, list(shapes)))
        best = 400.0 if precision == "bf16" else 100.0
        return {"contiguous": (best / 2, 1.0, shapes[0]), "channels_last": (best, 0.5, shapes[-1])}

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(runner, "measure_roof", roof)
    result = run_bench(**{**TINY, "size": 8, "batch": 3, "roof_size": 12}, which=["student", "bf16"])
    shapes = [(2, 32, 12, 12), (3, 32, 8, 8), (1, 32, 8, 8)]
    assert calls == [("fp32", shapes), ("bf16", shapes), ("fp32", shapes)]  # bf16 before its rows; fp32 again at the end
    assert result.roof_gflops == 100.0 and result.roof["shape"] == [1, 32, 8, 8]
    assert result.roof["format"] == "channels_last" and result.roof["bf16"]["gflops"] == 400.0
    for row in result.rows:
        assert row.roof_gflops == (400.0 if row.key.endswith(".bf16") else 100.0), row.key
        assert row.precision == ("bf16" if row.key.endswith(".bf16") else "fp32")
    assert result.to_dict()["rows"][-1]["precision"] == "bf16"
    assert "bf16 roof: 400.0 GFLOP/s on (1, 32, 8, 8) in channels_last" in header(result)


def test_measure_roof_keeps_each_formats_best_shape(monkeypatch):
    """Device: CPU. Every shape is measured in both layouts, and each layout keeps its best shape
    by GFLOP/s: the timings are stood in for, so that the best is the second shape in NCHW and
    the first in channels_last (neither the first nor the last measured wins both)."""
    from sftkd_cli.bench import measure

    shapes = [(1, 32, 8, 8), (2, 32, 12, 12)]  # the second holds 4.5x the first's work
    seconds = iter([1.0, 1.0, 1.0, 10.0])  # contiguous: both shapes, then channels_last: both
    monkeypatch.setattr(measure, "time_calls", lambda fn, device, repeats, warmup: [next(seconds)])
    found = measure.measure_roof(torch.device("cpu"), "fp32", 1, shapes)
    assert {fmt: shape for fmt, (_, _, shape) in found.items()} == {"contiguous": shapes[1], "channels_last": shapes[0]}
    for gflops, seconds_, shape in found.values():
        assert gflops == pytest.approx(conv_flops(32, 32, shape[2], shape[3], shape[0]) / 1e9 / seconds_)


@pytest.mark.parametrize("native", [True, False], ids=["avx512-bf16", "emulated"])
def test_bf16_on_a_cpu_that_emulates_it_is_a_note(monkeypatch, native):
    """Device: CPU (its bf16 support stood in for): --precision bf16 there says it is emulated."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    res = run_bench(**TINY, which=["student"], precision="bf16")
    emulated = [note for note in res.notes if "emulated" in note]
    assert emulated == ([] if native else ["--precision bf16: this CPU has no AVX512-BF16, so bf16 is emulated "
                                           "(slower than fp32)"])


def _bench_run_and_dataset(tmp_path: Path) -> dict[str, Path]:
    """Files sftkd reads from a run and a dataset (`--json` must never replace them), and links to them."""
    run, data = tmp_path / "runs" / "x", tmp_path / "data"
    (run / "checkpoints").mkdir(parents=True)
    data.mkdir()
    (run / "recipe.yaml").write_text("model: {}\n")
    files = {"checkpoint": run / "checkpoints" / "best.pt", "manifest": data / "manifest.json",
             "volume": data / "vol1.h5", "metrics": run / "metrics.json"}
    for path in files.values():
        path.write_bytes(b'{"format": 1}\n')
    files["not yet there"] = run / "history.jsonl"
    files["link to the manifest"] = tmp_path / "link.json"
    files["link to the manifest"].symlink_to(files["manifest"])
    files["dangling link into the run"] = tmp_path / "dangling.json"
    files["dangling link into the run"].symlink_to(Path("runs") / "x" / "per_slice.csv")
    return files


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_json_never_replaces_a_file_sftkd_reads_from_a_run_or_a_dataset(monkeypatch, tmp_path, force):
    """`--json runs/x/checkpoints/best.pt` replaced the checkpoint with bench's JSON (and so a manifest)."""
    import sftkd_cli.bench as bench_package

    monkeypatch.setattr(bench_package, "run_bench", lambda **kw: pytest.fail("measured before --json was checked"))
    for what, target in _bench_run_and_dataset(tmp_path).items():
        before = target.read_bytes() if target.exists() else None
        res = CliRunner().invoke(app, [*CLI_TINY, "--json", str(target), *force])
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1 and f"--json {target}: refused, even with --force" in lines[0], (what, res.output)
        assert (target.read_bytes() if target.exists() else None) == before, what
    assert not (tmp_path / "runs" / "x" / "per_slice.csv").exists()


def test_json_replaces_an_earlier_bench_json_and_another_file_only_with_force(monkeypatch, tmp_path):
    import sftkd_cli.bench as bench_package

    tiny = [*CLI_TINY, "--only", "student"]
    out = tmp_path / "bench.json"
    assert CliRunner().invoke(app, [*tiny, "--json", str(out)]).exit_code == 0
    assert CliRunner().invoke(app, [*tiny, "--json", str(out)]).exit_code == 0  # its own earlier JSON: replaced
    notes = tmp_path / "notes.json"
    notes.write_text('{"kind": "compare", "format": 1}\n')
    with monkeypatch.context() as patched:
        patched.setattr(bench_package, "run_bench", lambda **kw: pytest.fail("measured before --json was checked"))
        res = CliRunner().invoke(app, [*tiny, "--json", str(notes)])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "not an earlier bench JSON" in lines[0] and "--force" in lines[0]
    assert notes.read_text() == '{"kind": "compare", "format": 1}\n'
    assert CliRunner().invoke(app, [*tiny, "--json", str(notes), "--force"]).exit_code == 0
    assert "train.student" in [row["key"] for row in json.loads(notes.read_text())["rows"]]


def test_cli_sigterm_in_a_training_part_exits_143(monkeypatch, tmp_path):
    """The epoch part trains: the engine's own handler takes SIGTERM and stops with RunInterrupted
    (SIGTERM), which the bench's handler never sees; the exit is still 143, not Ctrl-C's 130."""
    import signal

    from sftkd_cli.bench import runner

    def stopped_in_a_training_part(bench, parts, methods, compile):
        bench.result.rows.append(runner.BenchRow("x", "x", "train", 1.0, [1.0], 1, 1, 1.0))
        raise RunInterrupted("stopped by SIGTERM", signal.SIGTERM)

    monkeypatch.setattr(runner, "_run_parts", stopped_in_a_training_part)
    res = CliRunner().invoke(app, [*CLI_TINY, "--only", "epoch", "--json", str(tmp_path / "b.json")], env=WIDE)
    assert res.exit_code == 143, res.output


@pytest.mark.parametrize("flag", ["--only", "--methods"])
def test_an_option_list_without_a_name_is_refused_not_read_as_all(flag):
    res = CliRunner().invoke(app, [*CLI_TINY, flag, " ,"], env=WIDE)
    assert res.exit_code == 2 and res.stderr.startswith(f"error: bench {flag} ' ,': no name given; expected some of ")


def test_the_library_refuses_an_option_list_without_a_name_as_the_command_does():
    """check_parts([',']) returned every part; the command refused `--only ,`."""
    from sftkd_cli.bench import check_methods, check_parts

    for check, flag in ((check_parts, "--only"), (check_methods, "--methods")):
        with pytest.raises(SftkdError, match=rf"^bench {flag} ',, ': no name given; expected some of "):
            check([",", " "])
    assert check_parts([]) == check_parts(None)  # no list given: every part


def test_torchscript_rows_are_not_timed_under_bf16_autocast_as_exported_files_never_run_so():
    res = run_bench(**{**TINY, "size": 8, "roof_size": 8}, which=["infer"], precision="bf16")
    assert not any(".torchscript." in row.key for row in res.rows)
    assert any("TorchScript" in note and "runs in fp32, not under bf16 autocast" in note for note in res.notes)
