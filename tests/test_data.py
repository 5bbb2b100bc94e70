"""Prompt loading on real packaged data, and the errors for bad prompt sources."""

from __future__ import annotations

import json

import pytest

from persyn_hub.data import PromptDataError, load_prompts
from persyn_hub.eval_tasks.heldout import asdiv_heldout, is_heldout
from persyn_hub.recipe.config import PromptsConfig


def test_bundled_asdiv_is_normalized(asdiv_prompts):
    assert len(asdiv_prompts) == 32
    assert {"prompt_id", "messages", "prompt", "answer"} <= set(asdiv_prompts.column_names)
    row = asdiv_prompts[0]
    assert row["messages"] == [{"role": "user", "content": row["prompt"]}]
    # the prompt is the template "{passage} {question}" of the source row, both parts present
    from persyn_hub.bundled import bundled_data_file

    source = {
        json.loads(line)["question"]: json.loads(line)
        for line in bundled_data_file("bundled:asdiv").read_text().splitlines()
    }
    question = next(q for q in source if row["prompt"].endswith(q))
    assert (
        row["prompt"] == f"{source[question]['passage']} {question}"
        and row["answer"] == source[question]["answer"]
    )
    assert any(ch.isdigit() for ch in row["answer"])
    assert len(set(asdiv_prompts["prompt_id"])) == 32


def test_ids_are_stable_and_seed_controls_the_sample():
    config = PromptsConfig(source="bundled:asdiv", num_prompts=8, drop_duplicates=True)
    first = load_prompts(config, seed=1)["prompt_id"]
    assert (
        load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=8, drop_duplicates=True), seed=1)[
            "prompt_id"
        ]
        == first
    )
    assert (
        load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=8, drop_duplicates=True), seed=2)[
            "prompt_id"
        ]
        != first
    )


def test_asdiv_duplicates_are_reported_then_dropped_on_request():
    with pytest.raises(
        PromptDataError, match=r"rows \[\d+, \d+\] share the same prompt text.*drop_duplicates"
    ):
        load_prompts(PromptsConfig(source="bundled:asdiv"))
    report = {}
    deduplicated = load_prompts(PromptsConfig(source="bundled:asdiv", drop_duplicates=True), report=report)
    everything = load_prompts(
        PromptsConfig(source="bundled:asdiv", drop_duplicates=True, drop_eval_items=False)
    )
    assert 2200 < len(everything) < 2305
    assert len(set(deduplicated["prompt_id"])) == len(deduplicated)
    # the persyn_asdiv evaluation items (held out, numeric golds: about 10%) are left out by default, and counted
    items = set(asdiv_heldout()["prompt"])
    dropped = sum(text in items for text in everything["prompt"])
    assert 0.05 * len(everything) < dropped < 0.15 * len(everything)
    assert report["eval_items_dropped"] == dropped and len(deduplicated) == len(everything) - dropped
    assert report["source_rows"] - report["duplicates_dropped"] == len(everything)
    assert not set(deduplicated["prompt"]) & items
    assert all(is_heldout(text) for text in items)  # the items are held-out texts; other held-out texts stay


def test_bundled_ifbench_keeps_instruction_columns():
    config = PromptsConfig(
        source="bundled:ifbench", keep_columns=["instruction_id_list", "kwargs"], num_prompts=5
    )
    prompts = load_prompts(config)
    assert prompts.column_names[:3] == ["instruction_id_list", "kwargs", "prompt_id"] or {
        "instruction_id_list",
        "kwargs",
        "prompt_id",
        "messages",
        "prompt",
    } <= set(prompts.column_names)
    assert all(isinstance(ids, list) and ids for ids in prompts["instruction_id_list"])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_local_jsonl_with_chat_messages(tmp_path):
    source = write_jsonl(
        tmp_path / "chats.jsonl",
        [
            {
                "id": "a",
                "chat": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
            },
            {"id": "b", "chat": [{"role": "user", "content": "2+2?"}]},
        ],
    )
    # drop_eval_items off: "Hi?" and "2+2?" happen to hash into the held-out split (see the test below)
    config = PromptsConfig(
        source=source, prompt_column="chat", id_column="id", shuffle=False, drop_eval_items=False
    )
    prompts = load_prompts(config)
    assert prompts["prompt_id"] == ["a", "b"]
    assert prompts["messages"][0][0] == {"role": "system", "content": "Be brief."}
    assert prompts["prompt"] == ["Hi?", "2+2?"]


@pytest.mark.parametrize(
    ("rows", "config", "message"),
    [
        (
            [{"q": "x"}],
            {"prompt_column": "question"},
            r"prompts\.prompt_column: column 'question' is not in .*\['q'\]",
        ),
        ([{"q": "fine"}, {"q": "   "}], {"prompt_column": "q"}, r"row 1 of .*empty or whitespace"),
        ([{"q": "fine"}, {"q": 7}], {"prompt_column": "q"}, r"row 1 of .*is int; expected text"),
        (
            [{"q": "a", "id": 1}, {"q": "b", "id": 1}],
            {"prompt_column": "q", "id_column": "id"},
            r"rows \[0, 1\] share id '1'",
        ),
        ([{"q": "same"}, {"q": "same"}], {"prompt_column": "q"}, r"rows \[0, 1\] share the same prompt text"),
        (
            [{"q": "a"}],
            {"prompt_column": "q", "answer_column": "gold"},
            r"prompts\.answer_column: column 'gold'",
        ),
        (
            [{"q": "a"}],
            {"prompt_column": "q", "num_prompts": 5},
            r"prompts\.num_prompts: 5 asked, but the source has 1",
        ),
    ],
)
def test_bad_prompt_sources_name_row_column_and_fix(tmp_path, rows, config, message):
    source = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(PromptDataError, match=message):
        load_prompts(PromptsConfig(source=source, shuffle=False, drop_eval_items=False, **config))


def test_a_local_file_keeps_prompts_that_are_not_evaluation_items(tmp_path):
    source = write_jsonl(tmp_path / "mine.jsonl", [{"q": "Hi?"}, {"q": "2+2?"}, {"q": "fine"}])
    report = {}
    prompts = load_prompts(PromptsConfig(source=source, prompt_column="q", shuffle=False), report=report)
    assert prompts["prompt"] == ["Hi?", "2+2?", "fine"] and report["eval_items_dropped"] == 0


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(PromptDataError, match="does not exist"):
        load_prompts(PromptsConfig(source=str(tmp_path / "nope.jsonl")))
