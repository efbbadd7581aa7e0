"""The benchmark run of `sftkd bench`: the settings' checks, the rows in order (each with its
reference-way twin), the exported-file and compiled inference runners, ratios and notes."""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sftkd_cli.bench.flops import model_flops, sft_flops
from sftkd_cli.bench.measure import (ACCELERATION, COMPLEX, Roofs, machine_info, measure_roof, precision_context,
                                     slice_batch, synthetic_batch, time_calls, train_step_fn)
from sftkd_cli.bench.reference import kd_objectives, reference_way
from sftkd_cli.bench.parts import check_methods, check_parts
from sftkd_cli.bench.results import BenchResult, BenchRow
from sftkd_cli.choices import (CUDA_SWEEP_BATCH, EPOCH_COUNT, EPOCH_STEPS, EPOCH_VAL_SLICES, MAX_SIZE,
                               MAX_THREADS, STUDENT, TEACHER)
from sftkd_cli.errors import RunInterrupted, SftkdError, counted
from sftkd_cli.acquisition import Acquisition
from sftkd_cli.layout import LayoutChoice, inference_layout, training_layout
from sftkd_cli.models import DCCNN, build_model
from sftkd_cli.runtime import (bf16_lacking, cpu_threads, precision_policy, random_states_kept, select_device,
                               synchronize)
from sftkd_cli.training.objectives import Batch, Supervised
from sftkd_cli.training.sft import StudentFriendly, batched_branches

from sftkd_cli.choices import BENCH_PRECISIONS as PRECISIONS


def _check(settings: dict[str, Any]) -> None:
    """One-line SftkdErrors for impossible settings."""
    limits = (("size", 8, MAX_SIZE), ("batch", 1, 1024), ("threads", 1, MAX_THREADS), ("repeats", 1, 10_000),
              ("warmup", 0, 10_000), ("roof_size", 8, MAX_SIZE), ("roof_batch", 1, 1024))
    for key, low, high in limits:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SftkdError(f"bench --{key.replace('_', '-')} {value!r}: expected an integer from {low} to {high}")
    if settings["precision"] not in PRECISIONS:
        raise SftkdError(f"bench --precision {settings['precision']!r}: expected fp32 or bf16")


#: called with a short line before each measurement (the CLI shows it in its status line)
Progress = Callable[[str], None]


