"""Routing metrics: how well a per-prompt teacher router does next to the oracle, the best single teacher
and uniformly random assignment, with seeded paired-bootstrap intervals.

A self-contained Hugging Face `evaluate` metric module (numpy, `datasets` and `evaluate` only), so the
same file computes the numbers in persyn_hub and can be pushed to the Hub as-is. Load it with
`evaluate.load("/path/to/routing_metrics")`; the plain functions below do all of the work.

Inputs: `scores` (n prompts x K teachers, router scores; the argmax, lowest index on ties, is the routed
teacher; hard decisions one-hot, then hit@k for k > 1 only reflects column order), `rewards` (n x K, the
true combined reward of each teacher on each held-out prompt; NaN = unusable), and the best single
teacher: an index `best_single`, or `train_rewards` (m x K) to choose it on TRAIN prompts (choosing it on
the test prompts would hand the baseline the test labels). Every figure is defined once, in `DEFINITIONS`
below, the text the router card and summary.json print.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

DEFINITIONS: dict[str, str] = {
    "effective_reward": "effective reward = the teacher's reward on the prompt; an unusable (NaN) reward counts "
    "as the prompt's worst usable reward (a failed answer is no better than the worst; where every usable "
    "teacher ties, an unusable one ties with them); a prompt with no usable reward is an error",
    "oracle": "oracle / worst = the max / min effective reward per prompt; oracle_share = share of prompts "
    "each teacher is the first-argmax oracle for",
    "top1_agreement": "top1_agreement = share of prompts whose routed teacher (score argmax) has an effective "
    "reward within tie_margin of the prompt's best",
    "hit_at_k": "hit_at_k[k] = share of prompts where a teacher with effective reward within tie_margin of the "
    "best is among the router's k highest scores (k = 1..min(3, K) by default; hit_at_k[1] = top1_agreement)",
    "reward_recovered": "reward_recovered = (sum routed reward - sum worst) / (sum oracle reward - sum worst) "
    "over held-out prompts; unusable teachers count as the worst usable reward on the prompt; 1.0 when there "
    "is no gap; unchanged by shifting the rewards (z-scores)",
    "regret": "regret = mean over prompts of (oracle effective reward - routed effective reward); "
    "mean_reward_* the mean effective reward; teacher_distribution the share routed to each teacher",
    "best_single": "best single teacher = the teacher with the highest mean effective reward on the TRAIN "
    "prompts (ties: lowest index)",
    "random": "random = the exact expectation of a uniformly random teacher per prompt: the mean effective "
    "reward over all teachers",
    "intervals": "intervals[metric] = [low, high] percentile interval of a seeded paired bootstrap over prompts "
    "(all figures computed on the same resampled prompts)",
}
REWARD_RECOVERED_DEFINITION = DEFINITIONS["reward_recovered"]
INTERVAL_METRICS = (
    "top1_agreement",
    "reward_recovered",
    "reward_recovered_best_single",
    "reward_recovered_random",
    "regret",
    "reward_recovered_minus_best_single",
    "reward_recovered_minus_random",
)
"""The figures that get bootstrap intervals (the keys of `intervals`)."""

_BOOTSTRAP_CELLS = 4_000_000
"""Resamples x prompts per bootstrap chunk: bounds memory (~32 MB of counts) for large held-out sets."""


def _as_matrix(value: Any, name: str) -> np.ndarray:
    """`value` as a float (rows, columns) array, or a ValueError that names the argument and the fix."""
    if value is None:
        raise ValueError(f"{name} is required: pass a (prompts, teachers) array.")
    try:
        matrix = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must be a numeric (prompts, teachers) array with the same number of teachers in every "
            f"row ({error})."
        ) from None
    if matrix.size == 0:
        raise ValueError(
            f"{name} is empty (shape {matrix.shape}): pass at least one prompt row with one column per teacher."
        )
    if matrix.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (prompts, teachers), got shape {matrix.shape}; for a single prompt pass [[...]]."
        )
    return matrix


def _rows(mask: np.ndarray) -> str:
    """The first few row numbers where `mask` holds, for error messages."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(row)) for row in rows[:5])
    return shown + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")


