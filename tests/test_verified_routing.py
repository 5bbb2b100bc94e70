"""Verified routing: a routed answer the checker rejects goes to the router's next choice; rejected rows
can be dropped. Real math-answer checker (math-verify), real arrow/datasets joins; no model needed here.
The whole pipeline with `routing.fallback_on_incorrect: 1` runs in `test_verified_routing_run` (slow)."""

from __future__ import annotations

import pytest
from datasets import Dataset

from persyn_hub.errors import RecipeError
from persyn_hub.pipeline.assemble import assemble_dataset, collect_responses
from persyn_hub.pipeline.fallback import TRIED, choose_verified, next_round
from persyn_hub.recipe.config import QualityConfig, load_recipe

QUALITY = QualityConfig(kind="math_answer")
ORDER = ["a", "b", "c"]  # the router's teacher order (the order of `router_scores`)
RECIPE = "recipes/demo/task-mix-smollm2.yaml"


def responses(rows):
    columns = ["prompt_id", "teacher", "response", "finish_reason", "num_tokens", "error"]
    return Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(columns)})


def assigned() -> Dataset:
    """p1, p2, p4 routed to a; p3 labeled (its best labeled answer, c's, is wrong: nothing left to ask).
    Router scores: p1 ranks c above b (so c is p1's second choice), p2 and p4 rank b second."""
    return Dataset.from_dict(
        {
            "prompt_id": ["p1", "p2", "p3", "p4"],
            "messages": [[{"role": "user", "content": f"q{i}"}] for i in range(1, 5)],
            "prompt": [f"q{i}" for i in range(1, 5)],
            "teacher": ["a", "a", "c", "a"],
            "router_scores": [[0.9, 0.1, 0.5], [0.9, 0.5, 0.1], [0.1, 0.2, 0.9], [0.9, 0.5, 0.1]],
            "selected_by": ["router", "router", "labeled_best", "router"],
            "labeled": [False, False, True, False],
            "answer": ["4", "7", "1", "5"],
        }
    )


ROUTED = responses(
    [
        ("p1", "a", "The answer is 3.", "stop", 3, None),  # wrong
        ("p2", "a", "The answer is 7.", "stop", 3, None),  # right
        ("p3", "a", "The answer is 1.", "stop", 3, None),  # labeled: every teacher answered
        ("p3", "b", "The answer is 1.", "stop", 3, None),
        ("p3", "c", "The answer is 2.", "stop", 3, None),
        ("p4", "a", None, None, 0, "HTTP 503"),  # failed: not verified either
    ]
)
FALLBACK = responses(
    [
        ("p1", "c", "The answer is 4.", "stop", 3, None),  # the second choice is right
        ("p4", "b", "The answer is 6.", "stop", 3, None),  # wrong too
    ]
)


def test_a_rejected_routed_answer_goes_to_the_routers_second_choice():
    round_one, counts = next_round(assigned(), collect_responses(ROUTED), QUALITY, ORDER, 1)
    assert round_one["teacher"] == ["c", "a", "c", "b"]
    assert round_one[TRIED] == [["a", "c"], ["a"], ["c"], ["a", "b"]]
    assert round_one["fallback_round"] == [1, 0, 0, 1]
    assert counts == {"checked": 3, "rejected": 2, "sent": 2}  # p1 wrong, p4 failed; p3 is labeled

    # a second round checks only the newest answers; p4 still has c left, p1 is verified now
    both = collect_responses(ROUTED, FALLBACK)
    round_two, counts = next_round(round_one, both, QUALITY, ORDER, 2)
    assert counts == {"checked": 2, "rejected": 1, "sent": 1}
    assert round_two[TRIED][3] == ["a", "b", "c"] and round_two["teacher"][0] == "c"


def test_the_first_verified_answer_is_published_and_incorrect_ones_can_be_dropped():
    round_one, _ = next_round(assigned(), collect_responses(ROUTED), QUALITY, ORDER, 1)
    both = collect_responses(ROUTED, FALLBACK)
    chosen, counts = choose_verified(round_one, both, QUALITY)
    # p1: c's verified answer; p4: nothing verified, a failed, so b's usable (wrong) answer
    assert chosen["teacher"] == ["c", "a", "c", "b"]
    assert counts == {"prompts_with_fallbacks": 2, "recovered": 1, "extra_answers": 2}

    kept = assemble_dataset(chosen, both, quality=QUALITY)
    assert kept.final["prompt_id"] == ["p1", "p2", "p3", "p4"]
    assert kept.final["quality"] == [1.0, 1.0, 0.0, 0.0]
    assert kept.final["messages"][0][-1]["content"] == "The answer is 4."
    assert kept.final[TRIED] == [["a", "c"], ["a"], ["c"], ["a", "b"]]
    assert kept.dropped_incorrect == 0

    dropped = assemble_dataset(chosen, both, quality=QUALITY, drop_incorrect=True)
    assert dropped.final["prompt_id"] == ["p1", "p2"]
    assert dropped.dropped_incorrect == 2


def test_when_no_fallback_verifies_the_routers_own_usable_answer_stays():
    wrong_fallback = responses([("p1", "c", "The answer is 9.", "stop", 3, None)])
    round_one, _ = next_round(assigned(), collect_responses(ROUTED), QUALITY, ORDER, 1)
    chosen, counts = choose_verified(round_one, collect_responses(ROUTED, FALLBACK, wrong_fallback), QUALITY)
    assert chosen["teacher"][0] == "a" and counts["recovered"] == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [
                "--routing.fallback_on_incorrect",
                "1",
                "--quality.kind",
                "reward_model",
                "--quality.reward_model",
                "x/y",
            ],
            "routing.fallback_on_incorrect: needs a verifiable quality.kind",
        ),
        (
            ["--output.drop_incorrect", "true", "--quality.kind", "column", "--quality.column", "score"],
            "output.drop_incorrect: needs a verifiable quality.kind",
        ),
        (["--routing.fallback_on_incorrect", "4"], "only 3 other teacher"),
        (["--routing.fallback_on_incorrect", "-1"], "must be 0"),
        (["--router.learning_curve", "[0.5, 1.5]"], "router.learning_curve: 1.5"),
    ],
    ids=["fallback-reward-model", "drop-pool-score", "too-many-rounds", "negative", "curve-share"],
)
def test_verified_routing_needs_a_checker_and_says_so_in_one_line(overrides, message):
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe(RECIPE, overrides)
    assert "\n" not in str(error.value)
