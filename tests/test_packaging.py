"""Packaging and start-up: an instant CLI, shipped recipes, licence metadata, Windows-safe imports.

- Help, `--version` and argument errors never import torch, NumPy or SciPy (seconds each).
- The wheel carries the top-level recipes/ folder; plans and recipes are found by short name
  or by their `recipes/...` path from any folder, in a checkout and in an installed wheel.
- No module runs a Unix-only import (fcntl, ...) when imported, so sftkd imports on Windows.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cli_helpers import sftkd
from sftkd_cli import __version__

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sftkd_cli"
HEAVY = ("torch", "numpy", "scipy", "h5py", "nibabel", "skimage", "matplotlib", "onnx", "onnxruntime")

# Runs in a fresh interpreter: every command's --help, --version and some argument errors, then
# prints which heavy modules got imported (standalone mode, as the console script runs).
_NO_HEAVY_IMPORTS = """
import contextlib, io, json, sys
from typer.main import get_command
from sftkd_cli.cli.app import main, app

def paths(command, prefix):
    yield prefix
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from paths(sub, prefix + [name])

calls = [p + ["--help"] for p in paths(get_command(app), [])]
calls += [["--version"], [], ["no-such-command"], ["train-teacher", "--epochs", "x"],
          ["evaluate"], ["export", "run", "--format"], ["bench", "--size", "big"],
          ["prepare-data", "demo", "--size", "1"], ["reproduce"], ["compare", "--format", "pdf", "r"]]
codes = {}
for argv in calls:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(argv)
            codes[" ".join(argv)] = 0
        except SystemExit as exc:
            codes[" ".join(argv)] = exc.code
print(json.dumps({"heavy": sorted(m for m in HEAVY if m in sys.modules), "codes": codes}))
"""


def test_help_version_and_argument_errors_import_no_torch():
    script = f"HEAVY = {HEAVY!r}\n" + _NO_HEAVY_IMPORTS
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"imported for help/version/argument errors: {result['heavy']}"
    codes = result["codes"]
    assert len(codes) > 15, codes  # the root, every command, the prepare-data sources, the errors
    assert all(code == 0 for argv, code in codes.items() if argv.endswith("--help") or argv == "--version"), codes
    assert codes["train-teacher --epochs x"] == 2 and codes["no-such-command"] == 2, codes


def test_training_imports_no_scipy_or_skimage():
    """CPU: the training objectives load without scipy, scikit-image or matplotlib (about 0.4 s of
    every training process's start); evaluation imports them when it scores."""
    script = (
        "import sys, sftkd_cli.training.supervised, sftkd_cli.training.sft, sftkd_cli.training.kd\n"
        "print(sorted(m for m in ('scipy', 'skimage', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


class _PipeClosedAfter(io.StringIO):
    """stdout whose reader leaves after `lines` writes (`| head`): later writes raise
    BrokenPipeError. `fd`: its file descriptor."""

    def __init__(self, lines: int, fd: int) -> None:
        super().__init__()
        self.lines, self.fd = lines, fd

    def write(self, text: str) -> int:
        self.lines -= 1
        if self.lines < 0:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return super().write(text)

    def fileno(self) -> int:
        return self.fd


@pytest.mark.parametrize("reader_left", [True, False], ids=["stdout", "another-pipe"])
def test_a_closed_stdout_pipe_ends_quietly(reader_left, monkeypatch):
    """`sftkd bench --help | head`: once stdout's reader has left, no 'error: Broken pipe' and no
    traceback on stderr, exit 1 (as click ends on a broken pipe), and stdout's descriptor points at
    /dev/null, so that the flush at exit does not fail again. A broken pipe while stdout's reader
    is still there (another pipe) stays an error line. Device: none (help only)."""
    from sftkd_cli.cli.app import main

    read_end, write_end = os.pipe()
    try:
        if reader_left:
            os.close(read_end)
        stdout, stderr = _PipeClosedAfter(5, write_end), io.StringIO()
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "stderr", stderr)
        with pytest.raises(SystemExit) as ended:
            main(["bench", "--help"])
        if reader_left:
            assert (ended.value.code, stderr.getvalue()) == (1, "")
            assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
        else:
            assert (ended.value.code, stderr.getvalue()) == (2, "error: Broken pipe\n")
    finally:
        os.close(write_end)
        if not reader_left:
            os.close(read_end)


def test_the_entry_point_spares_the_ending_process_a_last_garbage_collection(monkeypatch):
    """main() freezes the collector once the command is done, also after an error: the process ends next."""
    import gc

    from sftkd_cli.cli.app import main

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    for argv, code in ((["--version"], 0), (["no-such-command"], 2)):
        with pytest.raises(SystemExit) as ended, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            main(argv)
        assert ended.value.code == code
    assert frozen == [True, True]


def test_python_m_sftkd_cli_version_imports_no_torch():
    code = "import runpy, sys; sys.argv = ['sftkd', '--version']\n" \
           "try:\n    runpy.run_module('sftkd_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n" \
           "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sftkd", __version__, "False"], done.stdout


