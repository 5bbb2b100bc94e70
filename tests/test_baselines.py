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
    strategy_rankings,
    strongest,
    weakest,
)
from persyn_hub.compare.intervals import interval_cells
from persyn_hub.compare.picking import choose_training_answers, pool_trainable, pool_verified

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
    # the comparison's own path: the strategy's ranking, then its first trainable (and, for a verified
    # strategy, checker-accepted) answer, as `build_training_sets` picks
    ranking, _ = strategy_rankings(strategy, **arguments)
    chosen, _, _, _ = choose_training_answers(
        {strategy: ranking},
        pool_trainable(arguments["pool"]),
        arguments["prompt_ids"],
        pool_verified(arguments["pool"]),
    )
    return chosen[strategy]


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
    # mid failed on t2: CAR falls back to its own next teacher there (big, 0.15), not to another prompt set
    assert picks("car") == {"t1": "mid", "t2": "big"}
    with pytest.raises(BaselineError, match="train prompts"):
        car_teacher(LABELS, TEACHERS, ["elsewhere"])


def test_family_strong_is_the_strongest_teacher_of_the_students_family():
    # llama: mid (1/3) beats small (0); mid failed on t2, so there the family's next teacher answers
    assert picks("family_strong") == {"t1": "mid", "t2": "small"}
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
    answered = pool([(p, t, 1.0, -1.0, 0.0, None, None) for p in many for t in TEACHERS])  # all usable
    drawn = picks("random", prompt_ids=many, pool=answered)
    counts = {t: sum(1 for v in drawn.values() if v == t) for t in TEACHERS}
    assert all(70 < c < 130 for c in counts.values()), counts  # uniform over the four teachers
    assert picks("persyn") == {"t1": "mid", "t2": "key"}
    assert set(STRATEGIES) == {
        "strong", "mix", "family_strong", "car", "random", "oracle", "gts_quality", "gts_learnability", "persyn",
        "persyn_verified",
    }  # fmt: skip


def test_interval_cells_give_intervals_and_paired_significance():
    rng = np.random.default_rng(0)
    items = 300
    good = (rng.random((3, items)) < 0.6).astype(float)  # three seeds: the seed part has 2 degrees of freedom
    bad = (rng.random((3, items)) < 0.3).astype(float)
    same = good.copy()
    cells = interval_cells({"persyn": good, "random": bad, "twin": same}, reference="persyn")
    low, high = cells["persyn"]["interval"]
    assert low < cells["persyn"]["mean"] < high and high - low < 0.3
    assert (
        cells["random"]["minus_persyn"]["significant"] and cells["random"]["minus_persyn"]["interval"][1] < 0
    )
    assert not cells["twin"]["minus_persyn"]["significant"]  # identical scores: a zero difference
    assert cells["twin"]["minus_persyn"]["interval"] == [0.0, 0.0]
    single_seed = interval_cells({"base": good[:1], "persyn": good}, reference="persyn")
    assert "interval" in single_seed["base"] and "interval" in single_seed["base"]["minus_persyn"]


# ---- Fair protocol: ties, fallbacks, a common set no strategy shapes, costs, what students learned from


def rankings_for_all(train: Dataset, **kwargs) -> dict[str, dict[str, list[str]]]:
    arguments = {
        "prompt_ids": IDS,
        "pool": train,
        "labels": LABELS,
        "teachers": TEACHERS,
        "seed": 0,
        "train_ids": ["l1", "l2"],
        "families": {"big": "qwen2", "mid": "llama", "small": "llama", "key": None},
        "student_family": "llama",
        "routed": {"t1": "mid", "t2": "key"},
        "router_scores": {"t1": {"mid": 2.0, "key": 1.0, "big": 0.5, "small": -1.0}},
        **kwargs,
    }
    return {s: strategy_rankings(s, **arguments)[0] for s in STRATEGIES}


def verified_in(train: Dataset):
    """The checker's verdict as the comparison reads it: quality at full marks."""
    full = {(r["prompt_id"], r["teacher"]) for r in train.to_list() if (r["quality"] or 0.0) >= 1.0}
    return lambda prompt_id, teacher: (prompt_id, teacher) in full


