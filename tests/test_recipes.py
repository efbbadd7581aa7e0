"""Every shipped recipe loads and validates; overrides and errors behave."""

import dataclasses
import re
from pathlib import Path

import pytest

from sftkd_cli.config import check_distill_schedule, check_sft_pair, load_recipe, naming_origin, parse_overrides, validate
from sftkd_cli.distill.methods import METHODS
from sftkd_cli.errors import SftkdError
from sftkd_cli.recipes import find_plan

import yaml

ALL_YAML = sorted(Path(__file__).resolve().parents[1].glob("recipes/**/*.yaml"))
RECIPES = [p for p in ALL_YAML if "plan" not in (yaml.safe_load(p.read_text()) or {})]  # plans: test_reproduce


def test_recipes_are_shipped():
    assert len(RECIPES) >= 50


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_shipped_recipe_is_valid(path):
    recipe = load_recipe(path)
    validate(recipe)
    assert recipe.distill.method in METHODS
    if "paper" in path.parts:
        t = recipe.train
        assert (t.epochs, t.batch_size, t.lr, t.lr_step, t.lr_gamma, t.seed) == (150, 4, 1e-3, 40, 0.1, 42)
        assert recipe.run.name and recipe.run.role in {"", "sft", "kd"}  # train-teacher: the model decides


