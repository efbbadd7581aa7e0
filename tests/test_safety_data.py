"""Safety of `prepare-data` and `evaluate` (issue 13), through the CLI (CPU only).

- `prepare-data --force` never deletes what prepare-data did not write: a folder whose
  manifest.json is not sftkd's is refused, and --force replaces only the files the old
  manifest lists.
- A full disk or a file-size limit during h5 writes ends in one line (no segfault), with the
  previous dataset / evaluation intact and no temporary file left.
- An output that cannot be written (read-only, below a file, name too long) is refused before
  any work.
- Sizes that lie (an h5 declaring slices it does not store, a NIfTI header declaring gigabytes,
  --size 100000, a manifest that is a FIFO or /dev/zero) are refused before reading.
- Wrong results are refused: another run's checkpoint, an exported file without its card, a
  volume in two splits, a mask whose sampling disagrees with its acceleration.
- Ctrl-C and SIGTERM during prepare-data leave no dataset folder (exit 130 / 143), only the
  partial folder a re-run resumes from (test_prepare_resume), dead processes' temporary folders are removed, and two prepare-data runs on one folder cannot both write.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_hardening import _prepare as prepare
from test_hardening import (  # noqa: F401  (raw_folder, trained_run: fixtures)
    copy_dataset, copy_run, fails_cleanly, invoke, raw_folder, snapshot, train_args, trained_run,
)

import sftkd_cli.data.prepare as prep_mod
import sftkd_cli.evaluate as eval_mod
from sftkd_cli.data.complex_slices import check_complex_file
from sftkd_cli.data.dataset import load_volume
from sftkd_cli.errors import SftkdError

torch.set_num_threads(1)


def leftovers(folder: Path, name: str = "out") -> list[str]:
    """Hidden temporary folders/files prepare-data or evaluate may leave (`.<name>.tmp-*`, `.*.tmp-*`)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.tmp") or p.name.startswith(f".{name}.old")
                  or (p.name.startswith(".") and ".tmp-" in p.name))


@pytest.fixture
def evaluated(trained_run, tmp_path) -> Path:
    """A private copy of the run, evaluated once (its metrics.json, per_slice.csv, recon.h5 exist)."""
    run = copy_run(trained_run, tmp_path)
    result = invoke("evaluate", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return run


class Counter:
    """Wraps a function and counts its calls (to prove that no work started)."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


# ----------------------------------------------------------------------------- item 4: --force


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "force"])
def test_prepare_never_touches_a_folder_whose_manifest_is_not_sftkds(raw_folder, tmp_path, force):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my-web-app", "version": "1.0", "start_url": "/"}')
    (out / "index.html").write_text("<html>my app</html>")
    before = snapshot(out)
    fails_cleanly(*prepare(raw_folder, out, *force), names=("out", "not one written by prepare-data"))
    assert snapshot(out) == before


def test_prepare_force_removes_only_the_files_the_old_manifest_lists(raw_folder, tmp_path):
    out = tmp_path / "out"
    assert invoke(*prepare(raw_folder, out, "--acc", "4,5")).exit_code == 0
    (out / "notes.txt").write_text("my notes on this dataset")
    (out / "figures").mkdir()
    (out / "figures" / "fig1.png").write_bytes(b"\x89PNG user figure")
    (out / "masks" / "my-mask.npy").write_bytes(b"user mask")
    result = invoke(*prepare(raw_folder, out, "--acc", "4", "--force"))
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "my notes on this dataset"
    assert (out / "figures" / "fig1.png").read_bytes() == b"\x89PNG user figure"
    assert (out / "masks" / "my-mask.npy").read_bytes() == b"user mask"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["accelerations"] == [4.0]
    assert not (out / "masks" / "acc5.npy").exists()  # the old dataset's file, no longer listed
    assert sorted(p.name for p in out.glob("*.h5")) == [f"vol{i}.h5" for i in range(5)]
    with h5py.File(out / "vol0.h5", "r") as f:
        assert "acc5" not in f and "acc4" in f
    assert leftovers(tmp_path) == []


def test_prepare_force_refuses_to_replace_a_user_file_of_the_same_name(raw_folder, nifti_writer, tmp_path):
    out = tmp_path / "out"
    (raw_folder / "vol4.nii.gz").rename(tmp_path / "vol4.nii.gz")
    assert invoke(*prepare(raw_folder, out)).exit_code == 0
    (out / "vol4.h5").write_bytes(b"the user's own file, not listed by the manifest")
    (tmp_path / "vol4.nii.gz").rename(raw_folder / "vol4.nii.gz")
    before = snapshot(out)
    fails_cleanly(*prepare(raw_folder, out, "--force"), names=("vol4.h5", "not part of the old dataset"))
    assert snapshot(out) == before and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- item 7: disk full


def _full_disk_on(call: int):
    """A write_bytes_synced that writes half the bytes and raises ENOSPC on its `call`-th call."""
    from sftkd_cli.files import write_bytes_synced as real

    calls = []

    def write(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == call:
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    return write


def test_prepare_disk_full_partway_keeps_the_old_dataset(raw_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert invoke(*prepare(raw_folder, out, "--acc", "4,5")).exit_code == 0
    before = snapshot(out)
    monkeypatch.setattr(prep_mod, "write_bytes_synced", _full_disk_on(4), raising=False)
    fails_cleanly(*prepare(raw_folder, out, "--acc", "4", "--force"), names=("out", "No space left on device"))
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_evaluate_disk_full_partway_keeps_the_previous_results(evaluated, monkeypatch):
    before = snapshot(evaluated)
    monkeypatch.setattr("sftkd_cli.files.write_bytes_synced", _full_disk_on(2))  # recon.h5
    fails_cleanly("evaluate", evaluated, "--device", "cpu",
                  names=("No space left on device", "the previous results there are unchanged"))
    assert snapshot(evaluated) == before  # no new per_slice.csv beside the old metrics.json, no temp file


def test_evaluate_disk_full_on_a_first_evaluation_says_nothing_was_written(trained_run, tmp_path, monkeypatch):
    """No previous results: the line says nothing was written, not that earlier results are kept."""
    run = copy_run(trained_run, tmp_path)
    assert not (run / "metrics.json").exists()
    before = snapshot(run)
    monkeypatch.setattr("sftkd_cli.files.write_bytes_synced", _full_disk_on(1))
    line = fails_cleanly("evaluate", run, "--device", "cpu", names=("No space left on device", "nothing written"))
    assert "previous" not in line and snapshot(run) == before


def _under_file_size_limit(args: list[object], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m sftkd_cli ARGS` with RLIMIT_FSIZE = `limit` bytes and SIGXFSZ ignored (EFBIG)."""

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "sftkd_cli", *map(str, args)], preexec_fn=limited, cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})


