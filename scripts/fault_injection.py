#!/usr/bin/env python
"""Fault injection for `sftkd` training: kill -9 at random moments, resume, compare; disk full.

Not run by the test suite (it takes minutes). Usage, from the repository root:

    .venv/bin/python scripts/fault_injection.py [--trials 100] [--max-kills 5] [--seed 0] [--spawn]

What it does, in a temporary folder:
1. writes small NIfTI phantoms with nibabel and prepares them with `sftkd_cli.data.prepare`
   (16x16, 4x);
2. trains D2C2 uninterrupted twice with `train.checkpoint_every=1` (the reference, and a
   control run that must be bit-identical, or nothing below would mean anything);
3. each trial starts the same training and sends SIGKILL after a delay drawn uniformly in
   [0, T] (T = the reference run's duration), then checks every file of the run directory
   (each checkpoint must load with `sftkd_cli.runs.load_checkpoint`, history.jsonl must parse,
   recipe.yaml must load), then continues with `--resume` (or starts again when the kill came
   before the run directory existed); that process may be killed again, up to --max-kills
   times per trial; the finished run's last/best weights and its history must equal the
   reference exactly (torch.equal, ==);
4. disk full: in this process, a checkpoint write stores half its bytes and raises
   OSError(ENOSPC) on its Nth call; the CLI must exit 2 with one line saying what happened,
   the checkpoint being replaced must be byte-identical to before, no temporary file may stay,
   and a `--resume` with the disk "freed" must reach the reference weights.

5. prepare-data and evaluate on a full disk, under a file-size limit and on a read-only folder
   (`python -m sftkd_cli` processes, so that a segfault shows as one): a small tmpfs filled to
   leave a few kilobytes, RLIMIT_FSIZE with SIGXFSZ ignored (EFBIG), and a tmpfs remounted
   read-only. Each must end in one `error:` line (exit 2) with the previous dataset / evaluation
   byte-identical and no temporary file left, or succeed when the space sufficed. The tmpfs
   scenarios need root (mount); without it they are skipped and said so. `--data-io-only` runs
   only these (it trains one short run for evaluate).

Training processes are forked from this interpreter, which has already imported sftkd and torch
(os.fork, then `sftkd_cli.cli.app.main(argv)` in the child), so that a kill lands in training
rather than in the 3-5 s of importing torch; `--spawn` starts `python -m sftkd_cli` instead.
Prints a summary; exit status 1 when a checkpoint was corrupt, a final result differed or a
data I/O scenario ended other than cleanly.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sftkd_cli.cli.app  # noqa: F401 - imported once here, so forked processes start in milliseconds
import sftkd_cli.data.dataset  # noqa: F401 - (imported lazily by the training session otherwise)
from sftkd_cli.config import load_recipe
from sftkd_cli.runs import load_checkpoint

EPOCHS = 4
BATCH = 1


# ----------------------------------------------------------------------------- data


def phantom(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A positive (X, Y, Z) volume: two nested ellipses whose contrast changes per slice, plus noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    outer = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
    inner = ((x - 0.15) / 0.35) ** 2 + (y / 0.3) ** 2 <= 1
    volume = np.zeros(shape, np.float32)
    for z in range(shape[2]):
        volume[..., z] = outer * (40 + 7 * z + 3 * seed) + inner * (25 + 4 * z) + outer * rng.uniform(0, 6, (shape[0], shape[1]))
    return volume


def make_dataset(root: Path, volumes: int = 8) -> Path:
    """NIfTI phantoms -> a prepared 16x16 dataset (vol0 is the validation volume)."""
    import nibabel as nib

    from sftkd_cli.data.options import PrepareOptions
    from sftkd_cli.data.prepare import prepare_dataset
    from sftkd_cli.data.sources import NiftiSource

    raw = root / "raw"
    raw.mkdir(parents=True)
    for i in range(volumes):
        nib.save(nib.Nifti1Image(phantom((24, 20, 4), i), np.eye(4)), str(raw / f"vol{i}.nii.gz"))
    options = PrepareOptions(size=(16, 16), accelerations=(4.0,), val=("vol0",))
    prepare_dataset(NiftiSource(raw), root / "data", options)
    return root / "data"


def command(data: Path, runs: Path, name: str, resume: bool) -> list[str]:
    """The training command every process runs (the same arguments each time, as a user would)."""
    argv = ["train-teacher", "--model", "D2C2", "--name", name, f"data.path={data}", f"run.dir={runs}",
            f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", "train.threads=1",
            "train.checkpoint_every=1", "eval.latency_slices=1"]
    return argv + (["--resume"] if resume else [])


# ----------------------------------------------------------------------------- processes


def warm_up() -> None:
    """Do the lazy imports once, before forking: torch._dynamo (2-3 s, on the first Adam) and the CLI's."""
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    CliRunner().invoke(app, ["train-teacher", "--print-recipe"])


