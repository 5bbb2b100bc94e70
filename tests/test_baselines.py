"""Every baseline picks exactly the rows its definition says, on a small hand-checked pool."""

from __future__ import annotations

import hashlib

import pytest
from datasets import Dataset

from persyn_hub.baselines import STRATEGIES, BaselineError, build_baseline, pool_cost

# (prompt_id, teacher, quality, learnability, reward, error, excluded)
ROWS = [
    ("p1", "a", 1.0, -2.0, 0.0, None, None),
    ("p1", "b", 1.0, -1.0, 1.0, None, None),  # p1: quality tie a/b -> a (order); learnability, reward -> b
    ("p1", "c", 0.0, -0.5, -1.0, None, None),  # p1: best learnability overall
    ("p2", "a", 0.0, -3.0, -1.0, None, None),
    ("p2", "b", None, None, None, "timeout: <no output>", "failed generation"),  # b failed on p2
    ("p2", "c", 1.0, -4.0, 1.0, None, None),  # p2: quality -> c; learnability -> a; reward -> c
    ("p3", "a", 0.0, -1.0, 0.5, None, None),
    ("p3", "b", 0.0, -1.0, 0.5, None, None),  # p3: all ties on learnability/reward between a, b -> a
    ("p3", "c", 0.0, -9.0, -1.0, None, None),
]
# mean quality: a = 1/3, b = 1/2 (p2 unscored), c = 1/3 -> best single is b


def make_pool() -> Dataset:
    rows = []
    for i, (pid, teacher, q, lrn, r, error, excluded) in enumerate(ROWS):
        rows.append(
            {
                "prompt_id": pid,
                "messages": [{"role": "user", "content": f"question {pid}"}],
                "answer": f"gold {pid}",
                "teacher": teacher,
                "response": None if error else f"{teacher} answers {pid}",
                "error": error,
                "quality": q,
                "learnability": lrn,
                "reward": r,
                "excluded": excluded,
                "num_prompt_tokens": 10,
                "num_tokens": 1 + i,
            }
        )
    return Dataset.from_list(rows[::-1])  # reversed: the picks must not depend on row order


def picks(strategy: str, **kwargs) -> dict[str, str]:
    baseline = build_baseline(make_pool(), strategy, **kwargs)
    out = {}
    for row in baseline.dataset:
        assert row["messages"][:-1] == [{"role": "user", "content": f"question {row['prompt_id']}"}]
        assert row["messages"][-1] == {
            "role": "assistant",
            "content": f"{row['teacher']} answers {row['prompt_id']}",
        }
        assert row["answer"] == f"gold {row['prompt_id']}"
        out[row["prompt_id"]] = row["teacher"]
    return out


def test_generate_then_select_picks_argmax_with_teacher_order_ties():
    assert picks("gts_quality") == {"p1": "a", "p2": "c", "p3": "a"}
    assert picks("gts_learnability") == {"p1": "c", "p2": "a", "p3": "a"}
    assert picks("gts_reward") == {"p1": "b", "p2": "c", "p3": "a"}
    assert picks("gts_reward", teachers=["b", "a", "c"]) == {"p1": "b", "p2": "c", "p3": "b"}


def test_best_single_fixed_mix_random_and_persyn():
    assert picks("best_single") == {"p1": "b", "p3": "b"}  # b failed on p2: dropped, still paid for
    assert picks("fixed_mix") == {"p1": "a", "p3": "c"}  # p1->a, p2->b (failed), p3->c
    expected = {}
    for pid in ("p1", "p2", "p3"):
        teacher = "abc"[int(hashlib.sha256(f"7\x1f{pid}".encode()).hexdigest()[:12], 16) % 3]
        if not (pid == "p2" and teacher == "b"):
            expected[pid] = teacher
    assert picks("random", seed=7) == expected
    routing = {"p1": "c", "p2": "a", "p3": "b"}
    assert picks("persyn", routing=routing) == routing


def test_costs_follow_what_each_strategy_generates():
    pool = make_pool()
    row_tokens = {(pid, t): 10 + 1 + i for i, (pid, t, *_rest) in enumerate(ROWS)}
    gts = build_baseline(pool, "gts_reward").cost
    assert gts.requests == 9 and gts.tokens == sum(row_tokens.values())
    single = build_baseline(pool, "best_single").cost
    assert single.requests == 3
    assert single.tokens == sum(v for (pid, t), v in row_tokens.items() if t == "b")
    labeling = pool_cost(pool)
    routed = build_baseline(pool, "persyn", routing={"p1": "c", "p2": "a", "p3": "b"}, labeling_cost=labeling)
    # Every routed answer was generated while labeling: PerSyn pays the labeling, nothing twice.
    assert routed.cost.requests == 0 and routed.cost.labeling_requests == 9
    assert routed.cost.total_tokens == labeling[1] == sum(row_tokens.values())
    unlabeled = build_baseline(pool, "persyn", routing={"p1": "c", "p2": "a", "p3": "b"}).cost
    assert unlabeled.requests == 3
    assert unlabeled.tokens == row_tokens[("p1", "c")] + row_tokens[("p2", "a")] + row_tokens[("p3", "b")]
    assert routed.teacher_counts == {"a": 1, "b": 1, "c": 1}


def test_bad_input_is_named():
    with pytest.raises(BaselineError, match="missing column"):
        build_baseline(make_pool().remove_columns("quality"), "best_single")
    with pytest.raises(BaselineError, match="no routed teacher"):
        build_baseline(make_pool(), "persyn", routing={"p1": "a"})
    with pytest.raises(BaselineError, match="unknown"):
        build_baseline(make_pool(), "best_of_all")
    assert len(STRATEGIES) == 7
