"""The report's verdict: the paper's claims tested on tiny synthetic per-slice values, over volumes
(scipy's wilcoxon on volume means made here by hand as the oracle)."""

from __future__ import annotations

import numpy as np
import scipy.stats

from sftkd_cli.report.compare import RunResult, Stat
from sftkd_cli.report.verdict import (
    HELD, NOT_HELD, NOT_SHOWN, arm_label, arm_order, evaluate_claims, judge, main_table, verdict_markdown,
)

SLICES = tuple((f"vol{v}", i) for v in range(8) for i in range(3))  # 8 volumes of 3 slices: p can reach 0.0078
DEMO = tuple((f"vol{v}", i) for v in range(3) for i in range(8))  # the demo's 3 validation volumes of 8 slices


def run(name: str, psnr: np.ndarray, role: str = "student", slices: tuple = SLICES) -> RunResult:
    values = {"PSNR": psnr, "SSIM": 0.9 + psnr / 1000, "ZF_PSNR": np.full(len(psnr), 25.0), "ZF_SSIM": np.full(len(psnr), 0.7)}
    return RunResult(name, name, role, None, None, 49285, None, "demo", "ab" * 32, "val", 4.0,
                     {m: Stat(float(v.mean()), float(v.std())) for m, v in values.items() if not m.startswith("ZF_")},
                     {"PSNR": Stat(25.0, 0.0)}, slices, values)


def volumes(values: np.ndarray, per: int = 3) -> np.ndarray:
    """The oracle's volume values: the mean of each volume's consecutive slices."""
    return values.reshape(-1, per).mean(axis=1)


def hodges_lehmann(d: np.ndarray) -> float:
    """The oracle: the median of the Walsh averages, written out."""
    return float(np.median([(d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d))]))


def arms_for(seeds=(42,), shifts=None, noise=0.05):
    """Teacher 30 dB; every other arm shifted by `shifts` dB, slice noise `noise`, per seed."""
    shifts = shifts or {"teacher": 0.0, "sft": 0.05, "student": -0.6, "std-kd-at": -0.4, "sft-kd-at": -0.02}
    arms: dict[str, dict[int, RunResult]] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        base = 30 + rng.normal(0, 1.0, len(SLICES))  # slice difficulty, shared by the arms of a seed
        for key, shift in shifts.items():
            arms.setdefault(key, {})[seed] = run(f"{key}-s{seed}", base + shift + rng.normal(0, noise, len(SLICES)))
    return arms


def by_text(results):
    return {r.claim.text: r for r in results}


def test_claims_follow_the_numbers_and_wilcoxon():
    arms = arms_for()
    results = by_text(evaluate_claims(arms, alpha=0.05))
    central = results["SFT-KD-Recon (AT) > Std-KD (AT)"]
    assert central.claim.central and central.pooled.status == HELD
    a, b = volumes(arms["sft-kd-at"][42].column("PSNR")), volumes(arms["std-kd-at"][42].column("PSNR"))
    assert central.pooled.p == scipy.stats.wilcoxon(a, b).pvalue == 2 / 2**8 and central.pooled.n == 8
    assert np.isclose(central.pooled.hodges_lehmann, hodges_lehmann(a - b))
    assert results["Std-KD (AT) > Student"].pooled.status == HELD
    within = results["SFT-KD-Recon (AT) at most 0.03 dB below the teacher"]
    assert within.pooled.hodges_lehmann < 0.1 and within.pooled.status in (HELD, NOT_SHOWN)
    assert list(results)[0] == "SFT-KD-Recon (AT) > Std-KD (AT)" and "SF-teacher > Teacher" in results


def test_a_reversed_or_insignificant_difference_is_not_held():
    arms = arms_for(shifts={"teacher": 0.0, "sft": -1.0, "student": -0.6, "std-kd-at": -0.6, "sft-kd-at": -0.9})
    results = by_text(evaluate_claims(arms))
    assert results["SF-teacher > Teacher"].pooled.status == NOT_HELD
    assert results["SFT-KD-Recon (AT) > Std-KD (AT)"].pooled.status == NOT_HELD
    assert results["Std-KD (AT) > Student"].pooled.status == NOT_SHOWN  # same mean: noise only
    assert results["SFT-KD-Recon (AT) at most 0.03 dB below the teacher"].pooled.status == NOT_HELD