def effective_rewards(rewards: Any, *, name: str = "rewards") -> np.ndarray:
    """Rewards with NaN (unusable) -> the prompt's worst usable reward; a failed answer is no better."""
    matrix = _as_matrix(rewards, name)
    if np.isinf(matrix).any():
        raise ValueError(
            f"{name} has infinite values in row(s) {_rows(np.isinf(matrix).any(axis=1))}; "
            "mark unusable teachers with NaN instead."
        )
    usable = ~np.isnan(matrix)
    empty = ~usable.any(axis=1)
    if empty.any():
        raise ValueError(
            f"{name} row(s) {_rows(empty)} have no usable reward (all NaN): every teacher failed on that "
            "prompt, so no teacher choice can be scored; drop those prompts or fix their labels."
        )
    worst = np.where(usable, matrix, np.inf).min(axis=1, keepdims=True)
    return np.where(usable, matrix, worst)


def best_single_teacher(train_rewards: Any) -> int:
    """Index of the teacher with the highest mean effective reward on the TRAIN prompts (ties: lowest index).

    Chosen on train, never on the evaluated prompts, so the baseline does not see the test labels.
    """
    return int(np.argmax(effective_rewards(train_rewards, name="train_rewards").mean(axis=0)))


def gap_recovered(chosen: Any, oracle: Any, worst: Any) -> float:
    """Share of the summed worst-to-oracle gap that `chosen` (per-prompt rewards) closes; 1.0 with no gap."""
    chosen, oracle, worst = (np.asarray(v, dtype=float) for v in (chosen, oracle, worst))
    return float(_gap_ratio(np.sum(chosen - worst), np.sum(oracle - worst)))


