"""Every `--help` reads cleanly at 80 columns: nothing wider, no Python types as option values,
every example a whole command on one line, prose that rich wraps (no hard-wrapped paragraphs),
and the commands listed in workflow order."""

from __future__ import annotations

import pytest
from rich.text import Text
from typer.main import get_command
from typer.testing import CliRunner

from sftkd_cli.cli.app import app

WIDTH = 80
ROOT = get_command(app)
# the Python types typer prints when an option or argument has no metavar
TYPE_METAVARS = ("<bool>", "<list[", "<int,", "<str>", "<path>", "<float>", "<int>", "<tuple")


def _commands(command=ROOT, prefix=()):
    """(argv prefix, click command) for the root, every command and every sub-command."""
    yield list(prefix), command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*prefix, name))


COMMANDS = list(_commands())
IDS = [" ".join(argv) or "sftkd" for argv, _ in COMMANDS]
COMMANDS_BY_NAME = [(" ".join(argv), command) for argv, command in COMMANDS]


def _render(argv: list[str]) -> str:
    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": None},
                                terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.output


def _examples(command) -> list[str]:
    """The example commands of a help text as it renders them (markup removed)."""
    lines = [Text.from_markup(line).plain.strip() for line in (command.help or "").splitlines()]
    return [line for line in lines if line.startswith("sftkd ")]


def test_the_commands_are_found():
    names = {" ".join(argv) for argv, _ in COMMANDS}
    assert {"prepare-data demo", "prepare-data acdc", "compare", "bench", "reproduce"} <= names
    assert len(COMMANDS) >= 14


@pytest.mark.parametrize(("argv", "command"), COMMANDS, ids=IDS)
def test_help_fits_80_columns_without_python_types(argv, command):
    text = _render(argv)
    lines = text.splitlines()
    assert max(len(line) for line in lines) == WIDTH  # rich used the 80 columns, not fewer
    too_long = [line for line in lines if len(line) > WIDTH]
    assert not too_long, "\n".join(too_long)
    shown = [m for m in TYPE_METAVARS if m in text]
    assert not shown, f"{shown} in\n{text}"
    assert "…" not in text, text  # nothing cut off with an ellipsis


@pytest.mark.parametrize(("argv", "command"), COMMANDS, ids=IDS)
def test_every_example_is_one_whole_line(argv, command):
    examples = _examples(command)
    assert examples, f"sftkd {' '.join(argv)}: no example"
    lines = [line.strip() for line in _render(argv).splitlines()]
    broken = [example for example in examples if example not in lines]
    assert not broken, f"split over lines: {broken}"


@pytest.mark.parametrize(("argv", "command"), COMMANDS, ids=IDS)
def test_prose_is_not_hard_wrapped(argv, command):
    """Each paragraph of prose is one line in the source, so rich wraps it to the terminal (a
    paragraph broken by hand at ~95 characters comes out ragged at 80)."""
    for paragraph in (command.help or "").split("\n\n"):
        lines = paragraph.strip().splitlines()
        if lines and not all(line.strip().startswith("sftkd ") for line in lines):
            assert len(lines) == 1, f"hard-wrapped paragraph:\n{paragraph}"


def test_root_help_lists_the_commands_in_workflow_order():
    text = _render([])
    order = ["prepare-data", "train-teacher", "train-sft", "distill", "evaluate", "compare", "export", "bench",
             "reproduce"]
    rows = [line.split()[1] for line in text.splitlines() if line.startswith("│ ") and line[2] != " "]
    rows = [row for row in rows if row in order]
    assert rows == order


@pytest.mark.parametrize(("argv", "command"), COMMANDS, ids=IDS)
def test_package_extras_survive_the_markup(argv, command):
    """`pip install 'sftkd[cluster]'` in help text: rich would read an unescaped [cluster] as a style and drop it."""
    import re

    extras = re.findall(r"sftkd\\?\[(\w+)\]", command.help or "")
    text = " ".join(_render(argv).split())
    assert all(f"sftkd[{extra}]" in text for extra in extras), (extras, text)


@pytest.mark.parametrize("argv", [["train-teacher"], ["train-sft"], ["distill"], ["export"], ["evaluate"]])
def test_model_commands_name_every_architecture_family(argv):
    """The help of every command that takes or reads a model names each family (DC-UNet and VDSR
    were missing: train-teacher said "Train one DC-CNN"); the training commands show each family's
    name form and example under an ARCH metavar and say that super-resolution needs data.task=sr."""
    from sftkd_cli.choices import ARCHITECTURES

    text = " ".join(_render(argv).replace("│", " ").split())
    assert all(a.label in text for a in ARCHITECTURES), text
    if argv[0].startswith(("train", "distill")):
        options = [p for p in ROOT.commands[argv[0]].params if "architecture" in (getattr(p, "help", "") or "").lower()]
        assert options and all(p.metavar == "ARCH" for p in options)
        assert all(f"{a.form} ({a.label}, e.g. {a.example}" in text for a in ARCHITECTURES), text
        assert "VDSR12; data.task=sr only" in text and "needs data.task=sr" in text, text


def test_train_teacher_examples_train_their_model_in_the_role_it_has():
    """The super-resolution example trained VDSR12 as a 'student' run (sft.teacher stayed D5C5):
    each example's recipe (as --print-recipe shows it) gives a teacher-sized model the teacher
    role and the D3C5 baseline the student role."""
    import shlex

    import yaml

    examples = _examples(ROOT.commands["train-teacher"])
    assert any("data.task=sr" in example for example in examples)
    for example in examples:
        res = CliRunner().invoke(app, [*shlex.split(example)[1:], "--print-recipe"])
        assert res.exit_code == 0, res.output
        printed = yaml.safe_load(res.stdout)
        model, role = printed["model"]["name"], printed["run"]["role"]
        assert role == ("student" if model == "D3C5" else "teacher"), example


@pytest.mark.parametrize("command", ["train-teacher", "train-sft", "distill"])
def test_training_options_say_where_their_default_comes_from(command):
    """An option that sets a recipe key names the key and its default: the recipe's, else the
    built-in one (the value a recipe without the key gets)."""
    from sftkd_cli.config import Recipe

    text = " ".join(_render([command]).replace("│", " ").split())
    recipe = Recipe()
    defaults = {"data.path": recipe.data.path, "data.acceleration": f"{recipe.data.acceleration:g}",
                "run.dir": recipe.run.dir, "train.epochs": recipe.train.epochs, "train.device": recipe.train.device,
                "train.threads": recipe.train.threads, "train.amp": recipe.train.amp}
    if command == "distill":
        defaults |= {"distill.method": recipe.distill.method, "distill.init": recipe.distill.init,
                     "distill.schedule": recipe.distill.schedule}
    for key, value in defaults.items():
        assert f"{key}; default: the recipe's, else {value})" in text or f"{key}; default: the recipe's, else {value}):" in text, key
    assert "run.name; default: the recipe's, else made of the data folder" in text


def test_evaluate_help_says_which_checkpoint_it_scores():
    """It opened with "with a run's best checkpoint", though --checkpoint and eval.checkpoint choose another."""
    command = dict(COMMANDS_BY_NAME)["evaluate"]
    opening = " ".join(Text.from_markup(command.help).plain.split("\n\n")[0].split())
    assert "best checkpoint" not in opening
    assert "--checkpoint" in opening and "eval.checkpoint" in opening
