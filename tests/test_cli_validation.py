"""Bad values on the command line: one line naming the option or key and what was expected, exit 2,
the same for `--print-recipe` as for a real run."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import sftkd


def one_line_error(*args: object) -> str:
    """The output of `sftkd ARGS` that must fail with exit code 2 and one line."""
    result = sftkd(*args, ok=False)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output.strip()


@pytest.mark.parametrize("print_recipe", [["--print-recipe"], []])
def test_distill_refuses_an_unknown_method_before_printing_or_training(print_recipe: list[str]) -> None:
    line = one_line_error("distill", "--method", "bogus", *print_recipe)
    assert line.startswith("error: --method: distill.method 'bogus': expected one of at, fitnets")


@pytest.mark.parametrize("print_recipe", [["--print-recipe"], []])
def test_distill_init_from_names_its_words_and_run_folders(print_recipe: list[str], tmp_path: Path) -> None:
    line = one_line_error("distill", "--init-from", tmp_path / "nowhere", *print_recipe)
    assert "distill.init (--init-from)" in line and "nowhere" in line
    assert line.endswith("nowhere': no such run directory or checkpoint file; expected random (fresh weights), "
                         "sft (the SFT teacher run's student blocks) or a run directory or checkpoint file")
    for word in ("random", "sft"):
        assert sftkd("distill", "--init-from", word, "--print-recipe").exit_code == 0


def test_train_teacher_print_recipe_refuses_an_init_from_that_does_not_exist() -> None:
    line = one_line_error("train-teacher", "--init-from", "random", "--print-recipe")
    assert line == ("error: --init-from 'random': no such run directory or checkpoint file (leave --init-from out "
                    "to start from random weights)")


def test_the_library_refuses_a_start_that_does_not_exist_as_the_commands_do(tmp_path: Path) -> None:
    """`distill` and `train_supervised` called from Python refuse a missing start with the
    commands' line, before any work (no run folder made)."""
    from sftkd_cli.config import load_recipe
    from sftkd_cli.errors import SftkdError
    from sftkd_cli.training.kd import distill
    from sftkd_cli.training.supervised import train_supervised

    gone = tmp_path / "nowhere"
    runs = [f"run.dir={tmp_path / 'runs'}", f"data.path={tmp_path / 'data'}"]
    with pytest.raises(SftkdError) as refused:
        distill(load_recipe(None, [*runs, f"distill.teacher_run={tmp_path / 'teacher'}", f"distill.init={gone}"]))
    assert str(refused.value) == (f"distill.init (--init-from) {str(gone)!r}: no such run directory or checkpoint file; "
                                  "expected random (fresh weights), sft (the SFT teacher run's student blocks) or a "
                                  "run directory or checkpoint file")
    with pytest.raises(SftkdError) as refused:
        train_supervised(load_recipe(None, runs), init_from="random")
    assert str(refused.value) == ("--init-from 'random': no such run directory or checkpoint file (leave --init-from "
                                  "out to start from random weights)")
    assert not (tmp_path / "runs").exists()


def test_init_from_a_folder_that_is_no_run_is_refused_by_print_recipe(tmp_path: Path) -> None:
    line = one_line_error("train-teacher", "--init-from", tmp_path, "--print-recipe")
    assert str(tmp_path) in line and "not an sftkd run directory" in line



def test_data_that_is_a_file_is_said_to_be_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.h5").write_bytes(b"")
    line = one_line_error("train-teacher", "--epochs", "1", "--data", "data.h5")
    assert line == "error: data.h5: is a file; expected a prepared dataset folder (sftkd prepare-data --out)"
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_reproduce_refuses_per_gpu_where_no_stages_share_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line_error("reproduce", "demo", "--dry-run", "--per-gpu", "2")
    assert line == "error: --per-gpu 2: add --jobs N (N > 1) or --executor ray; one stage at a time has the GPU to itself"
    assert sftkd("reproduce", "demo", "--dry-run", "--per-gpu", "2", "--jobs", "2").exit_code == 0