def test_the_test_pairs_volumes_not_slices():
    """3 volumes x 8 slices, Std-KD above the student on every slice: over slices p would be 1.2e-07,
    but the slices of a volume are not independent; over the 3 volume means p = 0.25, the smallest
    a two-sided signed-rank test of 3 pairs gives, and the verdict says so."""
    base = np.linspace(28, 32, 24)
    effect = np.repeat([0.05, 0.3, 0.6], 8) + np.tile(np.linspace(0, 0.01, 8), 3)
    arms = {"student": {1: run("student", base, slices=DEMO)}, "std-kd-at": {1: run("std-kd-at", base + effect, "kd", DEMO)}}
    (result,) = evaluate_claims(arms)
    assert result.pooled.p == scipy.stats.wilcoxon(volumes(effect, 8)).pvalue == 0.25
    assert scipy.stats.wilcoxon(effect).pvalue < 1e-6  # what a test over slices would claim
    assert (result.pooled.n, result.pooled.status) == (3, NOT_SHOWN)
    text = "\n".join(verdict_markdown([result], 0.05))
    assert "| not shown (3 volumes: p cannot go below 0.25) |" in text and "| volumes |" in text


def test_the_printed_difference_is_the_tests_estimate_not_the_mean():
    """Std-KD 0.1 dB below the student on 22 volumes and 3 dB above on 2: the mean is +0.158 dB, the
    signed-rank test finds Std-KD below (p 0.001): the row shows the Hodges-Lehmann estimate, -0.100,
    never "did not hold (+0.158)"."""
    one = tuple((f"vol{v:02d}", 0) for v in range(24))
    base = np.linspace(28, 32, 24)
    d = np.r_[np.full(22, -0.1), np.full(2, 3.0)]
    arms = {"student": {1: run("student", base, slices=one)}, "std-kd-at": {1: run("std-kd-at", base + d, "kd", one)}}
    (result,) = evaluate_claims(arms)
    assert np.mean(d) > 0.15 and result.pooled.status == NOT_HELD
    assert result.pooled.p == scipy.stats.wilcoxon(base + d, base).pvalue < 0.002
    assert np.isclose(result.pooled.hodges_lehmann, hodges_lehmann(d)) and np.isclose(result.pooled.hodges_lehmann, -0.1)
    text = "\n".join(verdict_markdown([result], 0.05))
    assert "| Std-KD (AT) > Student | -0.100 |" in text and "+0.158" not in text and "Hodges–Lehmann" in text


def test_the_volume_count_is_the_tests_zero_differences_dropped():
    """Volumes whose values are equal are dropped by the signed-rank test: the count shown is the
    count it used, and 5 of them cannot reach 0.05."""
    base = np.linspace(28, 32, 24)
    d = np.repeat([0, 0, 0, 0.2, 0.3, 0.4, 0.5, 0.6], 3)
    arms = {"student": {1: run("student", base)}, "std-kd-at": {1: run("std-kd-at", base + d, "kd")}}
    (result,) = evaluate_claims(arms)
    assert result.pooled.n == 5 and result.pooled.p == scipy.stats.wilcoxon(volumes(d)).pvalue
    assert result.pooled.verdict == "not shown (5 volumes: p cannot go below 0.0625)"


def test_the_gap_claim_is_worded_as_tested():
    """The claim holds when the student is significantly less than 0.03 dB below the teacher, a student
    0.9 dB above it included: its text says 'at most 0.03 dB below', not 'within 0.03 dB'."""
    arms = arms_for(shifts={"teacher": 0.0, "std-kd-at": -0.5, "sft-kd-at": 0.9})
    result = by_text(evaluate_claims(arms))["SFT-KD-Recon (AT) at most 0.03 dB below the teacher"]
    assert result.claim.text == "SFT-KD-Recon (AT) at most 0.03 dB below the teacher"
    assert result.pooled.status == HELD and result.pooled.hodges_lehmann < -0.8


