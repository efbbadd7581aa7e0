"""Hostile or unlucky recipe, plan and option input ends in one `error:` line, quickly: YAML alias
bombs and deep nesting, bad learning rates and devices, run names that are not one folder name,
huge model names, braces and `~` in plan paths, overlapping runs and data folders. Typed options
reach the recipe as typed, a command-line typo is blamed on the command line, and `reproduce`
accepts an up-to-date prepared dataset when the source package (nilearn) is missing.

Every test goes through the CLI. CPU-only unless a test says otherwise.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cli_helpers import sftkd

ROOT = Path(__file__).resolve().parents[1]
TEACHER_RECIPE = ROOT / "recipes" / "demo" / "teacher.yaml"
TINY = ["train.epochs=1", "train.batch_size=2", "train.threads=1", "train.max_steps_per_epoch=2",
        "data.max_val_slices=1", "eval.latency_slices=1"]


def one_error_line(*args: object, names: tuple[str, ...] = (), seconds: float = 30.0) -> str:
    """Run the CLI: exit 2 with exactly one line `error: ...` naming each of `names`, within `seconds`."""
    start = time.perf_counter()
    result = sftkd(*args, ok=False)
    elapsed = time.perf_counter() - start
    output = result.output
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output[:2000]}{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), output[:2000]
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    assert elapsed < seconds, f"{elapsed:.1f} s: {lines[0]}"
    return lines[0]


def train(data: Path, runs: Path, *extra: object) -> list[object]:
    """A tiny D2C2 train-teacher command line."""
    return ["train-teacher", "--model", "D2C2", "--data", data, "--runs-dir", runs, *TINY, *extra]


def bomb(levels: int = 6) -> str:
    """A YAML flow mapping whose aliases expand to 9**levels items (531,441 for 6)."""
    parts = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        parts.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "{" + ", ".join(parts) + "}"


def plan_text(data: Path, runs: Path, extra: str = "", stages: str = "stages:\n  teacher: {}\n") -> str:
    return (f"plan: 1\ndata:\n  source: prepared\n  out: {data}\nruns_dir: {runs}\n"
            "base:\n  train.epochs: 1\n  train.batch_size: 2\n  train.threads: 1\n  train.max_steps_per_epoch: 2\n"
            "  data.max_val_slices: 1\n  eval.latency_slices: 1\n  sft.teacher: D2C2\n  sft.student: D2C2\n"
            + extra + stages)


# ----------------------------------------------------------------------------- YAML bombs and depth


def test_alias_bomb_in_a_recipe_is_refused(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(f"distill:\n  options: {bomb()}\n")
    one_error_line("train-teacher", recipe, "--print-recipe", names=(str(recipe), "alias", "line 2"), seconds=5)


def test_alias_bomb_in_a_plan_base_is_refused(tmp_path, tiny_dataset):
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(tiny_dataset, tmp_path / "runs", stages="").replace(
        "base:\n", f"base:\n  distill.options: {bomb()}\n"))
    one_error_line("reproduce", plan, "--dry-run", names=(str(plan), "alias"), seconds=5)
    assert not (tmp_path / "runs").exists()


def test_alias_bomb_in_an_override_is_refused(tmp_path):
    one_error_line("train-teacher", f"distill.options={bomb()}", "--print-recipe",
                   names=("override distill.options=", "alias"), seconds=5)


@pytest.mark.parametrize("where", ["recipe", "plan", "override"])
def test_deep_nesting_is_one_line(tmp_path, tiny_dataset, where):
    deep = "[" * 50_000 + "]" * 50_000
    if where == "recipe":
        path = tmp_path / "deep.yaml"
        path.write_text(f"distill:\n  options: {{a: {deep}}}\n")
        one_error_line("train-teacher", path, "--print-recipe", names=(str(path), "nested deeper than"), seconds=10)
    elif where == "plan":
        path = tmp_path / "plan.yaml"
        path.write_text(plan_text(tiny_dataset, tmp_path / "runs") + f"figures: {{box: {deep}}}\n")
        one_error_line("reproduce", path, "--dry-run", names=(str(path), "nested deeper than"), seconds=10)
    else:
        one_error_line("train-teacher", f"distill.options={{a: {deep}}}", "--print-recipe",
                       names=("override distill.options=", "nested deeper than"), seconds=10)


def test_yaml_values_python_cannot_build_are_one_line(tmp_path):
    recipe = tmp_path / "date.yaml"
    recipe.write_text("train:\n  seed: 2024-13-45\n")  # a date YAML reads, with month 13
    one_error_line("train-teacher", recipe, "--print-recipe", names=(str(recipe), "not valid YAML"))
    one_error_line("train-teacher", "train.epochs=" + "1" * 5000, "--print-recipe", names=("train.epochs", "expected an integer"))
    printed = sftkd("train-teacher", "run.name=2024-13-45", "--print-recipe").output
    assert yaml.safe_load(printed)["run"]["name"] == "2024-13-45"


# ----------------------------------------------------------------------------- lr and device


@pytest.mark.parametrize("lr", ["1e300", ".nan", ".inf", "-1", "0"])
def test_bad_learning_rate_is_one_line(tmp_path, tiny_dataset, lr):
    one_error_line(*train(tiny_dataset, tmp_path / "runs", f"train.lr={lr}"), names=("train.lr",))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("device", ["meta", "garbage", "cuda:x", "cuda:01", "cpu:0", "mps"])
def test_bad_device_is_one_line(tmp_path, tiny_dataset, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("mps is available here")
    one_error_line(*train(tiny_dataset, tmp_path / "runs", "--device", device), names=("train.device", device))
    assert not (tmp_path / "runs").exists()


def test_evaluate_refuses_a_bad_device_in_one_line(tmp_path, tiny_dataset):
    sftkd(*train(tiny_dataset, tmp_path / "runs", "--name", "r", "--device", "cpu"))
    for device in ("meta", "garbage", "cuda:01"):
        one_error_line("evaluate", tmp_path / "runs" / "r", "--device", device, names=("--device", device))
    assert not (tmp_path / "runs" / "r" / "metrics.json").exists()


def test_cuda_on_a_machine_without_it_names_the_setting(tmp_path, tiny_dataset):
    """Device: none seen (an unmarked test: torch.cuda.is_available() reads False here, also on a GPU
    machine). The recipe's train.device or the option, whichever said cuda."""
    one_error_line(*train(tiny_dataset, tmp_path / "runs", "train.device=cuda"),
                   names=("train.device 'cuda'", "CUDA is not available"))
    assert not (tmp_path / "runs").exists()
    sftkd(*train(tiny_dataset, tmp_path / "runs", "--name", "r", "--device", "cpu"))
    one_error_line("evaluate", tmp_path / "runs" / "r", "--device", "cuda", names=("--device 'cuda'", "CUDA is not available"))


