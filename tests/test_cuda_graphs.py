"""train.cuda_graphs: the whole training step captured in a CUDA graph (sftkd_cli.training.graphs).

Device: the selection, the recipe key, the messages and the engine's handling of losses read
late run on the CPU. The tests marked `cuda` run on a GPU: graphed and eager training give the
same weights (teacher, SFT, distillation with each of the 8 feature methods, the two-stage
schedule), the last partial batch gets its own graph, a step that cannot be captured falls
back to eager training with one line, and `graphed_inference` matches the eager forward pass.

Tolerance of graphed vs eager weights (fp32, TF32 off, train.deterministic): rtol 1e-5, atol
1e-6. Both runs use the same deterministic kernels, so the first step's gradients are equal;
what differs is Adam's arithmetic (capturable Adam, which graphs need, orders it differently
than the default): about one float32 rounding, 1e-7 relative, of each update, over a few steps.
The weights are O(0.1) and an update O(lr = 1e-3): a missed learning-rate change (StepLR halves
it after each epoch here) or a skipped or repeated step differs by far more than the tolerance.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from cli_helpers import sftkd
from fake_cuda import CAPTURE_ERROR
from sftkd_cli.config import load_recipe, validate
from sftkd_cli.distill.catalog import default_taps
from sftkd_cli.distill.methods import METHODS, build_method
from sftkd_cli.errors import SftkdError
from sftkd_cli.models import build_model
from sftkd_cli.runs import RunDir, load_checkpoint
from sftkd_cli.runtime import collate, to_device
from sftkd_cli.training import engine
from sftkd_cli.training.engine import Trainer
from sftkd_cli.training.graphs import (GraphedStep, _Kept, graphed_inference, graphed_reconstructor, optimizer_state_for,
                                      use_cuda_graphs)
from sftkd_cli.training.kd import Distillation
from sftkd_cli.training.objectives import Supervised
from sftkd_cli.training.sft import StudentFriendly
from test_engine import Phantoms

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
FEATURE_METHODS = [name for name in METHODS if name != "none"]


# ----------------------------------------------------------------------------- the recipe key and the choice


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("on", "on"), ("off", "off"), ("'off'", "off")])
def test_the_recipe_key_takes_auto_on_and_off_also_as_yaml_reads_them(text, value):
    """`on` / `off` unquoted are YAML booleans: the key still reads them as the words."""
    recipe = load_recipe(None, [f"train.cuda_graphs={text}"])
    validate(recipe)
    assert recipe.train.cuda_graphs == value


def test_the_recipe_key_refuses_other_values_in_one_line(tmp_path):
    with pytest.raises(SftkdError, match=r"^train.cuda_graphs: expected auto, on or off, got 'sometimes'$"):
        validate(load_recipe(None, ["train.cuda_graphs=sometimes"]))
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  cuda_graphs: off\n  amp: off\n")
    recipe = load_recipe(path)
    assert (recipe.train.cuda_graphs, recipe.train.amp) == ("off", "off")


@pytest.mark.parametrize("setting, device, amp, world, expected", [
    ("auto", CPU, "off", 1, False),
    ("auto", CUDA, "off", 1, True),
    ("auto", CUDA, "bf16", 1, True),
    ("auto", CUDA, "fp16", 1, False),  # the fp16 grad scaler reads the GPU every step
    ("auto", CUDA, "off", 2, False),  # DistributedDataParallel
    ("off", CUDA, "off", 1, False),
    ("on", CUDA, "bf16", 1, True),
])
def test_auto_captures_when_training_on_cuda_in_one_process_without_fp16(setting, device, amp, world, expected):
    assert use_cuda_graphs(setting, device, amp, world) is expected


@pytest.mark.parametrize("device, amp, world, message", [
    (CPU, "off", 1, "train.cuda_graphs on: needs a CUDA device; this run trains on cpu"),
    (CUDA, "fp16", 1, "train.cuda_graphs on: not with train.amp fp16 (its gradient scaler reads the GPU every step); "
                      "use train.amp bf16 or off, or train.cuda_graphs off"),
    (CUDA, "off", 2, "train.cuda_graphs on: not with 2 processes (DistributedDataParallel); "
                     "use train.cuda_graphs auto or off"),
])
def test_on_where_graphs_cannot_work_is_one_line(device, amp, world, message):
    with pytest.raises(SftkdError) as error:
        use_cuda_graphs("on", device, amp, world)
    assert str(error.value) == message


def test_on_with_a_cpu_run_is_refused_before_anything_is_written(tiny_dataset, tmp_path):
    result = sftkd("train-teacher", "--model", "D2C2", "--name", "r", f"data.path={tiny_dataset}", f"run.dir={tmp_path}",
                   "train.device=cpu", "train.epochs=1", "train.cuda_graphs=on", ok=False)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: train.cuda_graphs on: needs a CUDA device; this run trains on cpu"]
    assert not (tmp_path / "r").exists()


def test_a_run_may_resume_with_another_setting(tiny_dataset, tmp_path):
    """Like train.device, the key says how a run trains, not what: --resume may change it."""
    args = ["train-teacher", "--model", "D2C2", "--name", "r", f"data.path={tiny_dataset}", f"run.dir={tmp_path}",
            "train.device=cpu", "train.threads=1", "train.max_steps_per_epoch=1"]
    sftkd(*args, "train.epochs=1")
    sftkd(*args, "train.epochs=2", "train.cuda_graphs=off", "--resume")
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["epoch"] == 2


def test_a_trainer_built_directly_checks_the_setting_too(tmp_path):
    recipe = load_recipe(None, ["train.device=cpu", "train.cuda_graphs=on", f"run.dir={tmp_path}", "run.name=r"])
    with pytest.raises(SftkdError, match="needs a CUDA device; this run trains on cpu"):
        Trainer(Supervised(build_model("D2C2")), recipe, RunDir(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_the_graphed_step_and_inference_refuse_what_they_cannot_capture():
    objective = Supervised(build_model("D2C2"))
    with pytest.raises(SftkdError, match="^CUDA graphs: needs a CUDA device; this run trains on cpu$"):
        GraphedStep(objective, torch.optim.Adam(objective.parameters()), CPU)
    with pytest.raises(SftkdError, match="^CUDA graphs: the optimizer must be built with capturable=True$"):
        GraphedStep(objective, torch.optim.Adam(objective.parameters()), CUDA)  # refused before any CUDA call
    with pytest.raises(SftkdError, match="^graphed inference: needs inputs on one CUDA device; got cpu$"):
        graphed_inference(objective.model, [torch.zeros(1, 1, 8, 8)])


def test_a_saved_optimizer_state_takes_this_runs_capturable_flag():
    """A checkpoint written with graphs (capturable Adam) resumes in an eager run on the CPU, and
    the other way round: load_state_dict takes the flag from the saved groups, and capturable Adam
    cannot step on the CPU."""
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(4))
    eager = torch.optim.Adam([weights], lr=1e-2)
    for _ in range(2):
        eager.zero_grad()
        weights.square().sum().backward()
        eager.step()
    graphed = eager.state_dict()
    graphed["param_groups"] = [{**g, "capturable": True} for g in graphed["param_groups"]]  # as a graphed run saves it

    plain = torch.optim.Adam([weights], lr=1e-2)
    plain.load_state_dict(graphed)
    weights.grad = torch.ones(4)
    with pytest.raises(Exception, match="capturable"):
        plain.step()
    fixed = torch.optim.Adam([weights], lr=1e-2)
    fixed.load_state_dict(optimizer_state_for(graphed, capturable=False))
    assert fixed.param_groups[0]["capturable"] is False and fixed.state[weights]["step"].device.type == "cpu"
    fixed.step()  # steps like the run that saved it
    assert optimizer_state_for(graphed, capturable=True)["param_groups"][0]["capturable"] is True
    assert graphed["param_groups"][0]["capturable"] is True  # the saved state itself is left alone


@pytest.mark.parametrize("steps_before", [0, 1], ids=["fresh-adam", "adam-with-state"])
def test_the_warm_up_before_a_capture_leaves_no_trace(steps_before):
    """The weights and Adam's state are put back after the warm-up steps (state the warm-up
    created: Adam's initial zeros), so training continues exactly as without them (CPU)."""
    batch = collate([Phantoms(4)[i] for i in range(2)])

    def trained(warm_up: bool) -> tuple[dict, dict]:
        torch.manual_seed(0)
        objective = Supervised(build_model("D2C2"))
        optimizer = torch.optim.Adam(objective.parameters(), lr=1e-2)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            objective(batch)[0].backward()
            optimizer.step()

        for _ in range(steps_before):
            step()
        if warm_up:
            kept = _Kept(objective, optimizer)
            for _ in range(3):
                step()
            kept.restore()
        for _ in range(2):
            step()
        return objective.state_dict(), optimizer.state_dict()["state"]

    (weights, state), (plain_weights, plain_state) = trained(True), trained(False)
    assert all(torch.equal(weights[k], plain_weights[k]) for k in plain_weights)
    assert state.keys() == plain_state.keys()
    for index, entries in plain_state.items():
        assert all(torch.equal(state[index][k], v) for k, v in entries.items()), index


