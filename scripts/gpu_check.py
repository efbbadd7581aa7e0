"""sftkd's GPU measurements in one run, on a machine with a CUDA GPU (a few minutes on an H200).

    python3 scripts/gpu_check.py OUT_DIR [--device cuda] [--quick]

Run it from the repository root, installed or not (it calls `python -m sftkd_cli`). It needs the
demo data prepared in data/demo (`sftkd prepare-data demo` reads nilearn's template: prepare the
folder elsewhere and copy it where the GPU machine has no nilearn), and nibabel for the tests.
Each step writes its files into OUT_DIR as it goes, and summary.txt is rewritten after each, so a
run cut short keeps what finished (a step still running at its time limit gets SIGTERM, the tests
SIGINT, so that the bench writes the rows it measured and pytest its report; then its whole
process group is killed):

    env.txt         the GPU, torch and CUDA versions
    bench.json      `sftkd bench` on the device (fp32, batch 4, 150x150, median of 20), and
    bench.txt       its table
    teacher.txt     the demo teacher trained 10 epochs: wall time with process start, its history
    demo.txt        the demo plan end to end (`sftkd reproduce recipes/demo.yaml --jobs 2`)
    cuda-tests.txt  the tests marked `cuda` (graphed against eager training, data and metrics on
                    the device, kill and resume, ...)
    summary.txt     each figure against its target, and the tests' outcome; also printed

The runs go to a temporary folder (removed afterwards), never to runs/. `--quick` (tiny bench
settings, 2 epochs) checks the script itself in minutes, also with `--device cpu`: its figures
mean nothing. The exit status is 0 when every step ran, whether or not a target was met.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: speed-up targets: (bench key of ours, key of its reference-way twin, what, the least twin / ours)
BENCH_TARGETS = (
    ("train.teacher.graph", "train.teacher.reference", "teacher D5C5 training step, graph vs reference way", 2.5),
    ("train.sft.graph", "train.sft.reference", "SFT step, graph vs reference way", 3.0),
    ("train.kd.at.graph", "train.kd_backprop.at", "KD-AT step, graph vs reference way", 3.0),
)
#: latency targets: (bench key, what, the most ms per slice)
LATENCY_TARGETS = (("infer.D3C5.graph.b1", "D3C5 inference, batch 1, graph", 0.6),
                   ("infer.D5C5.graph.b1", "D5C5 inference, batch 1, graph", 0.9))
EPOCH_TARGET = 1.25  # an epoch's wall time over the sum of its steps
TEACHER_TARGET_S = 8.0  # 10 demo epochs of the teacher, process start included
DEMO_TARGET_S = 60.0  # the demo plan end to end
GRACE_S = 10.0  # after SIGTERM at a step's time limit, before it is killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the results (created)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (with --quick: a dry run)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the script, measures nothing")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # the steps' cleanup runs
    args.out.mkdir(parents=True, exist_ok=True)
    if not (Path("data/demo/manifest.json").is_file() and Path("sftkd_cli").is_dir()):
        print("run from the repository root, with the demo data prepared in data/demo", file=sys.stderr)
        return 2
    quick = args.quick
    python = [sys.executable]
    sftkd = [*python, "-m", "sftkd_cli"]
    short = ["train.max_steps_per_epoch=4"] if quick else []  # --quick: the script checked, not the speed
    epochs = 2 if quick else 10
    codes: dict[str, int] = {}
    seconds: dict[str, float] = {}

    def run(name: str, command: list[str], timeout: float, **kwargs: Any) -> None:
        codes[name], seconds[name] = step(args.out, name, command, timeout, **kwargs)
        write_summary(args.out, epochs, codes, seconds, judged=not quick)

    # the most wanted first; the steps' time limits (530 s) and their grace (5 x 10 s) fit a 10-minute call
    with tempfile.TemporaryDirectory(prefix="sftkd-gpu-check-", ignore_cleanup_errors=True) as folder:
        runs = Path(folder)
        run("env", [*python, "-c", ENV_PROBE], 20)
        bench = [*sftkd, "bench", "--device", args.device, "--json", str(args.out / "bench.json")]
        bench += (["--size", "32", "--repeats", "2", "--warmup", "1", "--roof-size", "32", "--methods", "at"] if quick
                  else ["--repeats", "20", "--warmup", "5"])
        run("bench", bench, 170)
        teacher = [*sftkd, "train-teacher", "recipes/demo/teacher.yaml", f"run.dir={runs}", "run.name=teacher",
                   f"train.epochs={epochs}", f"train.device={args.device}", *short]
        run("teacher", teacher, 60, history=runs / "teacher" / "history.jsonl")
        demo = [*sftkd, "reproduce", "recipes/demo.yaml", "--jobs", "2", "--runs-dir", str(runs / "demo"),
                f"train.device={args.device}", *(["train.epochs=2", *short] if quick else [])]
        run("demo", demo, 110)
        tests = [*python, "-m", "pytest", "-o", "addopts=", "-q", "-rfEs", "-p", "no:cacheprovider", "-m", "cuda",
                 "tests"]
        if importlib.util.find_spec("xdist") is not None:
            tests[3:3] = ["-n", "4"]
        if importlib.util.find_spec("pytest_timeout") is not None:
            tests[3:3] = ["--timeout=90"]  # one hung test does not take the step's whole limit
        if args.device != "cpu":
            run("cuda-tests", tests, 170, stop=signal.SIGINT)  # SIGINT: pytest still prints its report
    print((args.out / "summary.txt").read_text(), end="")
    return 0 if all(code == 0 for code in codes.values()) else 1


def write_summary(out: Path, epochs: int, codes: dict[str, int], seconds: dict[str, float], judged: bool = True) -> None:
    """OUT/summary.txt from the steps run so far (rewritten after each); not `judged` (--quick):
    its tiny settings check the script, so no figure is set against its target."""
    lines = summary(out / "bench.json", epochs, {name: (codes[name], seconds[name]) for name in codes}, judged)
    if not judged:
        lines.insert(0, "--quick: a dry run of this script with tiny settings; no figure below measures a target")
    if "cuda-tests" in codes:
        lines += _last_line(out / "cuda-tests.txt", codes["cuda-tests"])
    (out / "summary.txt").write_text("\n".join(lines) + "\n")


ENV_PROBE = """
import platform, subprocess, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip())
else:
    print("no CUDA device")
