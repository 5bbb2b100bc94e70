"""Coverage and width of `persyn compare`'s intervals, old method vs new, on simulated comparisons.

    python benchmarks/bench_interval_coverage.py --replications 2000 --resamples 1000 --seed 0

Each regime (tests/interval_simulation.py: 3 or 5 seeds, 100 or 300 binary items, items alike or of
varying difficulty, no / moderate / strong seed effects) is simulated `replications` times with known
true means. For every replication three intervals are computed at nominal 95%:

* old: the crossed percentile bootstrap `persyn compare` used before (items and seeds resampled with
  replacement together, `resamples` draws, the same draws for both strategies of a difference);
* t over seed means: mean of the seed means +- t(S-1) * sd / sqrt(S) (a candidate; ignores items);
* new: `persyn_hub.compare.intervals.mean_interval` / `difference_interval` (seed and item parts,
  generalized-pivot multiplier), as the report computes them.

Kinds: a strategy's mean, its paired difference to a reference strategy, and its difference to the one
untuned model. A cell is `coverage / mean width`. The markdown table goes to docs/comparison.md.
Last line: `min_coverage old=X new=Y` over every regime and kind.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run from a checkout, installed or not

from interval_simulation import REGIMES, coverage_and_width, simulate  # noqa: E402

from persyn_hub.compare.intervals import difference_interval, mean_interval, paired_differences  # noqa: E402

KINDS = ("mean", "difference", "minus untuned")


def crossed_bootstrap(
    matrices: list[np.ndarray], resamples: int, rng: np.random.Generator, chunk: int = 25
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The old method on (replications x seeds x items) arrays: percentile intervals of the mean after
    resampling seeds and items with replacement, one draw of items and seeds shared by all matrices
    (as the old code shared them across strategies). A resampled mean is c_seed . Y . c_item / (S N)
    with c the multinomial counts of each index, which is what drawing indices gives."""
    replications, seeds, items = matrices[0].shape
    lows = [np.empty(replications) for _ in matrices]
    highs = [np.empty(replications) for _ in matrices]
    for start in range(0, replications, chunk):
        stop = min(start + chunk, replications)
        n = stop - start
        item_draws = rng.integers(0, items, size=(n, resamples, items))
        offsets = (np.arange(n * resamples) * items).reshape(n, resamples, 1)
        item_counts = np.bincount((item_draws + offsets).ravel(), minlength=n * resamples * items)
        item_counts = item_counts.reshape(n, resamples, items).astype(np.float64)
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=(n, resamples)).astype(
            np.float64
        )
        for index, matrix in enumerate(matrices):
            per_seed = np.matmul(matrix[start:stop], item_counts.transpose(0, 2, 1))  # n x seeds x resamples
            cols = per_seed.shape[1]
            weights = seed_counts.transpose(0, 2, 1) if cols == seeds else np.ones((n, 1, resamples))
            means = (per_seed * weights).sum(axis=1) / (cols * items)
            lows[index][start:stop] = np.quantile(means, 0.025, axis=1)
            highs[index][start:stop] = np.quantile(means, 0.975, axis=1)
    return list(zip(lows, highs))


def t_over_seed_means(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rejected candidate: a t interval over the S seed means (exact only when items are alike)."""
    seed_means = matrix.mean(axis=-1)
    seeds = seed_means.shape[-1]
    half = stats.t.ppf(0.975, seeds - 1) * seed_means.std(axis=-1, ddof=1) / np.sqrt(seeds)
    return seed_means.mean(axis=-1) - half, seed_means.mean(axis=-1) + half


def measure(replications: int, resamples: int, seed: int) -> list[dict]:
    """One row per regime: {kind: {method: (coverage, width)}}."""
    rng = np.random.default_rng(seed)
    rows = []
    for regime in REGIMES:
        run = simulate(regime, replications, rng)
        matrices = {
            "mean": (run.strategy, run.true_strategy),
            "difference": (paired_differences(run.strategy, run.reference), run.true_difference),
            "minus untuned": (paired_differences(run.strategy, run.untuned), run.true_minus_untuned),
        }
        old = crossed_bootstrap([m for m, _ in matrices.values()], resamples, rng)
        new_intervals = {
            "mean": mean_interval(run.strategy),
            "difference": difference_interval(run.strategy, run.reference),
            "minus untuned": difference_interval(run.strategy, run.untuned),
        }
        row: dict = {"regime": regime.label}
        for (kind, (matrix, truth)), (low, high) in zip(matrices.items(), old):
            new = new_intervals[kind]
            row[kind] = {
                "old": coverage_and_width(low, high, truth),
                "new": coverage_and_width(new["low"], new["high"], truth),
                "t over seed means": coverage_and_width(*t_over_seed_means(matrix), truth),
            }
        rows.append(row)
        print(f"  {regime.label}: done", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], methods: tuple[str, ...], kinds: tuple[str, ...]) -> str:
    """Markdown, one row per regime, `coverage / mean width` per kind and method (docs/comparison.md)."""
    header = ["regime"] + [f"{kind}: {method}" for kind in kinds for method in methods]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [f"{row[k][m][0]:.3f} / {row[k][m][1]:.3f}" for k in kinds for m in methods]
        lines.append("| " + " | ".join([row["regime"], *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replications", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap draws of the old method")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = measure(args.replications, args.resamples, args.seed)
    print(
        f"Coverage / mean width of nominal 95% intervals, {args.replications} simulated comparisons per regime"
    )
    print(table(rows, ("old", "new"), KINDS))
    print("\nCandidate: t over seed means (items ignored)")
    print(table(rows, ("t over seed means",), ("mean", "difference")))
    low = {m: min(row[k][m][0] for row in rows for k in KINDS) for m in ("old", "new", "t over seed means")}
    print(f"\n{time.perf_counter() - started:.0f} s")
    print(
        f"min_coverage old={low['old']:.3f} new={low['new']:.3f} t_over_seed_means={low['t over seed means']:.3f}"
    )


if __name__ == "__main__":
    main()