def run_bench(
    size: int = 150,
    batch: int = 4,
    threads: int = 1,
    precision: str = "fp32",
    device: str = "auto",
    repeats: int = 5,
    warmup: int = 2,
    which: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    compile: bool = False,
    roof_size: int = 256,
    roof_batch: int = 16,
    progress: Progress | None = None,
    complex_data: bool = False,
    tf32: bool = False,
) -> BenchResult:
    """Measure training-step and inference speed on synthetic data (see the `sftkd_cli.bench` docstring).

    `which`: a list of parts to run (BENCH_PARTS: teacher, student, sft, kd, infer, bf16, epoch; all by default); `methods`:
    a list of KD methods for the kd part (all by default). Sets torch's thread count to `threads` for the
    duration and restores it afterwards, as it does Python's, NumPy's and torch's random
    states. Never needs a dataset. `complex_data`: every row on complex images (two channels,
    centred k-space, complex data consistency) with the networks built for them, the
    reference-way twins too. `tf32`: float32 convolutions and matrix
    products in TF32 on NVIDIA GPUs, as train.tf32 trains (off by default, as training).
    `roof_size`, `roof_batch`: the shape of the convolution the "% roof" figures are measured with
    (roof_batch x 32 channels x roof_size x roof_size), recorded with the roof.

    A KeyboardInterrupt (Ctrl-C; the CLI turns SIGTERM into one) while the rows are measured ends
    the run early: the result then holds the rows measured so far, `complete` False and a note
    naming where it stopped (the roof from the start of the run only; also when it comes while the
    roof is measured again at the end). Before the first row is measured it propagates as a
    KeyboardInterrupt: there is nothing to keep.
    """
    precision = precision.lower() if isinstance(precision, str) else precision  # BF16 is bf16, as --precision
    settings = {"size": size, "batch": batch, "threads": threads, "precision": precision, "repeats": repeats,
                "warmup": warmup}
    _check({**settings, "roof_size": roof_size, "roof_batch": roof_batch})  # the roof's shape is recorded with the roof
    parts, kd_methods = check_parts(which), check_methods(methods)
    dev = select_device(device, "--device")
    say = progress or (lambda message: None)
    # every model is built from seed 0 (rows reproducible), the epoch part trains a seeded run: the
    # caller's random streams are left as they were
    with cpu_threads(threads), precision_policy(tf32), random_states_kept(dev):
        settings.update(device=str(dev), parts=parts, methods=kd_methods if "kd" in parts else [],
                        compile=compile, acceleration=ACCELERATION, tf32=tf32)
        if complex_data:  # magnitude results keep their settings as they were
            settings["complex"] = True
        roof_shapes = list(dict.fromkeys([(roof_batch, 32, roof_size, roof_size), (batch, 32, size, size),
                                          (1, 32, size, size)]))
        say(f"roof: one 32->32 3x3 conv on {', '.join(map(str, roof_shapes))}")
        roofs = measure_roof(dev, precision, repeats, roof_shapes)
        result = BenchResult(
            settings=settings,
            machine=machine_info(dev, threads),
            roof_gflops=0.0,
            roof={},
        )
        if precision == "bf16" and (lacking := bf16_lacking(dev)):
            result.notes.append(f"--precision bf16: {lacking}, so bf16 is emulated (slower than fp32)")
        data = synthetic_batch(size, batch, dev, complex_data=complex_data)
        bench = _Bench(result, data, dev, size, batch, precision, repeats, warmup, say, roof_shapes,
                       COMPLEX if complex_data else None)
        try:
            _run_parts(bench, parts, kd_methods, compile)
        except (KeyboardInterrupt, RunInterrupted) as exc:  # keep the rows measured so far
            if not result.rows:
                raise KeyboardInterrupt from None  # nothing to keep
            result.complete = False
            result.stopped_by = exc.signum if isinstance(exc, RunInterrupted) else 0  # the epoch part's training
            result.notes.append(f"interrupted while timing {bench.current!r}: the {counted(len(result.rows), 'row')} "
                                "measured before it kept, the rest of the run not measured")
        twice = False
        if result.complete:
            try:
                say("roof again (a noisy machine can spoil one measurement)")
                again = measure_roof(dev, precision, repeats, roof_shapes)
            except (KeyboardInterrupt, RunInterrupted):  # every row is measured: keep them all
                result.complete = False
                result.notes.append("interrupted while measuring the roof again: every row kept, "
                                    "the roof from the start of the run only")
            else:
                roofs, twice = {fmt: max(roofs[fmt], again[fmt]) for fmt in roofs}, True
        _set_roof(result, roof_shapes, roofs, twice, bench.bf16_roofs)
        _add_ratios(result, kd_methods)
        _add_notes(result)
        if complex_data:
            result.notes.append("complex data: every network takes and returns complex images as two channels "
                                "(real, imaginary) with complex data consistency in centred k-space")
        return result


def _run_parts(bench: _Bench, parts: list[str], methods: list[str], compile: bool) -> None:
    """The rows of `parts`, in the bench's fixed order."""
    if "teacher" in parts or "student" in parts:
        bench.supervised([name for part, name in (("teacher", TEACHER), ("student", STUDENT)) if part in parts])
    if "sft" in parts:
        bench.sft()
    if "kd" in parts:
        bench.kd(methods)
    if "infer" in parts:
        bench.inference(compile)
    if "bf16" in parts:
        bench.bf16()
    if "epoch" in parts:
        bench.epoch()


