"""Careful file access: bounded reads of regular files, atomic writes, checks before long work.

Every sftkd output is written so that a crash leaves the old file or the new one, never half
(`atomic_write_bytes`, `StagedFiles` for several files that must change together); every input
that is read whole is a regular file of bounded size (`read_regular_bytes`); an output folder is
checked for writability before minutes of work (`check_writable`).

Why: a `manifest.json` that is a FIFO or a link to /dev/zero must not hang or exhaust memory; a
read-only or over-long output path must be refused before minutes of work, not after; and a full
disk must leave the previous outputs as they were, with no temporary file behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftkd_cli.errors import SftkdError, os_error_text


def finite_or_null(value: Any, infinities_as_text: bool = False) -> Any:
    """`value` (nested dicts, lists and tuples) with every NaN or infinite float replaced by None;
    with `infinities_as_text`, an infinity by the string "inf" or "-inf" instead (told from NaN)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return ("inf" if value > 0 else "-inf") if infinities_as_text and math.isinf(value) else None
    if isinstance(value, dict):
        return {key: finite_or_null(item, infinities_as_text) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item, infinities_as_text) for item in value]
    return value


def nan_if_null(value: Any) -> float:
    """A number read back from JSON that `json_text` wrote: null (a NaN or infinity then) as NaN."""
    return math.nan if value is None else float(value)


def json_text(value: Any, indent: int | None = 2, infinities_as_text: bool = False) -> str:
    """JSON that every parser reads: NaN and infinities (std of one volume, PSNR of an exact
    prediction) are written as null, since JSON has no NaN or Infinity tokens (Python writes them,
    but JavaScript's JSON.parse and other strict parsers refuse them); with `infinities_as_text`
    an infinity is the string "inf" or "-inf", so that it differs from an undefined value."""
    return json.dumps(finite_or_null(value, infinities_as_text), indent=indent, allow_nan=False)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (streamed, so large files are fine)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise SftkdError(f"{display_path(path)}: cannot read file ({os_error_text(exc)})") from exc
    return digest.hexdigest()


def text_name(name: str) -> str:
    """A file name as valid UTF-8 text (an HDF5 attribute, which must be): bytes of a name that is
    not UTF-8 (Python keeps them as surrogates) written as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def display_path(path: str | Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    path = Path(path)
    try:
        absolute = path.resolve()
        return str(absolute.relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


#: the largest JSON file (manifest, model card) sftkd reads; real ones are kilobytes
MAX_JSON_BYTES = 64 << 20


def read_regular_bytes(path: Path, what: str, limit: int = MAX_JSON_BYTES, follow_links: bool = True) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes.

    Opened without blocking and checked on the open descriptor, so a FIFO or a device is refused
    instead of hanging or streaming forever. `what` names the file in errors (e.g. 'manifest').
    Without `follow_links`, a symbolic link at `path` is refused (a file only sftkd writes).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW))
    except OSError as exc:
        raise SftkdError(f"{display_path(path)}: cannot read {what} ({os_error_text(exc)})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SftkdError(f"{display_path(path)}: {what} is not a regular file (a FIFO, device or folder); "
                             "expected a file")
        if info.st_size > limit:
            raise SftkdError(f"{display_path(path)}: {what} of {info.st_size:,} bytes is larger than the "
                             f"{limit:,}-byte limit; expected a small JSON file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise SftkdError(f"{display_path(path)}: {what} grew past the {limit:,}-byte limit while read")
        return b"".join(chunks)
    except OSError as exc:
        raise SftkdError(f"{display_path(path)}: cannot read {what} ({os_error_text(exc)})") from None
    finally:
        os.close(fd)


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_writable(folder: Path, what: str, extra: int = 0) -> None:
    """Refuse, in one line, an output folder that cannot be written: below a file, on a read-only
    or non-writable folder, or with a name component too long (the folder's own name with `extra`
    characters more, for temporary siblings such as `.<name>.tmp-<pid>`). Nothing is created."""
    folder = Path(os.path.abspath(folder))
    existing = folder
    while not _exists(existing):
        if _exists(existing, follow=False):  # a dangling link: its target folder is missing
            raise SftkdError(f"{what} {display_path(folder)}: {display_path(existing)} is a broken link")
        existing = existing.parent
    if not existing.is_dir():
        raise SftkdError(f"{what} {display_path(folder)}: {display_path(existing)} is a file, not a folder")
    limit = _name_max(existing)
    for part in folder.parts:
        if len(os.fsencode(part)) + (extra if part == folder.name else 0) > limit:
            room = f"{limit - extra}, leaving room for its temporary twin" if part == folder.name and extra else f"{limit}"
            raise SftkdError(f"{what} {display_path(folder)}: name {part[:40]}... has {len(part)} characters, "
                             f"more than the file system allows ({room}); expected a shorter name")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = _read_only(existing)
        raise SftkdError(f"{what} {display_path(folder)}: folder {display_path(existing)} is "
                         f"{'on a read-only file system' if read_only else 'not writable'}; "
                         "expected a folder you can write")


def _exists(path: Path, follow: bool = True) -> bool:
    """Whether `path` exists; False also for names the OS refuses (too long, ...)."""
    try:
        os.stat(path, follow_symlinks=follow)
    except (OSError, ValueError):
        return False
    return True


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


#: the longest name (in bytes) kept whole in a temporary name; a longer one is shortened
_TEMPORARY_NAME_BYTES = 200


def temporary_sibling(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: `.<name>.tmp-<pid>` beside it.

    A name too long to fit the file system that way is cut and ends with a hash of the whole
    name, so two long names that start alike (an export `X.ts` and its card `X.ts.card.json`)
    never share a temporary file."""
    name = path.name
    encoded = os.fsencode(name)
    if len(encoded) > _TEMPORARY_NAME_BYTES:
        digest = hashlib.sha256(encoded).hexdigest()[:16]
        head = encoded[:_TEMPORARY_NAME_BYTES - len(digest) - 1].decode("utf-8", "ignore")  # whole characters
        name = f"{head}~{digest}"
    return path.with_name(f".{name}.tmp-{os.getpid()}")


