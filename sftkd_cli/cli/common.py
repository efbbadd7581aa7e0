"""Options and helpers shared by the training commands (one definition, many commands)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from sftkd_cli.choices import (DEFAULT_ACCELERATION, DEFAULT_AMP, DEFAULT_DATA_PATH, DEFAULT_DEVICE, DEFAULT_EPOCHS,
                               DEFAULT_RUNS_DIR, DEFAULT_THREADS)
from sftkd_cli.cli.base import stdout_console
from sftkd_cli.errors import SftkdError

if TYPE_CHECKING:  # the library (torch) is imported when a command runs, never for --help
    from sftkd_cli.config import Recipe, Setting
    from sftkd_cli.runs import RunDir
    from sftkd_cli.training.engine import FitResult

def args_argument(recipe: str):  # type: ignore[no-untyped-def]
    """The ARGS argument (recipe file and overrides) of a training command, with one of its own
    recipes as the help's example."""
    text = ("An optional recipe file (.yaml) followed by overrides `section.key=value`, "
            f"e.g. `{recipe} train.epochs=5 data.acceleration=5`. Overrides win over the recipe file, "
            "and options (--epochs ...) over both; an option and an override, or two overrides, may not set one key "
            "to different values.")
    return Annotated[Optional[list[str]], typer.Argument(metavar="ARGS", help=text, show_default=False)]


def recipe_default(key: str, value: object) -> str:
    """Help's note on an option that sets recipe key `key`: its default is the recipe's, and
    `value` where neither the recipe file nor an override sets it."""
    shown = f"{value:g}" if isinstance(value, float) else value
    return f"{key}; default: the recipe's, else {shown}"


