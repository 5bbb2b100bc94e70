"""Routing metrics on hand-checked reward matrices, the paired bootstrap, and the `evaluate` module round trip."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from persyn_hub.router.metrics import (
    INTERVAL_METRICS,
    REWARD_RECOVERED_DEFINITION,
    best_single_teacher,
    compute_routing_metrics,
    effective_rewards,
    gap_recovered,
    routing_metrics,
    routing_metrics_module_path,
)

NAN = float("nan")
TEACHERS = ["a", "b", "c"]
# Row 1's unusable c counts as its worst usable reward (-2): effective [-2, 0, -2].
REWARDS = np.array([[1.0, 0.0, -1.0], [-2.0, 0.0, NAN], [0.0, 0.0, 0.0]])
# Routed: b, c, a. Rankings: (b, c, a), (c, b, a), (a, b, c).
SCORES = np.array([[0.0, 5.0, 1.0], [0.0, 1.0, 9.0], [3.0, 0.0, 0.0]])
# Train means a 1.5, b 0.5, c -0.5 -> a; on the test prompts b would be best (a -1/3, b 0, c -1).
TRAIN = np.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]])


def hand_metrics(**kwargs) -> dict:
    return compute_routing_metrics(SCORES, REWARDS, train_rewards=TRAIN, teachers=TEACHERS, **kwargs)


def noisy_router_case(n: int, k: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rewards, a router that sees them through noise, and train rewards from the same distribution."""
    rng = np.random.default_rng(seed)
    offsets = np.linspace(0.0, 0.3, k)  # the last teacher is the best single on average
    rewards = rng.normal(size=(n, k)) + offsets
    rewards[rng.random((n, k)) < 0.1] = NAN
    rewards[:, -1] = np.where(np.isnan(rewards[:, -1]), 0.3, rewards[:, -1])  # keep every row usable
    scores = np.nan_to_num(rewards, nan=-5.0) + noise * rng.normal(size=(n, k))
    train = rng.normal(size=(200, k)) + offsets
    return scores, rewards, train


# -- point estimates on hand-checked matrices ----------------------------------------------------------


def test_effective_rewards_replace_unusable_with_the_prompt_worst():
    np.testing.assert_array_equal(effective_rewards(REWARDS)[1], [-2.0, 0.0, -2.0])
    np.testing.assert_array_equal(effective_rewards(REWARDS)[0], REWARDS[0])


def test_hand_checked_case():
    m = hand_metrics(bootstrap=0)
    # oracle 1, 0, 0; worst -1, -2, 0 -> summed gap 2 + 2 + 0 = 4; routed gains 1, 0, 0.
    assert m["num_prompts"] == 3
    assert m["top1_agreement"] == pytest.approx(1 / 3)  # only the all-tie prompt
    assert m["hit_at_k"] == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})
    assert m["reward_recovered"] == pytest.approx(1 / 4)
    assert m["regret"] == pytest.approx((1 + 2 + 0) / 3)
    # best single a: 1, -2, 0 -> gains 2, 0, 0; regrets 0, 2, 0.
    assert m["best_single_teacher"] == "a"
    assert m["reward_recovered_best_single"] == pytest.approx(2 / 4)
    assert m["regret_best_single"] == pytest.approx(2 / 3)
    # random: mean effective reward 0, -4/3, 0 -> gains 1, 2/3, 0; regrets 1, 4/3, 0.
    assert m["reward_recovered_random"] == pytest.approx((1 + 2 / 3) / 4)
    assert m["regret_random"] == pytest.approx((1 + 4 / 3) / 3)
    assert m["mean_reward_routed"] == pytest.approx(-2 / 3)
    assert m["mean_reward_oracle"] == pytest.approx(1 / 3)
    assert m["mean_reward_best_single"] == pytest.approx(-1 / 3)
    assert m["mean_reward_random"] == pytest.approx(-4 / 9)
    assert m["teacher_distribution"] == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    # first-argmax oracle: a, b, a (the all-tie prompt goes to the first teacher)
    assert m["oracle_share"] == pytest.approx({"a": 2 / 3, "b": 1 / 3, "c": 0.0})
    assert m["intervals"] == {} and m["bootstrap"] == 0


