"""`sftkd evaluate --batch-size N`: the slices per forward pass change speed, not the scores (CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cli_helpers import sftkd
from sftkd_cli.config import load_recipe
from sftkd_cli.errors import SftkdError
from sftkd_cli.evaluate import eval_batch_size, evaluate_run
from sftkd_cli.runtime import MIN_INFERENCE_BATCH

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    sftkd("train-teacher", "--model", "D2C2", "--name", "t", f"data.path={tiny_dataset}", f"run.dir={runs}",
          "train.epochs=1", "train.batch_size=3", "train.threads=1", "train.device=cpu", "eval.latency_slices=0",
          "train.channels_last=false")  # one layout for every batch size (auto may pick per batch shape)
    return runs / "t"


def _scores(run, batch_size: int) -> tuple[dict, list[dict[str, str]]]:
    """metrics.json and the per_slice.csv rows of the train split (9 slices in 3 volumes)."""
    done: list[int] = []  # slices done after each batch
    metrics = evaluate_run(run, split="train", device="cpu", write_recon=False, batch_size=batch_size,
                           progress=lambda count, total: done.append(count))
    assert metrics["batch_size"] == batch_size and done == [*range(batch_size, 9, batch_size), 9]
    with open(Path(metrics["output_dir"]) / "per_slice.csv", newline="") as handle:
        return metrics, list(csv.DictReader(handle))


def test_batch_1_and_batch_5_score_the_same(run):
    """Equal up to float32 rounding: oneDNN's convolutions block a batch of 1 and of 5 differently
    (measured on the CPU: reconstructions within 2e-7, PSNR within 2e-8 dB; a std over slices of
    nearly equal values, such as SSIM's, moves by up to ~2e-8 absolute, a few 1e-6 relative)."""
    (one, one_rows), (five, five_rows) = _scores(run, 1), _scores(run, 5)  # 5: crosses volumes, short last batch
    assert one["dataset"] == five["dataset"] and one["dataset"]["slices"] == 9
    assert one["zero_filled"] == five["zero_filled"]  # the input: no model, nothing to round
    for name, stats in one["metrics"].items():
        for key, value in stats.items():
            assert value == pytest.approx(five["metrics"][name][key], rel=1e-6, abs=1e-7), (name, key)
    assert [(r["volume"], r["slice"]) for r in one_rows] == [(r["volume"], r["slice"]) for r in five_rows]
    for a, b in zip(one_rows, five_rows):
        for column in a.keys() - {"volume", "slice"}:
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-6, abs=1e-9), column


def test_the_default_is_the_runs_batch_size_but_at_least_8(run):
    assert MIN_INFERENCE_BATCH == 8
    assert eval_batch_size(load_recipe(None, ["train.batch_size=3"])) == 8
    assert eval_batch_size(load_recipe(None, ["train.batch_size=32"])) == 32
    assert eval_batch_size(load_recipe(None, ["train.batch_size=32"]), 2) == 2
    sftkd("evaluate", run, "--device", "cpu", "--no-recon")
    assert json.loads((run / "metrics.json").read_text())["batch_size"] == 8  # the run trained with batch 3


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_bad_batch_size_is_one_line(run, value):
    before = (run / "metrics.json").read_bytes() if (run / "metrics.json").exists() else None
    result = sftkd("evaluate", run, "--device", "cpu", "--batch-size", value, ok=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--batch-size {value}: expected a number of slices, 1 or more" in " ".join(result.output.split())
    after = (run / "metrics.json").read_bytes() if (run / "metrics.json").exists() else None
    assert before == after  # refused before any work
    with pytest.raises(SftkdError, match="--batch-size 0"):
        evaluate_run(run, device="cpu", batch_size=0)


def test_cuda_graphs_stay_off_on_the_cpu(run):
    from sftkd_cli.training.graphs import graphed_reconstructor

    model = torch.nn.Identity()
    for setting in ("auto", "on", "off"):  # a run trained with graphs on a GPU still evaluates on the CPU
        assert graphed_reconstructor(model, torch.device("cpu"), "off", setting) == (model, False)
    sftkd("evaluate", run, "--device", "cpu", "--no-recon")
    assert json.loads((run / "metrics.json").read_text())["cuda_graphs"] is False


def test_a_dataset_not_where_the_recipe_says_names_the_recipe_and_data(run, tiny_dataset, tmp_path, monkeypatch):
    """data.path as written when training (relative to that folder, or moved since): one line
    naming the run's recipe and --data, which evaluates on the dataset where it is now."""
    import dataclasses
    import shutil

    from sftkd_cli.config import dump_recipe

    copy = shutil.copytree(run, tmp_path / "moved", ignore=shutil.ignore_patterns(".lock", "eval-*"))
    recipe = load_recipe(copy / "recipe.yaml")
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, path="data/tiny"))
    (copy / "recipe.yaml").write_text(dump_recipe(recipe))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SftkdError, match=r"moved/recipe.yaml: data.path 'data/tiny' is not a folder \(read from here, .*\); pass --data DIR"):
        evaluate_run(copy, device="cpu", write_recon=False)
    assert evaluate_run(copy, data=tiny_dataset, device="cpu", write_recon=False)["metrics"]["PSNR"]["mean"] > 0


@pytest.mark.parametrize("convention, scores", [("paper", "per_slice.csv"), ("fastmri", "eval-fastmri/per_volume.csv")])
def test_the_score_csvs_end_lines_with_newline_as_compares_csv(run, convention: str, scores: str):
    """per_slice.csv and per_volume.csv had csv's default \\r\\n line endings; compare's CSV has \\n."""
    evaluate_run(run, device="cpu", write_recon=False, convention=convention)
    text = (run / scores).read_bytes()
    assert b"\r" not in text and text.count(b"\n") >= 2 and text.endswith(b"\n")  # the header, a row or more


def test_another_split_gets_its_own_folder_and_the_eval_split_scores_stay(run):
    """`evaluate --split test` replaced the run's metrics.json (split val) with the test scores."""
    sftkd("evaluate", run, "--device", "cpu", "--no-recon")
    own = (run / "metrics.json").read_text()
    printed = sftkd("evaluate", run, "--split", "train", "--device", "cpu", "--no-recon", "--convention", "fastmri").output
    sftkd("evaluate", run, "--split", "train", "--device", "cpu", "--no-recon")
    assert (run / "metrics.json").read_text() == own and json.loads(own)["dataset"]["split"] == "val"
    folder = run / "eval-split-train"
    info = json.loads((folder / "metrics.json").read_text())
    assert info["dataset"]["split"] == "train" and info["output_dir"] == str(folder)
    assert json.loads((folder / "eval-fastmri" / "metrics.json").read_text())["dataset"]["split"] == "train"
    assert f"{folder}/eval-fastmri/metrics.json" in printed.replace("\n", "")
    from sftkd_cli.eval_folders import evaluate_command

    assert evaluate_command(folder, info) == f"sftkd evaluate {run} --split train"
    table = sftkd("compare", folder, "--reference", "none", "--baseline", "none", "-f", "csv").output
    assert "t/eval-split-train" in table
    fastmri = sftkd("compare", folder / "eval-fastmri", "--convention", "fastmri", "-f", "csv").output
    assert "t/eval-split-train" in fastmri
    sftkd("evaluate", run, "--split", "val", "--device", "cpu", "--no-recon")  # the eval.split: the run's own
    assert not (run / "eval-split-val").exists()