# ----------------------------------------------------------------------------- losses read late (CPU)


class ReplayLike:
    """Stands in for `GraphedStep` on the CPU: applies the step eagerly and returns the loss as
    an unread tensor (no NaN check before the update), as a replay does; with `capture_fails`
    it returns None, as after a failed capture, and the engine steps eagerly itself."""

    def __init__(self, loop, capture_fails: bool = False) -> None:
        self.loop, self.capture_fails = loop, capture_fails
        self.keys: list = []

    def step(self, batch, key=()):
        self.keys.append(key)
        if self.capture_fails:
            return None
        self.loop.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.loop.objective(batch)
        loss.backward()
        self.loop.optimizer.step()
        return loss.detach()


def _fit_cpu(tmp_path, name, monkeypatch=None, objective=None, capture_fails=False, *overrides):
    recipe = load_recipe(None, ["train.epochs=2", "train.batch_size=2", "train.seed=7", "train.device=cpu",
                                "train.channels_last=false",  # no layout probe: forward calls are counted here
                                f"run.dir={tmp_path}", f"run.name={name}", "run.role=teacher", *overrides])
    run = RunDir(tmp_path / name)
    run.prepare(recipe, resume=False, force=False)
    seen = {}
    if monkeypatch is not None:
        real = Trainer._loop

        def with_replays(self, train_slices):
            loop = real(self, train_slices)
            loop.graphs = seen["graphs"] = ReplayLike(loop, capture_fails)
            return loop

        monkeypatch.setattr(Trainer, "_loop", with_replays)
    torch.manual_seed(0)
    objective = objective or Supervised(build_model("D2C2"))
    try:
        Trainer(objective, recipe, run).fit(Phantoms(5), Phantoms(2, seed=1))
    finally:
        run.unlock()
        if monkeypatch is not None:
            monkeypatch.undo()
    return run, seen.get("graphs")


