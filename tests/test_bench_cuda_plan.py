"""`sftkd bench`'s CUDA plan, dry-run on the CPU: the rows, baselines, ratios, notes, JSON and
table that a GPU run adds (training steps and inference replayed from CUDA graphs, the batch
sweep 1 / --batch / CUDA_SWEEP_BATCH).

Device: CPU. The stand-in for torch.cuda's streams and graphs (tests/fake_cuda.py, fixture
`fake_gpu`) runs GraphedStep and graphed_inference here, and `_Bench.cuda` is made true; the
device itself stays the CPU (so the ONNX rows run, and the machine line names the CPU). The
sweep's largest batch is 3 instead of 32, to stay small. No assertion looks at a timing. Real
CUDA graphs are checked on a GPU in tests/test_cuda_graphs.py (marked cuda).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cli_helpers import sftkd
from fake_cuda import CAPTURE_ERROR
from sftkd_cli.bench import run_bench, runner
from sftkd_cli.bench.display import ratio_lines, table
from test_bench import INFER_MODES as CPU_INFER_MODES, TINY

#: the sweep's largest batch here (CUDA_SWEEP_BATCH on a GPU)
SWEEP = 3
BATCHES = (1, 2, SWEEP)
INFER_MODES = (*CPU_INFER_MODES, "graph")
#: the training rows replayed from a CUDA graph and the reference-way row each is timed against
GRAPH_TRAIN = {"train.teacher.graph": "train.teacher.reference", "train.student.graph": "train.student.reference",
               "train.sft.graph": "train.sft.reference", "train.kd.at.graph": "train.kd_backprop.at"}


@pytest.fixture
def as_on_cuda(fake_gpu, monkeypatch):
    """run_bench plans as on CUDA (graph rows, the sweep) and runs on the CPU; yields the FakeCuda."""
    torch.set_num_threads(1)
    monkeypatch.setattr(runner._Bench, "cuda", property(lambda self: True))
    monkeypatch.setattr(runner, "CUDA_SWEEP_BATCH", SWEEP)
    return fake_gpu


def test_the_cuda_plan_has_its_graph_rows_sweep_and_ratios(as_on_cuda):
    result = run_bench(**TINY, which=["teacher", "student", "sft", "kd", "infer"], methods=["at"])
    infer = [f"infer.{m}.{mode}.b{n}" for m in ("D5C5", "D3C5") for mode in INFER_MODES for n in BATCHES]
    assert [row.key for row in result.rows] == [
        "train.teacher.reference", "train.teacher", "train.teacher.graph",
        "train.student.reference", "train.student", "train.student.graph",
        "train.sft.reference", "train.sft", "train.sft.graph",
        "train.kd_backprop.at", "train.kd.at", "train.kd.at.graph", *infer,
    ]
    # every graph row was captured once and timed by replays: a training row replays in the
    # capturing call and once per timed call, an inference row once per warm-up and timed call
    assert len(as_on_cuda.captured) == len(GRAPH_TRAIN) + 2 * len(BATCHES)
    assert as_on_cuda.replays == 2 * len(GRAPH_TRAIN) + 2 * 2 * len(BATCHES)
    for key, baseline in GRAPH_TRAIN.items():
        row, eager = result.row(key), result.row(key.removesuffix(".graph"))
        assert row.baseline_s == result.row(baseline).seconds == eager.baseline_s
        assert (row.group, row.slices, row.flops) == ("train", 2, eager.flops)
        assert row.what == f"{eager.what}, CUDA graph" and row.note == "replayed from a CUDA graph"
        step = key.removeprefix("train.").removesuffix(".graph")
        assert result.ratios[f"graph_speedup.train.{step}"] == pytest.approx(eager.seconds / row.seconds)
    for name in ("D5C5", "D3C5"):
        for n in BATCHES:
            reference, eager = result.row(f"infer.{name}.reference.b{n}"), result.row(f"infer.{name}.eager.b{n}")
            assert reference.baseline_s is None and reference.slices == n
            for mode in INFER_MODES[1:]:
                row = result.row(f"infer.{name}.{mode}.b{n}")
                assert row.baseline_s == reference.seconds and (row.slices, row.flops) == (n, eager.flops)
            graph = result.row(f"infer.{name}.graph.b{n}")
            assert graph.what == f"{name} infer b{n} graph" and graph.note.endswith("; replayed with one launch")
            assert result.ratios[f"graph_speedup.{name}.b{n}"] == pytest.approx(eager.seconds / graph.seconds)
    assert not any("CUDA graph" in note for note in result.notes), result.notes

    data = json.loads(json.dumps(result.to_dict()))
    rows = {row["key"]: row for row in data["rows"]}
    assert len(rows) == len(result.rows)
    for key in [*GRAPH_TRAIN, *(f"infer.{m}.graph.b{n}" for m in ("D5C5", "D3C5") for n in BATCHES)]:
        assert rows[key]["reference_way_s"] > 0 and rows[key]["speedup_in_run"] > 0
    assert {k for k in data["ratios"] if k.startswith("graph_speedup.")} == {
        *(f"graph_speedup.train.{s}" for s in ("teacher", "student", "sft", "kd.at")),
        *(f"graph_speedup.{m}.b{n}" for m in ("D5C5", "D3C5") for n in BATCHES)}

    console = Console(width=200, record=True)
    console.print(table(result))
    text = console.export_text()
    for row in result.rows:
        assert row.what in text
    assert "SFT step, per branch, CUDA graph" in text
    lines = ratio_lines(result)
    assert len(lines) == len(result.ratios)
    for label in ("teacher training step, eager / CUDA graph: ", "KD at training step, eager / CUDA graph: ",
                  "SFT training step, eager / CUDA graph: ", "D3C5 inference, eager / CUDA graph (batch 3): "):
        assert sum(line.startswith(label) for line in lines) == 1, (label, lines)


def test_a_failed_capture_is_a_note_instead_of_a_row(as_on_cuda, tmp_path):
    """The student's training capture fails: a note instead of its graph row, the teacher's graph
    row (captured before) as it was; torch captures nothing after a failed capture in a process,
    so the inference graphs are notes too ("not tried"); the CLI prints the table, the notes and
    the JSON."""
    as_on_cuda.fail_capture_of = lambda module: getattr(getattr(module, "model", module), "name", "") == "D3C5"
    out = tmp_path / "bench.json"
    result = sftkd("bench", "--device", "cpu", "--size", "16", "--batch", "2", "--repeats", "1", "--warmup", "0",
                   "--roof-size", "16", "--only", "teacher,student,infer", "--json", out)
    data = json.loads(out.read_text())
    keys = [row["key"] for row in data["rows"]]
    assert "train.teacher.graph" in keys and "train.student.graph" not in keys
    assert not any(".graph." in k for k in keys)
    assert [f"infer.D3C5.eager.b{n}" for n in BATCHES] == [k for k in keys if k.startswith("infer.D3C5.eager")]
    reason = f"RuntimeError: {CAPTURE_ERROR}"
    not_tried = (f"CUDA graph capture failed (not tried: one failed earlier in this process ({reason}), which leaves "
                 "torch's memory allocator mid-capture)")
    graph_notes = [note for note in data["notes"] if "CUDA graph" in note]
    assert graph_notes == [f"student D3C5 train, CUDA graph: skipped (CUDA graph capture failed ({reason}))",
                           f"CUDA graph D5C5 (batch 1): skipped ({not_tried})",
                           f"CUDA graph D3C5 (batch 1): skipped ({not_tried})"]
    assert not any(k.startswith("graph_speedup.") and k != "graph_speedup.train.teacher" for k in data["ratios"])
    assert "graph_speedup.train.teacher" in data["ratios"]
    text = " ".join(result.output.split())  # the table wraps to the terminal's width
    for words in ("teacher D5C5 train, CUDA graph", *(f"note: {note}" for note in graph_notes)):
        assert words in text, words


def test_bf16_is_timed_against_fp32_inside_graphs_too(as_on_cuda, monkeypatch):
    """On CUDA training runs inside graphs, so the bf16 part also sets bf16 against fp32 there:
    training steps and inference at --batch, each bf16 graph row against its fp32 graph twin."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # else skipped on the CPU
    result = run_bench(**TINY, which=["bf16"])
    per_model = [f"bf16.{group}.{{m}}.{p}{graph}" for group in ("train", "infer") for graph in ("", ".graph")
                 for p in ("fp32", "bf16")]
    assert [row.key for row in result.rows] == [key.format(m=m) for m in ("D5C5", "D3C5") for key in per_model]
    for m in ("D5C5", "D3C5"):
        for group in ("train", "infer"):
            fp32, bf16 = result.row(f"bf16.{group}.{m}.fp32.graph"), result.row(f"bf16.{group}.{m}.bf16.graph")
            assert fp32.baseline_s is None and bf16.baseline_s == fp32.seconds
            assert fp32.flops == bf16.flops == result.row(f"bf16.{group}.{m}.fp32").flops
            assert result.ratios[f"bf16_speedup.{group}.{m}.graph"] == pytest.approx(fp32.seconds / bf16.seconds)
            # each against the roof of its own precision (the bf16 one measured under autocast)
            assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
            assert (fp32.roof_gflops, bf16.roof_gflops) == (result.roof_gflops, result.roof["bf16"]["gflops"])
    assert len(as_on_cuda.captured) == 8  # 2 models x (train, infer) x (fp32, bf16)
    lines = ratio_lines(result)
    assert sum(line.startswith("D5C5 training step, fp32 / bf16 autocast (CUDA graphs): ") for line in lines) == 1
    assert sum(line.startswith("D3C5 inference, fp32 / bf16 autocast: ") for line in lines) == 1
    assert not any("skipped" in note for note in result.notes), result.notes


