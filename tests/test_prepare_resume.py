"""`prepare-data` resumes after an interruption (Ctrl-C, SIGTERM, a crash, kill -9): the same command
keeps the volume files written whole in `.<name>.partial`, writes only the others, and ends with
the dataset an uninterrupted run writes, byte for byte; a file half-written is never reused, and a
run with other options or inputs starts over saying so. Progress shows as plain lines where stderr
is not a terminal. Tiny NIfTI phantoms and fastMRI-like files, CPU only."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import sftkd
from fastmri_files import write_folder

from sftkd_cli.data import complex_prepare
from sftkd_cli.data import prepare as prep_mod
from sftkd_cli.data.catalog import SOURCES
from sftkd_cli.data.options import PrepareOptions
from sftkd_cli.data.output import PrepareInterrupted
from sftkd_cli.data.prepare import prepare_dataset
from sftkd_cli.data.sources import NiftiSource
from sftkd_cli.errors import SftkdError

SMALL = PrepareOptions(size=(16, 16))
VOLUMES = ["v0.h5", "v1.h5", "v2.h5", "v3.h5"]
JOURNAL = "volumes.jsonl"  # data.partial.JOURNAL, named here so that the tests run (and fail) on a sftkd without it


@pytest.fixture
def raw(tmp_path: Path, nifti_writer) -> Path:
    """Four NIfTI volumes, and an uninterrupted run's dataset of them in `tmp_path/straight`."""
    for i in range(4):
        nifti_writer.write(tmp_path / f"raw/v{i}.nii.gz", nifti_writer.phantom((20, 18, 3), seed=i))
    prepare_dataset(NiftiSource(tmp_path / "raw"), tmp_path / "straight", SMALL)
    return tmp_path / "raw"