@pytest.mark.cuda  # an ordinal past the machine's GPUs
def test_cuda_ordinal_past_the_gpus_is_one_line(tmp_path, tiny_dataset):
    device = f"cuda:{torch.cuda.device_count()}"
    one_error_line(*train(tiny_dataset, tmp_path / "runs", "--device", device), names=("train.device", device))


# ----------------------------------------------------------------------------- run names and model names


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\\b", "x" * 201, ".hidden", "-x"])
def test_run_name_must_be_one_folder_name(tmp_path, tiny_dataset, name):
    runs = tmp_path / "runs"
    (tmp_path / "keep.txt").write_text("user data")
    one_error_line(*train(tiny_dataset, runs, "--name", name), names=("--name",))
    if name:  # `run.name=` (empty) means "derive the name", as when it is not given
        one_error_line(*train(tiny_dataset, runs, f"run.name={name}"), names=("run.name",))
    assert not runs.exists() and (tmp_path / "keep.txt").read_text() == "user data"


def test_run_name_with_nul_is_refused(tmp_path, tiny_dataset):
    one_error_line(*train(tiny_dataset, tmp_path / "runs", "run.name=a\0b"), names=("run.name", "NUL"))


def test_a_200_character_run_name_is_fine(tmp_path, tiny_dataset):
    sftkd(*train(tiny_dataset, tmp_path / "runs", "--name", "x" * 200))
    assert (tmp_path / "runs" / ("x" * 200) / "checkpoints" / "best.pt").is_file()


