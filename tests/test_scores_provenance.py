"""Scores are filed under the model they score: metrics.json records the sha256 of the checkpoint
bytes evaluate loaded; evaluate refuses to write when the run's checkpoint or the dataset changed
while it scored (no lock is held: `train --resume`, `--force` or `prepare-data --force` in another
terminal); reproduce, compare and export's model card tell scores of an earlier checkpoint, or of
another model, from the exported model's. Races are simulated deterministically: the change is
made from evaluate's progress callback, after the first batch.

Device: CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from cli_helpers import sftkd
from sftkd_cli.errors import SftkdError
from sftkd_cli.evaluate import evaluate_run
from sftkd_cli.export import export_run
from sftkd_cli.report.compare import collect_runs
from sftkd_cli.runs import RunDir, save_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SFT run (teacher and student, D2C2 with 4 channels) trained for one step (read-only)."""
    runs = tmp_path_factory.mktemp("runs")
    sftkd("train-sft", "--name", "sft", f"data.path={tiny_dataset}", f"run.dir={runs}", "sft.teacher=D2C2",
          "sft.student=D2C2", "model.channels=4", "train.epochs=1", "train.max_steps_per_epoch=1", "train.threads=1",
          "train.device=cpu", "eval.latency_slices=0", "train.channels_last=false")
    return runs / "sft"


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, for tests that write into it."""
    return Path(shutil.copytree(trained, tmp_path / "sft", ignore=shutil.ignore_patterns(".lock")))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def retrain(checkpoint: Path) -> None:
    """Replace `checkpoint` by another one, as a resumed (or a new) training run would."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["epoch"] = int(state["epoch"]) + 5
    for entry in state["models"].values():
        for value in entry["state"].values():
            if value.is_floating_point():
                value.add_(0.01)
    save_checkpoint(checkpoint, state)


def meanwhile(action):
    """A progress callback that runs `action` once, after evaluate's first batch."""
    done: list[int] = []

    def progress(count: int, total: int) -> None:
        if not done:
            done.append(count)
            action()

    return progress


def evaluate(run: Path, **options):
    return evaluate_run(run, device="cpu", threads=1, batch_size=1, **options)


# --------------------------------------------------------------------------- evaluate


def test_metrics_json_records_the_sha256_of_the_checkpoint_it_scored(run):
    metrics = evaluate(run)
    assert metrics["checkpoint_sha256"] == sha256(run / "checkpoints" / "best.pt")
    student = evaluate(run, model_role="student", checkpoint="last")
    assert student["checkpoint_sha256"] == sha256(run / "checkpoints" / "last.pt")
    assert json.loads((run / "eval-student" / "metrics.json").read_text())["checkpoint_sha256"] == student["checkpoint_sha256"]


def test_evaluate_refuses_scores_of_a_checkpoint_replaced_while_it_scored(run):
    """`train --resume` saved a new best.pt meanwhile: the old model's scores are not filed beside it."""
    best = run / "checkpoints" / "best.pt"
    with pytest.raises(SftkdError, match=r"best.pt: replaced \(the run was resumed or trained anew\) while evaluate "
                                         r"scored it; nothing written") as info:
        evaluate(run, progress=meanwhile(lambda: retrain(best)))
    assert "\n" not in str(info.value)
    assert not any((run / name).exists() for name in ("metrics.json", "per_slice.csv", "recon.h5"))


def test_evaluate_says_a_run_is_still_training_not_stopped_early_or_resumed(run):
    """A run another process trains: refused before any work, in its own words (not "stopped
    early; --resume continues it"); a training started while evaluate scored says so too."""
    training = RunDir(run)
    training.lock()
    try:
        with pytest.raises(SftkdError, match=r": still training \(another sftkd process holds it\); evaluate it once"):
            evaluate(run)
    finally:
        training.unlock()
    assert not (run / "metrics.json").exists()

    def train_meanwhile() -> None:
        training.lock()
        retrain(run / "checkpoints" / "best.pt")

    try:
        with pytest.raises(SftkdError, match=r"best.pt: replaced \(the run is training\) while evaluate scored it"):
            evaluate(run, progress=meanwhile(train_meanwhile))
    finally:
        training.unlock()


