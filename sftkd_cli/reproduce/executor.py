"""Where the stages of `sftkd reproduce --jobs N` run: the executor interface, and the local one.

The scheduler (`reproduce.schedule`) walks the plan's dependency graph and decides what runs when
(what is ready, what is skipped, what failed, the live table); an executor only runs the
`StageJob`s it is given and hands back their `StageResult`s. Any executor can serve:

- `submit(job)`: start the job (the scheduler never has more than `slots` jobs unfinished);
- `wait(timeout)`: the results of jobs finished since the last call; blocks until at least one
  is finished or `timeout` seconds have passed (then it may return none);
- `cancel()`: stop every unfinished job the way Ctrl-C stops one stage (training saves its
  checkpoint, so the stage resumes next time), wait until they have stopped and return their
  results (interrupted, or whatever they finished with meanwhile);
- `close()`: release what the executor holds (processes, connections).

A job runs with `jobs.run_stage_job(job)`, a top-level function, in the process the executor
chooses; the job and its result pickle. The executor may set the job's placement (its `threads`
and `device`, see `StageJob`) before running it.

`LocalExecutor` runs the jobs in up to `jobs` spawned worker processes on this machine (torch
training is Python-heavy: threads would queue on the GIL; a worker serves one job at a time and
then the next, so torch is imported once per worker): each job gets max(1, cpus // slots) torch
threads unless its recipe sets train.threads; on CUDA, the visible GPUs take the jobs in turn, at
most `per_gpu` on one GPU (the job's train.device becomes cuda:i when the recipe says auto or
cuda; a recipe's own cuda:i runs there, whatever `per_gpu` says, and counts when the others are
placed). A worker process works on one GPU only: torch keeps a context and cached memory on
every GPU a process has used, so a job for another GPU goes to a fresh worker (the idle one that
served the other GPU ends).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait as wait_any
from typing import Any, Protocol

from sftkd_cli.choices import EXECUTORS, PER_GPU
from sftkd_cli.errors import SftkdError, did_you_mean
from sftkd_cli.files import open_log_for_append
from sftkd_cli.reproduce.jobs import StageJob, run_stage_job
from sftkd_cli.reproduce.kinds import FAILED, INTERRUPTED
from sftkd_cli.reproduce.stages import StageResult
from sftkd_cli.reproduce.stagework import failure_note


class Executor(Protocol):
    """Runs `StageJob`s, up to `slots` at once (see the module docstring)."""

    @property
    def slots(self) -> int:
        """How many jobs may run at once."""
        ...

    def submit(self, job: StageJob) -> None:
        """Start `job`."""
        ...

    def wait(self, timeout: float | None = None) -> list[StageResult]:
        """Results of the jobs finished since the last call (none after `timeout` seconds)."""
        ...

    def cancel(self) -> list[StageResult]:
        """Stop the unfinished jobs (each left resumable), wait for them, return their results."""
        ...

    def close(self) -> None:
        """Release the executor's resources."""
        ...


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_count() -> int:
    """The visible CUDA GPUs (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclasses.dataclass
class _Worker:
    """A worker process, the parent's end of its pipe, and the job it runs (None: idle)."""

    process: Any
    conn: Connection
    job: StageJob | None = None
    gpu: int | None = None  # the GPU of the job it runs
    home: int | None = None  # the GPU it has worked on (it works on no other)