def test_within_tests_the_gap_against_the_tolerance_not_against_zero():
    """Gaps spread around 0.035 dB: far from 0 (p ~ 1e-6), but not told apart from 0.03 dB."""
    from sftkd_cli.report.verdict import _test

    student = np.random.default_rng(0).uniform(28, 30, 24)
    teacher = student + np.linspace(-0.005, 0.075, 24)
    test = _test(teacher, student, "within", 0.05, 0.03)
    assert test.p == scipy.stats.wilcoxon(teacher - student - 0.03).pvalue and test.p > 0.3
    assert test.status == NOT_SHOWN and np.isclose(test.hodges_lehmann, 0.035)
    assert _test(student + 0.001, student, "within", 0.05, 0.03).status == HELD
    assert _test(student + np.linspace(0.05, 0.2, 24), student, "within", 0.05, 0.03).status == NOT_HELD


def test_the_direction_is_the_tests_own_and_rounding_is_no_effect():
    """Outliers can turn the mean against the ranks: the verdict follows the signed-rank test that
    gives its p, and so does the estimate shown. Gaps of exactly the tolerance (as stored, 4
    decimals) are no evidence either way."""
    from sftkd_cli.report.verdict import _test

    student = np.round(np.random.default_rng(1).uniform(28, 30, 200), 4)
    teacher = student + np.r_[np.full(180, 0.05), np.full(20, -0.97)]  # mean gap -0.052, most gaps +0.05
    test = _test(teacher, student, "within", 0.05, 0.03)
    assert np.mean(teacher - student) < 0.03 and test.p < 1e-10 and test.status == NOT_HELD
    assert np.isclose(test.hodges_lehmann, 0.05)  # above the tolerance, as the verdict says
    exact = np.round(student + 0.03, 4)
    assert _test(exact, student, "within", 0.05, 0.03).status == NOT_SHOWN


def test_judge_wording():
    assert judge("greater", True, 0.2, 0.05) == NOT_SHOWN  # a positive difference with p >= alpha is not shown
    assert judge("greater", True, 0.01, 0.05) == HELD
    assert judge("greater", False, 0.01, 0.05) == NOT_HELD
    assert judge("within", False, 0.01, 0.05) == HELD  # significantly below the tolerance
    assert judge("within", False, 0.9, 0.05) == NOT_SHOWN  # below it, but not shown to be
    assert judge("within", True, 0.01, 0.05) == NOT_HELD
    assert judge("within", True, 0.2, 0.05) == NOT_SHOWN
    assert judge("greater", True, float("nan"), 0.05) == NOT_SHOWN


def test_several_seeds_count_per_seed_and_pool_volume_means_over_seeds():
    """Pooled over seeds: per volume, the mean over seeds of each arm's volume value, then one test
    over the 8 volumes (not over seeds x slices)."""
    arms = arms_for(seeds=(42, 43, 44))
    results = by_text(evaluate_claims(arms))
    central = results["SFT-KD-Recon (AT) > Std-KD (AT)"]
    assert sorted(central.seeds) == [42, 43, 44] and central.held_seeds == 3 and central.pooled.n == 8
    a = np.mean([volumes(arms["sft-kd-at"][s].column("PSNR")) for s in (42, 43, 44)], axis=0)
    b = np.mean([volumes(arms["std-kd-at"][s].column("PSNR")) for s in (42, 43, 44)], axis=0)
    assert central.pooled.p == scipy.stats.wilcoxon(a, b).pvalue
    assert np.isclose(central.pooled.hodges_lehmann, hodges_lehmann(a - b))
    text = "\n".join(verdict_markdown(list(results.values()), 0.05))
    assert "seeds held" in text and "| 3/3 |" in text and "seed 43" in text and "they add no pairs" in text