class Proc:
    """A training process: forked from this interpreter, or spawned as `python -m sftkd_cli`."""

    def __init__(self, argv: list[str], log: Path, spawn: bool) -> None:
        self.started = time.perf_counter()
        self.returncode: int | None = None
        self.popen: subprocess.Popen | None = None
        if spawn:
            with open(log, "wb") as out:
                self.popen = subprocess.Popen([sys.executable, "-m", "sftkd_cli", *argv], stdout=out,
                                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self.pid = self.popen.pid
        else:
            self.pid = os.fork()
            if self.pid == 0:
                _child(argv, log)  # never returns

    def poll(self) -> int | None:
        if self.returncode is None:
            if self.popen is not None:
                self.returncode = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when the process has exited."""
        deadline = time.perf_counter() + seconds
        while self.poll() is None:
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        while not self.wait(60):
            pass


def _child(argv: list[str], log: Path) -> None:
    """Body of a forked training process: run the CLI with output to `log`, then _exit."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = ["sftkd", *argv]
        from sftkd_cli.cli.app import main

        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report anything in the log, never return into the parent
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


# ----------------------------------------------------------------------------- checks


def model_states(run: Path, which: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / f"{which}.pt")["models"]["model"]["state"]


def history(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def differences(run: Path, reference: Path) -> list[str]:
    """Where a finished run differs from the reference: weights (torch.equal) and history."""
    found = []
    for which in ("last", "best"):
        a, b = model_states(reference, which), model_states(run, which)
        bad = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
        if bad or a.keys() != b.keys():
            found.append(f"{which}.pt weights differ ({len(bad)} tensors, e.g. {bad[:2]})")
    ours, theirs = history(run), history(reference)
    if ours != theirs:
        epochs = [row.get("epoch") for row in ours]
        found.append(f"history.jsonl differs: epochs {epochs}, expected {[row.get('epoch') for row in theirs]}"
                     + ("" if len(ours) != len(theirs) else " (same epochs, different values)"))
    return found


def temp_files(run: Path) -> list[str]:
    """Temporary files (`.name.tmp-PID`) left in the run directory."""
    return sorted(p.relative_to(run).as_posix() for p in run.rglob(".*.tmp-*")) if run.exists() else []


def inspect_after_kill(run: Path) -> tuple[list[str], str]:
    """Every file a killed run left must be whole. Returns (problems, where the kill landed)."""
    problems: list[str] = []
    if not run.exists():
        return problems, "before the run dir"
    for pt in sorted((run / "checkpoints").glob("*.pt")):
        try:
            load_checkpoint(pt)
        except Exception as exc:  # noqa: BLE001 - SftkdError or anything else: a corrupt file
            problems.append(f"{pt.name}: {exc}")
    if (run / "recipe.yaml").exists():
        try:
            load_recipe(run / "recipe.yaml")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"recipe.yaml: {exc}")
    for name in ("history.jsonl", "env.json"):
        path = run / name
        if path.exists():
            try:
                if name == "env.json":
                    json.loads(path.read_text())
                else:
                    [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    last = run / "checkpoints" / "last.pt"
    if not last.exists():
        return problems, "before the first checkpoint"
    try:
        state = load_checkpoint(last)
    except Exception:  # noqa: BLE001 - already counted above
        return problems, "corrupt"
    return problems, f"in epoch {state['epoch'] + 1}" if state["step_in_epoch"] else f"end of epoch {state['epoch']}"


# ----------------------------------------------------------------------------- kill -9 trials


@dataclass
class Tally:
    trials: int = 0
    starts: int = 0
    kills: int = 0
    resumes: int = 0
    restarts: int = 0  # killed before recipe.yaml existed: started again without --resume
    missed: int = 0  # the process finished before its kill time
    during_write: int = 0  # the killed process left its temp file: killed inside torch.save / fsync / rename
    corrupt: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    positions: Counter = field(default_factory=Counter)
    stale_temp_files: int = 0


def run_trial(index: int, data: Path, runs: Path, reference: Path, duration: float, rng: np.random.Generator,
              max_kills: int, spawn: bool, logs: Path, tally: Tally) -> None:
    """One trial: up to `max_kills` SIGKILLs at uniform random delays, resuming after each."""
    name = f"trial{index:02d}"
    run = runs / name
    planned = int(rng.integers(1, max_kills + 1))
    killed = 0
    tally.trials += 1
    while True:
        resume = (run / "recipe.yaml").exists()
        tally.restarts += killed > 0 and not resume
        tally.resumes += resume
        tally.starts += 1
        log = logs / f"{name}-{tally.starts:03d}.log"
        proc = Proc(command(data, runs, name, resume), log, spawn)
        if killed < planned:
            delay = float(rng.uniform(0.0, duration))
            if not proc.wait(delay):
                proc.kill9()
                killed += 1
                tally.kills += 1
                if any(f.endswith(f".tmp-{proc.pid}") for f in temp_files(run)):
                    tally.during_write += 1  # its own temp file is there: killed inside an atomic write
                problems, where = inspect_after_kill(run)
                tally.positions[where] += 1
                tally.corrupt += [f"{name} kill {killed} ({where}): {p}" for p in problems]
                continue
            tally.missed += 1
        proc.wait(600)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-400:]
            tally.failures.append(f"{name}: exit {proc.returncode} after {killed} kills: {tail}")
            return
        break
    tally.stale_temp_files += len(temp_files(run))
    tally.mismatches += [f"{name} ({killed} kills): {d}" for d in differences(run, reference)]


# ----------------------------------------------------------------------------- disk full


def disk_full_scenario(call: int, data: Path, runs: Path, reference: Path, bare: bool = False) -> dict[str, Any]:
    """A checkpoint write stores half its bytes and raises ENOSPC on its `call`-th call; then resume."""
    from typer.testing import CliRunner

    import sftkd_cli.files as files_module
    from sftkd_cli.cli.app import app

    name = f"diskfull-{call}{'-bare' if bare else ''}"
    run = runs / name
    real_write = files_module.write_bytes_synced
    calls: list[str] = []
    seen: dict[str, Any] = {}

    def full_disk(path: Path, data) -> None:
        if ".pt.tmp-" not in path.name:  # only checkpoint writes count
            return real_write(path, data)
        calls.append(str(path))
        if len(calls) != call:
            return real_write(path, data)
        target = path.with_name(path.name[1:].split(".tmp-")[0])  # .last.pt.tmp-PID -> last.pt
        seen["target"] = target.name
        seen["before"] = hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else None
        path.write_bytes(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC) if bare else OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    runner = CliRunner()
    files_module.write_bytes_synced = full_disk
    try:
        failed = runner.invoke(app, command(data, runs, name, resume=False))
    finally:
        files_module.write_bytes_synced = real_write
    target = run / "checkpoints" / seen.get("target", "last.pt")
    after = hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else None
    lines = [line for line in failed.output.splitlines() if line.strip() and not line.startswith(("epoch ", "run "))]
    intact = True
    for pt in (run / "checkpoints").glob("*.pt"):
        try:
            load_checkpoint(pt)
        except Exception:  # noqa: BLE001
            intact = False
    resumed = runner.invoke(app, command(data, runs, name, resume=True))
    return {
        "call": call,
        "bare": bare,
        "file": seen.get("target"),
        "exit": failed.exit_code,
        "message": lines[-1] if lines else "",
        "one_line": len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in failed.output,
        "says_disk_full": "No space left on device" in failed.output,
        "previous_intact": seen.get("before") == after and intact,
        "temp_files": temp_files(run),
        "resume_exit": resumed.exit_code,
        "identical_after_resume": resumed.exit_code == 0 and not differences(run, reference),
    }


# ----------------------------------------------------------------------------- prepare-data / evaluate I/O faults


def sftkd_process(args: list[object], cwd: Path, fsize: int | None = None) -> subprocess.CompletedProcess:
    """`python -m sftkd_cli ARGS`, optionally with RLIMIT_FSIZE = `fsize` bytes and SIGXFSZ ignored."""

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "sftkd_cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, preexec_fn=limited if fsize else None,
                          env={**os.environ, "COLUMNS": "400"})


