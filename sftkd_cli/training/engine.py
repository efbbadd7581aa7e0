"""The one training engine: teacher training, SFT and distillation differ only in the objective.

What it does for every objective: thread set-up, seeding, Adam + StepLR, mixed precision, a
deterministic per-epoch sample order (so resuming is exact, even mid-epoch), atomic
`last`/`best` checkpoints (written by a background thread: `checkpoint_writer`), a per-epoch
history, rich progress, a NaN/Inf guard, and Ctrl-C / SIGTERM handling that saves a checkpoint
before leaving. On CUDA the datasets are held on the GPU (`device_data`) and the whole step is
replayed from a CUDA graph (`graphs`, recipe key train.cuda_graphs), as are validation's
(`validation`) forward passes; the step's losses are then read from the GPU every
LOSS_READ_EVERY steps and before each checkpoint, not every step. Device, autocast and collate
come from `sftkd_cli.runtime`, shared with evaluate and bench; the stop on a signal is
`stop_flag.StopFlag`.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import Dataset

from sftkd_cli import __version__
from sftkd_cli.choices import BEST, LAST
from sftkd_cli.config import Recipe, loss_weights
from sftkd_cli.data.dataset import set_dataset_epoch
from sftkd_cli.errors import RunInterrupted, SftkdError, counted
from sftkd_cli.layout import LayoutChoice, forced_layout, training_layout
from sftkd_cli.runs import CHECKPOINT_FORMAT, RunDir, environment
from sftkd_cli.runtime import (amp_warning, autocast, collate, cpu_threads, deterministic_kernels, inference_batch_size,
                               precision_policy, select_device, to_device)
from sftkd_cli.signals import on_signals
from sftkd_cli.torch_metrics import NonFinitePrediction
from sftkd_cli.training.checkpoint_writer import CheckpointWriter
from sftkd_cli.training.device_data import DeviceDataset, on_device
from sftkd_cli.training.graphs import GraphedStep, Reconstructor, graphed_reconstructor, optimizer_state_for, use_cuda_graphs
from sftkd_cli.training.lines import RESUME_HINTS, checkpoint_at, epoch_line, model_text
from sftkd_cli.training.objectives import Batch, Objective, model_record
from sftkd_cli.training.resume import ResumePoint, resume_point, resumed_threads
from sftkd_cli.training.stop_flag import AFTER_STEP, AFTER_VALIDATION, AT_CHECKPOINT, AT_LAST_CHECKPOINT, StopFlag
from sftkd_cli.training.validation import validate

#: with CUDA graphs, the losses of this many steps are read from the GPU together (one sync)
LOSS_READ_EVERY = 32


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (deterministic kernels: `runtime.deterministic_kernels`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """The sample order of one epoch: a permutation that depends only on (seed, epoch).

    With several processes each rank takes every `world`-th index (padded by wrapping so
    that all ranks run the same number of steps), like a DistributedSampler.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    if world > 1:
        total = math.ceil(n / world) * world
        order = (order + order[: total - n])[rank::world]
    return order


def batches(dataset: Dataset, order: Sequence[int], batch_size: int) -> Iterator[Batch]:
    """The batches of `order`: gathered on the device from a `DeviceDataset`, else items collated."""
    if isinstance(dataset, DeviceDataset):
        yield from dataset.batches(order, batch_size)
        return
    for start in range(0, len(order), batch_size):
        yield collate([dataset[i] for i in order[start : start + batch_size]])


def eager_step(objective: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               device: torch.device, amp: str, check: Callable[[float], None] = lambda value: None) -> float:
    """One training step without CUDA graphs, as training runs it (and `sftkd bench` times it):
    autocast forward, the loss read and `check`ed before the update is applied, backward through
    the gradient scaler (a no-op unless fp16), Adam step. Returns the loss."""
    with autocast(device, amp):
        loss, _ = objective(batch)
    value = float(loss.detach())
    check(value)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return value


@dataclass
class FitResult:
    """What `fit` did."""

    epochs: int
    best_val_l1: float
    best_epoch: int
    history: list[dict[str, Any]]
    resumed_from: int | None = None
    is_main: bool = True  # the process that validates (rank 0 under torchrun): the others' best is nan


