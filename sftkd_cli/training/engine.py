"""The one training engine: teacher training, SFT and distillation differ only in the objective.

What it does for every objective: device and thread set-up, seeding, Adam + StepLR, mixed
precision, a deterministic per-epoch sample order (so resuming is exact, even mid-epoch),
atomic `last`/`best` checkpoints, a per-epoch history, rich progress, a NaN/Inf guard, and
Ctrl-C / SIGTERM handling that saves a checkpoint before leaving.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import Dataset

from sftkd_cli import __version__
from sftkd_cli.config import Recipe, check_device
from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.metrics import psnr, ssim
from sftkd_cli.runs import CHECKPOINT_FORMAT, RunDir, environment, load_checkpoint, save_checkpoint
from sftkd_cli.training.objectives import Batch, Objective, model_record

TENSOR_KEYS = ("target", "zf", "kspace", "mask")


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; explicit names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name, "device")  # meta, mps without support, a GPU number past the GPUs: one line
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SftkdError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SftkdError(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
    return device


def barrier(world: int) -> None:
    """Wait for every process (no-op for a single process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; with `deterministic`, deterministic kernels on CUDA too.

    The CPU kernels are deterministic already (for a fixed thread count). On CUDA, cuDNN picks
    non-deterministic convolution algorithms by default, so a resumed run only matches an
    uninterrupted one bit for bit with `deterministic`: deterministic cuDNN algorithms, no
    cuDNN autotuning, deterministic torch ops (an op without one fails instead of drifting)
    and a fixed cuBLAS workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts, which in
    a training process is after this call).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


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


def collate(items: Sequence[dict[str, Any]]) -> Batch:
    """Stack dataset items into a batch (tensors only)."""
    return {key: torch.stack([item[key] for item in items]) for key in TENSOR_KEYS}


def batches(dataset: Dataset, order: Sequence[int], batch_size: int) -> Iterator[Batch]:
    for start in range(0, len(order), batch_size):
        yield collate([dataset[i] for i in order[start : start + batch_size]])


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision context: bf16/fp16 autocast, or nothing."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise SftkdError("train.amp=fp16: only on CUDA; use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@dataclass
class FitResult:
    """What `fit` did."""

    epochs: int
    best_val_l1: float
    best_epoch: int
    history: list[dict[str, Any]]
    resumed_from: int | None = None


