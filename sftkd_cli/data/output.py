"""The output folder of `prepare-data`: what may be written there, and putting a finished dataset in place.

`prepare_dataset` (`sftkd_cli.data.prepare`) builds a dataset in the sibling folder
`.<name>.partial` (`data.partial`: kept when a run stops, resumed by the same command); this
module decides beforehand whether the folder may be written (never a file, the input folder, or a
folder whose manifest is not sftkd's), moves the finished dataset in (`install`: the old manifest
first, the new one last, files the old manifest does not list never touched;
`finish_interrupted_install` clears what a killed one left), removes the `.<name>.tmp-<pid>`
folders of dead processes that earlier versions wrote (`remove_stale`), and turns Ctrl-C and
SIGTERM into a clean stop between files (`Signals`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
from pathlib import Path
from typing import Any

from sftkd_cli.data.format import FORMAT, MANIFEST, MANIFEST_KEYS, MASKS
from sftkd_cli.data.sources.base import Source
from sftkd_cli.files import (
    MAX_JSON_BYTES, display_path, left_by_dead_process, read_regular_bytes, replace_atomically, write_bytes_synced,
)
from sftkd_cli.errors import RunInterrupted, SftkdError
from sftkd_cli.signals import on_signals

#: in an existing dataset folder while `install` replaces its files (see `finish_interrupted_install`)
INSTALL_MARKER = ".prepare-data-install.json"
#: the shapes of the file names prepare-data writes in a dataset folder (besides manifest.json)
WRITTEN_NAMES = "<volume>.h5 or masks/<name>.npy"

# --------------------------------------------------------------------------- may the folder be written


def check_out(out: Path, source: Source) -> None:
    """The output must not be a file, nor the input folder, nor inside or around it."""
    if out.exists() and not out.is_dir():
        raise SftkdError(f"--out {display_path(out)}: is a file; expected a folder (new, empty or a dataset)")
    inputs = source.input_path()
    if inputs is None:
        return
    o, i = out.resolve(), inputs.resolve()
    if o == i or i in o.parents:
        raise SftkdError(
            f"--out {display_path(out)}: inside the input folder {display_path(inputs)}; "
            "expected a folder outside it (inputs are never written)"
        )
    if o in i.parents:
        raise SftkdError(
            f"--out {display_path(out)}: contains the input {display_path(inputs)}; "
            "expected a separate folder"
        )


def existing_dataset(out: Path) -> dict[str, Any] | None:
    """The manifest of the sftkd dataset at `out`; None when `out` is absent or an empty folder.

    A non-empty folder is only ever written when its manifest is sftkd's (a JSON object with the
    keys prepare-data writes, format FORMAT, listing plain file names): anything else is the
    user's folder and is refused, with or without --force.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    path = out / MANIFEST
    if not path.exists() and not path.is_symlink():
        marker = out / INSTALL_MARKER
        if marker.is_file() and not marker.is_symlink():  # sftkd's folder, cleared after an interrupted install
            return None
        raise SftkdError(
            f"--out {display_path(out)}: exists and is not a sftkd dataset (no {MANIFEST}); "
            "expected a new or empty folder"
        )
    try:
        manifest = json.loads(read_regular_bytes(path, MANIFEST, MAX_JSON_BYTES))
    except (SftkdError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, SftkdError) else "not JSON"
        raise SftkdError(
            f"--out {display_path(out)}: not a sftkd dataset ({reason}); nothing there is changed, even with "
            "--force: expected a new or empty folder, or remove the folder yourself"
        ) from None
    problem = _foreign(manifest)
    if problem:
        raise SftkdError(
            f"--out {display_path(out)}: its {MANIFEST} is not one written by prepare-data ({problem}); "
            "nothing there is changed, even with --force: expected a new or empty folder"
        )
    return manifest


