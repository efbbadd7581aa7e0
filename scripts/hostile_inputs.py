#!/usr/bin/env python
"""Replay hostile or unlucky inputs through the real `sftkd` CLI and classify what each one ends in.

Not run by the test suite (it takes about ten minutes on 2 CPUs). Usage, from the repository root:

    .venv/bin/python scripts/hostile_inputs.py [--json REPORT.json] [--jobs 2] [--timeout 60]
                                               [--memory-gib 4] [--only 'ckpt-*'] [--list] [--keep]

What it does, in a temporary folder it makes (and removes unless --keep):
1. writes NIfTI phantoms with nibabel and prepares them with `sftkd prepare-data nifti` (16x16,
   4x and 5x; a 20x20 twin), trains tiny D2C2 runs (1 epoch, train.max_steps_per_epoch=2,
   train.threads=1, CPU): a teacher, a second teacher (another seed), a D3C2 run, an AT student
   distilled from the teacher; evaluates them and exports the teacher;
2. replays every case of CASES (issue 13's classes, numbered as there) as a subprocess
   `python -m sftkd_cli ...` with a timeout (default 60 s), a 4 GiB address-space limit (so that
   a YAML alias bomb or a lying size ends in MemoryError, not in a frozen machine), HOME set to the
   case's own folder, each case in its own folder with its own copies of data and runs;
3. classifies each outcome as exactly one of:
   - `clean error`: exit 2 (or the case's own clean codes, e.g. 143 after SIGTERM), stderr is
     exactly one line starting with `error:`, no Traceback;
   - `ok`: exit 0;
   - `traceback`: "Traceback" in stdout or stderr;
   - `hang`: the timeout passed (the whole process group is killed);
   - `signal`: killed by a signal (negative return code, or 134/136/139: abort/FPE/segfault);
   - `other exit`: anything else (several lines, a usage box, another exit code);
   - `skipped`: this machine cannot simulate the case (say why);
   and checks invariants: the payload marker file of a crafted checkpoint/YAML/mask never appears
   (`payload executed`); every protected file (sentinel user files, the dataset, other runs, the
   shared fixtures) is byte-identical afterwards, compared by sha256 of every file, without ever
   opening a FIFO or device (`data destroyed`); strict folders gain no files (`written into user
   folder`); a case that must be refused but exits 0 is `wrong result accepted`; a case that
   should succeed but is refused is `unexpected refusal` (reported, not fatal); per-case
   post-checks (a symlink still a symlink, a FIFO still a FIFO, no temporary folders left) give
   `post-check failed`.

The table shows, per case: id, issue class, expectation, outcome, problems and the first line of
stderr (for a traceback, its last line, the exception; the temporary folder is written $TMP).
The summary counts outcomes and problems and lists every case that is not a clean error or an
expected success. --json writes the summary and every case (with the last 3,000 characters of
its stderr and 1,500 of its stdout). Exit 1 if any case had a traceback, hang, signal, payload
executed, data destroyed, written into user folder, wrong result accepted or post-check failed.
A MemoryError traceback happened under the address-space limit: without it the same input
would have taken that memory (or the machine's).

Simulated and not: a read-only folder is a folder with the immutable attribute (`chattr +i`,
which stops root too; removed after the case), or a path below a regular file; a full disk is a
file-size limit (RLIMIT_FSIZE with SIGXFSZ ignored, as EFBIG); nothing is mounted. Device files
are private ones made with os.mknod inside the temporary folder (never the real /dev/null);
`/dev/zero` is only ever the target of a symlink that sftkd is asked to read. YAML bombs are
9 levels of 9-fold aliases (they expand only if sftkd expands them; the memory limit and the
timeout bound the damage); the gzip bomb declares 4 GiB of int16 and holds 512 MiB of zeros
(about 0.5 MB compressed). Not simulated: a real ENOSPC (only EFBIG), a read-only mount (EROFS),
signals during training.
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import json
import os
import pickle
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 4 << 30  # bytes of address space per CLI process (--memory-gib)
TINY = ["train.epochs=1", "train.batch_size=2", "train.threads=1", "train.max_steps_per_epoch=2",
        "data.max_val_slices=1", "eval.latency_slices=1", "train.device=cpu"]
BENCH = ["bench", "--only", "infer", "--repeats", "1", "--warmup", "0", "--size", "16", "--roof-size", "16",
         "--device", "cpu", "--threads", "1"]
MARKER = "PWNED"  # the file every payload writes into its case folder

# outcomes and problems
CLEAN, OK, TRACEBACK, HANG, SIGNAL, OTHER, SKIPPED = "clean error", "ok", "traceback", "hang", "signal", "other exit", "skipped"
OUTCOMES = (CLEAN, OK, TRACEBACK, HANG, SIGNAL, OTHER, SKIPPED)
PAYLOAD, DESTROYED, WRITTEN, WRONG, REFUSED, POST = (
    "payload executed", "data destroyed", "written into user folder", "wrong result accepted", "unexpected refusal",
    "post-check failed")
FATAL_OUTCOMES = {TRACEBACK, HANG, SIGNAL}
FATAL_PROBLEMS = {PAYLOAD, DESTROYED, WRITTEN, WRONG, POST}

# issue 13's classes
K1, K2, K3, K4, K5, K6 = ("1 checkpoint code", "2 --force/--name", "3 device/symlink out", "4 prepare --force",
                          "5 run eats its source", "6 YAML bombs")
K7, K8, K9, K10, K11, K12 = ("7 disk full", "8 read-only/long", "9 sizes that lie", "10 wrong results",
                             "11 wrong last.pt", "12 other")


# ----------------------------------------------------------------------------- data model


@dataclass
class Completed:
    """What a CLI process (or a custom orchestration of several) ended in."""

    rc: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    seconds: float = 0.0
    skip: str | None = None  # the case could not be simulated here
    problems: list[str] = field(default_factory=list)  # found by a custom runner (e.g. two successes)


@dataclass
class Invocation:
    """One prepared case: the argv after `python -m sftkd_cli`, and what must hold afterwards."""

    argv: list[str]
    protect: list[Path] = field(default_factory=list)  # files/folders no byte of which may change or vanish
    strict: list[Path] = field(default_factory=list)  # folders that may not gain entries either
    cwd: Path | None = None
    fsize: int = 0  # RLIMIT_FSIZE in bytes (0 = none): a full disk
    check: Callable[[], str | None] | None = None  # post-condition: a problem, or None
    runner: Callable[[Invocation, Path, float], Completed] | None = None  # custom orchestration
    clean_codes: tuple[int, ...] = (2,)
    skip: str | None = None
    immutable: list[Path] = field(default_factory=list)  # folders given chattr +i for the run


@dataclass(frozen=True)
class Case:
    """A case as data: id, issue class, expectation (error | ok | either) and its argv builder."""

    id: str
    klass: str
    expect: str
    build: Callable[[Ctx], Invocation]


@dataclass
class Fixture:
    """The shared, read-only material every case copies from."""

    root: Path
    raw: Path  # 5 NIfTI phantoms vol0..vol4 (28x24x3)
    data: Path  # prepared 16x16, 4x and 5x; val vol1, test vol2
    data20: Path  # the same volumes at 20x20
    runs: Path  # teacher, teacher-b, wide (D3C2), kd (AT from teacher); teacher and kd evaluated
    exported: Path  # the teacher as TorchScript, with its card


@dataclass
class Result:
    id: str
    klass: str
    expect: str
    outcome: str
    problems: list[str]
    rc: int | None
    seconds: float
    stderr_line: str
    stderr_tail: str = ""
    stdout_tail: str = ""


# ----------------------------------------------------------------------------- payloads


class WriteFile:
    """Unpickling this writes `marker` (what a crafted checkpoint could do with any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "payload ran"))


class System:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def write_payload(path: Path, marker: Path, kind: str = "zip", base: Path | None = None) -> Path:
    """A crafted checkpoint at `path` whose unpickling creates `marker`.

    kinds: zip (torch.save), legacy (torch's pre-1.6 format), system (os.system in a zip),
    pickle (a bare pickle named .pt), nested (a real sftkd checkpoint `base` with the payload
    hidden among its weights).
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "nested":
        assert base is not None
        state = torch.load(base, weights_only=True)
        state["models"]["model"]["payload"] = WriteFile(marker)
        torch.save(state, path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"format": 1, "models": WriteFile(marker)}, protocol=2))
    else:
        obj = {"format": 1, "models": System(marker) if kind == "system" else WriteFile(marker)}
        torch.save(obj, path, _use_new_zipfile_serialization=kind != "legacy")
    return path


def yaml_bomb(levels: int = 9) -> str:
    """A YAML flow mapping of `levels` levels of 9-fold aliases (9**levels leaves if expanded)."""
    parts = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        parts.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "{" + ", ".join(parts) + "}"


DEEP = "[" * 50_000 + "]" * 50_000


# ----------------------------------------------------------------------------- snapshots


def entry_digest(path: Path) -> str:
    """What a file system entry is, without opening FIFOs or devices or following symlinks."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return f"device:{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    return f"mode:{st.st_mode:o}"


def snapshot(root: Path) -> dict[str, str]:
    """Path -> digest of `root` and everything below it (symlinks not followed)."""
    if not os.path.lexists(root):
        return {}
    found = {".": entry_digest(root)}
    if found["."] == "dir":
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder) / name
                found[path.relative_to(root).as_posix()] = entry_digest(path)
    return found


