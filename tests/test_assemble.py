"""Assembly joins each prompt with its assigned teacher's answer, and keeps failures and truncations apart."""

from __future__ import annotations

import pytest
from datasets import Dataset

from persyn_hub.pipeline.assemble import NO_ANSWER, assemble_dataset, collect_responses
from persyn_hub.recipe.config import QualityConfig


def responses(rows):
    columns = ["prompt_id", "teacher", "response", "finish_reason", "num_tokens", "error"]
    return Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(columns)})


def assigned() -> Dataset:
    """p1 labeled (its best labeled answer is b's), p2-p3 and p5 routed, p4 labeled but nobody answered it."""
    ids = ["p1", "p2", "p3", "p4", "p5"]
    return Dataset.from_dict(
        {
            "prompt_id": ids,
            "messages": [[{"role": "user", "content": f"q{i}"}] for i in range(1, 6)],
            "prompt": [f"q{i}" for i in range(1, 6)],
            "teacher": ["b", "b", "a", None, "a"],
            "router_scores": [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3]],
            "selected_by": ["labeled_best", "router", "router", "labeled_best", "router"],
            "labeled": [True, False, False, True, False],
            "answer": ["4", "7", "1", "2", "5"],
        }
    )


def all_responses():
    labels = responses(
        [
            ("p1", "a", "A1: The answer is 3.", "stop", 3, None),
            ("p1", "b", "B1: The answer is 4.", "stop", 4, None),
            ("p4", "a", None, None, 0, "timeout"),
            ("p4", "b", None, None, 0, "HTTP 500"),
        ]
    )
    generated = responses(
        [
            ("p2", "b", "B2: The answer is 7", "length", 9, None),
            ("p3", "a", None, None, 0, "HTTP 503: overloaded"),
            ("p5", "a", "A5: The answer is 6.", "stop", 5, None),
        ]
    )
    return collect_responses(labels, generated)


def test_each_prompt_gets_its_assigned_teachers_answer_and_truncations_are_dropped_and_counted():
    result = assemble_dataset(assigned(), all_responses())
    final, failed = result.final, result.failed
    assert final["prompt_id"] == ["p1", "p5"]  # p2 truncated, p3 failed, p4 unanswered
    assert final["messages"][0] == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "B1: The answer is 4."},  # b's answer, not a's
    ]
    assert final["messages"][1][-1]["content"] == "A5: The answer is 6."
    assert final.column_names[:4] == ["prompt_id", "messages", "teacher", "router_scores"]
    assert final["selected_by"] == ["labeled_best", "router"] and final["labeled"] == [True, False]
    assert final["answer"] == ["4", "5"] and final["num_tokens"] == [4, 5]
    assert not {"response", "error", "prompt", "quality"} & set(final.column_names)
    assert result.truncated == 1
    assert failed["prompt_id"] == ["p3", "p4"]
    assert failed["error"] == ["HTTP 503: overloaded", NO_ANSWER]
    assert failed["selected_by"] == ["router", "labeled_best"]


def test_truncated_answers_can_be_kept_and_are_still_counted():
    result = assemble_dataset(assigned(), all_responses(), drop_truncated=False)
    assert result.final["prompt_id"] == ["p1", "p2", "p5"]
    assert result.final["finish_reason"] == ["stop", "length", "stop"]
    assert result.truncated == 1


def test_a_verifiable_quality_kind_checks_every_final_answer():
    result = assemble_dataset(assigned(), all_responses(), quality=QualityConfig(kind="math_answer"))
    assert result.final["prompt_id"] == ["p1", "p5"]
    assert result.final["quality"] == [1.0, 0.0]  # p1: 4 is right; p5: 6 is not the gold 5
    assert all(isinstance(detail, str) and detail for detail in result.final["quality_detail"])


def test_a_missing_generation_or_column_is_named():
    partial = collect_responses(responses([("p1", "b", "B1", "stop", 1, None)]))
    with pytest.raises(RuntimeError, match="no generation found for prompt 'p2' and teacher 'b'"):
        assemble_dataset(assigned().select([0, 1]), partial)
    with pytest.raises(ValueError, match=r"assemble_dataset: the assignment lacks column\(s\) \['teacher'\]"):
        assemble_dataset(assigned().remove_columns("teacher"), partial)


def test_a_later_retry_replaces_an_earlier_failure():
    first = responses([("p1", "a", None, None, 0, "timeout")])
    retry = responses([("p1", "a", "fixed", "stop", 2, None)])
    table = collect_responses(first, retry)
    assert table.num_rows == 1 and table["response"].to_pylist() == ["fixed"]
