"""The file `sftkd export` writes: its default name in RUN/export, the checks of --out made before
anything is traced, and what an export may replace (an earlier export, with --force; never a file
of the user's, nor a card that is not an export card), with the temporary files a killed export left."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from sftkd_cli.errors import SftkdError
from sftkd_cli.exported import card_path, load_card
from sftkd_cli.files import (check_writable, is_special_file, left_by_dead_process, output_path, sha256_file,
                             temporary_sibling, unlink_quietly)
from sftkd_cli.run_files import EXPORT_SUFFIX, EXPORTS
from sftkd_cli.runs import check_real_folder, is_role_name

#: export format -> default file suffix
FORMATS = EXPORT_SUFFIX
#: what ends a folder path, as typed (an --out ending so names a folder)
SEPARATORS = tuple({os.sep, os.altsep or os.sep})


def default_out(run_path: Path, arch: str, role: str, fmt: str) -> Path:
    """RUN/export/<arch>-<role>.<ext>, e.g. runs/x/export/D3C5-student.onnx: always a file directly
    in RUN/export (a role that is not a plain name is refused, see `runs.ROLE_NAME`)."""
    if not (is_role_name(arch) and is_role_name(role)):
        raise SftkdError(f"{run_path}: model {arch!r} role {role!r} is not a plain name (letters, digits, _ or -), "
                         f"so the default export file would not lie in {run_path / 'export'}; expected an sftkd run")
    return run_path / EXPORTS / f"{arch}-{role}{FORMATS[fmt]}"


def export_target(out: str | Path | None, run_path: Path, arch: str, role: str, fmt: str) -> Path:
    """The file to write: --out, or RUN/export/<arch>-<role><suffix>, its folder checked writable
    before anything is made or traced (the caller makes it, `made_folder`, then `replaceable`).
    Errors say --out only when the user gave it; an --out ending in a path separator is refused
    (Path drops it: a file named as the folder was written)."""
    if isinstance(out, str) and out.endswith(SEPARATORS):
        raise SftkdError(f"--out {out}: ends with a path separator; expected a file path, "
                         f"e.g. {out}{arch}-{role}{FORMATS[fmt]}")
    target = Path(out) if out is not None else default_out(run_path, arch, role, fmt)
    flag = "--out " if out is not None else ""
    if target.is_dir():
        raise SftkdError(f"{flag}{target}: is a directory; expected a file name")
    other = next((f for f, suffix in FORMATS.items() if f != fmt and target.suffix.lower() == suffix), None)
    if other:  # an ONNX file named .ts (or .TS) would fail in torch.jit.load, far from here (.pt and others are left alone)
        raise SftkdError(f"{flag}{target}: {target.suffix} names a {other} export; a {fmt} export's name ends in {FORMATS[fmt]}")
    if out is None:  # RUN/export: a real folder of the run, whose files replace any link found there
        check_real_folder(target.parent, run_path)
    check_writable(target.parent, "--out" if out is not None else "export folder")  # before tracing, not after
    return target


def replaceable(target: Path, out: str | Path | None, force: bool) -> Path:
    """`target` once its folder exists: through a link of --out, its target; refused when a device
    or FIFO, or when not replaceable (`_check_replaceable`)."""
    flag = "--out " if out is not None else ""
    if out is not None:
        target = output_path(target)  # a path the user gives, through a symlink: its target is replaced, the link kept
    if is_special_file(target) or is_special_file(card_path(target)):
        raise SftkdError(f"{flag}{out if out is not None else target}: a device file or FIFO; expected a regular file "
                         "(the model and its card)")
    _check_replaceable(target, force, flag)
    for stale in (*dead_temporaries(target), *dead_temporaries(card_path(target))):
        unlink_quietly(stale)  # left by an export killed while writing this file (kill -9)
    return target


def dead_temporaries(path: Path) -> list[Path]:
    """The temporary siblings of `path` (`temporary_sibling`, of any process) that a process no
    longer running left: only this file's, never another program's `.x.tmp-N` in the user's folder."""
    stem = temporary_sibling(path).name.rsplit("-", 1)[0]  # `.<name>.tmp`, then `-<pid>`
    return [p for p in path.parent.glob(glob.escape(stem) + "-*")
            if p.name[len(stem) + 1:].isdigit() and (p.is_symlink() or p.is_file()) and left_by_dead_process(p)]


def _check_replaceable(target: Path, force: bool, flag: str = "--out ") -> None:
    """Refuse to replace anything but an earlier export (a file with its card beside it, which gives
    its sha256: never a checkpoint, a manifest or another file of the user's, even one put where an
    export was), and that only with `force`; nor a file at the card's path that is not an export card
    of `target` (the card would replace it), with or without `force`. `flag` starts the message
    ('--out ', or '' for the run's own export folder)."""
    card = card_path(target)
    if target.exists():
        if not _is_export_card(card, target.name, target):
            why = (f"its model card {card.name} records another sha256 (the file was replaced since)"
                   if _is_export_card(card, target.name) else f"no model card {card.name} for it beside it")
            raise SftkdError(f"{flag}{target}: exists and is not an sftkd export ({why}); expected a new file name")
        if not force:
            raise SftkdError(f"{flag}{target}: an earlier export is there; pass --force to replace it")
    elif card.exists() and not _is_export_card(card, target.name):  # a dangling link: nothing of the user's
        raise SftkdError(f"{flag}{target}: its model card's path {card} holds a file that is not an sftkd export "
                         f"card (of {target.name}); expected a new file name, or that file moved away")


def _is_export_card(path: Path, name: str, model: Path | None = None) -> bool:
    """Whether `path` is a model card `sftkd export` wrote for a file called `name` (any JSON
    beside a file is not: a checkpoint with a stray card must stay), and with `model` given, for
    those very bytes (its sha256): a file of the user's put where an export was, beside the stale
    card, is not an export."""
    try:
        card = load_card(path)
    except SftkdError:  # missing, not a regular file, not JSON
        return False
    if card is None or card.get("file") != name or card.get("export_format") not in FORMATS:
        return False
    return model is None or card.get("sha256") == sha256_file(model)
