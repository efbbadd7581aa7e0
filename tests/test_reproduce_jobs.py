"""`sftkd reproduce --jobs N`: stages at once give the results of one after another (same
weights, same report tables), a failure skips only its dependants, an interrupted parallel plan
resumes, the live board degrades to lines, and the estimate's schedule simulation.

Device: CPU (the workers get train.device=cpu: they are other processes, which do not inherit
the test session's hidden CUDA).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_reproduce import quiet, statuses, write_plan

from sftkd_cli.errors import RunInterrupted
from sftkd_cli.reproduce import build_stages, default_trainers, load_plan, run_plan
from sftkd_cli.reproduce.estimate import estimate_plan
from sftkd_cli.reproduce.graph import makespan, ranks, simulate, waits_for
from sftkd_cli.reproduce.jobs import stage_log
from sftkd_cli.reproduce.live import Board
from sftkd_cli.reproduce.schedule import run_graph
from sftkd_cli.reproduce.stages import Stage, StageResult
from sftkd_cli.runs import load_checkpoint

CPU = ["train.device=cpu"]
TRAINED = ("teacher", "student", "sft", "std-kd-at", "sft-kd-at")


def broken_sft(recipe, **kwargs):
    """A trainer that fails (module level: the worker processes import it by name)."""
    raise RuntimeError("boom")


def plan_in(folder: Path, data: Path, extra: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    return load_plan(write_plan(folder, data, extra), CPU)


def tables(report: Path) -> str:
    """report.md without what differs between two runs of the same plan: times and folders."""
    text = (report / "report.md").read_text().split("## Plan status")[0].replace(str(report.parent.parent), "PLAN")
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "TIME", text)


def compared(report: Path) -> list[dict[str, str]]:
    """compare.csv's rows without the measured latency."""
    rows = list(csv.DictReader(io.StringIO((report / "compare.csv").read_text())))
    return [{k: v for k, v in row.items() if not k.startswith("latency")} for row in rows]


# ----------------------------------------------------------------------------- the same results


def test_jobs_3_gives_the_weights_and_tables_of_jobs_1(tmp_path, tiny_dataset):
    one = plan_in(tmp_path / "one", tiny_dataset)
    three = plan_in(tmp_path / "three", tiny_dataset)
    first = run_plan(one, console=quiet())
    board = io.StringIO()
    second = run_plan(three, console=quiet(), progress=Console(file=board, width=200), jobs=3)
    assert not first.failed and not second.failed, second.results
    assert statuses(first) == statuses(second) and [r.id for r in first.results] == [r.id for r in second.results]
    for name in TRAINED:
        for checkpoint in ("best", "last"):
            a = load_checkpoint(one.runs_dir / name / "checkpoints" / f"{checkpoint}.pt")["objective"]
            b = load_checkpoint(three.runs_dir / name / "checkpoints" / f"{checkpoint}.pt")["objective"]
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, checkpoint)
        assert json.loads((one.runs_dir / name / "metrics.json").read_text())["metrics"] == \
            json.loads((three.runs_dir / name / "metrics.json").read_text())["metrics"]
    assert tables(one.report_dir) == tables(three.report_dir)
    assert "- overrides from the command line (every stage): `train.device=cpu`" in (one.report_dir / "report.md").read_text()
    assert compared(one.report_dir) == compared(three.report_dir)
    assert second.report == three.report_dir
    log = stage_log(three, next(s for s in build_stages(three) if s.id == "teacher"))
    assert "teacher: done in" in log.read_text() and "epoch 2:" in log.read_text()
    lines = board.getvalue().splitlines()  # not a terminal: one line per event, no table
    assert any(line.startswith("[2/") and "teacher: started" in line for line in lines)
    assert any("sft-kd-at: done in" in line for line in lines) and "running" not in board.getvalue()
    assert all(t.how in ("complete", "log") for t in estimate_plan(three, build_stages(three), {s.id for s in build_stages(three)}, 3).times
               if t.id != "data")  # nothing left to run: the estimate reads the finished runs


# ----------------------------------------------------------------------------- failures and Ctrl-C


