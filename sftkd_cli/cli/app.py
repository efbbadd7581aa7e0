"""The `sftkd` console command: a thin Typer layer over the library.

Each command lives in its own module under `sftkd_cli.cli` and is registered here.
Library errors (`SftkdError`) become one red line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from sftkd_cli import __version__
from sftkd_cli.errors import SftkdError, os_error_text

class _Group(typer.core.TyperGroup):
    """Turns a library `SftkdError`, an unforeseen OS error or running out of memory into one red
    line on stderr and exit 2."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except SftkdError as exc:
            _error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a file the checks could not foresee (disk full, name too long, ...)
            where = f"{exc.filename}: " if exc.filename else ""
            _error_line(f"{where}{os_error_text(exc)}")
            raise typer.Exit(SftkdError.exit_code) from None
        except MemoryError as exc:  # sizes within the limits that still do not fit this machine
            detail = str(exc).splitlines()[0] if str(exc) else "an allocation failed"
            _error_line(f"out of memory ({detail}); try a smaller size, batch or dataset cache setting")
            raise typer.Exit(SftkdError.exit_code) from None


def _error_line(text: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


err_console = Console(stderr=True)

app = typer.Typer(
    cls=_Group,
    name="sftkd",
    help=(
        "Student-friendly teacher knowledge distillation for MRI reconstruction "
        "(SFT-KD-Recon, MIDL 2023).\n\n"
        "Typical flow: prepare-data -> train-teacher / train-sft -> distill -> evaluate -> compare."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sftkd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Student-friendly teacher knowledge distillation for MRI reconstruction."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of `python -m sftkd_cli`."""
    app(args=argv)


# Command modules register themselves on `app` when imported (keep this list sorted by workflow).
# They import only typer, rich and sftkd_cli.choices at module level, and the library (torch, NumPy,
# SciPy) inside the command functions, so that --help, --version and argument errors take a
# fraction of a second (tests/test_packaging.py checks that torch is never imported for them).
from sftkd_cli.cli import (  # noqa: E402,F401  (import order = order in --help)
    prepare,
    train,
    sft,
    distill,
    evaluate,
    compare,
    export,
    bench,
    reproduce,
)
