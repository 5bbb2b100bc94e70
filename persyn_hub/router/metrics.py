"""How well a router picks teachers on held-out prompts, next to the baselines it must beat.

Definitions (also written in the router card):

* Effective reward: a teacher's combined reward on a prompt; where that teacher has no usable reward
  (failed or unscorable generation), it counts as the worst usable reward on that prompt, since a
  failed generation is no better than the worst teacher. The router, the best single teacher and random
  assignment are all scored with this same rule.
* Oracle / worst: the highest / lowest usable reward on the prompt.
* top1_agreement: share of prompts where the routed teacher's reward is within `tie_margin` of the
  oracle's (ties count as agreement: any tied best teacher is an oracle choice).
* reward_recovered: (sum of routed reward - sum of worst) / (sum of oracle - sum of worst) over the
  prompts: the share of the worst-to-oracle gap the router closes. 1.0 = oracle, 0.0 = always the worst
  teacher. Z-scored rewards can be negative, so a plain ratio of means would be meaningless; this
  gap ratio is invariant to shifting the rewards. When no prompt has a gap, every choice is optimal: 1.0.
* reward_recovered_best_single: the same figure for the single teacher with the highest mean effective
  reward on the TRAIN prompts. reward_recovered_random: the exact expectation for a uniformly random
  teacher per prompt (mean effective reward over all teachers), not a sample.
"""

from __future__ import annotations

import numpy as np

REWARD_RECOVERED_DEFINITION = (
    "reward_recovered = (sum routed reward - sum worst) / (sum oracle reward - sum worst) over held-out "
    "prompts; unusable teachers count as the worst usable reward on the prompt"
)


def effective_rewards(rewards: np.ndarray) -> np.ndarray:
    """NaN (unusable) -> the prompt's worst usable reward."""
    worst = np.nanmin(rewards, axis=1, keepdims=True)
    return np.where(np.isfinite(rewards), rewards, worst)


def gap_recovered(chosen: np.ndarray, oracle: np.ndarray, worst: np.ndarray) -> float:
    """Share of the summed worst-to-oracle gap that `chosen` (per-prompt rewards) closes."""
    gap = float(np.sum(oracle - worst))
    if gap <= 0.0:
        return 1.0
    return float(np.sum(chosen - worst) / gap)


def routing_metrics(
    scores: np.ndarray,
    rewards: np.ndarray,
    train_rewards: np.ndarray,
    teachers: list[str],
    tie_margin: float = 1e-6,
) -> dict:
    """Held-out metrics of a router from its `scores` (prompts x teachers) and the true `rewards` (NaN: unusable)."""
    if scores.shape != rewards.shape or scores.shape[1] != len(teachers):
        raise ValueError(
            f"scores {scores.shape} and rewards {rewards.shape} must both be (prompts, {len(teachers)})."
        )
    if len(rewards) == 0:
        raise ValueError("No held-out prompts to evaluate the router on.")
    effective = effective_rewards(rewards)
    oracle = effective.max(axis=1)
    worst = effective.min(axis=1)
    rows = np.arange(len(rewards))

    routed = scores.argmax(axis=1)
    routed_reward = effective[rows, routed]
    best_single = int(np.argmax(effective_rewards(train_rewards).mean(axis=0)))
    single_reward = effective[:, best_single]
    random_reward = effective.mean(axis=1)

    counts = np.bincount(routed, minlength=len(teachers))
    oracle_counts = np.bincount(effective.argmax(axis=1), minlength=len(teachers))
    return {
        "top1_agreement": float(np.mean(routed_reward >= oracle - tie_margin)),
        "reward_recovered": gap_recovered(routed_reward, oracle, worst),
        "reward_recovered_best_single": gap_recovered(single_reward, oracle, worst),
        "reward_recovered_random": gap_recovered(random_reward, oracle, worst),
        "teacher_distribution": {name: float(c / len(rewards)) for name, c in zip(teachers, counts)},
        "oracle_distribution": {name: float(c / len(rewards)) for name, c in zip(teachers, oracle_counts)},
        "best_single_teacher": teachers[best_single],
        "mean_reward_routed": float(routed_reward.mean()),
        "mean_reward_oracle": float(oracle.mean()),
        "mean_reward_best_single": float(single_reward.mean()),
        "mean_reward_random": float(random_reward.mean()),
        "reward_recovered_definition": REWARD_RECOVERED_DEFINITION,
    }