def test_a_failing_stage_skips_only_what_needs_it(tmp_path, tiny_dataset):
    plan = plan_in(tmp_path, tiny_dataset)
    trainers = {**default_trainers(), "sft": broken_sft, "student": lambda recipe, **kwargs: None}  # a lambda does not pickle
    outcome = run_plan(plan, console=quiet(), jobs=2, trainers=trainers,
                       only=["data", "teacher", "student", "sft", "kd", "eval-*kd-at", "eval-sft", "report"])
    got = statuses(outcome)
    assert got["sft"] == "failed" and [r.id for r in outcome.failed] == ["student", "sft"]
    assert next(r.note for r in outcome.results if r.id == "student").startswith("not started: ")
    assert got["sft-kd-at"] == got["eval-sft-kd-at"] == got["eval-sft"] == "skipped"
    assert "sft failed" in next(r.note for r in outcome.results if r.id == "sft-kd-at")
    assert got["teacher"] == got["std-kd-at"] == got["eval-std-kd-at"] == got["report"] == "done"
    assert "RuntimeError: boom" in (plan.report_dir / "errors.log").read_text()
    assert "| sft | failed |" in (plan.report_dir / "report.md").read_text()
    assert "RuntimeError: boom" in stage_log(plan, next(s for s in build_stages(plan) if s.id == "sft")).read_text()


def pausing_sft(recipe, **kwargs):
    """train_sft, but after the SFT run's first epoch it says so (a file `paused` beside the runs)
    and waits for SIGTERM (what the scheduler sends on Ctrl-C); the engine then stops after that epoch."""
    from sftkd_cli.training.engine import Trainer
    from sftkd_cli.training.sft import train_sft

    report_epoch = Trainer._report_epoch

    def pause(self, row, improved):
        report_epoch(self, row, improved)
        if row["epoch"] == 1:
            stop = signal.getsignal(signal.SIGTERM)  # the trainer's flag while it fits
            (Path(recipe.run.dir) / "paused").touch()
            deadline = time.monotonic() + 60
            while not getattr(stop, "raised", True) and time.monotonic() < deadline:
                time.sleep(0.02)

    Trainer._report_epoch = pause
    try:
        return train_sft(recipe, **kwargs)
    finally:
        Trainer._report_epoch = report_epoch


def test_ctrl_c_stops_every_job_and_the_plan_resumes(tmp_path, tiny_dataset):
    plan = plan_in(tmp_path, tiny_dataset)
    only = ["data", "teacher", "sft", "kd", "eval-sft-kd-at"]
    paused = plan.runs_dir / "paused"

    sent: list[float] = []  # when Ctrl-C was pressed (for the message of a failure)

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 120
        while not paused.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=press_ctrl_c, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        outcome = run_plan(plan, console=quiet(), jobs=2, only=only, trainers={**default_trainers(), "sft": pausing_sft})
    except RunInterrupted as exc:
        assert re.search(r"stopped at stages? .*sft", str(exc)), str(exc)
    else:
        sft_log = (plan.report_dir / "logs" / "sft.log").read_text()[-2000:]
        pytest.fail(f"not interrupted: the plan ended after {time.monotonic() - started:.1f} s, Ctrl-C "
                    f"{f'pressed at {sent[0] - started:.1f} s' if sent else 'not yet pressed'} (paused: "
                    f"{paused.exists()}); statuses {statuses(outcome)}; sft's log ends:\n{sft_log}")
    thread.join()
    saved = load_checkpoint(plan.runs_dir / "sft" / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 0)  # SIGTERM during epoch 1's report: stopped after it
    assert not (plan.runs_dir / "sft-kd-at").exists()

    outcome = run_plan(plan, console=quiet(), jobs=2, only=only)
    got = statuses(outcome)
    assert got["sft"] == "resumed" and next(r.note for r in outcome.results if r.id == "sft") == "from 1/2 epochs"
    assert got["sft-kd-at"] == got["eval-sft-kd-at"] == "done" and not outcome.failed
    assert [row["epoch"] for row in map(json.loads, (plan.runs_dir / "sft" / "history.jsonl").read_text().splitlines())] == [1, 2]