def _foreign(manifest: Any) -> str | None:
    """Why `manifest` is not one prepare-data wrote, or None when it is."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        return f"missing key {missing[0]!r}"
    if manifest["format"] != FORMAT:
        return f"format {manifest['format']!r}, expected {FORMAT}"
    volumes, mask = manifest["volumes"], manifest["mask"]
    if not isinstance(volumes, dict):
        return "volumes is not a mapping"
    problem = mask_files_problem(mask.get("files") if isinstance(mask, dict) else None)
    if problem:
        return problem
    for name in listed_files(manifest):
        if not written_name(name):
            return f"lists {name!r}, expected {WRITTEN_NAMES}"
    return None


def written_name(name: object) -> bool:
    """Whether `name` has a shape prepare-data writes (`WRITTEN_NAMES`): a plain `<volume>.h5`,
    or `masks/<name>.npy`; never a path through another folder (a link), absolute, or with '..'."""
    if not isinstance(name, str) or "\0" in name:
        return False
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return False
    return (len(parts) == 1 and name.endswith(".h5")) or (len(parts) == 2 and parts[0] == MASKS and name.endswith(".npy"))


def mask_files_problem(files: object) -> str | None:
    """What is wrong with a manifest's mask.files, or None: it must map each key to
    `masks/<name>.npy` (`written_name`, inside `masks`), the shape prepare-data writes. A mask path
    outside the dataset (absolute, with '..') would otherwise be read by whatever loads the mask
    (export records it in its card), or count as the dataset's when --out is rewritten."""
    if not isinstance(files, dict):
        return f"mask.files {files!r}, expected a mapping of acceleration key -> '{MASKS}/<name>.npy'"
    for key, name in files.items():
        if not (written_name(name) and name.startswith(f"{MASKS}/")):
            return (f"mask.files.{key} {name!r}, expected '{MASKS}/<name>.npy' inside the dataset (no '..', not "
                    "absolute), as prepare-data writes it")
    return None


def check_mask_files(manifest: dict[str, Any], where: str) -> None:
    """Refuse a manifest whose mask.files `mask_files_problem` refuses (absent mask.files is none)."""
    mask = manifest.get("mask", {})
    problem = mask_files_problem(mask.get("files", {}) if isinstance(mask, dict) else None)
    if problem:
        raise SftkdError(f"{where}: {problem}")


def listed_files(manifest: dict[str, Any]) -> list[str]:
    """The files a sftkd manifest lists (volume h5 files and mask files), relative to the dataset."""
    names = [v.get("file", "") if isinstance(v, dict) else "" for v in manifest.get("volumes", {}).values()]
    names += list(manifest.get("mask", {}).get("files", {}).values())
    return [str(n) for n in names]


def difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """A short description of how the stored inputs differ from the requested ones."""
    old_opts, new_opts = old.get("options", {}), new["options"]
    changed = [
        f"{k} {json.dumps(old_opts.get(k))} -> {json.dumps(new_opts.get(k))}"
        for k in sorted(set(old_opts) | set(new_opts)) if old_opts.get(k) != new_opts.get(k)
    ]
    if changed:
        return "; ".join(changed[:3]) + (" ..." if len(changed) > 3 else "")
    old_src = old.get("inputs", {}).get("sources", {})
    new_src = new["inputs"]["sources"]
    files = sorted(k for k in set(old_src) | set(new_src) if old_src.get(k) != new_src.get(k))
    if files:
        return "source files changed: " + ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
    if old.get("inputs", {}).get("groups") != new["inputs"].get("groups"):  # `Source.split_record`
        return "the files are grouped for the split otherwise (BIDS sessions are split by subject)"
    return "mask files changed"


def missing_files(out: Path, manifest: dict[str, Any]) -> list[str]:
    """Files the manifest lists that are not in `out`."""
    return [n for n in listed_files(manifest) if not (out / n).is_file()]


def resized_file(out: Path, manifest: dict[str, Any]) -> str | None:
    """The first file in `out` whose size is not the one the manifest records ("file_bytes"), in
    words; None when all match (a manifest of an older sftkd records none: nothing to compare)."""
    recorded = manifest.get("file_bytes")
    if not isinstance(recorded, dict):
        return None
    for name in listed_files(manifest):
        size = recorded.get(name)
        try:
            now = (out / name).stat().st_size
        except OSError:
            continue  # missing: told by `missing_files`
        if isinstance(size, int) and now != size:
            return f"{name} is {now:,} bytes, {size:,} when it was written"
    return None


def _comparable(options: Any) -> Any:
    """Recorded options as `up_to_date` compares them: the accelerations sorted (`--acc 5,4`
    prepares what `--acc 4,5` did: one mask per acceleration, each from the same seed), and without
    the input folder's path (a moved or renamed ROOT holding the same files, which the input
    checksums compared beside the options tell, prepares the same dataset)."""
    if not isinstance(options, dict):
        return options
    out = {key: value for key, value in options.items() if key != "root"}
    if isinstance(out.get("accelerations"), list):
        out["accelerations"] = sorted(out["accelerations"], key=repr)
    return out


