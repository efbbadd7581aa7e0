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


def test_usage_errors_are_one_line_naming_the_option_and_the_help():
    """A mistyped option, a bad value, a missing argument or an unknown command: one line on
    stderr (not click's usage block), exit 2; a bare `sftkd` still shows the help."""
    runner = CliRunner()
    cases = {
        ("compare", "--format", "xml", "runs"): ["'--format'", "'xml' is not one of", "'sftkd compare -h'"],
        ("distill", "--forc"): ["--forc", "--force", "'sftkd distill -h'"],
        ("bench", "--repeats", "abc"): ["'--repeats'", "integer"],
        ("compare",): ["Missing argument 'RUN'"],
        ("trainteacher",): ["'trainteacher'", "train-teacher", "'sftkd -h'"],
        ("--bogus",): ["--bogus", "'sftkd -h'"],
        ("export", "r", "--out"): ["'--out' requires an argument", "'sftkd export -h'"],
        ("prepare-data", "acdc", "x", "--out"): ["'--out' requires an argument", "'sftkd prepare-data acdc -h'"],
    }
    for args, words in cases.items():
        result = runner.invoke(app, list(args))
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and result.stdout == "" and len(lines) == 1, (args, result.output)
        assert lines[0].startswith("error: ") and "Value error" not in lines[0], lines[0]
        for word in words:
            assert word in lines[0], (args, lines[0])
    bare = runner.invoke(app, [])
    assert "Usage: sftkd" in bare.output and "prepare-data" in bare.output


def test_names_the_commands_offer_are_listed_once():
    """Lists kept twice drift apart: k-space layouts (masks and the acquisition record), compare's
    formats (the renderer and --format), distill.init's words (the recipe check and training)."""
    from sftkd_cli import acquisition, choices
    from sftkd_cli.cli.compare import OutputFormat
    from sftkd_cli.mri import masks
    from sftkd_cli.training import kd

    assert masks.KSPACE_LAYOUTS is acquisition.KSPACE_LAYOUTS and not hasattr(masks, "LAYOUTS")
    assert [f.value for f in OutputFormat] == list(choices.COMPARE_FORMATS)
    assert kd.INIT_RANDOM is choices.INIT_RANDOM and choices.INIT_WORDS == ("", "random", "sft")


def test_evaluate_writes_each_metric_as_compare_does():
    """evaluate's table kept its own digits (NMSE 4 decimals: 0.0012 ± 0.0003); it now reads
    compare's (`format_stat`: PSNR 2 decimals, SSIM/VIF 4, the others 4 significant digits; the std
    with the mean's decimals)."""
    import io

    from rich.console import Console

    from sftkd_cli.report.formats import metrics_table
    from sftkd_cli.metrics import METRIC_NAMES

    scores = {name: {"mean": 0.0012345, "std": 0.00031} for name in METRIC_NAMES} | {"PSNR": {"mean": 31.234, "std": 1.5},
                                                                                    "HFN": {"mean": 2.5, "std": 1.234}}
    metrics = {"run": "r", "model": "D3C5", "role": "student", "params": 1000, "latency_ms_per_slice": 1.0,
               "device": "cpu", "dataset": {"split": "val", "slices": 3, "acceleration": 4.0, "task": "recon"},
               "zero_filled": scores, "metrics": scores}
    console = Console(file=io.StringIO(), width=200)
    console.print(metrics_table(metrics))
    rows = {line.split("│")[1].strip(): line for line in console.file.getvalue().splitlines() if line.count("│") > 2}
    assert "0.001234 ± 0.000310" in rows["NMSE"] and "31.23 ± 1.50" in rows["PSNR"] and "0.0012 ± 0.0003" in rows["SSIM"]
    assert "2.500 ± 1.234" in rows["HFN"]  # the std with the mean's decimals, not 2 significant digits (1.2)
