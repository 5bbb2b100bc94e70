"""`persyn compare`'s intervals: hand-checked parts, and their coverage on simulated comparisons."""

from __future__ import annotations

import numpy as np
import pytest
from interval_simulation import REGIMES, coverage_and_width, simulate
from scipy import stats

from persyn_hub.compare.intervals import (
    critical_value,
    difference_interval,
    interval_cells,
    mean_interval,
    paired_differences,
    variance_parts,
)

REPLICATIONS = 2000
"""Per regime: the coverage estimate's standard error is 0.005, so 0.93 sits 4 of them below 0.95."""


def test_interval_coverage_is_nominal_with_and_without_seed_effects():
    """Every regime of the comparison (3 or 5 seeds, 100 or 300 items, items alike or not, no, moderate
    or strong seed effects): means, paired differences and differences to the one untuned model cover
    their true value at least 93% of the time at nominal 95%, and are not uselessly wide (<= 99%)."""
    rng = np.random.default_rng(28)
    failures, rows = [], []
    for regime in REGIMES:
        run = simulate(regime, REPLICATIONS, rng)
        kinds = {  # as the report computes them: a mean, a paired difference, a difference to one model
            "mean": (mean_interval(run.strategy), run.true_strategy),
            "difference": (difference_interval(run.strategy, run.reference), run.true_difference),
            "minus untuned": (difference_interval(run.strategy, run.untuned), run.true_minus_untuned),
        }
        for kind, (interval, truth) in kinds.items():
            coverage, width = coverage_and_width(interval["low"], interval["high"], truth)
            rows.append(f"{regime.label}, {kind}: coverage {coverage:.3f}, width {width:.3f}")
            if not 0.93 <= coverage <= 0.99:
                failures.append(rows[-1])
    assert not failures, "\n".join(failures)


def test_one_seed_is_the_item_t_interval():
    """One run (the untuned student): nothing to redraw between seeds, so mean +- t(N-1) * sd / sqrt(N)."""
    scores = np.tile([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0], (1, 5))  # 40 items
    interval = mean_interval(scores)
    half = stats.t.ppf(0.975, 39) * scores.std(ddof=1) / np.sqrt(40)
    assert interval["mean"] == pytest.approx(0.625)
    assert [interval["low"], interval["high"]] == pytest.approx([0.625 - half, 0.625 + half], abs=1e-4)
    assert interval["seed_share"] == 0.0


def test_the_multiplier_runs_from_the_item_t_to_the_seed_t():
    """All the variance from items: t with N-1 df; all from seeds: t with S-1 df (widened a little by the
    item t); a share in between: in between, and rising with the share."""
    values = critical_value(np.linspace(0.0, 1.0, 11), seeds=3, items=200)
    assert values[0] == pytest.approx(stats.t.ppf(0.975, 199), abs=1e-4)
    assert stats.t.ppf(0.975, 2) < values[-1] < stats.t.ppf(0.975, 2) * 1.01
    assert np.all(np.diff(values) > 0)


def test_variance_parts_recover_seed_and_item_effects():
    """A seed shift shows in the seed part only; a per-item effect shared by every seed in the item part."""
    items = np.tile([0.0, 1.0], 50)  # 100 items, half easy for everyone
    seed_shift = np.array([[0.0], [0.2], [0.4]])
    _, seed_part, item_part = variance_parts(np.zeros((3, 100)) + seed_shift)
    assert seed_part == pytest.approx(np.var([0.0, 0.2, 0.4], ddof=1) / 3) and item_part == 0.0
    _, seed_part, item_part = variance_parts(np.tile(items, (3, 1)))
    assert seed_part == 0.0 and item_part == pytest.approx(items.var(ddof=1) / 100)


def test_cells_report_per_seed_means_and_paired_per_seed_differences():
    persyn = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    strong = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    base = np.array([[0.0, 1.0, 0.0, 0.0]])
    cells = interval_cells({"student": base, "strong": strong, "persyn": persyn}, reference="persyn")
    assert cells["persyn"]["per_seed"] == [0.5, 0.25, 0.75]
    assert cells["strong"]["minus_persyn"]["per_seed"] == [-0.25, 0.0, -0.25]  # seed with seed
    assert cells["student"]["minus_persyn"]["per_seed"] == [-0.25, 0.0, -0.5]  # one model minus each seed
    assert cells["strong"]["minus_persyn"]["mean"] == pytest.approx(-1 / 6)
    low, high = cells["strong"]["minus_persyn"]["interval"]
    assert low < -1 / 6 < high and cells["strong"]["minus_persyn"]["significant"] is (high < 0)
    twin = interval_cells({"persyn": persyn, "twin": persyn.copy()}, reference="persyn")
    assert twin["twin"]["minus_persyn"]["interval"] == [0.0, 0.0]  # identical scores: a zero difference
    assert not twin["twin"]["minus_persyn"]["significant"]
    off = interval_cells({"persyn": persyn, "strong": strong}, reference="persyn", intervals=False)
    assert "interval" not in off["persyn"] and "interval" not in off["strong"]["minus_persyn"]
    with pytest.raises(ValueError, match="same seeds"):
        paired_differences(np.zeros((3, 4)), np.zeros((2, 4)))


def test_an_interval_stays_within_the_scores_range():
    """Few items near 0: mean - q * SE would be a negative accuracy; the interval stops at the lowest score."""
    scores = np.zeros((3, 8))
    scores[0, 0] = scores[1, 1] = 1.0
    interval = mean_interval(scores)
    assert interval["low"] == 0.0 and 0.0 < interval["mean"] < interval["high"] <= 1.0
    # a difference of 0/1 scores may reach -1 or +1, even where every observed difference is >= 0
    strong = scores.copy()
    strong[2, 2] = 1.0  # never below persyn on any seed or item
    better = interval_cells({"persyn": scores, "strong": strong}, reference="persyn")
    assert better["strong"]["minus_persyn"]["interval"][0] < 0.0 < better["strong"]["minus_persyn"]["mean"]
