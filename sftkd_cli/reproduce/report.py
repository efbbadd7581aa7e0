"""The plan's report folder: report.md (results tables, the verdict on the paper's claims, the
paper's numbers beside ours, the status table), the compare CSV/JSON files and the figures."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from sftkd_cli import __version__
from sftkd_cli.distill.catalog import method_label
from sftkd_cli.errors import SftkdError
from sftkd_cli.reproduce.display import format_seconds, total_seconds
from sftkd_cli.choices import PAPER_METRICS, TRAIN_KINDS, arm_key
from sftkd_cli.reproduce.kinds import EARLIER, MODEL_COLUMNS, REPORT_MD, STATUS_JSON, STUDENT_SETTINGS, marked_earlier
from sftkd_cli.reproduce.paper import paper_numbers, table1_column
from sftkd_cli.reproduce.report_folder import REPORT_HEADING, read_status, recorded_files, remove_stale_files, written_for
from sftkd_cli.reproduce.spec import Plan
from sftkd_cli.reproduce.stages import (
    Stage, StageResult, evaluation_complete, evaluation_dir, figure_method, grid_members, plan_conflict,
    writes_reconstructions,
)
from sftkd_cli.files import json_text, nan_if_null, write_run_file
from sftkd_cli.run_files import METRICS_JSON

if TYPE_CHECKING:
    from sftkd_cli.report.result_files import Stat


def write_report(plan: Plan, stages: Sequence[Stage], results: Sequence[StageResult], console: Console) -> list[str]:
    """Write <report>/report.md (+ compare CSV/JSON, figures, status.json); returns the problems met
    (status.json keeps them too: a report with problems is written again next time).

    Per group (variant): the compact results table (role names), the verdict on the paper's
    claims (paired Wilcoxon tests, per seed and pooled), the runs in the paper's Table 1 layout
    (as `sftkd compare --group paper` gives them, one table per seed), links to the full
    comparison files, box plots, validation curves and the reconstruction grid (the first seed's
    runs, the seed named in each heading when the plan has several); then the paper's
    numbers beside ours (the first seed's runs, when the plan has `paper:`; a table per variant when
    variants fill the same cells), and the plan status table.
    """
    out = plan.report_dir
    out.mkdir(parents=True, exist_ok=True)
    earlier_files = recorded_files(read_status(out / STATUS_JSON))  # the earlier report's, before status.json is replaced
    problems: list[str] = []
    evaluated, left_out = _evaluated(plan, stages)
    problems += [f"{stage_id}: left out of the results: {why}" for stage_id, why in left_out]
    lines = [f"{REPORT_HEADING}{plan.name}", ""]
    if plan.description:
        lines += [plan.description.strip(), ""]
    lines += [
        f"- plan: `{plan.path}`", f"- dataset: `{plan.data.out}` (source {plan.data.source})",
        f"- runs: `{plan.runs_dir}`",
        *([f"- overrides from the command line (every stage): `{' '.join(plan.overrides)}`"] if plan.overrides else []),
        f"- written {datetime.datetime.now().isoformat(timespec='seconds')} by sftkd {__version__}",
        *[f"- left out of the results (see Problems): {stage_id}" for stage_id, _ in left_out], "",
    ]
    written: set[str] = set()  # the compare files and figures written now (status.json's "files")
    for group in _groups(plan):
        members = [s for s in evaluated if s.group in (group, "")]
        lines += _group_section(plan, stages, group, members, console, problems, written)
    if plan.paper is not None:  # one run per cell: the first seed's
        lines += _paper_section(plan, stages, [s for s in evaluated if s.seed in (None, *plan.seeds[:1])], problems)
    status = _merged_status(out / STATUS_JSON, stages, results, written_for(plan))
    lines += ["## Plan status", ""]
    rows = [(r.id, r.status, f"{r.seconds:.1f}", r.note) for r in status]
    rows.append(("report", "done", "", "this file"))
    lines += _md_table(("stage", "status", "seconds", "note"), rows, numeric=(2,))
    lines += ["", f"Stage time of this invocation before the report (summed over stages, some of which may "
              f"have run side by side): {format_seconds(total_seconds(results))}"
              + (f"; rows marked {EARLIER} come from a previous invocation." if len(status) > len(results) else "."), ""]
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
    records = [dataclasses.asdict(r) for r in status]
    # names sftkd chooses: a link or FIFO there is replaced, never written through (`write_run_file`)
    write_run_file(out / STATUS_JSON, json_text({"format": 1, "plan": str(plan.path), "written_for": written_for(plan),
                                                 "stages": records, "problems": problems,  # `report_complete` reads them
                                                 "files": sorted(written)}))  # the next report removes those it does not write
    write_run_file(out / REPORT_MD, "\n".join(lines).rstrip() + "\n")
    remove_stale_files(out, earlier_files, written)
    return problems


def _groups(plan: Plan) -> list[str]:
    return [v.name for v in plan.variants] or [""]


def _evaluated(plan: Plan, stages: Sequence[Stage]) -> tuple[list[Stage], list[tuple[str, str]]]:
    """The evaluation stages whose scores are current for the plan, and (stage id, why) for each
    one with a metrics.json that is not: a run that differs from the plan (`plan_conflict`: a
    changed override, other data) or scores that are not of the checkpoint, split and checkpoint
    choice the plan evaluates now (`evaluation_complete`). Those are left out of the tables, the
    verdict and the figures, so that a refused or retrained run's old scores never read as results."""
    current: list[Stage] = []
    left_out: list[tuple[str, str]] = []
    for stage in stages:
        if stage.kind != "evaluate" or not (evaluation_dir(stage) / METRICS_JSON).is_file():
            continue
        try:
            conflict = plan_conflict(stage)
        except SftkdError as exc:  # e.g. a damaged recipe.yaml or checkpoint: cannot tell, so not shown
            conflict = str(exc)
        if conflict:
            left_out.append((stage.id, conflict))
        elif not evaluation_complete(stage, plan):
            left_out.append((stage.id, f"{evaluation_dir(stage) / METRICS_JSON} does not score the run's current "
                                       f"{plan.evaluate['checkpoint']} checkpoint on split {plan.evaluate['split']}"
                                       + (" with its recon.h5" if writes_reconstructions(stage, plan) else "")
                                       + f"; run the plan again (stage {stage.id}) to evaluate it anew"))
        else:
            current.append(stage)
    return current, left_out


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] | None = None) -> list[str]:
    """A Markdown table; `numeric` columns are right-aligned (default: all but the first)."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    right = set(range(1, len(header)) if numeric is None else numeric)
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def _merged_status(path: Path, stages: Sequence[Stage], results: Sequence[StageResult],
                   key: dict[str, Any] | None = None) -> list[StageResult]:
    """This invocation's results, plus earlier ones (from status.json) for stages not run now
    (--only); none when status.json was written for another `key` (`written_for`: another runs
    folder, dataset or overrides, whose rows are not these runs'). One of an sftkd that did not
    record it is taken as this plan's: its rows are kept, and the report is written again once."""
    earlier: dict[str, dict[str, Any]] = {}
    status = read_status(path)
    if status is not None and (key is None or status.get("written_for", key) == key):
        try:
            earlier = {entry["id"]: entry for entry in status["stages"]}
        except (KeyError, TypeError):
            pass
    current = {r.id: r for r in results}
    merged = []
    for stage in stages:
        if stage.id in current:
            merged.append(current[stage.id])
        elif stage.id in earlier and stage.kind != "report":
            entry = earlier[stage.id]
            note, seconds = str(entry.get("note", "")), entry.get("seconds", 0.0)  # null: a NaN written as JSON
            merged.append(StageResult(stage.id, stage.kind, str(entry.get("status", "")),
                                      nan_if_null(seconds), marked_earlier(note)))
    return merged


def _seed_of(stage: Stage) -> int:
    """The seed a stage's run was trained with: the plan's, else its recipe's train.seed."""
    if stage.seed is not None:
        return stage.seed
    assert stage.recipe is not None
    return stage.recipe.train.seed


def _group_section(plan: Plan, stages: Sequence[Stage], group: str, members: list[Stage],
                   console: Console, problems: list[str], written: set[str]) -> list[str]:
    """One variant (with the shared stages): the compact results table, the verdict on the paper's
    claims, the paper's Table 1 layout per seed, the full comparison per seed (CSV/JSON files) and
    the figures (the first seed's runs: with several seeds, each heading names it); the names of
    the files written are added to `written`."""
    from sftkd_cli.report.compare import collect_runs, compare_runs, load_run_result
    from sftkd_cli.report.formats import render, to_rich, view
    from sftkd_cli.report.verdict import evaluate_claims, main_table, verdict_markdown

    suffix = f"-{group}" if group else ""
    lines = [f"## Results{': ' + group if group else ''}", ""]
    if not members:
        return lines + ["No evaluated runs yet.", ""]
    alpha = float(plan.compare["alpha"])
    found = {_seed_of(s) for s in members}
    seeds = [seed for seed in plan.seeds if seed in found] or sorted(found)  # the plan's order: its first seed first
    first = [s for s in members if _seed_of(s) == seeds[0]]
    try:
        arms: dict[str, dict[int, Any]] = {}
        for stage in members:
            arms.setdefault(stage.label, {})[_seed_of(stage)] = load_run_result(evaluation_dir(stage))
        metrics = [m for m in plan.compare["metrics"] if m in PAPER_METRICS] or list(plan.compare["metrics"])[:2]
        lines += main_table(arms, metrics)
        lines += ["", f"Mean ± std over {'seeds x ' if len(seeds) > 1 else ''}validation slices"
                  + (f" (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else f" (seed {seeds[0]})")
                  + "; Δ to the teacher in dB.", ""]
        if "PSNR" in next(iter(next(iter(arms.values())).values())).metrics:
            paper, note = _paper_psnr(plan, members)
            lines += verdict_markdown(evaluate_claims(arms, "PSNR", alpha, paper=paper), alpha, paper_note=note)
    except SftkdError as exc:
        problems.append(f"results{' ' + group if group else ''}: {exc}")
        lines += [f"Results table not possible: {exc}", ""]
    lines += _paper_layout(plan, members, seeds, group, problems)
    links = []
    for seed in seeds:
        tail = suffix + ("" if seed == seeds[0] else f"-s{seed}")
        try:
            runs, warnings = collect_runs([evaluation_dir(s) for s in members if _seed_of(s) == seed])
            comparison = compare_runs(runs, metrics=list(plan.compare["metrics"]))
            write_run_file(plan.report_dir / f"compare{tail}.csv", render(comparison, "csv", alpha))
            write_run_file(plan.report_dir / f"compare{tail}.json", render(comparison, "json", alpha))
            written.update((f"compare{tail}.csv", f"compare{tail}.json"))
            if seed == seeds[0]:
                console.print(to_rich(view(comparison, alpha, stacked=True)))
            lines += [f"- warning: {w}" for w in warnings]
            links.append(f"[compare{tail}.csv](compare{tail}.csv) / [.json](compare{tail}.json)"
                         + (f" (seed {seed})" if len(seeds) > 1 else ""))
        except SftkdError as exc:
            problems.append(f"compare{' ' + group if group else ''} seed {seed}: {exc}")
            lines += [f"Comparison not possible (seed {seed}): {exc}", ""]
    if links:
        lines += ["", "Every run with all metrics, Δ to the teacher and Wilcoxon p-values over paired volumes against the student: "
                  + ", ".join(links) + ".", ""]
    tag = ", ".join(part for part in (group, f"seed {seeds[0]}" if len(plan.seeds) > 1 else "") if part)
    if len(plan.seeds) > 1:
        lines += [f"The figures below show seed {seeds[0]}'s runs only (the tables above pool the seeds).", ""]
    for title, make in _figure_makers(plan, tag, first):
        try:
            output = make(plan.report_dir / f"{title[0]}{suffix}")
            written.update(path.name for path in output.paths)
            png = output.paths[0].name
            lines += [f"### {title[1]}", "", f"![{title[1]}]({png}) ([PDF]({output.paths[1].name}))", ""]
        except Exception as exc:  # noqa: BLE001 - a figure must not hide the tables
            problems.append(f"figure {title[0]}{suffix}: {exc}")
            lines += [f"### {title[1]}", "", f"Not drawn: {exc}", ""]
    return lines


def _paper_layout(plan: Plan, members: Sequence[Stage], seeds: Sequence[int], group: str,
                  problems: list[str]) -> list[str]:
    """The group's runs in the paper's Table 1 layout, one Markdown table per seed, made by the
    function and renderer of `sftkd compare --group paper --format markdown` (so the two agree).

    That layout holds one run per cell and refuses two, so seeds are never averaged here: each
    seed gets its own table (the results table pools them). Left out, as compare on the plan's
    runs folder leaves them out or cannot place them: the SFT run's student blocks (an
    evaluation inside the SFT run) and random-init students (a second SFT-KD-Recon cell).
    """
    from sftkd_cli.report.compare import collect_runs, paper_table
    from sftkd_cli.report.formats import render
    from sftkd_cli.runs import expand_runs_folder

    lines = ["### In the paper's Table 1 layout", ""]
    if len(seeds) > 1:
        lines += ["One table per seed: `sftkd compare --group paper` puts one run in each cell and refuses two, "
                  "so it does not average seeds (the results table above pools them).", ""]
    random = [_run_name(plan, evaluation_dir(s)) for s in members if s.random_init]
    if random:
        lines += [f"Left out: {', '.join(random)} (random-init students would fill their method's SFT-KD-Recon "
                  "cell twice; they are in the comparison files).", ""]
    whole = {p.resolve() for p in expand_runs_folder(plan.runs_dir) if (p / METRICS_JSON).is_file()}
    for seed in seeds:
        dirs = [evaluation_dir(s) for s in members if _seed_of(s) == seed and s.model_role is None and not s.random_init]
        if not dirs:
            continue
        if {d.resolve() for d in dirs} == whole:
            source = f"`sftkd compare --group paper {plan.runs_dir} --format markdown` gives this table"
        else:
            names = ", ".join(_run_name(plan, d) for d in dirs)
            source = (f"`sftkd compare --group paper --format markdown` on the runs {names} "
                      f"(in `{plan.runs_dir}`) gives this table")
        lines += [(f"Seed {seed}: " if len(seeds) > 1 else "") + source + ".", ""]
        try:
            runs, _ = collect_runs(dirs)
            lines += render(paper_table(runs), "markdown").rstrip("\n").split("\n") + [""]
        except SftkdError as exc:
            problems.append(f"paper layout{' ' + group if group else ''} seed {seed}: {exc}")
            lines += [f"Not possible: {exc}", ""]
    return lines


def _run_name(plan: Plan, path: Path) -> str:
    """A run folder as named in the plan's runs folder (its path when it lies elsewhere)."""
    try:
        return str(path.relative_to(plan.runs_dir))
    except ValueError:
        return str(path)


def _paper_psnr(plan: Plan, members: Sequence[Stage]) -> tuple[dict[str, float], str]:
    """The paper's PSNR per arm key for a group (Table 1 layout), and a note saying where it comes from."""
    from sftkd_cli.report.compare import SFT_KD, STD_KD

    paper = plan.paper
    if paper is None:
        return {}, ("This plan has no counterpart in the paper (the paper's numbers are for MRBrainS and ACDC "
                    "at 150 epochs): read the ordering and the tests, not the values.")
    if paper.layout != "table1" or "PSNR" not in paper.metrics:
        return {}, "The paper's numbers for this plan are in the section beside the paper below."
    acceleration = next(s.recipe.data.acceleration for s in members if s.recipe is not None)
    index = paper.metrics.index("PSNR")
    out: dict[str, float] = {}
    slots = {"teacher": ("Teacher", STD_KD), "sft": ("Teacher", SFT_KD), "student": ("Student", STD_KD)}
    for method in plan.methods:
        label = method_label(method)
        slots.update({arm_key("std-kd", method): (label, STD_KD), arm_key("sft-kd", method): (label, SFT_KD)})
    for key, (row, setting) in slots.items():
        for i, column in enumerate(paper.columns):
            if table1_column(column) == (acceleration, setting) and row in paper.rows:
                numbers = paper_numbers(paper.rows[row][i], len(paper.metrics))
                if numbers is not None:
                    out[key] = numbers[index]
    note = f"Paper: {paper.title}, {acceleration:g}x: PSNR of the plan's `paper:` rows (150 epochs on the full data)."
    return out, note


def _figure_makers(plan: Plan, tag: str, members: list[Stage]) -> list[tuple[tuple[str, str], Callable[[Path], Any]]]:
    """(file stem, title) and a function drawing it, for each figure of a group; `tag` (the group,
    and the seed when the plan has several) ends every title and figure heading."""
    from sftkd_cli.report import figures
    from sftkd_cli.report.attention import attention_residues_from_runs

    label = f" ({tag})" if tag else ""
    metrics = list(plan.figures["metrics"])
    boxes = {s.label: evaluation_dir(s) for s in members}
    curves = {s.label: s.run for s in members if s.model_role is None}
    makers: list[tuple[tuple[str, str], Callable[[Path], Any]]] = [
        (("box", f"{' and '.join(metrics)} per slice{label}"),
         lambda stem: figures.box_plots_from_runs(boxes, stem, metrics, context=f"{plan.name}{label}")),
        (("curves", f"Validation curves{label}"),
         lambda stem: figures.validation_curves_from_runs(curves, stem, plan.figures["curve"], context=f"{plan.name}{label}")),
    ]
    method = figure_method(plan)
    by_label = {s.label: s for s in members if s.model_role is None}
    grid = {title: evaluation_dir(by_label[key]) for key, title in grid_members(plan) if key in by_label}
    if grid:
        recipe = next(s.recipe for s in members if s.recipe is not None)
        assert recipe is not None
        box = plan.figures["box"]
        makers.append((("grid", f"Reconstructions and residues{label}"), lambda stem: figures.reconstruction_grid_from_runs(
            plan.data.out, recipe.data.acceleration, grid, stem, plan.figures["volume"], plan.figures["slice"],
            None if box is None else tuple(int(b) for b in box), context=f"{plan.name}{label}")))
    std, sft = arm_key("std-kd", method), arm_key("sft-kd", method)
    if method and method != "none" and {std, sft} <= set(by_label):
        kd = [(std, f"Std-KD ({method})"), (sft, f"SFT-KD ({method})"),
              (arm_key("sft-kd", method, True), f"SFT-KD random init ({method})")]
        students = {title: by_label[key].run for key, title in kd if key in by_label}
        acceleration = by_label[sft].recipe.data.acceleration  # type: ignore[union-attr]
        makers.append((("attention", f"Attention-map residues to the teacher (AT taps, Fig. 6){label}"),
                       lambda stem: attention_residues_from_runs(
                           students, stem, plan.data.out, acceleration, plan.figures["volume"], plan.figures["slice"],
                           split=plan.evaluate["split"], checkpoint=plan.evaluate["checkpoint"],
                           context=f"{plan.name}{label}", keys=("figures.volume", "figures.slice"))))
    return makers


#: our cells of the plan's `paper:` block: (row, column) -> (the run filling it, the cell's text)
Cells = dict[tuple[str, str], tuple[str, str]]


def _paper_section(plan: Plan, stages: Sequence[Stage], evaluated: list[Stage], problems: list[str]) -> list[str]:
    """The paper's numbers beside ours, cell by cell.

    One table when the variants fill different cells (variants per acceleration or per student,
    as the paper's tables are laid out), else one table per variant: variants of one setting
    (e.g. a loss weight) fill the same cells, and a cell shows one run.
    """
    paper = plan.paper
    assert paper is not None
    lines = [f"## Beside the paper: {paper.title}", ""]
    groups = _groups(plan)
    try:
        filled = {group: _our_cells(plan, [s for s in evaluated if s.group in (group, "")]) for group in groups}
    except SftkdError as exc:
        problems.append(f"paper table: {exc}")
        return lines + [f"Not possible: {exc}", ""]
    merged: Cells = {key: cell for cells in filled.values() for key, cell in cells.items()}
    if not merged:
        problems.append("paper table: no evaluated runs yet")
        return lines + ["Not possible: no evaluated runs yet", ""]
    if all(merged[key] == cell for cells in filled.values() for key, cell in cells.items()):  # no cell filled twice
        return lines + _paper_table(plan, stages, merged)
    lines += [f"The variants {', '.join(groups)} fill the same cells of the paper's table: one table per variant.", ""]
    for group in groups:
        own = [s for s in stages if s.group in (group, "")]
        lines += [f"### Variant {group}", ""] + (_paper_table(plan, own, filled[group]) if filled[group]
                                                 else ["No evaluated runs yet.", ""])
    return lines


def _paper_table(plan: Plan, stages: Sequence[Stage], cells: Cells) -> list[str]:
    """Our cells beside the paper's, a column pair per paper column, and what the cells are."""
    paper = plan.paper
    assert paper is not None
    rows = list(paper.rows) + sorted({row for row, _ in cells} - set(paper.rows))
    header = ["Metric" if paper.layout == "models" else "Model"] + [f"{c} {who}" for c in paper.columns for who in ("ours", "paper")]
    body = []
    for row in rows:
        line = [row]
        for i, column in enumerate(paper.columns):
            line += [cells[(row, column)][1] if (row, column) in cells else "-", paper.rows[row][i] if row in paper.rows else "-"]
        body.append(line)
    epochs = sorted({s.recipe.train.epochs for s in stages if s.kind in TRAIN_KINDS and s.recipe is not None})
    seed = f"seed {plan.seeds[0]}'s runs, " if len(plan.seeds) > 1 else ""  # a cell shows one run
    spread = (" The paper's ± is not our spread: the reference evaluate.py prints ± 2 x the sample std over "
              "volumes, and the paper does not say which spread its ± is; ours shows none here (sftkd's mean ± std "
              "over slices: the results table above and compare.csv)." if paper.layout == "models" else "")
    return _md_table(header, body) + [
        "", f"Ours: the mean over validation volumes of the per-volume values (metrics.json's volume_mean), as the "
        f"paper's reference evaluate.py averages them; the results above are means over slices.{spread} Ours: "
        f"{seed}{', '.join(map(str, epochs))} epochs on `{plan.data.out}` ({plan.data.source}); the paper: 150 "
        f"epochs on its own copy of the data.", ""]


def _volume_mean(stat: Stat, run: str, metric: str) -> float:
    """The mean over volumes that sits beside the paper's numbers; refused when metrics.json lacks it."""
    if stat.volume_mean is None:
        raise SftkdError(f"{run}: metrics.json has no {metric} volume_mean (an earlier sftkd's); "
                         f"re-run `sftkd evaluate` on it")
    return stat.volume_mean


def _our_cells(plan: Plan, evaluated: list[Stage]) -> Cells:
    """Our cells of the paper block from one group's evaluated runs (empty when there are none)."""
    from sftkd_cli.report.formats import format_value

    paper = plan.paper
    assert paper is not None
    if paper.layout == "models":
        return _our_model_cells(plan, evaluated)
    return {key: (owner, "/".join(format_value(m, values[m]) for m in paper.metrics))
            for key, (owner, values) in _our_paper_cells(plan, evaluated).items()}


def _our_paper_cells(plan: Plan, evaluated: list[Stage]) -> dict[tuple[str, str], tuple[str, dict[str, float]]]:
    """Our values keyed like the paper block: (row, column) -> (the run, {metric: mean})."""
    from sftkd_cli.report.compare import collect_runs, paper_table

    paper = plan.paper
    assert paper is not None
    primary = [s for s in evaluated if s.model_role is None and not s.random_init]  # random init: Table 5 only
    if not primary:
        return {}
    if paper.layout == "table1":
        runs, _ = collect_runs([evaluation_dir(s) for s in primary])
        table = paper_table(runs, metrics=list(paper.metrics))
        cells: dict[tuple[str, str], tuple[str, dict[str, float]]] = {}
        for block in table.blocks[:1]:
            for (model, acc, setting), cell in block.cells.items():
                for column in paper.columns:
                    if table1_column(column) == (acc, setting):
                        cells[(model, column)] = (cell.run, {m: _volume_mean(cell.stats[m], cell.run, m) for m in paper.metrics})
        return cells
    from sftkd_cli.report.compare import load_run_result

    method = figure_method(plan)
    out = {}
    for stage in primary:
        if stage.trained not in STUDENT_SETTINGS or (stage.method and stage.method != method):
            continue
        assert stage.recipe is not None
        column = STUDENT_SETTINGS[stage.trained]
        if column not in paper.columns:
            continue
        result = load_run_result(evaluation_dir(stage))
        missing = [m for m in paper.metrics if m not in result.metrics]
        if missing:
            raise SftkdError(f"{evaluation_dir(stage)}/metrics.json: no {', '.join(missing)}")
        out[(stage.recipe.model.name, column)] = (stage.id, {m: _volume_mean(result.metrics[m], result.label, m)
                                                             for m in paper.metrics})
    return out


def _our_model_cells(plan: Plan, evaluated: list[Stage]) -> Cells:
    """Our mean over volumes for the `models` layout: (metric, column) -> (the run, text); KD columns use figures.method."""
    from sftkd_cli.report.compare import load_run_result
    from sftkd_cli.report.formats import format_value

    paper = plan.paper
    assert paper is not None
    method = figure_method(plan)
    kinds = {kind: column for column, kind in MODEL_COLUMNS.items() if column in paper.columns}
    cells: Cells = {}
    owners: dict[str, Stage] = {}
    for stage in evaluated:
        kind = arm_key(stage.trained, random_init=stage.random_init)
        if kind not in kinds or (stage.method and stage.method != method):
            continue
        column = kinds[kind]
        if column in owners:
            raise SftkdError(f"column {column}: both {owners[column].id} and {stage.id} fill it")
        owners[column] = stage
        result = load_run_result(evaluation_dir(stage))
        for metric in paper.metrics:
            if metric not in result.metrics:
                raise SftkdError(f"{evaluation_dir(stage)}/metrics.json: no {metric}")
            cells[(metric, column)] = (stage.id, format_value(metric, _volume_mean(result.metrics[metric], result.label, metric)))
    return cells
