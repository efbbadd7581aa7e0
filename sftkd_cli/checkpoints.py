"""Finding and loading trained models from run directories or checkpoint files.

A checkpoint holds one or more self-describing model entries (`arch`, `channels`, `pad`,
`acquisition`, `state`) by role: `model` for train-teacher and distill runs, `teacher` and
`student` for SFT runs. Loading is by name and strict: a mismatch is an error, never a partial
load. Entries written before the acquisition record have `centered` (the k-space layout of
their data consistency) instead; the run's `trained_on` supplies the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

import torch

from sftkd_cli.acquisition import Acquisition
from sftkd_cli.choices import BEST, CHECKPOINT_NAMES, LAST
from sftkd_cli.data.dataset import record_acquisition
from sftkd_cli.errors import SftkdError
from sftkd_cli.name_checks import in_any_case
from sftkd_cli.files import read_regular_bytes, sha256_file
from sftkd_cli.models import CascadeNet, build_model, family_of
from sftkd_cli.run_files import checkpoint_file
from sftkd_cli.runs import load_checkpoint, open_run


def resolve_checkpoint(source: str | Path, which: str = BEST, option: str = "") -> Path:
    """A run directory -> its `checkpoints/<which>.pt`; a file -> itself. `option`: the caller's
    option that picks the checkpoint (`--checkpoint`), suggested where the run has another one."""
    path, which = Path(source), in_any_case(which, CHECKPOINT_NAMES)  # BEST is best, as --checkpoint takes it
    if path.is_dir():
        candidate = path / checkpoint_file(which)
        if not candidate.is_file():
            open_run(path)  # a folder that is not a run (a dataset given as --teacher) is said to be one
            raise SftkdError(_no_checkpoint(path, which, option))
        return candidate
    if not path.exists():
        raise SftkdError(f"{source}: no such run directory or checkpoint file")
    return path


def _no_checkpoint(run: Path, which: str, option: str) -> str:
    """Why run `run` has no `which` checkpoint, in one line; `option` is suggested only with a
    checkpoint the run has (a caller without such an option gets no suggestion)."""
    others = [name for name in CHECKPOINT_NAMES if name != which and (run / checkpoint_file(name)).is_file()]
    if not others:
        return f"{run}: has no checkpoint yet (stopped before its first epoch ended, or still training)"
    hint = f"; try `{option} {others[0]}`" if option else ""
    return f"{run}: has no {which} checkpoint, only {others[0]}{hint}"


@dataclasses.dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint read once: its path, what it holds, and the sha256 of the very bytes that was
    loaded from, so that what a run records about its source is what it used, even if the file
    is replaced meanwhile (a teacher run still saving a new best.pt)."""

    path: Path
    state: dict[str, Any]
    sha256: str


def read_checkpoint(source: str | Path, which: str = BEST, option: str = "") -> CheckpointFile:
    """A run's `which` checkpoint (or a checkpoint file), read once (`CheckpointFile`); `option`
    as for `resolve_checkpoint`."""
    path = resolve_checkpoint(source, which, option)
    data = read_regular_bytes(path, "checkpoint", limit=sys.maxsize)
    return CheckpointFile(path, load_checkpoint(path, data), hashlib.sha256(data).hexdigest())


def training_record(run_path: Path, planned: int, checkpoint: str, state: dict[str, Any]) -> dict[str, Any]:
    """How far the run trained: the epochs its last checkpoint finished against those its recipe
    planned (train.epochs), and the checkpoint used (`state`, read from the run's `checkpoint`)
    with its epoch. Why: a run stopped early (Ctrl-C, SIGTERM, a crash; or killed between writing
    best.pt and last.pt, which leaves last.pt an epoch behind) is otherwise exported or scored like
    a finished one. Trained epochs are None (and so is `finished`) where last.pt cannot be read."""
    try:
        last = state if checkpoint == LAST else read_checkpoint(run_path, LAST).state
        trained: int | None = int(last.get("epoch") or 0)
    except SftkdError:
        trained = None
    return {"epochs_trained": trained, "epochs_planned": int(planned),
            "finished": None if trained is None else trained >= planned,
            "checkpoint": checkpoint, "checkpoint_epoch": state.get("epoch"),
            "checkpoint_step_in_epoch": state.get("step_in_epoch") or 0}  # > 0: saved mid-epoch, steps into the next


def stopped_early_note(run: str | Path, training: dict[str, Any]) -> str:
    """One `note:` line for a run `training_record` says did not finish ('' otherwise, or where
    its last.pt cannot be read), said where its weights are exported or scored."""
    if training["finished"] is not False:
        return ""
    return (f"note: {run} trained {training['epochs_trained']} of its {training['epochs_planned']} planned epochs "
            f"(stopped early; --resume continues it); this is its {training['checkpoint']} checkpoint, from epoch "
            f"{training['checkpoint_epoch']}")


