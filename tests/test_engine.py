"""The training engine: exact resume, atomic checkpoints, NaN guard, run-dir safety."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys

import numpy as np
import pytest
import torch
from rich.console import Console

from sftkd_cli.config import load_recipe
from sftkd_cli.evaluate import eval_batch_size
from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.models import build_model
from sftkd_cli.mri.fft import fft2
import sftkd_cli.files as files_module
from sftkd_cli.runs import RunDir, load_checkpoint, save_checkpoint
from sftkd_cli.training import engine
from sftkd_cli.training.engine import Trainer, epoch_order
from sftkd_cli.training.objectives import Supervised

torch.set_num_threads(1)


class Phantoms(torch.utils.data.Dataset):
    """Random smooth images, undersampled by a fixed row mask; items like SliceDataset's."""

    def __init__(self, n: int = 6, size: int = 12, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(n, 1, size // 3, size // 3, generator=g)
        self.target = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear")
        self.mask = torch.zeros(1, size, size)
        self.mask[:, ::2, :] = 1
        self.kspace = fft2(self.target) * self.mask
        self.zf = torch.fft.ifft2(self.kspace, norm="ortho").abs()

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict:
        return {"target": self.target[i], "zf": self.zf[i], "kspace": self.kspace[i], "mask": self.mask,
                "volume": "v", "slice": i}


def _recipe(tmp_path, *overrides):
    """These settings, each replaced by an override of its key (two overrides of one key are refused)."""
    base = ["train.epochs=2", "train.batch_size=2", "train.seed=7", "train.device=cpu", f"run.dir={tmp_path}",
            "run.name=r", "run.role=teacher"]
    given = {item.split("=", 1)[0] for item in overrides}
    return load_recipe(None, [item for item in base if item.split("=", 1)[0] not in given] + list(overrides))


def _fit(tmp_path, name, resume=False, objective=None, *overrides, train=None, val=None, **trainer_options):
    """Train `objective` (a D2C2 by default) in run `name` on phantoms (`train`, `val`: 4 and 2
    by default); `trainer_options` go to the Trainer. Returns the objective and the run."""
    recipe = _recipe(tmp_path, f"run.name={name}", *overrides)
    run = RunDir(tmp_path / name)
    run.prepare(recipe, resume=resume, force=False)
    torch.manual_seed(0)
    objective = objective or Supervised(build_model("D2C2"))
    try:
        Trainer(objective, recipe, run, **trainer_options).fit(Phantoms() if train is None else train,
                                                              Phantoms(2, seed=1) if val is None else val, resume=resume)
    finally:
        run.unlock()
    return objective, run


def _weights(run, which="last"):
    return load_checkpoint(run.checkpoint(which))["models"]["model"]["state"]


def test_epoch_order_depends_only_on_seed_and_epoch_and_shards_evenly():
    assert epoch_order(10, 1, 3) == epoch_order(10, 1, 3)
    assert epoch_order(10, 1, 3) != epoch_order(10, 1, 4)
    shards = [epoch_order(10, 1, 0, rank, 3) for rank in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))


def lrs_trained_and_recorded(monkeypatch, tmp_path, objective, *overrides) -> tuple[list[float], list[float]]:
    """The LR each epoch's steps trained with (seen by the optimiser) and the history's `lr`
    column, for a fit of `objective` over `overrides`."""
    trained: dict[int, float] = {}
    real = Trainer._train_step

    def step(self, loop, batch, epoch, index):
        trained.setdefault(epoch, loop.optimizer.param_groups[0]["lr"])
        return real(self, loop, batch, epoch, index)

    monkeypatch.setattr(Trainer, "_train_step", step)
    _, run = _fit(tmp_path, "lrs", False, objective, *overrides)
    return [trained[e] for e in sorted(trained)], [row["lr"] for row in run.read_history()]


def test_the_history_records_the_lr_each_epoch_trained_with(tmp_path, monkeypatch):
    """StepLR(1, 0.5): epochs train with 1e-3, 5e-4, 2.5e-4, and that is what history.jsonl says
    (not the next epoch's LR, which the scheduler steps to at the epoch's end)."""
    trained, recorded = lrs_trained_and_recorded(monkeypatch, tmp_path, None, "train.epochs=3", "train.lr_step=1",
                                                 "train.lr_gamma=0.5", "train.max_steps_per_epoch=1")
    assert trained == recorded == [1e-3, 5e-4, 2.5e-4]


def test_two_epochs_equal_one_epoch_resume_one_epoch(tmp_path):
    _, straight = _fit(tmp_path, "straight")
    _, first = _fit(tmp_path, "split", False, None, "train.epochs=1")
    _, resumed = _fit(tmp_path, "split", True, None, "train.epochs=2")
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["epoch"] for r in resumed.read_history()] == [1, 2]
    env = json.loads((resumed.path / "env.json").read_text())  # the first invocation's is kept
    assert [set(e) for e in env["previous"]] == [set(env) - {"previous"}] and "previous" not in env["previous"][0]