@pytest.mark.parametrize("capture_fails", [False, True], ids=["replayed", "capture-failed"])
def test_losses_read_late_give_the_eager_history_and_weights(tmp_path, monkeypatch, capture_fails):
    eager, _ = _fit_cpu(tmp_path, "eager")
    late, replays = _fit_cpu(tmp_path, "late", monkeypatch, None, capture_fails, "train.checkpoint_every=2")
    assert replays.keys == [()] * 6  # Supervised's graph key, every step
    assert [row["train_loss"] for row in late.read_history()] == [row["train_loss"] for row in eager.read_history()]
    a = load_checkpoint(eager.checkpoint("last"))
    b = load_checkpoint(late.checkpoint("last"))
    assert (a["epoch_loss_sum"], a["epoch_loss_count"]) == (b["epoch_loss_sum"], b["epoch_loss_count"])
    assert all(torch.equal(v, b["objective"][k]) for k, v in a["objective"].items())


def test_a_nan_loss_read_late_names_its_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    class Exploding(Supervised):
        calls = 0

        def forward(self, batch):
            Exploding.calls += 1
            loss, parts = super().forward(batch)
            return (loss * float("nan") if Exploding.calls == 5 else loss), parts

    with pytest.raises(SftkdError, match=r"loss became nan at epoch 2, step 2; training stopped, the last good"):
        _fit_cpu(tmp_path, "nan", monkeypatch, Exploding(build_model("D2C2")))
    state = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)


