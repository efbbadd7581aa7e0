"""Compare evaluated runs: load their results, check they are comparable, and tabulate them.

The means and standard deviations shown are the ones `sftkd evaluate` wrote to metrics.json
(over slices). The paired Wilcoxon signed-rank tests pair VOLUMES, not slices (the slices of
one volume are not independent): a run's value of a volume is the mean of its slices' values in
per_slice.csv, and volumes are paired by name, never by row order. With `convention="fastmri"`
the results are those of `sftkd evaluate --convention fastmri` (RUN/eval-fastmri/: mean ± std
over volumes, per_volume.csv, one value per volume).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sftkd_cli.choices import (BEST, CHECKPOINT_NAMES, DEFAULT_METRICS, FASTMRI_METRICS, PAPER_METRICS, SCORED_ROLES, SFT_STUDENT,
                               SFT_TEACHER)
from sftkd_cli.data.format import INPUT_LABELS, dataset_task
from sftkd_cli.distill.catalog import method_label
from sftkd_cli.errors import SftkdError, listed_names
from sftkd_cli.metrics_file import read_metrics
from sftkd_cli.report.result_files import (Stat, checked_stats, number, optional_number, optional_str, read_per_unit,
                                            stats_block)
from sftkd_cli.report.signed_rank import wilcoxon_p
from sftkd_cli.run_files import METRICS_JSON, PER_SLICE_CSV, RECIPE_YAML, SCORE_FILES
from sftkd_cli.runs import eval_chain, expand_runs_folder, is_run_folder
from sftkd_cli.scoring import check_convention, nan_mean_std

ZF_NAME = "ZF"
ZF_ROLE = "zero-filled"
#: the ZF row's role by dataset task: for super-resolution the input is the interpolated LR image
INPUT_ROLES = {task: long for task, (long, _) in INPUT_LABELS.items()}
#: the ZF row's label in the paper layout by dataset task ("LR interp." for super-resolution, as Table 9)
INPUT_ROWS = {task: short for task, (_, short) in INPUT_LABELS.items()}
NONE = "none"  # `reference="none"` / `baseline="none"` switch the automatic choice off
#: compare's default metrics per score convention
CONVENTION_METRICS: dict[str, tuple[str, ...]] = {"paper": DEFAULT_METRICS, "fastmri": FASTMRI_METRICS}

STD_KD = "Std-KD"
SFT_KD = "SFT-KD-Recon"
PAPER_SETTINGS: tuple[str, ...] = (STD_KD, SFT_KD)

# Rows: teachers first, then students, then everything else by name.
_ROLE_RANK = {role: rank for rank, role in enumerate(SCORED_ROLES)}
# Paper layout: (row label, column) of each non-KD role; KD runs go to their method's row.
_PAPER_SLOT = {
    "teacher": ("Teacher", STD_KD),
    SFT_TEACHER: ("Teacher", SFT_KD),
    "student": ("Student", STD_KD),
    SFT_STUDENT: ("SFT-Student", SFT_KD),
}
_PAPER_FIXED_ROWS = (*INPUT_ROWS.values(), "Teacher", "Student", "SFT-Student")
_KD_TEACHER_SETTING = {"teacher": STD_KD, SFT_TEACHER: SFT_KD}
_DATASET_ORDER = ("mrbrains", "acdc")  # the paper's Table 1 order; other sources follow by name


@dataclass(frozen=True)
class RunResult:
    """What `sftkd evaluate` wrote into one run directory."""

    name: str  # the directory name: how runs are identified
    label: str  # the run's path as the user gave it (RUN for RUN/eval-fastmri), for messages
    role: str | None
    method: str | None
    teacher_role: str | None
    params: int | None
    latency_ms: float | None
    source: str | None
    fingerprint: str
    split: str
    acceleration: float
    metrics: dict[str, Stat]
    zero_filled: dict[str, Stat]
    slices: tuple[tuple[str, int], ...]  # (volume, slice) of each per_slice.csv row
    columns: dict[str, np.ndarray]  # per_slice.csv column -> values aligned with `slices`
    task: str = "recon"  # recon or sr (super-resolution)
    checkpoint: str = BEST  # which checkpoint was scored: best, last, or "a checkpoint file"
    unit: str = "slice"  # what a per-unit row is: a slice (paper convention) or a volume (fastmri; slice -1)
    #: when the scores are of another checkpoint than the run holds now (`evaluate.scores_checkpoint`):
    #: the `sftkd evaluate` command that scores it again; empty otherwise
    rerun: str = ""
    scores_file: str = PER_SLICE_CSV  # the per-unit CSV the columns were read from, for messages

    @property
    def convention(self) -> str:
        """The score convention of these scores (`SCORE_FILES`), told by what a row scores."""
        return next(c for c, (_, _, unit) in SCORE_FILES.items() if unit == self.unit)

    def column(self, name: str) -> np.ndarray:
        """Per-unit values of one column of the scores CSV; a clear error if it is missing."""
        if name not in self.columns:
            hint = "" if self.convention == "paper" else f" --convention {self.convention}"
            raise SftkdError(f"{self.scores_file}: no column '{name}' (re-run `sftkd evaluate {self.label}{hint}`)")
        return self.columns[name]

    @property
    def dataset_key(self) -> str:
        """The dataset's source name, or a short fingerprint when metrics.json has no source."""
        return self.source or f"data-{self.fingerprint[:8]}"


