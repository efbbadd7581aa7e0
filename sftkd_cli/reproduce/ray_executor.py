"""`sftkd reproduce PLAN --executor ray`: the plan's stages as Ray tasks on a Ray cluster.

The scheduler is the same as for `--jobs N` on one machine; only where a stage runs changes. Each
stage is one Ray task (`run_on_worker(job)`, which runs `jobs.run_stage_job` as the local
executor's processes do) holding Ray resources while it runs:

- CPUs: the recipe's train.threads, else the cluster's CPUs split between the `jobs` stages in
  flight (at most the CPUs of the largest node, so that every stage fits on some node);
- GPU: a training or evaluation stage whose recipe says train.device auto or cuda holds
  1/`per_gpu` of a GPU when the cluster has GPUs (Ray makes that GPU the task's only visible
  one, so `cuda` means it); other stages hold none.

A stage that holds a GPU runs in a fresh worker process (Ray's `max_calls=1`): CUDA starts in it
with the GPU Ray gave this task (a process keeps the GPUs it started CUDA with), and the stage's
GPU memory is returned when it ends. The other stages share Ray's worker processes (torch is
imported once per worker, as `--jobs` does locally). A stage's output goes to its log
(<report>/logs/<stage>.log), as with `--jobs`.

A worker that dies (killed, out of memory, its node lost) is Ray's to handle: the task is retried
(`max_retries`, Ray's own retry of tasks whose worker died) on another worker. The retry decides
afresh from the files what to do, as a new `sftkd reproduce` would: a run with a last checkpoint
is resumed from it (resume=True), a finished one is skipped. The dead worker's run lock does not
block it: the lock is a kernel flock (filelock), released when its process dies; on NFS a lock
of a lost node lapses with the server's lease, and the retry waits up to `LOCK_WAIT` seconds
for it.

What every node must see: the same sftkd (and torch) installed, and the plan's data, runs
directory and report folder at the same paths, on storage every node mounts (NFS, a cluster file
system). Relative paths of a plan are read from the driver's current folder: each task first
changes into that folder when its node has it, so run the command from a shared folder or give
the plan absolute paths. A cluster, for example:

    head:         ray start --head --port 6379
    each worker:  ray start --address HEAD:6379
    then:         sftkd reproduce PLAN --executor ray --address HEAD:6379 --jobs 8

(this process connects as a Ray driver, like any Ray client of that cluster: the same Ray version,
and the cluster's authentication token where it uses one).

Ray is optional (`pip install 'sftkd[cluster]'`): this module imports it only when an executor
is made, and says in one line how to install it when it is missing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftkd_cli.errors import SftkdError, os_error_text
from sftkd_cli.files import open_log_for_append
from sftkd_cli.reproduce.jobs import StageJob, run_stage_job
from sftkd_cli.choices import TRAIN_KINDS
from sftkd_cli.reproduce.kinds import FAILED, INTERRUPTED
from sftkd_cli.reproduce.stages import StageResult
from sftkd_cli.run_files import LOCK

#: how Ray is installed with sftkd (the `cluster` extra)
INSTALL = "pip install 'sftkd[cluster]'"
#: Ray retries of a stage whose worker died (Ray's `max_retries`); the stage resumes each time
MAX_RETRIES = 3
#: seconds a retried stage waits for a dead worker's run lock to lapse (NFS lease) before it gives up
LOCK_WAIT = 120.0
#: seconds `cancel` waits for stopping stages to save and end before it kills them
CANCEL_WAIT = 300.0
#: seconds to wait for the cluster's head to answer at --address
CONNECT_TIMEOUT = 10.0
#: stages that may hold a share of a GPU
GPU_KINDS = (*TRAIN_KINDS, "evaluate")


def import_ray() -> Any:
    """The `ray` module, or the one-line SftkdError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SftkdError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