def test_verified_persyn_replaces_a_rejected_routed_answer_by_the_routers_next_teacher_and_pays_for_it():
    from persyn_hub.compare.picking import verified_picks

    # t1: the router's `small` answer is wrong (quality 0); its next teacher by score is `mid` (right).
    # t2: `small` again wrong, next `big` wrong too, then `key` right: one extra answer does not reach it.
    scores = {
        "t1": {"small": 3.0, "mid": 2.0, "big": 1.0, "key": 0.0},
        "t2": {"small": 3.0, "big": 2.0, "key": 1.0, "mid": 0.0},
    }
    rankings = rankings_for_all(TRAIN, routed={"t1": "small", "t2": "small"}, router_scores=scores)
    assert rankings["persyn_verified"] == rankings["persyn"]
    usable, verified = pool_trainable(TRAIN), verified_in(TRAIN)
    chosen, asked, lost = verified_picks(rankings["persyn"], usable, verified, extra=1)
    assert chosen == {"t1": "mid", "t2": "small"} and not lost  # t2: none verified in 2 -> the router's own
    assert asked == {"t1": ["small", "mid"], "t2": ["small", "big"]}
    chosen2, asked2, _ = verified_picks(rankings["persyn"], usable, verified, extra=2)
    assert chosen2 == {"t1": "mid", "t2": "key"} and asked2["t2"] == ["small", "big", "key"]
    picks_, counts, common, asked_all = choose_training_answers(rankings, usable, IDS, verified, extra=1)
    assert picks_["persyn"] == {"t1": "small", "t2": "small"}  # plain PerSyn keeps the wrong answers
    assert picks_["persyn_verified"] == {"t1": "mid", "t2": "small"} and common == IDS
    assert counts["persyn_verified"]["fallbacks"] == 1 and counts["persyn_verified"]["extra_answers"] == 2
    assert counts["persyn"]["extra_answers"] == 0 and asked_all["persyn"] == {
        "t1": ["small"],
        "t2": ["small"],
    }
    # the one-strategy helper takes the same verified choice from the pool's own quality
    assert picks("persyn_verified", routed={"t1": "small", "t2": "small"}, router_scores=scores) == {
        "t1": "mid",
        "t2": "small",
    }


def test_an_unusable_first_choice_falls_back_to_the_strategys_next_choice_and_the_common_set_holds():
    picks_ok, counts_ok, common_ok, _ = choose_training_answers(
        rankings_for_all(TRAIN), pool_trainable(TRAIN), IDS, verified_in(TRAIN)
    )
    assert picks_ok["strong"] == {"t1": "big", "t2": "big"} and counts_ok["strong"]["fallbacks"] == 0
    # big's answer on t1 fails: strong (and the Oracle's runner-up logic) must not lose t1 for anyone
    broken = pool(
        [
            ("t1", "big", None, None, None, "HTTP 500", "no usable answer"),
            *[
                (
                    r["prompt_id"],
                    r["teacher"],
                    r["quality"],
                    r["learnability"],
                    r["reward"],
                    r["error"],
                    r["excluded"],
                )
                for r in TRAIN.to_list()
                if (r["prompt_id"], r["teacher"]) != ("t1", "big")
            ],
        ]
    )
    rankings = rankings_for_all(broken)
    picks_bad, counts_bad, common_bad, _ = choose_training_answers(
        rankings, pool_trainable(broken), IDS, verified_in(broken)
    )
    assert common_bad == common_ok == IDS  # the common prompt set is unchanged
    # strong's own next choice by mean quality is `key` (2.5/3), then mid (1/3)
    assert rankings["strong"]["t1"][:2] == ["big", "key"]
    assert picks_bad["strong"] == {"t1": "key", "t2": "big"}
    assert counts_bad["strong"] == {"unanswerable": 0, "fallbacks_all": 1, "fallbacks": 1, "extra_answers": 1}
    assert picks_bad["gts_quality"]["t1"] == "mid"  # big's tie is gone; mid is next in recipe order
    # persyn's routed answers (mid on t1, key on t2) are usable: no fallback
    assert picks_bad["persyn"] == {"t1": "mid", "t2": "key"} and counts_bad["persyn"]["fallbacks"] == 0
    for strategy, chosen in picks_bad.items():
        assert set(chosen) == set(IDS), strategy
        assert all(pool_trainable(broken)(p, t) for p, t in chosen.items()), strategy


def test_persyn_falls_back_by_the_routers_next_score_and_mix_and_random_by_their_own_draws():
    from persyn_hub.compare.picking import first_usable

    rankings = rankings_for_all(TRAIN, routed={"t1": "mid", "t2": "mid"}, router_scores={
        "t2": {"mid": 3.0, "small": 2.0, "big": 1.0, "key": 0.0}
    })  # fmt: skip
    chosen, fallbacks, lost = first_usable(rankings["persyn"], pool_trainable(TRAIN))
    assert chosen == {"t1": "mid", "t2": "small"} and fallbacks == ["t2"] and not lost  # mid failed on t2
    mix = rankings["mix"]
    for p in IDS:
        assert set(mix[p][:2]) == {"big", "small"} and sorted(mix[p]) == sorted(TEACHERS)
        assert sorted(rankings["random"][p]) == sorted(TEACHERS)
    assert {p: r[0] for p, r in rankings["random"].items()} == picks("random")  # first draw unchanged