@dataclass(frozen=True)
class Row:
    """One line of a comparison: a run, or the zero-filled input."""

    name: str
    role: str
    params: int | None
    latency_ms: float | None
    stats: dict[str, Stat]
    delta: dict[str, float]  # mean minus the reference's mean; empty without a reference
    pvalue: dict[str, float]  # Wilcoxon p vs the baseline; empty without one and for the baseline


@dataclass(frozen=True)
class Comparison:
    """Runs evaluated on the same data, split and acceleration, side by side."""

    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    reference: str | None
    baseline: str | None
    n_paired: int | None  # volumes paired for the Wilcoxon tests
    dataset: str
    fingerprint: str
    split: str
    acceleration: float
    unit: str = "slice"  # means and stds over slices, or over volumes (fastmri convention); pairs: volumes
    notes: tuple[str, ...] = ()  # why there is no Δ or p column, when it could not be chosen


@dataclass(frozen=True)
class PaperCell:
    """One PSNR/SSIM cell of the paper's Table 1 and the run that fills it."""

    run: str
    stats: dict[str, Stat]


@dataclass(frozen=True)
class PaperBlock:
    """The rows of one dataset in the paper's Table 1."""

    dataset: str
    models: tuple[str, ...]
    cells: dict[tuple[str, float, str], PaperCell]  # (model row, acceleration, setting) -> cell


@dataclass(frozen=True)
class PaperTable:
    """The paper's Table 1 layout: dataset x model rows, acceleration x setting columns."""

    metrics: tuple[str, ...]
    split: str
    accelerations: tuple[float, ...]
    blocks: tuple[PaperBlock, ...]
    unit: str = "slice"


# ----------------------------------------------------------------------------- loading


def results_folder(run_dir: Path, convention: str = "paper") -> Path:
    """Where a run's results of `convention` lie: the run itself (paper) or RUN/eval-fastmri/."""
    return run_dir / SCORE_FILES[convention][0] if SCORE_FILES[convention][0] else run_dir


def run_of(path: Path, convention: str = "paper") -> Path:
    """The run (or evaluation folder) that `path` stands for: RUN for RUN/eval-fastmri given in the
    fastmri convention, so that both read (and name) the same results; else `path` itself."""
    folder = SCORE_FILES[convention][0]
    path = path.absolute() if path.name in ("", ".", "..") else path  # `.` inside the folder has no name
    own = bool(folder) and path.name == folder and path.is_dir() and not (path / RECIPE_YAML).is_file()
    return path.parent if own else path


def _run_name(folder: Path) -> str:
    """A run's name in the tables: its folder's; an evaluation folder inside a run is named with
    the run's (sft/eval-student, X/eval-amp-bf16), so that two runs' are told apart."""
    run, levels = eval_chain(folder)
    return "/".join([run.name, *levels])


