"""The report's answer to the paper's question: which of its claims held in these runs.

The claims (PSNR, per KD method present): SFT-KD-Recon > Std-KD (the paper's central one),
Std-KD > student, SFT-KD-Recon within `tolerance` dB of the teacher (the paper: 0.03 dB), and
SF-teacher > teacher. Each is a two-sided Wilcoxon signed-rank test over the paired slices, per
seed and pooled over seeds x slices; for "within", of the gap to the teacher minus the tolerance,
so that its p tells the gap from the tolerance, not from 0. Wording is honest: a difference with
p >= alpha is "not shown", never "held".

Runs come as arms: {arm key: {seed: RunResult}}, the arm keys being a plan's stage labels
(teacher, student, sft, sft-student, std-kd-<method>, sft-kd-<method>, sft-kd-<method>-random).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sftkd_cli.data.format import INPUT_LABELS
from sftkd_cli.distill.catalog import method_label
from sftkd_cli.report.compare import RunResult, paired_values, wilcoxon_p
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
    """One paired test: mean of a - b over the pairs, its p-value, the number of pairs, the verdict."""

    diff: float
    p: float
    n: int
    status: str


@dataclass(frozen=True)
class ClaimResult:
    """A claim's tests per seed and pooled over seeds x slices, and the paper's difference."""

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
    fixed = {"teacher": "Teacher", "student": "Student", "sft": "SF-teacher", "sft-student": "SFT student blocks (S1 untrained)"}
    if key in fixed:
        return fixed[key]
    for prefix, name in (("std-kd-", "Std-KD"), ("sft-kd-", "SFT-KD-Recon")):
        if key.startswith(prefix):
            method = key[len(prefix):]
            random = method.endswith("-random")
            method = method.removesuffix("-random")
            return f"{name}{' random init' if random else ''} ({method_label(method)})"
    return key


def arm_order(keys: Sequence[str]) -> list[str]:
    """Teacher, SF-teacher, student, SFT student blocks, then per method Std-KD before SFT-KD-Recon."""
    fixed = ["teacher", "sft", "student", "sft-student"]
    methods = list(dict.fromkeys(k.removeprefix("std-kd-").removeprefix("sft-kd-").removesuffix("-random")
                                 for k in keys if k.startswith(("std-kd-", "sft-kd-"))))
    order = [k for k in fixed if k in keys]
    for method in methods:
        order += [k for k in (f"std-kd-{method}", f"sft-kd-{method}", f"sft-kd-{method}-random") if k in keys]
    return order + sorted(set(keys) - set(order))


def claims(keys: Sequence[str], tolerance: float = PAPER_GAP_DB) -> list[Claim]:
    """The paper's claims that the present arms can test, the central one first per method."""
    present = set(keys)
    methods = [k.removeprefix("std-kd-") for k in arm_order(keys) if k.startswith("std-kd-")]
    out: list[Claim] = []
    for method in methods:
        std, sft = f"std-kd-{method}", f"sft-kd-{method}"
        if sft in present:
            out.append(Claim(f"{arm_label(sft)} > {arm_label(std)}", sft, std, central=True))
        if "student" in present:
            out.append(Claim(f"{arm_label(std)} > Student", std, "student"))
        if sft in present and "teacher" in present:
            out.append(Claim(f"{arm_label(sft)} within {tolerance:g} dB of the teacher", "teacher", sft, kind="within"))
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


def _test(pairs: Sequence[tuple[np.ndarray, np.ndarray]], kind: str, alpha: float, tolerance: float) -> Test:
    """The paired signed-rank test of a - b (for "within", of a - b - tolerance); the verdict's
    direction is the test's own (its one-sided p-values), not the mean's, which outliers can turn."""
    a = np.concatenate([x for x, _ in pairs])
    b = np.concatenate([y for _, y in pairs])
    d = a - b - (tolerance if kind == "within" else 0.0)
    d = np.where(np.abs(d) < _ROUNDING, 0.0, d)
    zeros = np.zeros_like(d)
    p = wilcoxon_p(d, zeros)
    above = wilcoxon_p(d, zeros, "greater") < wilcoxon_p(d, zeros, "less")
    return Test(float(np.mean(a - b)), p, len(a), judge(kind, above, p, alpha))


