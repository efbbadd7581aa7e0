"""The whole workflow through the CLI on tiny data: teacher, student, SFT, every KD method,
evaluate, compare; plus run-directory safety and user errors. Everything runs on the CPU
(train.device=cpu, evaluate --device cpu): the exported-file comparison is a CPU guarantee."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from sftkd_cli.distill.methods import METHODS
from sftkd_cli.runs import load_checkpoint
from cli_helpers import sftkd

torch.set_num_threads(1)




@pytest.fixture(scope="module")
def flow(tiny_dataset, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    base = [f"data.path={tiny_dataset}", f"run.dir={runs}", "train.batch_size=2",  # train.epochs: each command's
            "train.threads=1", "train.device=cpu", "sft.teacher=D3C2", "sft.student=D2C2", "eval.latency_slices=1"]
    sftkd("train-teacher", "--model", "D3C2", "--name", "teacher", *base, "train.epochs=2")
    sftkd("train-teacher", "--model", "D2C2", "--name", "student", *base, "train.epochs=2")
    sftkd("train-sft", "--name", "sft", *base, "train.epochs=2")
    return runs, base


def test_runs_are_complete_and_roles_derived(flow):
    runs, _ = flow
    for name, role in (("teacher", "teacher"), ("student", "student"), ("sft", "sft")):
        run = runs / name
        assert {"recipe.yaml", "env.json", "history.jsonl"} <= {p.name for p in run.iterdir()}
        assert {"last.pt", "best.pt"} <= {p.name for p in (run / "checkpoints").iterdir()}
        assert load_checkpoint(run / "checkpoints" / "best.pt")["role"] == role
        env = json.loads((run / "env.json").read_text())
        assert {"torch", "device", "git_commit", "seed", "sftkd_version"} <= env.keys()


def test_sft_run_holds_teacher_and_student(flow):
    runs, _ = flow
    state = load_checkpoint(runs / "sft" / "checkpoints" / "best.pt")
    assert {e["arch"] for e in state["models"].values()} == {"D3C2", "D2C2"}
    assert state["primary"] == "teacher"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_distills_through_the_cli(flow, method):
    runs, base = flow
    sftkd("distill", "--teacher", runs / "teacher", "--student", "D2C2", "--method", method,
          "--name", f"kd-{method}", *base, "train.epochs=1", "train.max_steps_per_epoch=2")
    state = load_checkpoint(runs / f"kd-{method}" / "checkpoints" / "last.pt")
    assert state["method"] == method and state["teacher_role"] == "teacher"


def test_distill_print_recipe_names_the_run_as_training_would(flow):
    """CPU: the KD run's default name says whether its teacher is an SFT run (read from the run)."""
    runs, base = flow
    for teacher, kind, method in (("teacher", "std", "fsp"), ("sft", "sft", "FSP")):  # any case: one name
        result = sftkd("distill", "--teacher", runs / teacher, "--method", method, *base, "--print-recipe")
        assert "role: kd" in result.output and f"-kd-fsp-{kind}-D2C2-4x" in result.output, result.output