def load_run_result(run_dir: str | Path, convention: str = "paper") -> RunResult:
    """Read metrics.json and per_slice.csv of an evaluated run directory (fastmri convention:
    RUN/eval-fastmri/metrics.json and per_volume.csv; `run_dir` may be RUN/eval-fastmri itself).
    `rerun` is set when the scores are of another checkpoint than the run holds now."""
    from sftkd_cli.eval_folders import evaluate_command
    from sftkd_cli.evaluate import scored_checkpoint, scores_checkpoint  # torch: only when runs are read

    check_convention(convention)
    if not Path(run_dir).is_dir():
        raise SftkdError(f"{run_dir}: not a run directory")
    path = run_of(Path(run_dir), convention)
    label = str(path)
    _, per_unit, unit = SCORE_FILES[convention]
    metrics_file = results_folder(path, convention) / METRICS_JSON
    if not metrics_file.is_file():
        hint = "" if convention == "paper" else f" --convention {convention}"
        raise SftkdError(f"{label}: not evaluated yet (no {metrics_file.relative_to(path)}); run `sftkd evaluate {label}{hint}`")
    info = read_metrics(metrics_file)
    where = str(metrics_file)
    if info.get("convention", "paper") != convention:
        raise SftkdError(f"{where}: scored in the {info.get('convention')} convention, expected {convention}; "
                         f"pass --convention {info.get('convention')} or the run folder itself")
    dataset = info.get("dataset")
    if not isinstance(dataset, dict):
        raise SftkdError(f"{where}: dataset: expected an object with fingerprint, split and acceleration")
    for key in ("fingerprint", "split"):
        if not isinstance(dataset.get(key), str):
            raise SftkdError(f"{where}: dataset.{key}: expected a string")
    scores_file = metrics_file.parent / per_unit
    slices, columns = read_per_unit(scores_file, unit)
    metrics = checked_stats(label, stats_block(info.get("metrics"), f"{where}: metrics"), columns, "", str(scores_file))
    zero_filled = checked_stats(label, stats_block(info.get("zero_filled"), f"{where}: zero_filled"), columns, "ZF_",
                                str(scores_file))
    params = optional_number(info.get("params"), f"{where}: params")
    scored = scored_checkpoint(metrics_file.parent, info)
    return RunResult(
        name=_run_name(path.resolve()),
        label=label,
        role=optional_str(info.get("role")),
        method=optional_str(info.get("method")),
        teacher_role=optional_str(info.get("teacher_role")),
        params=None if params is None else int(params),
        latency_ms=optional_number(info.get("latency_ms_per_slice"), f"{where}: latency_ms_per_slice"),
        source=optional_str(dataset.get("source")),
        fingerprint=dataset["fingerprint"],
        split=dataset["split"],
        acceleration=number(dataset.get("acceleration"), f"{where}: dataset.acceleration"),
        task=dataset_task(dataset),
        checkpoint=_checkpoint_kind(info.get("checkpoint")),
        metrics=metrics,
        zero_filled=zero_filled,
        slices=slices,
        columns=columns,
        unit=unit,
        scores_file=str(scores_file),
        rerun=evaluate_command(metrics_file.parent, info)
        if scored is not None and scores_checkpoint(info, scored) is False else "",
    )