def files_of(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def h5_content(path: Path) -> dict[str, object]:
    """Every dataset (as an array) and attribute of an h5 file, by name."""
    with h5py.File(path, "r") as f:
        out: dict[str, object] = {f"@{k}": v for k, v in f.attrs.items()}
        f.visititems(lambda name, item: out.update(
            {name: item[()] if isinstance(item, h5py.Dataset) else None, **{f"{name}@{k}": v for k, v in item.attrs.items()}}))
    return out


def assert_same_dataset(a: Path, b: Path) -> None:
    """The same files with the same bytes; the h5 arrays and attributes and the manifests compared too
    (for a readable failure)."""
    assert sorted(files_of(a)) == sorted(files_of(b))
    assert json.loads((a / "manifest.json").read_text()) == json.loads((b / "manifest.json").read_text())
    for name in files_of(a):
        if name.endswith(".h5"):
            x, y = h5_content(a / name), h5_content(b / name)
            assert sorted(x) == sorted(y), name
            for key in x:
                assert np.array_equal(np.asarray(x[key]), np.asarray(y[key])), (name, key)
        elif name.endswith(".npy"):
            assert np.array_equal(np.load(a / name), np.load(b / name)), name
    assert files_of(a) == files_of(b)


def counting_writes(monkeypatch: pytest.MonkeyPatch, module=prep_mod, name: str = "write_volume_h5",
                    on: int = 0, then=None) -> list[str]:
    """The names of the volume files written from now on; with `on`, `then()` runs at that write,
    before it (a signal arrives while the file is written)."""
    real = getattr(module, name)
    written: list[str] = []

    def write(path, *args, **kwargs):
        written.append(Path(path).name)
        if len(written) == on:
            then(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, write)
    return written


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_resumes_to_the_uninterrupted_dataset_writing_only_the_rest(raw, tmp_path, monkeypatch, sig):
    out = tmp_path / "out"
    counting_writes(monkeypatch, on=2, then=lambda path: os.kill(os.getpid(), sig))
    with pytest.raises(PrepareInterrupted) as stopped:
        prepare_dataset(NiftiSource(raw), out, SMALL)
    assert stopped.value.exit_code == 128 + sig
    partial = tmp_path / ".out.partial"
    assert f"kept in {partial}" in str(stopped.value) and "run the same command again to resume" in str(stopped.value)
    assert not out.exists() and sorted(p.name for p in partial.glob("*.h5")) == ["v0.h5", "v1.h5"]
    kept = {name: (partial / name).stat().st_mtime_ns for name in ("v0.h5", "v1.h5")}

    monkeypatch.undo()
    written, said = counting_writes(monkeypatch), []
    result = prepare_dataset(NiftiSource(raw), out, SMALL, say=said.append)
    assert written == ["v2.h5", "v3.h5"]
    assert said == [f"resuming the interrupted run in {partial}: 2 volume files already written are kept"]
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # the same files, moved in
    assert not partial.exists() and not result.unchanged
    assert_same_dataset(out, tmp_path / "straight")
    assert prepare_dataset(NiftiSource(raw), out, SMALL).unchanged


def test_a_file_half_written_when_killed_is_written_again(raw, tmp_path, monkeypatch):
    """Killed (SystemExit stands for kill -9: nothing after it runs) while v1.h5's bytes were
    written: the half file is in the partial folder but not in its journal, so it is written again;
    a journal line cut short, or a kept file whose size changed since, are not trusted either."""
    real = prep_mod.write_bytes_synced

    def killed_midway(path, data):
        if Path(path).name == "v2.h5":
            Path(path).write_bytes(bytes(data)[: len(data) // 2])
            raise SystemExit("killed")
        real(path, data)

    monkeypatch.setattr(prep_mod, "write_bytes_synced", killed_midway)
    with pytest.raises(SystemExit):
        prepare_dataset(NiftiSource(raw), tmp_path / "out", SMALL)
    monkeypatch.undo()
    partial = tmp_path / ".out.partial"
    assert sorted(p.name for p in partial.glob("*.h5")) == ["v0.h5", "v1.h5", "v2.h5"]
    with open(partial / "v1.h5", "ab") as f:  # changed since it was journaled
        f.write(b"x")
    with open(partial / JOURNAL, "ab") as f:  # a line cut short by the kill
        f.write(b'{"volume": "v3", "bytes": 12')

    written = counting_writes(monkeypatch)
    prepare_dataset(NiftiSource(raw), tmp_path / "out", SMALL)
    assert written == ["v1.h5", "v2.h5", "v3.h5"]
    assert_same_dataset(tmp_path / "out", tmp_path / "straight")


def test_other_options_or_inputs_start_over_saying_so(raw, tmp_path, monkeypatch, nifti_writer):
    out, partial = tmp_path / "out", tmp_path / ".out.partial"

    def stop_at_second_write(options: PrepareOptions) -> None:
        counting_writes(monkeypatch, on=2, then=lambda path: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(PrepareInterrupted):
            prepare_dataset(NiftiSource(raw), out, options)
        monkeypatch.undo()

    forced = PrepareOptions(size=(16, 16), force=True)
    stop_at_second_write(SMALL)
    written, said = counting_writes(monkeypatch), []
    prepare_dataset(NiftiSource(raw), out, PrepareOptions(size=(12, 12)), say=said.append)
    assert said == [f"{partial} was left by a run with other options or inputs (size [16, 16] -> [12, 12]); starting over"]
    assert written == VOLUMES and not partial.exists()
    assert json.loads((out / "manifest.json").read_text())["image_size"] == [12, 12]

    monkeypatch.undo()
    stop_at_second_write(forced)  # rebuilding out with the first options, stopped; then an input changes
    nifti_writer.write(raw / "v1.nii.gz", nifti_writer.phantom((20, 18, 3), seed=9))
    written, said = counting_writes(monkeypatch), []
    prepare_dataset(NiftiSource(raw), out, forced, say=said.append)
    assert len(said) == 1 and "source files changed: v1.nii.gz); starting over" in said[0]
    assert written == VOLUMES


def test_the_accelerations_in_another_order_resume_the_same_run(raw, tmp_path, monkeypatch):
    """--acc 5,4 prepares what --acc 4,5 does (as a finished dataset's up-to-date check says): a run
    stopped with one order is resumed, not started over, with the other."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    counting_writes(monkeypatch, on=2, then=lambda path: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(PrepareInterrupted):
        prepare_dataset(NiftiSource(raw), out, PrepareOptions(size=(16, 16), accelerations=(5.0, 4.0)))
    monkeypatch.undo()
    written, said = counting_writes(monkeypatch), []
    prepare_dataset(NiftiSource(raw), out, SMALL, say=said.append)
    assert said == [f"resuming the interrupted run in {partial}: 2 volume files already written are kept"]
    assert written == ["v2.h5", "v3.h5"]
    assert json.loads((out / "manifest.json").read_text())["accelerations"] == [4.0, 5.0]  # the order given
    for name in VOLUMES:
        x, y = h5_content(out / name), h5_content(tmp_path / "straight" / name)
        assert sorted(x) == sorted(y) and all(np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for k in x), name
    assert prepare_dataset(NiftiSource(raw), out, PrepareOptions(size=(16, 16), accelerations=(5.0, 4.0))).unchanged


def test_a_resumed_force_rebuild_keeps_the_old_dataset_until_it_is_done(raw, tmp_path, monkeypatch):
    """--force into an existing dataset, stopped: the old dataset is as it was; the same command
    resumes (--force does not discard the work: it re-hashes the inputs, which still match)."""
    out = tmp_path / "out"
    prepare_dataset(NiftiSource(raw), out, PrepareOptions(size=(12, 12)))
    before = files_of(out)
    forced = PrepareOptions(size=(16, 16), force=True)
    counting_writes(monkeypatch, on=3, then=lambda path: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(PrepareInterrupted, match=f"{out} is as it was; the files written so far are kept"):
        prepare_dataset(NiftiSource(raw), out, forced)
    assert files_of(out) == before
    monkeypatch.undo()
    written = counting_writes(monkeypatch)
    prepare_dataset(NiftiSource(raw), out, forced)
    assert written == ["v3.h5"]
    assert_same_dataset(out, tmp_path / "straight")


def test_a_complex_source_resumes_without_reading_the_finished_inputs(tmp_path, monkeypatch):
    write_folder(tmp_path / "raw" / "singlecoil_train", 4)
    write_folder(tmp_path / "raw" / "singlecoil_val", 2, prefix="val")
    spec, values = SOURCES["fastmri"], {"accelerations": (4.0,)}

    def prepare(out: Path):
        return prepare_dataset(spec.make_source(tmp_path / "raw", values), out, spec.prepare_options(values))

    prepare(tmp_path / "straight")
    counting_writes(monkeypatch, complex_prepare, "_write_volume", on=4,
                    then=lambda path: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(PrepareInterrupted):
        prepare(tmp_path / "out")
    monkeypatch.undo()
    written = counting_writes(monkeypatch, complex_prepare, "_write_volume")
    prepare(tmp_path / "out")
    assert len(written) == 2  # _write_volume is what reads an input's slices
    assert_same_dataset(tmp_path / "out", tmp_path / "straight")


# The child stops itself at its third volume file, as `kill -9` or SIGTERM from outside would
# (polling for the moment from outside races the child on a fast machine).
_VICTIM = """
import os, sys
from sftkd_cli.data import prepare
real, calls, sig = prepare.write_volume_h5, [], int(sys.argv.pop())
def write(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), sig)
    return real(*args, **kwargs)
prepare.write_volume_h5 = write
from sftkd_cli.cli.app import main
main()
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143)], ids=["kill-9", "sigterm"])
def test_a_killed_process_resumes_through_the_cli(raw, tmp_path, sig, code):
    args = ["prepare-data", "nifti", str(raw), "--out", str(tmp_path / "out"), "--size", "16", "16"]
    victim = subprocess.run([sys.executable, "-c", _VICTIM, *args, str(int(sig))], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "COLUMNS": "300"})
    assert victim.returncode == code, victim.stderr
    if sig == signal.SIGTERM:  # one line, saying how to go on
        assert victim.stderr.strip().splitlines()[-1].endswith(
            "run the same command again to resume (remove that folder to start over)"), victim.stderr
    assert not (tmp_path / "out").exists() and len(list((tmp_path / ".out.partial").glob("*.h5"))) >= 2
    result = sftkd(*args)
    assert "prepare-data: resuming the interrupted run" in result.stderr
    assert_same_dataset(tmp_path / "out", tmp_path / "straight")


