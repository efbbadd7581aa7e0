"""One way for tests to call the `sftkd` CLI in-process (typer's CliRunner)."""

from __future__ import annotations

from typer.testing import CliRunner

from sftkd_cli.cli.app import app

runner = CliRunner()


def sftkd(*args: object, ok: bool = True):
    """Invoke `sftkd ARGS...`; with `ok`, fail the test (showing the output) unless it exits 0."""
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result
