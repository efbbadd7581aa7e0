"""Run directories: create, lock, record the recipe and environment, checkpoints, history.

Layout of `runs/<name>/`:
    recipe.yaml          the resolved recipe (re-run with `--recipe runs/<name>/recipe.yaml`)
    env.json             versions, device, git commit, seed, command line
    history.jsonl        one JSON object per finished epoch
    checkpoints/last.pt  latest training state (written atomically)
    checkpoints/best.pt  best validation L1 so far (written atomically)
    metrics.json, per_slice.csv, recon.h5   after `sftkd evaluate`
"""

from __future__ import annotations

import io
import json
import pickle
import platform
import re
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from sftkd_cli import __version__
from sftkd_cli.config import Recipe, dump_recipe, load_recipe
from sftkd_cli.files import (
    MAX_JSON_BYTES, json_text, left_by_dead_process, made_folder, read_regular_bytes, replace_atomically,
    write_run_file,
)
from sftkd_cli.errors import SftkdError, os_error_text
from sftkd_cli.choices import CHECKPOINT_NAMES
from sftkd_cli.run_files import (CARD_SUFFIX, CHECKPOINTS, ENV_JSON, EVAL_FILES, EVAL_PREFIX, EXPORT_SUFFIX, EXPORTS,
                                 HISTORY_JSONL, LOCK, METRICS_JSON, RECIPE_YAML, RUN_FILES, checkpoint_file)

CHECKPOINT_FORMAT = 1
#: a model role in a checkpoint (model, teacher, student): it names outputs (RUN/eval-<role>/,
#: RUN/export/<arch>-<role>.ts), so it is one plain name, never a path
ROLE_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: the names of temporary files (`files.temporary_sibling`) a killed process may leave
TEMPORARY_FILES = ".*.tmp-*"
#: a history.jsonl is one short line per epoch; anything larger is not one
MAX_HISTORY_BYTES = 64 << 20


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint; a failure (disk full, ...) keeps the previous file intact."""
    write_checkpoint(path, checkpoint_bytes(state))


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """A checkpoint serialised in memory (once, for as many files as hold it).

    Bytes, not a view of the BytesIO (`getbuffer`): a failed write's traceback can put that view
    in a reference cycle, and collecting one crashes CPython 3.12.0 and 3.12.1 (gh-111049)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_checkpoint(path: Path, data: bytes) -> None:
    """Atomically write serialised checkpoint `data` to `path` with plain writes: a full disk or a
    file-size limit is an SftkdError naming the file, and the previous file (if any) is kept intact."""
    existed = path.exists()
    try:
        replace_atomically(path, data)
    except OSError as exc:
        kept = "the previous one is kept" if existed else "nothing written"
        raise SftkdError(f"{path}: could not write checkpoint ({os_error_text(exc)}); {kept}") from None


