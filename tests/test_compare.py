"""`sftkd compare`: loading evaluated runs, checks, statistics (numpy/scipy oracles) and formats."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from rich.console import Console
from typer.testing import CliRunner

from sftkd_cli.cli.app import app
from sftkd_cli.cli.compare import _attention_slice
from sftkd_cli.errors import SftkdError
from sftkd_cli.report.compare import compare_runs, load_run_result, paper_table
from sftkd_cli.report.formats import comparison_view

METRICS = ("PSNR", "SSIM", "NMSE", "MSE", "HFN", "HFEN", "VIF")
SLICES = [(f"vol{v:02d}", index) for v in range(1, 9) for index in range(2)]  # 8 volumes: p can reach 0.0078
FINGERPRINT = "ab" * 32
WIDE = {"COLUMNS": "400"}


def slice_values(seed: int, shift: float) -> dict[str, np.ndarray]:
    """Per-slice metrics of a fake model: every metric moves by `shift` (scaled per metric)."""
    rng = np.random.default_rng(seed)
    n = len(SLICES)
    return {
        "PSNR": 30.0 + 2.0 * shift + rng.normal(0, 0.5, n),
        "SSIM": 0.90 + 0.01 * shift + rng.normal(0, 0.005, n),
        "NMSE": 0.02 - 0.002 * shift + rng.normal(0, 0.001, n),
        "MSE": 0.001 - 0.0001 * shift + rng.normal(0, 0.00005, n),
        "HFN": 0.30 - 0.02 * shift + rng.normal(0, 0.01, n),
        "HFEN": 0.40 - 0.02 * shift + rng.normal(0, 0.01, n),
        "VIF": 0.80 + 0.01 * shift + rng.normal(0, 0.01, n),
    }


ZF_VALUES = slice_values(99, -5.0)


def stats(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {m: {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v)), "volume_mean": float(np.mean(v))}
            for m, v in values.items()}


def make_run(
    root: Path, name: str, role: str | None, values: dict[str, np.ndarray], *, method: str | None = None,
    teacher_role: str | None = None, fingerprint: str = FINGERPRINT, split: str = "val", acceleration: float = 4.0,
    source: str = "demo", slices: list[tuple[str, int]] = SLICES, shuffle: bool = False, params: int = 49285,
    task: str = "recon", checkpoint: str = "best",
) -> Path:
    """An evaluated run directory written as COMMON.md describes (recipe.yaml, metrics.json, per_slice.csv)."""
    run = root / name
    run.mkdir(parents=True)
    zf = {m: np.resize(v, len(slices)) for m, v in ZF_VALUES.items()}  # the input's scores, one per slice
    (run / "recipe.yaml").write_text(f"run:\n  name: {name}\n")
    metrics = {
        "format": 1, "sftkd_version": "0.1.0", "run": name, "model": "D3C5", "role": role, "method": method,
        "init": None, "params": params, "checkpoint": checkpoint,
        "dataset": {"path": "data/demo", "fingerprint": fingerprint, "split": split, "acceleration": acceleration,
                    "image_size": [32, 32], "source": source, "task": task},
        "latency_ms_per_slice": 25.0, "device": "cpu", "conventions": {},
        "metrics": stats(values), "zero_filled": stats(zf),
    }
    if teacher_role is not None:
        metrics["teacher_role"] = teacher_role
    (run / "metrics.json").write_text(json.dumps(metrics))
    order = np.random.default_rng(7).permutation(len(slices)) if shuffle else range(len(slices))
    with (run / "per_slice.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["volume", "slice", *METRICS, *(f"ZF_{m}" for m in METRICS)])
        for i in order:
            volume, index = slices[i]
            writer.writerow([volume, index, *(repr(float(values[m][i])) for m in METRICS),
                             *(repr(float(zf[m][i])) for m in METRICS)])
    return run


FASTMRI_METRICS = ("NMSE", "PSNR", "SSIM")


def add_fastmri_scores(run: Path, seed: int, shift: float) -> Path:
    """RUN/eval-fastmri/ as `sftkd evaluate --convention fastmri` writes it: metrics.json
    (convention fastmri, stats over volumes) and per_volume.csv (one row per volume)."""
    volumes = sorted({volume for volume, _ in SLICES})
    values = {m: v[:len(volumes)] for m, v in slice_values(seed, shift).items() if m in FASTMRI_METRICS}
    zf = {m: v[:len(volumes)] for m, v in ZF_VALUES.items() if m in FASTMRI_METRICS}
    out = run / "eval-fastmri"
    out.mkdir()
    info = json.loads((run / "metrics.json").read_text())
    info.update(convention="fastmri", metrics=stats(values), zero_filled=stats(zf))
    (out / "metrics.json").write_text(json.dumps(info))
    with (out / "per_volume.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["volume", "slices", *FASTMRI_METRICS, *(f"ZF_{m}" for m in FASTMRI_METRICS)])
        for i, volume in enumerate(volumes):
            writer.writerow([volume, 4, *(repr(float(values[m][i])) for m in FASTMRI_METRICS),
                             *(repr(float(zf[m][i])) for m in FASTMRI_METRICS)])
    return out


@pytest.fixture
def trio(tmp_path: Path) -> dict[str, Path]:
    """Teacher, student and one KD run on the same data; the student's CSV rows are shuffled."""
    return {
        "teacher": make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0), params=141765),
        "student": make_run(tmp_path, "student", "student", slice_values(2, 0.0), shuffle=True),
        "kd_at": make_run(tmp_path, "kd_at", "kd", slice_values(3, 0.5), method="at", teacher_role="teacher"),
    }


def invoke(*args: str):
    return CliRunner().invoke(app, ["compare", *map(str, args)], env=WIDE)


# ----------------------------------------------------------------------------- library


def test_load_run_result_reads_metrics_and_per_slice(trio):
    run = load_run_result(trio["student"])
    assert (run.name, run.role, run.params, run.acceleration, run.split, run.source) == ("student", "student", 49285, 4.0, "val", "demo")
    assert set(run.slices) == set(SLICES)
    by_key = dict(zip(run.slices, run.column("PSNR")))
    expected = slice_values(2, 0.0)["PSNR"]
    assert all(by_key[key] == pytest.approx(expected[i]) for i, key in enumerate(SLICES))