def test_evaluate_refuses_when_the_run_is_trained_anew_meanwhile(run):
    """`train --force` removed the run's files (its new checkpoints not saved yet): nothing written."""
    def force() -> None:
        for name in ("best.pt", "last.pt"):
            (run / "checkpoints" / name).unlink()

    with pytest.raises(SftkdError, match=r"best.pt: removed while evaluate scored it; nothing written"):
        evaluate(run, progress=meanwhile(force))
    assert not (run / "metrics.json").exists()


def test_evaluate_refuses_when_the_run_folder_is_replaced_meanwhile(run, tmp_path):
    """Another run of the same name put in the folder's place (removed and trained again)."""
    def replace() -> None:
        os.rename(run, tmp_path / "old")
        shutil.copytree(tmp_path / "old", run)

    with pytest.raises(SftkdError, match="the run folder was replaced while evaluate scored it; nothing written"):
        evaluate(run, progress=meanwhile(replace))
    assert not (run / "metrics.json").exists() and not (tmp_path / "old" / "metrics.json").exists()


def test_a_checkpoint_it_did_not_score_may_change_meanwhile(run):
    """Resumed without a better validation: last.pt moves on, best.pt (scored) stays: the scores hold."""
    metrics = evaluate(run, progress=meanwhile(lambda: retrain(run / "checkpoints" / "last.pt")))
    assert json.loads((run / "metrics.json").read_text())["checkpoint_sha256"] == metrics["checkpoint_sha256"]


def test_evaluate_refuses_scores_of_a_dataset_prepared_again_while_it_read_it(run, tiny_dataset, tmp_path):
    """`prepare-data --force` on the dataset meanwhile: the slices may mix old and new volumes."""
    data = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    manifest = data / "manifest.json"

    def prepare_again() -> None:
        manifest.write_text(manifest.read_text() + "\n")  # any other manifest: another fingerprint

    with pytest.raises(SftkdError, match=r"manifest.json: the dataset changed while evaluate read it \(fingerprint "
                                         r"\w{12}, now \w{12}: prepared again meanwhile\); nothing written") as info:
        evaluate(run, data=data, progress=meanwhile(prepare_again))
    assert "\n" not in str(info.value)
    assert not (run / "metrics.json").exists()
    with pytest.raises(SftkdError, match=r"now unreadable"):  # the manifest is away while prepare-data installs
        evaluate(run, data=data, progress=meanwhile(manifest.unlink))
    assert not (run / "metrics.json").exists()


# --------------------------------------------------------------------------- readers


def test_compare_warns_about_scores_of_an_earlier_checkpoint(run):
    evaluate(run)
    runs, warnings = collect_runs([run])
    assert len(runs) == 1 and warnings == []
    retrain(run / "checkpoints" / "best.pt")  # resumed after the evaluation
    runs, warnings = collect_runs([run])
    assert len(runs) == 1
    assert warnings == [f"{run}: scores are of an earlier checkpoint; re-run `sftkd evaluate {run}`"]


def test_reproduce_redoes_an_evaluation_of_an_earlier_checkpoint_whatever_the_times(run, tmp_path, tiny_dataset):
    """metrics.json newer than best.pt, but of the best.pt before it: not complete. The digest
    decides, not the times: a metrics.json older than an unchanged (copied) best.pt is complete."""
    from test_reproduce import write_plan

    from sftkd_cli.reproduce import build_stages, load_plan
    from sftkd_cli.reproduce.stages import evaluation_complete

    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    stage = next(s for s in build_stages(plan) if s.id == "eval-teacher")
    shutil.copytree(run, stage.run)
    evaluate(stage.run)
    best, metrics = stage.run / "checkpoints" / "best.pt", stage.run / "metrics.json"
    os.utime(metrics, (200, 200))
    os.utime(best, (100, 100))
    assert evaluation_complete(stage, plan)
    retrain(best)
    os.utime(best, (100, 100))
    assert not evaluation_complete(stage, plan)
    evaluate(stage.run)
    os.utime(metrics, (100, 100))
    os.utime(best, (200, 200))
    assert evaluation_complete(stage, plan)


# --------------------------------------------------------------------------- export card


def card_metrics(run: Path, **options) -> dict | None:
    return export_run(run, "torchscript", force=True, **options).card["metrics"]