# ----------------------------------------------------------------- progress where stderr is not a terminal


def test_progress_lines_where_stderr_is_not_a_terminal(raw, tmp_path, monkeypatch):
    from sftkd_cli.eta import ProgressLines

    monkeypatch.setattr(ProgressLines, "EVERY", 0.0)
    result = sftkd("prepare-data", "nifti", raw, "--out", tmp_path / "out", "--size", "16", "16")
    lines = [line for line in result.stderr.splitlines() if line.startswith("prepare-data: ")]
    assert [line.split(",")[0] for line in lines[-4:]] == [f"prepare-data: writing h5 files {n}/4" for n in range(1, 5)]
    assert "min so far" in lines[-1] and any(line.endswith("min left") for line in lines)


def test_progress_lines_come_every_so_often_with_the_time_left() -> None:
    from sftkd_cli.eta import ProgressLines

    now, said = [0.0], []
    lines = ProgressLines(said.append, "prepare-data", {"write": "writing h5 files"}, clock=lambda: now[0])
    for done, at in [(1, 5), (2, 10), (3, 31), (4, 40), (5, 61), (19, 95), (20, 100)]:
        now[0] = float(at)
        lines("write", done, 20)
    assert said == ["prepare-data: writing h5 files 3/20, 0.5 min so far, about 3 min left",  # 31 s for 3: 176 s for 17
                    "prepare-data: writing h5 files 5/20, 1.0 min so far, about 4 min left",  # 30 s for 2: 225 s for 15
                    "prepare-data: writing h5 files 19/20, 1.6 min so far, under 2 min left",
                    "prepare-data: writing h5 files 20/20, 1.7 min so far"]
    now[0], said[:] = 110.0, []
    lines("hash", 3, 3)  # a quick stage prints nothing
    assert said == []