def _gap_ratio(gain: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Vectorized `gap_recovered` on summed gains (chosen - worst) and gaps (oracle - worst)."""
    safe = np.where(gap > 0.0, gap, 1.0)
    return np.where(gap > 0.0, gain / safe, 1.0)


def _resolve_teachers(teachers: Sequence[str] | None, k: int) -> list[str]:
    if teachers is None:
        return [f"teacher_{i}" for i in range(k)]
    names = [str(name) for name in teachers]
    if len(names) != k:
        raise ValueError(
            f"teachers has {len(names)} names but scores/rewards have {k} teacher columns; pass one name per "
            "column, in column order."
        )
    if len(set(names)) != k:
        raise ValueError("teachers has duplicate names; each column needs its own name.")
    return names


def _resolve_best_single(best_single: int | None, train_rewards: Any, k: int) -> int:
    if (best_single is None) == (train_rewards is None):
        raise ValueError(
            "Pass exactly one of best_single (a teacher index) or train_rewards ((train prompts, teachers) "
            "rewards to pick the best single teacher on); the best single teacher must not be chosen on the "
            "evaluated prompts."
        )
    if train_rewards is not None:
        train = _as_matrix(train_rewards, "train_rewards")
        if train.shape[1] != k:
            raise ValueError(
                f"train_rewards has {train.shape[1]} teacher columns but scores/rewards have {k}; use the same "
                "teachers in the same column order."
            )
        return best_single_teacher(train)
    if isinstance(best_single, bool) or not isinstance(best_single, (int, np.integer)):
        raise ValueError(f"best_single must be an int teacher index, got {best_single!r}.")
    if not 0 <= best_single < k:
        raise ValueError(
            f"best_single={best_single} is out of range; it must be a column index in 0..{k - 1}."
        )
    return int(best_single)


def _resolve_k_values(k_values: Sequence[int] | None, k: int) -> list[int]:
    if k_values is None:
        return list(range(1, min(3, k) + 1))
    values = sorted({int(value) for value in k_values})
    if not values or values[0] < 1 or values[-1] > k:
        raise ValueError(
            f"k_values={list(k_values)} must be a non-empty list of ints in 1..{k} (the teachers)."
        )
    return values


def _bootstrap_intervals(
    columns: np.ndarray, n_resamples: int, seed: int | None, confidence: float
) -> dict[str, list[float]]:
    """Percentile intervals from a paired bootstrap over prompts, vectorized over resamples.

    `columns` is (prompts, 6): agree, gap (oracle - worst), routed / single / random gain (- worst), regret.
    Each resample is a count vector over prompts, so one matrix product gives every resampled sum, and all
    figures of a resample (and their differences) use the same prompts.
    """
    n = columns.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    sums = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        picks = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(picks.ravel(), minlength=size * n).reshape(size, n).astype(float)
        sums.append(counts @ columns)
    agree, gap, routed, single, random, regret = np.concatenate(sums).T
    recovered = _gap_ratio(routed, gap)
    recovered_single = _gap_ratio(single, gap)
    recovered_random = _gap_ratio(random, gap)
    draws = {
        "top1_agreement": agree / n,
        "reward_recovered": recovered,
        "reward_recovered_best_single": recovered_single,
        "reward_recovered_random": recovered_random,
        "regret": regret / n,
        "reward_recovered_minus_best_single": recovered - recovered_single,
        "reward_recovered_minus_random": recovered - recovered_random,
    }
    tail = (1.0 - confidence) / 2.0
    return {
        name: [float(bound) for bound in np.quantile(values, [tail, 1.0 - tail])]
        for name, values in draws.items()
    }


def _checked_inputs(
    scores: Any,
    rewards: Any,
    train_rewards: Any,
    best_single: int | None,
    teachers: Sequence[str] | None,
    tie_margin: float,
    k_values: Sequence[int] | None,
    bootstrap: int,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray, list[str], int, list[int]]:
    """`compute_routing_metrics`' arguments, checked: (scores, rewards, teacher names, best single teacher's
    index, the k of hit@k); a ValueError names the argument at fault and what it must be."""
    score_matrix = _as_matrix(scores, "scores")
    reward_matrix = _as_matrix(rewards, "rewards")
    if score_matrix.shape != reward_matrix.shape:
        raise ValueError(
            f"scores has shape {score_matrix.shape} but rewards has {reward_matrix.shape}; both must be "
            "(prompts, teachers) with the same prompts (rows) and teachers (columns) in the same order."
        )
    n, k = score_matrix.shape
    if k < 2:
        raise ValueError(f"scores/rewards have {k} teacher column; routing needs at least 2 teachers.")
    if not np.isfinite(score_matrix).all():
        raise ValueError(
            f"scores has NaN or infinite values in row(s) {_rows(~np.isfinite(score_matrix).all(axis=1))}; "
            "the router must give every teacher a finite score."
        )
    names = _resolve_teachers(teachers, k)
    single = _resolve_best_single(best_single, train_rewards, k)
    if not np.isfinite(tie_margin) or tie_margin < 0:
        raise ValueError(f"tie_margin must be a finite number >= 0, got {tie_margin!r}.")
    ks = _resolve_k_values(k_values, k)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an int >= 0 (number of resamples; 0 = off), got {bootstrap!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}.")
    return score_matrix, reward_matrix, names, single, ks


def compute_routing_metrics(
    scores: Any,
    rewards: Any,
    *,
    train_rewards: Any = None,
    best_single: int | None = None,
    teachers: Sequence[str] | None = None,
    tie_margin: float = 1e-6,
    k_values: Sequence[int] | None = None,
    bootstrap: int = 1000,
    seed: int | None = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Held-out routing metrics from router `scores` and true `rewards` (both prompts x teachers; NaN: unusable).

    Returns the figures defined in the module docstring; `intervals` is empty when `bootstrap=0`.
    """
    score_matrix, reward_matrix, names, single, ks = _checked_inputs(
        scores, rewards, train_rewards, best_single, teachers, tie_margin, k_values, bootstrap, confidence
    )
    n, k = score_matrix.shape
    effective = effective_rewards(reward_matrix)
    oracle = effective.max(axis=1)
    worst = effective.min(axis=1)
    is_oracle = effective >= (oracle - tie_margin)[:, None]

    # Stable sort of -scores: ties keep column order, so the top-1 is np.argmax's choice.
    ranking = np.argsort(-score_matrix, axis=1, kind="stable")
    routed = ranking[:, 0]
    rows = np.arange(n)
    routed_reward = effective[rows, routed]
    single_reward = effective[:, single]
    random_reward = effective.mean(axis=1)
    agree = is_oracle[rows, routed]
    hits = np.logical_or.accumulate(np.take_along_axis(is_oracle, ranking[:, : max(ks)], axis=1), axis=1)

    routed_counts = np.bincount(routed, minlength=k)
    oracle_counts = np.bincount(effective.argmax(axis=1), minlength=k)
    metrics: dict[str, Any] = {
        "num_prompts": n,
        "top1_agreement": float(agree.mean()),
        "hit_at_k": {kk: float(hits[:, kk - 1].mean()) for kk in ks},
        "reward_recovered": gap_recovered(routed_reward, oracle, worst),
        "reward_recovered_best_single": gap_recovered(single_reward, oracle, worst),
        "reward_recovered_random": gap_recovered(random_reward, oracle, worst),
        "regret": float(np.mean(oracle - routed_reward)),
        "regret_best_single": float(np.mean(oracle - single_reward)),
        "regret_random": float(np.mean(oracle - random_reward)),
        "mean_reward_routed": float(routed_reward.mean()),
        "mean_reward_oracle": float(oracle.mean()),
        "mean_reward_best_single": float(single_reward.mean()),
        "mean_reward_random": float(random_reward.mean()),
        "teacher_distribution": {name: float(c / n) for name, c in zip(names, routed_counts)},
        "oracle_share": {name: float(c / n) for name, c in zip(names, oracle_counts)},
        "best_single_teacher": names[single],
        "bootstrap": int(bootstrap),
        "confidence": float(confidence),
        "intervals": {},
    }
    if bootstrap:
        gains = (routed_reward, single_reward, random_reward)
        columns = np.column_stack(
            [agree, oracle - worst, *(g - worst for g in gains), oracle - routed_reward]
        )
        metrics["intervals"] = _bootstrap_intervals(columns, int(bootstrap), seed, confidence)
    return metrics