def ending(proc: subprocess.CompletedProcess) -> str:
    """How a process ended: 'one-line error', 'success', 'traceback', 'signal SIGSEGV', 'exit N'."""
    if proc.returncode < 0:
        return f"signal {signal.Signals(-proc.returncode).name}"
    text = proc.stdout + proc.stderr
    if "Traceback" in text:
        return "traceback"
    lines = [line for line in text.splitlines() if line.strip()]
    if proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "one-line error"
    return "success" if proc.returncode == 0 else f"exit {proc.returncode}"


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (hidden ones included)."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    """Temporary files or folders (`*.tmp-PID`, `.*.old-PID`) anywhere under `folder`."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)


class Tmpfs:
    """A small tmpfs mounted at `path` (root only); `read_only()` remounts it read-only."""

    def __init__(self, path: Path, size: str = "2m") -> None:
        self.path, self.size = path, size

    def __enter__(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)], check=True,
                       capture_output=True)
        return self

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)

    def fill(self, leave: int) -> None:
        """Write a filler file so that only about `leave` bytes stay free."""
        stats = os.statvfs(self.path)
        free = stats.f_bavail * stats.f_frsize
        with open(self.path / "filler", "ab") as handle:
            handle.write(bytes(max(0, free - leave)))

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.path)], capture_output=True)


