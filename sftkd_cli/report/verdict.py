"""The report's answer to the paper's question: which of its claims held in these runs.

The claims (PSNR, per KD method present): SFT-KD-Recon > Std-KD (the paper's central one),
Std-KD > student, SFT-KD-Recon at most `tolerance` dB below the teacher (the paper: 0.03 dB), and
SF-teacher > teacher. Each is a two-sided Wilcoxon signed-rank test over paired VOLUMES (a run's
value of a volume: the mean of its slices'; slices of one volume are not independent), per seed,
and pooled over seeds as one test over the volumes of the per-volume means over seeds; for
"within" (at most `tolerance` below), of the gap to the teacher minus the tolerance, so that its
p tells the gap from the tolerance, not from 0. The difference shown is the Hodges-Lehmann
estimate, the one that goes with the signed-rank test. Wording is honest: a difference with
p >= alpha is "not shown", never "held", and too few volumes to reach alpha are said so.

Runs come as arms: {arm key: {seed: RunResult}}, the arm keys being a plan's stage labels
(teacher, student, sft, sft-student, std-kd-<method>, sft-kd-<method>, sft-kd-<method>-random).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sftkd_cli.choices import DEFAULT_ALPHA, SFT_STUDENT, arm_key, parse_arm_key
from sftkd_cli.data.format import INPUT_LABELS
from sftkd_cli.distill.catalog import method_label
from sftkd_cli.report.compare import RunResult, check_same_slices, mean_delta, paired_volumes
from sftkd_cli.report.signed_rank import fewest_volumes, hodges_lehmann, unreachable, wilcoxon_p
from sftkd_cli.scoring import nan_mean_std

Arms = Mapping[str, Mapping[int, RunResult]]

HELD, NOT_HELD, NOT_SHOWN = "held", "did not hold", "not shown"
PAPER_GAP_DB = 0.03  # the paper: SFT-KD-Recon is 0.03 dB below the teacher (Table 1, PSNR)


@dataclass(frozen=True)
class Claim:
    """'a > b' (kind greater) or 'b within tolerance of a' (kind within: the gap is a - b)."""

    text: str
    a: str
    b: str
    kind: str = "greater"
    central: bool = False


@dataclass(frozen=True)
class Test:
    """One paired signed-rank test over volumes: the Hodges-Lehmann estimate of a - b, its p-value,
    the number of volumes the test used (zero differences dropped), the verdict, and when that many
    volumes cannot give p < alpha, why in words ('3 volumes: p cannot go below 0.25')."""

    hodges_lehmann: float
    p: float
    n: int
    status: str
    floor: str = ""

    @property
    def verdict(self) -> str:
        """The status, with why when it is "not shown" because p cannot reach alpha."""
        return f"{self.status} ({self.floor})" if self.status == NOT_SHOWN and self.floor else self.status


@dataclass(frozen=True)
class ClaimResult:
    """A claim's tests per seed and pooled over seeds (per volume, the mean over seeds), and the paper's difference."""

    claim: Claim
    seeds: dict[int, Test]
    pooled: Test
    paper_a: float | None = None
    paper_b: float | None = None

    @property
    def held_seeds(self) -> int:
        return sum(test.status == HELD for test in self.seeds.values())


def arm_label(key: str) -> str:
    """A display name for an arm: Teacher, Student, SF-teacher, Std-KD (AT), SFT-KD-Recon (AT), ..."""
    fixed = {"teacher": "Teacher", "student": "Student", "sft": "SF-teacher", SFT_STUDENT: "SFT student blocks (S1 untrained)"}
    if key in fixed:
        return fixed[key]
    parsed = parse_arm_key(key)
    if parsed is None:
        return key
    kind, method, random = parsed
    name = "Std-KD" if kind == "std-kd" else "SFT-KD-Recon"
    return f"{name}{' random init' if random else ''} ({method_label(method)})"


def arm_order(keys: Sequence[str]) -> list[str]:
    """Teacher, SF-teacher, student, SFT student blocks, then per method Std-KD before SFT-KD-Recon."""
    fixed = ["teacher", "sft", "student", SFT_STUDENT]
    methods = list(dict.fromkeys(parsed[1] for k in keys if (parsed := parse_arm_key(k)) is not None))
    order = [k for k in fixed if k in keys]
    for method in methods:
        order += [k for k in (arm_key("std-kd", method), arm_key("sft-kd", method), arm_key("sft-kd", method, True))
                  if k in keys]
    return order + sorted(set(keys) - set(order))


def claims(keys: Sequence[str], tolerance: float = PAPER_GAP_DB) -> list[Claim]:
    """The paper's claims that the present arms can test, the central one first per method."""
    present = set(keys)
    methods = [parsed[1] for k in arm_order(keys) if (parsed := parse_arm_key(k)) and parsed[0] == "std-kd" and not parsed[2]]
    out: list[Claim] = []
    for method in methods:
        std, sft = arm_key("std-kd", method), arm_key("sft-kd", method)
        if sft in present:
            out.append(Claim(f"{arm_label(sft)} > {arm_label(std)}", sft, std, central=True))
        if "student" in present:
            out.append(Claim(f"{arm_label(std)} > Student", std, "student"))
        if sft in present and "teacher" in present:
            out.append(Claim(f"{arm_label(sft)} at most {tolerance:g} dB below the teacher", "teacher", sft, kind="within"))
    if {"sft", "teacher"} <= present:
        out.append(Claim("SF-teacher > Teacher", "sft", "teacher"))
    return out