def _set_roof(result: BenchResult, shapes: list[tuple[int, ...]], roofs: Roofs, twice: bool,
              bf16_roofs: Roofs | None) -> None:
    """Record the roof (the best memory format and shape; `twice`: measured at the start and at the
    end of the run, else at the start only) and give every row its fraction of it; the bf16 rows of
    a fp32 run get the roof measured under bf16 autocast (`bf16_roofs`, at the start of their part)."""
    shown = ", ".join(map(str, shapes))
    when = "best of start and end of the run" if twice else "start of the run"
    result.roof_gflops, result.roof = _roof_entry(roofs, f"Conv2d 32->32 3x3 forward, the best on {shown}, {when}")
    by_precision = {result.settings["precision"]: result.roof_gflops}
    if bf16_roofs is not None:
        gflops, entry = _roof_entry(bf16_roofs, "the same under bf16 autocast, measured before the bf16 rows")
        result.roof["bf16"] = {"gflops": gflops, **entry}
        by_precision["bf16"] = gflops
    for row in result.rows:
        row.roof_gflops = by_precision.get(row.precision, math.nan)


def _roof_entry(roofs: Roofs, what: str) -> tuple[float, dict[str, Any]]:
    """The roof's GFLOP/s (the best format and shape) and its record."""
    best = max(roofs, key=lambda fmt: roofs[fmt][0])
    gflops, seconds, shape = roofs[best]
    return gflops, {"what": what, "format": best, "shape": list(shape), "seconds": seconds,
                    "gflops_by_format": {fmt: gf for fmt, (gf, _, _) in roofs.items()}}