class RayExecutor:
    """Runs each `StageJob` as a Ray task, `jobs` at once (see the module docstring).

    `address`: the cluster (`ray.init`'s address: host:port of the head, 'auto', ray://...;
    None: RAY_ADDRESS, else a cluster started on this machine with `ray start`, else a new Ray
    on this machine). A Ray connection the caller already made is used as it is and kept open."""

    def __init__(self, jobs: int, *, address: str | None = None, per_gpu: int = 4,
                 max_retries: int = MAX_RETRIES) -> None:
        if jobs < 1 or per_gpu < 1 or max_retries < 0:
            raise ValueError("jobs and per_gpu must be at least 1, max_retries at least 0")
        self.ray = import_ray()
        self.jobs, self.per_gpu, self.max_retries = jobs, per_gpu, max_retries
        # ray.init installs its own SIGINT/SIGTERM handlers in this process: put ours back on close
        self._handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self._owns_connection = _connect(self.ray, address)
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        self.largest_cpus = max([int(n.get("CPU", 0)) for n in nodes] + [1])
        self.gpus = sum(float(n.get("GPU", 0)) for n in nodes)
        self.threads = max(1, min(self.largest_cpus, int(sum(float(n.get("CPU", 0)) for n in nodes)) // jobs))
        self._task = self.ray.remote(run_on_worker)
        self._gpu_task = self.ray.remote(max_calls=1)(run_on_worker)  # a fresh process per GPU stage
        self._running: dict[Any, StageJob] = {}  # object ref -> its job
        self._cwd = os.getcwd()

    @property
    def slots(self) -> int:
        return self.jobs

    def resources(self, job: StageJob) -> tuple[StageJob, dict[str, Any]]:
        """The job as placed (torch threads, device) and the Ray resources its task holds."""
        recipe = job.stage.recipe
        threads = recipe.train.threads if recipe is not None and recipe.train.threads else self.threads
        options: dict[str, Any] = {"num_cpus": min(threads, self.largest_cpus), "num_gpus": 0}
        device = job.device
        wants_gpu = recipe is not None and job.stage.kind in GPU_KINDS and recipe.train.device.split(":")[0] in ("auto", "cuda")
        if self.gpus and wants_gpu:
            options["num_gpus"] = 1 / self.per_gpu
            if recipe.train.device.startswith("cuda:"):
                device = "cuda"  # the task sees only the GPU Ray gave it
        return dataclasses.replace(job, threads=threads, device=device), options

    def submit(self, job: StageJob) -> None:
        job, options = self.resources(job)
        remote = self._gpu_task if options["num_gpus"] else self._task
        task = remote.options(**options, max_retries=self.max_retries, retry_exceptions=False, name=f"sftkd-{job.stage.id}")
        self._running[task.remote(job, self._cwd)] = job

    def wait(self, timeout: float | None = None) -> list[StageResult]:
        if not self._running:
            return []
        ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if ready:  # and whatever else has finished meanwhile
            ready, _ = self.ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        return [self._collect(ref) for ref in ready]

    def _collect(self, ref: Any, stopping: bool = False) -> StageResult:
        """The task's result, or a failed / interrupted one when Ray could not run it to the end."""
        job = self._running.pop(ref)
        stage = job.stage
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.TaskCancelledError:
            return StageResult(stage.id, stage.kind, INTERRUPTED, note="stopped")
        except self.ray.exceptions.RayError as exc:
            if stopping:
                return StageResult(stage.id, stage.kind, INTERRUPTED, note=f"stopped ({type(exc).__name__})")
            lines = str(exc).strip().splitlines()
            crashed = self.ray.exceptions.WorkerCrashedError
            died = isinstance(exc, (crashed, getattr(self.ray.exceptions, "NodeDiedError", crashed)))
            return StageResult(stage.id, stage.kind, FAILED,
                               note=f"Ray: {type(exc).__name__}: {lines[0] if lines else ''}"
                                    + (f" (its worker died {self.max_retries + 1} times)" if died else "")
                                    + "; run the same command again to resume")
        return result if isinstance(result, StageResult) else StageResult(
            stage.id, stage.kind, FAILED, note=f"Ray task returned {type(result).__name__}, not a stage result")

    def cancel(self) -> list[StageResult]:
        """Ctrl-C for every running stage (Ray raises KeyboardInterrupt in the task: training saves
        and stops); waits for them; a second Ctrl-C meanwhile kills them at once."""
        refs = list(self._running)
        for ref in refs:
            self.ray.cancel(ref, force=False)
        try:
            self.ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT)
        except KeyboardInterrupt:
            self.close()
            raise
        results = []
        for ref in refs:
            if self.ray.wait([ref], timeout=0)[0]:
                results.append(self._collect(ref, stopping=True))
            else:  # still not stopped: kill its worker (what a kill -9 leaves also resumes)
                self.ray.cancel(ref, force=True)
                job = self._running.pop(ref)
                results.append(StageResult(job.stage.id, job.stage.kind, INTERRUPTED, note="killed while stopping"))
        return results

    def close(self) -> None:
        for ref in list(self._running):
            self.ray.cancel(ref, force=True)
            self._running.pop(ref)
        if self._owns_connection and self.ray.is_initialized():
            self.ray.shutdown()
            for number, handler in self._handlers.items():
                signal.signal(number, handler)


def _connect(ray: Any, address: str | None) -> bool:
    """Connect this process to Ray (see `RayExecutor`); True when this call made the connection."""
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    try:
        ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--address {address}" if address else "Ray"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SftkdError(f"{where}: could not connect to a Ray cluster ({first})") from None
    return True


def check_reachable(address: str) -> None:
    """Refuse at once a HOST:PORT address where nothing listens (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or "/" in host or not port.isdigit():
        return  # 'auto', ray://..., or something Ray reads itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise SftkdError(f"--address {address}: no Ray cluster answers there ({os_error_text(exc)}); "
                         "start one with `ray start --head` or check the address") from None


def run_on_worker(job: StageJob, cwd: str) -> StageResult:
    """The Ray task of one stage: in the driver's folder when this node has it, output into the
    stage's log, the dead predecessor's run lock awaited, then the stage as `run_stage_job` does it."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        with _output_to(job.log):
            if job.stage.kind in TRAIN_KINDS and job.stage.run is not None:
                wait_for_lock(job.stage.run / LOCK, LOCK_WAIT)
            return run_stage_job(job)
    except SftkdError as exc:  # the log refused (a link or FIFO in its place): the stage fails with that line
        return StageResult(job.stage.id, job.stage.kind, FAILED, note=str(exc))


@contextmanager
def _output_to(log: Path | None) -> Iterator[None]:
    """Everything the process writes (warnings, C libraries) goes to `log` for the block (None:
    unchanged); the worker's own output files come back afterwards."""
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd = open_log_for_append(log)
    kept = [os.dup(1), os.dup(2)]
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for target, saved in zip((1, 2), kept):
            os.dup2(saved, target)
            os.close(saved)


def wait_for_lock(path: os.PathLike[str] | str, seconds: float) -> bool:
    """Wait until nobody holds the run lock at `path` (at most `seconds`); True when it is free.

    Only a lock left by a worker that died on another node (NFS lease) makes this wait; a missing
    lock file, or one nobody holds, returns at once. Training takes the lock itself afterwards, and
    refuses the run as locally when someone still holds it."""
    from filelock import FileLock, Timeout

    if not os.path.exists(path):
        return True
    deadline = time.monotonic() + seconds
    while True:
        try:
            with FileLock(path, timeout=0):
                return True
        except Timeout:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)