def judge(kind: str, above: bool, p: float, alpha: float) -> str:
    """held / did not hold / not shown for one test (see the module docstring): `above` is the
    direction the signed-rank test found (a - b above 0, for "within" above the tolerance)."""
    if math.isnan(p) or p >= alpha:
        return NOT_SHOWN
    if kind == "within":
        return NOT_HELD if above else HELD
    return HELD if above else NOT_HELD


#: differences this small are rounding (e.g. a gap of exactly the tolerance minus it), not effects
_ROUNDING = 1e-9


def _test(a: np.ndarray, b: np.ndarray, kind: str, alpha: float, tolerance: float) -> Test:
    """The signed-rank test of the paired volume values a - b (for "within", of a - b - tolerance);
    the verdict's direction is the test's own (its one-sided p-values), and so is the estimate's:
    the Hodges-Lehmann estimate of the differences the test used (zeros dropped)."""
    shift = tolerance if kind == "within" else 0.0
    d = a - b - shift
    d = np.where(np.abs(d) < _ROUNDING, 0.0, d)
    zeros = np.zeros_like(d)
    p = wilcoxon_p(d, zeros)
    above = wilcoxon_p(d, zeros, "greater") < wilcoxon_p(d, zeros, "less")
    used = d[d != 0]
    estimate = hodges_lehmann(used) if used.size else 0.0  # no volume differs: no shift
    return Test(estimate + shift, p, len(used), judge(kind, above, p, alpha), unreachable(len(used), alpha))


def evaluate_claims(arms: Arms, metric: str = "PSNR", alpha: float = DEFAULT_ALPHA, tolerance: float = PAPER_GAP_DB,
                    paper: Mapping[str, float] | None = None) -> list[ClaimResult]:
    """Test every claim the arms allow, over the seeds both arms have (claims without one are left out):
    per seed over its paired volumes, and pooled: per volume, the mean over seeds of each arm's value."""
    results = []
    for claim in claims(list(arms), tolerance):
        seeds = [seed for seed in arms[claim.a] if seed in arms[claim.b]]  # the arms' (plan's) seed order
        if not seeds:
            continue
        for seed in seeds[1:]:  # the pooled test pairs the seeds' volumes by name
            check_same_slices(arms[claim.b][seeds[0]], arms[claim.b][seed])
        pairs = {seed: paired_volumes(arms[claim.a][seed], arms[claim.b][seed], metric) for seed in seeds}
        per_seed = {seed: _test(a, b, claim.kind, alpha, tolerance) for seed, (a, b) in pairs.items()}
        pooled = _test(np.mean([a for a, _ in pairs.values()], axis=0), np.mean([b for _, b in pairs.values()], axis=0),
                       claim.kind, alpha, tolerance)
        paper = paper or {}
        results.append(ClaimResult(claim, per_seed, pooled, paper.get(claim.a), paper.get(claim.b)))
    return results


# ----------------------------------------------------------------------------- markdown


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _paper_cell(result: ClaimResult) -> str:
    if result.paper_a is None or result.paper_b is None:
        return "-"
    diff = result.paper_a - result.paper_b
    return f"{result.paper_a:.2f} vs {result.paper_b:.2f} ({diff:+.2f})"


