"""The console command itself: help, version, `python -m sftkd_cli`."""

import subprocess
import sys

from typer.testing import CliRunner

from sftkd_cli import __version__
from sftkd_cli.cli.app import app

COMMANDS = ["prepare-data", "train-teacher", "train-sft", "distill", "evaluate", "compare", "export", "bench", "reproduce"]


def test_help_lists_every_command():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sftkd {__version__}"


def test_python_dash_m_runs_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "sftkd_cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"sftkd {__version__}"


def test_every_command_has_help_with_an_example_or_description():
    runner = CliRunner()
    for command in COMMANDS:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        assert len(result.output.strip().splitlines()) > 5, command