def _signal_inside_adam(monkeypatch, signum: int, at_steps: tuple[int, ...]) -> None:
    """Send `signum` to this process from inside Adam's update of the given steps (1-based):
    on the CPU Adam updates the tensors one by one, so a stop there would leave it half done."""
    adam_step, calls = torch.optim.Adam.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) in at_steps:
            os.kill(os.getpid(), signum)
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)


def _stopped_then_resumed(tmp_path, monkeypatch, message: str, saved_at: tuple[int, int],
                          exit_code: int = 130) -> None:
    """With the signal patched in: the run stops with `message` and `exit_code`, its last checkpoint
    is at `saved_at` (epoch, step), and resumed it ends with the weights of an uninterrupted run."""
    with pytest.raises(RunInterrupted, match=message) as stop:
        _fit(tmp_path, "stopped")
    assert stop.value.exit_code == exit_code
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == saved_at
    _, straight = _fit(tmp_path, "straight")
    _, resumed = _fit(tmp_path, "stopped", True)
    for key, value in _weights(straight).items():
        assert torch.equal(value, _weights(resumed)[key]), key


@pytest.mark.parametrize("signum, by", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_a_signal_inside_the_optimiser_step_stops_after_it_and_resume_is_exact(tmp_path, monkeypatch, signum, by):
    _signal_inside_adam(monkeypatch, signum, (5,))  # epoch 2, step 2 (3 steps an epoch)
    _stopped_then_resumed(tmp_path, monkeypatch, f"stopped by {by} at epoch 2, step 2; continue with --resume", (1, 2),
                          128 + signum)  # 130 after Ctrl-C, 143 after SIGTERM, as shells report them


def test_a_resumed_epochs_seconds_include_the_time_before_the_stop(tmp_path, monkeypatch):
    """CPU: a mid-epoch checkpoint keeps the seconds the epoch ran so far; resumed, the epoch's
    history row counts them (set to 1000 here: the stop-to-resume gap itself is not counted)."""
    _signal_inside_adam(monkeypatch, signal.SIGTERM, (5,))  # epoch 2, step 2 (3 steps an epoch)
    with pytest.raises(RunInterrupted):
        _fit(tmp_path, "stopped")
    monkeypatch.undo()
    last = tmp_path / "stopped" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2) and 0 < state["epoch_seconds"] < 1000
    save_checkpoint(last, {**state, "epoch_seconds": 1000.0})
    _, resumed = _fit(tmp_path, "stopped", True)
    seconds = [row["seconds"] for row in resumed.read_history()]
    assert seconds[0] < 1000 <= seconds[1]