def test_load_run_result_errors_name_the_file(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(SftkdError, match=r"x: not evaluated yet \(no metrics.json\); run `sftkd evaluate .*x`"):
        load_run_result(tmp_path / "x")
    run = make_run(tmp_path, "r", "student", slice_values(2, 0.0))
    (run / "per_slice.csv").unlink()
    with pytest.raises(SftkdError, match="per_slice.csv: missing"):
        load_run_result(run)
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(SftkdError, match="metrics.json: corrupt"):
        load_run_result(run)


def test_per_slice_that_disagrees_with_metrics_json_is_refused(tmp_path):
    run = make_run(tmp_path, "r", "student", slice_values(2, 0.0))
    other = make_run(tmp_path, "o", "student", slice_values(5, 3.0))
    (run / "per_slice.csv").write_bytes((other / "per_slice.csv").read_bytes())
    with pytest.raises(SftkdError, match=r"per_slice.csv: PSNR mean .* does not match metrics.json"):
        load_run_result(run)


def test_a_stale_per_slice_csv_a_hundredth_of_a_db_off_is_refused(tmp_path):
    """per_slice.csv holds every digit: a mean 0.01 dB off metrics.json's (a third of the paper's
    0.03 dB headline gap) is another evaluation's file, not rounding."""
    run = make_run(tmp_path, "r", "student", slice_values(2, 0.0))
    info = json.loads((run / "metrics.json").read_text())
    info["metrics"]["PSNR"]["mean"] += 0.01
    (run / "metrics.json").write_text(json.dumps(info))
    with pytest.raises(SftkdError, match=r"per_slice.csv: PSNR mean .* does not match metrics.json"):
        load_run_result(run)


def test_means_stds_deltas_match_numpy(trio):
    comparison = compare_runs([load_run_result(p) for p in trio.values()])
    assert comparison.reference == "teacher" and comparison.baseline == "student"
    rows = {row.name: row for row in comparison.rows}
    teacher = slice_values(1, 1.0)
    for name, values in (("teacher", teacher), ("student", slice_values(2, 0.0)), ("kd_at", slice_values(3, 0.5)),
                         ("ZF", ZF_VALUES)):
        for m in ("PSNR", "SSIM", "HFN", "VIF", "NMSE"):
            assert rows[name].stats[m].mean == pytest.approx(np.mean(values[m]))
            assert rows[name].stats[m].std == pytest.approx(np.std(values[m]))
            assert rows[name].delta[m] == pytest.approx(np.mean(values[m]) - np.mean(teacher[m]))


def volume_means(values: np.ndarray) -> np.ndarray:
    """The oracle's per-volume values: SLICES are 8 volumes of 2 consecutive slices, in name order."""
    return values.reshape(8, 2).mean(axis=1)


def test_wilcoxon_pairs_volumes_each_the_mean_of_its_slices(trio):
    """The slices of one volume are not independent: the test pairs volumes (the student's rows
    are shuffled: volumes are paired by name)."""
    comparison = compare_runs([load_run_result(p) for p in trio.values()])
    rows = {row.name: row for row in comparison.rows}
    student = slice_values(2, 0.0)
    for name, values in (("teacher", slice_values(1, 1.0)), ("kd_at", slice_values(3, 0.5)), ("ZF", ZF_VALUES)):
        for m in ("PSNR", "SSIM", "HFN", "VIF", "NMSE"):
            expected = scipy.stats.wilcoxon(volume_means(values[m]), volume_means(student[m])).pvalue
            assert rows[name].pvalue[m] == pytest.approx(expected, rel=1e-12)
    assert rows["student"].pvalue == {}
    assert comparison.n_paired == 8
    caption = comparison_view(comparison, 0.05).caption
    assert "over 8 paired volumes (each the mean of its slices" in caption and "cannot go below" not in caption


def test_three_volumes_cannot_reach_alpha_and_the_caption_says_so(tmp_path):
    """3 volumes x 8 slices, the student below the teacher on every slice: over slices p would be
    1e-7, over the 3 volumes it is 0.25, the smallest a two-sided signed-rank test of 3 pairs gives."""
    slices = [(f"v{v}", i) for v in range(3) for i in range(8)]
    teacher = {m: np.resize(v, 24) for m, v in slice_values(1, 1.0).items()}
    student = {m: v - 0.5 * abs(v) for m, v in teacher.items()}
    runs = [load_run_result(make_run(tmp_path, name, name, values, slices=slices))
            for name, values in (("teacher", teacher), ("student", student))]
    comparison = compare_runs(runs)
    p = {row.name: row for row in comparison.rows}["teacher"].pvalue["PSNR"]
    assert p == scipy.stats.wilcoxon(teacher["PSNR"].reshape(3, 8).mean(1), student["PSNR"].reshape(3, 8).mean(1)).pvalue
    assert p == 0.25 and scipy.stats.wilcoxon(teacher["PSNR"], student["PSNR"]).pvalue < 1e-4  # over slices
    assert comparison.n_paired == 3
    text = invoke(*(tmp_path / name for name in ("teacher", "student")), "-f", "markdown").stdout
    assert "No difference can be shown at α = 0.05 (3 volumes: p cannot go below 0.25)." in text
    assert " ".join(text.split()).count("cannot go below") == 1


def test_an_exact_slice_shows_inf_not_nan(tmp_path):
    """One slice reconstructed exactly (PSNR inf, written to metrics.json as null): the run's PSNR
    reads inf, and the Δ to it -inf, never nan."""
    values = slice_values(1, 1.0)
    values["PSNR"][0] = np.inf
    with np.errstate(invalid="ignore"):  # this helper's nanstd of an inf
        teacher = make_run(tmp_path, "teacher", "teacher", values, params=141765)
    info = json.loads((teacher / "metrics.json").read_text())
    info["metrics"]["PSNR"] = {"mean": None, "std": None, "volume_mean": None}
    (teacher / "metrics.json").write_text(json.dumps(info))
    student = make_run(tmp_path, "student", "student", slice_values(2, 0.0))
    comparison = compare_runs([load_run_result(teacher), load_run_result(student)])
    rows = {row.name: row for row in comparison.rows}
    assert rows["teacher"].stats["PSNR"].mean == np.inf and rows["student"].delta["PSNR"] == -np.inf
    text = invoke(teacher, student, "-f", "markdown").stdout
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert "nan" not in "\n".join(table) and "| inf |" in table[3] and "-inf" in table[4]


def test_delta_between_two_exact_runs_is_zero_not_nan(tmp_path):
    """Two runs exact on a slice (PSNR mean inf each): the Δ of one to the other is 0, not inf - inf."""
    values = slice_values(1, 1.0)
    values["PSNR"][0] = np.inf
    with np.errstate(invalid="ignore"):  # this helper's nanstd of an inf
        runs = [make_run(tmp_path, name, name, values) for name in ("teacher", "student")]
    comparison = compare_runs([load_run_result(run) for run in runs], reference="teacher")
    assert {row.name: row.delta["PSNR"] for row in comparison.rows}["student"] == 0.0
    assert "nan" not in invoke(*runs, "-f", "markdown").stdout


def test_different_slice_sets_are_refused(tmp_path):
    a = make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0))
    b = make_run(tmp_path, "student", "student", slice_values(2, 0.0), slices=[(v, i + 1) for v, i in SLICES])
    with pytest.raises(SftkdError, match="per-slice sets differ"):
        compare_runs([load_run_result(a), load_run_result(b)])