@pytest.fixture(scope="module")
def gpu_check():
    """scripts/gpu_check.py as a module."""
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[1] / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_scripts_summary_finds_every_target_in_a_cuda_bench(as_on_cuda, gpu_check, tmp_path):
    """scripts/gpu_check.py reads the bench JSON by key: every target it checks is in a CUDA run's rows."""
    result = run_bench(**TINY, which=["teacher", "sft", "kd", "infer", "epoch"], methods=["at"])
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result.to_dict()))
    lines = gpu_check.summary(path, 10, {"bench": (0, 100.0), "teacher": (0, 7.5), "demo": (0, 75.0)})
    assert not any("not measured" in line for line in lines), lines
    for what in ("teacher D5C5 training step, graph vs reference way: ", "SFT step, graph vs reference way: ",
                 "KD-AT step, graph vs reference way: ", "D3C5 inference, batch 1, graph: ",
                 "D5C5 inference, batch 1, graph: ", "teacher epoch / sum of its steps: "):
        assert sum(line.startswith(what) and line.endswith("]") for line in lines) == 1, (what, lines)
    assert lines[-2:] == ["demo teacher, 10 epochs, with process start: 7.5 s  [met: < 8 s at 10 epochs]",
                          "demo plan end to end: 75.0 s  [NOT met: < 60 s]"]
    log = tmp_path / "cuda-tests.txt"
    log.write_text("$ python -m pytest -m cuda\n..F.s  [100%]\n= 1 failed, 3 passed, 1 skipped in 9.1s =\n\nexit 1 after 9.5 s wall\n")
    assert gpu_check._last_line(log, 1) == ["cuda tests: 1 failed, 3 passed, 1 skipped in 9.1s"]
    assert gpu_check._last_line(tmp_path / "missing.txt", 124) == ["cuda tests: no outcome (exit 124)"]
    assert not any("interrupted" in line for line in lines)