def test_single_teacher_ties_go_to_the_teacher_with_more_scored_labeled_answers_and_are_reported():
    # `worked` is right whenever it answers but answers only l1; `key` is right on all three: both mean 1.0
    labels = pool(
        [
            ("l1", "worked", 1.0, -1.0, 0.5, None, None),
            ("l2", "worked", None, None, None, "no worked solution", "no usable answer"),
            ("l3", "worked", None, None, None, "no worked solution", "no usable answer"),
            *[(p, "key", 1.0, -3.0, 0.0, None, None) for p in ("l1", "l2", "l3")],
            *[(p, "small", 0.0, -0.2, -0.5, None, None) for p in ("l1", "l2", "l3")],
        ]
    )
    teachers = ["worked", "key", "small"]  # recipe order alone would pick `worked`
    assert strongest(labels, teachers) == "key"
    ranking, defined = strategy_rankings(
        "strong", prompt_ids=["t"], pool=labels, labels=labels, teachers=teachers, seed=0
    )
    assert ranking["t"] == ["key", "worked", "small"]
    assert defined == {"teacher": "key", "ties": ["key", "worked"], "uses_labels": True}


def test_score_rankings_start_with_select_best():
    from persyn_hub.compare.baselines import score_rankings
    from persyn_hub.router.selection import select_best

    for by in ("reward", "quality", "learnability"):
        ranked = score_rankings(TRAIN, by, TEACHERS)
        assert {p: order[0] for p, order in ranked.items()} == select_best(TRAIN, by, TEACHERS)
        assert ranked["t2"][-1] == "mid"  # the failed answer ranks last


def test_costs_charge_labeling_to_every_strategy_that_reads_the_labels_and_stage_seconds():
    from persyn_hub.compare.protocol import answer_stats, stage_seconds, strategy_cost

    rows = {
        (r["prompt_id"], r["teacher"]): {
            **r,
            "num_tokens": 10,
            "num_prompt_tokens": 5,
            "num_response_tokens": 8,
        }
        for r in TRAIN.to_list()
    }
    label_rows = [
        {"teacher": t, "num_tokens": 10, "num_prompt_tokens": 5} for t in TEACHERS for _ in range(3)
    ]
    stages = [
        {"name": "label-generate/big", "seconds": 4.0, "cached": False},
        {"name": "label-generate/key", "seconds": 0.5, "cached": False},
        {"name": "quality", "seconds": 1.0, "cached": False},
        {"name": "learnability", "seconds": 2.0, "cached": True},
        {"name": "combine", "seconds": 0.25, "cached": False},
        {"name": "router", "seconds": 8.0, "cached": False},
        {
            "name": "route",
            "seconds": 0.01,
            "cached": True,
            "computed_seconds": 1.0,
        },  # reused: its original time
        {"name": "compare/label-generate/big", "seconds": 16.0, "cached": False},
        {"name": "compare/quality", "seconds": 3.0, "cached": False},
        {"name": "compare/learnability", "seconds": 5.0, "cached": False},
        {"name": "compare/combine", "seconds": 0.5, "cached": False},
        {"name": "assemble", "seconds": 9.0, "cached": False},
    ]
    assert stage_seconds(stages)["labeling"] == {"seconds": 4.5, "cached": False}
    rankings = rankings_for_all(TRAIN)
    free = {"key"}
    common = IDS

    def cost(strategy, chosen, uses_labels, ranking=None):
        order = ranking or rankings[strategy]
        asked = {p: order[p][: order[p].index(t) + 1] for p, t in chosen.items()}
        return strategy_cost(
            strategy, asked=asked, common=common, rows=rows,
            label_rows=label_rows, free=free, teachers=TEACHERS, uses_labels=uses_labels, stages=stages,
        )  # fmt: skip

    strong = cost("strong", {"t1": "big", "t2": "big"}, True)
    assert strong["labeling_generations"] == 9  # 3 model teachers x 3 labeled prompts; `key` is free
    assert strong["generations"] == 2 + 9 and strong["tokens"] == 11 * 15
    assert strong["seconds"] == 5.5 and strong["seconds_by_stage"] == {"labeling": 4.5, "label_quality": 1.0}
    routed_mid = rankings_for_all(TRAIN, routed={"t1": "mid", "t2": "mid"}, router_scores={
        "t2": {"mid": 3.0, "small": 2.0, "big": 1.0, "key": 0.0}
    })["persyn"]  # fmt: skip
    persyn = cost(
        "persyn", {"t1": "mid", "t2": "small"}, True, routed_mid
    )  # t2: mid tried (failed), then small
    assert persyn["generations"] == 1 + 2 + 9 and persyn["seconds"] == 16.75
    assert persyn["cached_stages"] == ["label_learnability"]
    random = cost("random", {p: r[0] for p, r in rankings["random"].items()}, False)
    assert random["labeling_generations"] == 0 and random["seconds"] == 0
    oracle = cost("oracle", {"t1": "mid", "t2": "key"}, False)
    assert oracle["generations"] == 2 * 3 and oracle["labeling_generations"] == 0
    assert oracle["seconds"] == 24.5
    stats = answer_stats({"t1": "mid", "t2": "key"}, IDS, rows)
    assert stats == {
        "verified_correct_share": 1.0,
        "mean_quality": 1.0,
        "mean_response_tokens": 8.0,
        "mean_student_logprob": -2.5,
    }
    assert answer_stats({"t1": "small", "t2": "big"}, IDS, rows)["verified_correct_share"] == 0.0