import importlib.util, shutil
print("present:", {name: importlib.util.find_spec(name) is not None for name in ("nibabel", "xdist", "pytest_timeout")},
      "torchrun:", shutil.which("torchrun"))
"""


def step(out: Path, name: str, command: list[str], timeout: float, history: Path | None = None,
         grace: float = GRACE_S, stop: int = signal.SIGTERM) -> tuple[int, float]:
    """Run `command` into OUT/name.txt (stdout and stderr); its exit code (124: timed out) and wall
    seconds. At `timeout` it gets `stop` (SIGTERM: the bench then writes the rows it measured;
    SIGINT: pytest prints its report) and `grace` seconds to end; then its process group (the
    reproduce workers, pytest's) is killed."""
    shown = " ".join(command[:2] + ["..."] if command[1] == "-c" else command)
    print(f"{name}: {shown}", flush=True)
    start = time.perf_counter()
    with (out / f"{name}.txt").open("w") as log:
        log.write(f"$ {shown}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "140"})
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            code = 124
        finally:  # also when this script is stopped: the step (a session of its own) must not outlive it
            if process.poll() is None:
                process.send_signal(stop)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what it left behind (spawned workers) ends with it
            process.wait()
        seconds = time.perf_counter() - start
        log.write(f"\nexit {code} after {seconds:.1f} s wall\n")
        if history is not None and history.is_file():
            log.write(f"\n{history.name}:\n{history.read_text()}")
    print(f"{name}: exit {code}, {seconds:.1f} s", flush=True)
    return code, seconds


def summary(bench_json: Path, epochs: int, steps: dict[str, tuple[int, float]], judged: bool = True) -> list[str]:
    """Each measured figure against its target, one line each; `steps`: the exit code and wall
    seconds of each step run so far (a timing counts only from a step that ended well); not
    `judged`: each figure with its target, without a verdict."""
    lines: list[str] = []

    def _verdict(text: str, met: bool, target: str) -> str:
        return f"{text}  [{('met' if met else 'NOT met') if judged else 'target'}: {target}]"

    if bench_json.is_file():
        result = json.loads(bench_json.read_text())
        rows = {row["key"]: row for row in result["rows"]}
        lines.append(f"{result['machine']['name']}, torch {result['machine']['torch']}, "
                     f"size {result['settings']['size']}, batch {result['settings']['batch']}")
        if not result.get("complete", True):
            lines.append(f"bench: interrupted after {len(rows)} rows (its time limit); what follows is from those")
        for ours, twin, what, target in BENCH_TARGETS:
            if ours in rows and twin in rows:
                ratio = rows[twin]["seconds"] / rows[ours]["seconds"]
                lines.append(_verdict(f"{what}: {ratio:.2f}x", ratio >= target, f">= {target}x"))
            else:
                lines.append(f"{what}: not measured (no {ours if ours not in rows else twin} row)")
        for key, what, target in LATENCY_TARGETS:
            if key in rows:
                ms = rows[key]["ms_per_slice"]
                lines.append(_verdict(f"{what}: {ms:.3f} ms/slice", ms <= target, f"<= {target} ms"))
            else:
                lines.append(f"{what}: not measured (no {key} row)")
        ratio = result["ratios"].get("epoch_over_steps.teacher")
        if ratio is not None:
            lines.append(_verdict(f"teacher epoch / sum of its steps: {ratio:.2f}x", ratio <= EPOCH_TARGET,
                                  f"<= {EPOCH_TARGET}x"))
        for key, value in sorted(result["ratios"].items()):
            if key.startswith(("bf16_speedup.", "graph_speedup.")):
                lines.append(f"{key}: {value:.2f}x")
        lines.extend(f"note: {note}" for note in result["notes"] if "skipped" in note)
    elif "bench" in steps:
        lines.append("bench: no result")
    timed = (("teacher", f"demo teacher, {epochs} epochs, with process start", TEACHER_TARGET_S, " at 10 epochs"),
             ("demo", "demo plan end to end", DEMO_TARGET_S, ""))
    for name, what, target, note in timed:
        if name not in steps:
            continue
        code, wall = steps[name]
        if code == 0:
            lines.append(_verdict(f"{what}: {wall:.1f} s", wall < target, f"< {target:.0f} s{note}"))
        elif code == 124:
            lines.append(f"{what}: cut at its time limit ({wall:.1f} s; see {name}.txt)")
        else:
            lines.append(f"{what}: FAILED (exit {code} after {wall:.1f} s; see {name}.txt)")
    return lines


def _last_line(log: Path, code: int) -> list[str]:
    """The tests' outcome: the last line pytest printed, or that it printed none."""
    lines = log.read_text().splitlines() if log.is_file() else []
    outcome = [line for line in lines if re.search(r"\d+ (passed|failed|skipped|errors?)\b", line)]
    return [f"cuda tests: {outcome[-1].strip('= ')}" if outcome else f"cuda tests: no outcome (exit {code})"]


if __name__ == "__main__":
    sys.exit(main())