def test_delta_to_a_reference_on_other_slices_is_refused(tmp_path):
    """Δ compares means over slices: with --baseline none nothing else checks that the runs hold the same slices."""
    keep = [i for i, (volume, _) in enumerate(SLICES) if volume != "vol03"]
    teacher = make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0))
    kd = make_run(tmp_path, "kd", "kd", {m: v[keep] for m, v in slice_values(2, 0.0).items()},
                  slices=[SLICES[i] for i in keep], method="at", teacher_role="teacher")
    with pytest.raises(SftkdError, match=r"kd vs .*teacher: per-slice sets differ \(0 slices only in kd, \d+ only in teacher"):
        compare_runs([load_run_result(teacher), load_run_result(kd)], baseline="none")
    assert compare_runs([load_run_result(teacher), load_run_result(kd)], reference="none", baseline="none").reference is None



def test_evaluation_folders_of_two_runs_are_told_apart(tmp_path):
    """RUN/eval-student of two SFT runs (or two runs' exported evaluations) share a folder name:
    they are named with their run."""
    paths = [make_run(tmp_path / run, "eval-student", "sft-student", slice_values(i, 0.0)) for i, run in enumerate(("a", "b"))]
    paths.append(make_run(tmp_path / "a" / "eval-student", "eval-amp-bf16", "sft-student", slice_values(3, 0.0)))
    for path in paths:  # an evaluation folder has no recipe.yaml (its run has one)
        (path / "recipe.yaml").unlink()
    paths.append(make_run(tmp_path, "eval-x", "student", slice_values(4, 0.0)))  # a run that is named so
    comparison = compare_runs([load_run_result(p) for p in paths], zero_filled=False)
    assert [row.name for row in comparison.rows] == ["eval-x", "a/eval-student", "a/eval-student/eval-amp-bf16", "b/eval-student"]
    by_path = compare_runs([load_run_result(p) for p in paths], baseline=str(paths[2].resolve()))  # not as typed
    assert by_path.baseline == "a/eval-student/eval-amp-bf16"


def test_rows_are_ordered_zf_teachers_students_then_by_name(tmp_path):
    paths = [
        make_run(tmp_path, "zeta", "kd", slice_values(3, 0.5), method="sp", teacher_role="teacher"),
        make_run(tmp_path, "alpha", "kd", slice_values(4, 0.5), method="at", teacher_role="sft-teacher"),
        make_run(tmp_path, "stu", "student", slice_values(2, 0.0)),
        make_run(tmp_path, "sftt", "sft-teacher", slice_values(5, 1.0)),
        make_run(tmp_path, "tea", "teacher", slice_values(1, 1.0)),
    ]
    comparison = compare_runs([load_run_result(p) for p in paths])
    assert [row.name for row in comparison.rows] == ["ZF", "tea", "sftt", "stu", "alpha", "zeta"]
    assert [row.name for row in compare_runs([load_run_result(p) for p in paths], zero_filled=False).rows][0] == "tea"


def test_reference_and_baseline_options(trio):
    runs = [load_run_result(p) for p in trio.values()]
    comparison = compare_runs(runs, reference="kd_at", baseline="none", metrics=["psnr"])
    assert comparison.metrics == ("PSNR",) and comparison.reference == "kd_at" and comparison.baseline is None
    assert all(row.pvalue == {} for row in comparison.rows)
    with pytest.raises(SftkdError, match="--reference nope: not among the compared runs"):
        compare_runs(runs, reference="nope")
    with pytest.raises(SftkdError, match="--metrics LPIPS: not in"):
        compare_runs(runs, metrics=["LPIPS"])
    # Two students: no automatic baseline.
    twice = runs + [load_run_result(make_run(trio["teacher"].parent, "student2", "student", slice_values(6, 0.0)))]
    assert compare_runs(twice).baseline is None
    assert compare_runs(twice).notes == ("No p: 2 runs are students (student, student2); choose one with --baseline.",)
    assert compare_runs(twice, baseline="student").notes == () and compare_runs(runs).notes == ()
    shown = invoke(*trio.values(), trio["teacher"].parent / "student2", "--format", "markdown")
    assert "choose one with --baseline" in shown.output and "p PSNR" not in shown.output


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("change", "what"),
    [({"fingerprint": "cd" * 32}, "data (dataset fingerprint"), ({"split": "test"}, "split (val vs test)"),
     ({"acceleration": 5.0}, "acceleration (4x vs 5x)"),
     ({"checkpoint": "last"}, "different checkpoints (best vs last); evaluate them with the same --checkpoint"),
     ({"checkpoint": "/elsewhere/epoch3.pt"}, "different checkpoints (best vs a checkpoint file)")],
)
def test_runs_on_different_data_are_refused_in_one_line(tmp_path, change, what):
    a = make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0))
    b = make_run(tmp_path, "student", "student", slice_values(2, 0.0), **change)
    result = invoke(a, b)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and what in lines[0] and str(a) in lines[0] and str(b) in lines[0]


def test_not_evaluated_runs_are_named_in_one_line_and_skipped(trio, tmp_path):
    for name in ("pending1", "pending2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "recipe.yaml").write_text("run: {}\n")
    result = invoke(*trio.values(), tmp_path / "pending1", tmp_path / "pending2", "--format", "csv")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if "not evaluated yet" in line]
    assert len(warning) == 1 and "pending1" in warning[0] and "pending2" in warning[0]
    assert [r["run"] for r in csv.DictReader(io.StringIO(result.stdout))] == ["ZF", "teacher", "student", "kd_at"]
    strict = invoke(*trio.values(), tmp_path / "pending1", tmp_path / "pending2", "--strict")
    assert strict.exit_code == 2 and "pending1" in strict.stderr and "pending2" in strict.stderr


def test_an_eval_fastmri_folder_stands_for_its_run_in_the_fastmri_convention(trio, monkeypatch):
    """RUN/eval-fastmri given with --convention fastmri is read as RUN (not RUN/eval-fastmri/eval-fastmri),
    as the paper convention's error advises."""
    for seed, path in enumerate(trio.values()):
        add_fastmri_scores(path, seed, 0.5 * seed)
    folders = [path / "eval-fastmri" for path in trio.values()]
    advice = invoke(folders[0])
    assert advice.exit_code == 2 and "pass --convention fastmri" in advice.stderr
    by_folder = invoke(*folders, "--convention", "fastmri", "-f", "json")
    assert by_folder.exit_code == 0 and by_folder.stderr == "", by_folder.output
    by_run = invoke(*trio.values(), "--convention", "fastmri", "-f", "json")
    assert json.loads(by_folder.stdout) == json.loads(by_run.stdout)  # the same rows, named by their runs
    both = invoke(trio["teacher"], folders[0], "--convention", "fastmri", "-f", "csv")
    assert [row["run"] for row in csv.DictReader(io.StringIO(both.stdout))] == ["ZF", "teacher"]  # one run, once
    monkeypatch.chdir(folders[0])  # `.` inside the folder is the folder
    here = invoke(".", "--convention", "fastmri", "-f", "csv")
    assert here.exit_code == 0 and [row["run"] for row in csv.DictReader(io.StringIO(here.stdout))] == ["ZF", "teacher"]
    # a model's evaluation folder scored only in the fastmri convention: shown, and not called "not a run"
    nested = trio["teacher"] / "eval-student"
    nested.mkdir()
    shutil.copytree(folders[0], nested / "eval-fastmri")
    alone = invoke(nested / "eval-fastmri", "--convention", "fastmri", "-f", "csv")
    assert alone.exit_code == 0 and "not a run directory" not in alone.stderr, alone.output
    (folders[1] / "metrics.json").unlink()
    pending = invoke(folders[0], folders[1], "--convention", "fastmri", "-f", "csv")
    hint = f"run `sftkd evaluate {trio['student']} --convention fastmri`"
    assert pending.exit_code == 0 and hint in pending.stderr, pending.output


