"""The JSON `sftkd bench --json` writes: the keys every one has, and how `--json` tells an earlier
one of its own. Light (no torch): the command's help names the keys."""

from __future__ import annotations

import json

#: keys every bench JSON has (format 1 had them too), in the order it writes them
BENCH_KEYS = ("format", "sftkd_version", "settings", "machine", "rows")
#: the keys in words, for help and errors
BENCH_KEYS_TEXT = ", ".join(f'"{key}"' for key in BENCH_KEYS[:-1]) + f' and "{BENCH_KEYS[-1]}"'


def written_by_bench(data: bytes) -> bool:
    """Whether `data` (an existing file's bytes) is a JSON that `sftkd bench --json` wrote: an object
    with bench's keys (what `--json` may replace without --force)."""
    payload = json.loads(data)
    return isinstance(payload, dict) and all(key in payload for key in BENCH_KEYS)
