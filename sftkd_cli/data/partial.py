"""The dataset being written, kept across interruptions: `.<name>.partial` beside the output folder.

Both writers (`data.prepare`, `data.complex_prepare`) write the volume files, masks and manifest
of a dataset `<name>` into the sibling folder `.<name>.partial` and move it into place at the end
(`output.install`). The folder holds two files of its own besides the dataset's:
- `partial.json`, the key it was started with: the dataset format, the sftkd version and the
  inputs record (options and input sha256s, `manifest.inputs_record`);
- `volumes.jsonl`, one line per volume file completely written (its manifest entry and its size
  in bytes), appended and fsynced after the file itself was written and fsynced.

A run with the same key (same options, same inputs, same sftkd) keeps each volume file the journal
lists at its recorded size and writes only the others: a file half-written when the run was
killed is not in the journal and is written again; a journal line cut short by a kill ends the
journal there. A run with another key removes prepare-data's files there and starts over, saying
so in one line (also one without a readable key: killed before its key was written, or while
installing). A folder of that name that holds anything but the files prepare-data writes there
(`foreign_entry`) is the user's: it is refused and nothing in it is touched. Both files are
removed before the manifest is written, so the installed dataset holds only its own.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftkd_cli import __version__
from sftkd_cli.data.format import FORMAT, MANIFEST, MASKS
from sftkd_cli.data.manifest import InputHashes, Progress, write_manifest
from sftkd_cli.data.output import (
    difference, install, kept_in, partial_folder, written_name,
)
from sftkd_cli.errors import SftkdError, counted
from sftkd_cli.files import MAX_JSON_BYTES, display_path, read_regular_bytes, replace_atomically

#: inside the partial folder: what it was started with, and the volume files finished
KEY = "partial.json"
JOURNAL = "volumes.jsonl"
#: the temporary names `files.replace_atomically` writes the key and the journal under (a kill may leave one)
_TEMPORARY = re.compile(r"\.(?:partial\.json|volumes\.jsonl)\.tmp-\d+")


class Partial:
    """The partial folder of the dataset `out`, for the inputs record `record` (see the module docstring)."""

    def __init__(self, out: Path, record: dict[str, Any]) -> None:
        self.out = out
        self.folder = partial_folder(out)
        self.key = {"format": FORMAT, "sftkd_version": __version__, **record}
        self.done: dict[str, dict[str, Any]] = {}  # volume -> its journal line

    def open(self) -> str:
        """Create the folder, or keep the one an interrupted run with the same key left; returns
        the line saying which ('' for a new one). A folder that is not prepare-data's is refused
        (`_refuse`). Called with the output's lock held."""
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            raise self._refuse("is not a folder prepare-data wrote")
        line = ""
        if self.folder.is_dir():
            # prepare-data's own only: a folder whose every entry it writes there is its own, with or
            # without a key (a run killed before its key was in place, or an `install` stopped between
            # removing the key and writing the manifest); one holding anything else is the user's
            foreign = foreign_entry(self.folder)
            if foreign is not None:
                raise self._refuse(f"holds {foreign}, which prepare-data does not write there")
            old = self._read_key()
            started = any(not _TEMPORARY.fullmatch(p.name) for p in self.folder.iterdir())
            if old == self.key:
                self.done = self._read_journal()
                replace_atomically(self.folder / JOURNAL, b"".join(_line(v) for v in self.done.values()))
                return (f"resuming the interrupted run in {display_path(self.folder)}: "
                        f"{counted(len(self.done), 'volume file')} already written are kept")
            if started:
                line = (f"{display_path(self.folder)} was left by a run with other options or inputs "
                        f"({_why(old, self.key)}); starting over")
            _remove_own_files(self.folder)
        self.folder.mkdir()
        replace_atomically(self.folder / KEY, json.dumps(self.key, indent=1).encode())
        return line

    def _refuse(self, why: str) -> SftkdError:
        """The error for a folder at the partial folder's name that is not prepare-data's: nothing
        there is changed, as `output.existing_dataset` changes nothing in a foreign --out."""
        return SftkdError(f"{display_path(self.folder)}: {why}; nothing there is changed: prepare-data writes "
                          f"--out {display_path(self.out)} there before putting it in place: move it away and run again")

    def _read_key(self) -> Any:
        """The key the folder was started with; None when it has none readable (cut short, older)."""
        try:
            return json.loads(read_regular_bytes(self.folder / KEY, KEY, MAX_JSON_BYTES, follow_links=False))
        except (SftkdError, ValueError):
            return None

    def _read_journal(self) -> dict[str, dict[str, Any]]:
        """The journal's volumes whose file is there, a regular file of the size recorded; the
        journal ends at a line that is not whole (a kill while it was appended)."""
        try:
            text = read_regular_bytes(self.folder / JOURNAL, JOURNAL, MAX_JSON_BYTES, follow_links=False)
        except SftkdError:
            return {}
        done = {}
        for raw in text.split(b"\n"):
            try:
                line = json.loads(raw)
                name, size = f"{line['volume']}.h5", line["bytes"]
                entry = line["entry"]
            except (ValueError, TypeError, KeyError):
                break
            path = self.folder / name
            if (isinstance(entry, dict) and entry.get("file") == name and not path.is_symlink() and path.is_file()
                    and path.stat().st_size == size):
                done[line["volume"]] = line
        return done

    def write_volumes(self, names: list[str], write: Callable[[int], dict[str, Any]], check: Callable[[], None],
                      progress: Progress | None) -> dict[str, dict[str, Any]]:
        """The manifest entry of each volume in `names`: a finished one's as recorded; for the
        others `write(i)` writes `<names[i]>.h5` into the folder and returns its entry, which is
        then journaled. `check()` runs before each (it raises when prepare-data was asked to stop)."""
        volumes = {}
        for n, name in enumerate(names):
            check()
            if name not in self.done:
                try:
                    entry = write(n)
                    line = {"volume": name, "bytes": (self.folder / entry["file"]).stat().st_size, "entry": entry}
                    _append(self.folder / JOURNAL, _line(line))
                except OSError:
                    (self.folder / f"{name}.h5").unlink(missing_ok=True)  # not journaled: a full disk gets its room back
                    raise
                except SftkdError as exc:  # an input found bad while written (fastMRI's NaN)
                    exc.args = (f"{exc}{kept_note(self.folder)}",)
                    raise
                self.done[name] = line
            volumes[name] = self.done[name]["entry"]
            if progress:
                progress("write", n + 1, len(names))
        return volumes

    def install(self, out: Path, existing: dict[str, Any] | None, manifest: dict[str, Any]) -> None:
        """Put the finished dataset in place: the key and journal go, then the manifest is written
        and the folder installed (`output.install`)."""
        (self.folder / KEY).unlink()
        (self.folder / JOURNAL).unlink(missing_ok=True)
        write_manifest(self.folder, manifest)
        install(self.folder, out, existing)


