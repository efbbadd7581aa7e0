"""`sftkd reproduce`: plan validation, the smoke plan end to end, skipping, resuming after an
interruption, and failures that stop only the stages that need the failed one."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from sftkd_cli.choices import TRAIN_KINDS
from sftkd_cli.cli.app import app
from sftkd_cli.data.catalog import SOURCE_DEFAULTS
from sftkd_cli.errors import RunInterrupted, SftkdError, counted
from sftkd_cli.reproduce import DataSpec, build_stages, default_trainers, load_plan, run_plan, select
from sftkd_cli.runs import load_checkpoint

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
PLANS = [ROOT / "recipes" / "demo.yaml", *sorted((ROOT / "recipes" / "plans").glob("*.yaml"))]
TINY_BASE = """
base:
  train.epochs: 2
  train.batch_size: 2
  train.threads: 1
  sft.teacher: D3C2
  sft.student: D2C2
  eval.latency_slices: 1
"""


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def statuses(outcome) -> dict[str, str]:
    return {r.id: r.status for r in outcome.results}


def write_plan(tmp_path: Path, data: Path, extra: str = "", name: str = "plan.yaml") -> Path:
    """A tiny plan on the prepared `data`: D3C2 teacher, D2C2 student, AT, 2 epochs."""
    path = tmp_path / name
    path.write_text(
        f"plan: 1\ndata:\n  source: prepared\n  out: {data}\nruns_dir: {tmp_path / 'runs'}\n"
        + TINY_BASE + "stages:\n  teacher: {}\n  student: {}\n  sft: {}\n  kd:\n    methods: [at]\n" + extra
    )
    return path


def last_epoch(run: Path) -> int:
    return load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]


def paper_tables(text: str) -> list[tuple[list[str], dict[str, list[str]]]]:
    """Each paper-layout table of a report.md: (header, model row -> its value cells)."""
    tables = []
    for chunk in text.split("**sftkd compare --group paper**\n\n")[1:]:
        lines = []
        for line in chunk.splitlines():
            if not line.startswith("|"):
                break
            lines.append([cell.strip() for cell in line.split("|")[1:-1]])
        tables.append((lines[0], {row[1]: row[2:] for row in lines[2:]}))
    return tables


def psnr_ssim(run: Path, block: str = "metrics", mean: str = "mean") -> str:
    """A run's 'PSNR/SSIM' means from its metrics.json, at the paper's precision (the oracle); `mean`
    "volume_mean" for the means over volumes that sit beside the paper's numbers."""
    stats = json.loads((run / "metrics.json").read_text())[block]
    return f"{stats['PSNR'][mean]:.2f}/{stats['SSIM'][mean]:.4f}"