def test_two_stage_distillation_keys_its_graphs_by_stage(tmp_path, monkeypatch):
    torch.manual_seed(1)
    student, teacher = build_model("D2C2"), build_model("D3C2")
    s_taps, t_taps = default_taps("at", student, teacher)
    method = build_method("at", [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps])
    kd = Distillation(student, teacher, method, s_taps, t_taps, schedule="two-stage", stage1_epochs=1)
    _, replays = _fit_cpu(tmp_path, "kd", monkeypatch, kd)
    assert replays.keys == [True] * 3 + [False] * 3  # the feature stage, then the second stage


# ----------------------------------------------------------------------------- GraphedStep with a stand-in for the GPU (CPU)
# (fixture fake_gpu: tests/fake_cuda.py)


def test_graphed_steps_replay_the_eager_updates_with_the_lr_schedule(tmp_path, fake_gpu):
    """The engine with GraphedStep (on the stand-in) trains to the same weights, bit for bit, as
    eager steps with the same capturable Adam (a capture that fails: every step eager). Checks
    the warm-up leaving no trace, the static inputs refilled, a graph per batch size and the lr
    tensor following StepLR (halved after each epoch here)."""
    graphed, steps = _fit_cpu_graphs(tmp_path, "graphed")
    assert steps.captured == 2 and not steps.failed  # batch sizes 2 and 1
    eager, failed = _fit_cpu_graphs(tmp_path, "eager", fail=True)
    assert failed.failed and failed.captured == 0
    assert [r["lr"] for r in graphed.read_history()] == [1e-3, 5e-4]  # the LR each epoch trained with
    assert [r["train_loss"] for r in graphed.read_history()] == [r["train_loss"] for r in eager.read_history()]
    a, b = (load_checkpoint(run.checkpoint("last")) for run in (graphed, eager))
    assert all(torch.equal(a["objective"][k], v) for k, v in b["objective"].items())
    assert a["optimizer"]["param_groups"][0]["capturable"] is True
    assert isinstance(a["optimizer"]["param_groups"][0]["lr"], float)


def _fit_cpu_graphs(tmp_path, name, fail=False, console=None):
    recipe = load_recipe(None, ["train.epochs=2", "train.batch_size=2", "train.seed=7", "train.device=cpu",
                                "train.lr_step=1", "train.lr_gamma=0.5", "train.cuda_graphs=on",
                                "train.channels_last=false",  # one layout for both runs, no probe calls
                                f"run.dir={tmp_path}", f"run.name={name}", "run.role=teacher"])
    run = RunDir(tmp_path / name)
    run.prepare(recipe, resume=False, force=False)
    torch.manual_seed(0)
    model = build_model("D2C2")
    objective = _CaptureFails(model) if fail else Supervised(model)
    seen = {}
    real = Trainer._loop

    def recording(self, train_slices):
        seen["loop"] = real(self, train_slices)
        return seen["loop"]

    Trainer._loop = recording
    try:
        Trainer(objective, recipe, run, console=console).fit(Phantoms(5), Phantoms(2, seed=1))
    finally:
        Trainer._loop = real
        run.unlock()
    return run, seen["loop"].graphs


class _CaptureFails(Supervised):
    """Raises while its step is being captured (as an op that syncs would), never eagerly."""

    def forward(self, batch):
        if _capturing_now():
            raise RuntimeError(f"{CAPTURE_ERROR}\nCUDA kernel errors ...")
        return super().forward(batch)


def _capturing_now() -> bool:
    """Whether GraphedStep is capturing (its `_record` is on the call stack)."""
    frame = sys._getframe()
    while frame is not None and frame.f_code.co_name != "_record":
        frame = frame.f_back
    return frame is not None


def test_a_failed_capture_is_one_line_and_the_step_runs_eagerly(tmp_path, fake_gpu, capsys):
    run, steps = _fit_cpu_graphs(tmp_path, "failed", fail=True)
    err = capsys.readouterr().err.splitlines()
    assert err == ["CUDA graph capture failed (RuntimeError: operation not permitted when stream is capturing); "
                   "training eagerly"]
    assert steps.failed and [r["epoch"] for r in run.read_history()] == [1, 2]
    assert all(isinstance(g["lr"], float) for g in steps.optimizer.param_groups)  # the floats are back


