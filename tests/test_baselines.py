"""Every strategy picks exactly the teachers its definition says, on small hand-checked pools."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from persyn_hub.compare.baselines import (
    STRATEGIES,
    BaselineError,
    car_teacher,
    mean_quality,
    strategy_picks,
    strongest,
    weakest,
)
from persyn_hub.compare.report import bootstrap_cells

TEACHERS = ["big", "mid", "small", "key"]


def pool(rows: list[tuple]) -> Dataset:
    """(prompt_id, teacher, quality, learnability, reward, error, excluded) -> a scored pool."""
    return Dataset.from_list(
        [
            {
                "prompt_id": p,
                "prompt": f"question {p}",
                "messages": [{"role": "user", "content": f"question {p}"}],
                "teacher": t,
                "response": None if error else f"{t} on {p}",
                "error": error,
                "quality": q,
                "learnability": lrn,
                "reward": r,
                "excluded": excluded,
            }
            for p, t, q, lrn, r, error, excluded in rows
        ][::-1]  # reversed: picks must not depend on row order
    )


# Labeled prompts: `big` is the most often right (strong), `small` the least (weak); on the router's
# TRAIN prompts l1, l2 the combined reward favours `mid` on average, on the test prompt l3 `big` would.
LABELS = pool(
    [
        ("l1", "big", 1.0, -2.0, 0.1, None, None),
        ("l1", "mid", 1.0, -0.5, 0.9, None, None),
        ("l1", "small", 0.0, -0.2, -0.6, None, None),
        ("l1", "key", 1.0, -3.0, -0.4, None, None),
        ("l2", "big", 1.0, -2.0, 0.2, None, None),
        ("l2", "mid", 0.0, -0.5, 0.4, None, None),
        ("l2", "small", 0.0, -0.2, -0.3, None, None),
        ("l2", "key", 1.0, -3.0, -0.3, None, None),
        ("l3", "big", 1.0, -2.0, 2.0, None, None),
        ("l3", "mid", 0.0, -0.5, -1.0, None, None),
        ("l3", "small", None, None, None, "timeout", "no usable answer"),
        ("l3", "key", 0.5, -3.0, -1.0, None, None),
    ]
)
# mean quality: big 1.0, mid 1/3, small 0 (l3 failed, unscored), key 2.5/3 -> strong big, weak small

# Training prompts: every teacher answered; the Oracle follows the reward, gts_* their signal.
TRAIN = pool(
    [
        ("t1", "big", 1.0, -2.0, 0.5, None, None),
        (
            "t1",
            "mid",
            1.0,
            -1.0,
            1.0,
            None,
            None,
        ),  # t1: reward -> mid; quality tie big/mid/key -> big (order)
        ("t1", "small", 0.0, -0.1, -1.0, None, None),  # t1: learnability -> small
        ("t1", "key", 1.0, -3.0, -0.5, None, None),
        ("t2", "big", 0.0, -2.0, -0.5, None, None),
        ("t2", "mid", None, None, None, "HTTP 503", "no usable answer"),  # never picked by selection
        ("t2", "small", 0.0, -0.5, -0.5, None, None),
        ("t2", "key", 1.0, -4.0, 1.0, None, None),  # t2: reward and quality -> key; learnability -> small
    ]
)
IDS = ["t1", "t2"]


def picks(strategy: str, **kwargs) -> dict[str, str]:
    arguments = {
        "prompt_ids": IDS,
        "pool": TRAIN,
        "labels": LABELS,
        "teachers": TEACHERS,
        "seed": 0,
        "train_ids": ["l1", "l2"],
        "families": {"big": "qwen2", "mid": "llama", "small": "llama", "key": None},
        "student_family": "llama",
        "routed": {"t1": "mid", "t2": "key"},
        **kwargs,
    }
    chosen, _ = strategy_picks(strategy, **arguments)
    return chosen


def test_strong_and_weak_are_the_highest_and_lowest_mean_quality():
    assert mean_quality(LABELS, TEACHERS) == {
        "big": 1.0,
        "mid": pytest.approx(1 / 3),
        "small": 0.0,
        "key": 2.5 / 3,
    }
    assert strongest(LABELS, TEACHERS) == "big" and weakest(LABELS, TEACHERS) == "small"
    assert picks("strong") == {"t1": "big", "t2": "big"}
    assert picks("strong", strong="key") == {"t1": "key", "t2": "key"}  # the recipe may name it


def test_car_is_the_best_mean_reward_on_the_routers_train_prompts_only():
    assert car_teacher(LABELS, TEACHERS, ["l1", "l2"]) == "mid"  # mid 0.65, big 0.15 on train
    assert car_teacher(LABELS, TEACHERS, ["l1", "l2", "l3"]) == "big"  # l3 would have changed it
    assert picks("car") == {"t1": "mid", "t2": "mid"}
    with pytest.raises(BaselineError, match="train prompts"):
        car_teacher(LABELS, TEACHERS, ["elsewhere"])


def test_family_strong_is_the_strongest_teacher_of_the_students_family():
    assert picks("family_strong") == {"t1": "mid", "t2": "mid"}  # llama: mid (1/3) beats small (0)
    assert picks("family_strong", student_family="qwen2") == {"t1": "big", "t2": "big"}
    with pytest.raises(BaselineError, match="no teacher of the student's family 'gemma'"):
        picks("family_strong", student_family="gemma")


def test_generate_then_select_strategies_follow_their_signal_and_skip_failed_answers():
    assert picks("oracle") == {"t1": "mid", "t2": "key"}
    assert picks("gts_quality") == {"t1": "big", "t2": "key"}
    assert picks("gts_learnability") == {"t1": "small", "t2": "small"}


def test_mix_random_and_persyn():
    mix = picks("mix")
    assert set(mix.values()) <= {"big", "small"} and set(mix) == set(IDS)
    assert picks("mix") == mix and picks("random") == picks("random")  # seeded
    many = [f"p{i}" for i in range(400)]
    drawn = picks("random", prompt_ids=many)
    counts = {t: sum(1 for v in drawn.values() if v == t) for t in TEACHERS}
    assert all(70 < c < 130 for c in counts.values()), counts  # uniform over the four teachers
    assert picks("persyn") == {"t1": "mid", "t2": "key"}
    assert set(STRATEGIES) == {
        "strong", "mix", "family_strong", "car", "random", "oracle", "gts_quality", "gts_learnability", "persyn",
    }  # fmt: skip


def test_bootstrap_cells_give_intervals_and_paired_significance():
    rng = np.random.default_rng(0)
    items = 300
    good = (rng.random((2, items)) < 0.6).astype(float)
    bad = (rng.random((2, items)) < 0.3).astype(float)
    same = good.copy()
    cells = bootstrap_cells(
        {"persyn": good, "random": bad, "twin": same}, reference="persyn", resamples=500, seed=1
    )
    low, high = cells["persyn"]["interval"]
    assert low < cells["persyn"]["mean"] < high and high - low < 0.15
    assert (
        cells["random"]["minus_persyn"]["significant"] and cells["random"]["minus_persyn"]["interval"][1] < 0
    )
    assert not cells["twin"]["minus_persyn"]["significant"]  # identical scores: a zero difference
    assert cells["twin"]["minus_persyn"]["interval"] == [0.0, 0.0]
    again = bootstrap_cells(
        {"persyn": good, "random": bad, "twin": same}, reference="persyn", resamples=500, seed=1
    )
    assert again == cells
    single_seed = bootstrap_cells(
        {"base": good[:1], "persyn": good}, reference="persyn", resamples=200, seed=0
    )
    assert "interval" in single_seed["base"]
