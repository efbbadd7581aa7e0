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

import fcntl
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sftkd_cli import __version__
from sftkd_cli.config import Recipe, dump_recipe, load_recipe
from sftkd_cli.errors import SftkdError, os_error_text

CHECKPOINT_FORMAT = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text twin of `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint; a failure (disk full, ...) keeps the previous file intact."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SftkdError(f"{path}: could not write checkpoint ({os_error_text(exc)}); the previous one is kept") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, with a clear error for missing or corrupt files."""
    if not path.is_file():
        raise SftkdError(f"{path}: checkpoint not found (or not a regular file)")
    try:
        # weights_only: the unpickler builds tensors and plain containers only, so a crafted
        # file cannot run code while it is read (sftkd writes nothing else into a checkpoint)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise SftkdError(f"{path}: unreadable checkpoint (UnpicklingError)") from None
        raise SftkdError(
            f"{path}: refused: the file holds Python objects besides tensors and plain values "
            "(loading it could run code); it is not an sftkd checkpoint"
        ) from None
    except Exception as exc:  # torch raises many kinds for truncated/corrupt files
        raise SftkdError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SftkdError(f"{path}: not an sftkd checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


def git_commit() -> str | None:
    """The sftkd source tree's git commit, when it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: str, seed: int) -> dict[str, Any]:
    """What produced a run: versions, device, commit, seed, command line."""
    return {
        "sftkd_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": device,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "seed": seed,
        "argv": sys.argv,
    }


class RunDir:
    """A run directory; holds an exclusive lock while training in it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_handle: Any = None

    # paths -------------------------------------------------------------------------------
    @property
    def recipe_file(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def history_file(self) -> Path:
        return self.path / "history.jsonl"

    def checkpoint(self, name: str = "last") -> Path:
        return self.path / "checkpoints" / f"{name}.pt"

    # lifecycle ---------------------------------------------------------------------------
    def prepare(self, recipe: Recipe, *, resume: bool, force: bool) -> None:
        """Create (or reopen with `resume`) the run dir and lock it; never clobber silently."""
        if self.path.exists() and not self.path.is_dir():
            raise SftkdError(f"{self.path}: exists and is not a directory")
        exists = self.recipe_file.exists()
        if resume:
            if not exists:
                raise SftkdError(f"{self.path}: nothing to resume (no recipe.yaml); drop --resume to start")
        elif exists and not force:
            raise SftkdError(f"{self.path}: run already exists; use --resume to continue or --force to overwrite")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        for stale in [*self.path.glob(".*.tmp-*"), *self.path.glob("checkpoints/.*.tmp-*")]:
            stale.unlink(missing_ok=True)  # left by a killed process; the lock says none is running
        if force and not resume:
            for item in list(self.path.iterdir()):
                if item.name == ".lock":
                    continue
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        (self.path / "checkpoints").mkdir(exist_ok=True)
        if not resume:
            atomic_write_text(self.recipe_file, dump_recipe(recipe))

    def lock(self) -> None:
        """Take an exclusive lock; a second process on the same run is refused."""
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise SftkdError(f"{self.path}: another sftkd process is using this run") from None
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    # records -----------------------------------------------------------------------------
    def load_recipe(self) -> Recipe:
        return load_recipe(self.recipe_file)

    def write_env(self, env: dict[str, Any]) -> None:
        atomic_write_text(self.path / "env.json", json.dumps(env, indent=2))

    def read_history(self) -> list[dict[str, Any]]:
        if not self.history_file.exists():
            return []
        rows = []
        for line in self.history_file.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a crash: ignore it and what follows
        return rows

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.history_file, "".join(json.dumps(r) + "\n" for r in rows))


def open_run(path: str | Path) -> RunDir:
    """An existing run directory (for evaluate, distill, export)."""
    run = RunDir(Path(path))
    if not run.recipe_file.is_file():
        raise SftkdError(f"{path}: not an sftkd run directory (no recipe.yaml)")
    return run