def test_a_failed_capture_is_said_on_the_console_training_is_given(tmp_path, fake_gpu, capsys):
    """A library caller's console gets the line (printed to stderr whatever the console was);
    a quiet console silences it."""
    import io

    from rich.console import Console

    log = Console(file=io.StringIO())
    _fit_cpu_graphs(tmp_path, "logged", fail=True, console=log)
    assert "; training eagerly" in log.file.getvalue() and "CUDA graph" not in capsys.readouterr().err
    _fit_cpu_graphs(tmp_path, "quiet", console=Console(quiet=True))  # refused: one failed earlier in this process
    assert capsys.readouterr() == ("", "")


def test_a_capture_runs_on_a_stream_of_the_runs_device_and_an_empty_graph_fails(monkeypatch):
    """graphs._capturing (torch.cuda's API recorded on the CPU): the capture stream is a new
    stream of the run's device with that device current (a capture records the current device's
    work only: on cuda:1 the graph came out empty), and torch's warning that a graph came out
    empty is a failed capture, not a graph replayed as a no-op; the caller's stream is set back."""
    from sftkd_cli.training import graphs

    calls: list[tuple] = []

    @contextlib.contextmanager
    def current(device):
        calls.append(("device", device))
        yield

    class Graph:
        def __init__(self, graph, stream=None, capture_error_mode="global"):
            calls.append(("graph", stream, capture_error_mode))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            if not exc[0]:
                warnings.warn("The CUDA Graph is empty. This usually means that the graph was attempted to be "
                              "captured on wrong device or stream.", UserWarning)

    monkeypatch.setattr(torch.cuda, "device", current)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: ("new stream", device))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: ("stream", device))
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: calls.append(("set back", stream)))
    monkeypatch.setattr(torch.cuda, "graph", Graph)
    device = torch.device("cuda:1")
    with pytest.raises(UserWarning, match="The CUDA Graph is empty"):
        with graphs._capturing(object(), device):
            pass
    assert calls == [("device", device), ("graph", ("new stream", device), "thread_local"),
                     ("set back", ("stream", device))]


def test_after_a_failed_capture_the_process_captures_nothing_more(tmp_path, fake_gpu, capsys):
    """Torch's allocator fails every capture after a failed one (an internal assert): a later run
    in the same process says so in its one line and trains eagerly, inference runs eagerly."""
    _fit_cpu_graphs(tmp_path, "failed", fail=True)
    capsys.readouterr()
    captured = len(fake_gpu.captured)
    run, steps = _fit_cpu_graphs(tmp_path, "later")  # would capture, were it alone
    assert steps.failed and steps.captured == 0 and len(fake_gpu.captured) == captured
    assert capsys.readouterr().err.splitlines() == [
        "CUDA graph capture failed (not tried: one failed earlier in this process (RuntimeError: operation not "
        "permitted when stream is capturing), which leaves torch's memory allocator mid-capture); training eagerly"]
    assert [r["epoch"] for r in run.read_history()] == [1, 2]
    model = build_model("D2C2").eval()
    assert graphed_reconstructor(model, CPU, "off", "auto") == (model, False)
    batch = collate([Phantoms(1)[0]])
    with pytest.raises(SftkdError, match=r"^CUDA graph capture failed \(not tried: "):
        graphed_inference(model, [batch["zf"], batch["kspace"], batch["mask"]], warmup=0)
    assert len(fake_gpu.captured) == captured


def test_an_empty_graph_fails_that_capture_only(fake_gpu, monkeypatch):
    """A graph that recorded nothing (torch's warning, an error in `_capturing`) is a failed
    capture, but one that ended cleanly: the next capture in the process goes ahead."""
    from sftkd_cli.training import graphs

    model = build_model("D2C2").eval()
    batch = collate([Phantoms(1)[0]])
    inputs = [batch["zf"], batch["kspace"], batch["mask"]]
    end = fake_gpu._end_capture

    def empty(module):
        raise UserWarning("The CUDA Graph is empty. This usually means that the graph was attempted to be "
                          "captured on wrong device or stream.")

    monkeypatch.setattr(fake_gpu, "_end_capture", empty)
    with pytest.raises(SftkdError, match=r"^CUDA graph capture failed \(UserWarning: The CUDA Graph is empty"):
        graphed_inference(model, inputs, warmup=0)
    assert graphs._earlier_failure is None
    monkeypatch.setattr(fake_gpu, "_end_capture", end)
    graphed_inference(model, inputs, warmup=0)
    assert fake_gpu.captured == [model]