def _one_line(result: subprocess.CompletedProcess, *names: str) -> None:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 2, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stdout + result.stderr
    for name in names:
        assert name in lines[0], lines[0]


def test_file_size_limit_during_h5_writes_is_one_line_not_a_segfault(raw_folder, evaluated, tmp_path):
    out = tmp_path / "new-data"
    result = _under_file_size_limit(prepare(raw_folder, out), 20_000, tmp_path)
    _one_line(result, "File too large")
    assert not out.exists() and leftovers(tmp_path, "new-data") == []

    before = snapshot(evaluated)
    result = _under_file_size_limit(["evaluate", evaluated, "--device", "cpu", "--split", "test"], 2_000, tmp_path)
    _one_line(result, "File too large")
    assert snapshot(evaluated) == before


# ----------------------------------------------------------------------------- item 8: unwritable outputs


def _deny_writes_to(folder: Path, monkeypatch) -> None:
    """os.access says `folder` is not writable (as root chmod does not stop writes)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_evaluate_refuses_a_read_only_output_before_any_work(evaluated, monkeypatch):
    counter = Counter(eval_mod.reconstruct_split)
    monkeypatch.setattr(eval_mod, "reconstruct_split", counter)
    _deny_writes_to(evaluated, monkeypatch)
    before = snapshot(evaluated)
    fails_cleanly("evaluate", evaluated, "--device", "cpu", names=(evaluated.name, "not writable"))
    assert counter.calls == 0 and snapshot(evaluated) == before


def test_evaluate_refuses_an_output_below_a_file_before_any_work(evaluated, monkeypatch):
    counter = Counter(eval_mod.reconstruct_split)
    monkeypatch.setattr(eval_mod, "reconstruct_split", counter)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)  # emulated: no warning before refusing
    (evaluated / "eval-amp-bf16").write_text("a file where evaluate --amp bf16 puts its folder")
    fails_cleanly("evaluate", evaluated, "--device", "cpu", "--amp", "bf16", names=("eval-amp-bf16", "is a file"))
    assert counter.calls == 0


def test_evaluate_refuses_an_output_name_too_long_before_any_work(evaluated, tmp_path, monkeypatch):
    short = tmp_path / "m.pt"
    result = invoke("export", evaluated, "--format", "torchscript", "--out", short)
    assert result.exit_code == 0, result.output
    exported = tmp_path / ("m" * 242 + ".pt")  # its card's name fits in 255; RUN/eval-<stem>-torchscript/ does not
    short.rename(exported)
    Path(f"{short}.card.json").rename(f"{exported}.card.json")
    counter = Counter(eval_mod.reconstruct_split)
    monkeypatch.setattr(eval_mod, "reconstruct_split", counter)
    fails_cleanly("evaluate", evaluated, "--device", "cpu", "--exported", exported, names=("characters",))
    assert counter.calls == 0


def test_prepare_refuses_unwritable_or_too_long_outputs_before_reading(raw_folder, tmp_path, monkeypatch):
    counter = Counter(prep_mod._prepare_file)
    monkeypatch.setattr(prep_mod, "_prepare_file", counter)
    fails_cleanly(*prepare(raw_folder, tmp_path / ("d" * 250)), names=("characters",))
    parent = tmp_path / "locked"
    parent.mkdir()
    _deny_writes_to(parent, monkeypatch)
    fails_cleanly(*prepare(raw_folder, parent / "out"), names=("locked", "not writable"))
    assert counter.calls == 0 and list(parent.iterdir()) == []


# ----------------------------------------------------------------------------- item 9: sizes that lie


def test_prepare_refuses_a_huge_size_at_once(raw_folder, tmp_path):
    fails_cleanly("prepare-data", "nifti", raw_folder, "--out", tmp_path / "out", "--size", "100000", "100000",
                  names=("--size", "4096"))
    assert not (tmp_path / "out").exists()


def test_a_nifti_header_declaring_more_than_the_limit_is_refused_before_reading(raw_folder, tmp_path, monkeypatch):
    import sftkd_cli.data.volumes as volumes_mod

    # a 14 MB gzip bomb declares gigabytes; the same check, with the limit lowered below these phantoms
    monkeypatch.setattr(volumes_mod, "MAX_VOLUME_BYTES", 4096, raising=False)
    fails_cleanly(*prepare(raw_folder, tmp_path / "out"), names=("vol0.nii.gz", "limit per volume"))
    assert not (tmp_path / "out").exists()


def test_odd_nifti_headers_add_no_line_to_stderr(nifti_writer, tmp_path):
    """In a real process (nibabel's log handler and numpy's warnings write to the real stderr): an
    overflowing scl_slope is the one error line; a zero pixdim nibabel fixes prints nothing."""
    from test_data_volumes import slope_overflow_nifti, zero_pixdim_nifti

    def prepare_data(name: str, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sftkd_cli", "prepare-data", "nifti", tmp_path / name,
                               "--pattern", "*.nii", "--out", tmp_path / f"{name}-out", "--size", "8", "8", *options],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})

    (tmp_path / "slope").mkdir()
    slope_overflow_nifti(tmp_path / "slope" / "a.nii")
    _one_line(prepare_data("slope"), "a.nii", "NaN/Inf voxel")
    zero_pixdim_nifti(tmp_path / "pixdim" / "a.nii", nifti_writer)
    result = prepare_data("pixdim", "--val-fraction", "0")  # one volume: no val (not warned about when asked for)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_an_h5_declaring_slices_it_does_not_store_is_refused(tiny_dataset, trained_run, tmp_path):
    data, run = copy_dataset(tiny_dataset, tmp_path), copy_run(trained_run, tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    volume = manifest["splits"]["val"][0]
    slices = 4000  # 2M in the report: a few kB of file, an hour of evaluation of fill values
    with h5py.File(data / f"{volume}.h5", "a") as f:
        for name in ("image", "acc4/zf", "acc4/kspace", "acc5/zf", "acc5/kspace"):
            old = f[name]
            dtype = old.dtype
            del f[name]
            f.create_dataset(name, shape=(slices, 16, 16), dtype=dtype, chunks=(1, 16, 16))
    manifest["volumes"][volume]["slices"] = slices
    (data / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(run)
    fails_cleanly("evaluate", run, "--data", data, "--device", "cpu", names=(f"{volume}.h5", "stores"))
    assert snapshot(run) == before


def test_an_h5_whose_array_is_a_group_is_refused_in_one_line(tiny_dataset, trained_run, tmp_path):
    data, run = copy_dataset(tiny_dataset, tmp_path), copy_run(trained_run, tmp_path)
    volume = json.loads((data / "manifest.json").read_text())["splits"]["val"][0]
    with h5py.File(data / f"{volume}.h5", "a") as f:
        del f["image"]
        f.create_group("image")
    fails_cleanly("evaluate", run, "--data", data, "--device", "cpu",
                  names=(f"{volume}.h5: 'image' is a group; expected an array written by prepare-data",))
    with pytest.raises(SftkdError, match="'image' is a group"):
        load_volume(data, volume, 4.0)
    complex_file = tmp_path / "complex.h5"  # a complex (fastMRI) volume file, checked by its own reader
    with h5py.File(complex_file, "w") as f:
        f.create_group("kspace")
    with pytest.raises(SftkdError, match="complex.h5: 'kspace' is a group; expected an array"):
        check_complex_file(complex_file, "acc4", 1, (4, 4), (4, 4))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_manifest_that_is_not_a_regular_file_is_refused(tiny_dataset, trained_run, raw_folder, tmp_path, kind):
    data, run = copy_dataset(tiny_dataset, tmp_path), copy_run(trained_run, tmp_path)
    (data / "manifest.json").unlink()
    if kind == "fifo":
        os.mkfifo(data / "manifest.json")
    else:
        (data / "manifest.json").symlink_to("/dev/zero")
    fails_cleanly("evaluate", run, "--data", data, "--device", "cpu", names=("manifest.json", "not a regular file"))
    fails_cleanly(*train_args(data, tmp_path / "runs"), names=("manifest.json", "not a regular file"))
    fails_cleanly(*prepare(raw_folder, data, "--force"), names=("manifest.json", "not a regular file"))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_export_does_not_read_a_metrics_json_that_is_not_a_regular_file(trained_run, tmp_path, kind):
    run = copy_run(trained_run, tmp_path)
    if kind == "fifo":
        os.mkfifo(run / "metrics.json")
    else:
        (run / "metrics.json").symlink_to("/dev/zero")
    result = invoke("export", run, "--format", "torchscript", "--out", tmp_path / "m.pt")  # used to hang
    assert result.exit_code == 0, result.output
    assert json.loads(Path(f"{tmp_path / 'm.pt'}.card.json").read_text())["metrics"] is None


# ----------------------------------------------------------------------------- item 10: wrong results


def test_evaluate_refuses_a_checkpoint_of_another_run(trained_run, tmp_path):
    a = copy_run(trained_run, tmp_path)
    b = Path(shutil.copytree(trained_run, tmp_path / "other"))
    before = snapshot(a)
    fails_cleanly("evaluate", a, "--device", "cpu", "--checkpoint", b / "checkpoints" / "best.pt",
                  names=("refused", "best.pt", "sftkd evaluate"))
    assert snapshot(a) == before
    fails_cleanly("evaluate", a, "--device", "cpu", "--checkpoint", "lats",
                  names=("--checkpoint lats: expected best, last or a checkpoint file", "no such file"))
    result = invoke("evaluate", a, "--device", "cpu", "--checkpoint", a / "checkpoints" / "last.pt")
    assert result.exit_code == 0, result.output


def test_evaluate_refuses_an_exported_file_without_its_card(evaluated, tmp_path):
    exported = tmp_path / "student.pt"
    assert invoke("export", evaluated, "--format", "torchscript", "--out", exported).exit_code == 0
    Path(f"{exported}.card.json").unlink()
    before = snapshot(evaluated)
    fails_cleanly("evaluate", evaluated, "--device", "cpu", "--exported", exported, names=("student.pt", "card"))
    assert snapshot(evaluated) == before  # nothing written, no eval-student-torchscript/ folder


@pytest.mark.parametrize("how", ["train-volume-in-val", "listed-twice"])
def test_a_manifest_with_a_volume_in_two_splits_or_twice_is_refused(tiny_dataset, trained_run, tmp_path, how):
    data, run = copy_dataset(tiny_dataset, tmp_path), copy_run(trained_run, tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    volume = manifest["splits"]["train"][0]
    if how == "train-volume-in-val":
        manifest["splits"]["val"].append(volume)
    else:
        manifest["splits"]["train"].append(volume)
    (data / "manifest.json").write_text(json.dumps(manifest))
    fails_cleanly("evaluate", run, "--data", data, "--device", "cpu", names=(repr(volume),))
    fails_cleanly(*train_args(data, tmp_path / "runs"), names=(repr(volume),))


@pytest.mark.parametrize("split", ["../../t1", "..", "a/b", ""])
def test_a_manifest_split_that_is_not_a_plain_name_is_refused(tiny_dataset, trained_run, tmp_path, split):
    """A split names RUN/eval-split-<split>/: one that is a path would send evaluate's scores
    into another folder (another run's metrics.json), so the manifest is refused in one line."""
    data, run = copy_dataset(tiny_dataset, tmp_path), copy_run(trained_run, tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"][split] = manifest["splits"].pop("test")
    (data / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(tmp_path)
    fails_cleanly("evaluate", run, "--data", data, "--device", "cpu", "--split", split,
                  names=("manifest.json", f"split {split!r}", "not a plain name"))
    assert snapshot(tmp_path) == before


def test_results_folder_refuses_a_split_that_is_a_path(tmp_path):
    from sftkd_cli.eval_folders import results_folder

    record = {"fingerprint": "0" * 64}
    assert results_folder(tmp_path, {}, record, tmp_path, "off", "paper", "test") == tmp_path / "eval-split-test"
    with pytest.raises(SftkdError, match=r"--split '\.\./x' is not a plain name"):
        results_folder(tmp_path, {}, record, tmp_path, "off", "paper", "../x")


@pytest.mark.parametrize("case", ["all-ones", "all-zeros", "2x-as-4x"])
def test_a_mask_file_must_sample_as_its_acceleration_says(raw_folder, tmp_path, case):
    mask = {"all-ones": np.ones((16, 16)), "all-zeros": np.zeros((16, 16)), "2x-as-4x": np.zeros((16, 16))}[case]
    if case == "2x-as-4x":
        mask[::2] = 1
    np.save(tmp_path / "mask.npy", mask.astype(np.float32))
    fails_cleanly(*prepare(raw_folder, tmp_path / "out", "--acc", "4", "--mask-file", tmp_path / "mask.npy"),
                  names=("mask.npy", "4x"))
    assert not (tmp_path / "out").exists()


def test_a_dataset_mask_that_disagrees_with_its_acceleration_is_refused(tiny_dataset, trained_run, tmp_path):
    data, run = copy_dataset(tiny_dataset, tmp_path), copy_run(trained_run, tmp_path)
    for path in data.glob("*.h5"):
        with h5py.File(path, "a") as f:
            f["acc4/mask"][...] = 1.0  # all ones, still labelled 4x
    fails_cleanly("evaluate", run, "--data", data, "--device", "cpu", names=("acc4/mask", "all ones", "4x"))


# ----------------------------------------------------------------------------- item 12: signals, stale folders, two writers


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_prepare_leaves_no_dataset_and_exits_non_zero(raw_folder, tmp_path, monkeypatch, sig, code):
    real = prep_mod.write_volume_h5
    calls = []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), sig)  # arrives while an h5 file is being written
        return real(*args, **kwargs)

    monkeypatch.setattr(prep_mod, "write_volume_h5", signalled)
    out = tmp_path / "out"
    result = invoke(*prepare(raw_folder, out))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and signal.Signals(sig).name in lines[0] and "to resume" in lines[0], result.output
    assert not out.exists() and leftovers(tmp_path) == [] and not (tmp_path / ".out.lock").exists()
    assert (tmp_path / ".out.partial" / "vol0.h5").is_file()  # the work done, kept to resume from
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_prepare_removes_temporary_folders_of_dead_processes_only(raw_folder, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.tmp-{int(dead.stdout)}"
    (stale / "masks").mkdir(parents=True)
    (stale / "vol0.h5").write_bytes(b"x" * 1000)
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a process that is still running
    live.mkdir()
    other = tmp_path / ".other.tmp-1"  # another folder's: not ours to touch
    other.mkdir()
    result = invoke(*prepare(raw_folder, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.is_dir() and other.is_dir()


def test_a_second_prepare_on_the_same_folder_is_refused_while_the_first_writes(raw_folder, tmp_path, monkeypatch):
    real = prep_mod.write_volume_h5
    second = []

    def write_and_start_another(*args, **kwargs):
        if not second:  # while the first run writes its first volume, a second run starts
            second.append(invoke(*prepare(raw_folder, tmp_path / "out", "--acc", "4")))
        return real(*args, **kwargs)

    monkeypatch.setattr(prep_mod, "write_volume_h5", write_and_start_another)
    first = invoke(*prepare(raw_folder, tmp_path / "out"))
    assert first.exit_code == 0, first.output
    lines = [line for line in second[0].output.splitlines() if line.strip()]
    assert second[0].exit_code == 2 and len(lines) == 1 and "another prepare-data" in lines[0], second[0].output
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["accelerations"] == [4.0, 5.0]