def test_with_no_evaluated_run_the_error_line_keeps_why(tmp_path):
    """Nothing left to tabulate: the one error line says why the paths were skipped (the first named,
    the others counted) and how to evaluate them, instead of dropping those warnings."""
    pending = []
    for name in ("pending1", "pending2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "recipe.yaml").write_text("run: {}\n")
        pending.append(tmp_path / name)
    (tmp_path / "junk").mkdir()
    (tmp_path / "notes.txt").write_text("junk")
    for args, expected in (
        ([pending[0]], f"{pending[0]}: not evaluated yet (no metrics.json); run `sftkd evaluate {pending[0]}`"),
        ([pending[0], "--convention", "fastmri"], f"run `sftkd evaluate {pending[0]} --convention fastmri`"),
        (pending, f"{pending[0]} (and 1 more): not evaluated yet (no metrics.json); run `sftkd evaluate RUN` on each"),
        ([tmp_path / "junk", tmp_path / "notes.txt"], f"{tmp_path / 'junk'}: not a run directory"),
    ):
        result = invoke(*args)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "no evaluated run among the given paths" in lines[0] and expected in lines[0], lines[0]


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_terminal_without_the_tables_characters_gets_question_marks_not_a_traceback(trio, tmp_path, encoding):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": encoding, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "sftkd_cli", "compare", *map(str, trio.values())],
                         capture_output=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr.decode(encoding, "replace")
    table = out.stdout.decode(encoding)
    assert "teacher" in table and "?" in table and "Traceback" not in out.stderr.decode(encoding, "replace")


def test_glob_style_arguments_with_junk(trio, tmp_path):
    (tmp_path / "notes.txt").write_text("junk")
    (tmp_path / "summary.csv").write_text("a,b\n")
    (tmp_path / "logs").mkdir()
    result = invoke(*sorted(tmp_path.iterdir()), "--format", "json")
    assert result.exit_code == 0, result.output
    assert [row["run"] for row in json.loads(result.stdout)["rows"]] == ["ZF", "teacher", "student", "kd_at"]
    assert "logs" in result.stderr and "not a run directory" in result.stderr
    assert "notes.txt" not in result.stderr and "summary.csv" not in result.stderr


def test_every_format_parses(trio, tmp_path):
    runs = list(trio.values())
    rows = list(csv.DictReader(io.StringIO(invoke(*runs, "-f", "csv").stdout)))
    assert float(rows[2]["PSNR_mean"]) == pytest.approx(np.mean(slice_values(2, 0.0)["PSNR"]))
    assert rows[1]["PSNR_delta"] == "0.0" and rows[2]["PSNR_p_volumes"] == ""

    payload = json.loads(invoke(*runs, "-f", "json", "--alpha", "0.01").stdout)
    assert payload["reference"] == "teacher" and payload["baseline"] == "student" and payload["alpha"] == 0.01
    assert payload["rows"][1]["metrics"]["PSNR"]["significant"] is True and payload["paired_volumes"] == 8
    assert payload["rows"][1]["metrics"]["PSNR"]["p_volumes"] == pytest.approx(2 / 2**8)
    assert "over volumes paired by name" in payload["test"]

    markdown = invoke(*runs, "-f", "markdown").stdout.splitlines()
    header = next(i for i, line in enumerate(markdown) if line.startswith("| Run"))
    assert "| PSNR |" in markdown[header] and set(markdown[header + 1]) <= set("|-: ")

    latex = invoke(*runs, "-f", "latex").stdout
    assert "\\begin{tabular}" in latex and "\\end{tabular}" in latex and "$\\pm$" in latex

    table = invoke(*runs)
    assert table.exit_code == 0 and "PSNR" in table.stdout and "kd_at" in table.stdout

    out = tmp_path / "table.md"
    written = invoke(*runs, "-f", "markdown", "--out", out)
    assert out.read_text() == written.stdout
    invoke(*runs, "--no-zf", "--out", tmp_path / "table.txt")
    assert "kd_at" in (tmp_path / "table.txt").read_text() and "zero-filled" not in (tmp_path / "table.txt").read_text()


def test_significance_marker_follows_alpha(trio):
    comparison = compare_runs([load_run_result(p) for p in trio.values()])
    teacher_p = {row.name: row for row in comparison.rows}["teacher"].pvalue["PSNR"]
    assert teacher_p < 0.05  # the teacher is 2 dB better on every slice
    p_column = comparison_view(comparison, 0.05).columns.index(("", "p PSNR"))
    assert comparison_view(comparison, 0.05).rows[1][p_column].endswith("*")
    assert not comparison_view(comparison, teacher_p / 2).rows[1][p_column].endswith("*")


def test_group_paper_places_runs_in_cells(tmp_path):
    made = {}
    for source, fp in (("mrbrains", "11" * 32), ("acdc", "22" * 32)):
        for acc in (4.0, 5.0):
            def run(name, role, seed, shift, **kw):
                made[(source, acc, name)] = make_run(tmp_path, f"{source}{acc:g}_{name}", role, slice_values(seed, shift),
                                                     fingerprint=fp, acceleration=acc, source=source, **kw)
            run("teacher", "teacher", 1, 1.0)
            run("sftteacher", "sft-teacher", 2, 1.2)
            run("student", "student", 3, 0.0)
            run("kd_at", "kd", 4, 0.5, method="at", teacher_role="teacher")
            run("sft_at", "kd", 5, 0.9, method="at", teacher_role="sft-teacher")
            run("sft_cc", "kd", 6, 0.8, method="cc", teacher_role="sft-teacher")
    (tmp_path / "README").write_text("junk")
    result = invoke(*sorted(tmp_path.iterdir()), "--group", "paper", "-f", "json")
    assert result.exit_code == 0, result.output
    cells = {(c["dataset"], c["model"], c["acceleration"], c["setting"]): c for c in json.loads(result.stdout)["cells"]}
    expected = {"teacher": ("Teacher", "Std-KD"), "sftteacher": ("Teacher", "SFT-KD-Recon"),
                "student": ("Student", "Std-KD"), "kd_at": ("AT", "Std-KD"), "sft_at": ("AT", "SFT-KD-Recon"),
                "sft_cc": ("CC", "SFT-KD-Recon")}
    for (source, acc, name), path in made.items():
        cell = cells[(source, expected[name][0], acc, expected[name][1])]
        assert cell["run"] == path.name
        assert cell["metrics"]["PSNR"]["mean"] == pytest.approx(load_run_result(path).metrics["PSNR"].mean)
    assert cells[("acdc", "ZF", 5.0, "Std-KD")]["metrics"]["SSIM"]["mean"] == pytest.approx(np.mean(ZF_VALUES["SSIM"]))
    assert ("acdc", "CC", 4.0, "Std-KD") not in cells and len(cells) == 2 * 2 * 7

    table = paper_table([load_run_result(p) for p in made.values()])
    assert [block.dataset for block in table.blocks] == ["mrbrains", "acdc"]
    assert table.blocks[0].models == ("ZF", "Teacher", "Student", "AT", "CC")
    assert table.accelerations == (4.0, 5.0)

    markdown = invoke(*made.values(), "--group", "paper", "-f", "markdown").stdout
    assert "| Dataset | Model | 4x Std-KD PSNR/SSIM |" in markdown and "| MRBrainS | ZF |" in markdown
    latex = invoke(*made.values(), "--group", "paper", "-f", "latex").stdout
    assert "\\multicolumn{2}{c}{4x}" in latex


def test_group_paper_names_the_input_row_for_the_task(tmp_path):
    runs = [make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0), task="sr"),
            make_run(tmp_path, "student", "student", slice_values(2, 0.0), task="sr")]
    table = paper_table([load_run_result(p) for p in runs])
    assert table.blocks[0].models == ("LR interp.", "Teacher", "Student")  # super-resolution: Table 9's input row
    markdown = invoke(*runs, "--group", "paper", "-f", "markdown").stdout
    assert "| Demo | LR interp. |" in markdown and "| ZF |" not in markdown


