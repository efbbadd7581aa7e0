"""`reproduce --jobs N` on a machine with GPUs (`LocalExecutor`'s placement; its worker processes
stood in for, the GPUs counted, nothing run): which GPU each job gets, which worker runs it, and
how many torch threads.

Device: CPU (no GPU is used: the executor only decides placement here)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from test_reproduce import write_plan

from sftkd_cli.reproduce import build_stages, load_plan
from sftkd_cli.reproduce import executor as executor_module
from sftkd_cli.reproduce.executor import LocalExecutor
from sftkd_cli.reproduce.jobs import StageJob


class _Process:
    """A worker process that is alive until told to end."""

    def __init__(self) -> None:
        self.alive, self.pid, self.exitcode = True, 0, None

    def is_alive(self) -> bool:
        return self.alive

    def kill(self) -> None:
        self.alive = False

    def join(self, timeout: float | None = None) -> None:
        pass


class _Conn:
    def __init__(self, process: _Process) -> None:
        self.process, self.sent = process, []

    def send(self, job) -> None:
        self.sent.append(job)
        if job is None:
            self.process.alive = False

    def close(self) -> None:
        pass


@pytest.fixture
def stand_in_workers(monkeypatch):
    """LocalExecutor's workers as stand-ins; returns the list of every worker ever spawned."""
    spawned = []

    def spawn(self):
        process = _Process()
        worker = executor_module._Worker(process, _Conn(process))
        self._workers.append(worker)
        spawned.append(worker)
        return worker

    monkeypatch.setattr(LocalExecutor, "_spawn", spawn)
    return spawned


@pytest.fixture
def job(tmp_path, tiny_dataset):
    """A job for the plan's teacher stage, its recipe on `device`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    plan = load_plan(write_plan(tmp_path, tiny_dataset), ["train.threads=0"])
    stages = build_stages(plan)
    teacher = next(s for s in stages if s.id == "teacher")

    def on(device: str) -> StageJob:
        train = dataclasses.replace(teacher.recipe.train, device=device)
        stage = dataclasses.replace(teacher, recipe=dataclasses.replace(teacher.recipe, train=train))
        return StageJob(plan, stage, tuple(stages))

    return on


def _finish(worker) -> None:
    worker.job = worker.gpu = None  # as `_collect` leaves a worker whose job is done


def test_a_worker_process_works_on_one_gpu_only(stand_in_workers, job):
    """Stages released a few at a time, finishing in a random order (4 slots on 2 GPUs): every
    worker process runs all its GPU jobs on one GPU, and no GPU has more than per_gpu jobs."""
    executor = LocalExecutor(4, per_gpu=2, cpus=16, gpus=2)
    rng = random.Random(1)
    for _ in range(80):
        for _ in range(min(rng.randint(0, 2), executor.slots - len(executor._busy()))):
            executor.submit(job("auto"))
            load = [sum(w.gpu == gpu for w in executor._busy()) for gpu in range(2)]
            assert max(load) <= 2
            assert len([w for w in executor._workers if w.process.is_alive()]) <= executor.slots
        if executor._busy():
            _finish(rng.choice(executor._busy()))
    for worker in stand_in_workers:
        gpus = {sent.device for sent in worker.conn.sent if sent is not None}
        assert len(gpus) <= 1, gpus
    assert {sent.device for w in stand_in_workers for sent in w.conn.sent if sent is not None} == {"cuda:0", "cuda:1"}


def test_a_recipes_own_gpu_counts_and_cpu_jobs_take_any_worker(stand_in_workers, job):
    executor = LocalExecutor(4, per_gpu=2, cpus=16, gpus=2)
    executor.submit(job("cuda:1"))
    executor.submit(job("cuda:1"))
    executor.submit(job("auto"))  # cuda:1 holds two already
    assert [w.gpu for w in executor._busy()] == [1, 1, 0]
    executor.submit(job("cpu"))
    assert executor._busy()[-1].gpu is None and executor._busy()[-1].job.device is None


def test_threads_are_the_cpus_shared_by_the_stages_that_run_at_once():
    assert LocalExecutor(8, per_gpu=2, cpus=16, gpus=1).threads == 8  # 2 stages at once on one GPU
    assert LocalExecutor(4, cpus=16, gpus=0).threads == 4