def test_graphed_inference_on_the_stand_in_recomputes_into_one_output(fake_gpu):
    """graphed_inference on the stand-in (CPU): each call copies its inputs in and replays, the
    result written into the one static output (a stale output would still hold the first batch's
    image, or the NaN the capture leaves); other shapes are refused, a failed capture is one line."""
    torch.manual_seed(0)
    model = build_model("D2C2").eval()
    data = Phantoms(4)
    first, second = (collate([data[i] for i in pair]) for pair in ((0, 1), (2, 3)))
    run = graphed_inference(model, [first["zf"], first["kspace"], first["mask"]], warmup=1)
    assert fake_gpu.captured == [model] and fake_gpu.replays == 0
    with torch.no_grad():
        expected = [model(b["zf"], b["kspace"], b["mask"]) for b in (first, second)]
    out = run(first["zf"], first["kspace"], first["mask"])
    torch.testing.assert_close(out, expected[0], rtol=0, atol=0)
    with torch.inference_mode():  # as the bench calls it
        again = run(second["zf"], second["kspace"], second["mask"])
    assert again is out and fake_gpu.replays == 2
    torch.testing.assert_close(out, expected[1], rtol=0, atol=0)
    assert not torch.equal(expected[0], expected[1])
    with pytest.raises(SftkdError, match="captured for 2x1x12x12 float32"):
        run(first["zf"][:1], first["kspace"][:1], first["mask"][:1])
    inputs = [second["zf"], second["kspace"], second["mask"]]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the replay keeps the capture's autocast
        expected_bf16 = model(*inputs)
    assert not torch.equal(expected_bf16, expected[1])
    torch.testing.assert_close(graphed_inference(model, inputs, amp="bf16", warmup=0)(*inputs), expected_bf16,
                               rtol=0, atol=0)
    fake_gpu.fail_capture_of = lambda module: module is model
    with pytest.raises(SftkdError, match=r"^CUDA graph capture failed \(RuntimeError: operation not permitted when "
                                         r"stream is capturing\)$"):
        graphed_inference(model, [first["zf"], first["kspace"], first["mask"]], warmup=0)


def test_validation_replays_the_predictor_from_graphs_and_scores_as_eagerly(tmp_path, fake_gpu):
    """With train.cuda_graphs, validation replays the predictor from one graph per batch shape
    (8 and 3 here: 19 slices in batches of 8, 8 and 3) and scores exactly as eager validation
    does; each batch's output is kept before the next replay overwrites it (one volume spans
    all three batches, and the graph for 8 replays twice)."""
    torch.manual_seed(0)
    objective = Supervised(build_model("D2C2"))
    slices = Phantoms(19, seed=1)
    forward, graphed = graphed_reconstructor(objective.predictor(), CPU, "off", "auto")
    assert graphed
    replayed = engine.validate(objective, slices, CPU, "off", 8, forward)
    assert replayed == engine.validate(objective, slices, CPU, "off", 8)
    assert fake_gpu.captured == [objective.model, objective.model]
    assert engine.validate(objective, slices, CPU, "off", 8, forward) == replayed  # replays, no new capture
    assert len(fake_gpu.captured) == 2

    run, steps = _fit_cpu_graphs(tmp_path, "trained")  # the engine validates through its graphed predictor
    assert steps.captured == 2 and len(fake_gpu.captured) == 2 + 2 + 1  # 2 step graphs, 1 validation shape
    assert all(math.isfinite(row["val_psnr"]) for row in run.read_history())


# ----------------------------------------------------------------------------- on a GPU