def test_the_gpu_check_summary_never_scores_a_step_that_failed_or_was_cut(gpu_check, tmp_path):
    """A step's wall time is a figure only when the step ended well; the summary is written for the
    steps run so far (rewritten after each)."""
    lines = gpu_check.summary(tmp_path / "missing.json", 10, {"teacher": (2, 2.2), "demo": (124, 120.4)})
    assert lines == ["demo teacher, 10 epochs, with process start: FAILED (exit 2 after 2.2 s; see teacher.txt)",
                     "demo plan end to end: cut at its time limit (120.4 s; see demo.txt)"]
    assert gpu_check.summary(tmp_path / "missing.json", 10, {}) == []
    gpu_check.write_summary(tmp_path, 10, {"env": 0, "cuda-tests": 124}, {"env": 1.0, "cuda-tests": 180.0})
    assert (tmp_path / "summary.txt").read_text() == "cuda tests: no outcome (exit 124)\n"


def test_the_gpu_check_quick_summary_judges_nothing(gpu_check, tmp_path):
    """--quick's tiny settings check the script: its figures are shown with their targets, never
    as 'met' or 'NOT met', under a first line that says so."""
    gpu_check.write_summary(tmp_path, 2, {"teacher": 0, "demo": 0}, {"teacher": 4.5, "demo": 20.5}, judged=False)
    assert (tmp_path / "summary.txt").read_text().splitlines() == [
        "--quick: a dry run of this script with tiny settings; no figure below measures a target",
        "demo teacher, 2 epochs, with process start: 4.5 s  [target: < 8 s at 10 epochs]",
        "demo plan end to end: 20.5 s  [target: < 60 s]"]