def test_a_second_ctrl_c_before_the_first_checkpoint_claims_none(tmp_path, monkeypatch):
    """Stopped at once in epoch 1 (step 2), before any checkpoint: the line says nothing was saved,
    not that --resume continues from a checkpoint."""
    monkeypatch.setattr(Trainer, "_train_step", _twice_in_step(Trainer._train_step, signal.SIGINT, at=2))
    with pytest.raises(RunInterrupted, match="stopped at once; nothing was saved: it stopped before its first checkpoint"):
        _fit(tmp_path, "stopped")
    assert not (tmp_path / "stopped" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("signum, stopped, saved_at", [
    (signal.SIGINT, "stopped at once; --resume continues from the last checkpoint", (1, 0)),  # epoch 1's, not the half-done step's
    (signal.SIGTERM, "stopped by SIGTERM at epoch 2, step 2", (1, 2)),  # a repeated SIGTERM only asks again
])
def test_a_second_ctrl_c_stops_at_once_a_second_sigterm_does_not(tmp_path, monkeypatch, signum, stopped, saved_at):
    monkeypatch.setattr(Trainer, "_train_step", _twice_in_step(Trainer._train_step, signum))
    with pytest.raises(RunInterrupted, match=stopped):
        _fit(tmp_path, "stopped")
    state = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == saved_at


def _twice_in_step(train_step, signum: int, at: int = 5):
    """Trainer._train_step that sends `signum` twice in its `at`-th call."""
    calls = []

    def step(self, *args):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signum)
            os.kill(os.getpid(), signum)
        return train_step(self, *args)

    return step


def test_ctrl_c_during_validation_stops_after_the_epochs_checkpoint(tmp_path, monkeypatch, capfd):
    """It says it waits for the validation, not for a step (none runs)."""
    validate = engine.validate

    def pressed_during(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return validate(*args, **kwargs)

    monkeypatch.setattr(engine, "validate", pressed_during)
    _stopped_then_resumed(tmp_path, monkeypatch, "stopped by Ctrl-C after epoch 1; continue with --resume", (1, 0))
    assert "Ctrl-C: stopping after this validation, then saving (Ctrl-C again stops at once)" in capfd.readouterr().err


@pytest.mark.parametrize("epochs, said, ended", [
    (2, "stopping once this epoch's checkpoint is written", "continue with --resume"),
    (1, "the run is complete once its last checkpoint is written", "the run is complete"),
])
def test_ctrl_c_after_validation_says_it_waits_for_the_epochs_checkpoint(tmp_path, monkeypatch, capfd, epochs, said,
                                                                         ended):
    """A Ctrl-C once the validation is over (here: as the history row is written) waits for the
    epoch's checkpoint, the save itself, and says so; it said 'stopping after this validation, then
    saving', also during the last checkpoint's write of a run that then ended complete."""
    write_history = RunDir.write_history

    def pressed_during(self, rows):
        os.kill(os.getpid(), signal.SIGINT)
        write_history(self, rows)

    monkeypatch.setattr(RunDir, "write_history", pressed_during)
    with pytest.raises(RunInterrupted, match=f"stopped by Ctrl-C after epoch 1; {ended}"):
        _fit(tmp_path, "stopped", False, None, f"train.epochs={epochs}")
    assert capfd.readouterr().err == f"Ctrl-C: {said} (Ctrl-C again stops at once, without it)\n"
    assert load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("signum, by", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_a_stop_at_an_epochs_last_step_ends_that_epoch_and_resumes_exactly_without_a_warning(tmp_path, monkeypatch,
                                                                                            recwarn, signum, by):
    """Signalled in step 3 of 3: the epoch is validated and saved as finished ((1, 0), not a mid-epoch
    (0, 3) from which a resume would step the LR before any optimiser step: PyTorch's
    "lr_scheduler.step() before optimizer.step()" warning), and the resumed run equals an uninterrupted one."""
    _signal_inside_adam(monkeypatch, signum, (3,))
    _stopped_then_resumed(tmp_path, monkeypatch, f"stopped by {by} after epoch 1; continue with --resume", (1, 0),
                          128 + signum)
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in recwarn]


def test_on_signals_keeps_an_ignored_signal_ignored_and_restores_the_others():
    """A background job (`sftkd ... &`) inherits SIGINT ignored: training must not take Ctrl-C
    from the terminal then; a signal not ignored gets the handler for the block only."""
    import time

    from sftkd_cli.signals import on_signals

    seen: list[int] = []
    before = signal.signal(signal.SIGUSR1, signal.SIG_IGN), signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with on_signals(lambda signum, frame: seen.append(signum), signal.SIGUSR1, signal.SIGUSR2):
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
        assert seen == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN and signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, before[0])
        signal.signal(signal.SIGUSR2, before[1])