@dataclass
class _Bench:
    """The measurements of one `run_bench` call (shared inputs and settings)."""

    result: BenchResult
    data: Batch
    device: torch.device
    size: int
    batch: int
    precision: str
    repeats: int
    warmup: int
    progress: Progress
    roof_shapes: list[tuple[int, int, int, int]]
    acquisition: Acquisition | None = None  # what the networks are built for (None: the paper's magnitude data)
    bf16_roofs: Roofs | None = None  # the conv roof under bf16 autocast, measured for the bf16 part
    current: str = "the first row"  # what is being measured (an interruption's note names it)

    def say(self, message: str) -> None:
        """Report `message` (what is measured next) and remember it."""
        self.current = message
        self.progress(message)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def complex_data(self) -> bool:
        """Complex images (two channels): the networks are built for an acquisition."""
        return self.acquisition is not None

    def _batch_of(self, n: int) -> Batch:
        """`n` synthetic samples: the first of the run's batch, or a larger batch made for the sweep."""
        if n <= self.batch:
            return slice_batch(self.data, n)
        return synthetic_batch(self.size, n, self.device, complex_data=self.complex_data)

    def _graph_row(self, key: str, what: str, objective: nn.Module, flops: int, baseline: str,
                   precision: str | None = None) -> None:
        """On CUDA: `objective`'s training step replayed from a CUDA graph, as train.cuda_graphs
        auto trains (capturable Adam, channels_last; in `precision`, this run's unless given); a
        failed capture is a note, not a row."""
        from rich.console import Console

        from sftkd_cli.training.graphs import GraphedStep

        objective.to(self.device, memory_format=torch.channels_last).train()
        optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=1e-3, capturable=True)
        graphed = GraphedStep(objective, optimizer, self.device, self._amp(precision), console=Console(file=io.StringIO()))  # its line: a note
        if graphed.step(self.data) is None:  # the bench skips the row (the engine would train eagerly)
            self.result.notes.append(f"{what}: skipped ({graphed.failure})")
            return
        self._row(key, what, "train", lambda: graphed.step(self.data), self.batch, flops, "replayed from a CUDA graph",
                  baseline=baseline, precision=precision)

    def _model(self, name: str, reference_way_: bool = False) -> DCCNN:
        """Network `name` for this run's data, sftkd's way or the reference code's way."""
        return reference_way(name, self.acquisition) if reference_way_ else build_model(name, acquisition=self.acquisition)

    def _row(self, key: str, what: str, group: str, fn: Callable[[], Any], slices: int, flops: int,
             note: str = "", warmup: int | None = None, baseline: str | None = None,
             precision: str | None = None) -> BenchRow:
        """Time `fn`; `baseline` is the key of the reference-way row of the same work (timed before);
        `precision`: what `fn` runs in (default: the run's --precision)."""
        self.say(what)
        samples = time_calls(fn, self.device, self.repeats, self.warmup if warmup is None else warmup)
        row = BenchRow(key, what, group, statistics.median(samples), samples, slices, flops, 0.0, note=note,
                       baseline_s=self.result.row(baseline).seconds if baseline and self.result.has(baseline) else None,
                       precision=precision or self.precision)
        self.result.rows.append(row)
        return row

    def _amp(self, precision: str | None = None) -> str:
        """The autocast setting of `precision` (default: the run's --precision)."""
        return "bf16" if (precision or self.precision) == "bf16" else "off"

    def _layout(self, objective: nn.Module, precision: str | None = None) -> LayoutChoice:
        """The layout training `objective` in `precision` runs in, chosen as the engine chooses it
        (measured, cached per machine and precision)."""
        self.say(f"layout for {type(objective).__name__} training")
        return training_layout("auto", objective.to(self.device), self.data, self.device, self._amp(precision))

    def _step(self, objective: nn.Module, reference_way: bool = False, also_clear: nn.Module | None = None,
              precision: str | None = None) -> tuple[Callable[[], float], str]:
        """A training step of `objective` and the row's note: NCHW the reference way, else the chosen layout."""
        layout = None if reference_way else self._layout(objective, precision)
        step = train_step_fn(objective, self.data, self.device, precision or self.precision, also_clear=also_clear,
                             channels_last=layout is not None and layout.channels_last)
        return step, "" if layout is None else f"layout {layout.describe()}"

    def supervised(self, names: list[str]) -> None:
        for name in names:
            role = "teacher" if name == TEACHER else "student"
            baseline = f"train.{role}.reference"
            torch.manual_seed(0)
            model = self._model(name, True)
            step, _ = self._step(Supervised(model), True)
            self._row(baseline, f"{role} {name} train, reference way", "train", step,
                      self.batch, 3 * model_flops(model, self.size, self.batch))
            torch.manual_seed(0)
            model = self._model(name)
            step, note = self._step(Supervised(model))
            self._row(f"train.{role}", f"{role} {name} train", "train", step, self.batch,
                      3 * model_flops(model, self.size, self.batch), note, baseline=baseline)
            if self.cuda:
                self._graph_row(f"train.{role}.graph", f"{role} {name} train, CUDA graph", Supervised(model),
                                3 * model_flops(model, self.size, self.batch), baseline)

    def sft(self) -> None:
        """The reference way (branch by branch, NCHW, padded convs) and sftkd's SFT step as
        `sft.batched: auto` runs it here (branches batched on CUDA, one by one on the CPU)."""
        batched = batched_branches("auto", self.device)
        for key, label in (("reference", "reference way"), ("ours", "batched" if batched else "per branch")):
            torch.manual_seed(0)
            reference_way_ = key == "reference"
            teacher, student = self._model(TEACHER, reference_way_), self._model(STUDENT, reference_way_)
            objective = StudentFriendly(teacher, student, batched=batched and not reference_way_)
            step, note = self._step(objective, reference_way_)
            flops = 3 * sft_flops(teacher, student, self.size, self.batch)
            self._row("train.sft" + (".reference" if reference_way_ else ""), f"SFT step, {label}", "train", step,
                      self.batch, flops, note, baseline=None if reference_way_ else "train.sft.reference")
            if self.cuda and not reference_way_:
                self._graph_row("train.sft.graph", f"SFT step, {label}, CUDA graph", objective, flops,
                                "train.sft.reference")

    def kd(self, methods: list[str]) -> None:
        for method in methods:
            nograd, backprop, adapter = kd_objectives(method, self.data, acquisition=self.acquisition)
            t_fwd = model_flops(backprop.teacher, self.size, self.batch)
            s_fwd = model_flops(backprop.model, self.size, self.batch)
            step, _ = self._step(backprop, True, also_clear=backprop.teacher)
            self._row(f"train.kd_backprop.{method}", f"KD {method}, reference way (backprop T)", "train",
                      step, self.batch, 3 * (t_fwd + s_fwd + adapter))
            del backprop, step
            t_fwd = model_flops(nograd.teacher, self.size, self.batch)
            s_fwd = model_flops(nograd.model, self.size, self.batch)
            step, note = self._step(nograd)
            self._row(f"train.kd.{method}", f"KD {method} (no_grad T)", "train", step, self.batch,
                      t_fwd + 3 * (s_fwd + adapter), note, baseline=f"train.kd_backprop.{method}")
            if self.cuda:
                self._graph_row(f"train.kd.{method}.graph", f"KD {method} (no_grad T), CUDA graph", nograd,
                                t_fwd + 3 * (s_fwd + adapter), f"train.kd_backprop.{method}")
            del nograd, step

    def inference(self, compile: bool) -> None:
        for name in (TEACHER, STUDENT):
            torch.manual_seed(0)
            reference = self._model(name, True).to(self.device).eval()
            self._infer_rows(name, reference, "reference", reference)
            model = self._model(name).to(self.device).eval()
            model.load_state_dict(reference.state_dict())
            self.say(f"layout for {name} inference")
            layout = inference_layout("auto", model, self.data, self.device, self._amp())
            model = model.to(memory_format=layout.memory_format)
            self._infer_rows(name, model, "eager", model, f"layout {layout.describe()}")
            self._infer_rows(name, model, "torchscript", None)
            self._infer_rows(name, model, "onnx", None)
            if self.cuda:
                self._infer_rows(name, model, "graph", None)
            if compile:
                self._infer_rows(name, model, "compiled", None)

    def bf16(self) -> None:
        """bf16 autocast against fp32, both timed here: teacher/student training steps, inference at --batch."""
        if self.precision != "fp32":
            self.result.notes.append(f"bf16 rows: skipped (they compare against fp32; this run is --precision {self.precision})")
            return
        if lacking := bf16_lacking(self.device):
            self.result.notes.append(f"bf16 rows: skipped ({lacking}; bf16 would be emulated)")
            return
        self.say("bf16 roof: the same convs under bf16 autocast")
        self.bf16_roofs = measure_roof(self.device, "bf16", self.repeats, self.roof_shapes)
        for name in (TEACHER, STUDENT):
            torch.manual_seed(0)
            model = self._model(name)
            flops = 3 * model_flops(model, self.size, self.batch)
            for precision in ("fp32", "bf16"):
                step, note = self._step(Supervised(model), precision=precision)
                self._row(f"bf16.train.{name}.{precision}", f"{name} train, {precision}", "train", step, self.batch,
                          flops, note, baseline=f"bf16.train.{name}.fp32" if precision == "bf16" else None,
                          precision=precision)
            if self.cuda:  # where training runs on CUDA: inside a graph
                for precision in ("fp32", "bf16"):
                    self._graph_row(f"bf16.train.{name}.{precision}.graph", f"{name} train, {precision}, CUDA graph",
                                    Supervised(model), flops, f"bf16.train.{name}.fp32.graph", precision)
            model = model.eval()
            inputs = (self.data["zf"], self.data["kspace"], self.data["mask"])
            for precision in ("fp32", "bf16"):
                layout = inference_layout("auto", model, self.data, self.device, self._amp(precision))
                model = model.to(memory_format=layout.memory_format)

                def run(model: DCCNN = model, precision: str = precision) -> None:
                    with torch.inference_mode(), precision_context(self.device, precision):
                        model(*inputs)

                self._row(f"bf16.infer.{name}.{precision}", f"{name} infer b{self.batch}, {precision}", "infer", run,
                          self.batch, model_flops(model, self.size, self.batch), f"layout {layout.describe()}",
                          baseline=f"bf16.infer.{name}.fp32" if precision == "bf16" else None, precision=precision)
            if self.cuda:
                for precision in ("fp32", "bf16"):
                    self._bf16_graph_inference(name, model, precision)

    def _bf16_graph_inference(self, name: str, model: DCCNN, precision: str) -> None:
        """On CUDA: inference at --batch replayed from a graph captured in `precision` (a failed capture: a note)."""
        from sftkd_cli.training.graphs import graphed_inference

        inputs = (self.data["zf"], self.data["kspace"], self.data["mask"])
        try:
            replay = graphed_inference(model, inputs, amp=self._amp(precision))
        except SftkdError as exc:
            self.result.notes.append(f"{name} infer b{self.batch}, {precision}, CUDA graph: skipped ({exc})")
            return
        self._row(f"bf16.infer.{name}.{precision}.graph", f"{name} infer b{self.batch}, {precision}, CUDA graph",
                  "infer", lambda: replay(*inputs), self.batch, model_flops(model, self.size, self.batch),
                  baseline=f"bf16.infer.{name}.fp32.graph" if precision == "bf16" else None, precision=precision)

    def epoch(self) -> None:
        """The teacher trained by the engine at the demo's scale (`bench.epoch`): an epoch's wall
        time against the sum of its steps, each step timed as training runs it (the teacher
        row, or its CUDA-graph row; timed first if the teacher part did not run)."""
        from sftkd_cli.bench.epoch import SyntheticSlices, epoch_seconds

        if not self.result.has("train.teacher"):
            self.supervised([TEACHER])
        step = self.result.row("train.teacher.graph" if self.result.has("train.teacher.graph") else "train.teacher")
        self.say(f"teacher {TEACHER}: {EPOCH_COUNT} epochs of a real training run")
        torch.manual_seed(0)
        model = self._model(TEACHER)
        train = SyntheticSlices(self.size, EPOCH_STEPS * self.batch, seed=1, complex_data=self.complex_data)
        val = SyntheticSlices(self.size, EPOCH_VAL_SLICES, seed=2, complex_data=self.complex_data)
        samples = epoch_seconds(Supervised(model), train, val, epochs=EPOCH_COUNT, batch=self.batch,
                                device=self.device, amp=self._amp(), tf32=self.result.settings["tf32"])
        steps_s = EPOCH_STEPS * step.seconds
        row = BenchRow("epoch.teacher", f"teacher {TEACHER} epoch ({EPOCH_STEPS} steps, {EPOCH_VAL_SLICES} val)",
                       "train", statistics.median(samples), samples, EPOCH_STEPS * self.batch,
                       EPOCH_STEPS * step.flops + model_flops(model, self.size, EPOCH_VAL_SLICES), 0.0,
                       note=(f"{EPOCH_STEPS} steps x {step.ms:.1f} ms ({step.what}) = {steps_s * 1e3:,.0f} ms; the rest "
                             "is batches, validation, history and checkpoints; epochs after the first of a real "
                             "training run (train-teacher's engine)"), precision=self.precision)
        self.result.rows.append(row)
        self.result.add_ratio("epoch_over_steps.teacher", row.seconds / steps_s,
                              "teacher epoch / the sum of its steps (what an epoch spends around them)")

    def _runner(self, name: str, model: DCCNN, mode: str, data: Batch) -> tuple[Callable | None, str]:
        """The callable that `mode` times (built and warmed up here), and a note; None if unavailable."""
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # "no code generation for complex operators": the DC FFTs
                warnings.filterwarnings("ignore")
                if mode == "torchscript":
                    if self.precision != "fp32":  # as `sftkd evaluate --exported` refuses --amp for a file
                        raise SftkdError(f"an exported file runs in fp32, not under {self.precision} autocast")
                    runner = torchscript_runner(model, data)
                elif mode == "onnx":
                    runner = onnx_runner(model, data, self.device, self.precision)
                elif mode == "graph":
                    from sftkd_cli.training.graphs import graphed_inference

                    runner = graphed_inference(model, (data["zf"], data["kspace"], data["mask"]), amp=self._amp())
                else:
                    runner = torch.compile(model, dynamic=False)
                    self.say(f"compiling {name} for batch {data['zf'].shape[0]}")
                    with torch.inference_mode(), precision_context(self.device, self.precision), _freezing():
                        runner(data["zf"], data["kspace"], data["mask"])
                    synchronize(self.device)
        except Exception as exc:  # inductor needs a C++ compiler on the CPU; ONNX the export extra, fp32, CPU
            what = {"compiled": "torch.compile", "torchscript": "TorchScript", "onnx": "ONNX", "graph": "CUDA graph"}[mode]
            self.result.notes.append(f"{what} {name} (batch {data['zf'].shape[0]}): skipped ({_one_line(exc)})")
            return None, ""
        took = time.perf_counter() - start
        if mode == "torchscript":
            return runner, f"traced, saved and loaded in {took:.1f} s (as `sftkd export` files run)"
        if mode == "graph":
            return runner, f"captured in {took:.1f} s; replayed with one launch"
        if mode == "onnx":
            return runner, (f"exported and loaded in {took:.1f} s; onnxruntime {counted(torch.get_num_threads(), 'thread')}, "
                            "DC as matrix-product DFTs (as `sftkd export --format onnx` files run)")
        return runner, f"compiled in {took:.1f} s (inductor, frozen weights); the DC layer's complex FFTs stay eager"

    def _infer_rows(self, name: str, model: DCCNN, mode: str, runner: Callable | None, note: str = "") -> None:
        sizes = sorted({1, self.batch} | ({CUDA_SWEEP_BATCH} if self.cuda else set()))  # a sweep on CUDA
        for n in sizes:
            data = self._batch_of(n)
            if mode in ("torchscript", "onnx", "compiled", "graph"):  # built per batch size
                runner, note = self._runner(name, model, mode, data)
                if runner is None:
                    return

            def run(data: Batch = data, runner: Callable = runner) -> None:
                with torch.inference_mode(), precision_context(self.device, self.precision):
                    runner(data["zf"], data["kspace"], data["mask"])

            label = {"eager": "", "reference": ", reference way"}.get(mode, f" {mode}")
            self._row(f"infer.{name}.{mode}.b{n}", f"{name} infer b{n}{label}", "infer", run, n,
                      model_flops(model, self.size, n), note,
                      warmup=max(self.warmup, 1) if mode != "eager" else None,
                      baseline=None if mode == "reference" else f"infer.{name}.reference.b{n}")


