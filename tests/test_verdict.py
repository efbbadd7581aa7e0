"""The report's verdict: the paper's claims tested on tiny synthetic per-slice values."""

from __future__ import annotations

import numpy as np
import scipy.stats

from sftkd_cli.report.compare import RunResult, Stat
from sftkd_cli.report.verdict import (
    HELD, NOT_HELD, NOT_SHOWN, arm_label, arm_order, evaluate_claims, judge, main_table, verdict_markdown,
)

SLICES = tuple((f"vol{v}", i) for v in range(3) for i in range(8))  # 24 slices, as in the demo


def run(name: str, psnr: np.ndarray, role: str = "student") -> RunResult:
    values = {"PSNR": psnr, "SSIM": 0.9 + psnr / 1000, "ZF_PSNR": np.full(len(psnr), 25.0), "ZF_SSIM": np.full(len(psnr), 0.7)}
    return RunResult(name, name, role, None, None, 49285, None, "demo", "ab" * 32, "val", 4.0,
                     {m: Stat(float(v.mean()), float(v.std())) for m, v in values.items() if not m.startswith("ZF_")},
                     {"PSNR": Stat(25.0, 0.0)}, SLICES, values)


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
    a, b = arms["sft-kd-at"][42].column("PSNR"), arms["std-kd-at"][42].column("PSNR")
    assert central.pooled.p == scipy.stats.wilcoxon(a, b).pvalue and np.isclose(central.pooled.diff, np.mean(a - b))
    assert results["Std-KD (AT) > Student"].pooled.status == HELD
    within = results["SFT-KD-Recon (AT) within 0.03 dB of the teacher"]
    assert within.pooled.diff < 0.1 and within.pooled.status in (HELD, NOT_SHOWN)
    assert list(results)[0] == "SFT-KD-Recon (AT) > Std-KD (AT)" and "SF-teacher > Teacher" in results


def test_a_reversed_or_insignificant_difference_is_not_held():
    arms = arms_for(shifts={"teacher": 0.0, "sft": -1.0, "student": -0.6, "std-kd-at": -0.6, "sft-kd-at": -0.9})
    results = by_text(evaluate_claims(arms))
    assert results["SF-teacher > Teacher"].pooled.status == NOT_HELD
    assert results["SFT-KD-Recon (AT) > Std-KD (AT)"].pooled.status == NOT_HELD
    assert results["Std-KD (AT) > Student"].pooled.status == NOT_SHOWN  # same mean: noise only
    assert results["SFT-KD-Recon (AT) within 0.03 dB of the teacher"].pooled.status == NOT_HELD


def test_within_tests_the_gap_against_the_tolerance_not_against_zero():
    """Gaps spread around 0.035 dB: far from 0 (p ~ 1e-6), but not told apart from 0.03 dB."""
    from sftkd_cli.report.verdict import _test

    student = np.random.default_rng(0).uniform(28, 30, 24)
    teacher = student + np.linspace(-0.005, 0.075, 24)
    test = _test([(teacher, student)], "within", 0.05, 0.03)
    assert test.p == scipy.stats.wilcoxon(teacher - student - 0.03).pvalue and test.p > 0.3
    assert test.status == NOT_SHOWN and np.isclose(test.diff, 0.035)
    assert _test([(student + 0.001, student)], "within", 0.05, 0.03).status == HELD
    assert _test([(student + np.linspace(0.05, 0.2, 24), student)], "within", 0.05, 0.03).status == NOT_HELD


def test_the_direction_is_the_tests_own_and_rounding_is_no_effect():
    """Outliers can turn the mean against the ranks: the verdict follows the signed-rank test that
    gives its p. Gaps of exactly the tolerance (as stored, 4 decimals) are no evidence either way."""
    from sftkd_cli.report.verdict import _test

    student = np.round(np.random.default_rng(1).uniform(28, 30, 200), 4)
    teacher = student + np.r_[np.full(180, 0.05), np.full(20, -0.97)]  # mean gap -0.052, most gaps +0.05
    test = _test([(teacher, student)], "within", 0.05, 0.03)
    assert test.diff < 0.03 and test.p < 1e-10 and test.status == NOT_HELD
    exact = np.round(student + 0.03, 4)
    assert _test([(exact, student)], "within", 0.05, 0.03).status == NOT_SHOWN


def test_judge_wording():
    assert judge("greater", True, 0.2, 0.05) == NOT_SHOWN  # a positive difference with p >= alpha is not shown
    assert judge("greater", True, 0.01, 0.05) == HELD
    assert judge("greater", False, 0.01, 0.05) == NOT_HELD
    assert judge("within", False, 0.01, 0.05) == HELD  # significantly below the tolerance
    assert judge("within", False, 0.9, 0.05) == NOT_SHOWN  # below it, but not shown to be
    assert judge("within", True, 0.01, 0.05) == NOT_HELD
    assert judge("within", True, 0.2, 0.05) == NOT_SHOWN
    assert judge("greater", True, float("nan"), 0.05) == NOT_SHOWN


def test_several_seeds_count_per_seed_and_pool_seeds_by_slices():
    arms = arms_for(seeds=(42, 43, 44))
    results = by_text(evaluate_claims(arms))
    central = results["SFT-KD-Recon (AT) > Std-KD (AT)"]
    assert sorted(central.seeds) == [42, 43, 44] and central.held_seeds == 3 and central.pooled.n == 3 * len(SLICES)
    a = np.concatenate([arms["sft-kd-at"][s].column("PSNR") for s in (42, 43, 44)])
    b = np.concatenate([arms["std-kd-at"][s].column("PSNR") for s in (42, 43, 44)])
    assert central.pooled.p == scipy.stats.wilcoxon(a, b).pvalue
    text = "\n".join(verdict_markdown(list(results.values()), 0.05))
    assert "seeds held" in text and "| 3/3 |" in text and "seed 43" in text and "not independent" in text


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