def test_markdown_shows_the_paper_beside_and_a_missing_counterpart():
    paper = {"sft-kd-at": 40.07, "std-kd-at": 39.76, "teacher": 40.05, "sft": 40.23, "student": 39.49}
    results = evaluate_claims(arms_for(), paper=paper)
    text = "\n".join(verdict_markdown(results, 0.05, paper_note="Paper: Table 1, MRBrainS 4x."))
    assert "| **SFT-KD-Recon (AT) > Std-KD (AT)** |" in text and "40.07 vs 39.76 (+0.31)" in text
    assert "Paper: Table 1, MRBrainS 4x." in text and "not shown: p ≥ α" in text
    assert "| - |" in "\n".join(verdict_markdown(evaluate_claims(arms_for()), 0.05))


def test_main_table_rows_are_role_names_std_kd_before_sft_kd():
    arms = arms_for(shifts={"sft-kd-at": 0.0, "std-kd-at": -0.3, "student": -0.5, "teacher": 0.0, "sft": 0.1,
                            "std-kd-fitnets": -0.2, "sft-kd-fitnets": 0.0})
    assert arm_order(list(arms)) == ["teacher", "sft", "student", "std-kd-at", "sft-kd-at", "std-kd-fitnets", "sft-kd-fitnets"]
    lines = main_table(arms, ["PSNR", "SSIM"])
    labels = [line.split(" | ")[0].lstrip("| ") for line in lines[2:]]
    assert labels == ["ZF (zero-filled input)", "Teacher", "SF-teacher", "Student", "Std-KD (AT)", "SFT-KD-Recon (AT)",
                      "Std-KD (Fitnets)", "SFT-KD-Recon (Fitnets)"]
    assert "| ref |" in lines[3] and len(lines[0].split("|")) == 7
    assert arm_label("sft-kd-at-random") == "SFT-KD-Recon random init (AT)"


def test_main_table_of_an_exact_slice_warns_nothing():
    """A slice reconstructed exactly has PSNR inf: its arm's std is undefined (nan), with no numpy
    RuntimeWarning line in a reproduce report's output."""
    import warnings

    arms = arms_for(shifts={"teacher": 0.0, "student": -0.5})
    psnr = arms["teacher"][42].column("PSNR").copy()
    psnr[0] = np.inf
    with np.errstate(invalid="ignore"):  # the helper's own std of the inf
        arms["teacher"][42] = run("teacher-s42", psnr, role="teacher")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lines = main_table(arms, ["PSNR"])
    assert "| inf |" in lines[3] and "nan" not in lines[3] and "-inf" in lines[4]  # no "nan" for a real value


def test_main_table_delta_of_two_arms_exact_on_a_slice_is_zero():
    """Teacher and student each exact on a slice (PSNR mean inf): the student's Δ is +0.00, not
    inf - inf = +nan."""
    arms = arms_for(shifts={"teacher": 0.0, "student": -0.5})
    for role in ("teacher", "student"):
        psnr = arms[role][42].column("PSNR").copy()
        psnr[0] = np.inf
        with np.errstate(invalid="ignore"):  # the helper's own std of the inf
            arms[role][42] = run(f"{role}-s42", psnr, role=role)
    lines = main_table(arms, ["PSNR"])
    assert lines[4].rstrip(" |").endswith("+0.00") and "nan" not in lines[4]


def test_the_smallest_p_of_n_volumes_is_scipys_for_one_sign():
    """2/2^n two-sided (1/2^n one-sided) is what scipy's exact test gives when every difference has one sign."""
    from sftkd_cli.report.signed_rank import fewest_volumes, smallest_p

    for n in range(1, 9):
        d = np.arange(1.0, n + 1)
        assert smallest_p(n) == scipy.stats.wilcoxon(d).pvalue
        assert smallest_p(n, "greater") == scipy.stats.wilcoxon(d, alternative="greater").pvalue
    assert fewest_volumes(0.05) == 6 and smallest_p(5) == 0.0625 and smallest_p(6) == 0.03125