def test_overrides_win_and_are_typed(tmp_path):
    recipe = load_recipe(RECIPES[0], ["train.epochs=3", "data.acceleration=5", "distill.options={p: 2}"])
    assert recipe.train.epochs == 3 and recipe.data.acceleration == 5.0
    assert recipe.distill.options == {"p": 2}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown key train.epoch; did you mean train.epochs?"),
        ("trian.epochs=3", "unknown section 'trian'; did you mean train?"),
        ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
        ("train.lr=abc1e-3", "train.lr: expected a number"),
        ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
        ("epochs=3", "expected section.key=value"),
        ("train.epochs", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(SftkdError, match=message.replace("?", r"\?").replace("(", r"\(")):
        load_recipe(None, [override])


@pytest.mark.parametrize("override, message", [
    ("train.deterministic=maybe", "train.deterministic: expected true or false, got 'maybe'"),
    ("distill.options=p2", "distill.options: expected a mapping such as {p: 2}, got 'p2'"),
    ("train.epochs=~", "train.epochs: expected an integer, got an empty value"),
    ("train.epochs=", "train.epochs: expected an integer, got an empty value"),
    ("train.lr=[1, 2]", "train.lr: expected a number, got [1, 2]"),
    ("distill.student_taps={a: 1}", "distill.student_taps: expected a list such as [a, b], got {a: 1}"),
])
def test_a_value_of_the_wrong_type_is_worded_for_users(override, message):
    with pytest.raises(SftkdError) as info:
        load_recipe(None, [override])
    assert str(info.value) == f"override {override}: {message}"


def test_an_empty_recipe_value_is_named_so(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs:\n")
    with pytest.raises(SftkdError) as info:
        load_recipe(recipe)
    assert str(info.value) == f"{recipe}: train.epochs: expected an integer, got an empty value"


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(SftkdError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
    with pytest.raises(SftkdError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(SftkdError, match="dir.yaml: is a folder; expected a recipe file"):
        load_recipe(tmp_path / "dir.yaml")
    with pytest.raises(SftkdError, match="dir.yaml: is a folder; expected a plan file"):
        find_plan(tmp_path / "dir.yaml")
    assert find_plan("demo").name == "demo.yaml"  # the shipped plan, not the shipped folder demo/


@pytest.mark.parametrize("text, message", [
    ("train:\n  epochs: 1\n\tlr: 2\n", "bad.yaml: not valid YAML at line 3, column 1: found a tab character (indent with spaces)"),
    ("data:\n  path: [data_demo\n", "bad.yaml: not valid YAML at line 2, column 9: '[' is never closed"),
    ("data: {path: x\n", "bad.yaml: not valid YAML at line 1, column 7: '{' is never closed"),
    ("run:\n  name: \"x\n", "bad.yaml: not valid YAML at line 2, column 9: the quote is never closed"),
    ("train: epochs: 1\n", "bad.yaml: not valid YAML at line 1, column 14: mapping values are not allowed here"),
    ("run:\n  name: a\x07\n", "bad.yaml: not valid YAML at character 15: character U+0007 is not allowed in YAML"),
])
def test_bad_yaml_says_where_and_what(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SftkdError) as info:
        load_recipe(bad)
    assert str(info.value) == f"{bad}: {message.removeprefix('bad.yaml: ')}"


def test_cross_field_validation():
    with pytest.raises(SftkdError, match="same number of cascades"):
        check_sft_pair(load_recipe(None, ["sft.student=D3C4"]))
    with pytest.raises(SftkdError, match="train.amp"):
        validate(load_recipe(None, ["train.amp=fp8"]))


def test_scientific_notation_without_a_dot_is_a_float():
    assert load_recipe(None, ["train.lr=1e-4"]).train.lr == 1e-4


@pytest.mark.parametrize(
    "overrides",
    [
        ["distill.schedule=two-stage"],  # stage1_epochs 0: a plain L1 student recorded as a KD run
        ["distill.schedule=two-stage", "train.epochs=10", "distill.stage1_epochs=10"],  # no L1 stage
    ],
)
def test_two_stage_needs_both_stages(overrides):
    with pytest.raises(SftkdError, match=r"^distill\.stage1_epochs: expected"):
        check_distill_schedule(load_recipe(None, overrides))
    validate(load_recipe(None, overrides))  # a teacher run under a plan's base schedule: no distillation


@pytest.mark.parametrize("overrides", [["distill.schedule=two-stage", "train.epochs=10", "distill.stage1_epochs=-1"],
                                       ["distill.stage1_epochs=-1"]])
def test_a_negative_stage1_epochs_is_refused_everywhere(overrides):
    with pytest.raises(SftkdError, match=r"^distill\.stage1_epochs: expected 0 or more"):
        validate(load_recipe(None, overrides))


@pytest.mark.parametrize("method", ["sp", "PKT", "cc"])
def test_distill_refuses_batch_size_1_for_methods_comparing_slices(method):
    """SP, PKT and CC compare the slices of a batch: a batch of 1 would train as --method none."""
    overrides = [f"distill.method={method}", "train.batch_size=1"]
    with pytest.raises(SftkdError, match=rf"^train\.batch_size: expected 2 or more with distill\.method {method.lower()} "):
        check_distill_schedule(load_recipe(None, overrides))
    check_distill_schedule(load_recipe(None, [f"distill.method={method}", "train.batch_size=2"]))
    check_distill_schedule(load_recipe(None, ["distill.method=at", "train.batch_size=1"]))  # a per-slice loss


def test_distill_refuses_batch_size_1_for_batch_normalised_at():
    """AT with distill.options.normalize batch (the reference's formula) normalises across the
    batch: a batch of 1 gives exactly 0 KD loss. AT's default, per-slice normalisation is kept."""
    overrides = ["distill.method=at", "train.batch_size=1"]
    with pytest.raises(SftkdError, match=r"^train\.batch_size: expected 2 or more with distill\.method at \(AT with "
                                         r"distill\.options\.normalize batch normalises each pixel across the slices "
                                         r"of a batch: a batch of 1 gives no KD loss\), got 1$"):
        check_distill_schedule(load_recipe(None, [*overrides, "distill.options={normalize: batch, distance: l1}"]))
    check_distill_schedule(load_recipe(None, ["distill.method=at", "train.batch_size=2",
                                              "distill.options={normalize: batch}"]))
    check_distill_schedule(load_recipe(None, [*overrides, "distill.options={normalize: sample}"]))
    check_distill_schedule(load_recipe(None, [*overrides, "distill.options={distance: l1}"]))


def test_two_stage_with_both_stages_is_valid():
    check_distill_schedule(load_recipe(None, ["distill.schedule=two-stage", "train.epochs=10", "distill.stage1_epochs=9"]))


def test_the_schedule_is_checked_where_distillation_trains():
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app

    two_stage = ["distill.schedule=two-stage", "distill.stage1_epochs=5", "--epochs", "5", "--print-recipe"]
    assert CliRunner().invoke(app, ["train-teacher", *two_stage]).exit_code == 0
    refused = CliRunner().invoke(app, ["distill", *two_stage])
    assert refused.exit_code == 2 and "distill.stage1_epochs" in refused.stderr


@pytest.mark.parametrize("key", ["sft.w_teacher", "sft.w_student", "sft.w_imit", "distill.w_rec", "distill.w_kd",
                                 "distill.w_imit"])
@pytest.mark.parametrize("value", ["-1", ".nan", ".inf", "-.inf"])
def test_loss_weights_are_finite_and_not_negative(key, value):
    with pytest.raises(SftkdError, match=rf"^{key.replace('.', '[.]')}: expected a finite number >= 0, got"):
        validate(load_recipe(None, [f"{key}={value}"]))


def test_zero_loss_weights_are_valid():
    validate(load_recipe(None, ["sft.w_imit=0", "distill.w_kd=0", "distill.w_imit=0.5"]))


SFT_ZERO = ["sft.w_teacher=0", "sft.w_student=0", "sft.w_imit=0"]
TWO_STAGE = ["distill.schedule=two-stage", "train.epochs=3", "distill.stage1_epochs=1"]


@pytest.mark.parametrize("check, overrides, message", [
    (check_sft_pair, SFT_ZERO, "sft.w_teacher, sft.w_student, sft.w_imit: expected at least one > 0, got all 0"),
    (check_distill_schedule, ["distill.w_rec=0", "distill.w_kd=0"],
     "distill.w_rec, distill.w_kd, distill.w_imit: expected at least one > 0, got all 0"),
    (check_distill_schedule, ["distill.method=none", "distill.w_rec=0"],
     "distill.w_rec, distill.w_imit: expected at least one > 0 with distill.method none (no feature loss), got all 0"),
    (check_distill_schedule, [*TWO_STAGE, "distill.w_kd=0"],
     "distill.w_kd: expected > 0 with distill.schedule two-stage (its first stage trains the feature loss alone), got 0"),
    (check_distill_schedule, [*TWO_STAGE, "distill.w_rec=0"],
     "distill.w_rec, distill.w_imit: expected at least one > 0 with distill.schedule two-stage (its second stage's loss)"),
], ids=["sft", "joint", "none", "two-stage-first", "two-stage-second"])
def test_a_loss_whose_weights_are_all_zero_is_refused_where_it_trains(check, overrides, message):
    """A loss weighted all 0 is 0: nothing would train. Refused by the checks train-sft / distill
    (and plan stages of those kinds) run; another command's recipe may hold such weights."""
    with pytest.raises(SftkdError) as refused:
        check(load_recipe(None, overrides))
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    validate(load_recipe(None, overrides))


def test_all_zero_sft_weights_are_one_line_from_train_sft():
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app

    refused = CliRunner().invoke(app, ["train-sft", *SFT_ZERO, "--print-recipe"])
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1 and "sft.w_teacher, sft.w_student" in refused.stderr
    assert CliRunner().invoke(app, ["train-teacher", *SFT_ZERO, "--print-recipe"]).exit_code == 0


@pytest.mark.parametrize("gamma", ["10", "1.5"])
def test_an_lr_gamma_above_one_is_refused(gamma):
    """StepLR multiplies train.lr by train.lr_gamma every train.lr_step epochs: above 1 the LR grows
    without bound (train.lr=1, lr_step=1, lr_gamma=10 would pass MAX_LR after one epoch)."""
    with pytest.raises(SftkdError, match=r"^train\.lr_gamma: expected a number > 0 and <= 1 \(a decay"):
        validate(load_recipe(None, ["train.lr=1", "train.lr_step=1", f"train.lr_gamma={gamma}"]))
    validate(load_recipe(None, ["train.lr_gamma=1"]))  # a constant LR


@pytest.mark.parametrize("value", ["bset", "", "runs/x/checkpoints/best", "best.pth"])
def test_eval_checkpoint_is_checked_before_training(value):
    with pytest.raises(SftkdError, match=r"^eval\.checkpoint: expected best, last or a checkpoint file \(\.pt\)"):
        validate(load_recipe(None, [f"eval.checkpoint={value}"]))


@pytest.mark.parametrize("value", ["best", "last", "runs/x/checkpoints/best.pt"])
def test_eval_checkpoint_values_that_are_valid(value):
    validate(load_recipe(None, [f"eval.checkpoint={value}"]))


def test_eval_split_must_be_a_split_of_the_dataset(tiny_dataset):
    with pytest.raises(SftkdError, match=r"^eval\.split: split 'tset' not in dataset .* \(has train, val, test\)"):
        validate(load_recipe(None, [f"data.path={tiny_dataset}", "eval.split=tset"]))
    validate(load_recipe(None, [f"data.path={tiny_dataset}", "eval.split=test"]))


@pytest.mark.parametrize("override, message", [
    ("data.acceleration=6", r"^data\.acceleration: acceleration 6 not in dataset .* \(has 4, 5\)$"),
    ("eval.split=tset", r"^eval\.split: split 'tset' not in dataset .*; evaluate would refuse it after training; "
                        r"did you mean test\?$"),
])
def test_what_the_dataset_lacks_is_named_by_its_recipe_key(tiny_dataset, override, message):
    with pytest.raises(SftkdError, match=message):
        validate(load_recipe(None, [f"data.path={tiny_dataset}", override]))


@pytest.mark.parametrize("override, message", [
    ("data.train_split=abc", r"^data\.train_split: split 'abc' not in dataset .* \(has train, val, test\)$"),
    ("data.val_split=vall", r"^data\.val_split: split 'vall' not in dataset .*; did you mean val\?$"),
])
def test_a_training_split_the_dataset_lacks_is_named_by_its_key(tiny_dataset, override, message):
    with pytest.raises(SftkdError, match=message):
        validate(load_recipe(None, [f"data.path={tiny_dataset}", override]))


@pytest.mark.parametrize("key", ["model.name", "sft.teacher", "sft.student"])
def test_an_unknown_architecture_is_named_by_its_key(key):
    with pytest.raises(SftkdError, match=rf"^override {key}=abc: {key}: model 'abc': unknown architecture"), \
            naming_origin(None, parse_overrides([f"{key}=abc"])):
        validate(load_recipe(None, [f"{key}=abc"]))


def test_an_unknown_distill_method_is_named_by_its_key():
    with pytest.raises(SftkdError, match=r"^override distill\.method=abc: distill\.method 'abc': expected one of at, "), \
            naming_origin(None, parse_overrides(["distill.method=abc"])):
        check_distill_schedule(load_recipe(None, ["distill.method=abc"]))


def test_comma_lists_are_stripped():
    recipe = load_recipe(None, ["distill.student_taps=c1.conv2, c3.conv2,", "distill.teacher_taps= c1.conv2 ,,c5.conv2"])
    assert recipe.distill.student_taps == ["c1.conv2", "c3.conv2"]
    assert recipe.distill.teacher_taps == ["c1.conv2", "c5.conv2"]


def test_the_sft_pair_is_checked_only_where_sft_trains():
    """`sft.teacher` marks a teacher run (README): a D3C2 teacher with the default D3C5 student
    trains and prints; train-sft refuses the pair in one line, --print-recipe too."""
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app

    teacher = CliRunner().invoke(app, ["train-teacher", "--model", "D3C2", "sft.teacher=D3C2", "--print-recipe"])
    assert teacher.exit_code == 0, teacher.output
    sft = CliRunner().invoke(app, ["train-sft", "sft.teacher=D3C2", "--print-recipe"])
    assert sft.exit_code == 2 and "same number of cascades" in sft.stderr


def test_a_refused_value_names_where_it_came_from(tmp_path):
    """A value the cross-key checks refuse names its origin, as a type error does: the override,
    the option or the recipe file that set it; a default is named by its key alone."""
    from sftkd_cli.config import Setting, naming_origin

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("train:\n  epochs: 0\n")

    def refused(path, overrides=(), settings=(), check=validate) -> str:
        with pytest.raises(SftkdError) as caught, naming_origin(path, [*parse_overrides(overrides), *settings]):
            check(load_recipe(path, overrides, settings))
        return str(caught.value)

    assert refused(recipe_file) == f"{recipe_file}: train.epochs: expected at least 1, got 0"
    assert refused(recipe_file, ["train.epochs=-1"]) == "override train.epochs=-1: train.epochs: expected at least 1, got -1"
    option = Setting("train.epochs", -2, "--epochs")
    assert refused(recipe_file, ["train.epochs=-1"], [option]).startswith("--epochs: train.epochs:")  # the option wins
    assert refused(None, ["sft.w_imit=-1"]) == "override sft.w_imit=-1: sft.w_imit: expected a finite number >= 0, got -1.0"
    # two keys: each origin once; a key at its default (stage1_epochs 0) names no origin
    two_stage = ["distill.schedule=two-stage", "train.epochs=3"]
    assert refused(None, two_stage, check=check_distill_schedule).startswith(
        "override train.epochs=3 and override distill.schedule=two-stage: distill.stage1_epochs: expected 1 or more "
        "and fewer than train.epochs (3)")
    (tmp_path / "kd.yaml").write_text("distill:\n  stage1_epochs: 5\n  schedule: two-stage\n")
    assert refused(tmp_path / "kd.yaml", ["train.epochs=3"], check=check_distill_schedule).startswith(
        f"{tmp_path / 'kd.yaml'} and override train.epochs=3: distill.stage1_epochs:")  # the file once
    with pytest.raises(SftkdError, match=r"^train\.lr: expected"), naming_origin(None, []):  # a default: no origin
        validate(dataclasses.replace(load_recipe(None), train=dataclasses.replace(load_recipe(None).train, lr=0.0)))


def test_the_commands_name_the_option_or_override_a_refused_value_came_from(tmp_path):
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app

    runner = CliRunner()
    assert runner.invoke(app, ["train-teacher", "--epochs", "0", "--print-recipe"]).stderr == (
        "error: --epochs: train.epochs: expected at least 1, got 0\n")
    assert runner.invoke(app, ["train-sft", "sft.w_student=-1", "--print-recipe"]).stderr == (
        "error: override sft.w_student=-1: sft.w_student: expected a finite number >= 0, got -1.0\n")
    assert runner.invoke(app, ["distill", "--schedule", "two-stage", "--print-recipe"]).stderr.startswith(
        "error: --schedule: distill.stage1_epochs: expected 1 or more")


def test_stage1_epochs_with_the_joint_schedule_is_refused_not_ignored():
    """Setting only distill.stage1_epochs trained jointly without a word; it needs two-stage."""
    with pytest.raises(SftkdError, match=r"^distill\.stage1_epochs: only used with distill\.schedule two-stage, "
                                         r"got 2 with joint"):
        check_distill_schedule(load_recipe(None, ["distill.stage1_epochs=2", "train.epochs=5"]))
    check_distill_schedule(load_recipe(None, ["distill.stage1_epochs=2", "train.epochs=5", "distill.schedule=two-stage"]))


@pytest.mark.parametrize("key", ["data.path", "run.dir"])
def test_an_empty_folder_key_is_refused_not_read_as_the_current_folder(key):
    """`run.dir=` put the run in the current folder and `data.path=` read it as the dataset."""
    with pytest.raises(SftkdError, match=rf"^{re.escape(key)}: expected .*, got an empty value$"):
        validate(load_recipe(None, [f"{key}="]))


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_a_refused_value_from_an_option_names_it_with_an_empty_recipe_file(tmp_path, text):
    """An empty recipe file sets no key: the option is named (it raised AttributeError)."""
    from typer.testing import CliRunner

    from sftkd_cli.cli.app import app

    (tmp_path / "empty.yaml").write_text(text)
    refused = CliRunner().invoke(app, ["train-teacher", str(tmp_path / "empty.yaml"), "--epochs", "0", "--print-recipe"])
    assert refused.exit_code == 2 and refused.stderr == "error: --epochs: train.epochs: expected at least 1, got 0\n"