def _objective(kind: str) -> torch.nn.Module:
    """A small objective of each kind, seeded: the same initial weights for every call."""
    torch.manual_seed(0)
    if kind == "teacher":
        return Supervised(build_model("D2C2"))
    if kind == "sft":
        return StudentFriendly(build_model("D3C2"), build_model("D2C2"))
    method_name, _, schedule = kind.partition(":")
    student, teacher = build_model("D2C2"), build_model("D3C2")
    s_taps, t_taps = default_taps(method_name, student, teacher)
    method = build_method(method_name, [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps])
    return Distillation(student, teacher, method, s_taps, t_taps, w_imit=0.5, schedule=schedule or "joint",
                        stage1_epochs=1 if schedule else 0)


@pytest.fixture
def exact_fp32(monkeypatch):
    """fp32 convolutions and matmuls (no TF32), deterministic kernels; restored afterwards."""
    from sftkd_cli.runtime import set_tf32_settings, tf32_settings, tf32_settings_for

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = tf32_settings()
    set_tf32_settings(tf32_settings_for(False, False))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(False)
    set_tf32_settings(before)


def _fit_cuda(tmp_path, name, objective, graphs, monkeypatch, *overrides):
    """Train `objective` 2 epochs on CUDA over 5 samples in batches of 2 (2, 2 and a partial 1),
    the lr halved after epoch 1; returns its weights and the graphed step (None when off)."""
    recipe = load_recipe(None, ["train.epochs=2", "train.batch_size=2", "train.seed=7", "train.device=cuda",
                                "train.lr_step=1", "train.lr_gamma=0.5", "train.deterministic=true",
                                f"train.cuda_graphs={graphs}", f"run.dir={tmp_path}", f"run.name={name}",
                                "run.role=teacher", *overrides])
    run = RunDir(tmp_path / name)
    run.prepare(recipe, resume=False, force=False)
    seen = {}
    real = Trainer._loop

    def recording(self, train_slices):
        seen["loop"] = real(self, train_slices)
        return seen["loop"]

    monkeypatch.setattr(Trainer, "_loop", recording)
    try:
        Trainer(objective, recipe, run).fit(Phantoms(5), Phantoms(2, seed=1))
    finally:
        run.unlock()
        monkeypatch.setattr(Trainer, "_loop", real)
    assert [row["lr"] for row in run.read_history()] == [1e-3, 5e-4]  # the LR each epoch trained with
    return {k: v.detach().clone() for k, v in objective.state_dict().items()}, seen["loop"].graphs


def _assert_close(graphed: dict[str, torch.Tensor], eager: dict[str, torch.Tensor]) -> None:
    assert graphed.keys() == eager.keys()
    for key in eager:
        torch.testing.assert_close(graphed[key], eager[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["teacher", "sft", *FEATURE_METHODS, "at:two-stage"])
def test_graphed_training_gives_the_eager_weights_on_cuda(kind, tmp_path, monkeypatch, exact_fp32):
    """Device: CUDA. Every objective, the partial last batch included (its own graph)."""
    assert len(FEATURE_METHODS) == 8
    eager, none = _fit_cuda(tmp_path, "eager", _objective(kind), "off", monkeypatch)
    graphed, graphs = _fit_cuda(tmp_path, "graphed", _objective(kind), "on", monkeypatch)
    assert none is None and not graphs.failed
    assert graphs.captured == (4 if kind.endswith("two-stage") else 2)  # batch sizes 2 and 1 (per stage)
    _assert_close(graphed, eager)


@pytest.mark.cuda
def test_graphed_bf16_training_stays_near_eager_bf16_on_cuda(tmp_path, monkeypatch, exact_fp32):
    """Device: CUDA. bf16 autocast inside the graph (weight cache off); bf16 rounds to 3 digits."""
    eager, _ = _fit_cuda(tmp_path, "eager", _objective("teacher"), "off", monkeypatch, "train.amp=bf16")
    graphed, graphs = _fit_cuda(tmp_path, "graphed", _objective("teacher"), "on", monkeypatch, "train.amp=bf16")
    assert not graphs.failed and graphs.captured == 2
    for key in eager:
        torch.testing.assert_close(graphed[key], eager[key], rtol=1e-2, atol=1e-3, msg=key)


class Syncing(Supervised):
    """Reads its loss on the CPU every step: fine eagerly, impossible inside a graph capture."""

    def forward(self, batch):
        loss, parts = super().forward(batch)
        if not torch.isfinite(loss).item():
            raise AssertionError("finite loss expected")
        return loss, parts


@pytest.mark.cuda
def test_a_step_that_cannot_be_captured_trains_eagerly_after_one_line():
    """Device: CUDA. In a process of its own (torch captures nothing more in a process after a
    failed capture, and the other tests here capture): the test below."""
    test = f"{Path(__file__).resolve()}::test_failed_capture_in_this_process"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", test],
                            env={**os.environ, "SFTKD_TEST_OWN_PROCESS": "1"}, cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True)
    assert result.returncode == 0 and " 1 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.cuda