def verdict_markdown(results: Sequence[ClaimResult], alpha: float, tolerance: float = PAPER_GAP_DB,
                     metric: str = "PSNR", paper_note: str = "") -> list[str]:
    """The verdict section's lines: one row per claim, per-seed detail when there are several seeds."""
    lines = ["### Verdict: the paper's claims in these runs", ""]
    if not results:
        return lines + ["No claim can be tested yet (needs evaluated teacher, student, SF-teacher and KD runs).", ""]
    seeds = list(dict.fromkeys(seed for r in results for seed in r.seeds))
    header = ["Claim", f"Δ{metric} ours (Hodges–Lehmann)", "p", "volumes", "verdict"]
    header += ["seeds held"] if len(seeds) > 1 else []
    header += ["paper (a vs b, Δ)"]
    body = []
    for r in results:
        name = f"**{r.claim.text}**" if r.claim.central else r.claim.text
        row = [name, _estimate(r, r.pooled), _p(r.pooled.p), str(r.pooled.n), r.pooled.verdict]
        row += [f"{r.held_seeds}/{len(r.seeds)}"] if len(seeds) > 1 else []
        body.append(row + [_paper_cell(r)])
    lines += _table(header, body)
    pooled = (f" Pooled over {len(seeds)} seeds (seeds {', '.join(map(str, seeds))}): per volume, the mean over "
              "seeds of each arm's value, then one test over the volumes (seeds steady a volume's value; they add "
              "no pairs).") if len(seeds) > 1 else ""
    lines += ["", f"{metric} in dB over paired validation volumes, a volume's value being the mean of its slices' "
              f"(the slices of one volume are not independent). Δ: the Hodges–Lehmann estimate of a - b (the median "
              f"of the pairwise means of the volume differences), the estimate that goes with the signed-rank "
              f"test; p: two-sided Wilcoxon signed-rank test, α = {alpha:g}; volumes: the number the test used "
              f"(a volume with no difference is dropped). held: the claimed sign with p < α; did not hold: the "
              f"opposite sign with p < α; not shown: p ≥ α, no significant difference either way (with n volumes "
              f"p cannot go below 2/2^n: {fewest_volumes(alpha) - 1} or fewer volumes can never reach p < α). "
              f"The 'at most {tolerance:g} dB "
              f"below' claim tests the gap to the teacher (teacher minus student) against {tolerance:g} dB (the "
              f"paper's gap): its p is that of gap - {tolerance:g} dB, and it holds when the gap is significantly "
              f"below it, a student above the teacher included." + pooled]
    if paper_note:
        lines += ["", paper_note]
    if len(seeds) > 1:
        lines += ["", "Per seed (Δ Hodges–Lehmann, p, verdict):", ""]
        per_seed = [[r.claim.text] + [f"{_estimate(r, r.seeds[s])}, {_p(r.seeds[s].p)}, {r.seeds[s].verdict}"
                                      if s in r.seeds else "-" for s in seeds] for r in results]
        lines += _table(["Claim"] + [f"seed {s}" for s in seeds], per_seed)
    lines += [""] + _summary(results) + [""]
    return lines


def _estimate(result: ClaimResult, test: Test) -> str:
    """The Δ cell: 'gap 0.123' for the "within" claim, '+0.123' for the others."""
    value = test.hodges_lehmann
    return f"gap {value:.3f}" if result.claim.kind == "within" else f"{value:+.3f}"


def _summary(results: Sequence[ClaimResult]) -> list[str]:
    """One sentence per outcome, the central claim first."""
    words = {HELD: "held", NOT_HELD: "did not hold", NOT_SHOWN: "was not shown"}

    def why(test: Test) -> str:
        return "" if test.status != NOT_SHOWN else f" ({test.floor or 'not significant'})"

    return [f"- {r.claim.text}: {words[r.pooled.status]}{why(r.pooled)}; {_estimate(r, r.pooled)} dB (Hodges–Lehmann)."
            for r in results]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + [
        "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def main_table(arms: Arms, metrics: Sequence[str], reference: str = "teacher") -> list[str]:
    """The compact results table: one row per arm (role/method names), mean ± std over slices
    (pooled over seeds), Δ of the first metric to the teacher; the zero-filled input first."""
    order = arm_order(list(arms))
    if not order:
        return ["No evaluated runs yet.", ""]
    first = arms[order[0]][min(arms[order[0]])]
    seeds = sorted({seed for runs in arms.values() for seed in runs})
    lead = metrics[0]
    header = ["Model", "Params", *metrics, f"Δ{lead} vs teacher"] + (["seeds"] if len(seeds) > 1 else [])

    def stat(values: np.ndarray, metric: str) -> str:
        from sftkd_cli.report.formats import format_stat
        from sftkd_cli.report.compare import Stat

        return format_stat(metric, Stat(*nan_mean_std(values)))

    ref = None
    if reference in arms:
        ref = float(np.nanmean(np.concatenate([run.column(lead) for run in arms[reference].values()])))
    rows = []
    zf = [stat(np.asarray(first.column(f"ZF_{m}")), m) if f"ZF_{m}" in first.columns else "-" for m in metrics]
    zf_mean = float(np.nanmean(first.column(f"ZF_{lead}"))) if f"ZF_{lead}" in first.columns else None
    short, long = INPUT_LABELS.get(first.task, ("zero-filled", "ZF"))[::-1]
    rows.append([f"{short} ({long} input)", "-", *zf, "-" if ref is None or zf_mean is None else f"{mean_delta(zf_mean, ref):+.2f}"]
                + (["-"] if len(seeds) > 1 else []))
    for key in order:
        runs = [arms[key][seed] for seed in sorted(arms[key])]
        values = {m: np.concatenate([run.column(m) for run in runs]) for m in metrics}
        mean = float(np.nanmean(values[lead]))
        delta = "ref" if key == reference else ("-" if ref is None else f"{mean_delta(mean, ref):+.2f}")
        params = "-" if runs[0].params is None else f"{runs[0].params:,}"
        rows.append([arm_label(key), params, *(stat(values[m], m) for m in metrics), delta]
                    + ([str(len(runs))] if len(seeds) > 1 else []))
    return _table(header, rows)
