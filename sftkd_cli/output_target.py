"""What a command's output file given by the user (`compare --out`, `compare --attention`,
`bench --json`) may replace, checked before any work.

Never a file sftkd reads from a run or a dataset (`sftkd_input`), not even with --force: replacing
it would break the run or the dataset. Another existing regular file only when it is empty or the
command itself wrote it earlier (told by its content), else only with --force. A device or FIFO
(/dev/stdout, a pipe) is written to, as asked.

Why: a typo in an output path (`--json runs/x/checkpoints/best.pt`) must not destroy a checkpoint,
a manifest, a thesis figure or notes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sftkd_cli.data.format import MANIFEST, MASKS
from sftkd_cli.errors import SftkdError
from sftkd_cli.files import MAX_JSON_BYTES, read_regular_bytes
from sftkd_cli.run_files import CHECKPOINTS, EVAL_PREFIX, EXPORTS, RECIPE_YAML, RUN_FILES

def _run_file(path: Path) -> bool:
    """Whether `path` is (or would be) a file sftkd reads from a run or an evaluation folder in it:
    run_files' names there (recipe.yaml, metrics.json, history.jsonl...), or in its checkpoints/ or export/."""
    from sftkd_cli.runs import is_run_folder

    folder = path.parent
    if path.name in RUN_FILES and (is_run_folder(folder) or folder.name.startswith(EVAL_PREFIX)):
        return True
    return folder.name in (CHECKPOINTS, EXPORTS) and (folder.parent / RECIPE_YAML).is_file()


def _dataset_file(path: Path) -> bool:
    """Whether `path` is (or would be) a file of a prepared dataset (a folder with a manifest.json):
    the manifest, a volume's .h5, or a mask in its masks/ folder."""
    folder = path.parent
    if (folder / MANIFEST).is_file():
        return path.name == MANIFEST or path.suffix == ".h5"
    return folder.name == MASKS and (folder.parent / MANIFEST).is_file()


def sftkd_input(path: Path) -> bool:
    """Whether writing `path` would replace a file sftkd reads from a run or a dataset: checked at
    `path` as given and where its links lead (a dangling link too: writing creates its target)."""
    return any(_run_file(p) or _dataset_file(p) for p in (path, Path(os.path.realpath(path))))


def replaceable_output(path: Path, ours: Callable[[bytes], bool]) -> bool:
    """Whether the regular file at `path` is empty (a placeholder, mktemp's: nothing to lose) or one
    `ours` recognises from its bytes; one that cannot be read, or is larger than any sftkd output
    (MAX_JSON_BYTES), is not. For writing over a file by its name; deleting needs `recognised_output`."""
    return _judged(path, ours, empty=True)


def recognised_output(path: Path, ours: Callable[[bytes], bool]) -> bool:
    """Whether the regular file at `path` holds bytes `ours` recognises: what may be deleted as
    sftkd's. An empty file is not (it may be anyone's, e.g. the user's placeholder)."""
    return _judged(path, ours, empty=False)


def _judged(path: Path, ours: Callable[[bytes], bool], empty: bool) -> bool:
    """`ours` on the bytes of the regular file at `path` (`empty` for an empty one); False for one
    that cannot be read or is larger than MAX_JSON_BYTES."""
    try:
        data = read_regular_bytes(path, "output", limit=MAX_JSON_BYTES)
        return bool(ours(data)) if data else empty
    except (SftkdError, ValueError):  # ValueError: not UTF-8 text, not JSON
        return False


def check_output_file(path: Path, flag: str, force: bool, ours: Callable[[bytes], bool], expected: str) -> None:
    """Refuse in one line, before any work: `path` (given with option `flag`) when it is a file sftkd
    reads from a run or a dataset (even with `force`) or a folder; an existing regular file that is
    neither empty nor recognised by `ours` unless `force` (`expected` says what would be, e.g.
    'an earlier compare output (expected ...)')."""
    shown = f"{flag} {path}"
    if sftkd_input(path):
        raise SftkdError(f"{shown}: refused, even with --force: a file sftkd reads from a run folder or a dataset; "
                         "choose a file outside the run or dataset")
    if path.is_dir():
        raise SftkdError(f"{shown}: is a folder; expected a file name")
    if path.is_file() and not force and not replaceable_output(path, ours):
        raise SftkdError(f"{shown}: exists and is not {expected}; left untouched: choose another file, "
                         "or pass --force to replace it")