def test_best_single_is_chosen_on_train_not_test():
    assert best_single_teacher(TRAIN) == 0
    test_best = int(np.argmax(effective_rewards(REWARDS).mean(axis=0)))
    assert test_best == 1  # the test prompts would have picked b
    m = hand_metrics(bootstrap=0)
    assert m["best_single_teacher"] == "a"
    assert m["mean_reward_best_single"] == pytest.approx(effective_rewards(REWARDS)[:, 0].mean())


def test_best_single_ties_and_unusable_train_rewards():
    assert best_single_teacher([[1.0, 1.0, 0.0]]) == 0
    assert best_single_teacher([[0.0, 1.0, 1.0]]) == 1
    # b fails on the second prompt: it counts as that prompt's worst (0), so c (0.5 mean) beats b (0.45).
    assert best_single_teacher([[0.0, 0.9, 0.5], [0.0, NAN, 0.5]]) == 2


def test_best_single_by_index_and_default_names():
    m = compute_routing_metrics(SCORES, REWARDS, best_single=2, bootstrap=0)
    assert m["best_single_teacher"] == "teacher_2"
    assert set(m["teacher_distribution"]) == {"teacher_0", "teacher_1", "teacher_2"}
    assert m["reward_recovered_best_single"] == pytest.approx((0 + 0 + 0) / 4)  # c: worst on every prompt
    assert m["regret_best_single"] == pytest.approx((2 + 2 + 0) / 3)


def test_tie_margin_decides_agreement_and_hits():
    rewards = np.array([[1.0, 1.0 - 1e-9, 0.0]])
    scores = np.array([[0.0, 1.0, 0.5]])  # routed to the near-tied teacher
    near = compute_routing_metrics(scores, rewards, best_single=0, bootstrap=0)
    assert near["top1_agreement"] == 1.0 and near["hit_at_k"][1] == 1.0
    exact = compute_routing_metrics(scores, rewards, best_single=0, tie_margin=0.0, bootstrap=0)
    assert exact["top1_agreement"] == 0.0
    assert exact["hit_at_k"] == {1: 0.0, 2: 0.0, 3: 1.0}  # ranking b, c, a: a only in the top 3


def test_score_ties_route_to_the_lowest_index_like_argmax():
    rewards = np.array([[0.0, 1.0], [1.0, 0.0]])
    m = compute_routing_metrics(np.zeros((2, 2)), rewards, best_single=0, bootstrap=0)
    assert m["teacher_distribution"] == {"teacher_0": 1.0, "teacher_1": 0.0}
    assert m["top1_agreement"] == 0.5 and m["hit_at_k"] == {1: 0.5, 2: 1.0}


def test_many_score_ties_route_like_argmax():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(200, 19)).astype(float)  # ties everywhere, more columns than 16
    rewards = rng.normal(size=(200, 19))
    m = compute_routing_metrics(scores, rewards, best_single=0, bootstrap=0)
    routed = scores.argmax(axis=1)
    expected = np.bincount(routed, minlength=19) / 200
    assert list(m["teacher_distribution"].values()) == pytest.approx(expected.tolist())
    agree = rewards[np.arange(200), routed] >= rewards.max(axis=1) - 1e-6
    assert m["top1_agreement"] == pytest.approx(agree.mean()) == m["hit_at_k"][1]


def test_random_is_the_exact_expectation():
    rewards = np.array([[0.0, 1.0], [0.0, 3.0]])
    m = compute_routing_metrics([[1.0, 0.0], [1.0, 0.0]], rewards, best_single=1, bootstrap=0)
    assert m["mean_reward_random"] == 1.0  # (0.5 + 1.5) / 2, not a sample
    assert m["reward_recovered_random"] == 0.5
    assert m["regret_random"] == 1.0
    assert m["reward_recovered"] == 0.0 and m["regret"] == 2.0  # always the worst teacher
    assert m["reward_recovered_best_single"] == 1.0 and m["regret_best_single"] == 0.0