class _CtrlCInAFinalizer:
    """Ctrl-C (or `signum`) pressed while this object's finalizer runs: Python drops the
    KeyboardInterrupt raised there ("Exception ignored in ...")."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:  # the handler runs here, inside the finalizer
            pass


class _InlineExecutor:
    """Finishes each job at its first wait; the first wait also drops a finalizer that gets Ctrl-C."""

    slots = 1

    def __init__(self, signum: int) -> None:
        self.jobs: list = []
        self.waits = 0
        self.cancelled = False
        self.signum = signum

    def submit(self, job) -> None:
        self.jobs.append(job)

    def wait(self, timeout=None):
        self.waits += 1
        if self.waits == 1:
            _CtrlCInAFinalizer(self.signum)
            return []
        done, self.jobs = self.jobs, []
        return [StageResult(job.stage.id, job.stage.kind, "done") for job in done]

    def cancel(self):
        self.cancelled = True
        stopped, self.jobs = self.jobs, []
        return [StageResult(job.stage.id, job.stage.kind, "interrupted") for job in stopped]

    def close(self) -> None:
        pass


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped KeyboardInterrupt
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_ctrl_c_dropped_inside_a_finalizer_still_stops_the_plan(tmp_path, tiny_dataset, sig):
    """The plan stops, and remembers which signal stopped it (the exit status: 130 or 143)."""
    plan = plan_in(tmp_path, tiny_dataset)
    todo = [Stage("data", "data"), Stage("report", "report", needs=("data",))]
    executor = _InlineExecutor(sig)
    run = run_graph(plan, todo, todo, {s.id for s in todo}, executor, console=quiet())
    assert run.interrupted and executor.cancelled and run.signum == sig, [(r.id, r.status) for r in run.results]
    assert [(r.id, r.status) for r in run.results] == [("data", "interrupted")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _report_sigint(queue) -> None:
    """A spawned child's SIGINT state as its code starts: (blocked?, handler is Python's default?)."""
    queue.put((signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []),
               signal.getsignal(signal.SIGINT) is signal.default_int_handler))


def test_a_ctrl_c_while_a_worker_starts_is_held_then_raised_not_lost():
    """While a worker process starts, Ctrl-C is held (another thread running, as the live board's
    is: with SIGINT ignored instead, the kernel gave it to that thread and it was dropped), and the
    child starts with SIGINT blocked, so that only this process gets it and stops the jobs."""
    import multiprocessing

    from sftkd_cli.reproduce.executor import _sigint_held

    other = threading.Event()
    thread = threading.Thread(target=other.wait, daemon=True)
    thread.start()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    reached = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigint_held():
                child = context.Process(target=_report_sigint, args=(queue,))
                child.start()
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the other thread takes it meanwhile
                reached = True  # held: not raised inside the block
    finally:
        other.set()
    assert reached and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert queue.get(timeout=60) == (True, True)
    child.join(timeout=60)
    assert child.exitcode == 0


# ----------------------------------------------------------------------------- the board and the estimate


def test_make_executor_refuses_a_name_it_does_not_know():
    """make_executor("rya", 2, 4) gave worker processes without a word; the command's choices are its names."""
    from sftkd_cli.choices import EXECUTORS
    from sftkd_cli.cli.reproduce import ExecutorName
    from sftkd_cli.errors import SftkdError
    from sftkd_cli.reproduce.executor import make_executor

    with pytest.raises(SftkdError, match=r"^executor 'rya': expected one of local, ray; did you mean ray\?$"):
        make_executor("rya", 2, 4)
    with pytest.raises(SftkdError, match="--address: add --executor ray"):
        make_executor("local", 1, 4, "HEAD:6379")
    assert make_executor("local", 1, 4) is None and [name.value for name in ExecutorName] == list(EXECUTORS)