def checkpoint_digest(source: str | Path, which: str = BEST) -> str | None:
    """sha256 of a run's `which` checkpoint (or of a checkpoint file): which teacher a distilled
    run learnt from, whatever its folder is called now. None when there is none."""
    try:
        return sha256_file(resolve_checkpoint(source, which))
    except SftkdError:
        return None


def model_entry(state: dict[str, Any], role: str | None, source: str | Path, arch: str | None = None) -> tuple[str, dict[str, Any]]:
    """Pick a model entry: by role, else by architecture, else the checkpoint's primary. `state`
    comes from `load_checkpoint`, which has checked the entries' types."""
    models = state.get("models")
    if not models:
        raise SftkdError(f"{source}: damaged sftkd checkpoint (no model entries)")
    if role is not None:
        if role in models:
            return role, models[role]
        if len(models) == 1:
            (name, entry), = models.items()
            raise SftkdError(f"{source}: holds one model ({name}, {entry['arch']}), not {role!r}: --model picks "
                             "the teacher or student of an SFT run; leave it out for this run")
        raise SftkdError(f"{source}: has no {role!r} model (has {', '.join(models)})")
    if arch is not None:
        matches = [name for name, entry in models.items() if entry["arch"] == arch.upper()]
        if len(matches) == 1:
            return matches[0], models[matches[0]]
        found = ", ".join(f"{n} ({e['arch']})" for n, e in models.items())
        raise SftkdError(f"{source}: expected exactly one {arch} model, found {found}")
    primary = state.get("primary")
    if primary not in models:
        raise SftkdError(f"{source}: damaged sftkd checkpoint (primary model {primary!r} not among {', '.join(models)})")
    return primary, models[primary]


def checkpoint_source(run: str | Path, which: str) -> tuple[str | Path, str]:
    """Where evaluate's checkpoint `which` (--checkpoint, else the recipe's eval.checkpoint) is
    read from: (the run, that name) for a checkpoint name (best, last), else (that file, BEST);
    `resolve_checkpoint` and `load_model_digest` take the pair. The one reading of the choice, so
    that evaluate and `check_runs_hold` load the same file."""
    return (run, which) if which in CHECKPOINT_NAMES else (which, BEST)


def check_runs_hold(runs: list[Path], role: str, checkpoint: str | None) -> None:
    """Refuse in one line, before any run is scored, `evaluate --model role` over several runs when
    some runs' checkpoint (`checkpoint`, else each recipe's eval.checkpoint, as evaluate picks it)
    holds no `role` model: `evaluate runs/demo --model student` scored the SFT run's student, then
    failed on the next run and left the others unscored. The runs that lack it are named."""
    holding, lacking = [], []
    for run in runs:
        source, which = checkpoint_source(run, checkpoint or open_run(run).load_recipe().eval.checkpoint)
        models = load_checkpoint(resolve_checkpoint(source, which, "--checkpoint")).get("models") or {}
        if role in models:
            holding.append(str(run))
        else:
            lacking.append(f"{run} (holds {', '.join(models) or 'no model'})")
    if lacking:
        advice = (f"give only {', '.join(holding)} with --model {role}, the others without it" if holding
                  else "leave --model out for these runs")
        raise SftkdError(f"--model {role}: not in {', '.join(lacking)}; --model picks the teacher or student "
                         f"of an SFT run: {advice}; nothing was evaluated")


def entry_acquisition(entry: dict[str, Any], trained_on: Any = None, source: str | Path = "checkpoint") -> Acquisition:
    """The acquisition a checkpoint entry's model was built for: its own record, or for entries
    older than it, the k-space layout of its data consistency (`centered`) on the run's
    `trained_on` dataset (the paper's data when the checkpoint has no such record)."""
    if "acquisition" in entry:
        return Acquisition.from_record(entry["acquisition"], f"{source}: model entry acquisition")
    data = record_acquisition(trained_on, f"{source}: trained_on") if isinstance(trained_on, dict) else Acquisition()
    if not family_of(entry["arch"]).data_consistency:  # its `centered` was always False and says nothing
        return data
    return dataclasses.replace(data, kspace_layout="centered" if entry["centered"] else "corner")