_CITATION = """\
@article{persyn2025,
  title={Find Your Optimal Teacher: Personalized Data Synthesis via Router-Guided Multi-Teacher Distillation},
  journal={arXiv preprint arXiv:2510.10925},
  year={2025},
  url={https://arxiv.org/abs/2510.10925}
}
"""

_DESCRIPTION = """\
Routing metrics for a per-prompt teacher router (PerSyn): top-1 agreement with the oracle teacher, hit@k,
the share of the worst-to-oracle reward gap the router recovers, regret, and the same figures for the best
single teacher (chosen on train prompts) and for uniformly random assignment, with seeded paired-bootstrap
percentile intervals. Unusable teachers (NaN reward) count as the prompt's worst usable reward.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: router scores, one list of K floats per prompt (argmax = routed teacher; one-hot for hard
        decisions).
    references: true rewards, one list of K floats per prompt; NaN = unusable teacher on that prompt.
    train_rewards: (train prompts, K) rewards; the best single teacher is the one with the highest mean
        effective reward on them (ties: lowest index). Pass this or `best_single`.
    best_single: index of the best single teacher, instead of `train_rewards`.
    teachers: K teacher names (default teacher_0..teacher_{K-1}); dict outputs are keyed by them.
    tie_margin: rewards within this of the prompt's best count as the oracle (default 1e-6).
    k_values: the k of hit_at_k (default 1..min(3, K)).
    bootstrap: paired bootstrap resamples over prompts for `intervals` (default 1000; 0 = off).
    seed: seed of the bootstrap (default 0).
    confidence: interval coverage (default 0.95).
Returns:
    num_prompts, top1_agreement, hit_at_k ({k: share}), reward_recovered[_best_single, _random],
    regret[_best_single, _random], mean_reward_{routed, oracle, best_single, random}, teacher_distribution and
    oracle_share ({name: share}), best_single_teacher (name), bootstrap, confidence, intervals ({metric:
    [low, high]} for INTERVAL_METRICS). Definitions: DEFINITIONS in the module.
Examples:
    >>> import evaluate
    >>> routing = evaluate.load("path/to/routing_metrics")
    >>> results = routing.compute(
    ...     predictions=[[0.1, 2.0], [3.0, 0.5]],
    ...     references=[[0.0, 1.0], [1.0, float("nan")]],
    ...     train_rewards=[[0.0, 1.0], [0.5, 0.2]],
    ...     teachers=["small", "large"],
    ...     bootstrap=0,
    ... )
    >>> results["top1_agreement"], results["reward_recovered"], results["best_single_teacher"]
    (1.0, 1.0, 'large')
"""

_ROW = datasets.List(datasets.Value("float64"))  # datasets >= 4


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RoutingMetrics(evaluate.Metric):
    """`evaluate` wrapper of `compute_routing_metrics`: predictions = router scores, references = rewards."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _ROW, "references": _ROW}),
            reference_urls=["https://arxiv.org/abs/2510.10925"],
        )

    def _compute(self, predictions: list[list[float]], references: list[list[float]], **options: Any) -> dict:
        """`options`: the keyword arguments of `compute_routing_metrics` (train_rewards, best_single, ...)."""
        try:
            return compute_routing_metrics(predictions, references, **options)
        except ValueError as error:
            raise ValueError(
                f"{error} (here scores are `predictions` and rewards are `references`)"
            ) from None