@contextlib.contextmanager
def _freezing() -> Iterator[None]:
    """Inductor with frozen weights (constant folding, prepacked oneDNN convs, fused ReLU) while compiling."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


def torchscript_runner(model: DCCNN, data: Batch) -> Callable:
    """The model as `sftkd export --format torchscript` writes it (a trace with torch.fft DC),
    loaded back as `sftkd evaluate --exported` runs it."""
    return _exported_runner(model, data, "torchscript")


def onnx_runner(model: DCCNN, data: Batch, device: torch.device, precision: str) -> Callable:
    """The model as `sftkd export --format onnx` writes it (DC as DFT matrix products for this
    image size), run in onnxruntime as `sftkd evaluate --exported` runs it (fp32, on the CPU)."""
    if device.type != "cpu" or precision != "fp32":
        raise SftkdError(f"onnxruntime runs the exported file in fp32 on the CPU, not {precision} on {device.type}")
    return _exported_runner(model, data, "onnx")


def _exported_runner(model: DCCNN, data: Batch, fmt: str) -> Callable:
    """Write `model` with export's own writer for `fmt` to a temporary file and load it as evaluate does."""
    from sftkd_cli.export import exportable, write_onnx, write_torchscript
    from sftkd_cli.exported import load_exported, split_complex

    wrapper = exportable(model, tuple(data["zf"].shape[-2:]), fixed=fmt == "onnx").eval()
    example = (data["zf"], split_complex(data["kspace"]), data["mask"])
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        path = Path(folder) / f"model.{fmt}"
        (write_onnx if fmt == "onnx" else write_torchscript)(wrapper, example, path)
        return load_exported(path, device=data["zf"].device, threads=torch.get_num_threads())