def test_group_paper_refuses_two_datasets_under_one_source_name_with_fitting_advice(tmp_path):
    a = make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0))
    b = make_run(tmp_path, "student", "student", slice_values(2, 0.0), fingerprint="cd" * 32)
    result = invoke(a, b, "--group", "paper")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "dataset fingerprint" in lines[0] and "two datasets share the source name 'demo'" in lines[0]
    assert "--group paper)" not in lines[0]  # not the advice to use the option just given
    assert "--group paper" not in invoke(a, b).stderr  # nor without it: the layout refuses these runs too


@pytest.mark.parametrize(("change", "works"), [
    ({"split": "test"}, False), ({"fingerprint": "cd" * 32}, False),  # --group paper refuses these too
    ({"acceleration": 8.0}, True), ({"fingerprint": "cd" * 32, "source": "fastmri_knee"}, True),
    ({"acceleration": 8.0, "split": "test"}, False),
])
def test_the_group_paper_advice_is_given_only_where_that_layout_takes_the_runs(tmp_path, change, works):
    """"(or use --group paper)" ended every mismatch error, a split mismatch's too, which --group paper refuses."""
    a = make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0))
    b = make_run(tmp_path, "student", "student", slice_values(2, 0.0), **change)
    refused = invoke(a, b)
    assert refused.exit_code == 2 and ("(or use --group paper)" in refused.stderr) is works, refused.stderr
    assert (invoke(a, b, "--group", "paper").exit_code == 0) is works


def test_group_paper_refuses_two_runs_for_one_cell(tmp_path):
    a = make_run(tmp_path, "at1", "kd", slice_values(4, 0.5), method="at", teacher_role="sft-teacher")
    b = make_run(tmp_path, "at2", "kd", slice_values(5, 0.6), method="at", teacher_role="sft-teacher")
    result = invoke(a, b, "--group", "paper")
    assert result.exit_code == 2 and "both fill the paper cell" in result.stderr and "at1" in result.stderr