def up_to_date(out: Path, existing: dict[str, Any] | None, record: dict[str, Any], force: bool) -> bool:
    """Whether the dataset at `out` was prepared with `record` (options and input checksums) and is
    complete, its files of the sizes recorded, so that nothing is to be done; a different,
    incomplete or damaged one needs `force`."""
    if existing is None:
        return False
    same = _comparable(existing.get("options")) == _comparable(record["options"]) and existing.get("inputs") == record["inputs"]
    missing = missing_files(out, existing) if same else []
    resized = resized_file(out, existing) if same and not missing else None
    if same and not missing and not resized and not force:
        return True
    if not force:
        raise DatasetDiffers(out, f"incomplete (missing {missing[0]})" if missing else f"damaged ({resized})"
                             if resized else f"prepared differently: {difference(existing, record)}")
    return False


class DatasetDiffers(SftkdError):
    """The dataset at `out` is not the one asked for (`why`: incomplete, damaged or prepared
    differently), and prepare-data replaces it only with --force; a plan's data stage words the
    remedy its own way (`reproduce.data.prepare_data`)."""

    def __init__(self, out: Path, why: str) -> None:
        self.out, self.why = out, why
        super().__init__(f"--out {display_path(out)}: existing dataset {why}; pass --force to rebuild it")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (a worker's error), not from its message
        return type(self), (self.out, self.why)


def check_collisions(out: Path, existing: dict[str, Any] | None, names: list[str]) -> None:
    """Refuse to write over a file in `out` that the old manifest does not list (the user's own)."""
    if not out.is_dir():
        return
    check_masks_folder(out)
    ours = set(listed_files(existing or {})) | {MANIFEST}
    for name in names:
        if name not in ours and ((out / name).exists() or (out / name).is_symlink()):
            raise SftkdError(
                f"--out {display_path(out)}: {name} is there but not part of the old dataset; "
                "expected to replace only files prepare-data wrote: move it away or choose another --out"
            )


def check_masks_folder(out: Path) -> None:
    """Refuse a `masks` in `out` that is a symbolic link or not a folder: prepare-data writes and
    removes mask files only in a real `masks` folder of its own, never through a link."""
    masks = out / MASKS
    if masks.is_symlink() or (masks.exists() and not masks.is_dir()):
        raise SftkdError(f"--out {display_path(out)}: masks is there and is not a folder of the old dataset; "
                         "expected to replace only files prepare-data wrote: move it away or choose another --out")


# --------------------------------------------------------------------------- putting the dataset in place


def partial_folder(out: Path) -> Path:
    """Where the dataset `out` is written before it is installed, and kept when a run stops: `.<name>.partial`."""
    return out.parent / f".{out.name}.partial"


def kept_in(partial: Path) -> str:
    """The words telling that a stopped or failed run's work is kept in the partial folder
    `partial` and how to go on: the one phrasing of `Signals.error` and of a failure while writing
    (`data.partial.kept_note`)."""
    return (f"the files written so far are kept in {display_path(partial)}: run the same command again "
            "to resume (remove that folder to start over)")


def created_parents(out: Path) -> list[Path]:
    """Ancestors of `out` that do not exist yet (to remove again if writing fails)."""
    missing = []
    for parent in out.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def install(tmp: Path, out: Path, old: dict[str, Any] | None) -> None:
    """Move the finished dataset in `tmp` to `out`.

    A new `out` is one rename. Into an existing folder (empty, or the old dataset) the files are
    moved one by one: the old manifest goes first (so a crash midway never leaves a manifest
    describing other data), then the new files replace the old ones, the old dataset's files that
    the new one lacks are removed, and the new manifest comes last. Files the old manifest does
    not list are never touched.
    """
    if not out.exists():
        tmp.rename(out)
        return
    new = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file() and p.name != MANIFEST)
    marker = out / INSTALL_MARKER  # says which files are ours while the folder has no manifest
    write_bytes_synced(marker, json.dumps(sorted({*new, *listed_files(old or {})})).encode())
    (out / MANIFEST).unlink(missing_ok=True)
    (out / MASKS).mkdir(exist_ok=True)
    for name in new:
        os.replace(tmp / name, out / name)
    for name in set(listed_files(old or {})) - set(new):
        (out / name).unlink(missing_ok=True)
    os.replace(tmp / MANIFEST, out / MANIFEST)
    marker.unlink()
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (out / MASKS).rmdir()  # only when empty (a recon -> sr change cannot empty it, but be exact)
    except OSError:
        pass


