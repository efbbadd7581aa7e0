"""What every sftkd command shares: help rendering, the Examples block and the consoles.

Command modules import from here, and `sftkd_cli.cli.app` registers them (so no command
module imports the app: no import cycle). Imports only typer, rich and a light sftkd module:
command help stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Container

import typer
from rich.console import Console
from rich.markup import escape

from sftkd_cli.name_checks import in_any_case


def stdout_console() -> Console:
    """Where results go (tables, "done" lines). Made for each use: rich reads COLUMNS when a console
    is created, so one made at import would keep the width of whoever imported sftkd first. No
    emoji codes: a user's text such as `vol:-1:` must print as given, not as an emoji."""
    return Console(emoji=False)


def stderr_console() -> Console:
    """Where progress, warnings and errors go (see `stdout_console`)."""
    return Console(stderr=True, emoji=False)


def any_case(words: Container[str]) -> Callable[[str | None], str | None]:
    """Callback of a choice option whose `words` are read in any case (`--amp BF16` is bf16);
    another value stays as typed, for the error that refuses it."""
    def read(value: str | None) -> str | None:
        return None if value is None else in_any_case(value, words)

    return read


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


#: click's UsageError, from the click that typer runs on (its own copy since typer 0.2x, the click
#: package before): the base class of the public `typer.BadParameter`
USAGE_ERROR: type[Exception] = typer.BadParameter.__base__


class _PlainFlagsHelp:
    """Mixin for commands and groups: flags, --help included, show no `<bool>` value column; a
    usage error the option parser raises without a context gets the command's (its message then
    points to this command's help, not the root's)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)  # type: ignore[misc]
        except USAGE_ERROR as exc:
            if getattr(exc, "ctx", None) is None:
                exc.ctx = ctx  # type: ignore[attr-defined]
            raise

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
