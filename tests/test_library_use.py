"""sftkd used as a library from Python (a notebook): the caller's process state is respected.

CPU only (the tiny dataset, one step per run).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from sftkd_cli.bench.runner import run_bench
from sftkd_cli.checkpoints import load_model
from sftkd_cli.config import Setting, load_recipe
from sftkd_cli.distill.methods import build_method
from sftkd_cli.evaluate import evaluate_run
from sftkd_cli.export import export_run
from sftkd_cli.training.kd import distill
from sftkd_cli.training.supervised import train_supervised

QUIET = Console(file=io.StringIO())


def _recipe(data: Path, runs: Path, name: str, *overrides: str, settings: tuple[Setting, ...] = ()):
    return load_recipe(None, [f"data.path={data}", "model.channels=4", "sft.teacher=D2C2", "sft.student=D2C2",
                              "train.epochs=1", "train.max_steps_per_epoch=1", "train.device=cpu",
                              f"run.dir={runs}", f"run.name={name}", *overrides], settings)


@pytest.fixture
def float64_default():
    """torch's default dtype set to float64, as many scientific notebooks do; put back afterwards."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def test_every_entry_point_computes_in_float32_under_a_float64_default_dtype(tiny_dataset, tmp_path, float64_default):
    """Models and KD adapters are float32 whatever torch's default dtype (the data are float32):
    before, a float64 default failed with "Input type (float) and bias type (double)"."""
    runs = tmp_path / "runs"
    teacher, _ = train_supervised(_recipe(tiny_dataset, runs, "t", "model.name=D2C2"), console=QUIET)
    student, _ = distill(_recipe(tiny_dataset, runs, "kd", "model.name=D2C2", f"distill.teacher_run={teacher.path}",
                                 "distill.method=fitnets"), console=QUIET)
    model, _ = load_model(student.path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    for method in ("fitnets", "ft"):  # adapters with weights (the run's widths are equal: FitNets' is empty)
        assert {p.dtype for p in build_method(method, [4], [8]).parameters()} == {torch.float32}, method
    assert np.isfinite(evaluate_run(student.path, device="cpu", write_recon=False)["metrics"]["PSNR"]["mean"])
    assert export_run(teacher.path, "torchscript").max_abs_diff < 1e-4
    result = run_bench(size=16, batch=1, repeats=1, warmup=0, which=["kd"], methods=["fitnets"],
                       roof_size=16, roof_batch=1)
    assert result.rows and result.complete


def test_loading_a_model_and_benching_leave_the_callers_random_stream_alone(tiny_dataset, tmp_path):
    """A model rebuilt from a checkpoint draws fresh weights before loading them; the bench seeds its
    models and its epoch part trains a seeded run: none may move the caller's Python, NumPy or torch
    generators."""
    import random

    run, _ = train_supervised(_recipe(tiny_dataset, tmp_path / "runs", "t", "model.name=D2C2"), console=QUIET)

    def seeded() -> None:
        random.seed(1234), np.random.seed(1234), torch.manual_seed(1234)

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seeded()
    expected = draws()
    seeded()
    load_model(run.path)
    run_bench(size=16, batch=1, repeats=1, warmup=0, which=["infer", "epoch"], roof_size=16, roof_batch=1)
    assert draws() == expected


def test_a_recipe_setting_takes_a_path(tiny_dataset, tmp_path):
    """`Setting("data.path", Path(...))` from Python is the path's text, as on the command line."""
    recipe = _recipe(tiny_dataset, tmp_path, "t", settings=(Setting("data.path", tiny_dataset, "python"),))
    assert recipe.data.path == str(tiny_dataset)


@pytest.mark.nilearn  # the demo template ships in nilearn (optional: sftkd[demo])
def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    """CPU: the README's "From Python" lines (one training step instead of two epochs, 48 x 48
    slices): the reconstruction of a numpy slice is the one evaluate scored."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    code = readme.split("### From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert code.count('"train.epochs=2"') == 1 and code.count('"recipes/demo/student.yaml"') == 1
    assert code.count("demo.prepare_options({})") == 1
    code = code.replace('"train.epochs=2"', '"train.epochs=1", "train.max_steps_per_epoch=1"')
    code = code.replace("demo.prepare_options({})", "demo.prepare_options({'size': (48, 48), 'downsample': 4})")
    # "recipes/demo/student.yaml" as written: load_recipe finds the shipped recipe from any folder
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(code, "README.md", "exec"), names)
    assert names["fit"].best_epoch == 1 and np.isfinite(names["scores"]["metrics"]["PSNR"]["mean"])
    import h5py

    with h5py.File(tmp_path / "runs" / "py-student" / "recon.h5") as f:
        scored = f["icbm152_z027-034"][3]
    np.testing.assert_allclose(names["recon"], scored, atol=1e-5)


@pytest.mark.parametrize("kind", ["sft", "distill"])
def test_the_library_refuses_loss_weights_that_train_nothing(tiny_dataset, tmp_path, kind):
    """train_sft and distill check their loss weights as the commands and plans do."""
    from sftkd_cli.errors import SftkdError
    from sftkd_cli.training.sft import train_sft

    if kind == "sft":
        recipe = _recipe(tiny_dataset, tmp_path, "s", "sft.w_teacher=0", "sft.w_student=0", "sft.w_imit=0")
        run = lambda: train_sft(recipe, console=QUIET)  # noqa: E731
    else:
        recipe = _recipe(tiny_dataset, tmp_path, "kd", "model.name=D2C2", f"distill.teacher_run={tmp_path}",
                         "distill.w_rec=0", "distill.w_kd=0", "distill.w_imit=0")
        run = lambda: distill(recipe, console=QUIET)  # noqa: E731
    with pytest.raises(SftkdError, match="got all 0"):
        run()
    assert not (tmp_path / ("s" if kind == "sft" else "kd")).exists()


def test_load_recipe_and_load_plan_find_the_shipped_files_from_any_folder(tmp_path, monkeypatch):
    """The README's `load_recipe("recipes/demo/student.yaml")` worked only from the repository root
    (the commands looked the shipped copy up, the library did not); a file at the path still wins."""
    from sftkd_cli.reproduce import load_plan

    monkeypatch.chdir(tmp_path)
    assert load_recipe("recipes/demo/student.yaml").model.name == load_recipe("demo/student.yaml").model.name != ""
    assert load_plan("demo").name == load_plan("recipes/demo.yaml").name
    own = tmp_path / "recipes" / "demo" / "student.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("model:\n  name: D2C2\n")
    assert load_recipe("recipes/demo/student.yaml").model.name == "D2C2"


def test_the_library_takes_the_words_the_commands_take_in_any_case(tiny_dataset, tmp_path):
    """`evaluate --amp BF16 --convention PAPER --checkpoint BEST --device CPU` and `export -f TorchScript`
    run, while the library refused the same words naming the command's flags."""
    from sftkd_cli.checkpoints import resolve_checkpoint

    teacher, _ = train_supervised(_recipe(tiny_dataset, tmp_path / "runs", "t", "model.name=D2C2"), console=QUIET)
    assert resolve_checkpoint(teacher.path, "BEST") == teacher.path / "checkpoints" / "best.pt"
    scores = evaluate_run(teacher.path, device="CPU", amp="OFF", convention="PAPER", checkpoint="BEST", write_recon=False)
    assert scores["checkpoint"] == "best" and scores["amp"] == "off" and "PSNR" in scores["metrics"]
    assert export_run(teacher.path, "TorchScript", checkpoint="LAST").path.suffix == ".ts"


@pytest.mark.parametrize("threads", [2.5, "2", True])
def test_evaluate_threads_must_be_a_whole_number(threads):
    """threads=2.5 ended in torch's RuntimeError, '2' in a TypeError; True was taken as 1."""
    from sftkd_cli.errors import SftkdError

    with pytest.raises(SftkdError, match=r"^--threads .*: expected a whole number from 0 \(torch default\) to"):
        evaluate_run("no-such-run", threads=threads)
    with pytest.raises(SftkdError, match=r"no-such-run") as refused:  # numpy's whole numbers pass: the run is next
        evaluate_run("no-such-run", threads=np.int64(2))
    assert "--threads" not in str(refused.value)


def test_compare_library_checks_refuse_in_one_line():
    """output_format('bogus', x.csv) raised StopIteration; tabulate(metrics='PSNR') read P, S, N, R;
    run_bench(roof_batch=-3) ended in torch's negative-dimension error."""
    from sftkd_cli.errors import SftkdError
    from sftkd_cli.report.compare import resolve_metrics
    from sftkd_cli.report.formats import output_format

    assert output_format("CSV", Path("x.csv")) == "csv"
    with pytest.raises(SftkdError, match=r"^--format 'bogus': expected one of table, markdown, csv, latex, json$"):
        output_format("bogus", Path("x.csv"))
    with pytest.raises(SftkdError, match=r"^--metrics 'PSNR': expected a list of names"):
        resolve_metrics("PSNR", [])
    with pytest.raises(SftkdError, match=r"^bench --roof-batch -3: expected an integer from 1 to 1024$"):
        run_bench(which=["infer"], roof_batch=-3, size=16, roof_size=16, repeats=1, warmup=0)


def test_a_kd_method_comparing_slices_is_refused_one_training_slice_before_the_run_is_made(tiny_dataset, tmp_path):
    """SP with one training slice per process has no KD term in any step: refused, and no run folder left."""
    from sftkd_cli.errors import SftkdError

    runs = tmp_path / "runs"
    teacher, _ = train_supervised(_recipe(tiny_dataset, runs, "t", "model.name=D2C2"), console=QUIET)
    recipe = _recipe(tiny_dataset, runs, "kd", "model.name=D2C2", f"distill.teacher_run={teacher.path}",
                     "distill.method=sp", "data.max_train_slices=1", "train.batch_size=2")
    with pytest.raises(SftkdError, match=r"^distill.method sp: SP compares the slices of a batch .* trains on 1 slice"):
        distill(recipe, console=QUIET)
    assert not (runs / "kd").exists()
