"""The `sftkd` console command: a thin Typer layer over the library.

Each command lives in its own module under `sftkd_cli.cli`, which exposes `register(app)`;
this module registers them all (the command modules never import it: no import cycle).
Library errors (`SftkdError`) become one red line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import sys
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from sftkd_cli import __version__
from sftkd_cli.cli import bench, compare, distill, evaluate, export, prepare, reproduce, sft, train
from sftkd_cli.cli.base import USAGE_ERROR, HelpGroup, examples, stderr_console
from sftkd_cli.errors import RunInterrupted, SftkdError, os_error_text
from sftkd_cli.torchrun import check_command

#: `sftkd --help` lists the commands in workflow order (others, if any, follow)
COMMAND_ORDER = ("prepare-data", "train-teacher", "train-sft", "distill", "evaluate", "compare", "export",
                 "bench", "reproduce")


class _Group(HelpGroup):
    """Turns a usage error (unknown option, bad value), a library `SftkdError`, an unforeseen OS
    error or running out of memory into one red line on stderr and exit 2 (a stray Ctrl-C: one
    line and exit 130)."""

    def make_context(self, *args, **kwargs) -> typer.Context:  # type: ignore[no-untyped-def]
        try:
            return super().make_context(*args, **kwargs)
        except USAGE_ERROR as exc:  # `sftkd --bogus`
            _usage_error(exc)

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except USAGE_ERROR as exc:  # the command's own options and arguments
            _usage_error(exc)
        except SftkdError as exc:
            if not exc.quiet:
                _error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a file the checks could not foresee (disk full, name too long, ...)
            if isinstance(exc, BrokenPipeError) and _stdout_reader_left():
                _silence_stdout()  # `sftkd bench --help | head`: stop quietly, as click does
                raise typer.Exit(1) from None
            where = f"{exc.filename}: " if exc.filename else ""
            _error_line(f"{where}{os_error_text(exc)}")
            raise typer.Exit(SftkdError.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (e.g. while it starts)
            _error_line("interrupted (Ctrl-C); what was already saved is kept")
            raise typer.Exit(RunInterrupted.exit_code) from None
        except (MemoryError, RuntimeError) as exc:  # sizes within the limits that still do not fit this machine
            if isinstance(exc, RuntimeError) and not _is_torch_out_of_memory(exc):
                raise
            detail = str(exc).splitlines()[0] if str(exc) else "an allocation failed"
            _error_line(f"out of memory ({detail}); try a smaller size, batch or dataset cache setting")
            raise typer.Exit(SftkdError.exit_code) from None

    def resolve_command(self, ctx: typer.Context, args: list[str]):  # type: ignore[no-untyped-def]
        """The command `args` name; under torchrun only a training command (`torchrun.check_command`)."""
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None:
            check_command(name)
        return name, command, rest

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]
        """Workflow order (prepare-data first), whatever the order the modules registered in."""
        names = super().list_commands(ctx)
        return [n for n in COMMAND_ORDER if n in names] + [n for n in names if n not in COMMAND_ORDER]


def _is_torch_out_of_memory(exc: RuntimeError) -> bool:
    """torch reports a failed allocation as a RuntimeError (CPU) or its OutOfMemoryError (GPU),
    not as Python's MemoryError; torch is not imported here (help and usage errors stay quick)."""
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)


#: what a bare `sftkd` raises to show its help (click >= 8.2)
_NoArgsIsHelp = getattr(sys.modules[USAGE_ERROR.__module__], "NoArgsIsHelpError", ())


def _usage_error(exc) -> NoReturn:  # type: ignore[no-untyped-def]
    """One line instead of click's usage block: what was wrong, and where the help is. A bare
    command (`sftkd`) still shows its help."""
    if isinstance(exc, _NoArgsIsHelp):
        raise exc
    message = " ".join(exc.format_message().split()).replace("Value error, ", "")  # pydantic's prefix
    command = exc.ctx.command_path if exc.ctx is not None else "sftkd"
    _error_line(f"{message} (see '{command} -h')")
    raise typer.Exit(exc.exit_code)


def _stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its end), rather
    than some other pipe having broken; without poll (Windows), assume it is stdout."""
    if not hasattr(select, "poll"):
        return True
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # not a stream with a file descriptor
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _error_line(text: str) -> None:
    stderr_console().print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Student-friendly teacher knowledge distillation for MRI reconstruction."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of `python -m sftkd_cli`."""
    _replace_what_the_terminal_cannot_show()
    try:
        app(args=argv)
    finally:
        # the process ends here: spare it the garbage collector's last pass over the objects that
        # torch and its compiler modules leave (0.7-0.9 s of a 5 s one-step training command on a
        # 2-vCPU VM); objects are still freed and finalised as their references go
        gc.freeze()


def _replace_what_the_terminal_cannot_show() -> None:
    """Output whose encoding lacks the tables' ± and Δ (Latin-1, ASCII, Windows cp1252 pipes) shows
    '?' for them instead of ending in a traceback after the work is done; so does a file name that
    is not UTF-8 (its bytes kept as surrogates), which a strict stdout (a UTF-8 terminal's) shows
    as \\udcNN, as Python's stderr does."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "±Δα×".encode(stream.encoding or "ascii")
            errors = "backslashreplace" if getattr(stream, "errors", None) == "strict" else None
        except (UnicodeEncodeError, LookupError):
            errors = "replace"
        if errors is not None:
            with contextlib.suppress(AttributeError, ValueError):  # not a text stream that can change
                stream.reconfigure(errors=errors)


# The command modules import only typer, rich and light sftkd_cli modules at module level, and the
# library (torch, NumPy, SciPy) inside the command functions, so that --help, --version and argument
# errors take a fraction of a second (tests/test_packaging.py checks that torch is never imported).
for _module in (prepare, train, sft, distill, evaluate, compare, export, bench, reproduce):
    _module.register(app)
