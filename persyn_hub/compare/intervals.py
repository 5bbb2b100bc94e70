"""Intervals for the comparison's means and paired differences: seeds and items are both random.

A cell is the mean of a (seeds x items) score matrix: each SFT seed is one training run, each item one
evaluation item, and a new comparison would draw new ones of both. The variance of that mean has two
parts, estimated from the matrix (balanced two-way random model, method of moments):

* seed part = var(seed means) / S: what changes between training runs. A seed's mean also carries its
  own item noise, so this part holds seed effects AND the seed-by-item noise; S - 1 degrees of freedom.
* item part = max(0, var(item means) / N - MS_residual / (S N)): what a new draw of items would change
  (some items are easy for every run), net of the noise the seed part already counts; N - 1 degrees.

SE^2 = seed part + item part, which is unbiased for Var(mean) = s_seed^2/S + s_item^2/N + s_noise^2/(SN).
With 3 seeds the seed part has 2 degrees of freedom, so a normal interval is too narrow whenever the
seed part is a large share of SE^2 (and a Satterthwaite t would estimate its degrees of freedom from
that same 2-df variance). The critical value comes from the generalized pivot instead: the seed part is
redrawn from its chi-square distribution, so the interval is the t with S - 1 degrees of freedom when
seeds dominate, the item t when items do, and in between otherwise.
A paired difference is the same computation on the (seeds x items) differences of the two strategies
on the same seed and item (an untuned student, one model, is subtracted from every seed's row).
Why this method and not the crossed bootstrap it replaced: docs/comparison.md#how-the-intervals-are-computed
(coverage and width simulated by benchmarks/bench_interval_coverage.py, checked by
tests/test_intervals.py).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np
from scipy import special, stats

GRID = 201
"""Seed shares at which the critical value is solved; between them it is interpolated (error < 1e-4)."""

NODES = 1000
"""Chi-square quantile nodes that integrate over the seed part's own uncertainty."""

T_GRID = np.linspace(0.0, 200.0, 20001)
"""Where P(|T| <= x) is tabulated once per table (interpolating it is 20x faster than scipy's t cdf)."""


def variance_parts(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, seed part, item part) of a (..., seeds, items) score array; SE^2 = seed part + item part.

    One seed: the seed part is 0 (one fixed model, nothing to redraw) and every item's variance is the
    item part."""
    scores = np.asarray(scores, dtype=np.float64)
    seeds, items = scores.shape[-2:]
    mean = scores.mean(axis=(-2, -1))
    item_means = scores.mean(axis=-2)
    item_part = item_means.var(axis=-1, ddof=1) / items
    if seeds == 1:
        return mean, np.zeros_like(mean), item_part
    seed_means = scores.mean(axis=-1)
    residual = scores - seed_means[..., None] - item_means[..., None, :] + mean[..., None, None]
    noise = (residual**2).sum(axis=(-2, -1)) / ((seeds - 1) * (items - 1))
    seed_part = seed_means.var(axis=-1, ddof=1) / seeds
    return mean, seed_part, np.maximum(item_part - noise / (seeds * items), 0.0)


@functools.lru_cache(maxsize=64)
def _critical_table(seed_df: int, item_df: int, level: float) -> np.ndarray:
    """q(share) at GRID seed shares: P(|T_item_df| * sqrt(share * k / C + 1 - share) <= q) = level,
    C ~ chi2_k (k = seed_df), solved by bisection with C on NODES quantiles (a midpoint rule)."""
    shares = np.linspace(0.0, 1.0, GRID)[:, None]
    chi2 = stats.chi2.ppf((np.arange(NODES) + 0.5) / NODES, seed_df)[None, :]
    scale = np.sqrt(shares * seed_df / chi2 + (1.0 - shares))
    within = 2.0 * special.stdtr(item_df, T_GRID) - 1.0  # P(|T| <= x)
    low = np.full(GRID, float(stats.t.ppf(0.5 + level / 2, item_df)))  # share 0: the item t
    high = np.full(GRID, 4.0 * float(stats.t.ppf(0.5 + level / 2, min(seed_df, item_df))))
    for _ in range(30):
        mid = (low + high) / 2
        covered = np.interp(mid[:, None] / scale, T_GRID, within, right=1.0).mean(axis=1)
        low, high = np.where(covered < level, mid, low), np.where(covered < level, high, mid)
    return (low + high) / 2


def critical_value(seed_share: np.ndarray, seeds: int, items: int, level: float = 0.95) -> np.ndarray:
    """The generalized-pivot multiplier of SE for a seed part that is `seed_share` of SE^2."""
    share = np.clip(np.nan_to_num(np.asarray(seed_share, dtype=np.float64)), 0.0, 1.0)
    if seeds == 1:
        return np.full(share.shape, float(stats.t.ppf(0.5 + level / 2, items - 1)))
    table = _critical_table(seeds - 1, items - 1, float(level))
    return np.interp(share, np.linspace(0.0, 1.0, GRID), table)


def mean_interval(
    scores: np.ndarray, level: float = 0.95, bounds: Optional[tuple[Any, Any]] = None
) -> dict[str, np.ndarray]:
    """Mean, SE, seed share of SE^2 and the `level` interval of each (..., seeds, items) score matrix,
    kept within `bounds` (default: the lowest and highest score observed)."""
    scores = np.asarray(scores, dtype=np.float64)
    seeds, items = scores.shape[-2:]
    if items < 2:
        raise ValueError(f"an interval needs at least 2 evaluation items, got {items}.")
    mean, seed_part, item_part = variance_parts(scores)
    total = seed_part + item_part
    share = np.divide(seed_part, total, out=np.zeros_like(total), where=total > 0)
    half = critical_value(share, seeds, items, level) * np.sqrt(total)
    # a mean cannot leave the range of the scores it averages (accuracy below 0 on 8 items, say)
    floor, ceiling = bounds or (scores.min(axis=(-2, -1)), scores.max(axis=(-2, -1)))
    low, high = np.maximum(mean - half, floor), np.minimum(mean + half, ceiling)
    return {"mean": mean, "se": np.sqrt(total), "seed_share": share, "low": low, "high": high}


def paired_differences(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(seeds x items) differences, seed with seed and item with item; a one-model side (the untuned
    student) is paired with every seed of the other."""
    scores, reference = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    if scores.shape[-1] != reference.shape[-1]:
        raise ValueError(f"paired scores need the same items: {scores.shape} vs {reference.shape}.")
    if scores.shape[-2] != reference.shape[-2] and 1 not in (scores.shape[-2], reference.shape[-2]):
        raise ValueError(
            f"paired scores need the same seeds (or one model on one side): {scores.shape} vs {reference.shape}."
        )
    return scores - reference


