"""A `sftkd reproduce --jobs N` killed with kill -9 leaves no worker training on: each worker
gets SIGTERM when its parent dies and stops its stage as on SIGTERM (Linux)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

#: the longest the test waits for a worker to start its stage, or to stop after its parent died
BOUND_S = 180


def _wait_for(marker: Path, text: str) -> bool:
    """Whether `marker` says `text` within BOUND_S seconds (a bound, not a timing: it returns at once when it does)."""
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text() == text:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's (prctl)")
def test_a_worker_whose_parent_is_killed_stops_its_stage(tmp_path, tiny_dataset):
    marker = tmp_path / "marker"
    (tmp_path / "slow_trainer.py").write_text(textwrap.dedent(f"""
        import os
        import time
        from pathlib import Path

        def train(recipe, **kwargs):
            '''Says it started, then waits (at most {BOUND_S * 2} s); says it was stopped on SIGTERM.'''
            marker = Path({str(marker)!r})
            (marker.parent / "worker.pid").write_text(str(os.getpid()))
            marker.write_text("started")
            try:
                for _ in range({BOUND_S * 10}):
                    time.sleep(0.2)
            except KeyboardInterrupt:
                marker.write_text("stopped")
                raise
            marker.write_text("ran on")
    """))
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"plan: 1\ndata:\n  source: prepared\n  out: {tiny_dataset}\nruns_dir: {tmp_path / 'runs'}\n"
                    "base:\n  train.epochs: 1\n  train.device: cpu\n  sft.teacher: D3C2\n  sft.student: D2C2\n"
                    "stages:\n  teacher: {}\n")
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from slow_trainer import train
        from sftkd_cli.reproduce import LocalExecutor, StageJob, build_stages, load_plan

        plan = load_plan({str(plan)!r})
        stages = build_stages(plan)
        teacher = next(s for s in stages if s.id == "teacher")
        executor = LocalExecutor(1)
        executor.submit(StageJob(plan, teacher, tuple(stages), trainers={{"teacher": train}}))
        time.sleep({BOUND_S * 2})
    """)], env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}, cwd=tmp_path)
    worker = None
    try:
        assert _wait_for(marker, "started"), "the worker did not start its stage"
        worker = int((tmp_path / "worker.pid").read_text())
        parent.kill()  # kill -9: no chance to stop its workers
        parent.wait()
        assert _wait_for(marker, "stopped"), marker.read_text()
    finally:
        parent.kill()
        if worker is not None and marker.read_text() != "stopped":
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)  # the worker this test started, by its pid