def finish_interrupted_install(out: Path) -> None:
    """An `install` killed midway (kill -9, power cut) left the old dataset's files and the new
    one's mixed, and no manifest: remove the files its marker lists (sftkd's own; other files
    stay) and keep an empty marker, which tells `existing_dataset` that the folder is sftkd's
    (to prepare afresh) though it has no manifest. Killed after its manifest was in place, it
    had finished: only the marker goes. Called with the lock held.

    The marker is trusted only as far as `install` writes it: a marker that is a symbolic link,
    or lists a name of another shape (`written_name`), or a `masks` that is a link, is refused
    with nothing removed; only regular files are removed, never through a link.
    """
    marker = out / INSTALL_MARKER
    if marker.is_symlink():
        raise _not_our_marker(out, "is a symbolic link")
    if not marker.is_file():
        return
    if (out / MANIFEST).exists():
        marker.unlink()
        return
    names = _marker_names(out, marker)
    check_masks_folder(out)
    for name in names:
        _remove_regular_file(out, name)
    try:
        (out / MASKS).rmdir()
    except OSError:
        pass
    replace_atomically(marker, b"[]")  # a new file: the marker is never written through a link


def _marker_names(out: Path, marker: Path) -> list[str]:
    """The files the marker lists, each of a shape `install` writes (else refused in one line).
    A marker that is not JSON (cut short by a power cut) lists nothing."""
    try:
        names = json.loads(read_regular_bytes(marker, INSTALL_MARKER, MAX_JSON_BYTES, follow_links=False))
    except (SftkdError, ValueError):
        return []
    if not isinstance(names, list):
        raise _not_our_marker(out, "is not a JSON list")
    for name in names:
        if not written_name(name):
            raise _not_our_marker(out, f"lists {name!r}")
    return names


def _not_our_marker(out: Path, why: str) -> SftkdError:
    """The one-line refusal of an install marker that `install` did not write."""
    return SftkdError(f"--out {display_path(out)}: {INSTALL_MARKER} {why}, expected a file listing only "
                      f"{WRITTEN_NAMES}; not the marker prepare-data writes, nothing there is changed: "
                      "remove it yourself")


def _remove_regular_file(out: Path, name: str) -> None:
    """Remove `out/name` (a `written_name`) if it is a regular file; a link or anything else stays,
    and a `masks` that has become a link is not entered (its folder is opened with O_NOFOLLOW)."""
    folder, _, base = name.rpartition("/")
    try:
        fd = os.open(out / folder, os.O_RDONLY | os.O_DIRECTORY | (os.O_NOFOLLOW if folder else 0))
    except OSError:
        return  # no masks folder: nothing of ours in it
    try:
        if stat.S_ISREG(os.stat(base, dir_fd=fd, follow_symlinks=False).st_mode):
            os.unlink(base, dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def remove_stale(out: Path) -> list[Path]:
    """Remove `.<name>.tmp-<pid>` / `.<name>.old-<pid>` folders beside `out` whose process is dead
    (left by a kill -9 or a power cut); returns what was removed. Called with the lock held."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)$")
    for item in out.parent.iterdir() if out.parent.is_dir() else ():
        match = pattern.match(item.name)
        if match and item.is_dir() and not item.is_symlink() and left_by_dead_process(item):
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item)
    return removed


class PrepareInterrupted(RunInterrupted):
    """prepare-data stopped by Ctrl-C (exit 130) or SIGTERM (exit 143), the dataset folder as it was
    and the volume files written so far kept in `.<name>.partial`: an interruption like training's,
    so that a plan stops on it (running it again resumes)."""


class Signals:
    """While active, SIGINT and SIGTERM only set a flag, which `check()` turns into
    PrepareInterrupted at safe points (between files), so no write is cut in half and the partial
    folder holds only whole files. A second signal interrupts at once (KeyboardInterrupt, once it
    is recorded): the file being written then is not in the partial folder's journal, and is
    written again on resume. `error()` names the signal that stopped the run (the second, when it
    was one) and exits with its status."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.existed = out.exists()  # whether the stop leaves a folder as it was, or none
        self.received: int | None = None  # the last signal received
        self._handling = on_signals(self._handle, signal.SIGINT, signal.SIGTERM)

    def _handle(self, signum: int, frame: Any) -> None:
        again = self.received is not None
        self.received = int(signum)
        if again:
            raise KeyboardInterrupt

    def __enter__(self) -> Signals:
        self._handling.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._handling.__exit__(*exc)

    def error(self, signum: int | None = None) -> PrepareInterrupted:
        """The stop by `signum`; by default by the signal received (the second one, when a second
        came), SIGINT when none was (a KeyboardInterrupt from elsewhere)."""
        signum = signum or self.received or signal.SIGINT
        name = signal.Signals(signum).name
        kept = f", {display_path(self.out)} is as it was" if self.existed else ""
        partial = partial_folder(self.out)
        if partial.is_dir() and not partial.is_symlink():
            kept += f"; {kept_in(partial)}"
        else:
            kept = f"; nothing written{kept}"
        return PrepareInterrupted(f"prepare-data stopped by {name}{kept}", signum)

    def check(self) -> None:
        if self.received is not None:
            raise self.error()