@dataclass
class FitState:
    """Where a fit stands: what `last` saves to resume exactly, the history and the epoch's timer.

    `epoch` is the epoch being trained (or next to train); `step` the steps of it applied so
    far, or None from the end of its steps until the next epoch starts (validation and the
    epoch's checkpoints: Ctrl-C then has nothing newer to save).
    """

    epoch: int = 0
    step: int | None = 0
    best_val: float = math.inf
    best_epoch: int = 0
    loss_sum: float = 0.0  # the training loss of `epoch` so far (kept in mid-epoch checkpoints)
    loss_count: int = 0
    unread: list[float | torch.Tensor] = field(default_factory=list)  # losses of the last steps, not yet counted
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    started: float = 0.0  # time.perf_counter() when the epoch started (less what it ran before a resume)
    carried: float = 0.0  # seconds a resumed epoch ran before it was stopped (its checkpoint's)

    def entries(self) -> dict[str, Any]:
        """The checkpoint entries besides the weights, optimiser, epoch and step."""
        return {"best_val_l1": self.best_val, "best_epoch": self.best_epoch,
                "epoch_loss_sum": self.loss_sum, "epoch_loss_count": self.loss_count,
                "epoch_seconds": time.perf_counter() - self.started}


@dataclass
class _Loop:
    """What one fit trains with: the objective as stepped (DDP-wrapped with several processes),
    Adam, StepLR, the fp16 grad scaler, the steps per epoch, the progress bar, the SIGTERM flag,
    the CUDA-graphed step (None without train.cuda_graphs) and the predictor as validation runs
    it (with train.cuda_graphs, replayed from a graph per batch shape)."""

    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    progress: Progress
    task: TaskID
    stop: StopFlag
    graphs: GraphedStep | None = None
    predict: Reconstructor | None = None


@torch.no_grad()
def restart_optimizer(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.StepLR) -> None:
    """Adam as if new (moments and step counts zeroed) and the LR back to its initial value, with
    StepLR counting from here. In place: CUDA graphs captured with these tensors stay valid, and
    the next step equals a fresh Adam's first."""
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                value.zero_()
    for group, lr in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = lr
    scheduler.last_epoch = 0