def test_a_resumed_run_keeps_the_layout_it_measured(tmp_path, monkeypatch):
    """train.channels_last auto: a resume on a machine whose measurement says otherwise (another
    layout cache) keeps the layout the run trained in, so that it continues exactly."""
    from sftkd_cli.layout import LayoutChoice

    monkeypatch.setattr(engine, "training_layout", lambda *args: LayoutChoice(True, "measured (test)"))
    _fit(tmp_path, "r", False, None, "train.epochs=1", "train.channels_last=auto")
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["channels_last"] is True
    monkeypatch.setattr(engine, "training_layout", lambda *args: LayoutChoice(False, "measured (test)"))
    _fit(tmp_path, "r", True, None, "train.epochs=2", "train.channels_last=auto")
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["channels_last"] is True


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    class Exploding(Supervised):
        calls = 0

        def forward(self, batch):
            Exploding.calls += 1
            loss, parts = super().forward(batch)
            return (loss * float("nan") if Exploding.calls > 4 else loss), parts

    torch.manual_seed(0)
    with pytest.raises(SftkdError, match=r"loss became nan at epoch 2, step 2; training stopped, the last good "
                                         r"checkpoint \(the end of epoch 1\) is kept \(try lowering train\.lr=0\.001\)$"):
        _fit(tmp_path, "nan", False, Exploding(build_model("D2C2")), "train.channels_last=false")  # no probe calls
    state = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["models"]["model"]["state"].values())


def test_a_nan_loss_before_the_first_checkpoint_says_so_and_names_the_loss_weights(tmp_path):
    """No checkpoint saved yet: the message does not claim one is kept. An SFT loss weight too
    large for float32 makes the first loss inf: the hint names the sft weights with their values."""
    from sftkd_cli.training.sft import StudentFriendly

    objective = StudentFriendly(build_model("D2C2"), build_model("D2C2"), w_imit=1e39, batched=False)
    with pytest.raises(SftkdError, match=r"/huge: loss became inf at epoch 1, step 1; training stopped before its "
                                         r"first checkpoint, so there is nothing to resume \(try lowering train\.lr="
                                         r"0\.001 or the loss weights sft\.w_teacher=1, sft\.w_student=1, "
                                         r"sft\.w_imit=1e\+39\)$"):
        _fit(tmp_path, "huge", False, objective, "sft.w_imit=1e39", "run.role=sft", "train.channels_last=false")
    assert not (tmp_path / "huge" / "checkpoints" / "last.pt").exists()


def _poison_adam(monkeypatch, at_step: int, signum: int | None = None, moment: str = "") -> None:
    """Adam's `at_step`-th update (1-based) leaves inf in a weight, as an inf gradient does while
    the loss read before the update is finite (with `moment`, in that Adam state of the first
    parameter instead: a huge gradient makes exp_avg_sq inf, the weight staying finite); with
    `signum`, that signal arrives during it too."""
    adam_step, calls = torch.optim.Adam.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        result = adam_step(self, *args, **kwargs)
        if len(calls) == at_step:
            first = self.param_groups[0]["params"][0]
            with torch.no_grad():
                (self.state[first][moment] if moment else first).view(-1)[0] = float("inf")
            if signum is not None:
                os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step)