def test_huge_model_names_are_refused_quickly(tmp_path, tiny_dataset):
    args = ["train-teacher", "--data", tiny_dataset, "--runs-dir", tmp_path / "runs", *TINY]
    one_error_line(*args, "--model", "D99999999C99999999", names=("D99999999C99999999", "at most 64"), seconds=10)
    one_error_line(*args, "--model", "D5C65", names=("65 cascades", "at most 64"))
    one_error_line(*args, "--model", "D65C5", names=("65 conv layers", "at most 64"))
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(tiny_dataset, tmp_path / "runs").replace("sft.teacher: D2C2", "sft.teacher: D3C99999999"))
    one_error_line("reproduce", plan, "--dry-run", names=("D3C99999999", "at most 64"), seconds=10)


# ----------------------------------------------------------------------------- plan paths


def test_braces_in_a_plan_recipe_path_are_literal(tmp_path, tiny_dataset):
    odd = tmp_path / "teacher {x} {0}.yaml"
    odd.write_text("train:\n  epochs: 1\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(tiny_dataset, tmp_path / "runs", stages=f"stages:\n  teacher: {{recipe: '{odd}'}}\n"))
    result = sftkd("reproduce", plan, "--dry-run")
    assert "Traceback" not in result.output
    missing = tmp_path / "plan2.yaml"
    missing.write_text(plan_text(tiny_dataset, tmp_path / "runs", stages="stages:\n  teacher: {recipe: 'r{oops}.yaml'}\n"))
    one_error_line("reproduce", missing, "--dry-run", names=("r{oops}.yaml", "not found"))


def test_tilde_means_home_in_plans_and_options(tmp_path, tiny_dataset, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    shutil.copytree(tiny_dataset, home / "data")
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    sftkd(*train(Path("~/data"), Path("~/cli-runs"), "--name", "t"))
    assert (home / "cli-runs" / "t" / "checkpoints" / "best.pt").is_file()
    plan = work / "plan.yaml"
    plan.write_text(plan_text(Path("~/data"), Path("~/runs")))
    sftkd("reproduce", plan, "--only", "teacher")
    assert (home / "runs" / "teacher" / "checkpoints" / "best.pt").is_file()
    assert not (work / "~").exists()


@pytest.mark.parametrize("runs", ["data", "data/runs", "."])
def test_reproduce_refuses_overlapping_runs_and_data(tmp_path, tiny_dataset, monkeypatch, runs):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_dataset, tmp_path / "data")
    plan = tmp_path / "plan.yaml"
    plan.write_text(plan_text(Path("data"), Path(runs)))
    one_error_line("reproduce", plan, "--dry-run", names=("runs_dir", "data.out"))
    one_error_line("reproduce", plan, names=("runs_dir", "data.out"))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(p.name for p in tiny_dataset.iterdir())
    other = tmp_path / "other.yaml"
    other.write_text(plan_text(Path("data"), Path("elsewhere")))
    one_error_line("reproduce", other, "--runs-dir", "data/x", "--dry-run", names=("--runs-dir", "data.out"))


# ----------------------------------------------------------------------------- typed options, blame


@pytest.mark.parametrize("name", ["0x10", "010", "yes", "a: b", "1e3", "null", "[x]"])
def test_option_values_reach_the_recipe_as_typed(tmp_path, name):
    data = f"d: x #y/{name}"
    printed = sftkd("train-teacher", "--name", name, "--data", data, "--print-recipe").output
    recipe = yaml.safe_load(printed)
    assert recipe["run"]["name"] == name and recipe["data"]["path"] == data


def test_plain_overrides_keep_yaml_typing():
    recipe = yaml.safe_load(sftkd("train-teacher", "train.epochs=1_6", "train.lr=1e-4", "train.lr_gamma=.5",
                                  "train.deterministic=yes", "--print-recipe").output)
    assert recipe["train"]["epochs"] == 16 and recipe["train"]["lr"] == 1e-4 and recipe["train"]["lr_gamma"] == 0.5
    assert recipe["train"]["deterministic"] is True


@pytest.mark.parametrize("text", ["042", "010", "0x10", "0o17", "0b101", "1:30", "!!int 010"])
def test_numbers_are_decimal_in_overrides_and_recipe_files(tmp_path, text):
    """YAML 1.1 reads train.seed=042 as 34, 0x10 as 16, 1:30 as 90: refused, never another value."""
    hint = () if text.startswith("!!") else ("numbers are decimal",)
    one_error_line("train-teacher", f"train.seed={text}", "--print-recipe", names=("train.seed", "expected an integer", *hint))
    recipe = tmp_path / "seed.yaml"
    recipe.write_text(f"train:\n  seed: {text}\n")
    one_error_line("train-teacher", recipe, "--print-recipe", names=(str(recipe),))


@pytest.mark.parametrize("text", ["1:30.5", "0x1", "!!float 1:30.5"])
def test_base_60_and_hex_floats_are_refused(text):
    one_error_line("train-teacher", f"train.lr_gamma={text}", "--print-recipe", names=("train.lr_gamma", "expected a number"))


@pytest.mark.parametrize("name", ["0x10", "010", "yes", "12:30", "1_000", "2024-01-01", "null"])
def test_text_overrides_keep_the_text_as_typed(name):
    """YAML would read run.name=010 as 8 and yes as true: names and paths are taken as typed."""
    printed = sftkd("train-teacher", f"run.name={name}", f"data.path={name}", f"distill.teacher_run='{name}'",
                    "train.channels_last=True", "--print-recipe").output
    recipe = yaml.safe_load(printed)
    assert recipe["run"]["name"] == recipe["data"]["path"] == recipe["distill"]["teacher_run"] == name
    assert recipe["train"]["channels_last"] == "true"


@pytest.mark.parametrize("name", ["010", "1.50", "no", "On", "0x10", "12:30", "1_000", "1.0e+3", "2024-01-01"])
def test_text_keys_in_a_recipe_file_keep_the_text_as_written(tmp_path, name):
    """As the same overrides: YAML would read run.name: 1.50 as 1.5 and data.val_split: no as false."""
    recipe = tmp_path / "text.yaml"
    recipe.write_text(f"run:\n  name: {name}\ndata:\n  val_split: {name}\n  path: {name}\n")
    from_file = yaml.safe_load(sftkd("train-teacher", recipe, "--print-recipe").output)
    assert from_file["run"]["name"] == from_file["data"]["val_split"] == from_file["data"]["path"] == name
    overrides = [f"run.name={name}", f"data.val_split={name}", f"data.path={name}"]
    assert from_file == yaml.safe_load(sftkd("train-teacher", *overrides, "--print-recipe").output)


@pytest.mark.parametrize("word", ["on", "yes", "True"])
def test_a_refused_word_is_shown_as_typed(tmp_path, word):
    """train.amp=on used to be refused as "got 'true'", a value nobody typed."""
    recipe = tmp_path / "amp.yaml"
    recipe.write_text(f"train:\n  amp: {word}\n")
    for args in ([f"train.amp={word}"], [recipe], ["--amp", word]):
        one_error_line("train-teacher", *args, "--print-recipe", names=("train.amp", f"got '{word}'"))


def test_word_keys_take_yaml_words_as_their_own(tmp_path):
    recipe = tmp_path / "words.yaml"
    recipe.write_text("train:\n  amp: off\n  cuda_graphs: on\n  channels_last: yes\nsft:\n  batched: No\n")
    printed = yaml.safe_load(sftkd("train-teacher", recipe, "--print-recipe").output)
    assert (printed["train"]["amp"], printed["train"]["cuda_graphs"]) == ("off", "on")
    assert (printed["train"]["channels_last"], printed["sft"]["batched"]) == ("true", "false")


def test_a_recipe_path_holding_an_equals_sign_is_the_recipe(tmp_path, monkeypatch):
    """Run names may hold `=` (runs/lr=1e-3/recipe.yaml): such a path is the recipe, not an override."""
    monkeypatch.chdir(tmp_path)
    run = Path("runs", "lr=1e-3")
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("train:\n  epochs: 3\n")
    Path("lr=1e-4.yaml").write_text("train:\n  epochs: 4\n")
    for path, epochs in ((f"{run}/recipe.yaml", 3), ("lr=1e-4.yaml", 4), (f"{tmp_path}/{run}/recipe.yaml", 3)):
        printed = yaml.safe_load(sftkd("train-teacher", path, "run.name=x.yaml", "--print-recipe").output)
        assert printed["train"]["epochs"] == epochs and printed["run"]["name"] == "x.yaml"
    one_error_line("train-teacher", "runs/lr=9/recipe.yaml", "--print-recipe", names=("runs/lr=9/recipe.yaml", "not found"))


def test_an_option_and_an_override_that_disagree_are_refused():
    """--epochs 3 train.epochs=5 trained 3 epochs without a word; now one of them must go."""
    one_error_line("train-teacher", "--epochs", "3", "train.epochs=5", "--print-recipe",
                   names=("--epochs (3)", "override train.epochs=5", "give train.epochs once"))
    one_error_line("distill", "--teacher", "runs/a", "distill.teacher_run=runs/b", "--print-recipe",
                   names=("runs/a", "override distill.teacher_run=runs/b"))
    agreeing = ["--epochs", "3", "train.epochs=3", "--acc", "4", "data.acceleration=4.0", "--amp", "off", "train.amp=no"]
    printed = yaml.safe_load(sftkd("train-teacher", *agreeing, "--print-recipe").output)
    assert (printed["train"]["epochs"], printed["data"]["acceleration"], printed["train"]["amp"]) == (3, 4.0, "off")
    same_meaning = [("train-teacher", "--data", "data/demo", "data.path=./data/demo/"),
                    ("train-teacher", "--runs-dir", os.path.abspath("runs"), "run.dir=runs"),
                    ("train-teacher", "--model", "d3c5", "model.name=D3C5"),
                    ("distill", "--method", "AT", "distill.method=at")]
    for args in same_meaning:  # one value spelt two ways is not a disagreement
        assert sftkd(*args, "--print-recipe").exit_code == 0, args
    for args, key in ((("distill", "--init-from", "random", "distill.init=./random"), "distill.init"),
                      (("train-teacher", "--device", "cpu", "train.device=./cpu"), "train.device")):
        one_error_line(*args, "--print-recipe", names=(f"give {key} once",))  # a word is not a folder


def test_an_override_given_twice_with_two_values_is_refused():
    """model.channels=4 model.channels=8 took the last silently; one value given twice is fine."""
    one_error_line("train-teacher", "model.channels=4", "model.channels=8", "--print-recipe",
                   names=("override model.channels=4", "override model.channels=8", "give model.channels once"))
    printed = yaml.safe_load(sftkd("train-teacher", "model.channels=8", "model.channels=8", "data.path=data/demo",
                                   "data.path=./data/demo/", "--print-recipe").output)
    assert printed["model"]["channels"] == 8


def test_load_recipe_refuses_an_override_given_twice_with_two_values():
    """The rule is the library's: load_recipe took the last silently; typed settings still layer (later wins)."""
    from sftkd_cli.config import Setting, load_recipe
    from sftkd_cli.errors import SftkdError

    with pytest.raises(SftkdError, match=r"^override train.epochs=3 and override train.epochs=4 disagree; give train.epochs once$"):
        load_recipe(None, ["train.epochs=3", "train.epochs=4"])
    assert load_recipe(None, ["model.name=d3c5", "model.name=D3C5", "data.path=data/demo", "data.path=./data/demo/"])
    recipe = load_recipe(None, ["train.epochs=3"], [Setting("train.epochs", 5, "a"), Setting("train.epochs", 6, "b")])
    assert recipe.train.epochs == 6


@pytest.mark.parametrize("text, key", [("train:\n  epochs: 3\ntrain:\n  lr: 0.5\n", "train"),
                                       ("train:\n  epochs: 3\n  epochs: 4\n", "epochs")])
def test_a_key_given_twice_in_a_recipe_is_refused(tmp_path, text, key):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text(text)
    one_error_line("train-teacher", recipe, "--print-recipe", names=(str(recipe), f"repeats the key '{key}'", "line 3"))


def test_a_command_line_typo_is_blamed_on_the_command_line(tmp_path):
    line = one_error_line("train-teacher", TEACHER_RECIPE, "train.epoch=5", "--print-recipe",
                          names=("override train.epoch=5", "unknown key train.epoch", "did you mean train.epochs"))
    assert "teacher.yaml" not in line
    line = one_error_line("train-teacher", "train.lr=fast", "--print-recipe", names=("override train.lr=fast", "expected a number"))
    assert "defaults" not in line
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("train:\n  epoch: 5\n")
    one_error_line("train-teacher", recipe, "train.epochs=2", "--print-recipe", names=(str(recipe), "unknown key train.epoch"))


# ----------------------------------------------------------------------------- reproduce without nilearn


def test_reproduce_accepts_prepared_demo_data_without_nilearn(tmp_path, nifti_writer, monkeypatch):
    from sftkd_cli.data.sources.demo import ICBM152_FILE

    package = tmp_path / "site" / "nilearn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    nifti_writer.write(package.joinpath(*ICBM152_FILE), nifti_writer.phantom((28, 24, 20), seed=1))
    plan = tmp_path / "plan.yaml"
    options = "{size: [16, 16], downsample: 1, min_slice_mean: 0.0, slab: 2, gap: 1}"
    plan.write_text(f"plan: 1\ndata:\n  source: demo\n  out: {tmp_path / 'data'}\n  options: {options}\n"
                    f"runs_dir: {tmp_path / 'runs'}\n")
    with monkeypatch.context() as patch:  # nilearn installed (a stand-in holding the template)
        patch.syspath_prepend(str(tmp_path / "site"))
        importlib.invalidate_caches()
        first = sftkd("reproduce", plan, "--only", "data")
    assert "prepared in" in first.output
    manifest = (tmp_path / "data" / "manifest.json").read_bytes()

    monkeypatch.setitem(sys.modules, "nilearn", None)  # nilearn not installed
    importlib.invalidate_caches()
    again = sftkd("reproduce", plan, "--only", "data")
    assert "up to date" in again.output and "failed" not in again.output
    assert (tmp_path / "data" / "manifest.json").read_bytes() == manifest

    changed = tmp_path / "changed.yaml"  # other options: it must be prepared again, which needs nilearn
    changed.write_text(plan.read_text().replace("gap: 1", "gap: 2"))
    result = sftkd("reproduce", changed, "--only", "data", ok=False)
    assert result.exit_code == 2 and "nilearn package is not installed" in result.output


@pytest.mark.parametrize("null", ["null", "~", "Null"])
def test_a_null_text_key_in_a_recipe_file_is_refused_not_read_as_a_name(tmp_path, null):
    """`data.path: ~` must not become the home folder, nor `run.name: null` a run called "null"."""
    recipe = tmp_path / "null.yaml"
    for section, key in (("run", "name"), ("data", "path")):
        recipe.write_text(f"{section}:\n  {key}: {null}\n")
        one_error_line("train-teacher", recipe, "--print-recipe", names=(f"{section}.{key}", "expected text, got an empty value"))