def test_help_choices_agree_with_the_library():
    from sftkd_cli import choices
    from sftkd_cli.distill import CATALOG, METHODS
    from sftkd_cli.report import compare

    assert tuple(CATALOG) == tuple(METHODS)
    assert (compare.DEFAULT_METRICS, compare.PAPER_METRICS) == (choices.DEFAULT_METRICS, choices.PAPER_METRICS)


# --------------------------------------------------------------------------- Windows

UNIX_ONLY = {"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "posix", "crypt", "spwd", "syslog"}


def _import_time_unix_imports(source: str) -> list[str]:
    """Unix-only modules imported when the module is imported (outside functions and outside a
    `try` that handles the ImportError)."""
    found: list[str] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Try):
            for child in node.body:
                visit(child, True)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, guarded)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module.split(".")[0]]
        found.extend(f"line {node.lineno}: {n}" for n in names if n in UNIX_ONLY and not guarded)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(source), False)
    return found


def test_no_module_imports_a_unix_only_module_when_imported():
    bad = {str(path.relative_to(ROOT)): hits for path in sorted(PACKAGE.rglob("*.py"))
           if (hits := _import_time_unix_imports(path.read_text(encoding="utf-8")))}
    assert bad == {}, f"unimportable on Windows: {bad}"
    assert _import_time_unix_imports("import os\nimport fcntl\n") == ["line 2: fcntl"]  # the check itself


# --------------------------------------------------------------------------- metadata and wheel


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_licence_metadata_is_spdx_and_the_file_exists():
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Copyright (c) 2026 the sftkd authors" in text


def test_every_package_is_listed_for_the_wheel():
    setuptools = _pyproject()["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert set(setuptools["packages"]) == on_disk | {"sftkd_cli._recipes"}
    assert setuptools["package-dir"] == {"sftkd_cli._recipes": "recipes"}


def test_torch_is_a_lower_bound_not_a_pin():
    torch = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch")]
    assert len(torch) == 1 and torch[0].startswith("torch>=") and "," not in torch[0], torch


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the tree (setuptools >= 77 installed; nothing downloaded)."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (pip install -e '.[test]' brings a newer one)")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PACKAGE, src / "sftkd_cli", ignore=ignore)
    shutil.copytree(ROOT / "recipes", src / "recipes", ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel_file,) = out.glob("sftkd-*.whl")
    return wheel_file


def test_the_wheel_ships_every_recipe_and_the_licence(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {str(p.relative_to(ROOT / "recipes")) for p in (ROOT / "recipes").rglob("*") if p.is_file()}
    assert {f"sftkd_cli/_recipes/{r}" for r in recipes} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata


def test_an_installed_wheel_finds_plans_and_recipes_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sftkd_cli.recipes as r; print(r.find_plan('demo')); print(r.find_plan('recipes/demo.yaml')); "
            "print(r.find_plan('table1-acdc')); print(r.find_file('recipes/demo/teacher.yaml'))")
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "400"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    shipped = site / "sftkd_cli" / "_recipes"
    assert done.stdout.split() == [str(shipped / "demo.yaml"), str(shipped / "demo.yaml"),
                                   str(shipped / "plans" / "table1-acdc.yaml"), str(shipped / "demo" / "teacher.yaml")]
    # the whole command, as a user runs it after `pip install .`
    done = subprocess.run([sys.executable, "-m", "sftkd_cli", "reproduce", "demo", "--dry-run"],
                          capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"plan demo ({shipped / 'demo.yaml'})" in done.stdout, done.stdout
    assert f"recipes in {shipped / 'demo'}/" in done.stdout, done.stdout  # the line below the table
    assert "│ teacher.yaml" in done.stdout, done.stdout  # the stage's recipe, under the shipped recipes/demo


# --------------------------------------------------------------------------- lookup in a checkout


def test_reproduce_finds_a_shipped_plan_by_short_name_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for plan in ("demo", "recipes/demo.yaml", "smoke"):
        result = sftkd("reproduce", plan, "--dry-run")
        assert "teacher" in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # a dry run writes nothing


def test_an_unknown_plan_name_lists_the_shipped_plans(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = sftkd("reproduce", "no-such-plan", "--dry-run", ok=False)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no-such-plan: plan file not found"), result.output
    assert "demo" in lines[0] and "table1-acdc" in lines[0]


def test_a_training_command_finds_a_shipped_recipe_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = sftkd("train-teacher", "recipes/demo/teacher.yaml", "--print-recipe")
    assert "D5C5" in result.output


def test_a_local_file_wins_over_the_shipped_one(tmp_path, monkeypatch):
    from sftkd_cli.recipes import find_file, find_plan

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "recipes" / "demo.yaml"
    mine.parent.mkdir()
    mine.write_text("plan: 1\n")
    assert find_plan("recipes/demo.yaml") == Path("recipes/demo.yaml")
    assert find_file("recipes/demo/teacher.yaml").is_absolute()  # not here: the shipped one
    assert find_file("../outside.yaml") == Path("../outside.yaml")  # never searched in the shipped folder