def test_the_gpu_check_summary_says_when_the_bench_was_cut_short(as_on_cuda, gpu_check, tmp_path):
    """A bench stopped at its time limit (SIGTERM) wrote the rows it had: the summary reads those and says so."""
    def progress(message):
        if message.startswith("SFT step"):
            raise KeyboardInterrupt

    result = run_bench(**TINY, which=["teacher", "sft"], progress=progress)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result.to_dict()))
    lines = gpu_check.summary(path, 10, {"bench": (124, 180.0), "teacher": (0, 7.5), "demo": (0, 55.0)})
    assert lines[1] == "bench: interrupted after 3 rows (its time limit); what follows is from those"
    assert any(line.startswith("teacher D5C5 training step, graph vs reference way: ") for line in lines)
    assert "SFT step, graph vs reference way: not measured (no train.sft.graph row)" in lines


@pytest.mark.parametrize("on_sigterm", ["exit", "ignore"])
def test_a_gpu_check_step_at_its_time_limit_gets_sigterm_then_is_killed(gpu_check, tmp_path, on_sigterm):
    """Device: CPU (a child process). At the limit the step sends SIGTERM, so that the bench can write
    what it measured; one that does not end within the grace is killed. Either way: 124, logged."""
    import sys

    terminated, finished = tmp_path / "terminated", tmp_path / "finished"
    handler = ("lambda *a: (open(sys.argv[1], 'w').write('x'), sys.exit(3))" if on_sigterm == "exit"
               else "signal.SIG_IGN")
    child = (f"import signal, sys, time; signal.signal(signal.SIGTERM, {handler}); time.sleep(60); "
             "open(sys.argv[2], 'w').write('x')")
    code, _ = gpu_check.step(tmp_path, "child", [sys.executable, "-c", child, str(terminated), str(finished)], 2,
                             grace=0.5)
    assert code == 124 and not finished.exists()  # ended by SIGTERM, or killed: never slept to the end
    assert terminated.exists() is (on_sigterm == "exit")
    assert (tmp_path / "child.txt").read_text().splitlines()[-1].startswith("exit 124 after ")


def test_a_gpu_check_step_ends_what_its_command_left_running(gpu_check, tmp_path):
    """Device: CPU (child processes). A command that started a process of its own (reproduce's
    workers, pytest's) and ended, or was stopped: that process does not outlive the step."""
    import sys
    import time

    done = tmp_path / "grandchild-finished"
    grandchild = f"import time; time.sleep(3); open({str(done)!r}, 'w').write('x')"
    child = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {grandchild!r}])"
    code, _ = gpu_check.step(tmp_path, "child", [sys.executable, "-c", child], 30)
    assert code == 0
    time.sleep(4)
    assert not done.exists()


def test_a_gpu_check_step_ends_when_the_script_is_stopped(tmp_path):
    """Device: CPU (child processes). The script stopped by SIGTERM (its caller's time limit) while a
    step runs: the step, in a session of its own, does not outlive it."""
    import signal
    import subprocess
    import sys
    import time

    script = Path(__file__).parents[1] / "scripts" / "gpu_check.py"
    done = tmp_path / "child-finished"
    driver = (f"import importlib.util, signal, sys; spec = importlib.util.spec_from_file_location('g', {str(script)!r}); "
              "g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g); "
              "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143)); "
              f"g.step(g.Path({str(tmp_path)!r}), 'child', [sys.executable, '-c', "
              f"\"import time; time.sleep(4); open({str(done)!r}, 'w').write('x')\"], 60, grace=1)")
    parent = subprocess.Popen([sys.executable, "-c", driver])
    deadline = time.monotonic() + 60
    while not (tmp_path / "child.txt").exists() and time.monotonic() < deadline:  # the step has started
        time.sleep(0.05)
    time.sleep(0.5)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == 143
    time.sleep(4)
    assert not done.exists()