def start_partial(out: Path, record: dict[str, Any], hashes: InputHashes,
                  say: Callable[[str], None] | None) -> Partial:
    """The partial folder of `out` for `record`, opened (`say` gets the line saying it resumes or
    starts over); the input hashes are recorded now, so that a resumed run does not read the
    unchanged inputs again to hash them."""
    partial = Partial(out, record)
    line = partial.open()
    if line and say:
        say(line)
    hashes.save()
    return partial


def kept_note(folder: Path) -> str:
    """'; the files written so far are kept in <folder>: run the same command again ...' (`output.kept_in`)
    for an error while writing, when the partial folder `folder` holds finished volume files (its
    journal lists one); '' when it holds none (nothing to resume, nothing big left behind)."""
    journal = folder / JOURNAL
    if folder.is_symlink() or journal.is_symlink() or not journal.is_file() or journal.stat().st_size == 0:
        return ""
    return f"; {kept_in(folder)}"


def foreign_entry(folder: Path) -> str | None:
    """The first entry of the partial folder `folder` that prepare-data does not write there, by
    its name there (a folder's ends in '/'); None when every one is its own: the key, the journal,
    their temporary names, the manifest, `<volume>.h5` and `masks/<name>.npy`
    (`output.written_name`), as regular files, and the folder `masks`; never a link."""
    for path, name in _entries(folder):
        own = written_name(name) or name in (KEY, JOURNAL, MANIFEST) or _TEMPORARY.fullmatch(name)
        if path.is_symlink() or not path.is_file() or not own:
            return name + ("/" if path.is_dir() and not path.is_symlink() else "")
    return None


def _entries(folder: Path) -> list[tuple[Path, str]]:
    """Each entry of `folder` and its name there, those in its folder `masks` in its stead."""
    entries = []
    for path in sorted(folder.iterdir()):
        if path.name == MASKS and path.is_dir() and not path.is_symlink():
            entries += [(inner, f"{MASKS}/{inner.name}") for inner in sorted(path.iterdir())]
        else:
            entries.append((path, path.name))
    return entries


def _remove_own_files(folder: Path) -> None:
    """Remove the partial folder `folder`, whose entries are all prepare-data's (`foreign_entry`
    found none other), file by file, then `masks` and the folder itself if empty, never a tree."""
    for path, _ in _entries(folder):
        path.unlink()
    if (folder / MASKS).is_dir():
        (folder / MASKS).rmdir()
    folder.rmdir()


def _line(line: dict[str, Any]) -> bytes:
    return json.dumps(line).encode() + b"\n"


def _append(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created if missing, never through a link) and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        if os.write(fd, data) != len(data):  # a journal line is a few hundred bytes: one write or none
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(old: Any, new: dict[str, Any]) -> str:
    """How the key a partial folder was started with differs from this run's, in words."""
    if not isinstance(old, dict) or not isinstance(old.get("options"), dict) or not isinstance(old.get("inputs"), dict):
        return f"no readable {KEY}"
    if (old.get("format"), old.get("sftkd_version")) != (new["format"], new["sftkd_version"]):
        return f"sftkd {old.get('sftkd_version')}"
    try:
        return difference(old, new)
    except (AttributeError, TypeError):
        return f"{KEY} not as prepare-data writes it"