def test_the_card_shows_the_scores_of_the_exported_model_only(run):
    """The SFT teacher's scores (RUN/metrics.json) are not the student's, best's are not last's,
    and scores of an earlier best.pt (the run resumed since) are no one's: null."""
    evaluate(run)
    teacher = card_metrics(run)
    assert teacher is not None and teacher["role"] == "sft-teacher" and teacher["checkpoint"] == "best"
    assert teacher["metrics"] == json.loads((run / "metrics.json").read_text())["metrics"]
    assert card_metrics(run, role="student") is None  # not evaluated: not the teacher's D2C2 scores
    evaluate(run, model_role="student")
    student = card_metrics(run, role="student")
    assert student is not None and student["role"] == "sft-student" and student["file"] == str(run / "eval-student" / "metrics.json")
    assert card_metrics(run, checkpoint="last") is None  # best's scores
    card = export_run(run, "torchscript", force=True, checkpoint="last").card
    assert card["checkpoint_sha256"] == sha256(run / "checkpoints" / "last.pt")
    retrain(run / "checkpoints" / "best.pt")
    assert card_metrics(run) is None  # scores of the best.pt before the resume


def test_the_card_ignores_scores_without_the_checkpoints_sha256(run):
    """A metrics.json of an earlier sftkd cannot tell which checkpoint it scored: not shown."""
    evaluate(run)
    info = json.loads((run / "metrics.json").read_text())
    del info["checkpoint_sha256"]
    (run / "metrics.json").write_text(json.dumps(info))
    assert card_metrics(run) is None


def test_the_rerun_advice_names_the_run_and_the_options_of_its_results_folder(tmp_path):
    """`RUN/eval-amp-bf16` is written by `sftkd evaluate RUN --amp bf16`, not by evaluating the folder."""
    from sftkd_cli.eval_folders import evaluate_command

    run = tmp_path / "run"
    folder = run / "eval-student" / "eval-data-other-abcd1234" / "eval-amp-bf16" / "eval-fastmri"
    folder.mkdir(parents=True)
    (run / "recipe.yaml").write_text("run: {}\n")
    info = {"checkpoint": "last", "dataset": {"path": "data/other"}}
    assert evaluate_command(folder, info) == (f"sftkd evaluate {run} --model student --data data/other --amp bf16 "
                                              "--convention fastmri --checkpoint last")
    assert evaluate_command(run, {"checkpoint": "best"}) == f"sftkd evaluate {run}"
    spaced = tmp_path / "my run"
    (spaced / "eval-data-x-1234abcd").mkdir(parents=True)
    (spaced / "recipe.yaml").write_text("run: {}\n")
    command = evaluate_command(spaced / "eval-data-x-1234abcd", {"checkpoint": "best", "dataset": {"path": "my data"}})
    assert shlex.split(command) == ["sftkd", "evaluate", str(spaced), "--data", "my data"]  # pasted, it runs as printed


def test_a_plans_evaluation_of_another_split_is_read_where_evaluate_writes_it(tmp_path):
    """evaluate puts scores of a split other than the run's eval.split in eval-split-<split>/; reproduce looks there."""
    from sftkd_cli.config import load_recipe
    from sftkd_cli.reproduce.stages import Stage, evaluation_dir

    recipe, run = load_recipe(None, []), tmp_path / "teacher"
    assert recipe.eval.split == "val"
    assert evaluation_dir(Stage("eval-teacher", "evaluate", run=run, recipe=recipe, split="val")) == run
    assert evaluation_dir(Stage("eval-teacher", "evaluate", run=run, recipe=recipe, split="test")) == run / "eval-split-test"
    student = Stage("eval-sft-student", "evaluate", run=run, recipe=recipe, split="test", model_role="student")
    assert evaluation_dir(student) == run / "eval-student" / "eval-split-test"


def test_a_second_evaluation_of_one_folder_is_refused_while_the_first_writes(run):
    """Two evaluations renaming their files into one folder in turn could leave one's metrics.json
    beside the other's per_slice.csv: the second is refused in one line, the first completes."""
    refused: list[str] = []

    def second() -> None:
        with pytest.raises(SftkdError) as info:
            evaluate(run, checkpoint="last")
        refused.append(str(info.value))

    metrics = evaluate(run, progress=meanwhile(second))
    assert refused == [f"{run}: another sftkd evaluate is writing its results there; wait for it to finish"]
    assert json.loads((run / "metrics.json").read_text())["checkpoint_sha256"] == metrics["checkpoint_sha256"]
    assert metrics["checkpoint_sha256"] == sha256(run / "checkpoints" / "best.pt")
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