def test_a_second_sigterm_stops_at_once_as_sigterm(raw, tmp_path, monkeypatch):
    """A second SIGTERM while a file is written stops at once (the file is not kept), reported as
    SIGTERM with exit status 143, not as the Ctrl-C its KeyboardInterrupt looks like."""
    def twice(path):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    counting_writes(monkeypatch, on=2, then=twice)
    with pytest.raises(PrepareInterrupted) as stopped:
        prepare_dataset(NiftiSource(raw), tmp_path / "out", SMALL)
    assert str(stopped.value).startswith("prepare-data stopped by SIGTERM;"), str(stopped.value)
    assert stopped.value.exit_code == 143
    assert sorted(p.name for p in (tmp_path / ".out.partial").glob("*.h5")) == ["v0.h5"]


# ----------------------------------------------------------------- a failure while writing names the partial folder


def test_a_full_disk_while_writing_names_the_partial_folder_kept(raw, tmp_path, monkeypatch):
    """The disk fills at the third volume file: the error says that the two files written are kept
    in the hidden partial folder (it can be many GB) and how to go on; the half-written file is
    removed (the disk gets its room back). Full at the first file, nothing finished is kept: the
    error says nothing of a partial folder."""
    import errno

    real = prep_mod.write_bytes_synced

    def full_at(name):
        def write(path, data):
            if Path(path).name == name:
                Path(path).write_bytes(bytes(data)[:100])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real(path, data)
        return write

    monkeypatch.setattr(prep_mod, "write_bytes_synced", full_at("v2.h5"))
    with pytest.raises(prep_mod.SftkdError) as failed:
        prepare_dataset(NiftiSource(raw), tmp_path / "out", SMALL)
    partial = tmp_path / ".out.partial"
    assert str(failed.value) == (f"--out {tmp_path / 'out'}: cannot write (No space left on device); the files written "
                                 f"so far are kept in {partial}: run the same command again to resume (remove that "
                                 "folder to start over)")
    assert sorted(p.name for p in partial.glob("*.h5")) == ["v0.h5", "v1.h5"]

    monkeypatch.setattr(prep_mod, "write_bytes_synced", full_at("v0.h5"))
    with pytest.raises(prep_mod.SftkdError) as failed:
        prepare_dataset(NiftiSource(raw), tmp_path / "new", SMALL)
    assert str(failed.value) == f"--out {tmp_path / 'new'}: cannot write (No space left on device)"