def collect_runs(paths: Iterable[str | Path], strict: bool = False, convention: str = "paper") -> tuple[list[RunResult], list[str]]:
    """Load every evaluated run among `paths` (e.g. a shell glob), returning (runs, warnings).

    A folder of runs (a plan's `runs/<plan>/`) stands for the runs in it. Non-directories are
    skipped silently; directories that are not runs (no recipe.yaml and no metrics.json) are
    skipped with a warning; runs not yet evaluated are named in one
    warning and skipped, or refused in one error when `strict`. With no evaluated run left, the
    error says why the first skipped path was skipped. `convention` picks which of a run's
    results are read (fastmri: those of `sftkd evaluate --convention fastmri`).
    """
    check_convention(convention)
    dirs: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SftkdError(f"{path}: no such run directory")
        for run in (run_of(found, convention) for found in expand_runs_folder(path)):
            if run.is_dir() and run.resolve() not in seen:
                seen.add(run.resolve())
                dirs.append(run)
    scored = lambda p: (results_folder(p, convention) / METRICS_JSON).exists()  # noqa: E731
    not_runs = [str(p) for p in dirs if not is_run_folder(p) and not scored(p)]
    # paper: a run folder without metrics.json; fastmri: any run or evaluation folder without eval-fastmri/
    evaluable = (lambda p: (p / RECIPE_YAML).exists()) if convention == "paper" else is_run_folder
    pending = [str(p) for p in dirs if not scored(p) and evaluable(p)]
    not_run = "not a run directory (no recipe.yaml or metrics.json)"
    unevaluated = _not_evaluated(pending, convention) if pending else ""
    messages = []
    if not_runs:
        messages.append(f"{', '.join(not_runs)}: {not_run}; skipped")
    if pending:
        if strict:
            raise SftkdError(f"{', '.join(pending)}: {unevaluated}")
        messages.append(f"{', '.join(pending)}: {unevaluated}; skipped")
    runs = [load_run_result(p, convention) for p in dirs if scored(p)]
    messages += [f"{run.label}: scores are of an earlier checkpoint; re-run `{run.rerun}`" for run in runs if run.rerun]
    if not runs:
        # one line that keeps the most useful warning: the first path named, the others counted
        skipped, why = (pending, unevaluated) if pending else (not_runs, not_run)
        detail = f"; {_first_of(skipped)}: {why}" if skipped else " (expected run directories with metrics.json)"
        raise SftkdError(f"compare: no evaluated run among the given paths{detail}")
    _check_unique_names(runs)
    return runs, messages


def _not_evaluated(pending: Sequence[str], convention: str) -> str:
    """Why `pending` runs are skipped and the command that evaluates them (one run: its own)."""
    flag = "" if convention == "paper" else f" --convention {convention}"
    hint = f"`sftkd evaluate {pending[0]}{flag}`" if len(pending) == 1 else f"`sftkd evaluate RUN{flag}` on each"
    missing = METRICS_JSON if convention == "paper" else f"{SCORE_FILES[convention][0]}/{METRICS_JSON}"
    return f"not evaluated yet (no {missing}); run {hint}"


def _first_of(paths: Sequence[str]) -> str:
    """'A' for one path, 'A (and 2 more)' for several: one line however many were given."""
    return paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"


# ----------------------------------------------------------------------------- checks


def _check_unique_names(runs: Sequence[RunResult], zero_filled: bool = False) -> None:
    """Refuse two runs of one name, or one named as the ZF row: their rows could not be told apart."""
    by_name: dict[str, RunResult] = {}
    for run in runs:
        if zero_filled and run.name == ZF_NAME:
            raise SftkdError(f"{run.label}: a run named {ZF_NAME} cannot be told from the zero-filled row; rename or copy its folder, or use --no-zf")
        if run.name in by_name:
            raise SftkdError(f"{by_name[run.name].label} and {run.label}: two runs named '{run.name}' (runs are identified by directory name)")
        by_name[run.name] = run


_SAME_DATA = "compare runs evaluated on the same data, split and acceleration"


def _checkpoint_kind(which: Any) -> str:
    """metrics.json's checkpoint as compare matches it: best, last, or any other file alike."""
    if which is None:  # written before metrics.json named it: evaluate's default
        return BEST
    return str(which) if which in CHECKPOINT_NAMES else "a checkpoint file"


def _data_differences(a: RunResult, b: RunResult) -> list[str]:
    diffs = []
    if a.fingerprint != b.fingerprint:
        diffs.append(f"data (dataset fingerprint {a.fingerprint[:12]} vs {b.fingerprint[:12]})")
    if a.split != b.split:
        diffs.append(f"split ({a.split} vs {b.split})")
    if a.acceleration != b.acceleration:
        diffs.append(f"acceleration ({a.acceleration:g}x vs {b.acceleration:g}x)")
    return diffs


def check_same_checkpoint(runs: Sequence[RunResult]) -> None:
    """Refuse scores of different checkpoints (a run's best beside another's last), naming the first pair."""
    for other in runs[1:]:
        if other.checkpoint != runs[0].checkpoint:
            raise SftkdError(f"{runs[0].label} vs {other.label}: scores of different checkpoints ({runs[0].checkpoint} "
                             f"vs {other.checkpoint}); evaluate them with the same --checkpoint")


