"""Prompt loading on real packaged data, and the errors for bad prompt sources."""

from __future__ import annotations

import json

import pytest

from persyn_hub.config import PromptsConfig
from persyn_hub.data import PromptDataError, load_prompts


def test_bundled_asdiv_is_normalized(asdiv_prompts):
    assert len(asdiv_prompts) == 32
    assert {"prompt_id", "messages", "prompt", "answer"} <= set(asdiv_prompts.column_names)
    row = asdiv_prompts[0]
    assert row["messages"] == [{"role": "user", "content": row["prompt"]}]
    assert row["prompt"].rstrip().endswith("?") or row["prompt"].strip()
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
    deduplicated = load_prompts(PromptsConfig(source="bundled:asdiv", drop_duplicates=True))
    assert 2200 < len(deduplicated) < 2305
    assert len(set(deduplicated["prompt_id"])) == len(deduplicated)


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
    prompts = load_prompts(PromptsConfig(source=source, prompt_column="chat", id_column="id", shuffle=False))
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
        load_prompts(PromptsConfig(source=source, shuffle=False, **config))


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(PromptDataError, match="does not exist"):
        load_prompts(PromptsConfig(source=str(tmp_path / "nope.jsonl")))
