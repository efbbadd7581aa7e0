"""`sftkd reproduce --executor ray`: a plan on a real local Ray cluster (a head and a worker node,
started with `ray start` as on a real cluster) survives a worker killed in the middle of a
training stage and gives the weights and report tables of a local run, then skips everything;
a stage whose worker dies on every retry fails alone; stages hold a share of a GPU; without Ray
the option says in one line how to install it.

Device: CPU (one CPU per Ray node; the stages get train.device=cpu). The cluster tests are
skipped when Ray is not installed (`pip install 'sftkd[cluster]'`); the cluster is always
stopped, also when a test fails.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_reproduce import quiet, statuses, write_plan
from typer.testing import CliRunner

from sftkd_cli.cli.app import app
from sftkd_cli.errors import SftkdError
from sftkd_cli.reproduce import default_trainers, load_plan, run_plan
from sftkd_cli.runs import load_checkpoint

TESTS = Path(__file__).resolve().parent
CPU = ["train.device=cpu"]
TRAINED = ("teacher", "student", "sft", "std-kd-at", "sft-kd-at")
#: seconds the cluster may take to start (a few on an idle machine)
START_TIMEOUT = 120
#: Ray's token authentication with a token of this session only: `--node-ip-address=127.0.0.1`
#: does not stop Ray from listening on every interface, so the test cluster must not be open to
#: anyone who reaches this machine; a token in ~/.ray does not matter here (Ray before 2.5x has
#: no authentication and ignores both variables)
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def sft_killed_after_first_epoch(recipe, **kwargs):
    """train-sft whose Ray worker process is killed (SIGKILL) right after the first epoch's
    checkpoint, on the first attempt only; every attempt appends 'pid resume' to a file beside the
    runs folder. Module level: the Ray workers import it by name (tests/ is on their PYTHONPATH)."""
    from sftkd_cli.training.engine import Trainer
    from sftkd_cli.training.sft import train_sft

    attempts = Path(recipe.run.dir).parent / "sft-attempts.txt"
    first = not attempts.exists()
    with open(attempts, "a") as handle:
        handle.write(f"{os.getpid()} {kwargs.get('resume')}\n")
    if first:  # the worker runs this one stage only (max_calls=1): the patch dies with it
        report_epoch = Trainer._report_epoch

        def then_die(self, row, improved):
            report_epoch(self, row, improved)
            self.writer.wait()  # the epoch's checkpoint is on disk (written in the background)
            os.kill(os.getpid(), signal.SIGKILL)

        Trainer._report_epoch = then_die
    return train_sft(recipe, **kwargs)


def killed_always(recipe, **kwargs):
    """A trainer whose worker dies every time (SIGKILL); each attempt appends a line beside the runs folder."""
    with open(Path(recipe.run.dir).parent / "attempts.txt", "a") as handle:
        handle.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(what: str, ready, node: subprocess.Popen, log: Path, deadline: float) -> None:
    """Poll `ready()` until it is true; fail with the node's log when it ends or time runs out."""
    while not ready():
        assert node.poll() is None and time.monotonic() < deadline, f"{what}: {log.read_text()}"
        time.sleep(0.2)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster, head and one worker node with one CPU each, started as on a real
    cluster (`ray start`); yields its address. Both `ray start --block` processes lead their own
    process group, which is ended at the end (also after a failure)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'sftkd[cluster]')")
    driver = pytest.MonkeyPatch()
    for key, value in AUTH.items():
        driver.setenv(key, value)  # this process connects as the driver; Ray reads them on import
    import ray
    folder = Path(tempfile.mkdtemp(prefix="sftkd-ray-"))  # short: Ray's socket paths have a length limit
    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_bin = Path(sys.executable).parent / "ray"  # the `ray` command of this environment
    if not ray_bin.is_file():
        ray_bin = Path(shutil.which("ray") or pytest.skip("no `ray` command beside this Python or on PATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0", **AUTH}
    common = ["--block", "--disable-usage-stats", "--num-cpus=1", "--num-gpus=0", "--node-ip-address=127.0.0.1",
              f"--object-store-memory={80 << 20}"]
    nodes: list[subprocess.Popen] = []
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # ray.init replaces them

    def start(name: str, *args: str) -> None:
        with open(folder / f"{name}.log", "w") as log:
            nodes.append(subprocess.Popen([str(ray_bin), "start", *args, *common], stdout=log, stderr=subprocess.STDOUT,
                                          env=env, cwd=folder, start_new_session=True))

    try:
        start("head", "--head", f"--port={port}", f"--temp-dir={folder}", "--include-dashboard=false")
        deadline = time.monotonic() + START_TIMEOUT
        _wait_for("head", lambda: _listening(port), nodes[0], folder / "head.log", deadline)
        start("worker", f"--address={address}")
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        _wait_for("worker node", lambda: sum(1 for n in ray.nodes() if n.get("Alive")) == 2, nodes[1],
                  folder / "worker.log", deadline)
        ray.shutdown()
        yield address
    finally:
        ray.shutdown()
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for node in nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)  # ray start --block stops its node's processes
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        shutil.rmtree(folder, ignore_errors=True)
        driver.undo()


