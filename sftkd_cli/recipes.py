"""Find plan and recipe files: the path as given, else the copy shipped with sftkd.

The repository's top-level `recipes/` folder is the source of truth. A wheel carries it inside
the package as `sftkd_cli/_recipes` (see pyproject.toml), so that `sftkd reproduce demo` and
`sftkd reproduce recipes/demo.yaml` work from any folder after `pip install sftkd`. In a source
checkout (editable install, or `python -m sftkd_cli` from the tree) the top-level folder is used.

A file at the given path (relative to the current directory) always wins, so a user's own or
edited copy is used over the shipped one.
"""

from __future__ import annotations

from pathlib import Path

from sftkd_cli.errors import SftkdError

#: the folder name plans and docs use for the shipped recipes (`recipes/demo.yaml`)
FOLDER = "recipes"
_PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir() -> Path | None:
    """The shipped recipes folder: in the installed package, or the checkout's top-level `recipes/`."""
    installed = _PACKAGE_DIR / "_recipes"
    if installed.is_dir():
        return installed
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / FOLDER).is_dir():
        return checkout / FOLDER
    return None


def find_file(path: str | Path) -> Path:
    """`path` when it exists; else the shipped file or folder at the same place inside the recipes
    (`recipes/demo/teacher.yaml` or `demo/teacher.yaml`); else `path` unchanged, so that the
    caller's not-found error names what the user gave."""
    path = Path(path)
    shipped = shipped_dir()
    if path.exists() or path.is_absolute() or ".." in path.parts or shipped is None:
        return path
    inner = Path(*path.parts[1:]) if len(path.parts) > 1 and path.parts[0] == FOLDER else path
    candidate = shipped / inner
    return candidate if candidate.exists() else path


def shipped_plans() -> list[str]:
    """Short names of the shipped plans (`demo`, then those of `recipes/plans/`)."""
    shipped = shipped_dir()
    if shipped is None:
        return []
    files = sorted(shipped.glob("*.yaml")) + sorted((shipped / "plans").glob("*.yaml"))
    return [file.stem for file in files]


def find_plan(name: str | Path) -> Path:
    """A plan file: a path (see `find_file`), or the short name of a shipped plan
    (`demo` -> recipes/demo.yaml, `table1-acdc` -> recipes/plans/table1-acdc.yaml)."""
    path = find_file(name)
    if path.is_file():
        return path
    shipped = shipped_dir()
    if shipped is not None and len(Path(name).parts) == 1:
        stem = Path(name).name.removesuffix(".yaml").removesuffix(".yml")
        for candidate in (shipped / f"{stem}.yaml", shipped / "plans" / f"{stem}.yaml"):
            if candidate.is_file():
                return candidate
    if path.is_dir():
        raise SftkdError(f"{name}: is a folder; expected a plan file")
    names = shipped_plans()
    known = f" (give a path, or a shipped plan: {', '.join(names)})" if names else ""
    raise SftkdError(f"{name}: plan file not found{known}")