def test_sft_kd_starts_from_exactly_the_sft_student_blocks(flow):
    runs, base = flow
    sftkd("distill", "--teacher", runs / "sft", "--student", "D2C2", "--method", "at", "--init-from", "sft",
          "--name", "sftkd-init", *base, "train.epochs=1", "train.max_steps_per_epoch=1", "train.lr=1e-30")
    student = load_checkpoint(runs / "sft" / "checkpoints" / "best.pt")["models"]["student"]["state"]
    distilled = load_checkpoint(runs / "sftkd-init" / "checkpoints" / "last.pt")
    assert distilled["teacher_role"] == "sft-teacher" and "sft" in distilled["init"]
    assert distilled["teacher_sha256"] == hashlib.sha256((runs / "sft" / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    for key, value in student.items():  # lr=1e-30: updates vanish below float32 resolution
        assert torch.equal(distilled["models"]["model"]["state"][key], value), key
    # a resumed run still records where its weights started from
    sftkd("distill", "--teacher", runs / "sft", "--student", "D2C2", "--method", "at", "--init-from", "sft",
          "--name", "sftkd-init", *base, "train.epochs=2", "train.max_steps_per_epoch=1", "train.lr=1e-30", "--resume")
    resumed = load_checkpoint(runs / "sftkd-init" / "checkpoints" / "last.pt")
    assert resumed["epoch"] == 2 and resumed["init"] == distilled["init"]
    # killed before its first checkpoint (the run folder has its empty checkpoints/ and no
    # history), then resumed: it still starts from the SFT student
    for saved in (runs / "sftkd-init" / "checkpoints").iterdir():
        saved.unlink()
    (runs / "sftkd-init" / "history.jsonl").unlink()
    sftkd("distill", "--teacher", runs / "sft", "--student", "D2C2", "--method", "at", "--init-from", "sft",
          "--name", "sftkd-init", *base, "train.epochs=1", "train.max_steps_per_epoch=1", "train.lr=1e-30", "--resume")
    restarted = load_checkpoint(runs / "sftkd-init" / "checkpoints" / "last.pt")
    assert restarted["init"] == distilled["init"]
    for key, value in student.items():
        assert torch.equal(restarted["models"]["model"]["state"][key], value), key


def test_a_distilled_run_resumes_with_its_teacher_moved_but_not_with_another(flow):
    """The teacher folder named another way or moved (its best checkpoint's sha256 as recorded) is
    the same teacher; a retrained one, or another run, is refused."""
    import shutil

    runs, base = flow
    shutil.copytree(runs / "teacher", runs / "t-copy", ignore=shutil.ignore_patterns(".lock"))
    kd = ["distill", "--student", "D2C2", "--method", "at", "--name", "kd-moved", *base, "train.max_steps_per_epoch=1"]
    sftkd(*kd, "--teacher", runs / "t-copy", "train.epochs=1")
    shutil.move(runs / "t-copy", runs / "t-moved")
    sftkd(*kd, "--teacher", runs / "t-moved", "train.epochs=2", "--resume")
    spelled = runs / "t-moved" / ".." / "t-moved"
    sftkd(*kd, "--teacher", spelled, "train.epochs=3", "--resume")
    assert load_checkpoint(runs / "kd-moved" / "checkpoints" / "last.pt")["epoch"] == 3

    best = runs / "t-moved" / "checkpoints" / "best.pt"
    state = load_checkpoint(best)
    weights = state["models"]["model"]["state"]
    next(iter(weights.values())).add_(1.0)  # retrained since
    torch.save(state, best)
    from sftkd_cli.runs import RunDir
    from sftkd_cli.training.session import teacher_changed

    run = RunDir(runs / "kd-moved")  # what `reproduce` asks before it skips a finished stage
    assert "not the checkpoint" in teacher_changed(run, run.load_recipe())
    for teacher in (runs / "t-moved", runs / "student"):
        refused = sftkd(*kd, "--teacher", teacher, "train.epochs=4", "--resume", ok=False)
        assert refused.exit_code == 2 and "not the checkpoint" in refused.stderr, refused.output
        assert "resume with the teacher it learnt from" in refused.stderr, refused.output


def test_evaluate_and_compare(flow):
    runs, base = flow
    sftkd("distill", "--teacher", runs / "sft", "--student", "D2C2", "--init-from", "sft",
          "--name", "sft-kd-at", *base, "train.epochs=1")
    for name in ("teacher", "student", "sft", "sft-kd-at"):
        sftkd("evaluate", runs / name, "--device", "cpu")
        metrics = json.loads((runs / name / "metrics.json").read_text())
        assert metrics["dataset"]["split"] == "val" and metrics["params"] > 0
        assert metrics["metrics"]["PSNR"]["mean"] > 0 and "PSNR" in metrics["conventions"]
        assert "zero padding" in metrics["conventions"]["images"]  # the stored image is scored whole
    sftkd("evaluate", runs / "sft", "--model", "student", "--device", "cpu", "--no-recon")
    assert json.loads((runs / "sft" / "eval-student" / "metrics.json").read_text())["role"] == "sft-student"
    assert json.loads((runs / "sft" / "metrics.json").read_text())["role"] == "sft-teacher"
    result = sftkd("compare", *sorted(runs.iterdir()), "--format", "csv")
    assert "teacher" in result.output and "sft" in result.output and "ZF" in result.output


def test_evaluate_threads_sets_torch_threads_for_the_scoring(flow):
    """--threads N is what metrics.json records (scoring and latency); without it the run's
    train.threads (1 here) applies, as in training; the caller's setting is restored after."""
    runs, _ = flow
    before = torch.get_num_threads()
    sftkd("evaluate", runs / "student", "--device", "cpu", "--no-recon", "--threads", 2)
    assert json.loads((runs / "student" / "metrics.json").read_text())["threads"] == 2
    assert torch.get_num_threads() == before
    sftkd("evaluate", runs / "student", "--device", "cpu", "--no-recon")
    assert json.loads((runs / "student" / "metrics.json").read_text())["threads"] == 1
    for bad in ("-1", "100000"):
        result = sftkd("evaluate", runs / "student", "--threads", bad, ok=False)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.output.strip().splitlines() == [f"error: --threads {bad}: expected a whole number from 0 (torch default) to 1024"]


def test_existing_run_is_refused_and_resume_continues(flow):
    runs, base = flow
    refused = sftkd("train-teacher", "--model", "D3C2", "--name", "teacher", *base, ok=False)
    assert refused.exit_code == 2 and "already exists; use --resume" in refused.output
    sftkd("train-teacher", "--model", "D3C2", "--name", "teacher", *base, "train.epochs=3", "--resume")
    assert load_checkpoint(runs / "teacher" / "checkpoints" / "last.pt")["epoch"] == 3
    changed = sftkd("train-teacher", "--model", "D3C2", "--name", "teacher", *base, "train.lr=0.1", "--resume", ok=False)
    assert "train.lr was 0.001, now 0.1" in changed.output and "give that file as the recipe with --resume" in changed.output
    sftkd("train-teacher", runs / "teacher" / "recipe.yaml", "train.epochs=4", "--resume")  # the run's own recipe: no overrides to repeat
    assert load_checkpoint(runs / "teacher" / "checkpoints" / "last.pt")["epoch"] == 4


def test_print_recipe_shows_the_resolved_recipe():
    result = sftkd("train-teacher", "--print-recipe", "--model", "D2C2", "train.epochs=7")
    assert "epochs: 7" in result.output and "name: D2C2" in result.output
    # what training fills in: the run's role and default name (D2C2 is not sft.teacher: a student)
    assert "role: student" in result.output and "name: demo-student-D2C2-4x" in result.output


@pytest.mark.parametrize("command, role, trains, other", [
    ("train-sft", "teacher", "sft", "train-teacher"), ("distill", "sft", "kd", "train-sft"),
    ("train-teacher", "kd", "teacher or student", "distill"), ("train-teacher", "sft", "teacher or student", "train-sft"),
])
def test_a_run_role_the_command_does_not_train_is_refused(command, role, trains, other):
    """run.role fills in what the command derives; another command's role would mislabel the run
    (an SFT run recorded as a teacher, which distill --init-from sft then refuses)."""
    result = sftkd(command, "--print-recipe", f"run.role={role}", ok=False)
    assert result.output.strip() == (f"error: override run.role={role}: run.role: {command} trains {trains} runs, "
                                     f"got '{role}' (a run {other} trains); leave run.role out, or use {other}")


def test_run_role_is_checked_by_the_library_too():
    from sftkd_cli.config import load_recipe
    from sftkd_cli.errors import SftkdError
    from sftkd_cli.training.sft import resolved_sft
    from sftkd_cli.training.supervised import resolved_supervised

    with pytest.raises(SftkdError, match="run.role: train-sft trains sft runs, got 'teacher'"):
        resolved_sft(load_recipe(None, ["run.role=teacher"]))
    student = resolved_supervised(load_recipe(None, ["run.role=student", "model.name=D5C5"]))  # set outright
    assert student.run.role == "student"


@pytest.mark.parametrize("recipe", ["teacher.yaml", "student.yaml"])
def test_shipped_teacher_recipe_follows_the_model(recipe):
    """A shipped teacher or student recipe leaves run.role to the model: trained as another model
    it is that model's role, not the file's (two 'teachers' in compare otherwise)."""
    path = Path(__file__).resolve().parents[1] / "recipes" / "demo" / recipe
    assert "role: student" in sftkd("train-teacher", path, "--print-recipe", "--model", "D3C5").output
    assert "role: teacher" in sftkd("train-teacher", path, "--print-recipe", "--model", "D5C5").output


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_0_prints_the_done_line(rank, monkeypatch, capsys):
    """Under torchrun only rank 0 validates: another rank's "best val L1 nan" line would mislead."""
    from types import SimpleNamespace

    from sftkd_cli.cli.common import print_or_train
    from sftkd_cli.config import load_recipe

    trained = (SimpleNamespace(path=Path("runs/r")), SimpleNamespace(best_val_l1=0.5, best_epoch=2, is_main=rank == "0"))
    print_or_train(load_recipe(None, []), False, lambda recipe, console: trained, lambda recipe: recipe)
    assert ("done: runs/r  best val L1 0.50000 at epoch 2" in capsys.readouterr().out) is (rank == "0")


def test_long_or_bracketed_paths_print_whole(tmp_path, capsys):
    """Piped output is 80 columns wide: --print-recipe's YAML with a long data.path still loads,
    and the done line holds the run folder whole, brackets included (not read as rich markup)."""
    from types import SimpleNamespace

    from sftkd_cli.cli.common import print_or_train
    from sftkd_cli.config import load_recipe

    data = "data/" + "a_long_folder_name_" * 6 + "demo"
    result = sftkd("train-teacher", "--print-recipe", f"data.path={data}")
    (tmp_path / "printed.yaml").write_text(result.stdout)
    assert load_recipe(tmp_path / "printed.yaml").data.path == data
    run = Path("runs/" + "a_long_run_name_" * 5 + "lr[x]")
    trained = (SimpleNamespace(path=run), SimpleNamespace(best_val_l1=0.5, best_epoch=2, is_main=True))
    print_or_train(load_recipe(None, []), False, lambda recipe, console: trained, lambda recipe: recipe)
    assert f"done: {run}  best val L1 0.50000 at epoch 2" in capsys.readouterr().out


def test_a_stray_ctrl_c_is_one_line_and_exit_130(monkeypatch):
    import sftkd_cli.runs as runs_module

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_module, "open_run", pressed)  # evaluate's check of the runs given, first
    result = sftkd("evaluate", "runs/x", ok=False)
    assert result.exit_code == 130 and result.output == "error: interrupted (Ctrl-C); what was already saved is kept\n"


def test_print_recipe_refuses_what_training_would_refuse():
    result = sftkd("train-teacher", "--print-recipe", "train.epochs=-1", ok=False)
    assert result.output.strip() == "error: override train.epochs=-1: train.epochs: expected at least 1, got -1"
    result = sftkd("train-teacher", "--print-recipe", "run.role=boss", ok=False)
    assert result.output.strip() == "error: override run.role=boss: run.role: expected teacher, student, sft, kd (or empty: the command's), got 'boss'"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train-teacher", "train.epoch=3"], "unknown key train.epoch; did you mean train.epochs?"),
        (["train-teacher", "--data", "/nonexistent/data"], "/nonexistent/data"),
        (["train-teacher", "notes.txt"], "expected a recipe file (.yaml) or an override"),
        (["distill", "--method", "at"], "distill.teacher_run"),
        (["evaluate", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
        (["train-teacher", "--resume", "--force", "data.path=/nonexistent/data"],
         "--resume continues a run and --force starts it over: give one of them"),
        (["evaluate", "."], ".: not an sftkd run directory (no recipe.yaml)"),
        (["train-teacher", "recipes/demo/teacher.yaml", "recipes/demo/student.yaml"],
         "one recipe file per command"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = sftkd(*args, ok=False)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output


def test_unknown_method_suggests_the_nearest(flow):
    runs, base = flow
    result = sftkd("distill", "--teacher", runs / "teacher", "--method", "fitnet", *base, ok=False)
    assert result.exit_code == 2 and "fitnets" in result.output


@pytest.mark.parametrize("override, message", [
    ("distill.student_taps=c1.conv9", "error: distill.student_taps 'c1.conv9': D2C2 has taps c1."),
    ("distill.teacher_taps=c7.conv2", "error: distill.teacher_taps 'c7.conv2': D3C2 has taps c1."),
    ("distill.options={p: x}", "error: distill.options.p 'x' (method at): expected a positive number"),
    ("distill.options={pp: 2}", "error: distill.options: unknown option 'pp' for method at; expected one of p, normalize, distance; "
                                "did you mean 'p'?"),
])
def test_a_bad_tap_or_method_option_names_its_recipe_key(flow, override, message):
    runs, base = flow
    result = sftkd("distill", "--teacher", runs / "teacher", "--student", "D2C2", "--method", "at", "--name", "kd-bad",
                   *base, "train.max_steps_per_epoch=1", override, ok=False)
    assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("args, message", [
    (["--split", "tset"], "error: --split: split 'tset' not in dataset {data} (has train, val, test); did you mean test?"),
    (["--split", "nope"], "error: --split: split 'nope' not in dataset {data} (has train, val, test)"),
])
def test_evaluate_names_the_split_it_was_given_with_the_nearest(flow, tiny_dataset, args, message):
    runs, _ = flow
    result = sftkd("evaluate", runs / "student", "--device", "cpu", "--no-recon", *args, ok=False)
    assert result.exit_code == 2 and result.output.strip() == message.format(data=tiny_dataset), result.output


def test_evaluate_on_data_without_the_runs_acceleration_names_the_recipe_key(flow, tiny_dataset, tmp_path):
    import shutil

    runs, _ = flow
    other = Path(shutil.copytree(tiny_dataset, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "accelerations": [5.0]}))
    result = sftkd("evaluate", runs / "student", "--data", other, "--device", "cpu", "--no-recon", ok=False)
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: data.acceleration ({runs / 'student' / 'recipe.yaml'}): acceleration 4 not in dataset {other} (has 5)"
    ), result.output


@pytest.mark.parametrize("fmt, suffix", [("onnx", "onnx"), ("torchscript", "ts")])
def test_exported_student_scores_like_its_checkpoint(flow, fmt, suffix):
    runs, _ = flow
    sftkd("evaluate", runs / "student", "--device", "cpu", "--no-recon")
    out = runs / "student" / "export" / f"student.{suffix}"
    sftkd("export", runs / "student", "--format", fmt, "--out", out)
    sftkd("evaluate", runs / "student", "--device", "cpu", "--exported", out, "--no-recon")
    ours = json.loads((runs / "student" / "metrics.json").read_text())
    exported = json.loads((runs / "student" / f"eval-student-{fmt}" / "metrics.json").read_text())
    assert exported["metrics"]["PSNR"]["mean"] == pytest.approx(ours["metrics"]["PSNR"]["mean"], abs=1e-4)


def test_training_says_what_it_is_about_to_run_before_the_first_epoch(tiny_dataset, tmp_path):
    result = sftkd("train-teacher", "--model", "D2C2", "--name", "said", f"data.path={tiny_dataset}",
                   f"run.dir={tmp_path}", "train.epochs=1", "train.threads=1", "train.device=cpu",
                   "train.max_steps_per_epoch=1", "eval.latency_slices=1")
    lines = result.output.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("run "))
    assert first < next(i for i, line in enumerate(lines) if line.startswith("epoch 1"))
    said = lines[first]
    for part in (str(tmp_path / "said"), "D2C2", str(tiny_dataset), "4x", "1 epoch of 1 step,", "cpu"):
        assert part in said, (part, said)


def test_evaluate_checks_every_run_before_the_first_is_evaluated(flow):
    """A mistyped second run is refused in one line before the first one's files are written."""
    runs, _ = flow
    before = {p.name: p.stat().st_mtime_ns for p in (runs / "student").iterdir()}
    result = sftkd("evaluate", runs / "student", runs / "studnet", ok=False)
    assert result.exit_code == 2 and "studnet: no such run directory" in result.output, result.output
    assert {p.name: p.stat().st_mtime_ns for p in (runs / "student").iterdir()} == before