class LocalExecutor:
    """Up to `jobs` worker processes of this machine, each running one job at a time (see the
    module docstring). They start with the first job and serve the jobs that follow (one import
    of torch per worker, not per stage; a worker that died is replaced); `close` ends them."""

    def __init__(self, jobs: int, *, per_gpu: int = PER_GPU, cpus: int | None = None, gpus: int | None = None) -> None:
        if jobs < 1 or per_gpu < 1:
            raise ValueError("jobs and per_gpu must be at least 1")
        self.jobs, self.per_gpu = jobs, per_gpu
        self.cpus = cpu_count() if cpus is None else cpus
        self.gpus = gpu_count() if gpus is None else gpus
        self.threads = max(1, self.cpus // self.slots)
        self._context = get_context("spawn")
        self._workers: list[_Worker] = []

    @property
    def slots(self) -> int:
        return min(self.jobs, self.per_gpu * self.gpus) if self.gpus else self.jobs

    def submit(self, job: StageJob) -> None:
        gpu = self._gpu_for(job)
        job = dataclasses.replace(job, threads=self.threads, device=f"cuda:{gpu}" if gpu is not None else job.device)
        first = not self._workers
        worker = self._idle_worker(gpu) or self._spawn()
        try:
            worker.conn.send(job)  # pickled first: a job that does not pickle raises here, the worker stays idle
        except OSError:
            self._end(worker)
            raise
        worker.job, worker.gpu = job, gpu
        if gpu is not None:
            worker.home = gpu
        if first:  # the other workers start now: their imports overlap the first stage (often the data)
            for _ in range(self.slots - 1):
                self._spawn()

    def _spawn(self) -> _Worker:
        for dead in [w for w in self._workers if w.job is None and not w.process.is_alive()]:
            self._end(dead)
        here, there = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(there, os.getpid()), name=f"sftkd-worker-{len(self._workers) + 1}")
        with _sigint_held():  # the child starts with SIGINT blocked: Ctrl-C reaches the parent, which stops the jobs
            process.start()
        there.close()
        worker = _Worker(process, here)
        self._workers.append(worker)
        return worker

    def _idle_worker(self, gpu: int | None) -> _Worker | None:
        """An idle worker for a job on `gpu` (None: no GPU): one that has worked on that GPU, or on
        none, first; one that has worked on another GPU ends instead (None: spawn a fresh one)."""
        idle = [w for w in self._workers if w.job is None and w.process.is_alive()]
        if gpu is None:
            return idle[0] if idle else None
        fitting = sorted((w for w in idle if w.home in (gpu, None)), key=lambda w: w.home is None)
        if fitting:
            return fitting[0]
        if idle:  # make room: the slots bound the workers
            self._retire(idle[0])
        return None

    def _retire(self, worker: _Worker) -> None:
        """An idle worker told to end, and waited for."""
        _tell_to_end(worker)
        worker.process.join(timeout=10)
        self._end(worker)

    def _gpu_for(self, job: StageJob) -> int | None:
        """The GPU a job runs on: the least busy one for a recipe on CUDA (auto or cuda), the
        recipe's own for cuda:i; None for a CPU job or without GPUs."""
        recipe = job.stage.recipe
        if not self.gpus or recipe is None or job.device is not None:
            return None
        device = recipe.train.device
        if device.startswith("cuda:"):
            return int(device.removeprefix("cuda:"))
        if device not in ("auto", "cuda"):
            return None
        load = [sum(1 for w in self._workers if w.job is not None and w.gpu == gpu) for gpu in range(self.gpus)]
        return min(range(self.gpus), key=lambda gpu: (load[gpu], gpu))

    def _busy(self) -> list[_Worker]:
        return [w for w in self._workers if w.job is not None]

    def wait(self, timeout: float | None = None) -> list[StageResult]:
        busy = self._busy()
        if not busy:
            return []
        ready = set(wait_any([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
        return [self._collect(w) for w in busy if w.conn in ready or w.process.sentinel in ready]

    def _collect(self, worker: _Worker, stopping: bool = False) -> StageResult:
        """The busy worker's result; a failure (interrupted when `stopping`) when it died without one."""
        job = worker.job
        assert job is not None
        result: Any = None
        try:
            if worker.conn.poll(None if worker.process.is_alive() else 0):
                result = worker.conn.recv()
        except (EOFError, OSError):
            result = None
        worker.job = worker.gpu = None
        if isinstance(result, StageResult):
            return result
        self._end(worker)
        code = worker.process.exitcode
        stage = job.stage
        if stopping:
            return StageResult(stage.id, stage.kind, INTERRUPTED, note=f"stopped (worker exit code {code})")
        return StageResult(stage.id, stage.kind, FAILED, note=f"worker process ended without a result (exit code {code})")

    def cancel(self) -> list[StageResult]:
        """SIGTERM to every busy worker (training saves and stops between steps); wait for all of
        them. A second Ctrl-C while waiting kills them at once (what kill -9 leaves also resumes)."""
        for worker in self._busy():
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)
        results: list[StageResult] = []
        try:
            while busy := self._busy():
                ready = set(wait_any([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                results += [self._collect(w, stopping=True) for w in busy if w.conn in ready or w.process.sentinel in ready]
        except KeyboardInterrupt:
            self.close()
            raise
        return results

    def close(self) -> None:
        """Idle workers are told to end; busy ones (none after `cancel`) are killed."""
        for worker in list(self._workers):
            if worker.job is None and worker.process.is_alive():
                _tell_to_end(worker)
        for worker in list(self._workers):
            worker.process.join(timeout=None if worker.job is None else 0)
            self._end(worker)

    def _end(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self._workers.remove(worker)


def _tell_to_end(worker: _Worker) -> None:
    """Ask an idle worker to end (None instead of a job); a worker already gone needs nothing."""
    with suppress(OSError):
        worker.conn.send(None)


@contextmanager
def _sigint_held() -> Iterator[None]:
    """SIGINT blocked in this thread for the block, and a Ctrl-C in it held and raised after it.

    A process started in the block inherits SIGINT blocked (through exec), and `_serve` ignores it
    before unblocking it: so a Ctrl-C reaches only this process, which stops the jobs. Not
    SIG_IGN here: with another thread running (the live board's), the kernel hands the signal to
    that thread, and an ignored signal is then dropped, not delayed."""
    pressed: list[int] = []
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if pressed and callable(previous):
        previous(signal.SIGINT, None)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


#: Linux prctl(2) option: the signal a process gets when its parent dies
PR_SET_PDEATHSIG = 1


def _serve(conn: Connection, parent: int | None = None) -> None:
    """A worker process: jobs from `conn` until None (or SIGTERM while idle); each job's output
    goes into its log, SIGTERM stops it as Ctrl-C would, and its result goes back. SIGTERM also
    comes when the `parent` process dies (`_stop_with_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, _stop)  # training installs its own (save, then stop) while it runs
    streams = os.dup(1), os.dup(2)
    try:
        if parent is not None:
            _stop_with_parent(parent)
        while (job := conn.recv()) is not None:
            conn.send(_run(job, streams))
            signal.signal(signal.SIGTERM, _stop)
    except (KeyboardInterrupt, EOFError, OSError):
        pass  # stopped while idle, or the parent is gone


def _stop_with_parent(parent: int) -> None:
    """Have SIGTERM sent to this worker when its parent (pid `parent`) dies, so that a plan killed
    with kill -9 does not leave its workers training on, holding their runs (a rerun would find
    "another sftkd process is using this run"): the job stops as on SIGTERM (training saves its
    checkpoint) and the worker exits. Linux only (prctl PR_SET_PDEATHSIG); elsewhere a worker
    notices when it next uses its pipe. A parent that died before the setting took hold is seen
    by its pid: this process then sends itself the signal."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # no prctl to call: as on other systems
        return
    if os.getppid() != parent:  # the parent died first: reparented already
        os.kill(os.getpid(), signal.SIGTERM)


def _run(job: StageJob, streams: tuple[int, int]) -> StageResult:
    """Run one job with this process's output in its log; SIGTERM ignored once it is done, so the result gets through."""
    try:
        if job.log is not None:  # everything the process writes (warnings, C libraries) goes to the log
            _flush()
            job.log.parent.mkdir(parents=True, exist_ok=True)
            fd = open_log_for_append(job.log)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        result = run_stage_job(job)
    except KeyboardInterrupt:  # SIGTERM outside the stage's own handling
        result = StageResult(job.stage.id, job.stage.kind, INTERRUPTED, note="stopped")
    except Exception as exc:  # noqa: BLE001 - e.g. the log cannot be opened: the stage fails, the worker goes on
        result = StageResult(job.stage.id, job.stage.kind, FAILED, note=failure_note(exc))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _flush()
        os.dup2(streams[0], 1)
        os.dup2(streams[1], 2)
    return result


def _flush() -> None:
    """Python's buffered output written out, before the file behind it changes."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def check_executor(name: str, address: str | None = None, jobs: int = 1, per_gpu: int | None = None) -> None:
    """`name` is one of EXECUTORS, an `address` (a Ray cluster's) goes with "ray" only, and a
    `per_gpu` given (not None) with stages that share GPUs: "ray", or "local" with `jobs` > 1."""
    if name not in EXECUTORS:
        raise SftkdError(f"executor {name!r}: expected one of {', '.join(EXECUTORS)}{did_you_mean(name, EXECUTORS)}")
    if address is not None and name != "ray":
        raise SftkdError("--address: add --executor ray (the address is that of a Ray cluster)")
    if per_gpu is not None and name == "local" and jobs == 1:
        raise SftkdError(f"--per-gpu {per_gpu}: add --jobs N (N > 1) or --executor ray; "
                         "one stage at a time has the GPU to itself")


def make_executor(name: str, jobs: int, per_gpu: int, address: str | None = None) -> Executor | None:
    """The executor `reproduce --executor NAME --jobs N` runs stages with: "ray" (a Ray cluster at
    `address`, or a local one), or "local" worker processes when `jobs` > 1; None runs the stages
    one after the other in this process. Another name, or an address without "ray", is an SftkdError."""
    check_executor(name, address)
    if name == "ray":
        from sftkd_cli.reproduce.ray_executor import RayExecutor  # Ray only when asked for

        return RayExecutor(jobs, address=address, per_gpu=per_gpu)
    return LocalExecutor(jobs, per_gpu=per_gpu) if jobs > 1 else None