def test_group_paper_at_80_columns_splits_instead_of_wrapping(tmp_path):
    """--group paper with two accelerations on an 80-column terminal: parts of whole columns, every
    cell whole (numbers from metrics.json as the oracle), no line over 80, no cut cell."""
    runs = {}
    for acc in (4.0, 5.0):
        for name, role, seed, shift, kw in (("teacher", "teacher", 1, 1.0, {}), ("sft", "sft-teacher", 2, 1.2, {}),
                                            ("student", "student", 3, 0.0, {}),
                                            ("std_at", "kd", 4, 0.5, {"method": "at", "teacher_role": "teacher"}),
                                            ("sft_at", "kd", 5, 0.9, {"method": "at", "teacher_role": "sft-teacher"})):
            runs[f"{acc:g}_{name}"] = make_run(tmp_path, f"{acc:g}_{name}", role, slice_values(seed, shift), acceleration=acc, **kw)
    narrow = CliRunner().invoke(app, ["compare", "--group", "paper", *map(str, runs.values())], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    text = narrow.stdout
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    for run in runs.values():
        stats = json.loads((run / "metrics.json").read_text())["metrics"]
        assert f"{stats['PSNR']['mean']:.2f}/{stats['SSIM']['mean']:.4f}" in text, run.name
    assert text.count("sftkd compare --group paper") == 1 and text.count("Model") == 2  # two parts, title once
    assert " ".join(text.split()).endswith("in the layout of the paper's Table 1.")  # the caption, whole
    wide = invoke(*runs.values(), "--group", "paper").stdout
    assert wide.count("Model") == 1 and "5x" in wide  # one table when it fits


def test_attention_option_draws_the_kd_runs_against_their_teachers(tmp_path, monkeypatch, tiny_dataset):
    calls = []

    def fake(students, stem, **kwargs):  # the figure itself is tested in test_figures.py
        calls.append((dict(students), stem, kwargs))
        from sftkd_cli.report.figures import FigureOutput

        return FigureOutput((stem.with_suffix(".png"), stem.with_suffix(".pdf")))

    monkeypatch.setattr("sftkd_cli.report.attention.attention_residues_from_runs", fake)
    teacher = make_run(tmp_path, "teacher", "teacher", slice_values(1, 0.0))
    std = make_run(tmp_path, "std-kd-at", "kd", slice_values(2, 0.3), method="at", teacher_role="teacher")
    sft = make_run(tmp_path, "sft-kd-at", "kd", slice_values(3, 0.5), method="at", teacher_role="sft-teacher")
    stem = tmp_path / "fig" / "attention"
    result = invoke(teacher, std, sft, "-f", "csv", "--attention", stem, "--attention-slice", "vol1:2",
                    "--attention-data", tiny_dataset)
    assert result.exit_code == 0, result.output
    ((students, drawn_stem, kwargs),) = calls
    assert students == {"std-kd-at": std, "sft-kd-at": sft} and drawn_stem == stem
    assert (kwargs["volume"], kwargs["index"], kwargs["split"]) == ("vol1", 2, "val")
    assert kwargs["dataset"] == tiny_dataset
    assert _attention_slice("vol:02:7", stem) == ("vol:02", 7)  # the last colon splits: a volume id may hold one
    assert "attention-map residues" in result.stderr and result.stdout.startswith("run,")

    bad = invoke(teacher, std, "--attention", stem, "--attention-slice", "vol02")
    assert bad.exit_code == 2 and "expected VOLUME:SLICE" in bad.stderr and bad.stdout == ""  # before any table
    none = invoke(teacher, "--attention", stem)
    assert none.exit_code == 2 and "no distilled run (role kd)" in none.stderr
    for option, value in (("--attention-slice", "vol02:1"), ("--attention-data", "data")):
        alone = invoke(teacher, option, value)
        assert alone.exit_code == 2 and f"{option}: only used with --attention" in alone.stderr


@pytest.mark.parametrize("where, error", [("vol1:99", "--attention-slice: 99 is not a slice of volume vol1 in dataset"),
                                          ("vol9:0", "--attention-slice: 'vol9' is not a volume of dataset")])
def test_an_attention_slice_the_dataset_lacks_is_refused_before_the_table_is_written(tmp_path, tiny_dataset, where, error):
    """The table was printed and --out written, then the figure failed on the slice (exit 2): a
    script saw a failure with the output file there. Now nothing is printed or written."""
    teacher = make_run(tmp_path, "teacher", "teacher", slice_values(1, 0.0))
    std = make_run(tmp_path, "std-kd-at", "kd", slice_values(2, 0.3), method="at", teacher_role="teacher")
    out = tmp_path / "table.md"
    result = invoke(teacher, std, "--out", out, "--attention", tmp_path / "att", "--attention-slice", where,
                    "--attention-data", tiny_dataset)
    assert result.exit_code == 2 and error in result.stderr, result.output
    assert result.stdout == "" and not out.exists() and not list(tmp_path.glob("att*"))


def test_a_plans_runs_folder_stands_for_the_runs_in_it(tmp_path):
    plan = tmp_path / "runs" / "demo"
    make_run(plan, "teacher", "teacher", slice_values(1, 0.0))
    make_run(plan, "student", "student", slice_values(2, 0.3))
    (plan / "report").mkdir()  # a plan's report folder is not a run and is passed over silently
    result = invoke(tmp_path / "runs" / "demo", "-f", "csv")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == ["ZF", "student", "teacher"]


def test_table_at_80_columns_splits_instead_of_wrapping(trio):
    """compare's terminal table on an 80-column console: no line over 80, no cut p-value, no cell
    wrapped into several lines (rows of a part are at most the stacked 3 lines of mean, Δ, p)."""
    from sftkd_cli.report.formats import format_p, to_rich, view

    from sftkd_cli.report.compare import collect_runs

    runs, _ = collect_runs(list(trio.values()))
    comparison = compare_runs(runs, metrics=["PSNR", "SSIM", "HFN", "VIF", "NMSE"])
    buffer = io.StringIO()
    Console(file=buffer, width=80, color_system=None).print(to_rich(view(comparison, 0.05, stacked=True)))
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    for row in comparison.rows:
        for metric, p in row.pvalue.items():
            assert format_p(p, 0.05) in text, (row.name, metric)
    assert text.count("sftkd compare") == 1 and text.count("Run") >= 2  # split into parts, title once
    wide = io.StringIO()
    Console(file=wide, width=300, color_system=None).print(to_rich(view(comparison, 0.05, stacked=True)))
    assert wide.getvalue().count("Run") == 1  # one table when it fits


def test_a_caption_longer_than_its_table_takes_the_console_width():
    """The caption is a paragraph of the console's width, not wrapped at the (narrower) table's."""
    from sftkd_cli.report.formats import Table, to_rich

    caption = "mean ± std over the slices of the validation split; p: paired Wilcoxon signed-rank test over volumes"
    table = Table("T", (("", "run"), ("", "model"), ("PSNR", "mean")), (("a", "D3C5", "30.10"),), caption=caption)
    for width, lines in ((200, 1), (40, 3)):
        buffer = io.StringIO()
        Console(file=buffer, width=width, color_system=None).print(to_rich(table))
        text = buffer.getvalue().splitlines()
        assert " ".join(" ".join(text[-lines:]).split()) == caption and len(text[-lines - 1]) < 40, (width, text)


def test_dataset_labels_come_from_the_source_catalog():
    from sftkd_cli.data.catalog import SOURCES, source_label

    assert source_label("demo/icbm152") == "Demo" and source_label("demo/colin27") == "Demo"
    assert source_label("acdc") == "Cardiac" and source_label("mrbrains") == "MRBrainS"
    assert source_label("fastmri") == "fastMRI" and source_label("elsewhere") == "elsewhere"
    assert all(source_label(name) for name in SOURCES)


def test_paper_table_refuses_scores_of_different_checkpoints(tmp_path):
    """CPU: the best checkpoint of one run beside the last of another is not one table."""
    a = make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0))
    b = make_run(tmp_path, "student", "student", slice_values(2, 0.0), checkpoint="last")
    with pytest.raises(SftkdError, match=r"different checkpoints \(best vs last\)"):
        paper_table([load_run_result(a), load_run_result(b)])


def test_a_missing_score_column_names_the_file_it_was_read_from(trio):
    """The fastMRI convention's scores are RUN/eval-fastmri/per_volume.csv, not RUN/per_slice.csv."""
    run = trio["teacher"]
    add_fastmri_scores(run, 0, 0.0)
    for convention, scores, hint in (("paper", run / "per_slice.csv", f"`sftkd evaluate {run}`"),
                                     ("fastmri", run / "eval-fastmri" / "per_volume.csv",
                                      f"`sftkd evaluate {run} --convention fastmri`")):
        result = load_run_result(run, convention)
        with pytest.raises(SftkdError) as error:
            result.column("NRMSE")
        assert str(error.value) == f"{scores}: no column 'NRMSE' (re-run {hint})"