@pytest.mark.parametrize("text, message", [
    ("plan: 2\n", "plan: expected 1 (the plan format this sftkd reads), got 2"),
    ("2\n", "expected a plan: a mapping with `plan: 1` at the top, got int"),
    ("- a\n- b\n", "expected a plan: a mapping with `plan: 1` at the top, got list"),
    ("", "expected a plan: a mapping with `plan: 1` at the top, got an empty file"),
])
def test_a_plan_file_that_is_no_plan_names_the_file_and_the_mapping_expected(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    assert one_line_error("reproduce", path, "--dry-run") == f"error: {path}: {message}"


@pytest.mark.parametrize("text, message", [
    ("2\n", "expected a recipe: a mapping of sections (data:, model:, train:, ...), got int"),
    ("plan: 1\n", "is a reproduction plan (`plan:` at the top), not a recipe; run it with `sftkd reproduce {path}`"),
])
def test_a_recipe_file_that_is_no_recipe_names_the_file_and_the_mapping_expected(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    line = one_line_error("train-teacher", path, "--print-recipe")
    assert line == f"error: {path}: {message.format(path=path)}"


@pytest.mark.parametrize("acc", ["1", "inf"])
def test_training_and_prepare_data_take_the_same_accelerations(acc: str, tmp_path: Path) -> None:
    """1 is fully sampled k-space (or no downsampling): prepare-data refused it while training took it
    and failed later, on the dataset; both now refuse it up front with one rule."""
    from sftkd_cli.acquisition import ACCELERATION_RULE

    trained = one_line_error("train-teacher", "--acc", acc, "--print-recipe")
    assert trained == f"error: --acc: data.acceleration: expected {ACCELERATION_RULE}, got {float(acc)!r}"
    prepared = one_line_error("prepare-data", "demo", "--acc", acc, "--out", tmp_path / "data")
    assert prepared == f"error: --acc {float(acc):g}: expected {ACCELERATION_RULE}"
    assert sftkd("train-teacher", "--acc", "1.5", "--data", tmp_path / "not-prepared", "--print-recipe").exit_code == 0


def test_an_empty_init_from_is_random_weights_as_no_init_from(tmp_path: Path) -> None:
    """A script's `--init-from "$INIT"` with INIT unset: random weights, as distill takes it."""
    assert sftkd("train-teacher", "--init-from", "", "--data", tmp_path / "not-prepared", "--print-recipe").exit_code == 0


def test_training_choice_words_are_read_in_any_case() -> None:
    printed = sftkd("distill", "--amp", "BF16", "--device", "CUDA:0", "--schedule", "JOINT", "train.cuda_graphs=OFF",
                    "data.task=RECON", "--print-recipe").output
    for line in ("amp: bf16", "device: cuda:0", "schedule: joint", "cuda_graphs: 'off'", "task: recon"):
        assert f"  {line}\n" in printed


def test_eval_checkpoint_words_are_read_in_any_case_as_checkpoint_is() -> None:
    """eval.checkpoint=Best was refused while --checkpoint BEST was taken; a file name stays as typed."""
    printed = sftkd("train-teacher", "eval.checkpoint=Best", "--print-recipe").output
    assert "  checkpoint: best\n" in printed
    assert "  checkpoint: My/Best.pt\n" in sftkd("train-teacher", "eval.checkpoint=My/Best.pt", "--print-recipe").output


def test_evaluate_choice_words_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    import sftkd_cli.evaluate
    import sftkd_cli.runs
    from sftkd_cli.errors import SftkdError

    given: dict[str, object] = {}

    def evaluate_run(run: Path, **kwargs: object) -> None:
        given.update(kwargs)
        raise SftkdError("stop here")

    monkeypatch.setattr(sftkd_cli.runs, "open_run", lambda run: None)
    monkeypatch.setattr(sftkd_cli.evaluate, "evaluate_run", evaluate_run)
    line = one_line_error("evaluate", "runs/x", "--amp", "BF16", "--device", "CPU", "--convention", "FASTMRI",
                          "--checkpoint", "Last")
    assert line == "error: stop here"
    assert (given["amp"], given["device"], given["convention"], given["checkpoint"]) == ("bf16", "cpu", "fastmri", "last")
    refused = one_line_error("evaluate", "runs/x", "--convention", "PAPERX")
    assert refused == "error: --convention 'PAPERX': expected one of paper, fastmri"  # as typed


@pytest.mark.parametrize("args", [["reproduce", "demo", "--dry-run", "--executor", "LOCAL"],
                                  ["compare", "nowhere", "--format", "MARKDOWN", "--convention", "PAPER"]])
def test_enum_choices_are_read_in_any_case(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = sftkd(*args, ok=False)
    assert "Invalid value" not in result.output and "is not one of" not in result.output, result.output


SIZE_ERROR = ["--size", "0", "16"], "--size 0 16: expected two integers H W, each from 7 to 4096"
FRACTION_ERROR = ["--center-fraction", "2"], "--center-fraction 2: expected a number in [0, 1]"


@pytest.mark.parametrize("option, later", [(["--task", "SR"], SIZE_ERROR), (["--source", "COLIN27"], SIZE_ERROR),
                                           (["--mask-kind", "RANDOM"], FRACTION_ERROR),
                                           (["--mask-layout", "CENTERED"], FRACTION_ERROR)])
def test_prepare_data_choice_words_are_read_in_any_case(option: list[str], later: tuple[list[str], str], tmp_path: Path) -> None:
    """The word is taken: the command goes on to the next check, which `later` fails."""
    line = one_line_error("prepare-data", "demo", *option, *later[0], "--out", tmp_path / "data")
    assert line == f"error: {later[1]}"


def test_export_choice_words_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    import sftkd_cli.export
    from sftkd_cli.errors import SftkdError

    given: dict[str, object] = {}

    def export_run(run: Path, fmt: str, **kwargs: object) -> None:
        given.update(kwargs, fmt=fmt)
        raise SftkdError("stop here")

    monkeypatch.setattr(sftkd_cli.export, "export_run", export_run)
    assert one_line_error("export", "runs/x", "--format", "ONNX", "--checkpoint", "Last") == "error: stop here"
    assert (given["fmt"], given["checkpoint"]) == ("onnx", "last")


def test_bench_choice_words_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    import sftkd_cli.bench
    from sftkd_cli.errors import SftkdError

    given: dict[str, object] = {}

    def run_bench(**kwargs: object) -> None:
        given.update(kwargs)
        raise SftkdError("stop here")

    monkeypatch.setattr(sftkd_cli.bench, "run_bench", run_bench)
    assert one_line_error("bench", "--precision", "BF16", "--device", "CPU") == "error: stop here"
    assert (given["precision"], given["device"]) == ("bf16", "cpu")


def test_an_error_prints_the_users_text_as_given_not_as_an_emoji() -> None:
    """Rich turned `:-1:` in a user's value into an emoji: `v:-1` printed as `v👎`."""
    line = one_line_error("compare", "nowhere", "--attention", "att", "--attention-slice", "v:-1")
    assert "--attention-slice v:-1: expected VOLUME:SLICE" in line