def paper_markdown(*runs: Path) -> str:
    """What `sftkd compare --group paper --format markdown RUN...` prints."""
    result = CliRunner().invoke(app, ["compare", "--group", "paper", "--format", "markdown", *map(str, runs)])
    assert result.exit_code == 0, result.output
    return result.stdout


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_shipped_plans_validate(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # plan paths are relative to the repository root
    plan = load_plan(path)
    stages = build_stages(plan)
    ids = [s.id for s in stages]
    assert len(ids) == len(set(ids)) and ids[0] == "data" and ids[-1] == "report"
    for stage in stages:
        if stage.recipe is not None:
            assert stage.recipe.run.name == stage.run.name and Path(stage.recipe.run.dir) == plan.runs_dir
            assert stage.recipe.data.path == str(plan.data.out)
        position = ids.index(stage.id)
        assert all(ids.index(need) < position for need in stage.needs)


def test_paper_plans_cover_the_paper_tables(monkeypatch):
    monkeypatch.chdir(ROOT)
    for dataset in ("mrbrains", "acdc"):
        plan = load_plan(ROOT / "recipes" / "plans" / f"table1-{dataset}.yaml")
        stages = build_stages(plan)
        kd = [s for s in stages if s.kind in ("std-kd", "sft-kd")]
        assert {v.name for v in plan.variants} == {"4x", "5x"} and len(kd) == 2 * 2 * 5
        for stage in stages:
            if stage.recipe is not None:
                assert stage.recipe.train.epochs == 150 and stage.recipe.data.acceleration == float(stage.group[0])
        assert plan.paper is not None and plan.paper.rows["Teacher"][0] in ("40.05/0.9785", "32.15/0.9108")
    plan = load_plan(ROOT / "recipes" / "plans" / "table8-students.yaml")
    stages = {s.id: s for s in build_stages(plan)}
    assert stages["teacher"].recipe.model.name == "D5C5"
    for student in ("D4C5", "D3C5", "D2C5"):
        assert stages[f"{student}-student"].recipe.model.name == student
        assert stages[f"{student}-sft"].recipe.sft.student == student
        assert stages[f"{student}-std-kd-at"].needs == ("data", "teacher")
        assert stages[f"{student}-sft-kd-at"].recipe.distill.teacher_run == str(plan.runs_dir / f"{student}-sft")


def test_table3_and_table5_plans_reuse_the_table1_4x_runs(monkeypatch):
    monkeypatch.chdir(ROOT)
    table1 = {s.id: s for s in build_stages(load_plan(ROOT / "recipes" / "plans" / "table1-mrbrains.yaml"))}
    for name, layout, extra in (("table3-mrbrains-hfn-vif", "table1", set()), ("table5-mrbrains-init", "models", {"4x-sft-kd-at-random"})):
        plan = load_plan(ROOT / "recipes" / "plans" / f"{name}.yaml")
        stages = {s.id: s for s in build_stages(plan) if s.kind in ("teacher", "student", "sft", "std-kd", "sft-kd")}
        assert plan.runs_dir == Path("runs/table1-mrbrains") and plan.report_dir != Path("runs/table1-mrbrains/report")
        assert set(stages) - set(table1) == extra and plan.paper is not None and plan.paper.layout == layout
        for sid, stage in stages.items():
            if sid not in extra:  # same run directory, same recipe: finished Table 1 runs are skipped
                assert stage.recipe == table1[sid].recipe, sid
    plan = load_plan(ROOT / "recipes" / "plans" / "table3-mrbrains-hfn-vif.yaml")
    assert plan.paper.metrics == ("HFN", "VIF") and plan.paper.rows["Fitnets"] == ("0.3204/0.9012", "0.2816/0.9166")
    plan = load_plan(ROOT / "recipes" / "plans" / "table5-mrbrains-init.yaml")
    assert plan.paper.metrics == ("HFN", "MSE", "PSNR", "SSIM", "VIF")
    assert plan.paper.rows["PSNR"][3] == "39.99 +/- 1.947"
    stages = {s.id: s for s in build_stages(plan)}
    random, sft = stages["4x-sft-kd-at-random"], stages["4x-sft-kd-at"]
    assert (random.recipe.distill.init, sft.recipe.distill.init) == ("random", "sft")
    assert random.needs == sft.needs == ("data", "4x-sft") and random.recipe_file == sft.recipe_file
    assert dataclasses.replace(random.recipe, run=sft.recipe.run, distill=sft.recipe.distill) == sft.recipe
    assert stages["eval-4x-sft-kd-at-random"].random_init


def test_prepare_defaults_match_the_prepare_data_command():
    from sftkd_cli.cli import prepare

    for source, defaults in SOURCE_DEFAULTS.items():
        signature = inspect.signature(getattr(prepare, source)).parameters
        for key, value in defaults.items():
            if key in signature:
                assert signature[key].default == value, (source, key)
    assert inspect.signature(prepare.demo).parameters["min_slice_mean"].default == SOURCE_DEFAULTS["demo"]["min_slice_mean"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("plan: 1\ndata: {source: prepared, out: d}\nstagse: {}\n", "unknown key 'stagse'; did you mean stages?"),
        ("plan: 1\ndata: {source: prepared, out: d}\nbase: {train.epoch: 3}\n", "base: unknown key train.epoch; did you mean train.epochs?"),
        ("plan: 1\ndata: {source: prepared, out: d}\nbase: {run.name: x}\n", "base: run.name is set by the plan"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {teacher: {overides: {}}}\n", "stages.teacher: unknown key 'overides'; did you mean overrides?"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {teacher: {}, sft: {}, kd: {methods: [atx]}}\n", "stages.kd.methods: unknown method 'atx'; did you mean at?"),
        ("plan: 1\ndata: {source: demo, out: d, options: {sise: [32, 32]}}\n", "data.options: unknown key 'sise'; did you mean size?"),
        ("plan: 1\ndata: {source: mrbrain, out: d}\n", "data.source: unknown source 'mrbrain'; did you mean mrbrains?"),
        ("plan: 1\ndata: {source: acdc, out: d}\n", "data.root: source acdc needs the raw data folder"),
        ("plan: 1\ndata: {source: demo, root: r, out: d}\n",
         "bad.yaml: data.root r: the plan's data source demo reads no raw data folder; expected no data.root for it"),
        ("plan: 1\ndata: {source: prepared, root: r, out: d}\n", "data.root r: the plan's data source prepared reads no raw"),
        ("data: {path: data/demo}\n", "expected a plan: a mapping with `plan: 1` at the top"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {teacher: {}}\nvariants: [{name: a}, {name: a}]\n", "two variants named 'a'"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {columns: [4x Std-KD], rows: {Teacher: [40.05]}}\n", "rows.Teacher: cell 40.05: expected '-' or PSNR/SSIM"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {compare: {alpha: 5}}\n", "stages.compare.alpha: expected a number between 0 and 1"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {teacher: {}, sft: {}, kd: {methods: [at]}}\nfigures: {method: true}\n",
         "figures.method: True is not among stages.kd.methods"),
        ("plan: 1\ndata: {source: prepared, out: d}\nfigures: {box: [1, 2]}\n", "figures.box: expected [row, column, height, width]"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {evaluate: {sft_student: yes please}}\n", "stages.evaluate.sft_student: expected true or false"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {teacher: {}, sft: {}, kd: {methods: [at], sft_random_init: [cc]}}\n",
         "stages.kd.sft_random_init: 'cc' is not among stages.kd.methods"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {layout: models, columns: [Teacher, SFT-KD], rows: {PSNR: [1, 2]}}\n",
         "paper.columns: unknown column 'SFT-KD'; did you mean SFT-KD-Recon?"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {layout: models, metrics: [PSNR], columns: [KD], rows: {PSNR: [1]}}\n",
         "paper.metrics: layout models takes the metrics from the row names"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {layout: models, columns: [KD], rows: {PSNR: [1 +/- 2 +/- 3]}}\n",
         "rows.PSNR: cell '1 \\+/- 2 \\+/- 3': expected '-' or a number or 'mean \\+/- std'"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {layout: models, columns: [KD], rows: {PSNRR: [1]}}\n",
         "paper.rows: unknown metric 'PSNRR' \\(layout models names a metric per row\\); did you mean PSNR?"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {columns: 5}\n", "bad.yaml: paper.columns: expected a list of names, got 5"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {metrics: 5, columns: [4x Std-KD]}\n",
         "bad.yaml: paper.metrics: expected a list of names, got 5"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {metrics: [PSNRR], columns: [4x Std-KD]}\n",
         "bad.yaml: paper.metrics: unknown metric 'PSNRR'; did you mean PSNR?"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {columns: [1.2.3x Std-KD]}\n",
         "bad.yaml: paper.columns: '1.2.3x Std-KD': expected '<acc>x Std-KD'"),
        ("plan: 1\ndata: {source: prepared, out: d}\npaper: {metrics: PSNR, columns: [4x Std-KD], rows: {Teacher: [40.05/0.9785]}}\n",
         "rows.Teacher: cell '40.05/0.9785': expected '-' or PSNR numbers"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {evaluate: {checkpoint: bst}}\n",
         "bad.yaml: stages.evaluate.checkpoint: unknown checkpoint 'bst'; did you mean best?"),
        ("plan: 1\ndata: {source: prepared, out: d}\nstages: {compare: {metrics: [PSNR, PSNRR]}}\n",
         "bad.yaml: stages.compare.metrics: unknown metric 'PSNRR'; did you mean PSNR?"),
        ("plan: 1\ndata: {source: prepared, out: d}\nfigures: {metrics: [PSNRR]}\n", "bad.yaml: figures.metrics: unknown metric 'PSNRR'; did you mean PSNR?"),
        ("plan: 1\ndata: {source: prepared, out: d}\nfigures: {curve: val_psrn}\n", "bad.yaml: figures.curve: unknown curve 'val_psrn'; did you mean val_psnr?"),
        ("plan: 1\ndata: {source: prepared, out: d}\nfigures: {curve: nope}\n", "bad.yaml: figures.curve: unknown curve 'nope'; expected one of val_l1"),
        ("plan: 1\ndata: {source: demo, out: d, options: {size: abc}}\n", "bad.yaml: data.options.size: 'abc': expected two integers H W"),
        ("plan: 1\ndata: {source: demo, out: d, options: {size: [32]}}\n", "bad.yaml: data.options.size: [32]: expected two integers H W"),
        ("plan: 1\ndata: {source: demo, out: d, options: {size: [32, 32, 32]}}\n", "data.options.size: [32, 32, 32]: expected two integers"),
        ("plan: 1\ndata: {source: demo, out: d, options: {size: [2, 32]}}\n", "data.options.size: [2, 32]: expected two integers H W, each from 7"),
        ("plan: 1\ndata: {source: demo, out: d, options: {accelerations: [4, x]}}\n", "data.options.accelerations: [4, 'x']: expected a list of numbers"),
        ("plan: 1\ndata: {source: demo, out: d, options: {accelerations: [1]}}\n", "bad.yaml: data.options.accelerations: 1: expected a number > 1"),
        ("plan: 1\ndata: {source: demo, out: d, options: {downsample: -3}}\n", "bad.yaml: data.options.downsample: -3: expected an integer >= 1"),
        ("plan: 1\ndata: {source: demo, out: d, options: {downsample: 2.5}}\n", "data.options.downsample: 2.5: expected an integer >= 1"),
        ("plan: 1\ndata: {source: demo, out: d, options: {slab: abc}}\n", "bad.yaml: data.options.slab: 'abc': expected an integer"),
        ("plan: 1\ndata: {source: demo, out: d, options: {val: [x]}}\n",
         "bad.yaml: data.options.val: not used by source demo \\(it cuts the template into axial slabs and assigns them to "
         "train, val and test itself\\); it takes size, downsample, accelerations, mask_kind, mask_files, mask_layout, "
         "center_fraction, seed, min_slice_mean, task, template, template_path, slab, gap"),
        ("plan: 1\ndata: {source: demo, out: d, options: {test_fraction: 0.1}}\n", "bad.yaml: data.options.test_fraction: not used by source demo"),
        ("plan: 1\ndata: {source: fastmri, root: r, out: d, options: {downsample: 2}}\n",
         "bad.yaml: data.options.downsample: not used by source fastmri \\(it reads raw k-space"),
        ("plan: 1\ndata: {source: demo, out: d, options: {mask_files: m.npy}}\n", "data.options.mask_files: 'm.npy': expected a mapping"),
        ("plan: 1\ndata: {source: demo, out: d, options: {accelerations: [4], mask_files: {5: m.npy}}}\n",
         "data.options.mask_files: 5=...: acceleration 5 is not among accelerations 4"),
        ("plan: 1\ndata: {source: prepared, out: d}\nseeds: 42\n", "seeds: expected a list of integer seeds"),
        ("plan: 1\ndata: {source: prepared, out: d}\nseeds: [42, x]\n", "seeds: 'x': expected an integer between 0 and 2\\*\\*32-1"),
        ("plan: 1\ndata: {source: prepared, out: d}\nseeds: [42, -1]\n", "seeds: -1: expected an integer"),
        ("plan: 1\ndata: {source: prepared, out: d}\nseeds: [42, 43, 42]\n", "seeds: seed 42 is listed twice"),
        ("plan: 1\ndata: {source: prepared, out: d}\nseeds: [42, 43]\nbase: {train.seed: 1}\n",
         "base: train.seed is set by the plan's seeds; remove it"),
    ],
)
def test_plan_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SftkdError, match=message.replace("?", r"\?").replace("[", r"\[")) as info:
        load_plan(path)
    assert "\n" not in str(info.value)


