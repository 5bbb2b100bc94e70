"""How well a router picks teachers on held-out prompts, next to the baselines it must beat.

The computation lives in the `evaluate` module `persyn_hub/router/evaluate_modules/routing_metrics` (one file,
pushable to the Hub as-is, definitions in its docstring and metric card); this module re-exports it so
persyn_hub and `evaluate.load(routing_metrics_module_path())` give the same numbers from the same code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from persyn_hub.router.evaluate_modules.routing_metrics.routing_metrics import (
    DEFINITIONS,
    INTERVAL_METRICS,
    REWARD_RECOVERED_DEFINITION,
    best_single_teacher,
    compute_routing_metrics,
    effective_rewards,
    gap_recovered,
)

__all__ = [
    "DEFINITIONS",
    "INTERVAL_METRICS",
    "REWARD_RECOVERED_DEFINITION",
    "best_single_teacher",
    "compute_routing_metrics",
    "effective_rewards",
    "gap_recovered",
    "impute_unasked",
    "mask_unasked",
    "routing_metrics",
    "routing_metrics_module_path",
]


def routing_metrics_module_path() -> Path:
    """Directory of the `evaluate` module, for `evaluate.load(str(routing_metrics_module_path()))`.

    Resolved through the installed package (works from a wheel), not the source checkout.
    """
    path = Path(str(resources.files("persyn_hub.router.evaluate_modules") / "routing_metrics"))
    if not (path / "routing_metrics.py").is_file():
        raise FileNotFoundError(
            f"The routing_metrics evaluate module is missing at {path}; reinstall persyn_hub (unzipped) so its "
            "package data ships."
        )
    return path


def routing_metrics(
    scores: np.ndarray,
    rewards: np.ndarray,
    train_rewards: np.ndarray | None,
    teachers: list[str] | None,
    tie_margin: float = 1e-6,
    **kwargs: Any,
) -> dict[str, Any]:
    """Held-out metrics of a router from its `scores` and the true `rewards` (prompts x teachers; NaN: unusable).

    `compute_routing_metrics` with persyn_hub's argument order; `kwargs` go through (best_single instead of
    train_rewards, k_values, bootstrap, seed, confidence). Adds `reward_recovered_definition` and the old
    `oracle_distribution` key (same values as `oracle_share`) that existing router cards read.
    """
    metrics = compute_routing_metrics(
        scores, rewards, train_rewards=train_rewards, teachers=teachers, tie_margin=tie_margin, **kwargs
    )
    # persyn_hub/model_cards/router_card.md reads `oracle_distribution`; drop this alias once it reads
    # `oracle_share`.
    metrics["oracle_distribution"] = dict(metrics["oracle_share"])
    metrics["reward_recovered_definition"] = REWARD_RECOVERED_DEFINITION
    return metrics


def impute_unasked(rewards: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """Rewards for metrics among the teachers ASKED per prompt (partial labeling): a teacher not asked gets
    the mean effective reward of those asked, so the oracle, the worst and the random teacher's figure are
    those of the asked teachers (a random asked teacher is exactly their mean), and a best single teacher
    not asked on a prompt counts as a random asked one there. An asked but unusable answer stays NaN (the
    prompt's worst, as everywhere). Fully asked rewards come back unchanged."""
    if asked.all():
        return rewards
    effective = effective_rewards(np.where(asked, rewards, np.nan))
    mean_asked = np.where(asked, effective, 0.0).sum(axis=1) / np.maximum(asked.sum(axis=1), 1)
    return np.where(asked, rewards, mean_asked[:, None])


def mask_unasked(scores: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """Router scores with every teacher not asked on a prompt below all others, so the routed teacher (and
    hit@k) is chosen among the asked teachers, whose rewards are known."""
    if asked.all():
        return scores
    low = float(scores.min()) - 1.0 - float(scores.max() - scores.min())
    return np.where(asked, scores, low)