def test_a_nan_found_while_writing_a_complex_source_names_the_partial_folder_kept(tmp_path):
    """fastMRI's slices are checked for NaN as they are written: such an error, after volume files
    were written, says where they are kept."""
    paths = write_folder(tmp_path / "raw" / "singlecoil_train", 4)
    with h5py.File(paths[-1], "r+") as f:
        f["kspace"][2, 0, 0] = np.nan
    spec, values = SOURCES["fastmri"], {"accelerations": (4.0,)}
    with pytest.raises(prep_mod.SftkdError) as failed:
        prepare_dataset(spec.make_source(tmp_path / "raw", values), tmp_path / "out", spec.prepare_options(values))
    partial = tmp_path / ".out.partial"
    assert str(failed.value).startswith(f"{paths[-1]}: slice 2 holds NaN or Inf; expected finite k-space and target; "
                                        f"the files written so far are kept in {partial}: run the same command again")
    assert len(list(partial.glob("*.h5"))) == 3


@pytest.mark.parametrize("plant", ["no key", "other file", "other folder", "link"])
def test_a_partial_folder_that_is_not_prepare_datas_is_refused_and_left_alone(raw, tmp_path, plant):
    """A `.<name>.partial` without prepare-data's partial.json, or holding anything prepare-data
    does not write there, is the user's: one line naming it and what to do, nothing there changed."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    partial.mkdir()
    if plant == "no key":
        (partial / "thesis.tex").write_text("draft")
    else:
        counting_writes_stopped(raw, out, SMALL)  # a real partial folder of other options below
        if plant == "other file":
            (partial / "masks" / "notes.txt").write_text("draft")
        elif plant == "other folder":
            (partial / "drafts").mkdir()
        else:
            (partial / "v9.h5").symlink_to(tmp_path / "raw" / "v0.nii.gz")
    before = files_of(partial), sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*"))
    with pytest.raises(SftkdError) as refused:
        prepare_dataset(NiftiSource(raw), out, PrepareOptions(size=(12, 12)))
    message = str(refused.value)
    assert message.startswith(f"{partial}: ") and "\n" not in message
    assert "nothing there is changed" in message and "move it away" in message
    expected = {"no key": "holds thesis.tex", "other file": "holds masks/notes.txt",
                "other folder": "holds drafts/", "link": "holds v9.h5"}[plant]
    assert expected in message
    assert (files_of(partial), sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*"))) == before
    assert not out.exists()


def counting_writes_stopped(raw: Path, out: Path, options: PrepareOptions) -> None:
    """A run of `options` stopped by Ctrl-C at its second volume file: its partial folder stays."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        counting_writes(monkeypatch, on=2, then=lambda path: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(PrepareInterrupted):
            prepare_dataset(NiftiSource(raw), out, options)


def test_starting_over_removes_only_prepare_datas_files(raw, tmp_path):
    """Another run's partial folder (with a killed run's temporary key file) is removed file by
    file, and an empty one left by a kill before its key was written is used as it is."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    counting_writes_stopped(raw, out, SMALL)
    (partial / f".partial.json.tmp-{os.getpid() + 1}").write_bytes(b"{")
    said: list[str] = []
    prepare_dataset(NiftiSource(raw), out, PrepareOptions(size=(12, 12)), say=said.append)
    assert len(said) == 1 and said[0].endswith("; starting over") and not partial.exists()

    partial.mkdir()
    (partial / ".partial.json.tmp-1").write_bytes(b"")
    said = []
    prepare_dataset(NiftiSource(raw), out, PrepareOptions(size=(16, 16), force=True), say=said.append)
    assert said == [] and not partial.exists()
    assert_same_dataset(out, tmp_path / "straight")


def test_a_run_stopped_while_installing_leaves_a_folder_the_next_run_starts_over(raw, tmp_path, monkeypatch):
    """`install` removes the key and the journal, then writes the manifest: a full disk (or a kill)
    between the two leaves only prepare-data's files and no key. The same command starts over
    there (it was refused as not prepare-data's)."""
    from sftkd_cli.data import partial as partial_mod

    out, partial = tmp_path / "out", tmp_path / ".out.partial"

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(partial_mod, "write_manifest", full)
        with pytest.raises(SftkdError, match="No space left on device"):
            prepare_dataset(NiftiSource(raw), out, SMALL)
    assert not (partial / "partial.json").exists() and list(partial.glob("*.h5"))
    said: list[str] = []
    prepare_dataset(NiftiSource(raw), out, SMALL, say=said.append)
    assert len(said) == 1 and said[0].endswith("(no readable partial.json); starting over")
    assert_same_dataset(out, tmp_path / "straight")