def check_same_data(runs: Sequence[RunResult], advice: str | None = None) -> None:
    """Refuse runs evaluated on different data, split or acceleration, naming the first pair;
    `advice` says what to do instead (it depends on the layout; None: compare's, which names
    --group paper only where that layout takes the runs: one split, and another dataset or acceleration)."""
    for other in runs[1:]:
        diffs = _data_differences(runs[0], other)
        if diffs:
            paper = (all(run.split == runs[0].split for run in runs)
                     and (other.dataset_key, other.acceleration) != (runs[0].dataset_key, runs[0].acceleration))
            advice = advice or _SAME_DATA + (" (or use --group paper)" if paper else "")
            raise SftkdError(f"{runs[0].label} vs {other.label}: evaluated on different {' and '.join(diffs)}; {advice}")


def check_same_slices(a: RunResult, b: RunResult) -> None:
    """Refuse a pairing when the two runs were evaluated on different (volume, slice) sets."""
    only_a = sorted(set(a.slices) - set(b.slices))
    only_b = sorted(set(b.slices) - set(a.slices))
    if only_a or only_b:
        volume, index = (only_a or only_b)[0]
        unit = a.unit
        raise SftkdError(
            f"{a.label} vs {b.label}: per-{unit} sets differ ({len(only_a)} {unit}s only in {a.name}, "
            f"{len(only_b)} only in {b.name}, e.g. {volume if index < 0 else f'{volume}/{index}'}); "
            f"evaluate both on the same {unit}s"
        )


def resolve_metrics(names: Sequence[str], runs: Sequence[RunResult]) -> tuple[str, ...]:
    """Metric names as spelled in metrics.json (matched case-insensitively), present in every run."""
    if not (names := listed_names(names, "--metrics")):  # a bare string is refused, not read letter by letter
        raise SftkdError("--metrics: expected at least one metric name")
    resolved = []
    for name in names:
        key = next((key for key in runs[0].metrics if key.lower() == name.strip().lower()), name.strip())
        for run in runs:
            if key not in run.metrics:
                raise SftkdError(f"--metrics {name}: not in {run.label}/metrics.json (has {', '.join(run.metrics)})")
        resolved.append(key)
    return tuple(dict.fromkeys(resolved))


# ----------------------------------------------------------------------------- comparison


def order_runs(runs: Sequence[RunResult]) -> list[RunResult]:
    """Teachers, then students, then the rest; by name within each role."""
    return sorted(runs, key=lambda r: (_ROLE_RANK.get(r.role or "", len(_ROLE_RANK)), r.name))


def _unpicked(runs: Sequence[RunResult], wanted: str | None, role: str, option: str, column: str) -> str:
    """Why no run was chosen by default for `option` ('' when one was, or none could be): several with `role`."""
    names = [run.name for run in runs if run.role == role]
    return "" if wanted is not None or len(names) < 2 else f"No {column}: {len(names)} runs are {role}s ({', '.join(names)}); choose one with {option}."


def _pick(runs: Sequence[RunResult], wanted: str | None, role: str, option: str) -> RunResult | None:
    """The run named by `wanted` (name or path), else the only run with `role`, else none."""
    if wanted is None:
        candidates = [run for run in runs if run.role == role]
        return candidates[0] if len(candidates) == 1 else None
    if wanted.lower() == NONE:
        return None
    for run in runs:
        if wanted in (run.name, run.label) or Path(wanted).name == run.name or _run_name(Path(wanted).resolve()) == run.name:
            return run
    raise SftkdError(f"{option} {wanted}: not among the compared runs ({', '.join(r.name for r in runs)})")


def _zero_filled(run: RunResult, names: Sequence[str]) -> dict[str, Stat]:
    """The zero-filled input's stats for `names`, from the run's zero_filled block."""
    missing = [m for m in names if m not in run.zero_filled]
    if missing:
        raise SftkdError(f"{run.label}/metrics.json: zero_filled has no {', '.join(missing)} (use --no-zf)")
    return {m: run.zero_filled[m] for m in names}


def mean_delta(mean: float, reference: float) -> float:
    """`mean` minus `reference`; equal means differ by 0, infinite ones too (runs exact on a slice:
    PSNR inf - inf would be NaN)."""
    return 0.0 if mean == reference else mean - reference