def test_the_board_is_a_table_on_a_terminal_and_lines_elsewhere():
    todo = [Stage("data", "data"), Stage("teacher", "teacher", needs=("data",)), Stage("report", "report")]
    lines = io.StringIO()
    with Board(Console(file=lines, width=100), todo, 2) as board:
        board.finish(StageResult("data", "data", "skipped", note="up to date"))
        board.start(todo[1])
        board.finish(StageResult("teacher", "teacher", "failed", 1.5, "boom"))
    assert lines.getvalue().splitlines() == ["[1/3] data: skipped (up to date)", "[2/3] teacher: started",
                                             "[2/3] teacher: failed in 2 s (boom)"]
    screen, table = io.StringIO(), io.StringIO()
    with Board(Console(file=screen, width=100, force_terminal=True), todo, 2) as board:
        board.start(todo[1])
        Console(file=table, width=100).print(board.__rich__())
    assert "teacher" in table.getvalue() and "running" in table.getvalue() and "2 waiting" in table.getvalue()
    assert "started" not in screen.getvalue()  # the table shows it; no line


def test_the_schedule_simulation_on_a_hand_made_graph():
    # data (1 s) -> a (4 s) -> c (3 s); data -> b (2 s) -> e (1 s); report (1 s) waits for all
    order = ["data", "a", "b", "c", "e", "report"]
    waits = {"data": (), "a": ("data",), "b": ("data",), "c": ("a",), "e": ("b",), "report": ("data", "a", "b", "c", "e")}
    seconds = {"data": 1, "a": 4, "b": 2, "c": 3, "e": 1, "report": 1}
    rank = ranks(order, waits, seconds.__getitem__)
    assert rank == {"report": 1, "e": 2, "c": 4, "b": 4, "a": 8, "data": 9}
    assert makespan(simulate(order, waits, seconds, 1, rank)) == 12  # everything in a row
    two = simulate(order, waits, seconds, 2, rank)
    assert makespan(two) == 9  # data; a | b, e; c after a; report
    assert (two["a"].start, two["b"].start, two["e"].start, two["c"].start, two["report"].start) == (1, 1, 3, 5, 8)
    assert makespan(simulate(order, waits, seconds, 3, rank)) == 9  # the chain data-a-c-report bounds it
    assert makespan(simulate(order, waits, seconds, 2, rank, lambda k: 1 / k)) == 12  # two sharing one CPU: no gain
    shared = simulate(order, waits, seconds, 2, rank, lambda k: min(1.0, 1.5 / k))  # 1.5 CPUs for two
    # a and b at 0.75 until b ends (1 + 2/0.75); a and e at 0.75 until e ends (+1/0.75 = 5); a's last second alone; c; report
    assert (shared["b"].end, shared["e"].end, shared["a"].end) == pytest.approx((1 + 2 / 0.75, 5, 6))
    assert makespan(shared) == pytest.approx(10)
    # the longest chain first: with one slot free, c (rank 4, 3 s) before b's chain would wait
    waits_for_plan = waits_for([Stage("data", "data"), Stage("t", "teacher", needs=("data",)), Stage("report", "report")])
    assert waits_for_plan == {"data": (), "t": ("data",), "report": ("data", "t")}


