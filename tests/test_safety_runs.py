"""Safety of run directories and checkpoints, through the CLI (CPU).

- A crafted checkpoint (a pickle whose `__reduce__` writes a file) is refused with one line
  at every entry point that reads checkpoints, and its payload never runs.
- `--force` removes only what sftkd wrote into a run; a run name is one plain path component;
  a folder that is not a run is never filled or emptied.
- A run never replaces the run it reads from (teacher, init).
- Outputs given by path (`--out`, `--json`) write through a symlink's target or into a device
  file instead of replacing them.
- `--resume` with a readable but wrong `last.pt` ends in one line.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_compare import make_run, slice_values
from test_hardening import copy_run, fails_cleanly, invoke, snapshot, train_args

torch.set_num_threads(1)


class Payload:
    """Unpickling this object writes `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "payload ran"))


def write_payload(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 1, "models": Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("safety-runs")
    result = invoke(*train_args(tiny_dataset, runs, "teacher"))
    assert result.exit_code == 0, result.output
    return runs / "teacher"


def poisoned_run(trained: Path, tmp_path: Path, marker: Path, which: str = "best") -> Path:
    run = Path(shutil.copytree(trained, tmp_path / trained.name))
    write_payload(run / "checkpoints" / f"{which}.pt", marker)
    return run


# ----------------------------------------------------------------------------- crafted checkpoints


ENTRY_POINTS = [
    "train --init-from FILE", "distill --teacher RUN", "distill --init-from FILE", "evaluate --checkpoint FILE",
    "evaluate RUN", "train --resume", "export RUN", "compare --attention", "reproduce --dry-run",
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(entry, tiny_dataset, trained, tmp_path):
    marker = tmp_path / "pwned"
    loose = write_payload(tmp_path / "evil.pt", marker)
    runs = tmp_path / "runs"
    distill = ["distill", "--student", "D2C2", "--method", "at", "--name", "kd", f"data.path={tiny_dataset}",
               f"run.dir={runs}", "train.epochs=1", "train.threads=1", "train.max_steps_per_epoch=1"]
    if entry == "train --init-from FILE":
        fails_cleanly(*train_args(tiny_dataset, runs, "r", "--init-from", loose), names=("evil.pt", "refused"))
    elif entry == "distill --teacher RUN":
        fails_cleanly(*distill, "--teacher", poisoned_run(trained, tmp_path, marker), names=("best.pt", "refused"))
    elif entry == "distill --init-from FILE":
        fails_cleanly(*distill, "--teacher", trained, "--init-from", loose, names=("evil.pt", "refused"))
    elif entry == "evaluate --checkpoint FILE":
        fails_cleanly("evaluate", copy_run(trained, tmp_path), "--checkpoint", loose, names=("evil.pt", "refused"))
    elif entry == "evaluate RUN":
        fails_cleanly("evaluate", poisoned_run(trained, tmp_path, marker), names=("best.pt", "refused"))
    elif entry == "train --resume":
        run = poisoned_run(trained, tmp_path, marker, "last")
        recipe = (run / "recipe.yaml").read_text().replace(str(trained.parent), str(run.parent))
        (run / "recipe.yaml").write_text(recipe)
        fails_cleanly(*train_args(tiny_dataset, run.parent, run.name, "--resume"), names=("last.pt", "refused"))
    elif entry == "export RUN":
        fails_cleanly("export", poisoned_run(trained, tmp_path, marker), "--format", "torchscript",
                      names=("best.pt", "refused"))
    elif entry == "compare --attention":
        teacher = make_run(tmp_path, "teacher", "teacher", slice_values(1, 0.0))
        student = make_run(tmp_path, "std-kd-at", "kd", slice_values(2, 0.3), method="at", teacher_role="teacher")
        write_payload(student / "checkpoints" / "best.pt", marker)
        for run in (teacher, student):  # point the evaluated runs at a dataset that exists
            (run / "recipe.yaml").write_text(f"run:\n  name: {run.name}\ndata:\n  path: {tiny_dataset}\n")
        result = invoke("compare", teacher, student, "--attention", tmp_path / "fig" / "attention")
        assert result.exit_code == 2 and "refused" in result.output and "Traceback" not in result.output, result.output
    elif entry == "reproduce --dry-run":
        plan = tmp_path / "plan.yaml"
        plan.write_text(f"plan: 1\ndata:\n  source: prepared\n  out: {tiny_dataset}\nruns_dir: {runs}\n"
                        "base:\n  train.epochs: 1\nstages:\n  teacher: {}\n")
        stage = runs / "teacher"
        result = invoke("reproduce", plan, "--dry-run")  # learn the teacher stage's run folder name
        names = [line.split()[1] for line in result.output.splitlines() if line.strip().startswith("teacher")]
        stage = runs / (names[0] if names else "teacher")
        shutil.copytree(trained, stage)
        write_payload(stage / "checkpoints" / "last.pt", marker)
        result = invoke("reproduce", plan, "--dry-run")
        assert result.exit_code == 2 and "refused" in result.output and "Traceback" not in result.output, result.output
    assert not marker.exists(), f"{entry}: the checkpoint's payload ran"


def test_sftkd_checkpoints_still_load(trained):
    from sftkd_cli.runs import load_checkpoint

    state = load_checkpoint(trained / "checkpoints" / "last.pt")
    assert state["format"] == 1 and state["models"]
