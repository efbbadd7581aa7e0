"""The paired Wilcoxon signed-rank test as compare and the verdict use it, over paired volumes:
its p-value, the smallest p a number of pairs allows, and the estimate that goes with it."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import wilcoxon


def wilcoxon_p(x: np.ndarray, y: np.ndarray, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of paired samples (two-sided, or "greater"/"less": x above or
    below y; zero differences dropped, scipy's default); nan when undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(wilcoxon(x, y, alternative=alternative).pvalue)
        except ValueError:
            return math.nan


def smallest_p(n: int, alternative: str = "two-sided") -> float:
    """The smallest p an exact signed-rank test of `n` nonzero paired differences can give: 2/2^n
    two-sided, 1/2^n one-sided (every difference of one sign); 1 for none."""
    return 1.0 if n < 1 else min(1.0, (2.0 if alternative == "two-sided" else 1.0) / 2.0**n)


def fewest_volumes(alpha: float) -> int:
    """The fewest nonzero paired differences whose two-sided p can go below `alpha` (6 for 0.05)."""
    n = 1
    while smallest_p(n) >= alpha:
        n += 1
    return n


def unreachable(n: int, alpha: float) -> str:
    """'' when `n` paired volumes can give a two-sided p below `alpha`, else why not, in words
    (e.g. '3 volumes: p cannot go below 0.25')."""
    floor = smallest_p(n)
    return "" if floor < alpha else f"{n} volume{'s' * (n != 1)}: p cannot go below {floor:.3g}"


def hodges_lehmann(d: np.ndarray) -> float:
    """The Hodges-Lehmann estimate of paired differences `d`: the median of the Walsh averages
    (d_i + d_j) / 2, i <= j, the estimate of the shift that goes with the signed-rank test; nan
    for none."""
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return math.nan
    i, j = np.triu_indices(d.size)
    with np.errstate(invalid="ignore"):  # inf + -inf
        return float(np.median((d[i] + d[j]) / 2.0))