def test_cli_estimate_needs_dry_run_and_prints_the_wall_time(tmp_path, tiny_dataset):
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app

    path = write_plan(tmp_path, tiny_dataset)
    runner = CliRunner()
    refused = runner.invoke(app, ["reproduce", str(path), "--estimate"])
    assert refused.exit_code == 2 and "--estimate: add --dry-run" in refused.output
    shown = runner.invoke(app, ["reproduce", str(path), "--dry-run", "--estimate", "--jobs", "2", "train.device=cpu"],
                          env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "probe: 3 steps of teacher" in shown.output and "expected wall time with --jobs 2:" in shown.output
    assert not (tmp_path / "runs").exists()  # the probe trains in a temporary folder


def test_the_estimate_of_a_plan_with_a_refused_stage_gives_no_wall_time(tmp_path, tiny_dataset, monkeypatch):
    """A run begun with another recipe (a quick trial) is refused, and all after it blocked: the
    plan cannot run as it stands, so the estimate says so, naming the stage, gives no wall time
    (it counted the refused stages as 0 s) and trains no probe."""
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app
    from sftkd_cli.reproduce import estimate

    path = write_plan(tmp_path, tiny_dataset)
    runner = CliRunner()
    trial = runner.invoke(app, ["reproduce", str(path), "--only", "teacher", "train.device=cpu", "train.epochs=1",
                                "train.max_steps_per_epoch=1"])
    assert trial.exit_code == 0, trial.output

    def no_probe(stage):
        raise AssertionError("probe trained")

    monkeypatch.setattr(estimate, "probe_epoch", no_probe)
    shown = runner.invoke(app, ["reproduce", str(path), "--dry-run", "--estimate", "--jobs", "2", "train.device=cpu"],
                          env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "no estimate: the plan cannot run as it stands: 1 stage refused (teacher; the table above says why)" in shown.output, shown.output
    assert "expected wall time" not in shown.output and "probe" not in shown.output


def test_a_stage_gets_the_executors_threads_for_itself_only(tmp_path, tiny_dataset):
    """A job's share of the CPUs is torch's thread count while its stage runs (the recipe sets no
    train.threads) and the worker's own count again afterwards: the next stage in that process
    starts from it, not from this one's."""
    from sftkd_cli.reproduce.jobs import StageJob, run_stage_job

    tmp_path.mkdir(parents=True, exist_ok=True)
    plan = load_plan(write_plan(tmp_path, tiny_dataset), [*CPU, "train.threads=0"])
    stages = build_stages(plan)
    teacher = next(s for s in stages if s.id == "teacher")
    seen = []
    before = torch.get_num_threads()
    job = StageJob(plan, teacher, tuple(stages), threads=before + 1, log=tmp_path / "teacher.log",
                   trainers={"teacher": lambda recipe, **kwargs: seen.append(torch.get_num_threads())})
    assert run_stage_job(job).status == "done"
    assert seen == [before + 1] and torch.get_num_threads() == before


def test_a_plan_with_a_deterministic_stage_fixes_cublas_before_any_stage(tmp_path, tiny_dataset, monkeypatch):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, at a process's first matrix product, and torch
    refuses deterministic matrix products without it: in a plan where some stage sets
    train.deterministic, every stage's process has it from the first stage on (also one that is
    not deterministic itself); in a plan without one it is left alone."""
    import dataclasses

    from sftkd_cli.reproduce.jobs import StageJob, run_stage_job

    tmp_path.mkdir(parents=True, exist_ok=True)
    plan = load_plan(write_plan(tmp_path, tiny_dataset), CPU)
    stages = build_stages(plan)
    teacher = next(s for s in stages if s.id == "teacher")
    seen = []
    trainers = {"teacher": lambda recipe, **kwargs: seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))}
    sft = next(s for s in stages if s.id == "sft")
    deterministic = dataclasses.replace(sft, recipe=dataclasses.replace(
        sft.recipe, train=dataclasses.replace(sft.recipe.train, deterministic=True)))
    for others, expected in ((stages, None), ([deterministic if s.id == "sft" else s for s in stages], ":4096:8")):
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that undo restores it, absent or not
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
        job = StageJob(plan, teacher, tuple(others), log=tmp_path / "teacher.log", trainers=trainers)
        assert run_stage_job(job).status == "done"
        assert seen[-1] == expected


def test_the_estimates_sharing_line_gives_each_stages_speed_as_a_percentage():
    """Device: CPU. "each runs at 1 of its speed alone" read oddly: a share is a percentage. Two
    stages of one thread on two CPUs each run at full speed; four at once share them (half each)."""
    from sftkd_cli.reproduce.estimate import Sharing

    sharing = Sharing(cpus=2, threads=1, alone=2)
    assert sharing.text(2).endswith("with 2 at once each runs at 50% of its speed alone")  # 1 of the 2 threads alone
    assert Sharing(cpus=2).text(4).endswith("with 4 at once each runs at 50% of its speed alone")
    assert Sharing(cpus=2).text(2).endswith("each runs at 100% of its speed alone")