class _StopFlag:
    """Set by SIGTERM; checked between steps so the engine can save and leave cleanly."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.raised = True


def validate(objective: Objective, dataset: Dataset, device: torch.device, amp: str, batch_size: int) -> dict[str, float]:
    """Validation L1, PSNR and SSIM, means over slices; PSNR and SSIM scored as `sftkd evaluate` does.

    PSNR and SSIM use data range = the maximum of the slice's ground-truth volume (over its
    validated slices: the whole volume unless data.max_val_slices cuts it short), in float64,
    like `evaluate`'s per-slice means (metrics.score_slices). So the log's val_psnr / val_ssim
    of an epoch equal metrics.json's PSNR / SSIM "mean" for that epoch's checkpoint on the
    same split. (Volumes are normalised by their source maximum, and a crop or skipped slices
    can leave the stored maximum below 1, so a range of 1 would read higher.)
    """
    objective.eval()
    l1s: list[float] = []
    volumes: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # volume -> [(target, pred)] per slice
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = to_device(collate(items), device)
            with autocast(device, amp):
                pred = objective.predict(batch)
            pred, target = pred.float(), batch["target"]
            l1s.extend(F.l1_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)).tolist())
            for item, t, p in zip(items, target.cpu().numpy(), pred.cpu().numpy()):
                volumes.setdefault(str(item["volume"]), []).append((t[0], p[0]))
    objective.train()
    psnrs, ssims = [], []
    for pairs in volumes.values():
        data_range = max(float(t.max()) for t, _ in pairs)
        psnrs.extend(psnr(t, p, data_range) for t, p in pairs)
        ssims.extend(ssim(t, p, data_range) for t, p in pairs)
    return {"val_l1": float(np.mean(l1s)), "val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims))}


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
    ) -> None:
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

    # checkpoint state ---------------------------------------------------------------------
    def _state(self, optimizer, scheduler, scaler, epoch: int, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        model = self._bare()
        return {
            "format": CHECKPOINT_FORMAT,
            "sftkd_version": __version__,
            "role": self.recipe.run.role,
            "primary": model.primary,
            "models": {name: model_record(m) for name, m in model.models().items()},
            "objective": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step,
            "trained_on": self.trained_on,
            **model.info(),
            **extra,
        }

    def _bare(self) -> Objective:
        objective = self.objective
        return objective.module if hasattr(objective, "module") else objective  # type: ignore[return-value]

    def _save(self, name: str, state: dict[str, Any]) -> None:
        if self.is_main:
            save_checkpoint(self.run.checkpoint(name), state)

    # the loop -----------------------------------------------------------------------------
    def fit(self, train_ds: Dataset, val_ds: Dataset, resume: bool = False) -> FitResult:
        cfg = self.recipe.train
        if len(train_ds) == 0:
            raise SftkdError(f"{self.recipe.data.path}: the training split {self.recipe.data.train_split!r} is empty")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)
        objective = self.objective.to(self.device)
        if cfg.channels_last:
            objective = objective.to(memory_format=torch.channels_last)
        if self.world > 1:  # gradients averaged across processes; the frozen teacher stays outside
            from torch.nn.parallel import DistributedDataParallel

            objective = DistributedDataParallel(objective, find_unused_parameters=True)
            self.objective = objective
        params = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")

        start_epoch, start_step, history = 0, 0, []
        best_val, best_epoch, loss_sum, loss_count, resumed_from = math.inf, 0, 0.0, 0, None
        if resume and self.run.checkpoint("last").exists():
            last = self.run.checkpoint("last")
            state = load_checkpoint(last)
            try:
                self._bare().load_state_dict(state["objective"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                scaler.load_state_dict(state["scaler"])
                start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
                best_val, best_epoch = float(state["best_val_l1"]), int(state["best_epoch"])
                loss_sum, loss_count = float(state["epoch_loss_sum"]), int(state["epoch_loss_count"])
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                reason = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else str(exc).strip().splitlines()[0]
                raise SftkdError(f"{last}: does not fit this run's {self.recipe.model.name} training state ({reason})") from None
            history = self.run.read_history()[:start_epoch]
            resumed_from = start_epoch
        if self.is_main:
            self.run.write_env(environment(str(self.device), cfg.seed))

        stop = _StopFlag()
        previous_handler = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
        steps_per_epoch = math.ceil(len(epoch_order(len(train_ds), cfg.seed, 0, self.rank, self.world)) / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        progress = self._progress()
        if self.is_main:
            self.console.print(self._start_line(len(train_ds), len(val_ds), steps_per_epoch, resumed_from),
                               highlight=False, markup=False, soft_wrap=True)
        task = progress.add_task("train", total=steps_per_epoch * cfg.epochs, epoch="", loss="")
        progress.update(task, completed=start_epoch * steps_per_epoch + start_step)
        epoch, done = start_epoch, start_step  # `done`: steps of `epoch` already applied, None while validating

        def checkpoint_state(epoch_done: int, step_done: int) -> dict[str, Any]:
            return self._state(
                optimizer, scheduler, scaler, epoch_done, step_done,
                {"best_val_l1": best_val, "best_epoch": best_epoch,
                 "epoch_loss_sum": loss_sum, "epoch_loss_count": loss_count},
            )

        self._bare().train()
        try:
            with progress:
                for epoch in range(start_epoch, cfg.epochs):
                    self._bare().begin_epoch(epoch)
                    started = time.perf_counter()
                    order = epoch_order(len(train_ds), cfg.seed, epoch, self.rank, self.world)
                    order = order[: steps_per_epoch * cfg.batch_size]
                    done = start_step if epoch == start_epoch else 0
                    if not done:
                        loss_sum, loss_count = 0.0, 0
                    for batch in batches(train_ds, order[done * cfg.batch_size :], cfg.batch_size):
                        loss = self._train_step(objective, optimizer, scaler, to_device(batch, self.device), epoch, done)
                        loss_sum, loss_count, done = loss_sum + loss, loss_count + 1, done + 1
                        progress.update(task, advance=1, epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss:.4g}")
                        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps_per_epoch:
                            self._save("last", checkpoint_state(epoch, done))
                        if stop.raised:
                            self._save("last", checkpoint_state(epoch, done))
                            raise RunInterrupted(
                                f"{self.run.path}: stopped by SIGTERM at epoch {epoch + 1}, step {done}; continue with --resume"
                            )
                    done = None
                    scheduler.step()
                    val = {"val_l1": math.nan}
                    if self.is_main and len(val_ds):
                        val = validate(self._bare(), val_ds, self.device, cfg.amp, cfg.batch_size)
                    row = {
                        "epoch": epoch + 1,
                        "train_loss": loss_sum / max(loss_count, 1),
                        **val,
                        "lr": optimizer.param_groups[0]["lr"],
                        "seconds": round(time.perf_counter() - started, 3),
                    }
                    history.append(row)
                    improved = best_epoch == 0 or val["val_l1"] < best_val
                    if improved:
                        best_val, best_epoch = val["val_l1"], epoch + 1
                    state = checkpoint_state(epoch + 1, 0)
                    if self.is_main:  # history first: a kill between the two keeps every row
                        self.run.write_history(history)
                        if improved:
                            self._save("best", state)
                        self._save("last", state)
                        self._report_epoch(progress, row, improved)
                    start_step = 0
        except KeyboardInterrupt:
            if done is not None:  # between steps of an epoch: save exactly where we are
                self._save("last", checkpoint_state(epoch, done))
            raise RunInterrupted(f"{self.run.path}: interrupted; continue from the last checkpoint with --resume") from None
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        return FitResult(cfg.epochs, best_val, best_epoch, history, resumed_from)

    def _train_step(self, objective, optimizer, scaler, batch: Batch, epoch: int, step: int) -> float:
        with autocast(self.device, self.recipe.train.amp):
            loss, _ = objective(batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise SftkdError(
                f"{self.run.path}: loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                "training stopped, the last good checkpoint is kept (try a lower train.lr)"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return value

    def _progress(self) -> Progress:
        quiet = not self.is_main or not self.console.is_terminal
        return Progress(
            TextColumn("[bold]{task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=quiet,
            transient=False,
        )

    def _start_line(self, train_slices: int, val_slices: int, steps: int, resumed_from: int | None) -> str:
        """What is about to run, printed before the first step (also when output is not a terminal)."""
        cfg, data = self.recipe.train, self.recipe.data
        threads = f", {torch.get_num_threads()} thread(s)" if self.device.type == "cpu" else ""
        resumed = f", resuming after epoch {resumed_from}" if resumed_from is not None else ""
        models = " + ".join(m.name for m in self._bare().models().values())
        return (
            f"run {self.run.path}: {models} ({self.recipe.run.role}) on {data.path} "
            f"({data.acceleration:g}x; train {train_slices} slices, val {val_slices}), "
            f"{cfg.epochs} epochs of {steps} steps, batch {cfg.batch_size}, {self.device}{threads}{resumed}"
        )

    def _report_epoch(self, progress: Progress, row: dict[str, Any], improved: bool) -> None:
        line = (
            f"epoch {row['epoch']}: train {row['train_loss']:.5f}  val L1 {row['val_l1']:.5f}  "
            f"PSNR {row.get('val_psnr', math.nan):.2f}  SSIM {row.get('val_ssim', math.nan):.4f}  "
            f"lr {row['lr']:.2g}  {row['seconds']:.1f}s" + ("  *best" if improved else "")
        )
        progress.console.print(line, highlight=False, soft_wrap=True)
