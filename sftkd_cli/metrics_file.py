"""metrics.json, the summary `sftkd evaluate` writes last into a results folder: its format
number and the one reader that compare, export and reproduce share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftkd_cli.errors import SftkdError
from sftkd_cli.files import read_regular_bytes
from sftkd_cli.run_files import METRICS_JSON

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