def compare(before: dict[str, str], after: dict[str, str]) -> tuple[list[str], list[str]]:
    """(entries changed or gone, entries added)."""
    changed = [k for k, v in before.items() if after.get(k) != v]
    added = [k for k in after if k not in before]
    return changed, added


# ----------------------------------------------------------------------------- running the CLI

#: sets the resource limits, then becomes `python -m sftkd_cli ARGS` (limits survive exec)
LAUNCHER = """
import os, resource, signal, sys
memory, fsize = int(sys.argv[1]), int(sys.argv[2])
if memory:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
if fsize:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
os.execv(sys.executable, [sys.executable, "-m", "sftkd_cli", *sys.argv[3:]])
"""


def start(argv: list[str], case_dir: Path, cwd: Path | None = None, fsize: int = 0) -> subprocess.Popen:
    """Start `python -m sftkd_cli ARGV` in its own process group, output to pipes.

    Pipes, not files: a file-size limit would also cut the process's own stdout/stderr files.
    """
    env = {**os.environ, "HOME": str(case_dir / "home"), "MPLCONFIGDIR": str(case_dir.parent.parent / "mpl"),
           "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    (case_dir / "home").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, str(MEMORY_LIMIT), str(fsize), *argv],
                            cwd=cwd or case_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float, started: float) -> Completed:
    """Wait for `proc`; past `timeout`, kill its process group (ours, by its id)."""
    timed_out = False
    try:
        out, err = proc.communicate(timeout=max(0.1, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
    return Completed(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), timed_out,
                     time.monotonic() - started)


def run_cli(inv: Invocation, case_dir: Path, timeout: float) -> Completed:
    """The plain runner: one CLI process."""
    started = time.monotonic()
    return finish(start(inv.argv, case_dir, inv.cwd, inv.fsize), timeout, started)


def classify(done: Completed, clean_codes: tuple[int, ...]) -> str:
    """One outcome per process (see the module docstring)."""
    if done.skip:
        return SKIPPED
    if done.timed_out:
        return HANG
    if done.rc is not None and (done.rc < 0 or done.rc in (134, 136, 139)):
        return SIGNAL
    if "Traceback" in done.stderr or "Traceback" in done.stdout:
        return TRACEBACK
    if done.rc == 0:
        return OK
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.rc in clean_codes and len(lines) == 1 and lines[0].startswith("error:"):
        return CLEAN
    return OTHER


def stderr_line(done: Completed, outcome: str) -> str:
    """The first stderr line; for a traceback its last line (the exception), which says more."""
    if done.skip:
        return done.skip
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    if outcome == TRACEBACK and lines:
        return lines[-1][:300]
    if not lines and outcome == HANG:
        return "(no output before the timeout)"
    return lines[0][:300] if lines else ""


# ----------------------------------------------------------------------------- the case context


class Ctx:
    """A case's private folder and helpers that build material in it from the shared fixture."""

    def __init__(self, fx: Fixture, case_dir: Path) -> None:
        self.fx = fx
        self.dir = case_dir
        self.marker = case_dir / MARKER
        self.runs = case_dir / "runs"

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def write(self, rel: str, text: str | bytes) -> Path:
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def data(self, name: str = "data", source: Path | None = None) -> Path:
        """A private copy of the prepared dataset."""
        return Path(shutil.copytree(source or self.fx.data, self.dir / name, symlinks=True))

    def raw(self, name: str = "raw") -> Path:
        return Path(shutil.copytree(self.fx.raw, self.dir / name))

    def run(self, name: str = "teacher", as_name: str | None = None, runs: Path | None = None) -> Path:
        """A private copy of a shared run; paths in its recipe and checkpoints point at this case's runs folder."""
        import torch

        runs = runs or self.runs
        dest = Path(shutil.copytree(self.fx.runs / name, runs / (as_name or name)))
        recipe = dest / "recipe.yaml"
        recipe.write_text(recipe.read_text().replace(str(self.fx.runs), str(runs)))
        for checkpoint in (dest / "checkpoints").glob("*.pt"):  # a KD run's checkpoint names its teacher
            state = torch.load(checkpoint, weights_only=True)
            if str(state.get("teacher_run", "")).startswith(str(self.fx.runs)):
                old = entry_digest(checkpoint)  # its sha256, as metrics.json records it
                state["teacher_run"] = state["teacher_run"].replace(str(self.fx.runs), str(runs))
                torch.save(state, checkpoint)
                new = entry_digest(checkpoint)
                for metrics in dest.rglob("metrics.json"):  # the copy's scores are of the rewritten file
                    metrics.write_text(metrics.read_text().replace(old, new))
        return dest

    def payload(self, rel: str = "evil.pt", kind: str = "zip") -> Path:
        return write_payload(self.dir / rel, self.marker, kind, self.fx.runs / "teacher" / "checkpoints" / "best.pt")

    def poisoned(self, name: str = "teacher", which: str = "best", kind: str = "zip") -> Path:
        run = self.run(name)
        write_payload(run / "checkpoints" / f"{which}.pt", self.marker, kind, self.fx.runs / name / "checkpoints" / "best.pt")
        return run

    def train(self, name: str = "r", *extra: object, data: Path | None = None, runs: Path | None = None) -> list[str]:
        """A tiny D2C2 train-teacher command line."""
        return strs("train-teacher", "--model", "D2C2", "--data", data or self.fx.data, "--runs-dir", runs or self.runs,
                    "--name", name, *tiny_without(extra), *extra)

    def distill(self, teacher: Path, name: str = "kd", *extra: object, data: Path | None = None) -> list[str]:
        return strs("distill", "--teacher", teacher, "--student", "D2C2", "--method", "at", "--data", data or self.fx.data,
                    "--runs-dir", self.runs, "--name", name, *tiny_without(extra), *extra)

    def prepare(self, raw: Path, out: Path, *extra: object) -> list[str]:
        return strs("prepare-data", "nifti", raw, "--out", out, "--size", "16", "16", "--val", "vol1", *extra)

    def plan(self, runs_dir: str | Path, data_out: str | Path | None = None, extra: str = "",
             stages: str = "stages:\n  teacher: {}\n", name: str = "plan.yaml") -> Path:
        text = (f"plan: 1\ndata:\n  source: prepared\n  out: '{data_out or self.fx.data}'\nruns_dir: '{runs_dir}'\n"
                "base:\n  train.epochs: 1\n  train.batch_size: 2\n  train.threads: 1\n  train.max_steps_per_epoch: 2\n"
                "  train.device: cpu\n  data.max_val_slices: 1\n  eval.latency_slices: 1\n  sft.teacher: D2C2\n"
                "  sft.student: D2C2\n" + extra + stages)
        return self.write(name, text)

    def compare_pair(self) -> list[Path]:
        """The evaluated teacher and AT student, copied."""
        return [self.run("teacher"), self.run("kd")]

    def devnull(self, rel: str) -> Path | None:
        """A private character device (1, 3) like /dev/null, or None where mknod is not permitted."""
        path = self.dir / rel
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except OSError:
            return None
        return path

    def fifo(self, rel: str) -> Path:
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        return path

    def link(self, rel: str, target: str | Path) -> Path:
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        return path

    def manifest(self, data: Path) -> dict:
        return json.loads((data / "manifest.json").read_text())

    def set_manifest(self, data: Path, manifest: dict) -> None:
        (data / "manifest.json").write_text(json.dumps(manifest))


def strs(*args: object) -> list[str]:
    return [str(a) for a in args]


def tiny_without(extra: tuple[object, ...]) -> list[str]:
    """TINY less the keys an override in `extra` sets (a key set twice to two values is refused)."""
    given = {str(e).split("=", 1)[0] for e in extra if "=" in str(e)}
    return [t for t in TINY if t.split("=", 1)[0] not in given]


# ----------------------------------------------------------------------------- post-checks


def still_link(link: Path, target: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        if not link.is_symlink():
            return f"{link.name}: the symlink was replaced"
        return None if Path(os.readlink(link)) == target else f"{link.name}: the symlink now points elsewhere"
    return check


def still_kind(path: Path, test: Callable[[int], bool], what: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if not os.path.lexists(path) or not test(os.lstat(path).st_mode):
            return f"{path.name}: the {what} was replaced or removed"
        return None
    return check


def no_leftovers(folder: Path, stem: str) -> Callable[[], str | None]:
    """No `.<stem>.tmp-*` left in `folder`, `<stem>` absent or a complete dataset, and no `.<stem>.lock`
    beside an absent dataset (beside a finished one the empty lock file stays by design)."""
    def check() -> str | None:
        out = folder / stem
        complete = (out / "manifest.json").is_file()
        left = sorted(p.name for p in folder.iterdir()
                      if p.name.startswith(f".{stem}.") and not (complete and p.name == f".{stem}.lock"))
        if left:
            return f"left behind: {', '.join(left)}"
        if out.exists() and not complete:
            return f"{stem}/ exists without a manifest.json (half-written)"
        return None
    return check


def exists(path: Path, also_absent: Path | None = None) -> Callable[[], str | None]:
    def check() -> str | None:
        if not path.exists():
            return f"{path} was not created"
        if also_absent is not None and os.path.lexists(also_absent):
            return f"{also_absent} was created"
        return None
    return check


def absent(path: Path) -> Callable[[], str | None]:
    return lambda: f"{path.name} was created" if os.path.lexists(path) else None


# ----------------------------------------------------------------------------- custom runners


def signal_runner(sig: signal.Signals, stem: str = "out") -> Callable[[Invocation, Path, float], Completed]:
    """Send `sig` once prepare-data's temporary folder `.<stem>.tmp-*` appears (mid-write)."""
    def run(inv: Invocation, case_dir: Path, timeout: float) -> Completed:
        started = time.monotonic()
        proc = start(inv.argv, case_dir, inv.cwd)
        landed = False
        while proc.poll() is None and time.monotonic() - started < timeout:
            if any(p.name.startswith(f".{stem}.tmp") for p in case_dir.iterdir()):
                time.sleep(0.05)
                if proc.poll() is None:
                    os.kill(proc.pid, sig)
                    landed = True
                break
            time.sleep(0.005)
        done = finish(proc, timeout, started)
        if not landed and not done.timed_out:
            done.skip = "prepare-data finished before the signal could land mid-write"
        return done
    return run


def concurrent_runner(other: list[str]) -> Callable[[Invocation, Path, float], Completed]:
    """Start the case's argv and `other` at the same moment; both succeeding means one result was lost."""
    def run(inv: Invocation, case_dir: Path, timeout: float) -> Completed:
        started = time.monotonic()
        first = start(inv.argv, case_dir, inv.cwd)
        second = start(other, case_dir, inv.cwd)
        a, b = finish(first, timeout, started), finish(second, timeout, started)
        if a.rc == 0 and b.rc == 0:
            a.problems.append(f"{WRONG}: both prepare-data runs on one folder reported success")
            return a
        return b if a.rc == 0 else a
    return run


# ----------------------------------------------------------------------------- cases: 1 code from a checkpoint


def ckpt_case(entry: str, kind: str) -> Callable[[Ctx], Invocation]:
    """A crafted checkpoint of `kind` at one entry point; the payload must never run."""
    def build(c: Ctx) -> Invocation:
        if entry == "init-from-file":
            return Invocation(c.train("r", "--init-from", c.payload(kind=kind)))
        if entry == "init-from-run":
            src = c.poisoned("teacher", kind=kind)
            return Invocation(c.train("r", "--init-from", src))
        if entry == "distill-teacher":
            return Invocation(c.distill(c.poisoned("teacher", kind=kind)))
        if entry == "distill-init-from":
            return Invocation(c.distill(c.run("teacher"), "kd", "--init-from", c.payload(kind=kind)))
        if entry == "evaluate-checkpoint-file":  # inside the run, so that no path rule refuses it unread
            run = c.run("teacher")
            evil = c.payload("runs/teacher/checkpoints/evil.pt", kind=kind)
            return Invocation(strs("evaluate", run, "--device", "cpu", "--checkpoint", evil))
        if entry == "evaluate-checkpoint-loose-file":
            return Invocation(strs("evaluate", c.run("teacher"), "--device", "cpu", "--checkpoint", c.payload(kind=kind)))
        if entry == "evaluate-run":
            return Invocation(strs("evaluate", c.poisoned("teacher", kind=kind), "--device", "cpu"))
        if entry == "evaluate-last":
            return Invocation(strs("evaluate", c.poisoned("teacher", "last", kind), "--device", "cpu", "--checkpoint", "last"))
        if entry == "resume":
            c.poisoned("teacher", "last", kind)
            return Invocation(c.train("teacher", "--resume", "train.epochs=2"))
        if entry == "export-torchscript":
            return Invocation(strs("export", c.poisoned("teacher", kind=kind), "--format", "torchscript", "--out", c.path("m.ts")))
        if entry == "export-onnx":
            return Invocation(strs("export", c.poisoned("teacher", kind=kind), "--format", "onnx", "--out", c.path("m.onnx")))
        if entry == "compare-attention-kd":
            teacher, kd = c.run("teacher"), c.poisoned("kd", kind=kind)
            return Invocation(strs("compare", teacher, kd, "--attention", c.path("fig", "att")))
        if entry == "compare-attention-teacher":
            teacher, kd = c.poisoned("teacher", kind=kind), c.run("kd")
            return Invocation(strs("compare", teacher, kd, "--attention", c.path("fig", "att")))
        if entry in ("reproduce-dry-run-last", "reproduce-dry-run-best"):
            c.poisoned("teacher", "last" if entry.endswith("last") else "best", kind)
            return Invocation(strs("reproduce", c.plan(c.runs), "--dry-run"))
        if entry == "evaluate-exported-pickle":
            evil = c.payload("model.ts", kind=kind)
            card = json.loads(Path(f"{c.fx.exported}.card.json").read_text())
            card["file"] = "model.ts"
            c.write("model.ts.card.json", json.dumps(card))
            return Invocation(strs("evaluate", c.run("teacher"), "--device", "cpu", "--exported", evil))
        raise ValueError(entry)
    return build


CKPT_ENTRIES = ["init-from-file", "init-from-run", "distill-teacher", "distill-init-from", "evaluate-checkpoint-file",
                "evaluate-checkpoint-loose-file",
                "evaluate-run", "evaluate-last", "resume", "export-torchscript", "export-onnx", "compare-attention-kd",
                "compare-attention-teacher", "reproduce-dry-run-last", "reproduce-dry-run-best", "evaluate-exported-pickle"]
CKPT_VARIANTS = {"legacy": ["init-from-file", "distill-teacher", "evaluate-checkpoint-file", "evaluate-run", "export-torchscript"],
                 "system": ["init-from-file", "evaluate-run", "resume"],
                 "pickle": ["init-from-file", "evaluate-checkpoint-file", "distill-teacher"],
                 "nested": ["init-from-file", "evaluate-checkpoint-file", "evaluate-run"]}


def yaml_payload(where: str) -> Callable[[Ctx], Invocation]:
    """A YAML python tag that would run a shell command if the YAML were loaded unsafely."""
    def build(c: Ctx) -> Invocation:
        tag = f"!!python/object/apply:os.system ['touch {c.marker}']"
        if where == "recipe":
            return Invocation(strs("train-teacher", c.write("r.yaml", f"train:\n  seed: {tag}\n"), "--print-recipe"))
        if where == "plan":
            return Invocation(strs("reproduce", c.plan(c.runs, extra=f"  train.seed: {tag}\n"), "--dry-run"))
        return Invocation(strs("train-teacher", f"train.seed={tag}", "--print-recipe"))
    return build


def mask_payload(kind: str) -> Callable[[Ctx], Invocation]:
    """A mask file that is a pickle (object array) whose unpickling writes the marker."""
    def build(c: Ctx) -> Invocation:
        array = np.empty(1, dtype=object)
        array[0] = WriteFile(c.marker)
        path = c.path(f"mask.{kind}")
        if kind == "npy":
            np.save(path, array, allow_pickle=True)
        else:
            np.savez(path, mask=array)
        raw = c.raw()
        return Invocation(c.prepare(raw, c.path("out"), "--acc", "4", "--mask-file", f"4={path}"), protect=[raw])
    return build


# ----------------------------------------------------------------------------- cases: 2 --force and --name


def user_home(c: Ctx) -> Path:
    home = c.path("home")
    (home / "Documents" / "taxes").mkdir(parents=True, exist_ok=True)
    (home / "Documents" / "notes.txt").write_text("mine")
    (home / "Documents" / "taxes" / "2026.pdf").write_bytes(b"%PDF-1.7 user data")
    return home


def name_case(name: str, force: bool, with_runs: bool = True, override: bool = False) -> Callable[[Ctx], Invocation]:
    """Train with a hostile run name next to another run and the dataset; nothing may be touched."""
    def build(c: Ctx) -> Invocation:
        work = c.path("work")
        runs = work / "runs"
        if with_runs:
            c.run("teacher", runs=runs)
        data = c.data("work/data")
        c.write("work/keep.txt", "user data beside the runs folder")
        extra = ["--force"] if force else []
        argv = c.train("r", *extra, data=data, runs=runs)
        if override:
            argv = [a for a in argv if a not in ("--name", "r")] + [f"run.name={name}"]
        else:
            argv[argv.index("--name") + 1] = str(c.path("abs-target")) if name == ABSOLUTE else name
        return Invocation(argv, protect=[work], strict=[work])
    return build


ABSOLUTE = "<an absolute path inside the case folder>"


def documents_case(force: bool) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        home = user_home(c)
        return Invocation(c.train("Documents", *(["--force"] if force else []), runs=home),
                          protect=[home / "Documents"], strict=[home / "Documents"])
    return build


def user_recipe_case(c: Ctx) -> Invocation:
    """A user's project folder that happens to hold a recipe.yaml of their own (not a run)."""
    project = c.path("projects", "soup")
    c.write("projects/soup/recipe.yaml", "ingredients:\n  - carrots\n  - onions\n")
    c.write("projects/soup/notes.txt", "grandma's")
    return Invocation(c.train("soup", "--force", runs=c.path("projects")), protect=[project])


def user_valid_recipe_case(c: Ctx) -> Invocation:
    """A user's folder holding their own valid sftkd recipe (named recipe.yaml) and notes: not a run."""
    folder = c.path("experiments", "mine")
    c.write("experiments/mine/recipe.yaml", "train:\n  epochs: 5\n")
    c.write("experiments/mine/notes.txt", "ideas")
    c.write("experiments/mine/checkpoints/README.txt", "my own folder of checkpoints")
    return Invocation(c.train("mine", "--force", runs=c.path("experiments")), protect=[folder])


def ok_name_case(name: str) -> Callable[[Ctx], Invocation]:
    """A name that is one plain folder name but reads as another YAML type: the run folder is literal."""
    def build(c: Ctx) -> Invocation:
        return Invocation(c.train(name), check=exists(c.runs / name / "checkpoints" / "best.pt"))
    return build


def force_keeps_user_files(c: Ctx) -> Invocation:
    run = c.run("teacher")
    c.write("runs/teacher/NOTES.md", "why this run exists")
    c.write("runs/teacher/analysis/plot.py", "print(1)")
    outside = c.path("elsewhere")
    c.write("elsewhere/metrics.json", "{}")
    (run / "eval-linked").symlink_to(outside, target_is_directory=True)
    return Invocation(c.train("teacher", "--force"),
                      protect=[run / "NOTES.md", run / "analysis", outside, run / "eval-linked"])


def runs_dir_is_file(c: Ctx) -> Invocation:
    f = c.write("runs-file", "a regular file")
    return Invocation(c.train("r", runs=f), protect=[f])


# ----------------------------------------------------------------------------- cases: 3 outputs


def output_case(command: str, how: str) -> Callable[[Ctx], Invocation]:
    """compare --out / export --out / bench --json aimed at a hostile path."""
    def build(c: Ctx) -> Invocation:
        suffix = {"compare": ".csv", "export": ".ts", "bench": ".json"}[command]
        protect: list[Path] = []
        check = None
        immutable: list[Path] = []
        skip = None
        if how == "symlink":
            target = c.write(f"results/real{suffix}", "old content")
            out = c.link(f"latest{suffix}", target)
            check = still_link(out, target)
        elif how == "symlink-to-sentinel-dir":
            c.write("precious/diary.txt", "dear diary")
            out = c.link(f"latest{suffix}", c.path("precious"))
            protect = [c.path("precious")]
            check = still_link(out, c.path("precious"))
        elif how == "dangling-symlink":
            out = c.link(f"latest{suffix}", c.path("missing", f"x{suffix}"))
        elif how == "symlink-loop":
            c.link("loop-a", c.path("loop-b"))
            out = c.link("loop-b", c.path("loop-a"))
            check = still_link(out, c.path("loop-a"))
        elif how == "fifo":
            out = c.fifo(f"pipe{suffix}")
            check = still_kind(out, stat.S_ISFIFO, "FIFO")
        elif how == "device":
            out = c.devnull(f"null{suffix}") or c.path(f"null{suffix}")
            if not out.exists():
                skip = "os.mknod not permitted here"
            check = still_kind(out, stat.S_ISCHR, "device file")
        elif how == "folder":
            out = c.path(f"folder{suffix}")
            c.write(f"folder{suffix}/keep.txt", "user file")
            protect = [out]
        elif how == "long-name":
            out = c.path("x" * 260 + suffix)
        elif how == "below-file":
            c.write("plainfile", "a regular file")
            out = c.path("plainfile", f"out{suffix}")
            protect = [c.path("plainfile")]
        elif how == "immutable-dir":
            c.write("locked/keep.txt", "user file")
            out = c.path("locked", f"out{suffix}")
            immutable = [c.path("locked")]
            protect = [c.path("locked")]
        else:
            raise ValueError(how)
        if command == "compare":
            argv = strs("compare", *c.compare_pair(), "-f", "csv", "--out", out)
        elif command == "export":
            argv = strs("export", c.run("teacher"), "--format", "torchscript", "--out", out)
        else:
            argv = strs(*BENCH, "--json", out)
        return Invocation(argv, protect=protect, check=check, immutable=immutable, skip=skip)
    return build


def attention_case(how: str) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        pair = c.compare_pair()
        if how == "below-file":
            c.write("plainfile", "x")
            stem = c.path("plainfile", "att")
        else:
            stem = c.path("y" * 260)
        return Invocation(strs("compare", *pair, "--attention", stem), protect=[c.path("plainfile")] if how == "below-file" else [])
    return build


# ----------------------------------------------------------------------------- cases: 4 prepare-data --force and overlaps


def foreign_manifest(force: bool) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        out = c.path("webapp")
        c.write("webapp/manifest.json", '{"name": "my-web-app", "version": "1.0", "start_url": "/"}')
        c.write("webapp/index.html", "<html>my app</html>")
        c.write("webapp/static/app.js", "console.log(1)")
        return Invocation(c.prepare(c.raw(), out, *(["--force"] if force else [])), protect=[out], strict=[out])
    return build


def prepare_force_keeps_user_files(c: Ctx) -> Invocation:
    data = c.data()
    notes = c.write("data/notes.txt", "my notes on this dataset")
    fig = c.write("data/figures/fig1.png", b"\x89PNG user figure")
    mask = c.write("data/masks/my-mask.npy", b"user mask")
    return Invocation(c.prepare(c.raw(), data, "--acc", "4", "--force"), protect=[notes, fig, mask])


def prepare_user_file_same_name(c: Ctx) -> Invocation:
    raw = c.raw()
    data = c.data()
    (data / "vol4.h5").unlink()
    manifest = c.manifest(data)
    # the dataset as prepared without vol4; the user then puts their own vol4.h5 there
    manifest["volumes"].pop("vol4", None)
    for split in manifest["splits"].values():
        if "vol4" in split:
            split.remove("vol4")
    c.set_manifest(data, manifest)
    c.write("data/vol4.h5", "the user's own file, not listed by the manifest")
    return Invocation(c.prepare(raw, data, "--force"), protect=[data / "vol4.h5"])


def fake_manifest_lists_outside(c: Ctx) -> Invocation:
    """A manifest that looks like sftkd's but lists a file outside the dataset: --force must not delete it."""
    data = c.data()
    secret = c.write("secret.txt", "outside the dataset")
    manifest = c.manifest(data)
    first = next(iter(manifest["volumes"]))
    manifest["volumes"][first]["file"] = "../secret.txt"
    c.set_manifest(data, manifest)
    return Invocation(c.prepare(c.raw(), data, "--acc", "4", "--force"), protect=[secret])


def prepare_out_case(how: str) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        raw = c.raw()
        if how == "inside-root":
            return Invocation(c.prepare(raw, raw / "out"), protect=[raw], strict=[raw])
        if how == "is-root":
            return Invocation(c.prepare(raw, raw), protect=[raw], strict=[raw])
        if how == "root-inside-out":
            outer = c.path("outer")
            inner = Path(shutil.copytree(raw, outer / "raw"))
            return Invocation(c.prepare(inner, outer, "--force"), protect=[outer], strict=[outer])
        if how == "is-file":
            f = c.write("out-file", "a regular file")
            return Invocation(c.prepare(raw, f, "--force"), protect=[f])
        if how == "user-folder":
            out = c.path("mine")
            c.write("mine/thesis.tex", "\\documentclass{article}")
            return Invocation(c.prepare(raw, out, "--force"), protect=[out], strict=[out])
        raise ValueError(how)
    return build


def overlap_case(layout: str, dry: bool) -> Callable[[Ctx], Invocation]:
    """A plan whose runs_dir and data.out overlap (that layout lost every run)."""
    def build(c: Ctx) -> Invocation:
        data = c.data()
        runs, extra = {"same": ("data", []), "runs-in-data": ("data/runs", []), "dot": (".", []),
                       "data-in-runs": ("data/..", []), "cli-runs-dir": ("elsewhere", ["--runs-dir", "data/x"])}[layout]
        plan = c.plan(runs, "data")
        return Invocation(strs("reproduce", plan, *extra, *(["--dry-run"] if dry else [])), protect=[data], strict=[data])
    return build


# ----------------------------------------------------------------------------- cases: 5 a run and its own source


def own_source(how: str) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        x = c.run("teacher", as_name="X")
        if how == "distill-teacher":
            argv = c.distill(x, "X", "--force")
        elif how == "init-from-checkpoint":
            argv = c.train("X", "--force", "--init-from", x / "checkpoints" / "best.pt")
        elif how == "init-from-run":
            argv = c.train("X", "--force", "--init-from", x)
        elif how == "distill-init-from":
            argv = c.distill(c.run("teacher"), "X", "--force", "--init-from", x / "checkpoints" / "best.pt")
        elif how == "teacher-via-symlink":
            argv = c.distill(c.link("alias", x), "X", "--force")
        elif how == "runs-dir-symlink":
            c.link("runs2", c.runs)
            argv = c.distill(x, "X", "--force")
            argv[argv.index("--runs-dir") + 1] = str(c.path("runs2"))
        else:
            raise ValueError(how)
        return Invocation(argv, protect=[x])
    return build


# ----------------------------------------------------------------------------- cases: 6 YAML


def yaml_case(what: str, where: str) -> Callable[[Ctx], Invocation]:
    """An alias bomb or 50,000-deep nesting in a recipe, a plan (base or figures) or an override."""
    def build(c: Ctx) -> Invocation:
        value = {"bomb": yaml_bomb(9), "deep": "{a: " + DEEP + "}", "deep-map": "{a: " * 50_000 + "1" + "}" * 50_000,
                 "merge": None, "self": "&a [*a, *a]"}[what]
        if what == "merge":
            lines = ["distill:", "  options:", "    l0: &l0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
            for i in range(1, 10):
                lines.append(f"    l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(9)) + "}")
            recipe = c.write("merge.yaml", "\n".join(lines) + "\n")
            return Invocation(strs("train-teacher", recipe, "--print-recipe"))
        if where == "recipe":
            return Invocation(strs("train-teacher", c.write("r.yaml", f"distill:\n  options: {value}\n"), "--print-recipe"))
        if where == "plan":
            plan = c.plan(c.runs, extra=f"  distill.options: {value}\n")
            return Invocation(strs("reproduce", plan, "--dry-run"), check=absent(c.runs))
        if where == "plan-figures":
            plan = c.plan(c.runs)
            plan.write_text(plan.read_text() + f"figures: {{box: {value}}}\n")
            return Invocation(strs("reproduce", plan, "--dry-run"))
        return Invocation(strs("train-teacher", f"distill.options={value}", "--print-recipe"))
    return build


# ----------------------------------------------------------------------------- cases: 7 disk full (file-size limit)


def fsize_case(what: str) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        if what == "prepare":
            out = c.path("new-data")
            return Invocation(c.prepare(c.raw(), out), fsize=20_000, check=no_leftovers(c.dir, "new-data"))
        if what == "prepare-force":
            data = c.data()
            return Invocation(c.prepare(c.raw(), data, "--acc", "4", "--force"), fsize=20_000, protect=[data],
                              check=no_leftovers(c.dir, "data"))
        if what == "evaluate":
            run = c.run("teacher")
            return Invocation(strs("evaluate", run, "--device", "cpu", "--split", "test"), fsize=2_000, protect=[run])
        if what == "train":
            return Invocation(c.train("r"), fsize=500, check=absent(c.runs / "r"))
        if what == "resume":
            run = c.run("teacher")
            return Invocation(c.train("teacher", "--resume", "train.epochs=2"), fsize=20_000,
                              protect=[run / "checkpoints"])
        if what == "export":
            return Invocation(strs("export", c.run("teacher"), "--format", "torchscript", "--out", c.path("m.ts")),
                              fsize=4_000, check=absent(c.path("m.ts")))
        if what == "compare":
            return Invocation(strs("compare", *c.compare_pair(), "-f", "csv", "--out", c.path("t.csv")), fsize=100)
        raise ValueError(what)
    return build


# ----------------------------------------------------------------------------- cases: 8 read-only folders, long names


def readonly_case(what: str) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        if what == "evaluate-immutable-run":
            run = c.run("teacher")
            return Invocation(strs("evaluate", run, "--device", "cpu"), protect=[run], immutable=[run])
        if what == "train-immutable-runs-dir":
            c.runs.mkdir(parents=True, exist_ok=True)
            return Invocation(c.train("r"), protect=[c.runs], immutable=[c.runs])
        if what == "export-immutable-run":
            run = c.run("teacher")
            return Invocation(strs("export", run, "--format", "torchscript"), protect=[run], immutable=[run])
        if what == "prepare-immutable-parent":
            c.write("locked/keep.txt", "x")
            return Invocation(c.prepare(c.raw(), c.path("locked", "out")), protect=[c.path("locked")],
                              immutable=[c.path("locked")])
        if what == "distill-immutable-runs-dir":
            teacher = c.run("teacher")
            return Invocation(c.distill(teacher), protect=[c.runs], immutable=[c.runs])
        if what == "evaluate-metrics-is-folder":
            run = c.run("teacher")
            (run / "metrics.json").unlink()
            c.write("runs/teacher/metrics.json/keep.txt", "a folder where metrics.json goes")
            return Invocation(strs("evaluate", run, "--device", "cpu"), protect=[run])
        if what == "train-runs-dir-below-file":
            f = c.write("plainfile", "x")
            return Invocation(c.train("r", runs=f / "runs"), protect=[f])
        if what == "prepare-out-below-file":
            f = c.write("plainfile", "x")
            return Invocation(c.prepare(c.raw(), f / "out"), protect=[f])
        if what == "name-300":
            return Invocation(c.train("n" * 300), check=absent(c.runs / ("n" * 300)))
        if what == "runs-dir-long-component":
            return Invocation(c.train("r", runs=c.path("d" * 260)))
        if what == "prepare-out-260":
            return Invocation(c.prepare(c.raw(), c.path("d" * 260)))
        if what == "evaluate-exported-long-name":
            exported = c.path("m" * 242 + ".ts")
            shutil.copy(c.fx.exported, exported)
            card = json.loads(Path(f"{c.fx.exported}.card.json").read_text())
            card["file"] = exported.name
            Path(f"{exported}.card.json").write_text(json.dumps(card))
            run = c.run("teacher")
            return Invocation(strs("evaluate", run, "--device", "cpu", "--exported", exported), protect=[run])
        raise ValueError(what)
    return build


# ----------------------------------------------------------------------------- cases: 9 sizes that lie


def lying_h5(c: Ctx, split: str, slices: int = 2_000_000) -> Path:
    """A dataset copy whose first `split` volume declares `slices` slices it does not store (a few kB)."""
    data = c.data()
    manifest = c.manifest(data)
    volume = manifest["splits"][split][0]
    path = data / manifest["volumes"][volume]["file"]
    with h5py.File(path, "a") as f:
        names: list[str] = []
        f.visit(lambda name: names.append(name) if isinstance(f[name], h5py.Dataset) and f[name].ndim == 3 else None)
        for name in names:
            shape, dtype = f[name].shape, f[name].dtype
            del f[name]
            f.create_dataset(name, shape=(slices, *shape[1:]), dtype=dtype, chunks=(1, *shape[1:]))
    manifest["volumes"][volume]["slices"] = slices
    c.set_manifest(data, manifest)
    return data


def gzip_bomb(path: Path, shape: tuple[int, int, int] = (2048, 2048, 512), written: int = 512 << 20) -> Path:
    """A .nii.gz whose header declares int16 `shape` (4 GiB) and whose stream holds `written` zero bytes."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    block = bytes(16 << 20)
    with gzip.open(path, "wb", compresslevel=6) as handle:
        handle.write(header.binaryblock + b"\0" * 4)
        for _ in range(written // len(block)):
            handle.write(block)
    return path


def size_case(what: str) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        if what == "evaluate-2M-slices":
            data, run = lying_h5(c, "val"), c.run("teacher")
            return Invocation(strs("evaluate", run, "--data", data, "--device", "cpu"), protect=[run])
        if what == "train-2M-slices":
            return Invocation(c.train("r", data=lying_h5(c, "train")), check=absent(c.runs / "r"))
        if what == "gzip-bomb":
            raw = c.raw()
            gzip_bomb(raw / "vol9.nii.gz")
            return Invocation(c.prepare(raw, c.path("out")), check=absent(c.path("out")))
        if what == "prepare-size-100000":
            return Invocation(strs("prepare-data", "nifti", c.raw(), "--out", c.path("out"), "--size", "100000", "100000"))
        if what == "prepare-size-0":
            return Invocation(strs("prepare-data", "nifti", c.raw(), "--out", c.path("out"), "--size", "0", "0"))
        if what == "export-size-100000":
            return Invocation(strs("export", c.run("teacher"), "--format", "torchscript", "--out", c.path("m.ts"),
                                   "--size", "100000", "100000"))
        if what == "bench-size-100000":
            argv = list(BENCH)
            argv[argv.index("--size") + 1] = "100000"
            return Invocation(strs(*argv))
        if what == "bench-batch-huge":
            return Invocation(strs(*BENCH, "--batch", "100000000"))
        if what == "model-huge":
            argv = c.train("r")
            argv[argv.index("D2C2")] = "D99999999C99999999"
            return Invocation(argv)
        if what == "model-65-cascades":
            argv = c.train("r")
            argv[argv.index("D2C2")] = "D5C65"
            return Invocation(argv)
        if what == "plan-model-huge":
            plan = c.plan(c.runs)
            plan.write_text(plan.read_text().replace("sft.teacher: D2C2", "sft.teacher: D3C99999999"))
            return Invocation(strs("reproduce", plan, "--dry-run"))
        if what == "batch-size-huge":
            return Invocation(c.train("r", "train.batch_size=1000000000"))
        if what == "threads-huge":
            return Invocation(c.train("r", "--threads", "100000"))
        raise ValueError(what)
    return build


def special_file_case(file: str, kind: str, command: str) -> Callable[[Ctx], Invocation]:
    """A file sftkd reads, replaced by a FIFO (no writer: a naive read blocks) or a link to /dev/zero."""
    def make(path: Path) -> None:
        path.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.symlink_to("/dev/zero")

    def build(c: Ctx) -> Invocation:
        if file == "manifest.json":
            data = c.data()
            make(data / "manifest.json")
            if command == "evaluate":
                return Invocation(strs("evaluate", c.run("teacher"), "--data", data, "--device", "cpu"))
            if command == "train":
                return Invocation(c.train("r", data=data), check=absent(c.runs / "r"))
            return Invocation(c.prepare(c.raw(), data, "--force"))
        if file == "history.jsonl":
            run = c.run("teacher")
            make(run / "history.jsonl")
            return Invocation(c.train("teacher", "--resume", "train.epochs=2"))
        if file == "metrics.json":
            teacher, kd = c.compare_pair()
            make(kd / "metrics.json")
            return Invocation(strs("compare", teacher, kd))
        if file == "recipe.yaml":
            run = c.run("teacher")
            make(run / "recipe.yaml")
            return Invocation(strs("evaluate", run, "--device", "cpu"))
        if file == "best.pt":
            run = c.run("teacher")
            make(run / "checkpoints" / "best.pt")
            return Invocation(strs("evaluate", run, "--device", "cpu"))
        if file == "last.pt":
            run = c.run("teacher")
            make(run / "checkpoints" / "last.pt")
            return Invocation(c.train("teacher", "--resume", "train.epochs=2"))
        if file == "init.pt":
            path = c.path("init.pt")
            make(path)
            return Invocation(c.train("r", "--init-from", path))
        if file == "volume.h5":
            data = c.data()
            manifest = c.manifest(data)
            make(data / manifest["volumes"][manifest["splits"]["train"][0]]["file"])
            return Invocation(c.train("r", data=data))
        if file == "recipe-file":
            path = c.path("recipe.yaml")
            make(path)
            return Invocation(strs("train-teacher", path, "--print-recipe"))
        raise ValueError(file)
    return build


# ----------------------------------------------------------------------------- cases: 10 wrong results


def wrong_case(what: str) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        if what == "evaluate-other-runs-checkpoint":
            a, b = c.run("teacher"), c.run("teacher-b")
            return Invocation(strs("evaluate", a, "--device", "cpu", "--checkpoint", b / "checkpoints" / "best.pt"),
                              protect=[a, b])
        if what == "evaluate-own-last":
            a = c.run("teacher")
            return Invocation(strs("evaluate", a, "--device", "cpu", "--checkpoint", a / "checkpoints" / "last.pt"))
        if what == "exported-without-card":
            exported = Path(shutil.copy(c.fx.exported, c.path("student.ts")))
            run = c.run("kd")
            return Invocation(strs("evaluate", run, "--device", "cpu", "--exported", exported), protect=[run])
        if what == "exported-with-card":
            exported = Path(shutil.copy(c.fx.exported, c.path("t.ts")))
            shutil.copy(f"{c.fx.exported}.card.json", f"{exported}.card.json")
            return Invocation(strs("evaluate", c.run("teacher"), "--device", "cpu", "--exported", exported))
        if what == "distill-other-acceleration":
            return Invocation(c.distill(c.run("teacher"), "kd", "--acc", "5"), check=absent(c.runs / "kd"))
        if what == "distill-other-size":
            return Invocation(c.distill(c.run("teacher"), "kd", data=c.data("data20", c.fx.data20)),
                              check=absent(c.runs / "kd"))
        if what in ("evaluate-train-volume-in-val", "evaluate-volume-twice", "train-train-volume-in-val",
                    "train-volume-twice"):
            data = c.data()
            manifest = c.manifest(data)
            volume = manifest["splits"]["train"][0]
            manifest["splits"]["val" if "in-val" in what else "train"].append(volume)
            c.set_manifest(data, manifest)
            if what.startswith("evaluate"):
                run = c.run("teacher")
                return Invocation(strs("evaluate", run, "--data", data, "--device", "cpu"), protect=[run])
            return Invocation(c.train("r", data=data), check=absent(c.runs / "r"))
        if what in ("mask-file-all-ones", "mask-file-all-zeros", "mask-file-2x-as-4x"):
            mask = np.ones((16, 16), np.float32) if what.endswith("ones") else np.zeros((16, 16), np.float32)
            if what.endswith("4x"):
                mask[::2] = 1
            path = c.path("mask.npy")
            np.save(path, mask)
            return Invocation(c.prepare(c.raw(), c.path("out"), "--acc", "4", "--mask-file", f"4={path}"),
                              check=absent(c.path("out")))
        if what == "dataset-mask-all-ones":
            data = c.data()
            for path in data.glob("*.h5"):
                with h5py.File(path, "a") as f:
                    f["acc4/mask"][...] = 1.0
            run = c.run("teacher")
            return Invocation(strs("evaluate", run, "--data", data, "--device", "cpu"), protect=[run])
        if what == "manifest-escapes-dataset":
            data = c.data()
            manifest = c.manifest(data)
            volume = manifest["splits"]["train"][0]
            manifest["volumes"][volume]["file"] = "../../../../../../etc/passwd"
            c.set_manifest(data, manifest)
            return Invocation(c.train("r", data=data))
        raise ValueError(what)
    return build


# ----------------------------------------------------------------------------- cases: 11 resume with a wrong last.pt


def resume_case(what: str) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        import torch

        run = c.run("teacher")
        last = run / "checkpoints" / "last.pt"
        if what == "other-architecture":
            shutil.copy(c.fx.runs / "wide" / "checkpoints" / "last.pt", last)
        elif what == "no-objective":
            state = torch.load(last, weights_only=True)
            del state["objective"]
            torch.save(state, last)
        elif what == "no-models":
            state = torch.load(last, weights_only=True)
            del state["models"]
            torch.save(state, last)
        elif what == "epoch-string":
            state = torch.load(last, weights_only=True)
            state["epoch"] = "one"
            torch.save(state, last)
        elif what == "truncated":
            last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        elif what == "empty":
            last.write_bytes(b"")
        elif what == "folder":
            last.unlink()
            last.mkdir()
        elif what == "not-a-run":
            c.write("runs/teacher2/notes.txt", "not a run")
            return Invocation(c.train("teacher2", "--resume"), protect=[c.runs / "teacher2"], strict=[c.runs / "teacher2"])
        else:
            raise ValueError(what)
        # the objective state holds the model weights too: a last.pt without `models` may resume (and move on)
        protect = [] if what == "no-models" else [run / "checkpoints"]
        return Invocation(c.train("teacher", "--resume", "train.epochs=2"), protect=protect)
    return build


# ----------------------------------------------------------------------------- cases: 12 other


def value_case(option: str, value: str, command: str = "train") -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        if command == "evaluate":
            return Invocation(strs("evaluate", c.run("teacher"), option, value))
        if command == "bench":
            argv = list(BENCH)
            argv[argv.index("--device") + 1] = value
            return Invocation(argv)
        if option.startswith("train."):
            argv = c.train("r", f"{option}={value}")
        else:  # an option: without the tiny command's own train.device=cpu, which would win over it
            argv = [a for a in c.train("r", option, value) if a != "train.device=cpu"]
        return Invocation(argv, check=absent(c.runs / "r"))
    return build


def braces_case(missing: bool) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        if missing:
            stages = "stages:\n  teacher: {recipe: 'r{oops}.yaml'}\n"
        else:
            odd = c.write("teacher {x} {0}.yaml", "train:\n  epochs: 1\n")
            stages = f"stages:\n  teacher: {{recipe: '{odd}'}}\n"
        return Invocation(strs("reproduce", c.plan(c.runs, stages=stages), "--dry-run"))
    return build


def tilde_case(where: str) -> Callable[[Ctx], Invocation]:
    """`~` means HOME (the case's own home folder); no literal `./~` folder may appear."""
    def build(c: Ctx) -> Invocation:
        home = c.path("home")
        work = c.path("work")
        work.mkdir()
        if where == "plan":
            plan = c.plan("~/runs")
            return Invocation(strs("reproduce", plan, "--only", "teacher"), cwd=work,
                              check=exists(home / "runs" / "teacher" / "checkpoints" / "best.pt", work / "~"))
        argv = c.train("t", runs="~/cli-runs")
        return Invocation(argv, cwd=work, check=exists(home / "cli-runs" / "t" / "checkpoints" / "best.pt", work / "~"))
    return build


def many_phantoms(c: Ctx, count: int = 24, shape: tuple[int, int, int] = (64, 64, 24)) -> Path:
    """A raw folder big enough that prepare-data is still writing when a signal comes."""
    import nibabel as nib

    raw = c.path("bigraw")
    raw.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        volume = rng.uniform(1, 100, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(raw / f"vol{i}.nii.gz"))
    return raw


def signal_case(sig: signal.Signals) -> Callable[[Ctx], Invocation]:
    def build(c: Ctx) -> Invocation:
        raw = many_phantoms(c)
        argv = strs("prepare-data", "nifti", raw, "--out", c.path("out"), "--size", "64", "64", "--val", "vol1")
        code = 128 + int(sig)
        return Invocation(argv, runner=signal_runner(sig), clean_codes=(2, code), protect=[raw],
                          check=no_leftovers(c.dir, "out"))
    return build


def concurrent_case(c: Ctx) -> Invocation:
    raw = many_phantoms(c)  # slow enough that both are in flight together
    out = c.path("out")

    def check() -> str | None:
        try:
            json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            return f"out/manifest.json unreadable after two prepare-data runs: {exc}"
        return no_leftovers(c.dir, "out")()

    argv = strs("prepare-data", "nifti", raw, "--out", out, "--size", "64", "64", "--val", "vol1")
    return Invocation([*argv, "--acc", "4"], runner=concurrent_runner([*argv, "--acc", "5"]),
                      protect=[raw], check=check)


# ----------------------------------------------------------------------------- the case list

CASES: list[Case] = [
    # 1: code execution from a checkpoint (each entry point, several pickle shapes)
    # (dry-run reads only last.pt, so a poisoned best.pt may pass unread: "either"; the payload must never run)
    *[Case(f"ckpt-{entry}", K1, "either" if entry == "reproduce-dry-run-best" else "error", ckpt_case(entry, "zip"))
      for entry in CKPT_ENTRIES],
    *[Case(f"ckpt-{kind}-{entry}", K1, "error", ckpt_case(entry, kind))
      for kind, entries in CKPT_VARIANTS.items() for entry in entries],
    *[Case(f"yaml-python-tag-{where}", K1, "error", yaml_payload(where)) for where in ("recipe", "plan", "override")],
    Case("mask-pickle-npy", K1, "error", mask_payload("npy")),
    Case("mask-pickle-npz", K1, "error", mask_payload("npz")),
    # 2: --force and run names
    Case("force-home-documents", K2, "error", documents_case(force=True)),
    Case("home-documents-no-force", K2, "error", documents_case(force=False)),
    Case("force-user-folder-with-own-recipe-yaml", K2, "error", user_recipe_case),
    Case("force-user-folder-with-a-valid-recipe-yaml", K2, "error", user_valid_recipe_case),
    Case("name-dot-force", K2, "error", name_case(".", True)),
    Case("name-dot", K2, "error", name_case(".", False)),
    Case("name-dotdot-force", K2, "error", name_case("..", True)),
    Case("name-dotdot", K2, "error", name_case("..", False)),
    Case("name-with-slash", K2, "error", name_case("a/b", False)),
    Case("name-escape-force", K2, "error", name_case("../escape", True)),
    Case("name-absolute-force", K2, "error", name_case(ABSOLUTE, True)),
    Case("name-backslash", K2, "error", name_case("a\\b", False)),
    Case("name-empty", K2, "error", name_case("", False)),
    Case("name-newline", K2, "either", name_case("a\nb", False)),
    Case("override-run-name-dotdot-force", K2, "error", name_case("..", True, override=True)),
    Case("override-run-name-dot-force", K2, "error", name_case(".", True, override=True)),
    Case("name-300-chars", K8, "error", readonly_case("name-300")),
    Case("name-200-chars", K2, "ok", ok_name_case("x" * 200)),
    Case("name-0x10", K2, "ok", ok_name_case("0x10")),
    Case("name-yes", K2, "ok", ok_name_case("yes")),
    Case("name-a-colon-b", K2, "ok", ok_name_case("a: b")),
    Case("force-keeps-user-files-in-run", K2, "ok", force_keeps_user_files),
    Case("runs-dir-is-a-file", K2, "error", runs_dir_is_file),
    # 3: outputs at hostile paths
    *[Case(f"{command}-out-{how}", K3 if how not in ("long-name", "below-file", "immutable-dir") else K8,
           {"symlink": "ok" if command != "export" else "error",  # export never replaces a file not its own
            "dangling-symlink": "either", "device": "either", "symlink-loop": "either",
            "symlink-to-sentinel-dir": "either"}.get(how, "error"), output_case(command, how))
      for command in ("compare", "export", "bench")
      for how in ("symlink", "symlink-to-sentinel-dir", "dangling-symlink", "symlink-loop", "fifo", "device", "folder",
                  "long-name", "below-file", "immutable-dir")],
    Case("compare-attention-below-file", K8, "error", attention_case("below-file")),
    Case("compare-attention-long-name", K8, "error", attention_case("long-name")),
    # 4: prepare-data --force and overlapping folders
    Case("prepare-foreign-manifest-force", K4, "error", foreign_manifest(True)),
    Case("prepare-foreign-manifest", K4, "error", foreign_manifest(False)),
    Case("prepare-force-keeps-user-files", K4, "ok", prepare_force_keeps_user_files),
    Case("prepare-force-user-file-of-a-volume-name", K4, "error", prepare_user_file_same_name),
    Case("prepare-force-manifest-lists-outside-file", K4, "either", fake_manifest_lists_outside),
    Case("prepare-out-inside-root", K4, "error", prepare_out_case("inside-root")),
    Case("prepare-out-is-root", K4, "error", prepare_out_case("is-root")),
    Case("prepare-root-inside-out-force", K4, "error", prepare_out_case("root-inside-out")),
    Case("prepare-out-is-a-file-force", K4, "error", prepare_out_case("is-file")),
    Case("prepare-force-user-folder", K4, "error", prepare_out_case("user-folder")),
    Case("plan-runs-dir-is-data", K4, "error", overlap_case("same", dry=False)),
    Case("plan-runs-dir-in-data", K4, "error", overlap_case("runs-in-data", dry=False)),
    Case("plan-runs-dir-dot-dry-run", K4, "error", overlap_case("dot", dry=True)),
    Case("plan-runs-dir-holds-data", K4, "error", overlap_case("data-in-runs", dry=False)),
    Case("plan-cli-runs-dir-in-data", K4, "error", overlap_case("cli-runs-dir", dry=True)),
    # 5: a run that would replace its own source
    *[Case(f"own-source-{how}", K5, "error", own_source(how))
      for how in ("distill-teacher", "init-from-checkpoint", "init-from-run", "distill-init-from", "teacher-via-symlink",
                  "runs-dir-symlink")],
    # 6: YAML bombs and depth
    *[Case(f"yaml-{what}-{where}", K6, "error", yaml_case(what, where))
      for what in ("bomb", "deep") for where in ("recipe", "plan", "override")],
    Case("yaml-deep-plan-figures", K6, "error", yaml_case("deep", "plan-figures")),
    Case("yaml-deep-mapping-recipe", K6, "error", yaml_case("deep-map", "recipe")),
    Case("yaml-self-alias-override", K6, "error", yaml_case("self", "override")),
    Case("yaml-bomb-of-mappings-recipe", K6, "error", yaml_case("merge", "recipe")),
    # 7: a full disk (file-size limit)
    *[Case(f"fsize-{what}", K7, "error", fsize_case(what))
      for what in ("prepare", "prepare-force", "evaluate", "train", "resume", "export", "compare")],
    # 8: read-only folders and long names
    *[Case(f"ro-{what}", K8, "error", readonly_case(what))
      for what in ("evaluate-immutable-run", "train-immutable-runs-dir", "export-immutable-run",
                   "prepare-immutable-parent", "distill-immutable-runs-dir", "evaluate-metrics-is-folder",
                   "train-runs-dir-below-file", "prepare-out-below-file", "runs-dir-long-component", "prepare-out-260",
                   "evaluate-exported-long-name")],
    # 9: sizes that lie, and files that are not regular files
    *[Case(what, K9, "either" if what in ("batch-size-huge", "threads-huge") else "error", size_case(what))
      for what in ("evaluate-2M-slices", "train-2M-slices", "gzip-bomb", "prepare-size-100000", "prepare-size-0",
                   "export-size-100000", "bench-size-100000", "bench-batch-huge", "model-huge", "model-65-cascades",
                   "plan-model-huge", "batch-size-huge", "threads-huge")],
    *[Case(f"{file}-{kind}-{command}", K9, "error", special_file_case(file, kind, command))
      for file, command in (("manifest.json", "evaluate"), ("manifest.json", "train"), ("manifest.json", "prepare"),
                            ("history.jsonl", "resume"), ("metrics.json", "compare"), ("recipe.yaml", "evaluate"),
                            ("best.pt", "evaluate"), ("last.pt", "resume"), ("init.pt", "train"),
                            ("volume.h5", "train"), ("recipe-file", "print-recipe"))
      for kind in ("fifo", "devzero")],
    # 10: wrong results accepted
    *[Case(what, K10, "ok" if what in ("evaluate-own-last", "exported-with-card") else "error", wrong_case(what))
      for what in ("evaluate-other-runs-checkpoint", "evaluate-own-last", "exported-without-card", "exported-with-card",
                   "distill-other-acceleration", "distill-other-size", "evaluate-train-volume-in-val",
                   "evaluate-volume-twice", "train-train-volume-in-val", "train-volume-twice", "mask-file-all-ones",
                   "mask-file-all-zeros", "mask-file-2x-as-4x", "dataset-mask-all-ones", "manifest-escapes-dataset")],
    # 11: --resume with a readable but wrong last.pt
    *[Case(f"resume-{what}", K11, "either" if what == "no-models" else "error", resume_case(what))
      for what in ("other-architecture", "no-objective", "no-models", "epoch-string", "truncated", "empty", "folder",
                   "not-a-run")],
    # 12: other
    *[Case(f"lr-{value}", K12, "error", value_case("train.lr", value)) for value in ("1e300", ".nan", "-1")],
    *[Case(f"device-{value}", K12, "either" if value in ("mps", "cuda:99") else "error", value_case("--device", value))
      for value in ("meta", "mps", "garbage", "cpu:0", "cuda:99")],
    Case("evaluate-device-meta", K12, "error", value_case("--device", "meta", "evaluate")),
    Case("bench-device-meta", K12, "error", value_case("--device", "meta", "bench")),
    Case("plan-recipe-path-with-braces", K12, "ok", braces_case(missing=False)),
    Case("plan-missing-recipe-path-with-braces", K12, "error", braces_case(missing=True)),
    Case("plan-runs-dir-tilde", K12, "ok", tilde_case("plan")),
    Case("runs-dir-tilde", K12, "ok", tilde_case("option")),
    Case("sigterm-during-prepare", K12, "error", signal_case(signal.SIGTERM)),
    Case("sigint-during-prepare", K12, "error", signal_case(signal.SIGINT)),
    Case("two-prepare-data-on-one-folder", K12, "error", concurrent_case),
]


# ----------------------------------------------------------------------------- the shared fixture


def setup_cli(argv: list[str], root: Path, timeout: float) -> None:
    """Run one setup command; it must succeed."""
    case_dir = root / "cases" / "_setup"
    case_dir.mkdir(parents=True, exist_ok=True)
    done = run_cli(Invocation(argv), case_dir, timeout * 3)
    if done.rc != 0:
        raise SystemExit(f"setup failed: sftkd {' '.join(argv)}\n{done.stdout[-2000:]}{done.stderr[-3000:]}")


def build_fixture(root: Path, timeout: float) -> Fixture:
    """Phantoms -> prepared datasets -> tiny runs (all through the CLI), in two parallel lanes."""
    import nibabel as nib

    fx = Fixture(root, root / "shared" / "raw", root / "shared" / "data", root / "shared" / "data20",
                 root / "shared" / "runs", root / "shared" / "export" / "teacher.ts")
    fx.raw.mkdir(parents=True)
    for i in range(5):
        rng = np.random.default_rng(i)
        x, y = np.meshgrid(np.linspace(-1, 1, 28), np.linspace(-1, 1, 24), indexing="ij")
        inside = (x / 0.8) ** 2 + (y / 0.7) ** 2 <= 1.0
        volume = np.stack([inside * (50.0 + 10 * z + 5 * i) + inside * rng.uniform(0, 5, inside.shape)
                           for z in range(3)], axis=-1).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(fx.raw / f"vol{i}.nii.gz"))
    tiny = TINY

    def train(name: str, model: str, *extra: str) -> list[str]:
        return strs("train-teacher", "--model", model, "--data", fx.data, "--runs-dir", fx.runs, "--name", name, *tiny, *extra)

    waves = [
        [strs("prepare-data", "nifti", fx.raw, "--out", fx.data, "--size", "16", "16", "--val", "vol1", "--test", "vol2"),
         strs("prepare-data", "nifti", fx.raw, "--out", fx.data20, "--size", "20", "20", "--val", "vol1", "--test", "vol2")],
        [train("teacher", "D2C2"), train("teacher-b", "D2C2", "train.seed=1")],
        [train("wide", "D3C2"),
         strs("distill", "--teacher", fx.runs / "teacher", "--student", "D2C2", "--method", "at", "--data", fx.data,
              "--runs-dir", fx.runs, "--name", "kd", *tiny)],
        [strs("evaluate", fx.runs / "teacher", "--device", "cpu"), strs("evaluate", fx.runs / "kd", "--device", "cpu")],
        [strs("export", fx.runs / "teacher", "--format", "torchscript", "--out", fx.exported)],
    ]
    with ThreadPoolExecutor(2) as pool:
        for wave in waves:
            list(pool.map(lambda argv: setup_cli(argv, root, timeout), wave))
    return fx


# ----------------------------------------------------------------------------- running one case


LOCKED: set[Path] = set()  # folders with the immutable attribute right now


def chattr(path: Path, flag: str) -> bool:
    """Set or clear the immutable attribute; False where chattr is missing or refused."""
    try:
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False
    if done:
        (LOCKED.add if flag == "+i" else LOCKED.discard)(path)
    return done


def run_case(case: Case, fx: Fixture, shared_before: dict[str, str], timeout: float) -> Result:
    """Build the case in its own folder, run it, classify it and check its invariants."""
    case_dir = fx.root / "cases" / case.id
    case_dir.mkdir(parents=True)
    c = Ctx(fx, case_dir)
    try:
        inv = case.build(c)
    except Exception as exc:  # a case this machine cannot build (reported, never silently dropped)
        return Result(case.id, case.klass, case.expect, SKIPPED, [], None, 0.0, f"could not build: {exc!r}"[:300])
    protect = {str(p): snapshot(p) for p in inv.protect}
    strict = {str(p): snapshot(p) for p in inv.strict}
    locked: list[Path] = []
    for folder in inv.immutable:
        if chattr(folder, "+i"):
            locked.append(folder)
        else:
            inv.skip = inv.skip or f"chattr +i refused on {folder.name} (cannot simulate a read-only folder)"
    try:
        if inv.skip:
            done = Completed(None, "", "", skip=inv.skip)
        else:
            done = (inv.runner or run_cli)(inv, case_dir, timeout)
    finally:
        for folder in locked:
            chattr(folder, "-i")
    outcome = classify(done, inv.clean_codes)
    problems = list(done.problems)
    if outcome != SKIPPED:
        if any(p.name.startswith(MARKER) for p in fx.root.rglob(f"{MARKER}*")):
            problems.append(PAYLOAD)
        for path, before in protect.items():
            changed, _ = compare(before, snapshot(Path(path)))
            if changed:
                problems.append(f"{DESTROYED}: {Path(path).name}/{', '.join(changed[:3])}")
        for path, before in strict.items() if outcome != OK or case.expect == "error" else ():
            _, added = compare(before, snapshot(Path(path)))
            if added:
                problems.append(f"{WRITTEN}: {Path(path).name}/{', '.join(added[:3])}")
        changed, added = compare(shared_before, snapshot(fx.root / "shared"))
        if changed or added:
            problems.append(f"{DESTROYED}: shared fixture {', '.join((changed + added)[:3])}")
        if case.expect == "error" and outcome == OK:
            problems.append(WRONG)
        if case.expect == "ok" and outcome == CLEAN:
            problems.append(REFUSED)
        if inv.check is not None and outcome not in (HANG,):
            problem = inv.check()
            if problem:
                problems.append(f"{POST}: {problem}")
    short = lambda text: text.replace(str(fx.root), "$TMP")  # noqa: E731  (readable lines; $TMP = the temp folder)
    return Result(case.id, case.klass, case.expect, outcome, [short(p).replace("\n", "\\n") for p in problems], done.rc,
                  round(done.seconds, 1), short(stderr_line(done, outcome)), short(done.stderr[-3000:]),
                  short(done.stdout[-1500:]))


def is_fatal(result: Result) -> bool:
    return result.outcome in FATAL_OUTCOMES or any(p.split(":")[0] in FATAL_PROBLEMS for p in result.problems)


# ----------------------------------------------------------------------------- report


def print_table(results: list[Result]) -> None:
    width = max(len(r.id) for r in results)
    print(f"{'case':<{width}}  {'class':<22} {'expect':<6} {'outcome':<11} problems | first stderr line")
    for r in results:
        problems = "; ".join(r.problems) or "-"
        print(f"{r.id:<{width}}  {r.klass:<22} {r.expect:<6} {r.outcome:<11} {problems} | {r.stderr_line}")


def summarize(results: list[Result]) -> dict:
    outcomes = Counter(r.outcome for r in results)
    problems = Counter(p.split(":")[0] for r in results for p in r.problems)
    return {"cases": len(results), "outcomes": {k: outcomes.get(k, 0) for k in OUTCOMES},
            "problems": dict(sorted(problems.items())), "fatal_cases": sum(is_fatal(r) for r in results)}


def print_summary(summary: dict, results: list[Result]) -> None:
    print()
    print(f"{summary['cases']} cases")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items()))
    print("problems: " + (", ".join(f"{k} {v}" for k, v in summary["problems"].items()) or "none"))
    bad = [r for r in results if r.outcome not in (CLEAN, OK) or r.problems]
    if bad:
        print("\nnot a clean error / expected ok:")
        for r in bad:
            print(f"  {r.id}: {r.outcome}{' [' + '; '.join(r.problems) + ']' if r.problems else ''} | {r.stderr_line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at the same time (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="address-space limit per CLI process")
    parser.add_argument("--only", action="append", default=[], help="run only case ids matching this glob (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    global MEMORY_LIMIT
    MEMORY_LIMIT = int(args.memory_gib * (1 << 30))

    ids = [case.id for case in CASES]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise SystemExit(f"duplicate case ids: {sorted(duplicates)}")
    cases = [case for case in CASES if not args.only or any(fnmatch.fnmatch(case.id, p) for p in args.only)]
    if args.list:
        for case in cases:
            print(f"{case.id:<50} {case.klass:<22} {case.expect}")
        return 0

    root = Path(tempfile.mkdtemp(prefix="sftkd-hostile-"))
    started = time.monotonic()
    try:
        print(f"building the shared fixture in {root} ...", flush=True)
        fx = build_fixture(root, args.timeout)
        shared_before = snapshot(root / "shared")
        print(f"fixture ready in {time.monotonic() - started:.0f} s; {len(cases)} cases, {args.jobs} at a time", flush=True)
        results: list[Result] = []

        def one(case: Case) -> Result:
            result = run_case(case, fx, shared_before, args.timeout)
            print(f"  {result.id}: {result.outcome}{' [' + '; '.join(result.problems) + ']' if result.problems else ''}"
                  f" ({result.seconds} s)", flush=True)
            return result

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(one, cases))
        print()
        print_table(results)
        summary = summarize(results)
        summary["seconds"] = round(time.monotonic() - started)
        print_summary(summary, results)
        if args.json:
            args.json.write_text(json.dumps({"summary": summary, "cases": [asdict(r) for r in results]}, indent=2))
            print(f"\nwrote {args.json}")
        return 1 if summary["fatal_cases"] else 0
    finally:
        for path in list(LOCKED):  # an immutable folder left by an interrupted case would block removal
            chattr(path, "-i")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