#: the end of a temporary name and the process that writes it: `.tmp-<pid>` (`temporary_sibling`,
#: prepare-data's folder), `.old-<pid>` (prepare-data's folder being replaced)
_TEMPORARY_OWNER = re.compile(r"\.(?:tmp|old)-(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` is running on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a number no pid can be
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def left_by_dead_process(path: Path) -> bool:
    """Whether `path`, a temporary name ending in `.tmp-<pid>` or `.old-<pid>`, was left by a process
    that is no longer running (a kill -9, a power cut): only such a file or folder may be removed by
    another process. One whose process runs is being written (evaluate and export write into a run
    without its lock, prepare-data beside its output): removing it would make that process fail."""
    match = _TEMPORARY_OWNER.search(path.name)
    return match is not None and not pid_alive(int(match.group(1)))


def unlink_quietly(path: Path) -> None:
    """Remove a temporary file if possible; a second error (read-only folder) must not hide the first."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _create_new(path: Path, mode: int) -> int:
    """A descriptor of a new, empty file `path` (`mode`: os.O_WRONLY or os.O_RDWR): whatever is
    there is removed first and the file is created exclusively without following a link."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, mode | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)


def write_bytes_synced(path: Path, data: bytes | memoryview) -> None:
    """Write `data` to a new file `path` and fsync it (raises OSError; the caller cleans up).

    Every caller writes a name of its own (a temporary sibling, a file in a fresh temporary
    folder, the install marker): whatever is already there (a stale temporary file, or a planted
    symbolic link) is removed first, and the file is created exclusively without following a
    link, so nothing outside `path` is ever truncated or written.
    """
    fd = _create_new(path, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def folder_lock(folder: Path, refused: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` itself (flock on the folder: no lock file is left in it)
    for the block; another process holding it is refused with `refused` as the one-line error.
    A platform without flock, or a folder that cannot be opened to lock, is not locked."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SftkdError(refused) from None
        except OSError:  # a file system without locks: as unlocked
            pass
        yield
    finally:
        os.close(fd)  # lets the lock go


class StagedFiles:
    """Files written under temporary names and renamed into place together by `commit()`.

    If any write fails (disk full, file-size limit), `discard()` removes the temporary files and
    the previous outputs stay as they were. Use as a context manager: leaving it without
    `commit()` discards.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []  # (temporary, final)
        self._writers: list[H5Writer] = []  # the HDF5 files among them, still open

    def add(self, path: Path, data: bytes) -> None:
        """Write `data` to a temporary sibling of `path` (`.<name>.tmp-<pid>`)."""
        tmp = temporary_sibling(path)
        self._pending.append((tmp, path))
        write_bytes_synced(tmp, data)

    def add_h5(self, path: Path) -> H5Writer:
        """An HDF5 file for `path`, written piece by piece into its temporary sibling; `commit()`
        closes it (raising the first write error) before renaming, `discard()` closes and removes it."""
        tmp = temporary_sibling(path)
        self._pending.append((tmp, path))
        writer = H5Writer(tmp)
        self._writers.append(writer)
        return writer

    def commit(self) -> None:
        """Close the HDF5 files, then rename every temporary file to its final name (renames need
        no space, so they succeed)."""
        while self._writers:
            self._writers.pop().close()
        for tmp, final in self._pending:
            os.replace(tmp, final)
        self._pending = []

    def discard(self) -> None:
        while self._writers:
            self._writers.pop().abandon()
        for tmp, _ in self._pending:
            unlink_quietly(tmp)
        self._pending = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


class _QuietFile:
    """A file that h5py writes through (its 'fileobj' driver) and that never raises: the first
    OSError (disk full, file-size limit) is kept in `error` and every later write is dropped.

    Why: an HDF5 write that fails inside h5py can end in a flood of 'Exception ignored' lines or
    a segfault when the file is closed (measured with h5py 3.16 under RLIMIT_FSIZE, on disk and
    through a raising file object alike); this way HDF5 never sees a failure, and the caller
    raises the kept error as one line and discards the file."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w+b")
        self.error: OSError | None = None

    def _quietly(self, action, fallback):
        if self.error is None:
            try:
                return action()
            except OSError as exc:
                self.error = exc
        return fallback

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._quietly(lambda: self._file.seek(offset, whence), 0)

    def tell(self) -> int:
        return self._quietly(self._file.tell, 0)

    def read(self, size: int = -1) -> bytes:
        return self._quietly(lambda: self._file.read(size), b"")

    def write(self, data: bytes) -> int:
        self._quietly(lambda: self._file.write(data), 0)
        return len(data)

    def truncate(self, size: int | None = None) -> int:
        return self._quietly(lambda: self._file.truncate(size), 0)

    def flush(self) -> None:
        self._quietly(self._file.flush, None)

    def sync(self) -> None:
        """Flush and fsync what was written (a failure is kept in `error` like any other)."""
        self.flush()
        self._quietly(lambda: os.fsync(self._file.fileno()), None)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:  # the last buffered bytes could not be written
            self.error = self.error or exc


class H5Writer:
    """A new HDF5 file on disk that h5py fills piece by piece (`file`, an open h5py.File), so that
    a large file never sits in memory (`h5_image` builds one in memory). A failed write never
    reaches h5py (`_QuietFile`): `check()` raises it as an OSError, and so does `close()`."""

    def __init__(self, path: Path) -> None:
        import h5py

        self._raw = _QuietFile(_create_new(path, os.O_RDWR))
        self.file = h5py.File(self._raw, "w")

    def check(self) -> None:
        """Raise the first write error so far (OSError), if any: the caller stops writing."""
        if self._raw.error is not None:
            raise self._raw.error

    def close(self) -> None:
        """Close the HDF5 file and fsync it; raise the first write error (OSError), if any (it
        takes the place of an error h5py may raise for a file whose writes were dropped)."""
        try:
            self.file.close()
        finally:
            self._raw.sync()
            self._raw.close()
            self.check()

    def abandon(self) -> None:
        """Close without raising: the file is about to be removed."""
        try:
            self.file.close()
        except Exception:  # noqa: BLE001  (already failing: the first error is the one reported)
            pass
        self._raw.close()


def h5_image(build) -> bytes:
    """The bytes of an HDF5 file that `build(f)` fills, made in memory.

    h5py is never given a file on disk: a full disk or a file-size limit then surfaces as a plain
    OSError from `write_bytes_synced`, instead of h5py errors that can end in a segfault.
    """
    import h5py

    handle = h5py.File(f"sftkd-in-memory-{os.getpid()}-{id(build)}.h5", "w", driver="core", backing_store=False)
    try:
        build(handle)
        handle.flush()
        return handle.id.get_file_image()
    finally:
        handle.close()


def output_path(path: Path) -> Path:
    """Where writing `path` lands: a symlink's final target (the link itself is kept).

    A folder, or a name under something that is not a folder, is refused with one line.
    """
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # realpath stops inside a loop of links
        raise SftkdError(f"{path}: a loop of symbolic links; expected a file name")
    if target.is_dir():
        raise SftkdError(f"{path}: is a directory; expected a file name")
    if not target.parent.is_dir():
        raise SftkdError(f"{path}: folder {target.parent} does not exist")
    return target


def is_special_file(path: Path) -> bool:
    """True for an existing device file, FIFO or socket (something a rename must not replace)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _write_into(path: Path, data: bytes) -> None:
    """Write into a device file or FIFO in place; a FIFO nobody reads is refused, not waited on."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise SftkdError(f"{path}: a FIFO that no process is reading") from None
        raise SftkdError(f"{path}: could not open for writing ({os_error_text(exc)})") from None
    try:
        os.set_blocking(fd, True)
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
    except OSError as exc:
        raise SftkdError(f"{path}: could not write ({os_error_text(exc)})") from None
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new file, never half.

    Through a symlink the target is replaced (not the link); a device file or FIFO is written
    into in place. An OS error (disk full, read-only folder, name too long) is one line.
    """
    target = output_path(path)
    if is_special_file(target):
        _write_into(target, data)
        return
    try:
        replace_atomically(target, data)
    except OSError as exc:
        raise SftkdError(f"{path}: could not write ({os_error_text(exc)})") from None


def replace_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write a temporary sibling, fsync it, rename it over `path`; on any failure remove it."""
    tmp = temporary_sibling(path)
    try:
        write_bytes_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def make_folder(path: Path) -> None:
    """Create a folder and its parents; an OS error (read-only, name too long) is one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SftkdError(f"{path}: exists and is not a folder") from None
    except OSError as exc:
        raise SftkdError(f"{path}: could not create the folder ({os_error_text(exc)})") from None


@contextmanager
def made_folder(path: Path) -> Iterator[list[Path]]:
    """Create `path` and its parents (`make_folder`) for what the body writes there, yielding the
    folders it makes, innermost first; if that or the body fails (an error, Ctrl-C), remove again
    those still empty. Why: a command that fails writes nothing, not even an empty output folder."""
    made = [folder for folder in (path, *path.parents) if not _exists(folder, follow=False)]
    try:
        make_folder(path)
        yield made
    except BaseException:
        for folder in made:
            if not _exists(folder, follow=False):  # never made: creating it failed (a name too long, ...)
                continue
            try:
                folder.rmdir()
            except OSError:  # not empty (another's files), or cannot be removed: it stays, and so do those above
                break
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text twin of `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


def write_run_file(path: Path, text: str) -> None:
    """Atomically write a file sftkd itself names inside a run (recipe.yaml, env.json, history.jsonl,
    an export's default card): whatever has that name, a symlink too, is replaced, never written
    through. Why: a link planted in a run folder must not send sftkd's writes outside the run; only
    a path the user gives (--out, --json) reaches a link's target (`atomic_write_bytes`)."""
    try:
        replace_atomically(path, text.encode())
    except OSError as exc:
        raise SftkdError(f"{path}: could not write ({os_error_text(exc)})") from None


def open_log_for_append(path: Path) -> int:
    """A descriptor appending to the log `path` (created if missing), which must be a regular
    file: a symbolic link, FIFO, device or folder there is refused with one line.

    Opened with O_NOFOLLOW and O_NONBLOCK and checked on the descriptor, then made blocking
    again. Why: a log sftkd names itself must not append through a planted link to another file,
    nor hang on a FIFO nobody reads (the caller closes the descriptor)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link (O_NOFOLLOW), or a FIFO nobody reads
            raise SftkdError(f"{path}: is not a regular file (a symbolic link or FIFO); "
                             "expected a log file sftkd writes (remove it)") from None
        raise SftkdError(f"{path}: could not open the log for appending ({os_error_text(exc)})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SftkdError(f"{path}: is not a regular file (a FIFO, device or folder); "
                             "expected a log file sftkd writes (remove it)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