def difference_interval(
    scores: np.ndarray, reference: np.ndarray, level: float = 0.95
) -> dict[str, np.ndarray]:
    """`mean_interval` of the paired differences, kept within what a difference of these scores could be
    (lowest score minus highest reference score, and the other way round)."""
    bounds = (
        np.min(scores, axis=(-2, -1)) - np.max(reference, axis=(-2, -1)),
        np.max(scores, axis=(-2, -1)) - np.min(reference, axis=(-2, -1)),
    )
    return mean_interval(paired_differences(scores, reference), level, bounds)


def _rounded(interval: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "interval": [float(interval["low"]), float(interval["high"])],
        "se": float(interval["se"]),
        "seed_share": float(interval["seed_share"]),
    }


def interval_cells(
    matrices: dict[str, np.ndarray], *, reference: Optional[str], level: float = 0.95, intervals: bool = True
) -> dict[str, dict[str, Any]]:
    """{strategy: mean, per-seed means, interval} and, for every strategy but `reference`, its paired
    difference to it: `minus_<reference>` = {mean, per_seed, interval, significant (excludes 0)}."""
    cells: dict[str, dict[str, Any]] = {}
    for name, matrix in matrices.items():
        cell: dict[str, Any] = {
            "mean": float(matrix.mean()),
            "per_seed": [float(m) for m in matrix.mean(axis=1)],
        }
        if intervals:
            cell.update(_rounded(mean_interval(matrix, level)))
        cells[name] = cell
    if reference not in matrices:
        return cells
    for name, matrix in matrices.items():
        if name == reference:
            continue
        differences = paired_differences(matrix, matrices[reference])
        difference: dict[str, Any] = {
            "mean": cells[name]["mean"] - cells[reference]["mean"],
            "per_seed": [float(m) for m in differences.mean(axis=1)],
        }
        if intervals:
            difference.update(_rounded(difference_interval(matrix, matrices[reference], level)))
            low, high = difference["interval"]
            difference["significant"] = bool(low > 0 or high < 0)
        cells[name]["minus_" + reference] = difference
    return cells


__all__ = [
    "critical_value",
    "difference_interval",
    "interval_cells",
    "mean_interval",
    "paired_differences",
    "variance_parts",
]