#: how a file torch.save wrote begins: a zip archive (torch >= 1.6), or a pickle (protocol 2 and
#: later start with the PROTO opcode 0x80), the legacy format
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def load_checkpoint(path: Path, data: bytes | None = None) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, with a clear error for missing or corrupt files; from
    `data`, the file's bytes when the caller has read them already (to hash what it loads).

    Checked in this order, so that each file gets the one line that says what it is: empty or
    cut short, not a PyTorch file at all (a text file, a download's error page), damaged, holding
    code, a PyTorch file sftkd did not write (a plain state_dict), and then its entries
    (`_check_models`)."""
    if data is None and not path.is_file():
        raise SftkdError(f"{path}: checkpoint not found (or not a regular file)")
    head = data[:4] if data is not None else _file_start(path)
    if len(head) < 4:
        raise SftkdError(f"{path}: empty or truncated ({len(head)} bytes); expected a whole checkpoint sftkd wrote")
    if not head.startswith(TORCH_FILE_STARTS):
        raise SftkdError(f"{path}: not a PyTorch checkpoint file; expected a .pt that sftkd wrote")
    try:
        # weights_only: the unpickler builds tensors and plain containers only, so a crafted
        # file cannot run code while it is read (sftkd writes nothing else into a checkpoint)
        state = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise SftkdError(f"{path}: truncated or damaged checkpoint (UnpicklingError); "
                             "expected a whole checkpoint sftkd wrote") from None
        raise SftkdError(
            f"{path}: refused: the file holds Python objects besides tensors and plain values "
            "(loading it could run code); it is not an sftkd checkpoint"
        ) from None
    except Exception as exc:  # torch raises many kinds for truncated/corrupt files
        if _zip_without_pickle(path, data):
            raise SftkdError(f"{path}: a zip file but not a PyTorch checkpoint (no data.pkl); "
                             "expected a .pt that sftkd wrote") from None
        raise SftkdError(f"{path}: truncated or damaged checkpoint ({type(exc).__name__}); "
                         "expected a whole checkpoint sftkd wrote") from None
    if not isinstance(state, dict) or "format" not in state:
        raise SftkdError(f"{path}: a PyTorch file that sftkd did not write (such as a plain state_dict); "
                         "expected a run folder or its checkpoints/best.pt or last.pt")
    if state["format"] != CHECKPOINT_FORMAT:
        raise SftkdError(f"{path}: checkpoint format {state['format']!r}; this sftkd reads format {CHECKPOINT_FORMAT} "
                         "(a checkpoint of another sftkd version, or not sftkd's)")
    _check_roles(state, path)
    _check_models(state, path)
    return state


def _zip_without_pickle(path: Path, data: bytes | None) -> bool:
    """Whether the file (or `data`) is a whole zip archive without the `<name>/data.pkl` that
    torch.save writes (a NumPy .npz, any other zip); False for one cut short or unreadable."""
    try:
        with zipfile.ZipFile(path if data is None else io.BytesIO(data)) as archive:
            return not any(name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _file_start(path: Path) -> bytes:
    """The first 4 bytes of `path` (fewer for a shorter file)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError as exc:
        raise SftkdError(f"{path}: cannot read checkpoint ({os_error_text(exc)})") from None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_weights(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


#: what each key of a model entry must hold (`_check_models`): (test, what is expected)
_ENTRY_KEYS: dict[str, tuple[Any, str]] = {
    "arch": (lambda value: isinstance(value, str), "an architecture name such as D5C5"),
    "channels": (_is_count, "a whole number"),
    "pad": (_is_count, "a whole number"),
    "state": (_is_weights, "a mapping of weight names to tensors"),
}


def _check_models(state: dict[str, Any], path: Path) -> None:
    """Refuse, naming the file and the key, a checkpoint whose model entries (`models`: role ->
    arch, channels, pad, state, and centered where present) or `trained_on` record are not of
    the types sftkd writes: checked once, where the file is read, instead of failing later as a
    KeyError or AttributeError in whatever reads them (an entry's acquisition record is checked
    where it is read, `Acquisition.from_record`)."""
    models = state.get("models")
    if models is not None and not (isinstance(models, dict) and models):
        shown = "empty" if isinstance(models, dict) else _shown(models)
        raise SftkdError(f"{path}: models is {shown}; expected a mapping of roles to model entries "
                         "(a checkpoint sftkd wrote)")
    for role, entry in (models or {}).items():
        where = f"{path}: model {role!r}"
        if not isinstance(entry, dict):
            raise SftkdError(f"{where} is {_shown(entry)}; expected a model entry (a checkpoint sftkd wrote)")
        for key, (fits, expected) in _ENTRY_KEYS.items():
            if key not in entry:
                raise SftkdError(f"{where} has no {key!r}; expected {expected} (a checkpoint sftkd wrote)")
            if not fits(entry[key]):
                raise SftkdError(f"{where}: {key} is {_shown(entry[key])}; expected {expected}")
        if "centered" in entry and not isinstance(entry["centered"], bool):
            raise SftkdError(f"{where}: centered is {_shown(entry['centered'])}; expected true or false")
    trained_on = state.get("trained_on")
    if trained_on is not None and not isinstance(trained_on, dict):
        raise SftkdError(f"{path}: trained_on is {_shown(trained_on)}; expected a mapping (the dataset record sftkd writes)")


def _shown(value: object) -> str:
    """`value` for an error line: a short repr for a plain value, else its type."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


def is_role_name(name: object) -> bool:
    """Whether `name` is a plain model role name (`ROLE_NAME`): safe in a file or folder name."""
    return isinstance(name, str) and ROLE_NAME.fullmatch(name) is not None


def _check_roles(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose model roles (the keys of `models`, and `primary`) are not plain
    names: a role names outputs in the run, so one such as '/../../x' would send them out of it."""
    models = state.get("models")
    roles = [("models", name) for name in models] if isinstance(models, dict) else []
    if state.get("primary") is not None:
        roles.append(("primary", state["primary"]))
    for key, name in roles:
        if not is_role_name(name):
            shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
            raise SftkdError(f"{path}: model role {shown} in {key!r} is not a plain name (letters, digits, _ or -, "
                             "such as model, teacher, student); not an sftkd checkpoint")


def git_commit(package: Path | None = None) -> str | None:
    """The sftkd source tree's git commit, when it is a checkout of sftkd: its top level holds the
    package (`package`: this one). An installed copy inside another repository (a venv in a
    user's project) is not."""
    here = (package or Path(__file__).parent).resolve()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != here.parent:
        return None
    return lines[1]


def environment(device: str, seed: int, world_size: int = 1) -> dict[str, Any]:
    """What produced a run: versions, device, processes (torchrun's), commit, seed, command line."""
    return {
        "sftkd_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": device,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "world_size": world_size,
        "git_commit": git_commit(),
        "seed": seed,
        "argv": sys.argv,
    }


#: seconds a run's lock is tried before it counts as another process's: a process that trains
#: holds it throughout, a `RunDir.busy` probe for an instant
LOCK_PATIENCE_S = 0.5


class RunDir:
    """A run directory; holds an exclusive lock while training in it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_handle: Any = None

    # paths -------------------------------------------------------------------------------
    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE_YAML

    @property
    def history_file(self) -> Path:
        return self.path / HISTORY_JSONL

    def checkpoint(self, name: str) -> Path:
        return self.path / checkpoint_file(name)

    def has_results(self) -> bool:
        """Whether anything was evaluated or exported from the run (metrics.json here or in an
        eval-* folder, a file in export/): scores of weights that --resume must not drop."""
        evaluated = any((folder / METRICS_JSON).exists() for folder in (self.path, *eval_folders(self.path)))
        exports = self.path / EXPORTS
        return evaluated or (exports.is_dir() and any(exports.iterdir()))

    # lifecycle ---------------------------------------------------------------------------
    def prepare(self, recipe: Recipe, *, resume: bool, force: bool, sources: Sequence[str | Path] = ()) -> None:
        """Create (or reopen with `resume`) the run dir and lock it; never clobber silently.

        A non-empty folder that is not a run is refused; `force` removes only what sftkd wrote
        into the run (`sftkd_files`), never other files kept there. `sources` (a teacher run, a
        checkpoint to start from) must lie outside the run: it would replace what it reads.
        A run another process holds is refused as such first: what it has written so far (the
        recipe of a run it has just begun) says nothing about whether this start may go on.
        """
        if self.path.is_dir() and (self.path / LOCK).is_file():
            self.lock()
        try:
            self._check_can_prepare(resume, force, sources)
        except SftkdError:
            self.unlock()
            raise
        created = not self.path.exists()
        try:
            with made_folder(self.path):  # a failed start leaves no folder it made, the run's parents included
                try:
                    if self._lock_handle is None:
                        self.lock()
                    for stale in stale_temporary_files(self.path):
                        stale.unlink(missing_ok=True)
                    if force and not resume:
                        remove_sftkd_files(self.path, keep_lock=True)
                    (self.path / CHECKPOINTS).mkdir(exist_ok=True)
                    if not resume:
                        write_run_file(self.recipe_file, dump_recipe(recipe))
                except (OSError, SftkdError):
                    if created and self._lock_handle is not None:  # leave no half-made run behind (only what this call made)
                        self._remove_own()
                    self.unlock()  # a process that did not get the lock removes nothing: the run is another's
                    raise
        except OSError as exc:
            raise SftkdError(f"{self.path}: could not {'open' if resume else 'create'} the run ({os_error_text(exc)})") from None

    def _check_can_prepare(self, resume: bool, force: bool, sources: Sequence[str | Path]) -> None:
        """Refuse, before anything is created or removed, what `prepare` must not do."""
        if self.path.exists() and not self.path.is_dir():
            raise SftkdError(f"{self.path}: exists and is not a directory")
        if self.path.is_dir():  # checkpoints are written into checkpoints/: never through a link out of the run
            check_real_folder(self.path / CHECKPOINTS, self.path)
        here = self.path.resolve()
        for source in sources:
            if source and here in (Path(source).resolve(), *Path(source).resolve().parents):
                raise SftkdError(
                    f"{source}: lies inside the run directory {self.path} that this command writes; "
                    "choose another --name"
                )
        exists = self.recipe_file.exists()
        if exists and not (self.path / CHECKPOINTS).is_dir():  # sftkd makes it before the recipe
            raise SftkdError(
                f"{self.path}: holds a recipe.yaml but is not an sftkd run (no checkpoints/ folder); "
                "choose another --name or --runs-dir"
            )
        if resume:
            if not exists:
                raise SftkdError(f"{self.path}: nothing to resume (no recipe.yaml); for a run moved, copied or renamed, give its "
                                  "RUN/recipe.yaml as the recipe, or --name and --runs-dir; else drop --resume to start")
        elif exists and not force:
            raise SftkdError(f"{self.path}: run already exists; use --resume to continue or --force to start over")
        elif not exists and self.path.is_dir() and self._foreign_entries():
            raise SftkdError(
                f"{self.path}: folder is not empty and is not an sftkd run (no recipe.yaml); "
                "choose another --name or --runs-dir"
            )
        if (force and exists and not resume and self.load_recipe().run.name != self.path.name
                and "sftkd_version" not in (self.read_env() or {})):
            # sftkd's recipe names the run's folder; a run copied or renamed since keeps its training's env.json
            raise SftkdError(f"{self.path}: its recipe.yaml is not the one sftkd wrote for a run of this name, so --force "
                             "will not empty the folder; choose another --name or --runs-dir")

    def _foreign_entries(self) -> list[str]:
        """Entries of a folder without recipe.yaml that sftkd did not leave there. A start writes
        only .lock, temporary files (`TEMPORARY_FILES`) and an empty checkpoints/ before the recipe,
        and a removal takes the recipe last (`remove_sftkd_files`), leaving at most empty folders:
        anything else, even a metrics.json or checkpoints/best.pt, is the user's."""
        foreign = []
        for entry in self.path.iterdir():
            if entry.is_symlink():
                foreign.append(entry.name)
            elif entry.is_file() and (entry.name == LOCK or fnmatch(entry.name, TEMPORARY_FILES)):
                continue
            elif (entry.name in (CHECKPOINTS, EXPORTS) or entry.name.startswith(EVAL_PREFIX)) and entry.is_dir():
                if any(entry.iterdir()):
                    foreign.append(entry.name)
            else:
                foreign.append(entry.name)
        return foreign

    def lock(self) -> None:
        """Take an exclusive lock; a second process on the same run is refused (after
        `LOCK_PATIENCE_S`: another's `busy` probe holds it for an instant)."""
        lock = FileLock(self.path / LOCK, timeout=LOCK_PATIENCE_S)
        try:
            lock.acquire()
        except Timeout:
            raise SftkdError(f"{self.path}: another sftkd process is using this run") from None
        except OSError as exc:
            raise SftkdError(f"{self.path}: could not lock the run ({os_error_text(exc)})") from None
        self._lock_handle = lock

    def busy(self) -> bool:
        """Whether another process holds this run's lock (one trains in it): tried for
        `LOCK_PATIENCE_S` (several distillations probing one teacher at once each hold it for an
        instant) and let go at once. A run with no .lock has never been locked; one whose lock
        cannot be opened (a read-only copy) cannot be told, and counts as not busy."""
        if not (self.path / LOCK).is_file():
            return False
        lock = FileLock(self.path / LOCK, timeout=LOCK_PATIENCE_S)
        try:
            lock.acquire()
        except Timeout:
            return True
        except OSError:
            return False
        lock.release()
        return False

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.release()
            self._lock_handle = None

    def discard_untrained(self) -> bool:
        """Remove what sftkd wrote here when no checkpoint was saved, then unlock: a new run whose
        start failed or was interrupted (a setting the device refuses, a NaN loss in its first
        epoch, Ctrl-C) leaves nothing that would block the retry. A folder that holds other files
        keeps them. Returns whether the run was removed (False: it has a checkpoint)."""
        untrained = not any(self.checkpoint(name).exists() for name in CHECKPOINT_NAMES)
        if untrained:
            self._remove_own()
        self.unlock()
        return untrained

    def _remove_own(self) -> None:
        """What sftkd wrote here, .lock included, and the folder if that empties it: done while
        holding the lock, so that no other process can have taken it (it is never waited for)."""
        remove_sftkd_files(self.path)
        _rmdir_quietly(self.path)

    # records -----------------------------------------------------------------------------
    def load_recipe(self) -> Recipe:
        return load_recipe(self.recipe_file)

    def write_env(self, env: dict[str, Any], resumed: bool = False) -> None:
        """env.json: what this invocation runs with; a resumed run keeps the earlier ones (its
        first command line among them) under "previous", oldest first."""
        previous: list[Any] = []
        if resumed:
            old = self.read_env()
            if old is not None:
                earlier = old.pop("previous", [])
                previous = [*(earlier if isinstance(earlier, list) else []), old]
        write_run_file(self.path / ENV_JSON, json_text({**env, **({"previous": previous} if previous else {})}))

    def read_env(self) -> dict[str, Any] | None:
        """env.json as written (`write_env`); None when there is none or it cannot be read."""
        try:
            env = json.loads(read_regular_bytes(self.path / ENV_JSON, ENV_JSON, MAX_JSON_BYTES))
        except (SftkdError, OSError, ValueError):
            return None
        return env if isinstance(env, dict) else None

    def read_history(self) -> list[dict[str, Any]]:
        return read_history_file(self.history_file) if self.history_file.exists() else []

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """history.jsonl, one compact line per row; a NaN (val_l1 without validation slices) is null."""
        write_run_file(self.history_file, "".join(json_text(r, indent=None) + "\n" for r in rows))


EXPORT_SUFFIXES = tuple(s + card for s in EXPORT_SUFFIX.values() for card in ("", CARD_SUFFIX))


def eval_chain(folder: Path) -> tuple[Path, list[str]]:
    """Walk up from a results folder through the eval-* folders that are not runs themselves:
    (where the walk stops: the run when it holds a recipe.yaml, the eval-* names from there down
    to `folder`), e.g. RUN/eval-student/eval-fastmri -> (RUN, ['eval-student', 'eval-fastmri'])."""
    levels: list[str] = []
    while folder.name.startswith(EVAL_PREFIX) and not (folder / RECIPE_YAML).is_file() and folder.parent != folder:
        levels.insert(0, folder.name)
        folder = folder.parent
    return folder, levels


def eval_folders(run: Path) -> list[Path]:
    """The evaluation folders in `run`: eval-* folders nested in eval-* folders from the run down,
    deepest first (so that each can be removed once emptied); links are not followed."""
    found: list[Path] = []
    level = [run]
    while level:
        level = sorted(p for folder in level for p in folder.glob(f"{EVAL_PREFIX}*") if p.is_dir() and not p.is_symlink())
        found[:0] = level
    return found


def sftkd_files(run: Path) -> list[Path]:
    """The files sftkd wrote into `run` (run records, checkpoints, evaluations, exports)."""
    found = [run / name for name in RUN_FILES]
    found += [run / checkpoint_file(name) for name in CHECKPOINT_NAMES]
    for folder in eval_folders(run):
        found += [folder / name for name in EVAL_FILES]
    found += [p for p in run.glob(f"{EXPORTS}/*") if p.name.endswith(EXPORT_SUFFIXES)]
    found += stale_temporary_files(run)
    # a symlink is removed as a link; nothing is followed out of the run (a linked folder is not ours)
    return [p for p in found if (p.is_symlink() or p.is_file()) and _real_parent(p, run)]


def stale_temporary_files(run: Path) -> list[Path]:
    """The temporary files (`TEMPORARY_FILES`) in `run`, its checkpoints/, export/ and evaluation
    folders that a process no longer running left (`dead_temporary_files`)."""
    return dead_temporary_files(run, run / CHECKPOINTS, run / EXPORTS, *eval_folders(run))


def dead_temporary_files(*folders: Path) -> list[Path]:
    """The temporary files (`TEMPORARY_FILES`, files or links) in `folders` that a process no
    longer running left (`files.left_by_dead_process`). The run's lock does not cover the others:
    evaluate and export write into a run without it, so a live one's are kept."""
    found = [p for folder in folders for p in folder.glob(TEMPORARY_FILES)]
    return [p for p in found if (p.is_symlink() or p.is_file()) and left_by_dead_process(p)]


def _real_parent(path: Path, run: Path) -> bool:
    """True when every folder between `run` and `path` is a real folder, not a symlink."""
    return linked_folder(path.parent, run) is None


def linked_folder(folder: Path, run: Path) -> Path | None:
    """The first of `folder` and the folders between it and `run` (which holds it) that is a
    symbolic link, from the run down; None when all are real folders (or missing)."""
    parts = folder.relative_to(run).parts
    for depth in range(1, len(parts) + 1):
        if run.joinpath(*parts[:depth]).is_symlink():
            return run.joinpath(*parts[:depth])
    return None


def check_real_folder(folder: Path, run: Path) -> None:
    """Refuse in one line an output folder of sftkd's inside `run` (RUN/export, RUN/eval-*/...)
    that is, or lies below, a symbolic link: what sftkd writes or removes there would be outside."""
    link = linked_folder(folder, run)
    if link is not None:
        raise SftkdError(f"{link}: is a symbolic link inside run {run}; sftkd writes its own outputs only into the "
                         "run's real folders; remove the link")


def remove_sftkd_files(run: Path, *, keep_lock: bool = False) -> None:
    """Delete what sftkd wrote into `run`, then its folders left empty; other files stay.
    `keep_lock`: the run's .lock stays (held by this process, which goes on using the run: a
    new .lock would let a second process in). recipe.yaml goes last: while other files of the run
    are left (a removal killed midway), the folder is still a run, not the user's (`_foreign_entries`)."""
    recipe = run / RECIPE_YAML
    for path in sorted(sftkd_files(run), key=lambda p: p == recipe):
        if not (keep_lock and path.name == LOCK and path.parent == run):
            path.unlink(missing_ok=True)
    for folder in [*eval_folders(run), run / EXPORTS, run / CHECKPOINTS]:
        if folder.is_dir() and not folder.is_symlink():
            _rmdir_quietly(folder)


def _rmdir_quietly(folder: Path) -> None:
    """Remove a folder if it is empty; a non-empty one (user files) is kept."""
    try:
        folder.rmdir()
    except OSError:
        pass


def read_history_file(path: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a history.jsonl, up to a damaged line (`parse_history`; a FIFO, device or huge file: refused)."""
    return parse_history(path)[0]


def parse_history(path: Path) -> tuple[list[dict[str, Any]], int | None]:
    """Rows of a history.jsonl up to its first line that is not JSON (damaged: sftkd writes it atomically); that line's number or None."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(read_regular_bytes(path, "history", limit=MAX_HISTORY_BYTES).decode(errors="replace").splitlines(), 1):
        try:
            rows += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError:
            return rows, number
    return rows, None


def is_run_folder(path: Path) -> bool:
    """A run directory, or an evaluation folder inside one (recipe.yaml or metrics.json)."""
    return (path / RECIPE_YAML).exists() or (path / METRICS_JSON).exists()


def expand_runs_folder(path: Path) -> list[Path]:
    """`path` itself, or, for a folder of runs such as a plan's `runs/<plan>/`, the runs in it."""
    if not path.is_dir() or is_run_folder(path):
        return [path]
    runs = sorted(child for child in path.iterdir() if child.is_dir() and is_run_folder(child))
    return runs or [path]


def check_recipe_data(recipe_file: Path, data_path: str, option: str) -> None:
    """Refuse in one line a run recipe's data.path that is not a folder from here (relative to the
    folder training ran in, or moved since), naming the recipe and `option` that gives it instead."""
    if Path(data_path).is_dir():
        return
    where = "" if Path(data_path).is_absolute() else f" (read from here, {Path.cwd()})"
    raise SftkdError(f"{recipe_file}: data.path {data_path!r} is not a folder{where}; {option}")


def open_run(path: str | Path) -> RunDir:
    """An existing run directory (for evaluate, distill, export)."""
    run = RunDir(Path(path))
    if not run.path.exists():
        raise SftkdError(f"{path}: no such run directory")
    if not run.recipe_file.is_file():
        raise SftkdError(f"{path}: not an sftkd run directory (no recipe.yaml)")
    return run
