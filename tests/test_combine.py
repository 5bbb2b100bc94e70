"""Combine: per-prompt normalization, alpha, ties, failed and unscorable rows (the arithmetic, by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from datasets import Dataset

from persyn_hub.recipe.config import LabelingConfig
from persyn_hub.scoring.combine import (
    REASON_FAILED,
    REASON_FEW_TEACHERS,
    REASON_NO_LEARNABILITY,
    REASON_NO_QUALITY,
    combine_rewards,
)


def pool() -> Dataset:
    return Dataset.from_dict(
        {
            "prompt_id": ["p1", "p1", "p1", "p2", "p2", "p2", "p3", "p3", "p4", "p4", "p4"],
            "teacher": ["a", "b", "c", "a", "b", "c", "a", "b", "a", "b", "c"],
            "quality": [1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 1.0, None, 0.0, 1.0, 0.2],
            "learnability": [-1.0, -2.0, -4.0, -1.5, -1.5, -1.5, -1.0, -2.0, -3.0, -1.0, None],
            "error": [None, None, None, None, None, None, None, None, "timeout", None, None],
        }
    )


def by_hand_zscore(values):
    values = np.asarray(values, dtype=float)
    return (values - values.mean()) / values.std()


def test_zscore_alpha_and_exclusions():
    out = combine_rewards(pool(), LabelingConfig(alpha=0.3, normalization="zscore"))
    q, lr, r, ex = out["quality_norm"], out["learnability_norm"], out["reward"], out["excluded"]
    # p1: three usable teachers
    expect_q = by_hand_zscore([1.0, 0.0, 1.0])
    expect_l = by_hand_zscore([-1.0, -2.0, -4.0])
    assert q[:3] == pytest.approx(list(expect_q))
    assert lr[:3] == pytest.approx(list(expect_l))
    # alpha weights learnability: r = (1 - alpha) * quality + alpha * learnability
    assert r[:3] == pytest.approx(list(0.7 * expect_q + 0.3 * expect_l))
    # p2: all teachers tie on both signals -> 0 for everyone, never NaN
    assert q[3:6] == [0.0, 0.0, 0.0] and lr[3:6] == [0.0, 0.0, 0.0] and r[3:6] == [0.0, 0.0, 0.0]
    # p3: teacher b has no quality -> excluded; a is then alone -> excluded too
    assert ex[6:8] == [REASON_FEW_TEACHERS, REASON_NO_QUALITY]
    assert r[6:8] == [None, None] and q[6:8] == [None, None]
    # p4: a failed (not a zero!), c lacks learnability; b alone -> excluded
    assert ex[8:11] == [REASON_FAILED, REASON_FEW_TEACHERS, REASON_NO_LEARNABILITY]
    assert r[8:11] == [None, None, None]
    assert ex[:6] == [None] * 6
    assert not any(isinstance(v, float) and math.isnan(v) for col in (q, lr, r) for v in col if v is not None)


def test_minmax_and_none():
    mm = combine_rewards(pool(), LabelingConfig(alpha=0.5, normalization="minmax"))
    assert mm["quality_norm"][:3] == [1.0, 0.0, 1.0]
    assert mm["learnability_norm"][:3] == pytest.approx([1.0, 2 / 3, 0.0])
    assert mm["reward"][:3] == pytest.approx([1.0, 1 / 3, 0.5])
    assert mm["reward"][3:6] == [0.0, 0.0, 0.0]
    raw = combine_rewards(pool(), LabelingConfig(alpha=0.25, normalization="none"))
    assert raw["reward"][:3] == pytest.approx([0.75 * 1 + 0.25 * -1, 0.25 * -2, 0.75 - 1.0])
    assert raw["excluded"] == mm["excluded"]


def test_alpha_extremes_pick_one_signal():
    only_q = combine_rewards(pool(), LabelingConfig(alpha=0.0))
    only_l = combine_rewards(pool(), LabelingConfig(alpha=1.0))
    assert only_q["reward"][:3] == pytest.approx(only_q["quality_norm"][:3])
    assert only_l["reward"][:3] == pytest.approx(only_l["learnability_norm"][:3])


def test_rows_in_any_order_and_nan_scores():
    shuffled = pool().select([10, 3, 0, 7, 5, 1, 9, 2, 4, 6, 8])
    out = combine_rewards(shuffled, LabelingConfig(alpha=0.3))
    reference = combine_rewards(pool(), LabelingConfig(alpha=0.3))
    expected = {
        (p, t): r for p, t, r in zip(reference["prompt_id"], reference["teacher"], reference["reward"])
    }
    for p, t, r in zip(out["prompt_id"], out["teacher"], out["reward"]):
        assert (r is None and expected[(p, t)] is None) or r == pytest.approx(expected[(p, t)])
    nan_row = Dataset.from_dict(
        {
            "prompt_id": ["p", "p", "p"],
            "teacher": ["a", "b", "c"],
            "quality": [1.0, float("nan"), 0.0],
            "learnability": [-1.0, -1.0, -2.0],
        }
    )
    out = combine_rewards(nan_row, LabelingConfig())
    assert out["excluded"] == [None, REASON_NO_QUALITY, None]
    assert out["reward"][1] is None and out["reward"][0] > out["reward"][2]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="learnability"):
        combine_rewards(
            Dataset.from_dict({"prompt_id": ["p"], "teacher": ["a"], "quality": [1.0]}), LabelingConfig()
        )
    with pytest.raises(ValueError, match="normalization"):
        combine_rewards(pool(), LabelingConfig(normalization="rank"))  # type: ignore[arg-type]
