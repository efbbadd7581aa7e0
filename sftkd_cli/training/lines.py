"""The words of training's lines: where a checkpoint stands, a model in the start line, an epoch's
results. Kept apart from the engine, which decides when and where they are printed."""

from __future__ import annotations

import math
from typing import Any

from sftkd_cli.models import CascadeNet, count_parameters

#: how a stopped run's line tells its command's user to go on, after a stop between steps and after
#: a second Ctrl-C (a plan says its own words instead: `reproduce.stagework.interrupted_note`)
RESUME_HINTS = ("continue with --resume", "--resume continues from the last checkpoint")


def checkpoint_at(epoch: int, step: int) -> str:
    """Where a checkpoint's (epoch, step_in_epoch) stands, in words: 'epoch 2, step 1' (1-based, after
    that step) or 'the end of epoch 1'."""
    return f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"


def model_text(model: CascadeNet) -> str:
    """A model in the start line: its name, parameter count (as evaluate and export count them) and,
    for complex data, its images."""
    kind = ", complex two-channel" if model.acquisition.values == "complex" else ""
    return f"{model.name} ({count_parameters(model):,} params{kind})"


def epoch_line(row: dict[str, Any], improved: bool) -> str:
    """An epoch's results from its history `row`, marked '*best' where it `improved` the best val L1."""
    return (
        f"epoch {row['epoch']}: train {row['train_loss']:.5f}  val L1 {row['val_l1']:.5f}  "
        f"PSNR {row.get('val_psnr', math.nan):.2f}  SSIM {row.get('val_ssim', math.nan):.4f}  "
        f"lr {row['lr']:.2g}  {row['seconds']:.1f}s" + ("  *best" if improved else "")
    )