def can_mount(tmp: Path) -> bool:
    try:
        with Tmpfs(tmp / "mount-probe", "64k"):
            return True
    except (subprocess.CalledProcessError, OSError):
        return False


def _record(results: list[dict[str, Any]], what: str, proc: subprocess.CompletedProcess, intact: bool,
            temp: list[str], expect: str = "") -> None:
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    end = ending(proc)
    results.append({"what": what, "ending": end, "intact": intact, "temporaries": temp,
                    "message": lines[-1][:200] if lines else "",
                    "ok": intact and not temp and (end == "success" or (end == "one-line error" and expect in lines[0]))})


def data_io_scenarios(tmp: Path, raw: Path, run: Path) -> tuple[list[dict[str, Any]], str]:
    """prepare-data and evaluate on a full disk, under RLIMIT_FSIZE and on a read-only folder."""
    results: list[dict[str, Any]] = []
    prepare = ["prepare-data", "nifti", raw, "--size", "16", "16", "--val", "vol0"]
    work = tmp / "io"
    work.mkdir()

    # file-size limit: needs no privileges
    for fsize in (4_000, 16_000, 64_000):
        out = work / f"fsize-{fsize}" / "data"
        out.parent.mkdir()
        proc = sftkd_process([*prepare, "--out", out], work, fsize)
        _record(results, f"prepare-data new folder, RLIMIT_FSIZE {fsize} B", proc,
                proc.returncode == 0 or not out.exists(), temporaries(out.parent), "File too large")
    evaluated = work / "evaluated"
    shutil.copytree(run, evaluated)
    first = sftkd_process(["evaluate", evaluated, "--device", "cpu"], work)
    assert first.returncode == 0, first.stdout + first.stderr
    for fsize in (500, 2_000, 6_000):
        before = digest(evaluated)
        proc = sftkd_process(["evaluate", evaluated, "--device", "cpu", "--split", "train"], work, fsize)
        _record(results, f"evaluate over a previous evaluation, RLIMIT_FSIZE {fsize} B", proc,
                proc.returncode == 0 or digest(evaluated) == before, temporaries(evaluated), "File too large")

    if not can_mount(tmp):
        return results, "tmpfs scenarios skipped (mount needs root)"

    # full disk: a tmpfs filled to leave a few kilobytes
    for leave in (0, 8_192, 32_768, 131_072):
        with Tmpfs(work / f"full-new-{leave}") as fs:
            fs.fill(leave)
            proc = sftkd_process([*prepare, "--out", fs.path / "data"], work)
            _record(results, f"prepare-data new folder, disk full ({leave // 1024} KiB free)", proc,
                    proc.returncode == 0 or not (fs.path / "data").exists(), temporaries(fs.path), "No space left")
        with Tmpfs(work / f"full-force-{leave}") as fs:
            made = sftkd_process([*prepare, "--out", fs.path / "data", "--acc", "4"], work)
            assert made.returncode == 0, made.stdout + made.stderr
            (fs.path / "data" / "notes.txt").write_text("the user's notes")
            fs.fill(leave)
            before = digest(fs.path / "data")
            proc = sftkd_process([*prepare, "--out", fs.path / "data", "--acc", "4,5", "--force"], work)
            after = digest(fs.path / "data")
            intact = after == before if proc.returncode else after.get("notes.txt") == before["notes.txt"]
            _record(results, f"prepare-data --force over a dataset, disk full ({leave // 1024} KiB free)", proc,
                    intact, temporaries(fs.path), "No space left")
        with Tmpfs(work / f"full-eval-{leave}") as fs:
            target = fs.path / "run"
            shutil.copytree(run, target)
            made = sftkd_process(["evaluate", target, "--device", "cpu"], work)
            assert made.returncode == 0, made.stdout + made.stderr
            fs.fill(leave)
            before = digest(target)
            proc = sftkd_process(["evaluate", target, "--device", "cpu", "--split", "train"], work)
            _record(results, f"evaluate over a previous evaluation, disk full ({leave // 1024} KiB free)", proc,
                    proc.returncode == 0 or digest(target) == before, temporaries(target), "No space left")

    # read-only: the run and a dataset on a tmpfs remounted read-only
    with Tmpfs(work / "read-only") as fs:
        target = fs.path / "run"
        shutil.copytree(run, target)
        made = sftkd_process([*prepare, "--out", fs.path / "data", "--acc", "4"], work)
        assert made.returncode == 0, made.stdout + made.stderr
        fs.read_only()
        before = digest(fs.path)
        for what, args in (
            ("evaluate into a read-only run", ["evaluate", target, "--device", "cpu"]),
            ("evaluate --amp bf16 (new folder) in a read-only run", ["evaluate", target, "--device", "cpu", "--amp", "bf16"]),
            ("prepare-data --force over a read-only dataset", [*prepare, "--out", fs.path / "data", "--acc", "4,5", "--force"]),
            ("prepare-data into a new folder on a read-only file system", [*prepare, "--out", fs.path / "new"]),
        ):
            started = time.perf_counter()
            proc = sftkd_process(args, work)
            _record(results, f"{what} ({time.perf_counter() - started:.1f} s)", proc, digest(fs.path) == before,
                    temporaries(fs.path), "read-only")
    return results, "tmpfs scenarios run"


