"""Simulated comparisons whose true means are known, to measure interval coverage and width.

Shared by tests/test_intervals.py (coverage of `persyn compare`'s intervals) and
benchmarks/bench_interval_coverage.py (old vs new method, the table in docs/comparison.md).

Each replication is one comparison: two strategies (A and a reference B), `seeds` SFT runs each, scored
0/1 on the same `items` evaluation items, plus one untuned model (one run). A score is
Bernoulli(sigmoid(item difficulty + strategy shift + strategy-by-item disagreement + seed effect)):
items differ in difficulty (logit sd `item_sd`, shared by all students), strategies disagree on some
items (`disagreement_sd`, one draw per strategy and item), and each training run shifts its student
(`seed_sd`, one draw per strategy and seed; 0 = seeds do not matter). The untuned model is one fixed
model: no seed effect. True means average over new items and new seeds, by Gauss-Hermite quadrature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

BASE_LOGIT = float(np.log(0.3 / 0.7))
"""The reference strategy's typical score, 0.3 (the demo's students score 0.05 to 0.3)."""
SHIFT = 0.3
"""Strategy A's logit shift over the reference: about +0.06 in score."""


@dataclass(frozen=True)
class Regime:
    """One simulated setting: how many seeds and items, and how much items and seeds matter."""

    seeds: int
    items: int
    item_sd: float
    disagreement_sd: float
    seed_sd: float

    @property
    def label(self) -> str:
        items = "items vary" if self.item_sd else "iid items"
        seeds = {0.0: "no seed effect", 0.2: "moderate seed effect", 0.5: "strong seed effect"}.get(
            self.seed_sd, f"seed sd {self.seed_sd}"
        )
        return f"{self.seeds} seeds x {self.items} items, {items}, {seeds}"


ITEM_STRUCTURES = ((1.5, 0.8), (0.0, 0.0))
"""(item_sd, disagreement_sd): items of varying difficulty on which strategies partly disagree (real
evaluation sets); independent identical items (the simplest case, where the old method was 1.4x wide)."""
SEED_SDS = (0.0, 0.2, 0.5)
"""Logit sd of a training run's shift: none; about 0.03 in score; about 0.08 in score."""
REGIMES = tuple(
    Regime(seeds, items, item_sd, disagreement_sd, seed_sd)
    for item_sd, disagreement_sd in ITEM_STRUCTURES
    for seed_sd in SEED_SDS
    for seeds in (3, 5)
    for items in (100, 300)
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def true_mean(logit: float, sd: float) -> float:
    """E[sigmoid(logit + N(0, sd^2))], exact to 1e-10 with 80 Gauss-Hermite nodes."""
    nodes, weights = hermegauss(80)
    return float((_sigmoid(logit + sd * nodes) * weights).sum() / weights.sum())


@dataclass
class Simulated:
    """`replications` comparisons: scores (replications x seeds x items) and the true means."""

    strategy: np.ndarray
    reference: np.ndarray
    untuned: np.ndarray
    true_strategy: float
    true_difference: float
    true_minus_untuned: float


def simulate(regime: Regime, replications: int, rng: np.random.Generator) -> Simulated:
    """Scores of strategy A, reference B (`seeds` runs each) and one untuned model on the same items."""
    r, s, n = replications, regime.seeds, regime.items
    difficulty = rng.normal(BASE_LOGIT, regime.item_sd, (r, 1, n)).astype(np.float32)

    def scores(shift: float, seeds: int, seed_sd: float) -> np.ndarray:
        disagreement = rng.normal(0.0, regime.disagreement_sd, (r, 1, n)).astype(np.float32)
        seed_effect = rng.normal(0.0, seed_sd, (r, seeds, 1)).astype(np.float32)
        chance = _sigmoid(difficulty + shift + disagreement + seed_effect)
        return (rng.random((r, seeds, n), dtype=np.float32) < chance).astype(np.float64)

    spread = np.hypot(regime.item_sd, regime.disagreement_sd)
    with_seeds = float(np.hypot(spread, regime.seed_sd))
    strategy = true_mean(BASE_LOGIT + SHIFT, with_seeds)
    return Simulated(
        strategy=scores(SHIFT, s, regime.seed_sd),
        reference=scores(0.0, s, regime.seed_sd),
        untuned=scores(0.0, 1, 0.0),
        true_strategy=strategy,
        true_difference=strategy - true_mean(BASE_LOGIT, with_seeds),
        true_minus_untuned=strategy - true_mean(BASE_LOGIT, float(spread)),
    )


def coverage_and_width(low: np.ndarray, high: np.ndarray, truth: float) -> tuple[float, float]:
    """Share of intervals that hold the true value, and their mean width."""
    return float(np.mean((low <= truth) & (truth <= high))), float(np.mean(high - low))


__all__ = ["REGIMES", "Regime", "Simulated", "coverage_and_width", "simulate", "true_mean"]
