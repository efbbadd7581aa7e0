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

#: `sftkd --help` lists the commands in workflow order (others, if any, follow)
COMMAND_ORDER = ("prepare-data", "train-teacher", "train-sft", "distill", "evaluate", "compare", "export",
                 "bench", "reproduce")


def examples(text: str, *commands: str) -> str:
    """Command help: `text` (paragraphs separated by a blank line, each written as one line so
    that rich wraps it to the terminal) and an Examples block with one whole command per line.

    Keep each example within 78 characters: rich would wrap a longer one mid-command at 80
    columns (tests/test_help.py checks every command's help at COLUMNS=80)."""
    block = "\n".join(escape(command) for command in commands)  # not indented: typer dedents them anyway
    return f"{text}\n\n[bold]Examples[/]\n\n{block}"


def _plain_flags(params: list) -> None:
    """Flags (--force, --zf/--no-zf, --help) show no value column: typer would print `<bool>`."""
    for param in params:
        if isinstance(param, typer.core.TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


class _Argument(typer.core.TyperArgument):
    """A positional argument shown by its metavar alone (`RUN...`), not with a Python type
    (`<list[Path]>`) beside it."""

    def display_type_rich(self, ctx: typer.Context) -> str | None:  # type: ignore[override]
        return None if self.metavar else super().display_type_rich(ctx)

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


class _PlainFlagsHelp:
    """Mixin for commands and groups: flags, --help included, show no `<bool>` value column."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        _plain_flags(self.params)  # type: ignore[attr-defined]

    def get_help_option(self, ctx: typer.Context):  # type: ignore[no-untyped-def]
        option = super().get_help_option(ctx)  # type: ignore[misc]
        _plain_flags([option] if option is not None else [])
        return option


class HelpCommand(_PlainFlagsHelp, typer.core.TyperCommand):
    """Every sftkd command: help that shows values by their metavar (RUN, N, FILE), never by a
    Python type, and flags without a value column."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is typer.core.TyperArgument:
                param.__class__ = _Argument  # same fields; only how help shows it differs


class HelpGroup(_PlainFlagsHelp, typer.core.TyperGroup):
    """A command group whose --help flag shows no `<bool>` (see HelpCommand)."""


class _Group(HelpGroup):
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

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        """Workflow order (prepare-data first), whatever the order the modules registered in."""
        names = super().list_commands(ctx)
        return [n for n in COMMAND_ORDER if n in names] + [n for n in names if n not in COMMAND_ORDER]


def _error_line(text: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


err_console = Console(stderr=True)

app = typer.Typer(
    cls=_Group,
    name="sftkd",
    help=examples(
        "Student-friendly teacher knowledge distillation for MRI reconstruction (SFT-KD-Recon, MIDL 2023)."
        "\n\nTypical flow: prepare-data -> train-teacher / train-sft -> distill -> evaluate -> compare; "
        "`sftkd reproduce` runs a whole plan. `sftkd COMMAND --help` shows each command's options and examples.",
        "sftkd reproduce demo",
        "sftkd prepare-data demo --out data/demo",
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