@pytest.mark.skipif(os.environ.get("SFTKD_TEST_OWN_PROCESS") != "1", reason="run in its own process by the test above")
def test_failed_capture_in_this_process(tmp_path, monkeypatch, exact_fp32, capfd):
    """Device: CUDA. The capture fails on the `.item()`; training goes on eagerly to the same weights."""
    torch.manual_seed(0)
    eager, _ = _fit_cuda(tmp_path, "eager", Syncing(build_model("D2C2")), "off", monkeypatch)
    capfd.readouterr()
    torch.manual_seed(0)
    fallback, graphs = _fit_cuda(tmp_path, "fallback", Syncing(build_model("D2C2")), "on", monkeypatch)
    lines = [line for line in capfd.readouterr().err.splitlines() if "CUDA graph" in line]
    assert len(lines) == 1 and re.fullmatch(r"CUDA graph capture failed \(.+\); training eagerly", lines[0]), lines
    assert graphs.failed and graphs.captured == 0
    _assert_close(fallback, eager)


@pytest.mark.cuda
def test_graphed_inference_matches_the_eager_forward_pass_on_cuda(exact_fp32):
    """Device: CUDA. Same kernels, so equal to float rounding; new inputs are copied in; other shapes refused."""
    torch.manual_seed(0)
    model = build_model("D2C2").to(CUDA).eval()
    data = Phantoms(4)
    first = to_device(collate([data[i] for i in (0, 1)]), CUDA)
    second = to_device(collate([data[i] for i in (2, 3)]), CUDA)
    inputs = [first["zf"], first["kspace"], first["mask"]]
    run = graphed_inference(model, inputs)
    with torch.no_grad():
        for batch in (first, second):
            args = (batch["zf"], batch["kspace"], batch["mask"])
            torch.testing.assert_close(run(*args), model(*args), rtol=1e-6, atol=1e-6)
    with pytest.raises(SftkdError, match="captured for 2x1x12x12 float32"):
        run(first["zf"][:1], first["kspace"][:1], first["mask"][:1])
    bf16 = graphed_inference(model, inputs, amp="bf16")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model(*inputs)
    torch.testing.assert_close(bf16(*inputs), expected.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.cuda
def test_a_cuda_run_says_it_captures_its_step(tiny_dataset, tmp_path):
    """Device: CUDA. train.cuda_graphs auto on CUDA: the start line says so and the run trains."""
    result = sftkd("train-teacher", "--model", "D2C2", "--name", "r", f"data.path={tiny_dataset}", f"run.dir={tmp_path}",
                   "train.device=cuda", "train.epochs=1", "train.batch_size=4")
    assert ", CUDA graphs" in result.output
    assert "CUDA graph capture failed" not in result.output
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["capturable"] is True
    assert isinstance(state["optimizer"]["param_groups"][0]["lr"], float)


@pytest.mark.cuda
def test_graphed_validation_scores_as_eager_validation_on_cuda(exact_fp32):
    """Device: CUDA. Same kernels replayed: the same scores to float rounding; batches 8, 8, 3 of one volume."""
    torch.manual_seed(0)
    objective = Supervised(build_model("D2C2")).to(CUDA)
    slices = Phantoms(19, seed=1)
    forward, graphed = graphed_reconstructor(objective.predictor(), CUDA, "off", "auto")
    assert graphed
    replayed = engine.validate(objective, slices, CUDA, "off", 8, forward)
    eager = engine.validate(objective, slices, CUDA, "off", 8)
    assert replayed == pytest.approx(eager, rel=1e-6, abs=1e-9)
    from sftkd_cli.training import graphs

    assert graphs._earlier_failure is None  # replayed from graphs, not eagerly after a failed capture