def test_plan_methods_are_taken_in_any_case_as_distill_method_takes_them(tmp_path):
    """`methods: [AT]` was refused (unknown method 'AT') though `sftkd distill --method AT` runs."""
    path = tmp_path / "plan.yaml"
    path.write_text("plan: 1\ndata: {source: prepared, out: d}\n"
                    "stages: {teacher: {}, sft: {}, kd: {methods: [AT, Sp], sft_random_init: [SP]}}\nfigures: {method: Sp}\n")
    plan = load_plan(path)
    assert plan.methods == ("at", "sp") and plan.random_init == ("sp",) and plan.figures["method"] == "sp"
    path.write_text("plan: 1\ndata: {source: prepared, out: d}\nstages: {teacher: {}, sft: {}, kd: {methods: [at, AT]}}\n")
    with pytest.raises(SftkdError, match=r"stages.kd.methods: a method is listed twice"):
        load_plan(path)


def test_data_root_is_refused_for_a_plan_whose_source_reads_no_raw_folder(tmp_path):
    """--data-root with the demo plan was silently ignored; a plan that prepares from raw data takes it."""
    path = tmp_path / "plan.yaml"
    path.write_text("plan: 1\ndata: {source: demo, out: d}\n")
    with pytest.raises(SftkdError, match=r"^--data-root elsewhere: the plan's data source demo reads no raw data folder"):
        load_plan(path, data_root=Path("elsewhere"))
    path.write_text("plan: 1\ndata: {source: nifti, root: raw, out: d}\n")
    assert load_plan(path, data_root=Path("elsewhere")).data.root == Path("elsewhere")


def test_data_options_take_one_value_as_a_list_of_one(tmp_path):
    """data.options as prepare-data takes them: `accelerations: 4` is [4] (as --acc 4) and
    `val: vol1` one volume id, not its letters."""
    from sftkd_cli.reproduce.data import checked_options

    path = tmp_path / "plan.yaml"
    path.write_text("plan: 1\ndata: {source: nifti, root: raw, out: d, options: {accelerations: 4, val: vol1, size: [16, 16]}}\n")
    plan = load_plan(path)
    options = checked_options(plan.data.source, plan.data.options, "plan.yaml: data")
    assert (options.accelerations, options.val, options.size) == ((4.0,), ("vol1",), (16, 16))


def test_stage_recipe_errors_name_the_stage(tmp_path, tiny_dataset):
    plan = load_plan(write_plan(tmp_path, tiny_dataset, "  evaluate: {}\n"), ["sft.student=D2C3"])
    with pytest.raises(SftkdError, match="plan.yaml: stage sft: .*must have the same number of cascades"):
        build_stages(plan)
    text = write_plan(tmp_path, tiny_dataset).read_text().replace("student: {}", "student: {recipe: nowhere.yaml}")
    (tmp_path / "plan.yaml").write_text(text)
    with pytest.raises(SftkdError, match="stage student: recipe nowhere.yaml not found"):
        build_stages(load_plan(tmp_path / "plan.yaml"))


def test_only_selects_by_id_kind_and_glob(tmp_path, tiny_dataset):
    stages = build_stages(load_plan(write_plan(tmp_path, tiny_dataset)))
    assert select(stages, ["kd"]) == {"std-kd-at", "sft-kd-at"}
    assert select(stages, ["eval-*"]) == {s.id for s in stages if s.kind == "evaluate"}
    assert select(stages, ["teacher", "report"]) == {"teacher", "report"}
    with pytest.raises(SftkdError, match="--only nope: matches no stage"):
        select(stages, ["nope"])
    assert select(stages, ["kd,teacher", " report "]) == {"std-kd-at", "sft-kd-at", "teacher", "report"}
    with pytest.raises(SftkdError, match=r"^only 'kd': expected a list of names, e\.g\. \['kd'\], not a string$"):
        select(stages, "kd")  # was read letter by letter: "--only k: matches no stage"


def test_only_skips_a_stage_whose_teacher_is_not_trained(tmp_path, tiny_dataset):
    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    outcome = run_plan(plan, only=["std-kd-at"], console=quiet())
    (result,) = outcome.results
    assert result.status == "skipped" and "teacher not complete" in result.note
    assert not (plan.runs_dir / "std-kd-at").exists()
    assert outcome.failed == [] and outcome.blocked == {"std-kd-at": result.note}  # a caller sees it could not run