@pytest.mark.parametrize("signum", [None, signal.SIGINT], ids=["checkpoint_every", "ctrl-c"])
def test_weights_broken_by_an_update_are_never_saved_and_resume_continues(tmp_path, monkeypatch, signum):
    """A step whose loss is finite but whose update leaves inf in the weights (epoch 2, step 2):
    the save after it (train.checkpoint_every, or Ctrl-C's) is refused with one line, last.pt
    stays the one of epoch 2, step 1, finite, and --resume continues from it exactly."""
    _poison_adam(monkeypatch, 5, signum)  # 3 steps an epoch
    with pytest.raises(SftkdError, match=r"/poisoned: the weights became inf \(first in model\.\S+\) by epoch 2, step 2 "
                                         r"although the loss was finite; training stopped, the last good checkpoint "
                                         r"\(epoch 2, step 1\) is kept"):
        _fit(tmp_path, "poisoned", False, None, "train.checkpoint_every=1", "train.channels_last=false")
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "poisoned" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    assert all(torch.isfinite(v).all() for v in state["models"]["model"]["state"].values())
    _, straight = _fit(tmp_path, "straight", False, None, "train.channels_last=false")
    _, resumed = _fit(tmp_path, "poisoned", True, None, "train.checkpoint_every=1", "train.channels_last=false")
    for key, value in _weights(straight).items():
        assert torch.equal(value, _weights(resumed)[key]), key


def test_an_adam_moment_broken_in_any_parameter_is_never_saved(tmp_path, monkeypatch):
    """Each parameter's moments are checked, not only the last one's: inf in the first parameter's
    exp_avg_sq (its weight stays finite, and that element never moves again) stops the save."""
    _poison_adam(monkeypatch, 2, moment="exp_avg_sq")
    with pytest.raises(SftkdError, match=r"/moment: the weights became inf \(first in Adam's exp_avg_sq of model\.\S+\) "
                                         r"by epoch 1, step 2 although the loss was finite"):
        _fit(tmp_path, "moment", False, None, "train.checkpoint_every=1", "train.channels_last=false")
    state = load_checkpoint(tmp_path / "moment" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 1)


def test_weights_broken_at_an_epochs_last_step_stop_validation_with_one_line(tmp_path, monkeypatch):
    """inf written into a weight by epoch 1's last update: validation names the run and epoch and
    why (not only "metrics: pred contains NaN"), and the epoch's checkpoints are not written."""
    _poison_adam(monkeypatch, 3)  # 3 steps an epoch
    with pytest.raises(SftkdError, match=r"/broken: the model's output became nan or inf in the validation of epoch 1 "
                                         r"\(its weights are inf \(first in model\.\S+\), although the loss was "
                                         r"finite\); training stopped"):
        _fit(tmp_path, "broken", False, None, "train.channels_last=false")
    assert not (tmp_path / "broken" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), OSError(28)], ids=["with-message", "bare-errno"])
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, error):
    """Also an OSError raised with only an errno is reported in words (found by scripts/fault_injection.py)."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": 1, "value": 1})

    def disk_full(tmp, data):
        with open(tmp, "wb") as handle:
            handle.write(b"partial")
        raise error

    monkeypatch.setattr(files_module, "write_bytes_synced", disk_full)
    with pytest.raises(SftkdError, match="No space left on device.*previous one is kept"):
        save_checkpoint(path, {"format": 1, "value": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"format": 1})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(SftkdError, match="truncated or damaged checkpoint"):
        load_checkpoint(path)


def test_existing_run_is_never_overwritten_and_is_locked(tmp_path):
    recipe = _recipe(tmp_path)
    run = RunDir(tmp_path / "r")
    run.prepare(recipe, resume=False, force=False)
    with pytest.raises(SftkdError, match="another sftkd process"):
        RunDir(tmp_path / "r").lock()
    run.unlock()
    with pytest.raises(SftkdError, match="already exists; use --resume"):
        RunDir(tmp_path / "r").prepare(recipe, resume=False, force=False)
    with pytest.raises(SftkdError, match="nothing to resume"):
        RunDir(tmp_path / "other").prepare(recipe, resume=True, force=False)


@pytest.mark.parametrize("train_batch, scored_in", [(2, 8), (12, 12)])
def test_validation_scores_in_evaluates_default_batches(tmp_path, monkeypatch, train_batch, scored_in):
    """Fewer, larger forward passes (launches set a GPU's pace): the training batch, at least 8."""
    seen = []
    real = engine.validate
    monkeypatch.setattr(engine, "validate", lambda *args: seen.append(args[4]) or real(*args))
    _fit(tmp_path, "v", False, None, f"train.batch_size={train_batch}", "train.max_steps_per_epoch=1")
    assert seen == [scored_in, scored_in]
    assert eval_batch_size(_recipe(tmp_path, f"train.batch_size={train_batch}")) == scored_in


def test_history_and_best_checkpoint_are_written(tmp_path):
    _, run = _fit(tmp_path, "h", False, None, "train.epochs=3")
    rows = run.read_history()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "val_l1", "val_psnr", "val_ssim", "lr", "seconds"} <= rows[0].keys()
    best = load_checkpoint(run.checkpoint("best"))
    assert rows[best["epoch"] - 1]["val_l1"] == min(r["val_l1"] for r in rows)
    assert np.isfinite(rows[-1]["val_psnr"])