def _one_line(exc: BaseException) -> str:
    """An exception in one line: an SftkdError's own message (written for users), else type: message."""
    text = (str(exc) if isinstance(exc, SftkdError) else f"{type(exc).__name__}: {exc}").strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _ratio(result: BenchResult, top: str, bottom: str) -> float | None:
    if result.has(top) and result.has(bottom):
        return result.row(top).seconds / result.row(bottom).seconds
    return None


def _add_ratios(result: BenchResult, methods: list[str]) -> None:
    """Slower / faster time ratios that answer the design questions, each with its words."""
    batch = result.settings["batch"]
    pairs = {  # key -> (slower row, faster row, the ratio in words)
        "teacher_over_student_train": ("train.teacher", "train.student", "train step, teacher / student"),
    }
    for n in sorted({1, batch}):
        pairs[f"teacher_over_student_latency_b{n}"] = (f"infer.{TEACHER}.eager.b{n}", f"infer.{STUDENT}.eager.b{n}",
                                                      f"inference time, teacher / student (batch {n})")
    for method in methods:
        pairs[f"kd_backprop_over_nograd.{method}"] = (
            f"train.kd_backprop.{method}", f"train.kd.{method}",
            f"KD {method} step, reference way (backprop through the teacher) / ours")
    for step in ("teacher", "student", "sft", *(f"kd.{method}" for method in methods)):
        name = "SFT" if step == "sft" else f"KD {step[3:]}" if step.startswith("kd.") else step
        pairs[f"graph_speedup.train.{step}"] = (f"train.{step}", f"train.{step}.graph",
                                                f"{name} training step, eager / CUDA graph")
    modes = {"graph": "CUDA graph", "compiled": "compiled", "torchscript": "TorchScript", "onnx": "ONNX (onnxruntime)"}
    for name in (TEACHER, STUDENT):
        for n in sorted({1, batch, CUDA_SWEEP_BATCH}):
            for mode, words in modes.items():
                key = f"{'compile' if mode == 'compiled' else mode}_speedup.{name}.b{n}"
                pairs[key] = (f"infer.{name}.eager.b{n}", f"infer.{name}.{mode}.b{n}",
                              f"{name} inference, eager / {words} (batch {n})")
    for name in (TEACHER, STUDENT):
        for group in ("train", "infer"):
            what = f"{name} {'training step' if group == 'train' else 'inference'}, fp32 / bf16 autocast"
            pairs[f"bf16_speedup.{group}.{name}"] = (f"bf16.{group}.{name}.fp32", f"bf16.{group}.{name}.bf16", what)
            pairs[f"bf16_speedup.{group}.{name}.graph"] = (f"bf16.{group}.{name}.fp32.graph",
                                                          f"bf16.{group}.{name}.bf16.graph", f"{what} (CUDA graphs)")
    for key, (top, bottom, label) in pairs.items():
        value = _ratio(result, top, bottom)
        if value is not None:
            result.add_ratio(key, value, label)


def _add_notes(result: BenchResult) -> None:
    result.notes.append(
        "GFLOP/s counts conv FLOPs only (2*Cin*Cout*9*H'*W' per conv on the maps each way computes: padded maps "
        "for the reference way, shrinking valid maps for ours; training = 3x forward, "
        "teacher forward 1x in KD no_grad); DC FFTs and loss maths are not counted."
    )