def test_null_scores_read_as_nan_and_old_nan_tokens_still_read(tmp_path):
    """evaluate writes NaN and infinities as null (JSON has neither): compare reads null as NaN,
    but a null mean whose per-slice values hold inf (PSNR of an exact slice) as that infinity; files
    of earlier sftkd versions, with NaN/Infinity tokens, read as before."""
    values = slice_values(2, 0.0)
    values["PSNR"][0] = np.inf
    with np.errstate(invalid="ignore"):  # this helper's nanstd of an inf
        run = make_run(tmp_path, "r", "student", values)
    info = json.loads((run / "metrics.json").read_text())
    info["metrics"]["PSNR"] = {"mean": None, "std": None, "volume_mean": None}
    info["metrics"]["SSIM"]["std"] = None
    (run / "metrics.json").write_text(json.dumps(info, allow_nan=False))
    result = load_run_result(run)
    assert result.metrics["PSNR"].mean == np.inf and np.isnan(result.metrics["PSNR"].std)
    assert np.isnan(result.metrics["SSIM"].std)
    assert result.metrics["SSIM"].mean == pytest.approx(np.mean(values["SSIM"]))
    assert invoke(run).exit_code == 0
    info["metrics"]["PSNR"] = {"mean": float("inf"), "std": float("nan")}
    (run / "metrics.json").write_text(json.dumps(info))  # Infinity and NaN tokens
    result = load_run_result(run)
    assert result.metrics["PSNR"].mean == np.inf and np.isnan(result.metrics["PSNR"].std)
    del info["metrics"]["PSNR"]["std"]
    (run / "metrics.json").write_text(json.dumps(info))
    with pytest.raises(SftkdError, match=r"metrics.PSNR: no std"):
        load_run_result(run)


@pytest.mark.parametrize("metric, mean, std, shown", [
    ("HFN", 2.5, 1.234, "2.500 ± 1.234"),  # was 2.5 ± 1.2: the std cut to 2 significant digits
    ("NMSE", 0.0012345, 0.00031, "0.001234 ± 0.000310"),
    ("PSNR", 35.123, 0.532, "35.12 ± 0.53"),
    ("SSIM", 0.9, 0.01234, "0.9000 ± 0.0123"),
    ("HFEN", 1234.5, 67.0, "1234 ± 67"),
    ("MSE", 1.2e-5, 3.4e-6, "1.2e-05 ± 3.4e-06"),  # exponent notation: both with 4 significant digits
])
def test_std_is_shown_with_the_decimals_of_its_mean(metric: str, mean: float, std: float, shown: str) -> None:
    from sftkd_cli.report.formats import format_stat
    from sftkd_cli.report.result_files import Stat

    assert format_stat(metric, Stat(mean, std)) == shown


def test_delta_cells_have_the_decimal_places_of_the_means_beside_them(trio):
    """Δ had 3 significant digits (+0.064) beside 4-digit means (0.1046); the paper's metrics keep
    their precision (PSNR 2 decimals, SSIM and VIF 4)."""
    comparison = compare_runs([load_run_result(p) for p in trio.values()], metrics=list(METRICS))
    table = comparison_view(comparison, 0.05)
    labels = [label for _, label in table.columns]
    decimals = lambda text: len(text.split(" ")[0].partition(".")[2])  # noqa: E731
    for row in table.rows:
        if row[0] in ("teacher", "ZF"):
            continue
        for m, places in (("PSNR", 2), ("SSIM", 4), ("VIF", 4), ("HFN", 4), ("HFEN", 4), ("NMSE", 5)):
            mean, delta = row[labels.index(m)], row[labels.index(f"Δ{m}")]
            assert decimals(mean) == places and decimals(delta) == places, (row[0], m, mean, delta)
            assert delta.startswith(("+", "-"))


@pytest.mark.parametrize("name", ["metrics.json", "recipe.yaml", "per_slice.csv", "history.jsonl",
                                  "checkpoints/best.pt", "eval-fastmri/metrics.json"])
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_out_never_replaces_a_file_sftkd_reads_from_a_run(trio, name, force):
    """`-o runs/s3/metrics.json` replaced run s3's scores (the next compare of s3 failed)."""
    target = trio["kd_at"] / name
    target.parent.mkdir(exist_ok=True)
    if not target.exists():
        target.write_text("kept\n")
    before = target.read_bytes()
    result = invoke(trio["teacher"], trio["student"], "-f", "json", "-o", target, *force)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and str(target) in lines[0] and "run folder" in lines[0], result.output
    assert target.read_bytes() == before
    assert not (trio["student"] / "per_volume.csv").exists()
    assert invoke(trio["student"], "-f", "json", "-o", trio["student"] / "per_volume.csv").exit_code == 2  # not yet there


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "latex", "table"])
def test_out_replaces_an_earlier_compare_output_and_another_file_only_with_force(trio, tmp_path, fmt):
    runs = (trio["teacher"], trio["student"])
    out = tmp_path / f"results.{fmt}"
    assert invoke(*runs, "-f", fmt, "-o", out).exit_code == 0
    again = invoke(*runs, "-f", fmt, "-o", out)  # the same command again: no --force needed
    assert again.exit_code == 0 and out.read_text() == (again.stdout if fmt != "table" else out.read_text())
    assert invoke(*runs, "--group", "paper", "-f", fmt, "-o", out).exit_code == 0  # the paper layout's too
    assert invoke(*runs, "-f", fmt, "-o", out).exit_code == 0
    notes = tmp_path / f"notes.{fmt}"
    notes.write_text({"json": '{"format": 1, "rows": []}\n', "csv": "run,score\nx,1\n"}.get(fmt, "my notes\n"))
    refused = invoke(*runs, "-f", fmt, "-o", notes)
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1 and str(notes) in lines[0] and "--force" in lines[0]
    assert "not an earlier compare output (expected" in lines[0] and notes.read_text() != out.read_text()
    assert invoke(*runs, "-f", fmt, "-o", notes, "--force").exit_code == 0 and notes.read_text() == out.read_text()
    empty = tmp_path / f"empty.{fmt}"  # a placeholder (mktemp's): nothing to lose
    empty.touch()
    assert invoke(*runs, "-f", fmt, "-o", empty).exit_code == 0 and empty.read_text() == out.read_text()


def test_evaluations_inside_the_compared_runs_that_the_table_leaves_out_are_named(trio):
    """A run folder stands for its own scores; its other evaluations (another split, an SFT run's
    student blocks) are named in one note line on stderr, fastMRI-convention scores are not (they
    are another table), nor one compared already."""
    teacher = trio["teacher"]
    make_run(teacher, "eval-split-test", "teacher", slice_values(4, 0.0), split="test")
    make_run(teacher, "eval-student", "sft-student", slice_values(5, 0.0))
    add_fastmri_scores(teacher, 6, 0.0)
    (teacher / "eval-amp-bf16").mkdir()  # no scores: not named
    result = invoke(*trio.values(), "-f", "csv")
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"note: also evaluated, not in this table: {teacher / 'eval-split-test'}, "
                             f"{teacher / 'eval-student'} (give a folder to add it)\n")
    assert "note" not in invoke(*trio.values(), teacher / "eval-student", teacher / "eval-split-test").stderr
    assert "note" not in invoke(*trio.values(), "--convention", "fastmri").stderr