def test_no_gap_is_full_recovery():
    m = compute_routing_metrics(SCORES[2:], REWARDS[2:], train_rewards=TRAIN, bootstrap=0)
    assert m["reward_recovered"] == m["reward_recovered_random"] == m["reward_recovered_best_single"] == 1.0
    assert gap_recovered([1.0], [1.0], [1.0]) == 1.0
    assert gap_recovered([0.5, 0.0], [1.0, 1.0], [0.0, 0.0]) == 0.25


def test_one_hot_decisions_and_k_values():
    one_hot = np.eye(3)[[1, 2, 0]]  # the same decisions as SCORES
    m = compute_routing_metrics(one_hot, REWARDS, train_rewards=TRAIN, k_values=[1], bootstrap=0)
    assert m["reward_recovered"] == pytest.approx(hand_metrics(bootstrap=0)["reward_recovered"])
    assert m["hit_at_k"] == {1: pytest.approx(1 / 3)}
    assert list(hand_metrics(bootstrap=0, k_values=[3, 1])["hit_at_k"]) == [1, 3]
    assert list(
        compute_routing_metrics(SCORES[:, :2], REWARDS[:, :2], best_single=0, bootstrap=0)["hit_at_k"]
    ) == [
        1,
        2,
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scores": SCORES[:, :2]}, "scores has shape"),
        ({"scores": SCORES[:, :1], "rewards": REWARDS[:, :1], "train_rewards": TRAIN[:, :1]}, "at least 2"),
        ({"scores": np.zeros((0, 3)), "rewards": np.zeros((0, 3))}, "scores is empty"),
        ({"scores": [0.0, 1.0, 2.0]}, "scores must be 2-D"),
        ({"scores": [[0.0, 1.0, 2.0], [1.0, 2.0]]}, "scores must be a numeric"),
        ({"scores": [[NAN, 0, 0], [0, 0, 1], [0, 1, 0]]}, r"scores has NaN .* row\(s\) 0"),
        ({"rewards": [[1.0, 2.0, 3.0], [NAN, NAN, NAN], [0, 0, 0]]}, r"rewards row\(s\) 1 have no usable"),
        ({"rewards": [[1.0, np.inf, 3.0], [0, 0, 0], [0, 0, 0]]}, "rewards has infinite"),
        ({"teachers": ["a", "b"]}, "teachers has 2 names"),
        ({"teachers": ["a", "a", "b"]}, "duplicate"),
        ({"train_rewards": TRAIN[:, :2]}, "train_rewards has 2 teacher columns"),
        ({"train_rewards": [[NAN, NAN, NAN]]}, r"train_rewards row\(s\) 0"),
        ({"train_rewards": None}, "exactly one of best_single"),
        ({"best_single": 0}, "exactly one of best_single"),
        ({"train_rewards": None, "best_single": 3}, "out of range"),
        ({"k_values": [0, 1]}, "k_values"),
        ({"k_values": [4]}, "k_values"),
        ({"bootstrap": -1}, "bootstrap must be"),
        ({"confidence": 1.0}, "confidence"),
        ({"tie_margin": -0.1}, "tie_margin"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs: dict, match: str):
    arguments = {
        "scores": SCORES,
        "rewards": REWARDS,
        "train_rewards": TRAIN,
        "teachers": TEACHERS,
        "bootstrap": 0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        compute_routing_metrics(arguments.pop("scores"), arguments.pop("rewards"), **arguments)


# -- persyn_hub wrapper ---------------------------------------------------------------------------------


def test_wrapper_keeps_the_old_call_and_keys():
    m = routing_metrics(SCORES, REWARDS, TRAIN, TEACHERS, 1e-6, bootstrap=0)
    plain = hand_metrics(bootstrap=0)
    for key in (
        "top1_agreement",
        "reward_recovered",
        "reward_recovered_best_single",
        "reward_recovered_random",
        "teacher_distribution",
        "best_single_teacher",
        "mean_reward_routed",
        "mean_reward_oracle",
        "mean_reward_best_single",
        "mean_reward_random",
        "oracle_share",
        "hit_at_k",
        "regret",
    ):
        assert m[key] == plain[key], key
    assert m["oracle_distribution"] == m["oracle_share"]  # the router card still reads the old key
    assert m["reward_recovered_definition"] == REWARD_RECOVERED_DEFINITION
    assert set(routing_metrics(SCORES, REWARDS, TRAIN, TEACHERS)["intervals"]) == set(INTERVAL_METRICS)


# -- paired bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_matches_recomputing_on_resampled_prompts():
    """The vectorized bootstrap equals the definition: resample prompts, recompute every figure, take quantiles."""
    scores, rewards, _ = noisy_router_case(40, 4, noise=1.0, seed=3)
    resamples, seed = 200, 11
    m = compute_routing_metrics(
        scores, rewards, best_single=3, bootstrap=resamples, seed=seed, confidence=0.9
    )
    picks = np.random.default_rng(seed).integers(
        0, 40, size=(resamples, 40)
    )  # the draw order the module uses
    draws = {name: [] for name in INTERVAL_METRICS}
    for rows in picks:
        r = compute_routing_metrics(scores[rows], rewards[rows], best_single=3, bootstrap=0)
        r["reward_recovered_minus_best_single"] = r["reward_recovered"] - r["reward_recovered_best_single"]
        r["reward_recovered_minus_random"] = r["reward_recovered"] - r["reward_recovered_random"]
        for name in INTERVAL_METRICS:
            draws[name].append(r[name])
    for name in INTERVAL_METRICS:
        expected = np.quantile(draws[name], [0.05, 0.95])
        np.testing.assert_allclose(m["intervals"][name], expected, rtol=1e-9, atol=1e-12, err_msg=name)


def test_intervals_contain_the_estimate_and_narrow_with_more_prompts():
    widths = {}
    for n in (100, 2000):
        scores, rewards, train = noisy_router_case(n, 5, noise=1.0, seed=n)
        m = compute_routing_metrics(scores, rewards, train_rewards=train, bootstrap=1000, seed=0)
        points = {name: m[name] for name in INTERVAL_METRICS if name in m}
        points["reward_recovered_minus_best_single"] = (
            m["reward_recovered"] - m["reward_recovered_best_single"]
        )
        points["reward_recovered_minus_random"] = m["reward_recovered"] - m["reward_recovered_random"]
        for name, point in points.items():
            low, high = m["intervals"][name]
            assert low <= point <= high, (n, name, low, point, high)
        widths[n] = {name: np.diff(m["intervals"][name])[0] for name in INTERVAL_METRICS}
    for name in INTERVAL_METRICS:
        assert 0 < widths[2000][name] < 0.5 * widths[100][name], name  # ~1/sqrt(20) expected


def test_paired_difference_separates_a_better_router_from_an_identical_one():
    scores, rewards, train = noisy_router_case(300, 5, noise=0.3, seed=7)
    better = compute_routing_metrics(scores, rewards, train_rewards=train, bootstrap=1000, seed=0)
    assert better["intervals"]["reward_recovered_minus_best_single"][0] > 0
    assert better["intervals"]["reward_recovered_minus_random"][0] > 0

    single = best_single_teacher(train)
    same = compute_routing_metrics(np.eye(5)[np.full(300, single)], rewards, train_rewards=train, seed=0)
    low, high = same["intervals"]["reward_recovered_minus_best_single"]
    assert low <= 0 <= high
    # A router that always picks another teacher of the same quality: no better, and the interval says so.
    rng = np.random.default_rng(5)
    twins = rng.normal(size=(300, 2))
    alike = compute_routing_metrics(np.tile([0.0, 1.0], (300, 1)), twins, best_single=0, seed=0)
    low, high = alike["intervals"]["reward_recovered_minus_best_single"]
    assert low < 0 < high


def test_bootstrap_is_seeded_and_can_be_turned_off():
    scores, rewards, train = noisy_router_case(200, 4, noise=1.0, seed=1)
    first = compute_routing_metrics(scores, rewards, train_rewards=train, seed=3)["intervals"]
    assert compute_routing_metrics(scores, rewards, train_rewards=train, seed=3)["intervals"] == first
    assert compute_routing_metrics(scores, rewards, train_rewards=train, seed=4)["intervals"] != first
    assert compute_routing_metrics(scores, rewards, train_rewards=train, bootstrap=0)["intervals"] == {}


def test_bootstrap_is_fast_at_paper_scale():
    scores, rewards, train = noisy_router_case(1000, 19, noise=1.0, seed=0)
    timings = []
    for _ in range(3):  # best of three: the machine may be busy
        start = time.perf_counter()
        compute_routing_metrics(scores, rewards, train_rewards=train, bootstrap=1000)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0, timings


# -- the evaluate module --------------------------------------------------------------------------------


def test_module_is_self_contained_package_data():
    path = routing_metrics_module_path()
    assert path.name == "routing_metrics" and path.parent.name == "evaluate_modules"
    assert path.parent.parent.name == "router"  # persyn_hub/router/evaluate_modules/routing_metrics
    card = (path / "README.md").read_text()
    assert card.startswith("---\n") and "\n---\n" in card[4:] and "## How to Use" in card
    tree = ast.parse((path / "routing_metrics.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file must work alone"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "typing", "numpy", "datasets", "evaluate"}, imported


def test_evaluate_load_matches_the_plain_function(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    module = evaluate.load(str(routing_metrics_module_path()), cache_dir=str(tmp_path), keep_in_memory=True)
    scores, rewards, train = noisy_router_case(150, 4, noise=1.0, seed=2)
    kwargs = {"train_rewards": train, "teachers": ["w", "x", "y", "z"], "bootstrap": 300, "seed": 9}
    result = module.compute(predictions=scores, references=rewards, **kwargs)
    assert result == compute_routing_metrics(scores, rewards, **kwargs)
    assert np.isnan(rewards).any()  # NaN rewards made it through the Arrow round trip intact
    # Batches added one by one give the same numbers.
    for start in range(0, 150, 50):
        module.add_batch(predictions=scores[start : start + 50], references=rewards[start : start + 50])
    assert module.compute(**kwargs) == result
    with pytest.raises(ValueError, match="exactly one of best_single.*`predictions`"):
        module.compute(predictions=scores, references=rewards)


def test_evaluate_load_works_offline_in_a_fresh_process(tmp_path):
    """A fresh interpreter with every Hub switch offline and no reachable endpoint still loads the module."""
    scores, rewards, train = noisy_router_case(60, 3, noise=1.0, seed=4)
    np.savez(tmp_path / "case.npz", scores=scores, rewards=rewards, train=train)
    script = (
        "import json, sys, numpy as np, evaluate\n"
        "case = np.load(sys.argv[2])\n"
        "module = evaluate.load(sys.argv[1], keep_in_memory=True)\n"
        "result = module.compute(predictions=case['scores'].tolist(), references=case['rewards'].tolist(),\n"
        "    train_rewards=case['train'], bootstrap=200, seed=1)\n"
        "print(json.dumps(result))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: any Hub call would fail
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, str(routing_metrics_module_path()), str(tmp_path / "case.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    plain = compute_routing_metrics(scores, rewards, train_rewards=train, bootstrap=200, seed=1)
    assert loaded == json.loads(json.dumps(plain))