def test_cli_only_with_needs_left_out_shows_them_blocked_and_fails(tmp_path, tiny_dataset):
    """--only kd with no teacher trained: the dry run says which stages are blocked and why, and
    the run (which runs what it can: nothing here) exits 2 naming them."""
    runner = CliRunner()
    path = write_plan(tmp_path, tiny_dataset)
    dry = runner.invoke(app, ["reproduce", str(path), "--dry-run", "--only", "kd,eval-*kd*"], env={"COLUMNS": "250"})
    assert dry.exit_code == 0, dry.output
    rows = {line.split("│")[1].strip(): line for line in dry.output.splitlines() if line.count("│") > 3}
    assert "blocked (teacher not complete" in rows["std-kd-at"] and "blocked (sft not complete" in rows["sft-kd-at"]
    assert "blocked (std-kd-at cannot run)" in rows["eval-std-kd-at"]
    result = runner.invoke(app, ["reproduce", str(path), "--only", "kd,eval-*kd*", "train.device=cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: 4 stages not run: std-kd-at, sft-kd-at, eval-std-kd-at, eval-sft-kd-at") and "--only" in last
    assert not (tmp_path / "runs" / "std-kd-at").exists()


def test_an_override_given_twice_with_two_values_is_refused(tmp_path, tiny_dataset):
    """As for the training commands: the plan applies its overrides in order, so the last would win silently."""
    path = write_plan(tmp_path, tiny_dataset)
    result = CliRunner().invoke(app, ["reproduce", str(path), "--dry-run", "train.epochs=3", "train.epochs=4"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: override train.epochs=3 and override train.epochs=4 disagree; give train.epochs once"], result.output
    same = CliRunner().invoke(app, ["reproduce", str(path), "--dry-run", "train.epochs=3", "train.epochs=3"])
    assert same.exit_code == 0, same.output


def test_load_plan_refuses_an_override_given_twice_with_two_values(tmp_path, tiny_dataset):
    """The library took the last silently; the rule is load_recipe's, which load_plan checks its overrides with."""
    path = write_plan(tmp_path, tiny_dataset)
    with pytest.raises(SftkdError, match=r"^override train.epochs=3 and override train.epochs=4 disagree; give train.epochs once$"):
        load_plan(path, ["train.epochs=3", "train.epochs=4"])
    assert load_plan(path, ["train.epochs=3", "train.epochs=3"]).overrides == ("train.epochs=3", "train.epochs=3")


def test_a_trial_run_with_another_recipe_is_refused_in_the_dry_run_and_the_run(tmp_path, tiny_dataset):
    """A run begun with an override the plan does not have (a quick trial) cannot be resumed by
    the plan: the dry run says so, and the stage fails saying what differs and what to do."""
    runner = CliRunner()
    path = write_plan(tmp_path, tiny_dataset)
    trial = runner.invoke(app, ["reproduce", str(path), "--only", "teacher", "train.device=cpu", "train.epochs=1",
                                "train.max_steps_per_epoch=1"])
    assert trial.exit_code == 0, trial.output
    dry = runner.invoke(app, ["reproduce", str(path), "--dry-run", "--only", "teacher", "train.device=cpu"],
                        env={"COLUMNS": "400"})
    assert "refused (" in dry.output and "train.max_steps_per_epoch was 1, now 0" in dry.output, dry.output
    result = runner.invoke(app, ["reproduce", str(path), "--only", "teacher", "train.device=cpu"])
    assert result.exit_code == 2, result.output
    assert "the run differs from the plan: delete" in result.output and "give that file" not in result.output
    assert load_checkpoint(tmp_path / "runs" / "teacher" / "checkpoints" / "last.pt")["epoch"] == 1  # untouched
    from sftkd_cli.reproduce.estimate import measured_epoch

    def teacher(*overrides):
        return next(s for s in build_stages(load_plan(path, ["train.device=cpu", *overrides])) if s.id == "teacher")

    assert measured_epoch(teacher()) is None  # the trial's short epochs do not time the plan's
    assert measured_epoch(teacher("train.max_steps_per_epoch=1")) > 0
    # an epoch resumed in its middle records only the part after the resume: the median ignores it
    history = tmp_path / "runs" / "teacher" / "history.jsonl"
    row = json.loads(history.read_text().splitlines()[0])
    rows = [{**row, "epoch": e, "seconds": s} for e, s in ((1, 2.0), (2, 2.2), (3, 0.01))]
    history.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert measured_epoch(teacher("train.max_steps_per_epoch=1")) == 2.0


def test_finished_runs_are_not_reused_on_other_data(tmp_path, tiny_dataset):
    """The same plan and runs folder pointed at other data (e.g. another --data-root): the runs
    trained on the first data are refused, not skipped as up to date; a moved copy of the same
    data (same manifest fingerprint) reuses them."""
    import shutil

    from sftkd_cli.reproduce.stages import plan_conflict

    first = load_plan(write_plan(tmp_path, tiny_dataset), ["train.device=cpu"])
    assert not run_plan(first, only=["teacher"], console=quiet()).failed
    moved = Path(shutil.copytree(tiny_dataset, tmp_path / "moved"))
    other = Path(shutil.copytree(tiny_dataset, tmp_path / "other"))
    (other / "manifest.json").write_text((other / "manifest.json").read_text().replace("{", '{"note": "other", ', 1))

    def teacher(data: Path):
        plan = load_plan(write_plan(tmp_path, data, name=f"{data.name}.yaml"), ["train.device=cpu"])
        return next(s for s in build_stages(plan) if s.id == "teacher")

    assert plan_conflict(teacher(moved)) == ""
    assert "data.path was" in plan_conflict(teacher(other)) and "(other data)" in plan_conflict(teacher(other))


def test_a_moved_dataset_is_evaluated_where_it_is_now(tmp_path, tiny_dataset):
    """The dataset moved to another folder (same fingerprint) and the plan's data.out changed with
    it: the trained runs are up to date, and an evaluation that has to run reads the data where
    the plan says it is now, not where the run's recipe.yaml saw it."""
    import shutil

    before = Path(shutil.copytree(tiny_dataset, tmp_path / "dataA"))
    first = load_plan(write_plan(tmp_path, before), ["train.device=cpu"])
    assert not run_plan(first, only=["teacher"], console=quiet()).failed
    after = before.rename(tmp_path / "dataB")
    plan = load_plan(write_plan(tmp_path, after), ["train.device=cpu"])
    outcome = run_plan(plan, only=["teacher", "eval-teacher"], console=quiet())
    assert statuses(outcome) == {"teacher": "skipped", "eval-teacher": "done"}, outcome.results
    metrics = json.loads((plan.runs_dir / "teacher" / "metrics.json").read_text())
    assert metrics["dataset"]["path"] == str(after)

    other = Path(shutil.copytree(after, tmp_path / "other"))  # other data: --only eval-* refuses it too
    (other / "manifest.json").write_text((other / "manifest.json").read_text().replace("{", '{"note": "other", ', 1))
    (plan.runs_dir / "teacher" / "metrics.json").unlink()
    outcome = run_plan(load_plan(write_plan(tmp_path, other), ["train.device=cpu"]), only=["eval-teacher"], console=quiet())
    assert outcome.results[0].status == "failed" and "(other data)" in outcome.results[0].note, outcome.results
    assert not (plan.runs_dir / "teacher" / "metrics.json").exists()


# ----------------------------------------------------------------------------- end to end


def test_smoke_plan_end_to_end_then_everything_is_skipped(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = load_plan(ROOT / "recipes" / "plans" / "smoke.yaml")
    runs = tmp_path / "runs"
    plan = dataclasses.replace(plan, data=DataSpec("prepared", tiny_dataset), runs_dir=runs, report_dir=runs / "report")
    first = run_plan(plan, console=quiet())
    assert set(statuses(first).values()) == {"done", "skipped"} and statuses(first)["data"] == "skipped"
    assert [r.id for r in first.results if r.status == "skipped"] == ["data"]
    for name in ("teacher", "student", "sft", "std-kd-at", "sft-kd-at"):
        assert last_epoch(runs / name) == 2
        assert (runs / name / "metrics.json").is_file()
        # recon.h5 only where the report's grid reads it (gigabytes each at fastMRI's size)
        assert (runs / name / "recon.h5").is_file() is (name != "sft")
    assert not (runs / "sft" / "eval-student" / "recon.h5").exists()
    assert json.loads((runs / "sft" / "eval-student" / "metrics.json").read_text())["role"] == "sft-student"
    report = runs / "report"
    text = (report / "report.md").read_text()
    teacher = json.loads((runs / "teacher" / "metrics.json").read_text())["metrics"]["PSNR"]["mean"]
    assert "| Teacher | " in text and f"{teacher:.2f} ±" in text and "Wilcoxon" in text and "eval-student" not in text.split("## Plan status")[0]
    rows = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if line.startswith("| ")]
    assert rows.index("Std-KD (AT)") < rows.index("SFT-KD-Recon (AT)")
    assert "| **SFT-KD-Recon (AT) > Std-KD (AT)** |" in text and "no counterpart in the paper" in text
    assert "Stage time of this invocation before the report (summed over stages" in text  # not wall time
    assert "[compare.csv](compare.csv)" in text and (report / "compare.csv").is_file()
    for figure in ("box", "curves", "grid"):
        assert (report / f"{figure}.png").stat().st_size > 1000 and (report / f"{figure}.pdf").stat().st_size > 1000
        assert f"]({figure}.png)" in text
    assert "| sft-kd-at | done |" in text
    # the paper's Table 1 layout: what `compare --group paper runs/<plan>` prints, after the verdict
    assert paper_markdown(runs) in text and f"`sftkd compare --group paper {runs} --format markdown`" in text
    assert text.index("### Verdict") < text.index("### In the paper's Table 1 layout") < text.index("Every run with all")
    ((header, rows),) = paper_tables(text)
    assert header == ["Dataset", "Model", "4x Std-KD PSNR/SSIM", "4x SFT-KD-Recon PSNR/SSIM"]
    assert rows == {"ZF": [psnr_ssim(runs / "teacher", "zero_filled"), "-"],  # no SFT-Student: inside the sft run
                    "Teacher": [psnr_ssim(runs / "teacher"), psnr_ssim(runs / "sft")],
                    "Student": [psnr_ssim(runs / "student"), "-"],
                    "AT": [psnr_ssim(runs / "std-kd-at"), psnr_ssim(runs / "sft-kd-at")]}

    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*") if p.is_file() and p.parent.name != "report"}
    second = run_plan(plan, console=quiet())
    assert set(statuses(second).values()) == {"skipped"}
    assert all(r.note.startswith("up to date") for r in second.results)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}

    third = run_plan(plan, only=["report"], console=quiet())  # asked for explicitly: rewritten
    assert statuses(third) == {"report": "done"}
    assert "| teacher | done |" in (report / "report.md").read_text()  # earlier statuses are kept


def test_interrupted_plan_continues_where_it_stopped(tmp_path, tiny_dataset, monkeypatch):
    from sftkd_cli.training.engine import Trainer

    paper = (
        "paper:\n  title: Table 1 (test)\n  columns: [4x Std-KD, 4x SFT-KD-Recon]\n"
        "  rows:\n    Teacher: [40.05/0.9785, 40.23/0.9799]\n    AT: [39.76/0.9769, 40.07/0.9789]\n"
    )
    plan = load_plan(write_plan(tmp_path, tiny_dataset, paper))
    report_epoch = Trainer._report_epoch

    def interrupt_sft(self, row, improved):  # Ctrl-C after the SFT run's first epoch
        report_epoch(self, row, improved)
        if self.run.path.name == "sft":
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_report_epoch", interrupt_sft)
    with pytest.raises(RunInterrupted, match="stopped at stage sft"):
        run_plan(plan, console=quiet())
    assert last_epoch(plan.runs_dir / "sft") == 1 and last_epoch(plan.runs_dir / "teacher") == 2
    teacher_stamp = (plan.runs_dir / "teacher" / "checkpoints" / "last.pt").stat().st_mtime_ns

    monkeypatch.setattr(Trainer, "_report_epoch", report_epoch)
    outcome = run_plan(plan, console=quiet())
    got = statuses(outcome)
    assert (got["teacher"], got["student"], got["sft"]) == ("skipped", "skipped", "resumed")
    assert got["std-kd-at"] == got["sft-kd-at"] == got["eval-sft"] == got["report"] == "done"
    assert "from 1/2 epochs" in next(r.note for r in outcome.results if r.id == "sft")
    assert last_epoch(plan.runs_dir / "sft") == 2
    assert [row["epoch"] for row in map(json.loads, (plan.runs_dir / "sft" / "history.jsonl").read_text().splitlines())] == [1, 2]
    assert (plan.runs_dir / "teacher" / "checkpoints" / "last.pt").stat().st_mtime_ns == teacher_stamp

    text = (plan.report_dir / "report.md").read_text()
    teacher = json.loads((plan.runs_dir / "teacher" / "metrics.json").read_text())["metrics"]
    ours = f"{teacher['PSNR']['volume_mean']:.2f}/{teacher['SSIM']['volume_mean']:.4f}"  # beside the paper: over volumes
    assert f"| Teacher | {ours} | 40.05/0.9785 |" in text and "metrics.json's volume_mean" in text
    sft_kd = json.loads((plan.runs_dir / "sft-kd-at" / "metrics.json").read_text())["metrics"]
    assert "| 40.07/0.9789 |" in text and f"{sft_kd['PSNR']['mean']:.2f}/{sft_kd['SSIM']['mean']:.4f}" in text


def test_an_evaluation_split_the_dataset_lacks_fails_the_data_stage_before_training(tmp_path, tiny_dataset):
    """stages.evaluate.split names a split of the dataset, which the plan file alone cannot know:
    the data stage checks it, so a typo fails before any training, not after all of it."""
    plan = load_plan(write_plan(tmp_path, tiny_dataset, "  evaluate: {split: tset}\n"), ["train.device=cpu"])
    outcome = run_plan(plan, only=["data", "teacher", "eval-teacher"], console=quiet())
    data, teacher, evaluation = outcome.results
    assert data.status == "failed" and data.note == (f"{plan.path}: stages.evaluate.split: split 'tset' not in dataset "
                                                     f"{tiny_dataset} (has train, val, test); did you mean test?"), data.note
    assert teacher.status == evaluation.status == "skipped" and not (plan.runs_dir / "teacher").exists()


@pytest.mark.parametrize("figures, expected", [
    ("{volume: nosuchvol}", "figures.volume: 'nosuchvol' is not a volume of split 'val' of dataset {data} (has vol1)"),
    ("{volume: vol1, slice: 999}", "figures.slice: 999 is not a slice of volume vol1 in dataset {data} (it has 3: 0 to 2)"),
    ("{slice: 999}", "figures.slice: 999 is not a slice of volume vol1 (the middle one of split 'val'; no figures.volume) "
                     "in dataset {data} (it has 3: 0 to 2)"),
])
def test_a_figure_slice_the_dataset_lacks_fails_the_data_stage_before_training(tmp_path, tiny_dataset, figures, expected):
    """figures.volume and figures.slice name a slice of the evaluated split, which the plan file
    alone cannot know: the data stage checks them, so a typo fails before any training, not in
    the report after all of it."""
    plan = load_plan(write_plan(tmp_path, tiny_dataset, f"figures: {figures}\n"), ["train.device=cpu"])
    outcome = run_plan(plan, only=["data", "teacher"], console=quiet())
    data, teacher = outcome.results
    assert data.status == "failed" and data.note == f"{plan.path}: " + expected.format(data=tiny_dataset), data.note
    assert teacher.status == "skipped" and not (plan.runs_dir / "teacher").exists()


def test_the_dry_run_refuses_a_figure_slice_or_split_the_dataset_in_use_lacks(tmp_path, tiny_dataset, nifti_writer):
    """A dataset the plan will use as it is (source prepared, or prepared with the plan's
    options) already tells a dry run what the data stage would refuse; one the data stage will
    prepare first cannot, so the dry run only says it checks it."""
    from sftkd_cli.reproduce.graph import planned_actions

    def data_action(extra: str, data: str = "") -> tuple[str, str]:
        path = write_plan(tmp_path, tiny_dataset, extra)
        if data:
            path.write_text(path.read_text().replace(f"source: prepared\n  out: {tiny_dataset}", data))
        plan = load_plan(path, ["train.device=cpu"])
        stages = build_stages(plan)
        return planned_actions(plan, stages, {s.id for s in stages})["data"]

    wrong = "figures: {volume: vol1, slice: 999}\n"
    assert data_action(wrong) == ("refused", f"{tmp_path / 'plan.yaml'}: figures.slice: 999 is not a slice of volume vol1 "
                                             f"in dataset {tiny_dataset} (it has 3: 0 to 2)")
    assert data_action("figures: {volume: vol1, slice: 2}\n") == ("check", f"use {tiny_dataset}")
    assert data_action("  evaluate: {split: tset}\n")[1].endswith("did you mean test?")

    for i in range(3):
        nifti_writer.write(tmp_path / "raw" / f"vol{i}.nii.gz", nifti_writer.phantom((28, 24, 3), seed=i))
    nifti = f"source: nifti\n  out: {tmp_path / 'data'}\n  root: {tmp_path / 'raw'}\n  options: {{size: [16, 16], val: [vol1]}}"
    assert data_action(wrong, nifti)[0] == "check"  # not prepared yet: only the data stage can tell
    data_action("", nifti)
    assert statuses(run_plan(load_plan(tmp_path / "plan.yaml", ["train.device=cpu"]), only=["data"],
                             console=quiet()))["data"] == "done"
    assert data_action(wrong, nifti) == ("refused", f"{tmp_path / 'plan.yaml'}: figures.slice: 999 is not a slice of "
                                                    f"volume vol1 in dataset {tmp_path / 'data'} (it has 3: 0 to 2)")
    assert data_action(wrong, nifti.replace("[16, 16]", "[20, 20]"))[0] == "check"  # to be prepared again first


def test_an_evaluation_split_that_is_a_path_is_refused_when_the_plan_loads(tmp_path, tiny_dataset):
    """stages.evaluate.split names RUN/eval-split-<split>/: a path there is refused at load."""
    with pytest.raises(SftkdError, match=r"stages.evaluate.split '\.\./x' is not a plain name"):
        load_plan(write_plan(tmp_path, tiny_dataset, "  evaluate: {split: ../x}\n"), ["train.device=cpu"])


def test_an_up_to_date_dataset_that_cannot_be_written_passes_the_data_stage(tmp_path, nifti_writer, read_only):
    for i in range(3):
        nifti_writer.write(tmp_path / "raw" / f"vol{i}.nii.gz", nifti_writer.phantom((28, 24, 3), seed=i))
    path = write_plan(tmp_path, tmp_path / "data")
    path.write_text(path.read_text().replace(
        "source: prepared", f"source: nifti\n  root: {tmp_path / 'raw'}\n  options: {{size: [16, 16], val: [vol1]}}"))
    plan = load_plan(path, ["train.device=cpu"])
    assert statuses(run_plan(plan, only=["data"], console=quiet()))["data"] == "done"
    read_only(tmp_path / "data")
    data = run_plan(plan, only=["data"], console=quiet()).results[0]
    assert (data.status, data.note) == ("skipped", "up to date"), data.note


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_data_is_prepared_stops_the_plan(tmp_path, nifti_writer, monkeypatch, sig):
    """Ctrl-C or SIGTERM during the data stage (one stage at a time) stops the plan as it stops
    during training: the status so far, 'run the same command again', exit 130 (143 after SIGTERM),
    no report."""
    import sftkd_cli.data.prepare as prep_mod

    for i in range(5):
        nifti_writer.write(tmp_path / "raw" / f"vol{i}.nii.gz", nifti_writer.phantom((28, 24, 3), seed=i))
    path = write_plan(tmp_path, tmp_path / "data")
    path.write_text(path.read_text().replace(
        "source: prepared", f"source: nifti\n  root: {tmp_path / 'raw'}\n  options: {{size: [16, 16], val: [vol1]}}"))
    real = prep_mod.write_volume_h5

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)  # arrives while the first volume is written
        return real(*args, **kwargs)

    monkeypatch.setattr(prep_mod, "write_volume_h5", signalled)
    result = CliRunner().invoke(app, ["reproduce", str(path), "train.device=cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 128 + sig, result.output
    assert "stopped at stage data; run the same command again" in result.output
    assert "interrupted" in result.output and "failed" not in result.output  # the status table
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs" / "teacher").exists()
    assert not (tmp_path / "runs" / "report" / "report.md").exists()


def test_a_training_stage_stopped_by_a_signal_says_how_a_plans_user_goes_on(tmp_path, tiny_dataset):
    """The stage's note in the status table: training's line, with its '--resume' advice (reproduce
    has no --resume) in a plan's words."""
    from sftkd_cli.errors import RunInterrupted

    def stopped(recipe, **kwargs):
        raise RunInterrupted("runs/teacher: stopped by Ctrl-C at epoch 1, step 3; continue with --resume")

    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    out = io.StringIO()
    with pytest.raises(RunInterrupted, match="stopped at stage teacher; run the same command again"):
        run_plan(plan, console=Console(file=out, width=300), trainers={**default_trainers(), "teacher": stopped})
    table = " ".join(out.getvalue().split())
    assert "stopped by Ctrl-C at epoch 1, step 3; running the plan again resumes it" in table and "--resume" not in table


def test_failed_stage_skips_its_dependants_and_others_go_on(tmp_path, tiny_dataset):
    def broken(recipe, **kwargs):
        raise RuntimeError("boom")

    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    outcome = run_plan(plan, console=quiet(), trainers={**default_trainers(), "sft": broken})
    got = statuses(outcome)
    assert got["sft"] == "failed" and [r.id for r in outcome.failed] == ["sft"]
    assert got["sft-kd-at"] == got["eval-sft"] == "skipped"
    assert "sft failed" in next(r.note for r in outcome.results if r.id == "sft-kd-at")
    assert "eval-sft-kd-at" in got and got["eval-sft-kd-at"] == "skipped"
    assert got["teacher"] == got["std-kd-at"] == got["eval-std-kd-at"] == got["report"] == "done"
    assert "RuntimeError: boom" in (plan.report_dir / "errors.log").read_text()
    assert "| sft | failed |" in (plan.report_dir / "report.md").read_text()

    again = statuses(run_plan(plan, console=quiet()))
    assert again["sft"] == again["sft-kd-at"] == "done" and again["std-kd-at"] == "skipped"


def test_random_init_stage_fills_the_models_table_and_draws_attention(tmp_path, tiny_dataset):
    extra = (
        "    sft_random_init: true\n"
        "paper:\n  layout: models\n  columns: [Teacher, KD, SFT-KD-Recon (random), SFT-KD-Recon]\n"
        "  rows:\n    PSNR: [40.05 +/- 2.023, 39.76 +/- 1.899, 39.99 +/- 1.947, 40.07 ± 1.983]\n    SSIM: [0.9785, '-', 0.9785, 0.9789]\n"
    )
    plan = load_plan(write_plan(tmp_path, tiny_dataset, extra))
    outcome = run_plan(plan, only=["data", "teacher", "sft", "*kd-at*", "eval-teacher", "report"], console=quiet())
    assert not outcome.failed and statuses(outcome)["sft-kd-at-random"] == "done"
    runs = plan.runs_dir
    assert load_checkpoint(runs / "sft-kd-at-random" / "checkpoints" / "best.pt")["init"] == "random"
    assert load_checkpoint(runs / "sft-kd-at" / "checkpoints" / "best.pt")["init"].endswith(":student")
    text = (plan.report_dir / "report.md").read_text()
    assert "](attention.png)" in text and (plan.report_dir / "attention.pdf").stat().st_size > 1000
    psnr = {}
    for run in ("teacher", "std-kd-at", "sft-kd-at-random", "sft-kd-at"):
        stat = json.loads((runs / run / "metrics.json").read_text())["metrics"]["PSNR"]
        psnr[run] = f"{stat['volume_mean']:.2f}"  # the mean over volumes, as the reference evaluate.py's
    row = next(line for line in text.splitlines() if line.startswith("| PSNR |"))
    assert row == (f"| PSNR | {psnr['teacher']} | 40.05 +/- 2.023 | {psnr['std-kd-at']} | 39.76 +/- 1.899 | "
                   f"{psnr['sft-kd-at-random']} | 39.99 +/- 1.947 | {psnr['sft-kd-at']} | 40.07 ± 1.983 |")
    assert next(line for line in text.splitlines() if line.startswith("| SSIM |")).split(" | ")[4] == "-"
    assert "± 2 x the sample std over volumes" in text
    ((_, rows),) = paper_tables(text)  # the random-init student would fill SFT-KD-Recon's AT cell twice
    assert rows["AT"] == [psnr_ssim(runs / "std-kd-at"), psnr_ssim(runs / "sft-kd-at")]
    assert "Left out: sft-kd-at-random (random-init students" in text and "## Problems" not in text
    assert paper_markdown(*(runs / run for run in ("teacher", "std-kd-at", "sft-kd-at"))) in text


def test_stop_on_error_stops_after_the_failure(tmp_path, tiny_dataset):
    def broken(recipe, **kwargs):
        raise SftkdError("teacher data is wrong")

    plan = load_plan(write_plan(tmp_path, tiny_dataset))
    got = run_plan(plan, keep_going=False, console=quiet(), trainers={**default_trainers(), "teacher": broken, "student": broken})
    assert statuses(got)["teacher"] == "failed"
    assert {r.status for r in got.results[2:]} == {"skipped"} and "--stop-on-error" in got.results[2].note
    assert not (plan.runs_dir / "sft").exists()


# ----------------------------------------------------------------------------- CLI


def test_cli_dry_run_and_errors(tmp_path, tiny_dataset):
    runner = CliRunner()
    path = write_plan(tmp_path, tiny_dataset)
    result = runner.invoke(app, ["reproduce", str(path), "--dry-run", "--only", "train,report"])
    assert result.exit_code == 0, result.output
    assert "sft-kd-at" in result.output and "run" in result.output and "eval-teacher" not in result.output
    assert not (tmp_path / "runs").exists()
    bad = runner.invoke(app, ["reproduce", str(path), "train.epoch=3"])
    assert bad.exit_code == 2 and "unknown key train.epoch" in bad.output and "Traceback" not in bad.output
    owned = runner.invoke(app, ["reproduce", str(path), "run.dir=elsewhere"])
    assert owned.exit_code == 2 and "run.dir is set by the plan" in owned.output
    recipe = runner.invoke(app, ["reproduce", str(ROOT / "recipes" / "demo" / "teacher.yaml")])
    assert recipe.exit_code == 2 and "is this a recipe? use train-teacher" in recipe.output


def test_variants_share_the_teacher_and_fill_the_students_table(tmp_path, tiny_dataset):
    path = tmp_path / "students.yaml"
    path.write_text(
        f"plan: 1\ndata: {{source: prepared, out: {tiny_dataset}}}\nruns_dir: {tmp_path / 'runs'}\n"
        + TINY_BASE.replace("D3C2", "D4C2")
        + "shared: [teacher]\nvariants:\n  - {name: D3C2, overrides: {sft.student: D3C2}}\n"
        "  - {name: D2C2, overrides: {sft.student: D2C2}}\n"
        "stages: {teacher: {}, student: {}, sft: {}, kd: {methods: [at]}}\n"
        "paper:\n  layout: students\n  metrics: [PSNR, SSIM, HFN, VIF]\n  columns: [Original, KD, SFT-KD-Recon]\n"
        "  rows:\n    D4C2: [1/0.5/0.3/0.9, '-', '-']\n    D3C2: [2/0.5/0.3/0.9, 3/0.5/0.3/0.9, 4/0.5/0.3/0.9]\n"
    )
    plan = load_plan(path)
    outcome = run_plan(plan, console=quiet())
    assert not outcome.failed
    assert [r.id for r in outcome.results if r.kind == "teacher"] == ["teacher"]
    assert load_checkpoint(plan.runs_dir / "D2C2-std-kd-at" / "checkpoints" / "best.pt")["teacher_run"] == str(plan.runs_dir / "teacher")
    for group in ("D3C2", "D2C2"):
        for figure in ("box", "curves", "grid"):
            assert (plan.report_dir / f"{figure}-{group}.png").is_file()
        compared = json.loads((plan.report_dir / f"compare-{group}.json").read_text())
        assert {row["run"] for row in compared["rows"]} >= {"teacher", f"{group}-student", f"{group}-sft-kd-at"}
    text = (plan.report_dir / "report.md").read_text()
    kd = json.loads((plan.runs_dir / "D3C2-std-kd-at" / "metrics.json").read_text())["metrics"]
    ours = "/".join(f"{kd[m]['volume_mean']:.{d}f}" for m, d in (("PSNR", 2), ("SSIM", 4))) + f"/{kd['HFN']['volume_mean']:.4g}/{kd['VIF']['volume_mean']:.4f}"
    row = next(line for line in text.splitlines() if line.startswith("| D3C2 |"))
    assert f"| {ours} | 3/0.5/0.3/0.9 |" in row
    assert next(line for line in text.splitlines() if line.startswith("| D2C2 |")).endswith("| - |")


def test_acceleration_variants_fill_the_table1_columns(tmp_path, tiny_dataset):
    extra = (
        "paper:\n  columns: [4x Std-KD, 4x SFT-KD-Recon, 5x Std-KD, 5x SFT-KD-Recon]\n"
        "  rows:\n    AT: [1/0.1, 2/0.2, 3/0.3, 4/0.4]\n"
        "variants:\n  - {name: 4x, overrides: {data.acceleration: 4}}\n  - {name: 5x, overrides: {data.acceleration: 5}}\n"
    )
    plan = load_plan(write_plan(tmp_path, tiny_dataset, extra))
    outcome = run_plan(plan, only=["data", "*teacher", "*sft", "*kd-at", "eval-*kd-at", "report"], console=quiet())
    assert not outcome.failed
    cells, beside = [], []  # the paper layout's means over slices; beside the paper's numbers, over volumes
    for run in ("4x-std-kd-at", "4x-sft-kd-at", "5x-std-kd-at", "5x-sft-kd-at"):
        metrics = json.loads((plan.runs_dir / run / "metrics.json").read_text())
        assert metrics["dataset"]["acceleration"] == float(run[0])
        cells.append(f"{metrics['metrics']['PSNR']['mean']:.2f}/{metrics['metrics']['SSIM']['mean']:.4f}")
        beside.append(f"{metrics['metrics']['PSNR']['volume_mean']:.2f}/{metrics['metrics']['SSIM']['volume_mean']:.4f}")
    row = next(line for line in (plan.report_dir / "report.md").read_text().splitlines() if line.startswith("| AT |"))
    assert row == f"| AT | {beside[0]} | 1/0.1 | {beside[1]} | 2/0.2 | {beside[2]} | 3/0.3 | {beside[3]} | 4/0.4 |"
    (header4, rows4), (header5, rows5) = paper_tables((plan.report_dir / "report.md").read_text())  # one per variant
    assert header4[2:] == ["4x Std-KD PSNR/SSIM", "4x SFT-KD-Recon PSNR/SSIM"] and rows4["AT"] == cells[:2]
    assert header5[2:] == ["5x Std-KD PSNR/SSIM", "5x SFT-KD-Recon PSNR/SSIM"] and rows5["AT"] == cells[2:]


def test_variants_filling_the_same_paper_cells_get_a_paper_table_each(tmp_path, tiny_dataset):
    extra = (
        "shared: [teacher]\npaper:\n  columns: [4x Std-KD, 4x SFT-KD-Recon]\n  rows:\n    AT: [1/0.1, 2/0.2]\n"
        "variants:\n  - {name: a, overrides: {sft.w_imit: 1.0e-5}}\n  - {name: b, overrides: {sft.w_imit: 1.0}}\n"
    )
    plan = load_plan(write_plan(tmp_path, tiny_dataset, extra))
    outcome = run_plan(plan, only=["data", "teacher", "*-sft", "*-sft-kd-at", "eval-*-sft-kd-at", "report"], console=quiet())
    assert statuses(outcome)["report"] == "done" and not outcome.failed
    text = (plan.report_dir / "report.md").read_text()
    beside = text.split("## Beside the paper")[1].split("## Plan status")[0]
    assert "Not possible" not in beside and "one table per variant" in beside
    for group, chunk in zip("ab", beside.split("### Variant ")[1:], strict=True):
        assert chunk.startswith(f"{group}\n")
        cell = psnr_ssim(plan.runs_dir / f"{group}-sft-kd-at", mean="volume_mean")
        assert next(line for line in chunk.splitlines() if line.startswith("| AT |")) == f"| AT | - | 1/0.1 | {cell} | 2/0.2 |"


def test_seeds_train_each_stage_once_per_seed_and_the_verdict_counts_them(tmp_path, tiny_dataset):
    path = write_plan(tmp_path, tiny_dataset, "seeds: [42, 7]\n")
    runner = CliRunner()
    dry = runner.invoke(app, ["reproduce", str(path), "--dry-run"], env={"COLUMNS": "200"})
    assert dry.exit_code == 0, dry.output
    assert "teacher-s7" in dry.output and "eval-sft-kd-at-s7" in dry.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("seeds: [42, 7]", "seeds: [42, 7, 7]"))
    refused = runner.invoke(app, ["reproduce", str(bad), "--dry-run"])
    assert refused.exit_code == 2 and "seeds: seed 7 is listed twice" in refused.output and "Traceback" not in refused.output
    plan = load_plan(path)
    stages = {s.id: s for s in build_stages(plan)}
    assert stages["teacher"].recipe.train.seed == 42 and stages["teacher-s7"].recipe.train.seed == 7
    assert stages["std-kd-at-s7"].needs == ("data", "teacher-s7") and stages["sft-kd-at"].needs == ("data", "sft")
    assert stages["std-kd-at-s7"].recipe.distill.teacher_run == str(plan.runs_dir / "teacher-s7")
    outcome = run_plan(plan, console=quiet())
    assert not outcome.failed
    text = (plan.report_dir / "report.md").read_text()
    assert "seeds held" in text and "seed 7" in text and "(seeds 42, 7)" in text
    central = next(line for line in text.splitlines() if line.startswith("| **SFT-KD-Recon (AT) > Std-KD (AT)**"))
    assert central.split(" | ")[3] == str(_volumes(plan.runs_dir / "teacher"))  # pooled: the volumes, not seeds x slices
    assert (plan.report_dir / "compare-s7.csv").is_file() and (plan.report_dir / "compare.csv").is_file()
    # the paper's layout holds one run per cell: compare refuses the plan's two seeds, the report has a table per seed
    pooled = CliRunner().invoke(app, ["compare", "--group", "paper", str(plan.runs_dir)])
    assert pooled.exit_code == 2 and "both fill the paper cell" in pooled.stderr
    assert "One table per seed" in text and "Seed 42: " in text and "Seed 7: " in text
    # the figures show the first seed's runs only, and each heading and caption says so
    figures = [line for line in text.splitlines() if line.startswith("![")]
    headings = [line for line in text.splitlines()
                if line.startswith("### ") and line[4:].startswith(("PSNR", "Validation", "Reconstructions", "Attention"))]
    assert len(figures) == len(headings) == 4
    assert all("(seed 42)" in line and "seed 7" not in line for line in figures + headings), figures + headings
    assert "The figures below show seed 42's runs only" in text
    tables = paper_tables(text)
    assert len(tables) == 2
    for (header, rows), suffix in zip(tables, ("", "-s7")):  # the plan's seed order
        run = {name: plan.runs_dir / f"{name}{suffix}" for name in ("teacher", "student", "sft", "std-kd-at", "sft-kd-at")}
        assert header == ["Dataset", "Model", "4x Std-KD PSNR/SSIM", "4x SFT-KD-Recon PSNR/SSIM"]
        assert rows == {"ZF": [psnr_ssim(run["teacher"], "zero_filled"), "-"],
                        "Teacher": [psnr_ssim(run["teacher"]), psnr_ssim(run["sft"])],
                        "Student": [psnr_ssim(run["student"]), "-"],
                        "AT": [psnr_ssim(run["std-kd-at"]), psnr_ssim(run["sft-kd-at"])]}
        assert paper_markdown(*run.values()) in text


def _volumes(run: Path) -> int:
    return len({line.split(",")[0] for line in (run / "per_slice.csv").read_text().splitlines()[1:]})


def test_paper_plans_use_the_effective_imitation_weight_and_a_plan_keeps_the_formula(monkeypatch):
    """The reference code's imitation term is its L1 mean divided again by the teacher output's
    size, 1/(batch*H*W) of the formula: each paper SF-teacher's weight, from its own batch and its
    source's slice size (1.1e-5 at 150x150, 4.3e-6 at 240x240); the demo keeps 1e-5."""
    monkeypatch.chdir(ROOT)
    for name in ("table1-mrbrains", "table1-acdc", "table6-dcunet", "table9-sr"):
        plan = load_plan(ROOT / "recipes" / "plans" / f"{name}.yaml")
        height, width = plan.data.options.get("size", SOURCE_DEFAULTS[plan.data.source]["size"])
        sft = [s for s in build_stages(plan) if s.kind == "sft"]
        assert sft, name
        for stage in sft:
            effective = 1.0 / (stage.recipe.train.batch_size * height * width)
            assert stage.recipe.sft.w_imit == pytest.approx(effective, rel=1e-7), (name, stage.id)
    demo = {s.id: s for s in build_stages(load_plan(ROOT / "recipes" / "demo.yaml"))}
    assert demo["sft"].recipe.sft.w_imit == 1e-5
    both = {s.id: s for s in build_stages(load_plan(ROOT / "recipes" / "plans" / "sft-imitation-weight.yaml"))}
    assert both["paper-code-sft"].recipe.sft.w_imit == 1e-5 and both["formula-sft"].recipe.sft.w_imit == 1.0
    assert both["formula-sft-kd-at"].needs == ("data", "formula-sft") and both["formula-std-kd-at"].needs == ("data", "teacher")


def test_text_keys_in_a_plan_keep_their_text_as_in_a_recipe_file(tmp_path, tiny_dataset):
    """`data.val_split: no` is the split named "no", not false; `train.amp: On` is refused as typed."""
    text = write_plan(tmp_path, tiny_dataset).read_text()
    (tmp_path / "plan.yaml").write_text(text.replace("base:\n", "base:\n  data.val_split: no\n  eval:\n    split: 1.50\n"))
    plan = load_plan(tmp_path / "plan.yaml")
    assert (plan.base["data.val_split"], plan.base["eval.split"]) == ("no", "1.50")
    (tmp_path / "plan.yaml").write_text(text.replace("  teacher: {}\n", "  teacher: {overrides: {train.amp: On}}\n"))
    with pytest.raises(SftkdError, match="train.amp: expected one of off, bf16, fp16, got 'On'"):
        build_stages(load_plan(tmp_path / "plan.yaml"))


def test_a_number_without_a_point_is_a_number_where_one_is_expected_and_a_name_keeps_its_spelling(tmp_path, tiny_dataset):
    """YAML reads 1e-2 and 1e3 as text: `stages.compare.alpha: 1e-2` is 0.01, while a runs folder
    or variant named 1e3 stays 1e3 (not 1000.0, where earlier runs would not be found)."""
    text = write_plan(tmp_path, tiny_dataset, "  compare: {alpha: 1e-2}\n").read_text()
    text = text.replace(f"runs_dir: {tmp_path / 'runs'}", "runs_dir: 1e3\nvariants:\n  - name: 2e1\n    overrides: {}")
    (tmp_path / "plan.yaml").write_text(text)
    plan = load_plan(tmp_path / "plan.yaml")
    assert plan.compare["alpha"] == 0.01
    assert (str(plan.runs_dir), [v.name for v in plan.variants]) == ("1e3", ["2e1"])


def test_the_closing_error_of_a_failed_plan_says_what_the_first_stage_said(tmp_path):
    """A log's last line tells the cause: the failed stages and the first one's own message."""
    path = write_plan(tmp_path, tmp_path / "missing")
    result = CliRunner().invoke(app, ["reproduce", str(path), "--only", "data"])
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: 1 stage failed: data (see the status table); fix and run the same command "
                           f"again. data: {tmp_path / 'missing'}"), last


@pytest.mark.parametrize("notes, tail", [
    (["a\nb  c"], ". data: a b c"),
    (["first", "second"], ". First, data: first"),
    (["x" * 300], ". data: " + "x" * 197 + "..."),
    ([""], ""),
])
def test_the_closing_error_is_one_line_cut_short(notes, tail):
    from sftkd_cli.reproduce.display import failed_line
    from sftkd_cli.reproduce.stages import StageResult

    failed = [StageResult(sid, sid, "failed", note=note) for sid, note in zip(("data", "teacher"), notes)]
    line = failed_line(failed)
    assert line == (f"{counted(len(failed), 'stage')} failed: {', '.join(r.id for r in failed)} (see the status table); "
                    "fix and run the same command again" + tail)
    assert "\n" not in line


@pytest.mark.parametrize("width", [60, 80])
@pytest.mark.parametrize("plan_name", ["demo", "table1-mrbrains"])
def test_dry_run_table_shows_every_stage_s_run_and_recipe_whole(plan_name, width, tmp_path, monkeypatch):
    """In a narrow terminal or an 80-column log every run and recipe is shown whole (over lines if
    need be), relative to the runs folder and to the recipes' shared folder that the caption names:
    a cut path ('…acher.yaml') hid which of the 4x and 5x recipes a stage uses."""
    from sftkd_cli.reproduce import print_plan

    monkeypatch.chdir(tmp_path)
    plan = load_plan(plan_name)
    stages = build_stages(plan)
    console = Console(file=io.StringIO(), width=width)
    print_plan(plan, stages, {stage.id for stage in stages}, console)
    text = console.file.getvalue()
    rows: list[list[str]] = []  # per stage: its run and recipe cells, lines joined
    for line in text.splitlines():
        if line.startswith(("┡", "├")):  # a line between two stages
            rows.append(["", ""])
        elif line.startswith("│"):
            cells = [cell.strip() for cell in line.split("│")[1:-1]]
            rows[-1][0] += cells[4]
            rows[-1][1] += cells[5]
    recipes = sorted({s.recipe_file for s in stages if s.recipe_file})
    shared = os.path.commonpath(recipes)
    assert text.splitlines()[0] == f"plan {plan.name} ({plan.path})"  # whole, however narrow the table
    assert text.splitlines()[-1] == f"runs in {plan.runs_dir}/, recipes in {shared}/"
    expected = [(os.path.relpath(str(s.run), plan.runs_dir) if s.run and s.kind != "data" else
                 str(plan.report_dir.relative_to(plan.runs_dir)) if s.kind == "report" else str(plan.data.out),
                 os.path.relpath(s.recipe_file, shared) if s.recipe_file else ("defaults" if s.kind in TRAIN_KINDS else ""))
                for s in stages]
    assert [tuple(row) for row in rows] == expected