class Trainer:
    """Runs an objective over a dataset into a run directory."""

    def __init__(
        self,
        objective: Objective,
        recipe: Recipe,
        run: RunDir,
        console: Console | None = None,
        rank: int = 0,
        world: int = 1,
        trained_on: dict[str, Any] | None = None,
        data_on_device: bool | None = None,
    ) -> None:
        """`data_on_device`: hold the datasets on the device (`device_data.on_device`; None: on CUDA)."""
        self.objective = objective
        self.trained_on = trained_on or {}  # the dataset record kept in every checkpoint
        self.recipe = recipe
        self.run = run
        self.console = console or Console()
        self.rank, self.world = rank, world
        self.device = select_device(recipe.train.device)
        if world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.is_main = rank == 0
        self.cuda_graphs = use_cuda_graphs(recipe.train.cuda_graphs, self.device, recipe.train.amp, world)
        self.data_on_device = data_on_device
        self.writer = CheckpointWriter()  # checkpoints are written in the background, one at a time
        self.kept: tuple[int, int] | None = None  # (epoch, step) of the newest `last` saved or resumed from
        self.results = self.console  # where the epoch lines go (`_loop`: above a live bar)

    # checkpoint state ---------------------------------------------------------------------
    def _checkpoint(self, state: FitState, loop: _Loop, epoch: int, step: int) -> dict[str, Any]:
        """Everything `last`/`best` hold: the models, the objective, the optimiser and `state` at (epoch, step).

        Live tensors: `_save` copies them. The losses not yet read are counted first, then the
        weights and Adam's moments are checked finite (`_check_state`): a checkpoint is never built
        from a state that --resume could not continue."""
        self._read_losses(state, loop)
        self._check_state(loop, epoch, step)
        model = self._bare()
        return {
            "format": CHECKPOINT_FORMAT,
            "sftkd_version": __version__,
            "role": self.recipe.run.role,
            "primary": model.primary,
            "models": {name: model_record(m) for name, m in model.models().items()},
            "objective": model.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(),
            "scaler": loop.scaler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step,
            "world_size": self.world,  # an epoch's sample order depends on it (`resume.other_world`)
            "threads": self._threads_record(),  # and CPU results on this (`resume.resumed_threads`)
            "trained_on": self.trained_on,
            "channels_last": self.layout.channels_last,  # the layout a resumed run keeps (`_choose_layout`)
            **model.info(),
            **state.entries(),
        }

    def _threads_record(self) -> int | None:
        """The thread count a resume keeps: that of a one-process CPU run; None for a CUDA run or a
        torchrun (which sets one thread per process), whose resume takes the machine's default."""
        return torch.get_num_threads() if self.device.type == "cpu" and self.world == 1 else None

    def _bare(self) -> Objective:
        objective = self.objective
        return objective.module if hasattr(objective, "module") else objective  # type: ignore[return-value]

    def _save(self, state: dict[str, Any], *names: str) -> None:
        """Write `state` as the checkpoints `names` (in order), in the background (main process only;
        every process notes `kept`: a nan on another rank names the checkpoint rank 0 kept)."""
        if LAST in names:
            self.kept = (int(state["epoch"]), int(state["step_in_epoch"]))
        if self.is_main:
            self.writer.submit([self.run.checkpoint(name) for name in names], state)

    # the loop -----------------------------------------------------------------------------
    def fit(self, train_ds: Dataset, val_ds: Dataset, resume: bool = False) -> FitResult:
        """Train `recipe.train.epochs` epochs (from the `last` checkpoint with `resume`), with
        train.threads (0 on a resume: the run's count, `resumed_threads`), train.deterministic and
        warning filters for the fit only (the caller's put back: a `reproduce` process trains
        several stages). Seeds the random generators from train.seed (`seed_everything`), which
        the caller's streams then continue from."""
        cfg = self.recipe.train
        if len(train_ds) == 0:
            raise SftkdError(f"{self.recipe.data.path}: the training split {self.recipe.data.train_split!r} is empty")
        point = resume_point(self.run) if resume else None
        threads, said = resumed_threads(cfg.threads, point, self.device, self.world)  # a resume keeps its thread count
        if said and self.is_main:
            self.console.print(said, highlight=False, markup=False, soft_wrap=True)
        with cpu_threads(threads), deterministic_kernels(cfg.deterministic), warnings.catch_warnings():
            return self._fit(train_ds, val_ds, point)

    def _fit(self, train_ds: Dataset, val_ds: Dataset, point: ResumePoint | None) -> FitResult:
        cfg = self.recipe.train
        seed_everything(cfg.seed)
        self.layout = self._choose_layout(train_ds, point.state if point else None)
        loop = self._loop(len(train_ds))
        train_ds, val_ds = (on_device(ds, self.device, self.data_on_device) for ds in (train_ds, val_ds))
        state = self._restore(loop, point)
        self.kept = (state.epoch, state.step or 0) if point is not None else None
        if self.is_main:
            if point is not None and point.note:  # resuming from best.pt (`resume_point`): says why
                self.console.print(point.note, highlight=False, markup=False, soft_wrap=True)
            env = {**environment(str(self.device), cfg.seed, self.world), "objective": self._bare().info()}  # its start
            self.run.write_env(env, resumed=state.resumed_from is not None)
            resumed_at = (state.epoch, state.step or 0) if state.resumed_from is not None else None
            self.console.print(self._start_line(len(train_ds), len(val_ds), loop.steps_per_epoch, resumed_at),
                               highlight=False, markup=False, soft_wrap=True)
            if warning := amp_warning(cfg.amp, self.device):
                self.console.print(warning, highlight=False, markup=False, soft_wrap=True)
        loop.progress.update(loop.task, completed=state.epoch * loop.steps_per_epoch + (state.step or 0))
        self._bare().train()
        # TF32 as train.tf32 for the fit; the last checkpoint is written before fit returns
        with precision_policy(cfg.tf32), on_signals(loop.stop, signal.SIGTERM, signal.SIGINT), self.writer:
            if point is not None and point.path != self.run.checkpoint(LAST):
                self._save(point.state, LAST)  # last.pt brought up to best.pt's state, before anything else
            try:
                with loop.progress:
                    while state.epoch < cfg.epochs:
                        self._run_epoch(state, loop, train_ds)
                        self._finish_epoch(state, loop, val_ds)
                        if self._stopping(loop, agree=True):  # during validation: the epoch's checkpoint is written
                            done = "; the run is complete" if state.epoch == cfg.epochs else f"; {RESUME_HINTS[0]}"
                            raise loop.stop.stopped(f"{self.run.path}: stopped by {loop.stop.by} after epoch {state.epoch}{done}")
            except KeyboardInterrupt:
                self._interrupt()
        return FitResult(cfg.epochs, state.best_val, state.best_epoch, state.history, state.resumed_from, self.is_main)

    def _loop(self, train_slices: int) -> _Loop:
        """The objective on the device (DDP-wrapped with several processes), its optimiser and the progress bar."""
        cfg = self.recipe.train
        objective = self.objective.to(self.device, memory_format=self.layout.memory_format)
        if self.world > 1:  # gradients averaged across processes; the frozen teacher stays outside
            from torch.nn.parallel import DistributedDataParallel

            # In channels_last the 32 -> 1 conv's weight (1x32x3x3) has a size-1 dim whose stride
            # autograd's gradient and DDP's bucket disagree on (32 vs 288): the same memory, a
            # 288-float copy per step, but a warning on every rank. Only that one is silenced.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            objective = DistributedDataParallel(objective, find_unused_parameters=not objective.uses_every_parameter)
            self.objective = objective
        trained = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trained, lr=cfg.lr, capturable=self.cuda_graphs)  # step counters on the GPU for graphs
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
        steps = math.ceil(len(epoch_order(train_slices, cfg.seed, 0, self.rank, self.world)) / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        progress = self._progress()
        # the epoch lines go through the bar's console where it is drawn on the terminal they go to:
        # it prints them above the bar (a rich Console writes past rich's redirect of sys.stdout)
        self.results = progress.console if not progress.disable and self.console.is_terminal else self.console
        task = progress.add_task("train", total=steps * cfg.epochs, epoch="", loss="")
        said = progress_console(self.console)  # a failed capture's line: stderr from the CLI, as the bar
        graphs = GraphedStep(objective, optimizer, self.device, cfg.amp, console=said) if self.cuda_graphs else None
        predict, _ = graphed_reconstructor(self._bare().predictor(), self.device, cfg.amp,
                                           "auto" if self.cuda_graphs else "off", said)
        return _Loop(objective, optimizer, scheduler, scaler, steps, progress, task,
                     StopFlag(announce=self.is_main, live_bar=not progress.disable),
                     graphs=graphs, predict=predict)

    def _restore(self, loop: _Loop, point: ResumePoint | None) -> FitState:
        """A fresh state, or the one in `point`, the checkpoint to resume from (weights and optimiser loaded)."""
        if point is None:
            return FitState()
        saved = point.state
        try:
            self._bare().load_state_dict(saved["objective"])
            loop.optimizer.load_state_dict(optimizer_state_for(saved["optimizer"], capturable=self.cuda_graphs))
            loop.scheduler.load_state_dict(saved["scheduler"])
            loop.scaler.load_state_dict(saved["scaler"])
            state = FitState(
                epoch=int(saved["epoch"]), step=int(saved["step_in_epoch"]),
                best_val=float(saved["best_val_l1"]), best_epoch=int(saved["best_epoch"]),
                loss_sum=float(saved["epoch_loss_sum"]), loss_count=int(saved["epoch_loss_count"]),
                carried=float(saved.get("epoch_seconds", 0.0)),  # absent before sftkd kept it
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else str(exc).strip().splitlines()[0]
            raise SftkdError(f"{point.path}: does not fit this run's {self.recipe.model.name} training state ({reason})") from None
        state.history = self.run.read_history()[: state.epoch]
        state.resumed_from = state.epoch
        return state

    def _run_epoch(self, state: FitState, loop: _Loop, train_ds: Dataset) -> None:
        """The training steps of `state.epoch`, from `state.step` (a resumed epoch) or its start.

        Saves `last` every train.checkpoint_every steps, and on SIGTERM before leaving."""
        cfg = self.recipe.train
        loop.stop.waiting = AFTER_STEP
        self._bare().begin_epoch(state.epoch)
        if not state.step and state.epoch in self._bare().restarts():  # (a resumed epoch restarted already)
            restart_optimizer(loop.optimizer, loop.scheduler)
        set_dataset_epoch(train_ds, state.epoch)  # per-sample masks of this epoch (data.mask_per_sample)
        state.started = time.perf_counter() - (state.carried if state.step else 0.0)  # a history row's seconds
        state.carried = 0.0
        order = epoch_order(len(train_ds), cfg.seed, state.epoch, self.rank, self.world)
        order = order[: loop.steps_per_epoch * cfg.batch_size]
        state.step = state.step or 0  # None after the previous epoch
        if not state.step:
            state.loss_sum, state.loss_count = 0.0, 0
        for batch in batches(train_ds, order[state.step * cfg.batch_size :], cfg.batch_size):
            loss = self._train_step(loop, to_device(batch, self.device), state.epoch, state.step)
            state.unread, state.step = [*state.unread, loss], state.step + 1
            loop.progress.update(loop.task, advance=1, epoch=f"{state.epoch + 1}/{cfg.epochs}")
            read = loop.graphs is None or state.step % LOSS_READ_EVERY == 0
            if read:
                self._read_losses(state, loop)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < loop.steps_per_epoch:
                self._save(self._checkpoint(state, loop, state.epoch, state.step), LAST)
            # a stop at the epoch's last step is its end (`_fit` validates, saves): resumed, a checkpoint here would LR-step first (a torch warning)
            if state.step < loop.steps_per_epoch and self._stopping(loop, agree=read):
                self._save(self._checkpoint(state, loop, state.epoch, state.step), LAST)
                raise loop.stop.stopped(
                    f"{self.run.path}: stopped by {loop.stop.by} at epoch {state.epoch + 1}, step {state.step}; "
                    f"{RESUME_HINTS[0]}"
                )
        self._read_losses(state, loop)
        state.step = None

    def _stopping(self, loop: _Loop, agree: bool) -> bool:
        """Whether to stop here (between steps, or after an epoch): one process when it was signalled.

        Several processes must stop at the same step: one that stopped alone would leave the others
        waiting in their next all-reduce, then failing (and nothing saved). So they agree whether
        any was signalled (`StopFlag.agreed`: an all_reduce and a host read), at `agree` points
        only, the same steps on every process: where the losses are read, and after each epoch.
        Eager steps, the only kind DDP runs (CUDA graphs are one process), read their loss every
        step, a host sync each step already: agreeing adds one small collective's latency, no sync.
        Graphed steps would agree every LOSS_READ_EVERY steps and keep their asynchrony (a stop
        then waits up to that many steps)."""
        if self.world == 1:
            return loop.stop.raised
        return agree and loop.stop.agreed(self.device)

    def _read_losses(self, state: FitState, loop: _Loop) -> None:
        """Count the losses of the steps not yet counted (graphed steps' losses are read from the
        device together, one sync); a NaN/Inf among them stops training, naming its step."""
        if not state.unread:
            return
        tensors = [v for v in state.unread if isinstance(v, torch.Tensor)]
        read = iter(torch.stack(tensors).float().tolist() if tensors else [])
        values = [next(read) if isinstance(v, torch.Tensor) else float(v) for v in state.unread]
        first = (state.step or 0) - len(values)
        for i, value in enumerate(values):
            self._check_finite(value, state.epoch, first + i)
            state.loss_sum, state.loss_count = state.loss_sum + value, state.loss_count + 1
        state.unread = []
        loop.progress.update(loop.task, loss=f"{values[-1]:.4g}")

    def _check_state(self, loop: _Loop, epoch: int, step: int) -> None:
        """Stop if a trained weight or an Adam moment is nan/inf at checkpoint (epoch, step): an update
        whose loss was finite (an inf gradient) can still break them, and a checkpoint of them would
        replace the last good one. One device sync, at checkpoints only (not every step)."""
        if broken := self._broken(loop):
            raise self._stopped(f"the weights became {broken} by {checkpoint_at(epoch, step)} "
                                "although the loss was finite")

    def _broken(self, loop: _Loop) -> str:
        """'' when the trained weights and Adam's moments are finite (one device sync), else what is
        not, e.g. 'nan (first in model.blocks.0.convs.0.weight)'."""
        bare = self._bare()
        tensors = dict(bare.state_dict())
        names = {id(p): name for name, p in bare.named_parameters()}
        for param, moments in loop.optimizer.state.items():  # exp_avg, exp_avg_sq (not the 0-dim step counts)
            tensors.update({f"Adam's {key} of {names.get(id(param), 'a parameter')}": v for key, v in moments.items()
                            if isinstance(v, torch.Tensor) and v.dim()})
        tensors = {name: v for name, v in tensors.items() if v.is_floating_point()}
        if not tensors or torch.stack([torch.isfinite(v).all() for v in tensors.values()]).all().item():
            return ""
        name, bad = next((name, v) for name, v in tensors.items() if not torch.isfinite(v).all())
        return f"{'nan' if bad.isnan().any() else 'inf'} (first in {name})"

    def _check_finite(self, value: float, epoch: int, step: int) -> None:
        if not math.isfinite(value):
            raise self._stopped(f"loss became {value} at epoch {epoch + 1}, step {step + 1}")

    def _stopped(self, what: str) -> SftkdError:
        """The one line for training stopped by nan/inf: `what` happened, which checkpoint --resume
        would continue from (or that none was saved yet), and the settings that can cause it: the
        LR and, for an objective with loss weights, those weights with their values."""
        if self.kept is None:
            kept = "training stopped before its first checkpoint, so there is nothing to resume"
        else:
            kept = f"training stopped, the last good checkpoint ({checkpoint_at(*self.kept)}) is kept"
        hint = f"try lowering train.lr={self.recipe.train.lr:g}"
        if section := self._bare().weights_section:
            weights = ", ".join(f"{key}={value:g}" for key, value in loss_weights(self.recipe, section).items())
            hint += f" or the loss weights {weights}"
        return SftkdError(f"{self.run.path}: {what}; {kept} ({hint})")

    def _finish_epoch(self, state: FitState, loop: _Loop, val_ds: Dataset) -> None:
        """After an epoch's steps: LR step, validation, history row (its `lr`: the one the epoch trained
        with, read before the scheduler steps), `best`/`last` checkpoints; then the next epoch."""
        cfg = self.recipe.train
        lr = loop.optimizer.param_groups[0]["lr"]
        loop.scheduler.step()
        train_loss = self._epoch_loss(state)
        val = {"val_l1": math.nan}
        if self.is_main and len(val_ds):
            loop.stop.waiting = AFTER_VALIDATION  # what a Ctrl-C now says it waits for (`_run_epoch` puts back AFTER_STEP)
            try:
                val = validate(self._bare(), val_ds, self.device, cfg.amp, inference_batch_size(cfg.batch_size),
                               loop.predict)
            except NonFinitePrediction:
                broken = self._broken(loop)
                why = f" (its weights are {broken}, although the loss was finite)" if broken else ""
                raise self._stopped(f"the model's output became nan or inf in the validation of epoch {state.epoch + 1}{why}") from None
        loop.stop.waiting = AT_LAST_CHECKPOINT if state.epoch + 1 == cfg.epochs else AT_CHECKPOINT  # the save is under way
        row = {
            "epoch": state.epoch + 1,
            "train_loss": train_loss,
            **({"stage": stage} if (stage := self._bare().stage(state.epoch)) else {}),  # two-stage distillation
            **val,
            "lr": lr,
            "seconds": round(time.perf_counter() - state.started, 3),
        }
        state.history.append(row)
        improved = state.best_epoch == 0 or val["val_l1"] < state.best_val
        if improved:
            state.best_val, state.best_epoch = val["val_l1"], state.epoch + 1
        checkpoint = self._checkpoint(state, loop, state.epoch + 1, 0)
        if self.is_main:  # history first: a kill between the two keeps every row
            self.run.write_history(state.history)
        self._save(checkpoint, *([BEST] if improved else []), LAST)
        if self.is_main:
            self._report_epoch(row, improved)
        state.epoch += 1

    def _epoch_loss(self, state: FitState) -> float:
        """The epoch's mean training loss over the steps of every process: with several, their sums
        and counts are all-reduced here, once per epoch (no sync per step). After a resume in the
        middle of an epoch, each process restarts from rank 0's sum and count so far (the only ones
        the checkpoint holds), so those steps count with rank 0's losses."""
        if self.world == 1:
            return state.loss_sum / max(state.loss_count, 1)
        import torch.distributed as dist

        totals = torch.tensor([state.loss_sum, float(state.loss_count)], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        loss_sum, loss_count = totals.tolist()
        return loss_sum / max(loss_count, 1.0)

    def _interrupt(self) -> NoReturn:
        """A second Ctrl-C (or SIGTERM): stopped at once, maybe inside a step, so nothing more is
        saved; the last checkpoint written stays, and --resume continues from it (if there is one)."""
        kept = RESUME_HINTS[1] if self.kept is not None else "nothing was saved: it stopped before its first checkpoint"
        raise RunInterrupted(f"{self.run.path}: stopped at once; {kept}") from None

    def _choose_layout(self, train_ds: Dataset, saved: dict[str, Any] | None) -> LayoutChoice:
        """NCHW or channels_last for this run: forced by train.channels_last, or measured on a
        first batch (a few steps on copies of the objective) and cached per machine. A resumed
        run measured before keeps the layout it trained in (`saved`: its last checkpoint), so
        that it continues exactly, whatever this machine's cache says now."""
        cfg = self.recipe.train
        forced = forced_layout(cfg.channels_last, self.device)
        if forced is not None:  # nothing to measure: no batch to build
            return forced
        if saved is not None and isinstance(saved.get("channels_last"), bool):
            return LayoutChoice(saved["channels_last"], "as the run trained before it was resumed")
        batch = to_device(collate([train_ds[i] for i in range(min(cfg.batch_size, len(train_ds)))]), self.device)
        return training_layout(cfg.channels_last, self._bare().to(self.device), batch, self.device, cfg.amp)

    def _train_step(self, loop: _Loop, batch: Batch, epoch: int, step: int) -> float | torch.Tensor:
        """One optimisation step; its loss: a number (eager: checked before the update is applied),
        or with CUDA graphs a device tensor read later (`_read_losses`)."""
        if loop.graphs is not None:
            loss_on_device = loop.graphs.step(batch, self._bare().graph_key())
            if loss_on_device is not None:
                return loss_on_device
        return eager_step(loop.objective, batch, loop.optimizer, loop.scaler, self.device, self.recipe.train.amp,
                          lambda value: self._check_finite(value, epoch, step))

    def _progress(self) -> Progress:
        """The bar, drawn on `progress_console(self.console)` when that is a terminal (main process only).
        While it is drawn, plain prints to a terminal stdout go above it (the epoch lines: `self.results`)."""
        bar = progress_console(self.console)
        quiet = not self.is_main or not bar.is_terminal
        return Progress(
            TextColumn("[bold]{task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=bar,
            disable=quiet,
            transient=False,
            redirect_stdout=bar is not self.console and self.console.is_terminal,  # a piped stdout keeps its lines
        )

    def _start_line(self, train_slices: int, val_slices: int, steps: int, resumed_at: tuple[int, int] | None) -> str:
        """What is about to run, printed before the first step (also when output is not a terminal).
        `resumed_at`: the (epoch, step_in_epoch) of the checkpoint a resumed run continues from."""
        cfg, data = self.recipe.train, self.recipe.data
        threads = f", {counted(torch.get_num_threads(), 'thread')}" if self.device.type == "cpu" else ""
        threads += (", CUDA graphs" if self.cuda_graphs else "") + (f", amp {cfg.amp}" if cfg.amp != "off" else "")
        resumed = f", resuming at {checkpoint_at(*resumed_at)}" if resumed_at is not None else ""
        processes = f" x {self.world} processes" if self.world > 1 else ""  # batch_size is per process
        models = " + ".join(model_text(m) for m in self._bare().models().values())
        role = "; ".join(filter(None, [self.recipe.run.role, self._bare().describe()]))  # e.g. KD's teacher and method
        return (
            f"run {self.run.path}: {models} ({role}) on {data.path} "
            f"({data.acceleration:g}x; train {train_slices} slices, val {val_slices}), "
            f"{counted(cfg.epochs, 'epoch')} of {counted(steps, 'step')}, batch {cfg.batch_size}{processes}, {self.device}{threads}{resumed}; "
            f"layout {self.layout.describe()}"
        )

    def _report_epoch(self, row: dict[str, Any], improved: bool) -> None:
        """The epoch's line of results, on `self.console` (stdout from the CLI), or above a live bar
        on the terminal it is on (`self.results`)."""
        self.results.print(epoch_line(row, improved), highlight=False, soft_wrap=True)


def progress_console(console: Console) -> Console:
    """Where training's progress bar goes for results printed on `console`: standard error when
    `console` is standard output (as evaluate's and prepare-data's bars: `sftkd train-teacher ... |
    tee log` keeps the bar out of the log), else `console` itself (a stage's log file, a buffer,
    a quiet console: no bar, as none of them is a terminal)."""
    return Console(stderr=True) if console.file is sys.stdout and not console.quiet else console