def build_from_entry(entry: dict[str, Any], source: str | Path = "checkpoint", trained_on: Any = None) -> CascadeNet:
    """Rebuild a model from a checkpoint entry (architecture, acquisition and weights); `trained_on`
    is the checkpoint's dataset record, read for entries older than the acquisition record. The
    caller's random stream is left as it was (the fresh weights drawn before loading are discarded)."""
    try:
        acquisition = entry_acquisition(entry, trained_on, source)
        with torch.random.fork_rng(devices=[]):
            model = build_model(entry["arch"], entry["channels"], entry["pad"], acquisition=acquisition)
        model.load_state_dict(entry["state"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SftkdError(f"{source}: model entry does not fit its architecture {entry.get('arch')!r} ({reason})") from None
    return model


def load_model(source: str | Path, role: str | None = None, which: str = BEST,
               option: str = "") -> tuple[CascadeNet, dict[str, Any]]:
    """Load a trained model from a run directory or checkpoint file; returns (model, checkpoint).
    `option`: the caller's option that picks `which` (`resolve_checkpoint`)."""
    model, state, _ = load_model_digest(source, role, which, option)
    return model, state


def load_model_digest(source: str | Path, role: str | None = None, which: str = BEST,
                      option: str = "") -> tuple[CascadeNet, dict[str, Any], str]:
    """`load_model`, with the sha256 of the checkpoint bytes the model was built from (one read:
    the digest names what was loaded even if training replaces the file meanwhile; metrics.json
    and the export card record it, a later reader compares it with `checkpoint_digest`)."""
    read = read_checkpoint(source, which, option)
    return model_of(read.state, role, read.path), read.state, read.sha256


def model_of(state: dict[str, Any], role: str | None, path: str | Path) -> CascadeNet:
    """The model `role` (else the primary) of checkpoint `state`, read from `path`."""
    _, entry = model_entry(state, role, path)
    return build_from_entry(entry, path, state.get("trained_on"))


def init_weights(model: CascadeNet, source: str | Path, role: str | None = None) -> str:
    """Copy weights into `model` from a run's best checkpoint or a checkpoint file (`copy_weights`)."""
    read = read_checkpoint(source)
    return copy_weights(model, read.state, read.path, role)


def copy_weights(model: CascadeNet, state: dict[str, Any], path: str | Path, role: str | None = None) -> str:
    """Copy weights into `model` from checkpoint `state` (read from `path`); architectures must match exactly.

    Without a role, the entry with the same architecture is used (e.g. the student blocks of
    an SFT run for a D3C5 student). Returns a description of what was loaded.
    """
    name, entry = model_entry(state, role, path, arch=None if role else model.name)
    if entry["arch"] != model.name or entry["channels"] != model.channels:
        raise SftkdError(f"{path}: its {name} is {entry['arch']} with {entry['channels']} channels, but the model to start "
                         f"is {model.name} with {model.channels}: they must match")
    refuse_other_data(model.name, entry_acquisition(entry, state.get("trained_on"), path), model.acquisition, path,
                      "the data of this run")
    missing, unexpected = [], []
    own = model.state_dict()
    for key in own:
        if key not in entry["state"]:
            missing.append(key)
    for key, value in entry["state"].items():
        if key not in own:
            unexpected.append(key)
        elif own[key].shape != value.shape:
            raise SftkdError(f"{path}: weight {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    if missing or unexpected:
        raise SftkdError(f"{path}: weights do not match {model.name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(entry["state"], strict=True)
    return f"{path}:{name}"


def check_fits_data(state: dict[str, Any], entry: dict[str, Any], data: dict[str, Any], source: str | Path,
                    *, same_acquisition: bool) -> None:
    """Refuse a model used on data it cannot fit, in one line naming `source` and what differs.

    `entry` is the model's checkpoint entry (or `model.record()`), `data` the dataset's record
    (`dataset_record`). Always: what `refuse_other_data` checks. With `same_acquisition` (a KD
    teacher), also the image size and the acceleration it was trained on (when recorded).
    """
    trained = state.get("trained_on")
    model = entry_acquisition(entry, trained, source)
    have = record_acquisition(data)
    refuse_other_data(entry["arch"], model, have, source, data.get("path", "the dataset"))
    if not same_acquisition:
        return
    checks = [("acceleration", trained.get("acceleration") if isinstance(trained, dict) else None, data.get("acceleration"))]
    if model.image_size is not None and have.image_size is not None:
        checks.append(("image size", list(model.image_size), list(have.image_size)))
    for label, mine, theirs in checks:
        if mine is not None and theirs is not None and mine != theirs:
            raise SftkdError(
                f"{source}: trained with {label} {_shown(mine)}, but this run uses {_shown(theirs)}; "
                f"expected a teacher trained on the same acquisition"
            )


def refuse_other_data(arch: str, model: Acquisition, have: Acquisition, source: str | Path, where: str | Path) -> None:
    """Refuse a model `arch` built for acquisition `model` used on data of acquisition `have`: the
    task, the images' value kind and channels must match, and for a network with data consistency
    the k-space layout (corner or centred; a wrong one would scramble k-space at every DC step)."""
    if family_of(arch).data_consistency and model.kspace_layout != have.kspace_layout:
        raise SftkdError(
            f"{source}: its data consistency expects {model.kspace_layout} k-space but {where} "
            f"stores {have.kspace_layout} k-space; use a model trained on this k-space layout"
        )
    for label, mine, theirs in (("task", model.task, have.task), ("image values", model.values, have.values),
                                ("image channels", model.channels, have.channels)):
        if mine != theirs:
            raise SftkdError(f"{source}: its model was built for {label} {mine}, but {where} holds {label} {theirs}; "
                             "use a model trained on this kind of data")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return f"{value:g}x" if isinstance(value, float) else str(value)
