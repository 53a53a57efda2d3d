"""The statistics of a comparison table's column: mean, sample std and t confidence interval of each
row's seeds, and a one-sided test of each row against the column's best (paired by seed when it can)."""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from harness.rows import MethodRow

#: level of the confidence interval of a mean over seeds
CONFIDENCE = 0.95
#: significance level of the one-sided "worse than the best" test over seeds
ALPHA = 0.05


def confidence_interval(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float] | None:
    """The ``level`` confidence interval of the mean of ``values`` (seeds), from the t distribution:
    mean ± t_{(1+level)/2, n-1} · s / √n, s the sample std. ``None`` for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t
    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def worse_p_value(values: Sequence[float], best: Sequence[float], higher_is_better: bool,
                  paired: bool) -> float:
    """One-sided p-value of "``values`` is worse than ``best``" (lower mean when higher is better,
    higher mean otherwise): ``scipy.stats.ttest_rel`` on seed-paired lists when ``paired``, else Welch's
    ``ttest_ind(equal_var=False)``. With no spread at all (constant differences, or both sides
    constant) the t statistic is undefined or infinite: a worse mean is then certain (p 0), an equal
    one is not worse (p 1). Each side needs at least 2 values."""
    from scipy.stats import ttest_ind, ttest_rel
    alternative = "less" if higher_is_better else "greater"
    with warnings.catch_warnings():  # "precision loss ... nearly identical", division by zero
        warnings.simplefilter("ignore", RuntimeWarning)
        if paired:
            result = ttest_rel(values, best, alternative=alternative)
        else:
            result = ttest_ind(values, best, equal_var=False, alternative=alternative)
    p = float(result.pvalue)
    if math.isnan(p):
        difference = statistics.fmean(values) - statistics.fmean(best)
        return 0.0 if (difference < 0 if higher_is_better else difference > 0) else 1.0
    return p


@dataclass(frozen=True)
class Cell:
    """The statistics of one row of one metric's column. ``best``: the row's mean (unrounded) is the
    column's best. ``tied``: marked as not significantly worse than the best (the best rows are).
    ``test``: how the row was compared with the best: ``paired`` (t-test over seeds paired by seed:
    the same seeds and dataset fingerprints), ``welch`` (Welch's t-test), ``none`` (the best itself,
    no value, or fewer than 2 seeds on a side). ``p``: the one-sided p-value of that test."""

    n: int = 0
    mean: float | None = None
    std: float | None = None
    ci: tuple[float, float] | None = None
    best: bool = False
    tied: bool = False
    test: Literal["paired", "welch", "none"] = "none"
    p: float | None = None


def compare_with_best(rows: Sequence[MethodRow], metric: str, higher_is_better: bool = True,
                      alpha: float = ALPHA) -> list[Cell]:
    """One :class:`Cell` per row, in order: mean, sample std, 95 % confidence interval of the mean,
    and whether the row is significantly worse than the column's best at level ``alpha``.

    The best is the row with the best mean (unrounded; among equal means the one with most seeds, then
    the first); every row with that mean is a best and is marked. Every other row is tested against
    it, one-sided in the direction of "worse" (:func:`worse_p_value`): paired by seed when both have
    values for exactly the same seeds (at least 2) and each seed's dataset fingerprint is known and the
    same on both sides, else Welch's test; with fewer than 2 seeds on either side there is no test and
    no mark. A row is marked when p ≥ ``alpha``. No correction for multiple comparisons."""
    cells: list[Cell] = []
    for row in rows:
        values = row.values(metric)
        if not values:
            cells.append(Cell())
            continue
        mean, std = statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)
        cells.append(Cell(len(values), mean, std, confidence_interval(values)))
    means = [c.mean for c in cells if c.mean is not None]
    if not means:
        return cells
    best_mean = max(means) if higher_is_better else min(means)
    reference = max((i for i, c in enumerate(cells) if c.mean == best_mean),
                    key=lambda i: (cells[i].n, -i))
    best_seeds = rows[reference].by_seed(metric)
    best_values = rows[reference].values(metric)
    out = []
    for row, cell in zip(rows, cells):
        if cell.mean is None:
            out.append(cell)
        elif cell.mean == best_mean:
            out.append(replace(cell, best=True, tied=True))
        elif cell.n < 2 or len(best_values) < 2:
            out.append(cell)
        else:
            seeds = row.by_seed(metric)
            paired = (bool(seeds) and seeds.keys() == best_seeds.keys() and all(
                seeds[s][1] is not None and seeds[s][1] == best_seeds[s][1] for s in seeds))
            if paired:
                order = sorted(seeds)
                p = worse_p_value([seeds[s][0] for s in order], [best_seeds[s][0] for s in order],
                                  higher_is_better, paired=True)
            else:
                p = worse_p_value(row.values(metric), best_values, higher_is_better, paired=False)
            out.append(replace(cell, tied=p >= alpha, test="paired" if paired else "welch", p=p))
    return out
