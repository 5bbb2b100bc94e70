"""Local transformers generation on the bundled models, with checkpoint resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from persyn_hub.generation import GENERATION_COLUMNS, generate_responses
from persyn_hub.generation.checkpoint import GenerationCheckpoint
from persyn_hub.generation.prompting import chat_messages, completion_text
from persyn_hub.recipe.config import FewShotExample, GenerationConfig, TeacherConfig


def smol_teacher(**overrides) -> TeacherConfig:
    values = dict(
        name="smol",
        model="bundled:smollm2-135m-instruct",
        batch_size=4,
        generation=GenerationConfig(max_new_tokens=12),
    )
    values.update(overrides)
    return TeacherConfig(**values)


def test_chat_teacher_generates_every_row_with_accounting(asdiv_prompts, tmp_path):
    prompts = asdiv_prompts.select(range(6))
    result, stats = generate_responses(prompts, smol_teacher(), checkpoint_dir=tmp_path / "ckpt")
    assert result["prompt_id"] == prompts["prompt_id"], "order must be the input order"
    assert set(GENERATION_COLUMNS) <= set(result.column_names)
    assert all(isinstance(text, str) and text for text in result["response"])
    assert all(error is None for error in result["error"])
    assert set(result["finish_reason"]) <= {"stop", "length"}
    assert all(0 < n <= 12 for n in result["num_tokens"])
    assert stats.requests == 6 and stats.reused == 0
    assert stats.completion_tokens == sum(result["num_tokens"])
    assert stats.prompt_tokens == sum(result["num_prompt_tokens"]) > 0

    again, stats_again = generate_responses(prompts, smol_teacher(), checkpoint_dir=tmp_path / "ckpt")
    assert stats_again.requests == 0 and stats_again.reused == 6
    assert again.to_list() == result.to_list()


def test_greedy_generation_matches_a_plain_transformers_loop(asdiv_prompts, tmp_path, smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompts = asdiv_prompts.select(range(2))
    # float32 on both sides: the teacher's default dtype "auto" is bfloat16 on a CPU with native bf16
    teacher = smol_teacher(batch_size=2, dtype="float32")
    result, _ = generate_responses(prompts, teacher, checkpoint_dir=tmp_path / "c")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    for row, response in zip(prompts, result["response"]):
        ids = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
        expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        assert response == expected


def test_a_teacher_system_prompt_replaces_the_prompts_own(asdiv_prompts, tmp_path, smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert chat_messages(smol_teacher(), turns) == turns
    french = smol_teacher(system_prompt="Answer in French.")
    assert chat_messages(french, turns) == [{"role": "system", "content": "Answer in French."}, turns[1]]
    assert chat_messages(smol_teacher(system_prompt=""), turns) == [turns[1]]  # "" removes the system turn

    prompts = asdiv_prompts.select(range(1))
    teacher = smol_teacher(batch_size=1, dtype="float32", system_prompt="Reply with one word.")
    result, _ = generate_responses(prompts, teacher, checkpoint_dir=tmp_path / "c")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    messages = [{"role": "system", "content": "Reply with one word."}, *prompts[0]["messages"]]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert result["response"][0] == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert prompts[0]["messages"] == result["messages"][0]  # the data set keeps the prompt's own turns


def test_completion_teacher_uses_few_shot_and_stops(asdiv_prompts, tmp_path):
    teacher = TeacherConfig(
        name="gemma",
        model="bundled:gemma-3-270m",
        prompt_format="completion",
        few_shot=[
            FewShotExample(
                prompt="Tom has 3 boxes of 4 pens. How many pens?", response="3 * 4 = 12. The answer is 12."
            )
        ],
        generation=GenerationConfig(max_new_tokens=24, stop=["\nQuestion:"]),
        batch_size=3,
    )
    text = completion_text(teacher, asdiv_prompts[0]["messages"])
    assert text.startswith("Question: Tom has 3 boxes") and text.endswith("\nAnswer:")
    result, stats = generate_responses(asdiv_prompts.select(range(3)), teacher, checkpoint_dir=tmp_path / "g")
    assert stats.requests == 3
    for response in result["response"]:
        assert "Question:" not in response


def test_a_torn_checkpoint_line_is_regenerated_not_trusted(tmp_path):
    with GenerationCheckpoint(tmp_path) as checkpoint:
        checkpoint.write([{"prompt_id": "a", "response": "ok", "error": None}])
        checkpoint.write([{"prompt_id": "b", "response": None, "error": "HTTP 503: busy"}])
    part = next(tmp_path.glob("part-*.jsonl"))
    with part.open("a") as handle:
        handle.write('{"prompt_id": "c", "response": "half')
    reloaded = GenerationCheckpoint(tmp_path)
    assert reloaded.done("a")["response"] == "ok"
    assert reloaded.done("b") is None, "failed rows are retried"
    assert reloaded.done("c") is None, "a torn line is not a finished row"
    assert reloaded.failed_ids() == ["b"]


KILL_SCRIPT = """
import sys
from persyn_hub.recipe.config import PromptsConfig, TeacherConfig, GenerationConfig
from persyn_hub.data import load_prompts
from persyn_hub.generation import generate_responses
prompts = load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=8, drop_duplicates=True), seed=0)
teacher = TeacherConfig(name="smol", model="bundled:smollm2-135m-instruct", batch_size=2,
                        generation=GenerationConfig(max_new_tokens=8))
result, stats = generate_responses(prompts, teacher, checkpoint_dir=sys.argv[1])
result.to_json(sys.argv[2])
print("REQUESTS", stats.requests)
"""


def _run_script(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.fault
def test_killed_generation_resumes_without_paying_twice(tmp_path):
    reference = tmp_path / "reference.jsonl"
    process = _run_script([str(tmp_path / "ref-ckpt"), str(reference)])
    assert process.wait(timeout=600) == 0

    checkpoint = tmp_path / "ckpt"
    process = _run_script([str(checkpoint), str(tmp_path / "never.jsonl")])
    deadline = time.time() + 600
    while time.time() < deadline:
        lines = sum(len(p.read_text().splitlines()) for p in checkpoint.glob("part-*.jsonl"))
        if lines >= 2:
            break
        time.sleep(0.2)
    process.kill()
    process.wait()
    done_before = sum(len(p.read_text().splitlines()) for p in checkpoint.glob("part-*.jsonl"))
    assert 2 <= done_before < 8, "the kill must land mid-stage"

    resumed = tmp_path / "resumed.jsonl"
    process = _run_script([str(checkpoint), str(resumed)])
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0
    assert f"REQUESTS {8 - done_before}" in output, output
    rows = [json.loads(line) for line in resumed.read_text().splitlines()]
    expected = [json.loads(line) for line in reference.read_text().splitlines()]
    assert rows == expected
    ids = [
        json.loads(line)["prompt_id"]
        for p in checkpoint.glob("part-*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert sorted(ids) == sorted(set(ids)), "every row generated exactly once"


def test_a_prompt_longer_than_the_context_is_a_row_error_and_the_rest_still_generate(asdiv_prompts, tmp_path):
    from datasets import Dataset

    rows = asdiv_prompts.select(range(2)).to_list()
    rows[1]["messages"] = [{"role": "user", "content": "count the apples " * 3000}]
    rows[1]["prompt_id"] = "too-long"
    result, stats = generate_responses(Dataset.from_list(rows), smol_teacher(), checkpoint_dir=tmp_path / "c")
    assert result["error"][0] is None and result["response"][0]
    assert result["error"][1].startswith("prompt too long:") and "context of 8192" in result["error"][1]
    assert stats.failures == 1 and stats.requests == 1
