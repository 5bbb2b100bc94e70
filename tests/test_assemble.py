"""Assembly joins each routed prompt with its routed teacher's answer, and keeps failures apart."""

from __future__ import annotations

from datasets import Dataset

from persyn_hub.assemble import assemble_dataset, collect_responses


def responses(rows):
    columns = ["prompt_id", "teacher", "response", "finish_reason", "num_tokens", "error"]
    return Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(columns)})


def test_each_prompt_gets_its_routed_teachers_answer():
    routed = Dataset.from_dict(
        {
            "prompt_id": ["p1", "p2", "p3"],
            "messages": [[{"role": "user", "content": f"q{i}"}] for i in (1, 2, 3)],
            "prompt": ["q1", "q2", "q3"],
            "teacher": ["a", "b", "a"],
            "router_scores": [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]],
        }
    )
    labels = responses([("p1", "a", "A1", "stop", 3, None), ("p1", "b", "B1", "stop", 4, None)])
    generated = responses(
        [("p2", "b", "B2", "length", 9, None), ("p3", "a", None, None, 0, "HTTP 503: overloaded")]
    )
    final, failed = assemble_dataset(routed, collect_responses(labels, generated), {"p1"})
    assert final["prompt_id"] == ["p1", "p2"]
    assert final["messages"][0] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "A1"}]
    assert final["messages"][1][-1]["content"] == "B2"
    assert final["labeled"] == [True, False]
    assert final.column_names[:4] == ["prompt_id", "messages", "teacher", "router_scores"]
    assert failed["prompt_id"] == ["p3"] and failed["error"] == ["HTTP 503: overloaded"]


def test_a_later_retry_replaces_an_earlier_failure():
    first = responses([("p1", "a", None, None, 0, "timeout")])
    retry = responses([("p1", "a", "fixed", "stop", 2, None)])
    table = collect_responses(first, retry)
    assert table.num_rows == 1 and table["response"].to_pylist() == ["fixed"]
