"""Finding and loading trained models from run directories or checkpoint files.

A checkpoint holds one or more self-describing model entries (`arch`, `channels`, `pad`,
`state`) by role: `model` for train-teacher and distill runs, `teacher` and `student` for
SFT runs. Loading is by name and strict: a mismatch is an error, never a partial load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkd_cli.errors import SftkdError
from sftkd_cli.models import CascadeNet, build_model
from sftkd_cli.runs import load_checkpoint


def resolve_checkpoint(source: str | Path, which: str = "best") -> Path:
    """A run directory -> its `checkpoints/<which>.pt`; a file -> itself."""
    path = Path(source)
    if path.is_dir():
        candidate = path / "checkpoints" / f"{which}.pt"
        if not candidate.is_file():
            raise SftkdError(f"{path}: no {which} checkpoint (is training finished? try `--checkpoint last`)")
        return candidate
    if not path.exists():
        raise SftkdError(f"{source}: no such run directory or checkpoint file")
    return path


def model_entry(state: dict[str, Any], role: str | None, source: str | Path, arch: str | None = None) -> tuple[str, dict[str, Any]]:
    """Pick a model entry: by role, else by architecture, else the checkpoint's primary."""
    models = state.get("models")
    if not (isinstance(models, dict) and models and all(isinstance(e, dict) for e in models.values())):
        raise SftkdError(f"{source}: damaged sftkd checkpoint (no model entries)")
    if role is not None:
        if role not in models:
            raise SftkdError(f"{source}: has no {role!r} model (has {', '.join(models)})")
        return role, models[role]
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


def build_from_entry(entry: dict[str, Any], source: str | Path = "checkpoint") -> CascadeNet:
    """Rebuild a model from a checkpoint entry (architecture and weights)."""
    try:
        model = build_model(entry["arch"], channels=entry["channels"], pad=entry["pad"], centered=entry["centered"])
        model.load_state_dict(entry["state"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SftkdError(f"{source}: model entry does not fit its architecture {entry.get('arch')!r} ({reason})") from None
    return model


def load_model(source: str | Path, role: str | None = None, which: str = "best") -> tuple[CascadeNet, dict[str, Any]]:
    """Load a trained model from a run directory or checkpoint file; returns (model, checkpoint)."""
    path = resolve_checkpoint(source, which)
    state = load_checkpoint(path)
    _, entry = model_entry(state, role, path)
    return build_from_entry(entry, path), state


def init_weights(model: CascadeNet, source: str | Path, role: str | None = None) -> str:
    """Copy weights into `model` from a run or checkpoint; architectures must match exactly.

    Without a role, the entry with the same architecture is used (e.g. the student blocks of
    an SFT run for a D3C5 student). Returns a description of what was loaded.
    """
    path = resolve_checkpoint(source, "best")
    state = load_checkpoint(path)
    name, entry = model_entry(state, role, path, arch=None if role else model.name)
    if entry["arch"] != model.name or entry["channels"] != model.channels:
        raise SftkdError(f"{path}: {name} is {entry['arch']} with {entry['channels']} channels, expected {model.name} with {model.channels}")
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
    """Refuse a model used on data it cannot fit, in one line.

    Always: the k-space layout of its data consistency (corner or centred) must be the dataset's,
    or every DC step would scramble k-space. With `same_acquisition` (a KD teacher), the task,
    acceleration and image size it was trained on (checkpoint `trained_on`, when recorded) too.
    """
    if data.get("task", "recon") == "recon" and "centered" in entry:
        layout = "centered" if entry["centered"] else "corner"
        if layout != data["kspace_layout"]:
            raise SftkdError(
                f"{source}: its data consistency expects {layout} k-space but {data.get('path', 'the dataset')} "
                f"stores {data['kspace_layout']} k-space; use a model trained on this k-space layout"
            )
    trained = state.get("trained_on")
    if not same_acquisition or not isinstance(trained, dict):
        return
    for key, label in (("task", "task"), ("acceleration", "acceleration"), ("image_size", "image size")):
        if key in trained and trained[key] != data[key]:
            raise SftkdError(
                f"{source}: trained with {label} {_shown(trained[key])}, but this run uses {_shown(data[key])}; "
                f"expected a teacher trained on the same acquisition"
            )


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return f"{value:g}x" if isinstance(value, float) else str(value)