def plan_in(folder: Path, data: Path):
    folder.mkdir(parents=True, exist_ok=True)
    return load_plan(write_plan(folder, data), CPU)


def tables(report: Path, folder: Path) -> str:
    """report.md without what differs between two runs of the same plan: when it was written, the
    status table (times; the killed stage reads resumed) and the folders."""
    text = (report / "report.md").read_text().split("## Plan status")[0].replace(str(folder), "FOLDER")
    return "\n".join(line for line in text.splitlines() if not line.startswith("- written "))


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: record["state"] for name, record in load_checkpoint(run / "checkpoints" / "last.pt")["models"].items()}


def test_ray_plan_survives_a_killed_worker_and_matches_a_local_run(tmp_path, tiny_dataset, ray_cluster):
    from sftkd_cli.reproduce.ray_executor import RayExecutor

    local = plan_in(tmp_path / "local", tiny_dataset)
    assert not run_plan(local, console=quiet()).failed

    on_ray = plan_in(tmp_path / "ray", tiny_dataset)
    trainers = {**default_trainers(), "sft": sft_killed_after_first_epoch}
    outcome = run_plan(on_ray, console=quiet(), trainers=trainers, executor=RayExecutor(2, address=ray_cluster))
    got = statuses(outcome)
    assert not outcome.failed, [(r.id, r.note) for r in outcome.failed]
    assert got["data"] == "skipped" and got["sft"] == "resumed" and got["report"] == "done"
    assert {got[s] for s in got if s not in ("data", "sft")} == {"done"}
    assert next(r.note for r in outcome.results if r.id == "sft") == "from 1/2 epochs"
    attempts = [line.split() for line in (tmp_path / "ray" / "sft-attempts.txt").read_text().splitlines()]
    assert [resume for _, resume in attempts] == ["False", "True"] and attempts[0][0] != attempts[1][0]
    history = (on_ray.runs_dir / "sft" / "history.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in history] == [1, 2]
    for name in TRAINED:
        ours, theirs = weights(on_ray.runs_dir / name), weights(local.runs_dir / name)
        assert ours.keys() == theirs.keys()
        for model in ours:
            for key in ours[model]:
                assert torch.equal(ours[model][key], theirs[model][key]), (name, model, key)
    assert tables(on_ray.report_dir, tmp_path / "ray") == tables(local.report_dir, tmp_path / "local")
    assert (on_ray.report_dir / "logs" / "sft.log").is_file()

    # nothing is rewritten; the run locks aside: a stage on Ray first checks that no one holds its
    # lock by taking it, and filelock 4.1 (the last for Python 3.10; not 4.3) truncates the file then
    stamps = {p: p.stat().st_mtime_ns for p in on_ray.runs_dir.rglob("*")
              if p.is_file() and "report" not in p.parts and p.name != ".lock"}
    handler = signal.getsignal(signal.SIGTERM)
    again = run_plan(on_ray, console=quiet(), executor=RayExecutor(2, address=ray_cluster))
    assert signal.getsignal(signal.SIGTERM) is handler, "ray.init's SIGTERM handler outlived the executor"
    assert set(statuses(again).values()) == {"skipped"}
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}

    dies = plan_in(tmp_path / "dies", tiny_dataset)  # Ray's retries run out: the stage fails, the plan goes on
    one_retry = RayExecutor(1, address=ray_cluster, max_retries=1)
    outcome = run_plan(dies, only=["teacher", "student"], console=quiet(), executor=one_retry,
                       trainers={**default_trainers(), "teacher": killed_always})
    teacher = next(r for r in outcome.results if r.id == "teacher")
    assert teacher.status == "failed" and "WorkerCrashedError" in teacher.note and "died 2 times" in teacher.note
    assert statuses(outcome)["student"] == "done"
    assert len((tmp_path / "dies" / "attempts.txt").read_text().splitlines()) == 2


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path, tiny_dataset, monkeypatch):
    from sftkd_cli.reproduce.ray_executor import check_reachable

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    plan = write_plan(tmp_path, tiny_dataset)
    result = CliRunner().invoke(app, ["reproduce", str(plan), "--executor", "ray"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'sftkd[cluster]'" in lines[0], result.output
    assert not (tmp_path / "runs").exists()

    result = CliRunner().invoke(app, ["reproduce", str(plan), "--address", "HEAD:6379"])
    assert result.exit_code == 2 and "--address: add --executor ray" in result.output, result.output
    with socket.socket() as held, pytest.raises(SftkdError, match="no Ray cluster answers there"):
        held.bind(("127.0.0.1", 0))  # bound, never listening: refused, and no other process can take it
        check_reachable(f"127.0.0.1:{held.getsockname()[1]}")  # (Ray would retry for minutes)


def test_stages_hold_a_share_of_a_gpu_and_fit_on_the_largest_node(tmp_path, tiny_dataset, monkeypatch):
    """Placement only (no cluster: a stand-in for `ray` that reports two nodes)."""
    from sftkd_cli.reproduce import build_stages
    from sftkd_cli.reproduce.jobs import StageJob
    from sftkd_cli.reproduce.ray_executor import RayExecutor

    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 4.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    fake = types.SimpleNamespace(is_initialized=lambda: True, nodes=lambda: nodes,
                                 remote=lambda *args, **kwargs: (lambda f: f) if kwargs else args[0])
    monkeypatch.setitem(sys.modules, "ray", fake)
    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    stages = {s.id: s for s in build_stages(plan)}
    executor = RayExecutor(2, per_gpu=4)
    assert (executor.largest_cpus, executor.gpus, executor.threads) == (8, 1.0, 6)

    def placed(stage, **train):
        if train:
            recipe = stage.recipe
            recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **train))
            stage = dataclasses.replace(stage, recipe=recipe)
        job, options = executor.resources(StageJob(plan, stage, tuple(stages.values())))
        return job.threads, job.device, options

    assert placed(stages["teacher"], threads=1) == (1, None, {"num_cpus": 1, "num_gpus": 0.25})  # device auto
    assert placed(stages["eval-sft"], threads=0) == (6, None, {"num_cpus": 6, "num_gpus": 0.25})
    assert placed(stages["sft"], threads=16, device="cuda:1") == (16, "cuda", {"num_cpus": 8, "num_gpus": 0.25})
    assert placed(stages["student"], device="cpu")[2]["num_gpus"] == 0
    assert placed(stages["report"])[2] == placed(stages["data"])[2] == {"num_cpus": 6, "num_gpus": 0}