def test_two_stage_distillation_says_each_epochs_stage_and_a_tiny_feature_loss(tmp_path, capsys):
    """history.jsonl rows of a two-stage run have `stage`; the epoch lines say it and what the train
    loss is, and a feature loss below 1e-4 is not shown as 0.00000. The start line names the
    teacher, method, start weights and schedule."""
    from sftkd_cli.distill.catalog import default_taps
    from sftkd_cli.distill.methods import build_method
    from sftkd_cli.training.kd import Distillation

    torch.manual_seed(1)
    student, teacher = build_model("D2C2"), build_model("D3C2")
    s_taps, t_taps = default_taps("at", student, teacher)
    method = build_method("at", [student.tap_channels(t) for t in s_taps], [teacher.tap_channels(t) for t in t_taps])
    kd = Distillation(student, teacher, method, s_taps, t_taps, w_kd=1e-6, schedule="two-stage", stage1_epochs=1,
                      facts={"teacher_run": "runs/t", "method": "at", "init": "random"})
    _, run = _fit(tmp_path, "kd", False, kd, "run.role=kd", console=Console(width=400))
    rows = run.read_history()
    assert [row["stage"] for row in rows] == [1, 2] and 0 < rows[0]["train_loss"] < 1e-4
    out = capsys.readouterr().out.splitlines()
    assert "(kd; teacher runs/t, method at, init random, two-stage: 1 epoch of feature loss, then L1) on" in out[0]
    assert out[1].startswith(f"epoch 1, stage 1 (feature loss): train {rows[0]['train_loss']:.3e}  val L1"), out[1]
    assert out[2].startswith(f"epoch 2, stage 2 (L1): train {rows[1]['train_loss']:.5f}  val L1"), out[2]