def evaluate_claims(arms: Arms, metric: str = "PSNR", alpha: float = 0.05, tolerance: float = PAPER_GAP_DB,
                    paper: Mapping[str, float] | None = None) -> list[ClaimResult]:
    """Test every claim the arms allow, over the seeds both arms have (claims without one are left out)."""
    results = []
    for claim in claims(list(arms), tolerance):
        seeds = [seed for seed in arms[claim.a] if seed in arms[claim.b]]  # the arms' (plan's) seed order
        if not seeds:
            continue
        pairs = {seed: paired_values(arms[claim.a][seed], arms[claim.b][seed], metric) for seed in seeds}
        per_seed = {seed: _test([pair], claim.kind, alpha, tolerance) for seed, pair in pairs.items()}
        pooled = _test(list(pairs.values()), claim.kind, alpha, tolerance)
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
    header = ["Claim", f"Δ{metric} ours", "p", "pairs", "verdict"]
    header += ["seeds held"] if len(seeds) > 1 else []
    header += ["paper (a vs b, Δ)"]
    body = []
    for r in results:
        name = f"**{r.claim.text}**" if r.claim.central else r.claim.text
        diff = f"gap {r.pooled.diff:.3f}" if r.claim.kind == "within" else f"{r.pooled.diff:+.3f}"
        row = [name, diff, _p(r.pooled.p), str(r.pooled.n), r.pooled.status]
        row += [f"{r.held_seeds}/{len(r.seeds)}"] if len(seeds) > 1 else []
        body.append(row + [_paper_cell(r)])
    lines += _table(header, body)
    pooled = f" pooled over {len(seeds)} seeds x slices (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    lines += ["", f"{metric} in dB, mean of a - b over paired validation slices{pooled}; p: two-sided Wilcoxon "
              f"signed-rank test, α = {alpha:g}. held: the claimed sign with p < α; did not hold: the opposite "
              f"sign with p < α; not shown: p ≥ α, no significant difference either way. The 'within' claim tests "
              f"the gap to the teacher against {tolerance:g} dB (the paper's gap): its p is that of gap - "
              f"{tolerance:g} dB, and it holds when the gap is significantly below it."
              + (" Slices are the same in every seed, so the pooled test's pairs are not independent; "
                 "read it beside the per-seed counts." if len(seeds) > 1 else "")]
    if paper_note:
        lines += ["", paper_note]
    if len(seeds) > 1:
        lines += ["", "Per seed (Δ, p, verdict):", ""]
        per_seed = [[r.claim.text] + [f"{r.seeds[s].diff:+.3f}, {_p(r.seeds[s].p)}, {r.seeds[s].status}"
                                      if s in r.seeds else "-" for s in seeds] for r in results]
        lines += _table(["Claim"] + [f"seed {s}" for s in seeds], per_seed)
    lines += [""] + _summary(results) + [""]
    return lines


def _summary(results: Sequence[ClaimResult]) -> list[str]:
    """One sentence per outcome, the central claim first."""
    words = {HELD: "held", NOT_HELD: "did not hold", NOT_SHOWN: "was not shown (not significant)"}
    return [f"- {r.claim.text}: {words[r.pooled.status]}"
            + (f" (gap {r.pooled.diff:.3f} dB)" if r.claim.kind == "within" else f" ({r.pooled.diff:+.3f} dB)") + "."
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
    rows.append([f"{short} ({long} input)", "-", *zf, "-" if ref is None or zf_mean is None else f"{zf_mean - ref:+.2f}"]
                + (["-"] if len(seeds) > 1 else []))
    for key in order:
        runs = [arms[key][seed] for seed in sorted(arms[key])]
        values = {m: np.concatenate([run.column(m) for run in runs]) for m in metrics}
        mean = float(np.nanmean(values[lead]))
        delta = "ref" if key == reference else ("-" if ref is None else f"{mean - ref:+.2f}")
        params = "-" if runs[0].params is None else f"{runs[0].params:,}"
        rows.append([arm_label(key), params, *(stat(values[m], m) for m in metrics), delta]
                    + ([str(len(runs))] if len(seeds) > 1 else []))
    return _table(header, rows)
