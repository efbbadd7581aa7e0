"""metrics.json, the summary `sftkd evaluate` writes last into a results folder: its format
number, the one reader that compare, export and reproduce share, and the scores an export card
takes from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftkd_cli.errors import SftkdError
from sftkd_cli.files import read_regular_bytes
from sftkd_cli.run_files import CHECKPOINT_DIGEST, METRICS_JSON

#: the format number evaluate writes; a reader refuses another
METRICS_FORMAT = 1


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json as a dict, or one SftkdError line naming the file: unreadable (a FIFO or
    device is never read), not JSON, not an object, or another format."""
    try:
        info = json.loads(read_regular_bytes(path, METRICS_JSON))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SftkdError(f"{path}: corrupt metrics file ({exc}); re-run `sftkd evaluate {path.parent}`") from None
    if not isinstance(info, dict):
        raise SftkdError(f"{path}: expected a JSON object")
    if info.get("format") != METRICS_FORMAT:
        raise SftkdError(f"{path}: format {info.get('format')!r} is not supported (expected {METRICS_FORMAT})")
    return info


def exported_scores(folder: Path, role: str, checkpoint: str, digest: str) -> tuple[dict[str, Any] | None, str]:
    """The evaluation of an exported model, summarised for its card, and '': metrics.json in its
    evaluation folder (`evaluate.output_dir`), when it scored this role (`role`, as metrics.json
    names it) and this checkpoint, byte for byte (sha256 `digest`). Otherwise None and why, for
    export's note: no scores, another model's, those of the other checkpoint or of an earlier one
    (a resumed run's), or a metrics.json of an sftkd that did not record the checkpoint's sha256."""
    path = folder / METRICS_JSON
    if not path.exists():
        return None, f"no {path} yet"
    try:
        info = read_metrics(path)
    except SftkdError as exc:
        return None, str(exc)
    if info.get("role") != role:
        return None, f"{path} scores another model (role {info.get('role')!r}, not {role!r})"
    if info.get("checkpoint") != checkpoint:
        return None, f"{path} scores the {info.get('checkpoint')} checkpoint, not {checkpoint}"
    if info.get(CHECKPOINT_DIGEST) is None:
        return None, f"{path} does not record which checkpoint bytes it scored (an older sftkd wrote it)"
    if info[CHECKPOINT_DIGEST] != digest:
        return None, f"{path} scores another checkpoint (an earlier {checkpoint}.pt: the run trained on since, e.g. --resume)"
    dataset = info.get("dataset") or {}
    return {
        "file": str(path.resolve()),  # the same card from any working folder
        "model": info.get("model"),
        "role": info.get("role"),
        "checkpoint": info.get("checkpoint"),
        "split": dataset.get("split"),
        "acceleration": dataset.get("acceleration"),
        "latency_ms_per_slice": info.get("latency_ms_per_slice"),
        "metrics": info.get("metrics"),
        "zero_filled": info.get("zero_filled"),
    }, ""