def test_the_start_line_names_the_start_weights_and_amp(tmp_path, capsys):
    """train-teacher --init-from RUN and train.amp=bf16 say so; a plain run's history rows have no stage."""
    objective = Supervised(build_model("D2C2"), {"init": "runs/a/checkpoints/best.pt:model"})
    _, run = _fit(tmp_path, "r", False, objective, "train.amp=bf16", "train.epochs=1", console=Console(width=400))
    start = capsys.readouterr().out.splitlines()[0]
    assert "(teacher; init runs/a/checkpoints/best.pt:model) on" in start and ", amp bf16" in start, start
    assert "stage" not in run.read_history()[0]


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (rich draws its live bar on it)."""

    def isatty(self) -> bool:
        return True


def _streams(monkeypatch, stdout_tty: bool) -> tuple[io.StringIO, io.StringIO]:
    """sys.stdout and sys.stderr replaced: stderr a terminal, stdout one only with `stdout_tty`."""
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)
    out, err = (_Terminal() if stdout_tty else io.StringIO()), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    return out, err


@pytest.mark.parametrize("stdout_tty", [False, True], ids=["piped-stdout", "terminal-stdout"])
def test_the_progress_bar_goes_to_stderr_and_the_epoch_lines_to_stdout(tmp_path, monkeypatch, stdout_tty):
    """`sftkd train-teacher ... | tee log` (stdout piped, stderr a terminal): the bar is drawn on
    stderr, as evaluate's and prepare-data's, and stdout has the start and epoch lines only.
    With stdout a terminal too, the epoch lines are printed above the live bar."""
    out, err = _streams(monkeypatch, stdout_tty)
    _fit(tmp_path, "bar", False, None, "train.channels_last=false", console=Console())
    bar = "━"
    assert bar in err.getvalue() and "6/6" in err.getvalue()  # 3 steps an epoch, 2 epochs: its last drawing
    if stdout_tty:  # above the bar: through rich's redirect, onto the terminal the bar is on
        lines = out.getvalue() + err.getvalue()
    else:
        lines = out.getvalue()
        assert bar not in lines and "\r" not in lines and "\x1b" not in lines
        assert [line.split(":")[0] for line in lines.splitlines()] == ["run " + str(tmp_path / "bar"), "epoch 1", "epoch 2"]
    assert "epoch 1: train" in lines and "epoch 2: train" in lines


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for `text`, as rich writes it: a line erased (ESC[2K, after a
    carriage return) shows only what follows, and colours and cursor moves show nothing."""
    return [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", line.split("\x1b[2K")[-1]) for line in text.split("\n")]


def test_on_one_terminal_the_epoch_lines_are_printed_above_the_live_bar(tmp_path, monkeypatch):
    """stdout and stderr on one terminal (a plain `sftkd train-teacher` in a shell): each epoch line
    is a line of its own, printed above the live bar, not appended to the bar's line."""
    terminal, _ = _streams(monkeypatch, stdout_tty=True)
    monkeypatch.setattr(sys, "stderr", terminal)
    _fit(tmp_path, "bar", False, None, "train.channels_last=false", console=Console())
    shown = [line for line in _screen(terminal.getvalue()) if "epoch 1:" in line or "epoch 2:" in line]
    assert [line.split(":")[0] for line in shown] == ["epoch 1", "epoch 2"], terminal.getvalue()
    assert "6/6" in _screen(terminal.getvalue())[-2]  # the bar, drawn last, below them


@pytest.mark.parametrize("terminal", [False, True], ids=["stderr-not-a-terminal", "stderr-a-terminal"])
def test_a_stops_message_starts_a_new_line_only_after_a_live_bar(tmp_path, monkeypatch, capfd, terminal):
    """The signal handler's message ends the live bar's line first; on a stderr that is not a
    terminal (no bar) it is the first thing written, with no empty line before it."""
    if terminal:
        _streams(monkeypatch, stdout_tty=False)
    _signal_inside_adam(monkeypatch, signal.SIGTERM, (5,))
    with pytest.raises(RunInterrupted, match="stopped by SIGTERM at epoch 2, step 2"):
        _fit(tmp_path, "stopped", False, None, "train.channels_last=false", console=Console())
    message = "SIGTERM: stopping after this step, then saving (Ctrl-C again stops at once)\n"
    assert capfd.readouterr().err == ("\n" if terminal else "") + message


def test_a_quiet_console_shows_no_bar_either(tmp_path, monkeypatch):
    """`train_supervised(recipe, console=Console(quiet=True))` (the README's library use): nothing
    printed, on stdout or on a terminal stderr."""
    out, err = _streams(monkeypatch, stdout_tty=True)
    _fit(tmp_path, "quiet", False, None, "train.channels_last=false", console=Console(quiet=True))
    assert out.getvalue() == err.getvalue() == ""