def print_data_io(results: list[dict[str, Any]], note: str) -> None:
    endings = Counter(r["ending"] for r in results)
    print(f"  prepare-data / evaluate I/O faults: {len(results)} scenarios ({note}); endings: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(endings.items())))
    print(f"    previous outputs intact: {sum(r['intact'] for r in results)}/{len(results)}   "
          f"temporary files left: {sum(len(r['temporaries']) for r in results)}   "
          f"as expected: {sum(r['ok'] for r in results)}/{len(results)}")
    for r in results:
        print(f"    {'ok ' if r['ok'] else '!! '} {r['what']}: {r['ending']}, intact {r['intact']}"
              + (f", left {r['temporaries']}" if r["temporaries"] else ""))
        if r["ending"] != "success":
            print(f"         {r['message']}")


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--max-kills", type=int, default=5, help="kills chained in one trial, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spawn", action="store_true", help="python -m sftkd_cli processes instead of forks")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--data-io-only", action="store_true",
                        help="only the prepare-data / evaluate disk-full, file-size and read-only scenarios")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    warm_up()
    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="sftkd-faults-"))
    data = make_dataset(tmp)
    runs, logs = tmp / "runs", tmp / "logs"
    logs.mkdir()
    if args.data_io_only:
        proc = Proc(command(data, runs, "reference", resume=False), logs / "reference.log", args.spawn)
        proc.wait(600)
        results, note = data_io_scenarios(tmp, tmp / "raw", runs / "reference")
        print("fault injection summary (prepare-data / evaluate I/O only)")
        print_data_io(results, note)
        print(f"  wall time: {time.perf_counter() - started:.1f} s   (work folder: {tmp}{'' if args.keep else ', removed'})")
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0 if all(r["ok"] for r in results) else 1
    manifest = json.loads((data / "manifest.json").read_text())
    train_slices = manifest["slices"]["train"]

    durations = []
    for name in ("reference", "control"):
        proc = Proc(command(data, runs, name, resume=False), logs / f"{name}.log", args.spawn)
        proc.wait(600)
        durations.append(time.perf_counter() - proc.started)
        if proc.returncode != 0:
            print((logs / f"{name}.log").read_text(), file=sys.stderr)
            return 1
    reference = runs / "reference"
    control_differs = differences(runs / "control", reference)
    duration = sum(durations) / len(durations)

    tally = Tally()
    for index in range(args.trials):
        run_trial(index, data, runs, reference, duration, rng, args.max_kills, args.spawn, logs, tally)

    steps = -(-train_slices // BATCH)
    saves_per_epoch = steps + 1  # steps-1 mid-epoch + best (improves every epoch here) + last
    calls = sorted({1, 2, steps, steps + 1, saves_per_epoch + 2, int(rng.integers(3, EPOCHS * saves_per_epoch))})
    disk = [disk_full_scenario(c, data, runs, reference) for c in calls]
    disk.append(disk_full_scenario(3, data, runs, reference, bare=True))

    print("fault injection summary")
    print(f"  dataset: {len(manifest['volumes'])} volumes 16x16 at 4x, {train_slices} training slices; D2C2, "
          f"{EPOCHS} epochs x {steps} steps, batch {BATCH}, train.checkpoint_every=1; "
          f"processes: {'spawned' if args.spawn else 'forked'}")
    print(f"  uninterrupted run (mean of 2): {duration:.2f} s (kill delays uniform in [0, {duration:.2f}] s); "
          f"control run identical to reference: {'yes' if not control_differs else 'NO ' + str(control_differs)}")
    print(f"  trials: {tally.trials}   kills: {tally.kills}   resumes: {tally.resumes}   "
          f"restarts (killed before recipe.yaml): {tally.restarts}   processes: {tally.starts}")
    print(f"  kills inside an atomic write (the killed process's temp file left behind): {tally.during_write}   "
          f"kill times after the process had finished: {tally.missed}")
    print("  where the kills landed: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.positions.items())))
    print(f"  corrupt checkpoints / unreadable files after a kill: {len(tally.corrupt)}")
    print(f"  mismatching final weights or history: {len(tally.mismatches)}")
    print(f"  failed resumes: {len(tally.failures)}")
    print(f"  stale temp files left in finished runs: {tally.stale_temp_files}")
    for line in tally.corrupt + tally.mismatches + tally.failures:
        print(f"    ! {line}")
    print(f"  disk full (checkpoint write -> OSError ENOSPC on call N, half a file written): {len(disk)} scenarios")
    for d in disk:
        kind = "bare OSError(28)" if d["bare"] else "OSError(ENOSPC, strerror)"
        print(f"    call {d['call']:>2} ({d['file']}, {kind}): exit {d['exit']}, one line: {d['one_line']}, "
              f"says disk full: {d['says_disk_full']}, previous intact: {d['previous_intact']}, "
              f"temp files: {len(d['temp_files'])}, resume exit {d['resume_exit']}, "
              f"identical after resume: {d['identical_after_resume']}")
        print(f"       {d['message']}")
    io_results, io_note = data_io_scenarios(tmp, tmp / "raw", reference)
    print_data_io(io_results, io_note)
    wall = time.perf_counter() - started
    print(f"  wall time: {wall:.1f} s   (work folder: {tmp}{'' if args.keep else ', removed'})")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    disk_ok = all(d["exit"] == 2 and d["previous_intact"] and not d["temp_files"] and d["identical_after_resume"]
                  and (d["bare"] or (d["one_line"] and d["says_disk_full"])) for d in disk)
    bad = (tally.corrupt or tally.mismatches or tally.failures or control_differs or not disk_ok
           or not all(r["ok"] for r in io_results))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