DataOpt = Annotated[Optional[str], typer.Option("--data", "-d", metavar="DIR", help=f"Prepared dataset directory ({recipe_default('data.path', DEFAULT_DATA_PATH)}).")]
AccOpt = Annotated[Optional[float], typer.Option("--acc", metavar="X", help=f"Acceleration to train on, the scale factor when data.task=sr ({recipe_default('data.acceleration', DEFAULT_ACCELERATION)}).")]
NameOpt = Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="Run name; the run lives in <runs-dir>/<name> (run.name; default: the recipe's, else made of the data folder, role, model and acceleration, e.g. demo-teacher-D5C5-4x, demo-sft-D5C5-D3C5-4x, demo-kd-at-std-D3C5-4x).")]
RunsDirOpt = Annotated[Optional[str], typer.Option("--runs-dir", metavar="DIR", help=f"Folder holding run directories ({recipe_default('run.dir', DEFAULT_RUNS_DIR)}).")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", metavar="N", help=f"Number of epochs ({recipe_default('train.epochs', DEFAULT_EPOCHS)}).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", metavar="DEVICE", help=f"auto, cpu, cuda or cuda:N ({recipe_default('train.device', DEFAULT_DEVICE)}).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", metavar="N", help=f"CPU threads for torch; 0 = torch default ({recipe_default('train.threads', DEFAULT_THREADS)}).")]
AmpOpt = Annotated[Optional[str], typer.Option("--amp", metavar="MODE", help=f"Mixed precision: off, bf16 or fp16 ({recipe_default('train.amp', DEFAULT_AMP)}).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run exactly where its last checkpoint left off.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Start the run over: remove the files sftkd wrote into it (your other files there stay).")]
PrintOpt = Annotated[bool, typer.Option("--print-recipe", help="Print the resolved recipe and exit.")]


def split_args(args: list[str] | None) -> tuple[Path | None, list[str]]:
    """Separate the optional recipe file from `section.key=value` overrides."""
    recipe: Path | None = None
    overrides: list[str] = []
    for item in args or []:
        if "=" in item and not _is_recipe_path(item):
            overrides.append(item)
        elif item.endswith((".yaml", ".yml")) and recipe is None:
            recipe = Path(item)  # load_recipe reads the given path, else the recipe shipped with sftkd
        elif item.endswith((".yaml", ".yml")):
            raise SftkdError(f"argument {item!r}: one recipe file per command ({recipe} came first); "
                             "give other settings as section.key=value overrides")
        else:
            raise SftkdError(f"argument {item!r}: expected a recipe file (.yaml) or an override section.key=value")
    return recipe, overrides


def _is_recipe_path(item: str) -> bool:
    """Whether `item`, which holds a `=`, is a recipe file's path rather than an override: a
    .yaml/.yml name that is a file, or has a `/` before its `=` (run names may hold `=`:
    runs/lr=1e-3/recipe.yaml). An override's key (section.key) never holds a `/`."""
    return item.endswith((".yaml", ".yml")) and ("/" in item.split("=", 1)[0] or Path(item).is_file())


def build_recipe(
    command: str,
    args: list[str] | None,
    *,
    data: str | None,
    acc: float | None,
    name: str | None,
    runs_dir: str | None,
    epochs: int | None,
    device: str | None,
    threads: int | None,
    amp: str | None,
    own: dict[str, tuple[str, object]] | None = None,
    checks: Sequence[Callable[[Recipe], None]] = (),
) -> Recipe:
    """Recipe file + overrides + the options every training command shares + its `own` options
    (option -> (recipe key, value); None = not given). Option values reach the recipe as the typed values
    they are (`--name 0x10` is the run 0x10, `--data 'a: b'` the folder 'a: b'), never re-read as YAML.
    The recipe is validated, its run.role checked against `command` (`check_run_role`), then given
    the command's own `checks`; a refused value names where it came from (`naming_origin`:
    `--epochs`, `override train.lr=nan` or the recipe file)."""
    from sftkd_cli.config import Setting, load_recipe, naming_origin, parse_overrides, validate
    from sftkd_cli.training.session import check_run_role, follow_run_folder
    from sftkd_cli.name_checks import check_run_name

    recipe_file, overrides = split_args(args)
    if name is not None:
        check_run_name(name, "--name")
    shared = {"--data": ("data.path", data), "--acc": ("data.acceleration", acc), "--name": ("run.name", name),
              "--runs-dir": ("run.dir", runs_dir), "--epochs": ("train.epochs", epochs),
              "--device": ("train.device", device), "--threads": ("train.threads", threads), "--amp": ("train.amp", amp)}
    settings = [Setting(key, value, option) for option, (key, value) in {**shared, **(own or {})}.items() if value is not None]
    parsed = parse_overrides(overrides)
    _refuse_disagreements(parsed, settings)
    recipe = load_recipe(recipe_file, overrides, settings)  # two overrides that disagree: refused there
    if not {setting.key for setting in [*parsed, *settings]} & {"run.name", "run.dir"}:
        recipe = follow_run_folder(recipe, recipe_file)  # a run's own RUN/recipe.yaml trains that folder
    with naming_origin(recipe_file, [*parsed, *settings]):
        validate(recipe)
        check_run_role(recipe, command)
        for check in checks:
            check(recipe)
    return recipe


def _refuse_disagreements(overrides: list[Setting], options: list[Setting]) -> None:
    """An option and an override that set one key must agree (`same_setting`): the option would
    win silently, hiding which of the two the user meant."""
    from sftkd_cli.config import same_setting

    for option in options:
        for override in overrides:
            if override.key == option.key and not same_setting(option, override):
                raise SftkdError(f"{option.source} ({option.value}) and {override.source} disagree; "
                                 f"give {option.key} once")


def print_or_train(recipe: Recipe, print_only: bool, train: Callable[..., tuple[RunDir, FitResult]],
                   resolve: Callable[[Recipe], Recipe], what: str = "val L1", **kwargs: object) -> None:
    """`--print-recipe`: check and show the recipe as `resolve` completes it for training (model,
    run role and name); otherwise train(recipe, console=..., **kwargs) and print the run's "done"
    line with its best `what` (under torchrun: rank 0's only)."""
    from sftkd_cli.config import dump_recipe

    console = stdout_console()
    if print_only:  # `build_recipe` validated it: what training would refuse in its first line
        console.print(dump_recipe(resolve(recipe)), highlight=False, markup=False, soft_wrap=True)  # YAML: never wrapped
        return
    run, result = train(recipe, console=console, **kwargs)
    if result.is_main:  # the other processes of a torchrun do not validate: no best value
        console.print(f"[green]done[/]: {escape(str(run.path))}  best {what} {result.best_val_l1:.5f} at epoch "
                      f"{result.best_epoch}", soft_wrap=True)  # the path whole, as given: it is copied and grepped