def test_attention_refuses_figures_sftkd_did_not_write_before_any_work_unless_forced(tmp_path, monkeypatch, tiny_dataset):
    """`--attention thesis/fig6.pdf` replaced the user's fig6.png and fig6.pdf without a word."""
    from sftkd_cli.report.figures import FigureOutput

    drawn = []
    monkeypatch.setattr("sftkd_cli.report.attention.attention_residues_from_runs",
                        lambda students, stem, **kw: drawn.append(stem) or FigureOutput(()))
    teacher = make_run(tmp_path, "teacher", "teacher", slice_values(1, 0.0))
    kd = make_run(tmp_path, "kd-at", "kd", slice_values(2, 0.3), method="at", teacher_role="teacher")
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "fig6.png").write_text("x\n")
    (thesis / "fig6.pdf").write_text("y\n")
    refused = invoke(kd, teacher, "-f", "csv", "--attention", thesis / "fig6.pdf")
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and len(lines) == 1 and refused.stdout == "" and drawn == [], refused.output
    assert f"--attention {thesis / 'fig6.png'}: exists and is not a figure sftkd wrote" in lines[0] and "--force" in lines[0]
    assert (thesis / "fig6.png").read_text() == "x\n" and (thesis / "fig6.pdf").read_text() == "y\n"
    forced = invoke(kd, teacher, "-f", "csv", "--attention", thesis / "fig6.pdf", "--force", "--attention-data", tiny_dataset)
    assert forced.exit_code == 0 and drawn == [thesis / "fig6.pdf"], forced.output


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_out_through_a_dangling_link_into_a_run_or_onto_a_dataset_is_refused(trio, tmp_path, force):
    """A link `cmp/out.csv -> r/per_slice.csv` whose target was removed led compare's CSV into the run."""
    run = trio["kd_at"]
    (run / "per_slice.csv").unlink()
    link = tmp_path / "out.csv"
    link.symlink_to(Path(run.name) / "per_slice.csv")  # relative, as `ln -s r/per_slice.csv out.csv` makes it
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text('{"format": 1}\n')
    for target in (link, data / "manifest.json", data / "vol1.h5"):
        result = invoke(trio["teacher"], trio["student"], "-f", "csv", "-o", target, *force)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and f"--out {target}: refused, even with --force" in lines[0], result.output
    assert not (run / "per_slice.csv").exists() and (data / "manifest.json").read_text() == '{"format": 1}\n'
    assert not (data / "vol1.h5").exists()


def test_tabulate_refuses_a_reference_or_baseline_for_the_paper_layout_as_the_command_does():
    from sftkd_cli.report.compare import tabulate

    for given in ({"reference": "teacher"}, {"baseline": "student"}):
        with pytest.raises(SftkdError, match=r"^--group paper: --reference and --baseline do not apply"):
            tabulate([], paper=True, **given)


@pytest.mark.parametrize("suffix, fmt", [(".csv", "csv"), (".json", "json"), (".md", "markdown"), (".tex", "latex"),
                                         (".txt", "table"), (".CSV", "csv"), (".out", "table")])
def test_out_without_format_writes_the_format_its_suffix_names(trio, tmp_path, suffix, fmt):
    """`compare A B --out x.csv` wrote the plain-text table into x.csv: pandas and json failed on it."""
    out = tmp_path / f"results{suffix}"
    assert invoke(trio["teacher"], trio["student"], "--out", out).exit_code == 0
    explicit = tmp_path / f"explicit{suffix}"
    assert invoke(trio["teacher"], trio["student"], "-f", fmt, "--out", explicit).exit_code == 0
    assert out.read_text() == explicit.read_text()
    if fmt == "csv":
        assert next(csv.reader(io.StringIO(out.read_text())))[0] == "run"
    if fmt == "json":
        assert json.loads(out.read_text())["kind"] == "compare"


def test_a_format_that_the_out_suffix_contradicts_is_refused_in_one_line(trio, tmp_path):
    out = tmp_path / "results.csv"
    result = invoke(trio["teacher"], trio["student"], "-f", "json", "--out", out)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "results.csv" in lines[0] and "csv" in lines[0], result.output
    assert not out.exists()


def test_a_run_named_zf_is_refused_in_one_line_unless_the_zf_row_is_left_out(tmp_path):
    """A run folder named ZF gave two rows "run": "ZF" (its own and the zero-filled input's)."""
    zf = make_run(tmp_path, "ZF", "student", slice_values(2, 0.0))
    teacher = make_run(tmp_path, "teacher", "teacher", slice_values(1, 1.0))
    result = invoke(teacher, zf, "-f", "json", "--baseline", "ZF")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and str(zf) in lines[0] and "--no-zf" in lines[0], result.output
    payload = json.loads(invoke(teacher, zf, "-f", "json", "--no-zf").stdout)
    assert [row["run"] for row in payload["rows"]] == ["teacher", "ZF"]


def test_markdown_and_latex_escape_what_a_run_name_may_hold(tmp_path):
    """Markdown escaped only '|' (a run s*x* showed as an italic sx), LaTeX lacked | < > (printed as
    other glyphs in OT1)."""
    teacher = make_run(tmp_path, "s*x*", "teacher", slice_values(1, 1.0))
    student = make_run(tmp_path, "kd#a&b~c|d_e$<f>`g`", "student", slice_values(2, 0.0))
    markdown = invoke(teacher, student, "-f", "markdown").stdout
    assert "| s\\*x\\* |" in markdown and "| kd#a&b~c\\|d\\_e$\\<f>\\`g\\` |" in markdown, markdown
    latex = invoke(teacher, student, "-f", "latex").stdout
    assert (r"kd\#a\&b\textasciitilde{}c\textbar{}d\_e\$\textless{}f\textgreater{}`g`" in latex), latex


def test_json_tells_an_infinite_mean_from_an_undefined_one_and_a_nan_p_is_not_insignificant(tmp_path):
    """An infinite PSNR mean was written null (as undefined values are) while CSV wrote inf; a NaN p
    (a volume's value undefined) gave "significant": false instead of null."""
    values = slice_values(1, 1.0)
    values["PSNR"][0] = np.inf
    with np.errstate(invalid="ignore"):
        teacher = make_run(tmp_path, "teacher", "teacher", values)
    student = make_run(tmp_path, "student", "student", slice_values(2, 0.0))
    undefined = slice_values(3, 0.0)
    undefined["PSNR"][:2] = np.nan  # every slice of vol01: its volume's value, and so p, is undefined
    twin = make_run(tmp_path, "twin", "kd", undefined, method="at", teacher_role="teacher")
    text = invoke(teacher, student, twin, "-f", "json").stdout
    payload = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))
    rows = {row["run"]: row["metrics"]["PSNR"] for row in payload["rows"]}
    assert rows["teacher"]["mean"] == "inf" and rows["student"]["delta"] == "-inf"
    assert rows["twin"]["p_volumes"] is None and rows["twin"]["significant"] is None
    assert payload["test"].endswith("the mean of its slices)")
