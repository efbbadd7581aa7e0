"""The words of training's lines: where a checkpoint stands, a model in the start line, an epoch's
results. Kept apart from the engine, which decides when and where they are printed."""

from __future__ import annotations

import math
from typing import Any

from sftkd_cli.models import CascadeNet, count_parameters

#: how a stopped run's line tells its command's user to go on, after a stop between steps and after
#: a second Ctrl-C (a plan says its own words instead: `reproduce.stagework.interrupted_note`)
RESUME_HINTS = ("continue with --resume", "--resume continues from the last checkpoint")

#: what each stage of two-stage distillation trains with (`Objective.stage`), for its epoch lines
STAGE_LOSSES = {1: "feature loss", 2: "L1"}


def checkpoint_at(epoch: int, step: int) -> str:
    """Where a checkpoint's (epoch, step_in_epoch) stands, in words: 'epoch 2, step 1' (1-based, after
    that step) or 'the end of epoch 1'."""
    return f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"


def model_text(model: CascadeNet) -> str:
    """A model in the start line: its name, parameter count (as evaluate and export count them) and,
    for complex data, its images."""
    kind = ", complex two-channel" if model.acquisition.values == "complex" else ""
    return f"{model.name} ({count_parameters(model):,} params{kind})"


def loss_text(value: float) -> str:
    """A loss in an epoch line: 5 decimals ('0.01234'), or 4 significant digits below 1e-4, where
    those would show a small but nonzero loss (a feature loss can be 4.5e-06) as 0.00000."""
    return f"{value:.5f}" if value == 0 or abs(value) >= 1e-4 else f"{value:.3e}"


def epoch_line(row: dict[str, Any], improved: bool) -> str:
    """An epoch's results from its history `row`, marked '*best' where it `improved` the best val L1;
    a two-stage distillation's row says its stage, so what its train loss is."""
    stage = f", stage {row['stage']} ({STAGE_LOSSES.get(row['stage'], '?')})" if row.get("stage") else ""
    return (
        f"epoch {row['epoch']}{stage}: train {loss_text(row['train_loss'])}  val L1 {row['val_l1']:.5f}  "
        f"PSNR {row.get('val_psnr', math.nan):.2f}  SSIM {row.get('val_ssim', math.nan):.4f}  "
        f"lr {row['lr']:.2g}  {row['seconds']:.1f}s" + ("  *best" if improved else "")
    )