def _deltas(stats: dict[str, Stat], ref: RunResult | None, names: Sequence[str]) -> dict[str, float]:
    """Mean minus the reference run's mean, per metric (`mean_delta`; empty without a reference)."""
    return {m: mean_delta(stats[m].mean, ref.metrics[m].mean) for m in names} if ref else {}


def volume_values(run: RunResult, column: str) -> dict[str, float]:
    """{volume: the mean of its slices' values} of one scores column (slices with an undefined
    value left out, as `metrics.score_volume` does); a per_volume.csv row's value as it is."""
    values = run.column(column)
    rows: dict[str, list[int]] = {}
    for i, (volume, _) in enumerate(run.slices):
        rows.setdefault(volume, []).append(i)
    return {volume: nan_mean_std(values[index])[0] for volume, index in rows.items()}


def paired_volumes(run: RunResult, base: RunResult, metric: str, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(run's `prefix + metric`, base's `metric`) per volume, each the mean of the volume's slices,
    paired by volume name, in name order; the two runs must hold the same slices."""
    check_same_slices(run, base)
    ours, theirs = volume_values(run, prefix + metric), volume_values(base, metric)
    names = sorted(theirs)
    return np.asarray([ours[v] for v in names]), np.asarray([theirs[v] for v in names])


def _pvalues(run: RunResult, prefix: str, base: RunResult | None, names: Sequence[str]) -> dict[str, float]:
    """Wilcoxon p of run's `prefix + metric` columns vs the baseline's, over paired volumes."""
    if base is None:
        return {}
    return {m: wilcoxon_p(*paired_volumes(run, base, m, prefix)) for m in names}


def compare_runs(
    runs: Sequence[RunResult],
    reference: str | None = None,
    baseline: str | None = None,
    metrics: Sequence[str] | None = None,
    zero_filled: bool = True,
) -> Comparison:
    """Rows of metric mean ± std, delta to the reference and Wilcoxon p vs the baseline; `metrics`
    None: the runs' convention's defaults (`CONVENTION_METRICS`).

    `reference`/`baseline` name a run (directory name or path); by default the only run
    whose role is teacher (reference) or student (baseline), if there is exactly one;
    "none" switches them off. The zero-filled row comes from the first run's zero_filled block.
    """
    if not runs:
        raise SftkdError("compare: no runs given")
    _check_unique_names(runs, zero_filled)
    check_same_data(runs)
    check_same_checkpoint(runs)
    names = resolve_metrics(CONVENTION_METRICS[runs[0].convention] if metrics is None else metrics, runs)
    ordered = order_runs(runs)
    ref = _pick(ordered, reference, "teacher", "--reference")
    base = _pick(ordered, baseline, "student", "--baseline")
    for other in filter(None, (ref, base)):  # a Δ or a p compares the same slices
        for run in runs:
            check_same_slices(run, other)
    first = runs[0]
    rows = []
    if zero_filled:
        zf = _zero_filled(first, names)
        role = INPUT_ROLES.get(first.task, ZF_ROLE)
        rows.append(Row(ZF_NAME, role, None, None, zf, _deltas(zf, ref, names), _pvalues(first, "ZF_", base, names)))
    for run in ordered:
        rows.append(Row(run.name, run.role or "-", run.params, run.latency_ms, {m: run.metrics[m] for m in names},
                        _deltas(run.metrics, ref, names), _pvalues(run, "", None if run is base else base, names)))
    return Comparison(
        metrics=names,
        rows=tuple(rows),
        reference=ref.name if ref else None,
        baseline=base.name if base else None,
        n_paired=len({volume for volume, _ in base.slices}) if base else None,
        dataset=first.dataset_key,
        fingerprint=first.fingerprint,
        split=first.split,
        acceleration=first.acceleration,
        unit=first.unit,
        notes=tuple(note for note in (_unpicked(ordered, reference, "teacher", "--reference", "Δ"),
                                      _unpicked(ordered, baseline, "student", "--baseline", "p")) if note),
    )


# ----------------------------------------------------------------------------- paper layout


def _paper_slot(run: RunResult) -> tuple[str, str]:
    """(row label, setting column) of a run in the paper's Table 1."""
    where = f"{run.label}/metrics.json"
    if run.role in _PAPER_SLOT:
        return _PAPER_SLOT[run.role]
    if run.role != "kd":
        raise SftkdError(f"{where}: role {run.role!r} has no place in the paper table (expected {', '.join(SCORED_ROLES)} or kd)")
    if not run.method:
        raise SftkdError(f"{where}: method: a kd run needs its KD method (e.g. 'at') for --group paper")
    if run.teacher_role not in _KD_TEACHER_SETTING:
        raise SftkdError(f"{where}: teacher_role {run.teacher_role!r}: expected 'teacher' (Std-KD) or '{SFT_TEACHER}' (SFT-KD-Recon)")
    return method_label(run.method), _KD_TEACHER_SETTING[run.teacher_role]


def _dataset_rank(key: str) -> tuple[int, str]:
    source = key.split("/", 1)[0]  # e.g. demo/icbm152
    return (_DATASET_ORDER.index(source) if source in _DATASET_ORDER else len(_DATASET_ORDER), key)


def paper_table(runs: Sequence[RunResult], metrics: Sequence[str] | None = None, zero_filled: bool = True) -> PaperTable:
    """Place runs in the paper's Table 1: one block per dataset, columns per acceleration and setting.

    Runs are grouped by (dataset source, acceleration); within a group they must share the
    dataset fingerprint, and all runs must share the split. Two runs for one cell are refused.
    `metrics` None: the paper's (PSNR, SSIM).
    """
    if not runs:
        raise SftkdError("compare: no runs given")
    _check_unique_names(runs)
    names = resolve_metrics(PAPER_METRICS if metrics is None else metrics, runs)
    for other in runs[1:]:
        if other.split != runs[0].split:
            raise SftkdError(f"{runs[0].label} vs {other.label}: evaluated on different split ({runs[0].split} vs {other.split}); the paper table shows one split")
    check_same_checkpoint(runs)
    groups: dict[tuple[str, float], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.dataset_key, run.acceleration), []).append(run)
    for (dataset, _), members in groups.items():  # same source and acceleration: only the data itself can differ
        check_same_data(members, f"two datasets share the source name '{dataset}' and the paper table has one block "
                                 "per source: pass runs evaluated on one of them")

    cells: dict[str, dict[tuple[str, float, str], PaperCell]] = {}
    owners: dict[tuple[str, str, float, str], RunResult] = {}
    for (dataset, acceleration), members in groups.items():
        block = cells.setdefault(dataset, {})
        if zero_filled:
            row = INPUT_ROWS.get(members[0].task, ZF_NAME)
            block[(row, acceleration, STD_KD)] = PaperCell(row, _zero_filled(members[0], names))
        for run in members:
            model, setting = _paper_slot(run)
            slot = (dataset, model, acceleration, setting)
            if slot in owners:
                raise SftkdError(
                    f"{owners[slot].label} and {run.label}: both fill the paper cell "
                    f"{dataset} / {model} / {acceleration:g}x / {setting}; pass only one of them"
                )
            owners[slot] = run
            block[(model, acceleration, setting)] = PaperCell(run.name, {m: run.metrics[m] for m in names})

    blocks = []
    for dataset in sorted(cells, key=_dataset_rank):
        present = {model for model, _, _ in cells[dataset]}
        fixed = [model for model in _PAPER_FIXED_ROWS if model in present]
        methods = sorted(present - set(fixed), key=str.lower)
        blocks.append(PaperBlock(dataset, tuple(fixed + methods), cells[dataset]))
    return PaperTable(
        metrics=names,
        split=runs[0].split,
        accelerations=tuple(sorted({acc for _, acc in groups})),
        blocks=tuple(blocks),
        unit=runs[0].unit,
    )


def tabulate(runs: Sequence[RunResult], reference: str | None = None, baseline: str | None = None, *, paper: bool = False,
             metrics: Sequence[str] | None = None, zero_filled: bool = True) -> Comparison | PaperTable:
    """`compare_runs`, or with `paper` the paper's Table 1 (`paper_table`), whose layout fixes the
    rows: a `reference` or `baseline` is refused there."""
    if not paper:
        return compare_runs(runs, reference, baseline, metrics=metrics, zero_filled=zero_filled)
    if reference is not None or baseline is not None:
        raise SftkdError("--group paper: --reference and --baseline do not apply (the layout fixes the rows)")
    return paper_table(runs, metrics=metrics, zero_filled=zero_filled)
