"""Learnability on the bundled SmolLM2 student, checked against an independent per-row computation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

import persyn_hub.scoring.learnability.costs as costs
import persyn_hub.scoring.learnability.engines as engines
import persyn_hub.scoring.learnability.prefix as prefix_cache
import persyn_hub.scoring.learnability.scorer as learnability
from persyn_hub.recipe.config import StudentConfig
from persyn_hub.scoring.answers import is_usable_answer
from persyn_hub.scoring.learnability.scorer import load_student, score_learnability


@pytest.fixture(scope="module")
def student():
    config = StudentConfig(model="bundled:smollm2-135m-instruct", dtype="float32")
    model, tokenizer = load_student(config)
    return config, model, tokenizer


@pytest.fixture(scope="module")
def pool(asdiv_prompts):
    """Real ASDiv prompts x two 'teachers' (a right worked answer, a wrong terse one), plus failed rows."""
    rows = []
    for row in asdiv_prompts.select(range(5)):
        base = {k: row[k] for k in ("prompt_id", "messages", "prompt", "answer")}
        right = f"Let's work it out. The answer is {row['answer']}."
        rows.append({**base, "teacher": "right", "response": right, "error": None})
        rows.append({**base, "teacher": "wrong", "response": "It is 3.", "error": None})
    rows[3] = {**rows[3], "response": None, "error": "timeout after 120 s: <no output>"}
    rows[6] = {**rows[6], "error": "HTTP 500: raw output kept"}  # response text present but the call failed
    return Dataset.from_list(rows)


def reference_scores(model, tokenizer, messages, response):
    """Independent: tokenize via apply_chat_template(tokenize=True), full forward, full log_softmax."""
    prompt_ids = list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    full = messages + [{"role": "assistant", "content": response}]
    full_ids = list(tokenizer.apply_chat_template(full, tokenize=True)["input_ids"])
    assert full_ids[: len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(torch.tensor([full_ids])).logits[0].double()
    logprobs = F.log_softmax(logits, dim=-1)
    targets = torch.tensor(full_ids[len(prompt_ids) :])
    token_logprobs = logprobs[torch.arange(len(prompt_ids) - 1, len(full_ids) - 1), targets]
    return full_ids, len(prompt_ids), token_logprobs


def test_matches_full_softmax_loop_and_keeps_order(student, pool):
    config, model, tokenizer = student
    scored = score_learnability(pool, config, model=model, tokenizer=tokenizer)
    assert len(scored) == len(pool)
    assert scored["prompt_id"] == pool["prompt_id"] and scored["teacher"] == pool["teacher"]
    for row in scored:
        if row["error"] is not None:
            assert row["learnability"] is None and row["learnability_sum"] is None
            assert row["num_response_tokens"] is None and row["truncated"] is False
            continue
        _, _, token_logprobs = reference_scores(model, tokenizer, row["messages"], row["response"])
        assert row["num_response_tokens"] == len(token_logprobs)
        assert row["learnability"] == pytest.approx(token_logprobs.mean().item(), abs=1e-4)
        assert row["learnability_sum"] == pytest.approx(token_logprobs.sum().item(), abs=1e-3)
        assert row["truncated"] is False
    valid = [v for v in scored["learnability"] if v is not None]
    assert len(valid) == 8 and all(v < 0 for v in valid)
    # the response tokens are the assistant turn as SFT trains on it, closing <|im_end|> included
    ids, start, _ = reference_scores(model, tokenizer, pool[0]["messages"], pool[0]["response"])
    assert tokenizer.decode(ids[start:]).startswith(pool[0]["response"] + "<|im_end|>")


def test_small_token_budget_gives_same_numbers(student, pool):
    config, model, tokenizer = student
    big = score_learnability(pool, config, model=model, tokenizer=tokenizer)
    small = score_learnability(pool, StudentConfig(batch_tokens=64), model=model, tokenizer=tokenizer)
    for a, b in zip(big["learnability"], small["learnability"]):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-4)


def test_truncation_is_flagged_never_silent(student, pool):
    config, model, tokenizer = student
    row = pool[0]
    ids, start, token_logprobs = reference_scores(model, tokenizer, row["messages"], row["response"])
    keep = start + 3  # three response tokens fit
    rows = Dataset.from_list([pool[0], pool[1]])
    scored = score_learnability(rows, StudentConfig(max_length=keep), model=model, tokenizer=tokenizer)
    first = scored[0]
    assert first["truncated"] is True and first["num_response_tokens"] == 3
    assert first["learnability"] == pytest.approx(token_logprobs[:3].mean().item(), abs=1e-4)
    cut_all = score_learnability(rows, StudentConfig(max_length=start - 2), model=model, tokenizer=tokenizer)
    assert cut_all["truncated"] == [True, True]
    assert cut_all["learnability"] == [None, None] and cut_all["num_response_tokens"] == [0, 0]


def test_student_without_chat_template_scores_plain_text(student, pool):
    config, model, tokenizer = student
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    rows = Dataset.from_list([pool[0]])
    scored = score_learnability(rows, config, model=model, tokenizer=plain)[0]
    prompt = pool[0]["messages"][-1]["content"] + "\n"
    prompt_ids = plain(prompt)["input_ids"]
    full_ids = plain(prompt + pool[0]["response"])["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([full_ids])).logits[0].double(), -1)
    expected = logprobs[
        torch.arange(len(prompt_ids) - 1, len(full_ids) - 1), torch.tensor(full_ids[len(prompt_ids) :])
    ]
    assert scored["num_response_tokens"] == len(expected)
    assert scored["learnability"] == pytest.approx(expected.mean().item(), abs=1e-4)


def test_bfloat16_student_is_close_to_float32(student, pool):
    config, model, tokenizer = student
    rows = Dataset.from_list([pool[0], pool[1]])
    bf16 = StudentConfig(dtype="bfloat16")
    bf16_model, _ = load_student(bf16)
    assert bf16_model.dtype == torch.bfloat16
    low = score_learnability(rows, bf16, model=bf16_model, tokenizer=tokenizer)["learnability"]
    full = score_learnability(rows, config, model=model, tokenizer=tokenizer)["learnability"]
    for a, b in zip(low, full):
        assert a == pytest.approx(b, abs=0.15)


def test_missing_columns_are_named(student):
    config, model, tokenizer = student
    with pytest.raises(ValueError, match="response"):
        score_learnability(
            Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]]}),
            config,
            model=model,
            tokenizer=tokenizer,
        )


@pytest.fixture(scope="module")
def shared_pool(asdiv_prompts):
    """Three ASDiv prompts x four teachers: a long answer (cut by max_length below), a short one, an empty
    one (unusable: never scored), a medium one; plus a failed row, and a prompt answered once (no prefix
    to share)."""
    rows = []
    for row in asdiv_prompts.select(range(3)):
        base = {k: row[k] for k in ("prompt_id", "messages", "prompt", "answer")}
        long = "Let's read the problem carefully and work through every quantity it mentions. " * 6
        for teacher, response in (
            ("long", long + f"The answer is {row['answer']}."),
            ("short", "It is 3."),
            ("empty", ""),
            ("medium", f"Answer: {row['answer']}. I checked the arithmetic twice."),
        ):
            rows.append({**base, "teacher": teacher, "response": response, "error": None})
    rows[5] = {**rows[5], "response": None, "error": "timeout after 120 s: <no output>"}
    lone = asdiv_prompts[3]
    rows.append(
        {
            **{k: lone[k] for k in ("prompt_id", "messages", "prompt", "answer")},
            "teacher": "short",
            "response": "It is 3.",
            "error": None,
        }
    )
    return Dataset.from_list(rows)


def test_prefix_shared_path_matches_full_softmax_loop(student, shared_pool, monkeypatch):
    """K=4 responses per prompt scored from one cached prompt equal the independent full-forward numbers,
    with an empty response and a failed row (neither scored), a truncated row and a row with no other row
    to share with."""
    _, model, tokenizer = student
    assert prefix_cache.supports_prefix_cache(model)
    references = [
        reference_scores(model, tokenizer, row["messages"], row["response"])
        if is_usable_answer(row["response"], row["error"])
        else None
        for row in shared_pool
    ]
    longest_prompt = max(ref[1] for ref in references if ref)
    fits = max(
        len(ref[0]) - ref[1] for ref, row in zip(references, shared_pool) if ref and row["teacher"] != "long"
    )
    max_length = longest_prompt + fits  # the short, empty and medium answers fit; the long ones do not
    assert all(
        len(ref[0]) > max_length for ref, row in zip(references, shared_pool) if row["teacher"] == "long"
    )
    calls = []
    shared = prefix_cache.prefix_shared_logprob_sums

    def spy(model, prefixes, segments, *args):
        calls.append((len(prefixes), len(segments)))
        return shared(model, prefixes, segments, *args)

    monkeypatch.setattr(prefix_cache, "prefix_shared_logprob_sums", spy)
    config = StudentConfig(max_length=max_length, batch_tokens=256)  # several prefix and segment batches
    scored = score_learnability(shared_pool, config, model=model, tokenizer=tokenizer)
    assert calls and sum(n for _, n in calls) == 8  # 3 prompts x 3 answering teachers, less the failed row
    assert scored["prompt_id"] == shared_pool["prompt_id"] and scored["teacher"] == shared_pool["teacher"]
    for row, ref in zip(scored, references):
        if ref is None:
            assert row["learnability"] is None and row["learnability_sum"] is None
            assert row["num_response_tokens"] is None and row["truncated"] is False
            continue
        ids, start, token_logprobs = ref
        kept = token_logprobs[: max(0, max_length - start)]
        assert row["truncated"] is (len(ids) > max_length)
        assert row["num_response_tokens"] == len(kept) > 0
        assert row["learnability"] == pytest.approx(kept.mean().item(), abs=1e-4)
        assert row["learnability_sum"] == pytest.approx(kept.sum().item(), abs=1e-3)
    assert scored["truncated"] == [row["teacher"] == "long" for row in shared_pool]
    empty = [row for row in scored if row["teacher"] == "empty"]
    assert len(empty) == 3 and all(row["num_response_tokens"] is None for row in empty)

    # the plain path (no prefix sharing) gives the same numbers
    monkeypatch.setattr(learnability, "supports_prefix_cache", lambda model: False)
    plain = score_learnability(shared_pool, config, model=model, tokenizer=tokenizer)
    assert plain["num_response_tokens"] == scored["num_response_tokens"]
    assert plain["truncated"] == scored["truncated"]
    for a, b in zip(plain["learnability"], scored["learnability"]):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-4)


def test_long_answers_are_scored_alone_and_short_ones_share_the_prompt(student, asdiv_prompts, monkeypatch):
    """Where attention outweighs the prompt work saved, a long answer leaves the shared prompt cache and
    is scored alone (unpadded, so SDPA's causal kernel applies); short answers of the same prompt still
    share it. Every number equals the independent full-forward one either way."""
    config, model, tokenizer = student
    ratio = costs.attention_per_position(model)
    solo = costs.solo_length(model, torch.device("cpu"))
    assert 0 < ratio < 1e-3 and 100 < solo < 2000  # from SmolLM2-135M's sizes
    assert costs.shares_prefix_profitably(ratio, 90, 50, 4)
    assert not costs.shares_prefix_profitably(ratio, 90, 1500, 4)
    assert not costs.shares_prefix_profitably(ratio, 90, 50, 1)  # nothing to share with
    row = asdiv_prompts[0]
    base = {k: row[k] for k in ("prompt_id", "messages")}
    sentence = "Each step adds the two numbers again and writes the running total down. "
    long_answer = sentence * (2 * solo // len(tokenizer(sentence)["input_ids"]))
    responses = {
        "long-1": long_answer,
        "long-2": "First, " + long_answer,
        "short-1": "It is 3.",
        "short-2": "5.",
    }
    pool = Dataset.from_list(
        [{**base, "teacher": t, "response": r, "error": None} for t, r in responses.items()]
    )
    shared_calls, plain_calls = [], []
    shared, plain = prefix_cache.prefix_shared_logprob_sums, engines.response_logprob_sums

    def spy_shared(model, prefixes, segments, *args):
        shared_calls.append(len(segments))
        return shared(model, prefixes, segments, *args)

    def spy_plain(model, rows, *args):
        plain_calls.append([len(r) for r in rows])
        return plain(model, rows, *args)

    monkeypatch.setattr(prefix_cache, "prefix_shared_logprob_sums", spy_shared)
    monkeypatch.setattr(engines, "response_logprob_sums", spy_plain)
    scored = score_learnability(pool, StudentConfig(max_length=4096), model=model, tokenizer=tokenizer)
    assert shared_calls == [2]  # the two short answers
    assert sorted(len(rows) for rows in plain_calls) == [1, 1] and min(plain_calls)[0] >= solo
    for row, response in zip(scored, responses.values()):
        _, _, token_logprobs = reference_scores(model, tokenizer, row["messages"], response)
        assert row["num_response_tokens"] == len(token_logprobs) and row["truncated"] is False
        assert row["learnability"] == pytest.approx(token_logprobs.mean().item(), abs=1e-4)


def test_prefix_shared_batches_and_waves_agree(student, shared_pool, monkeypatch):
    """Tiny token and cache budgets (one prefix per batch, one cached batch per wave) change nothing."""
    config, model, tokenizer = student
    big = score_learnability(shared_pool, config, model=model, tokenizer=tokenizer)
    monkeypatch.setattr(prefix_cache, "KV_BUDGET_BYTES", 1)
    small = score_learnability(shared_pool, StudentConfig(batch_tokens=16), model=model, tokenizer=tokenizer)
    assert small["num_response_tokens"] == big["num_response_tokens"]
    for a, b in zip(big["learnability"], small["learnability"]):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-4)


class _CacheIgnoringModel(torch.nn.Module):
    """A student whose forward accepts a cache but never fills it (as some remote-code models do)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):  # fmt: skip
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)


def test_model_that_ignores_the_cache_falls_back_to_full_rows(student, shared_pool, monkeypatch):
    config, model, tokenizer = student
    expected = score_learnability(shared_pool, config, model=model, tokenizer=tokenizer)
    wrapped = _CacheIgnoringModel(model)
    assert not prefix_cache.supports_prefix_cache(wrapped)  # not a transformers model: plain path
    monkeypatch.setattr(learnability, "supports_prefix_cache", lambda model: True)  # pretend it is
    scored = score_learnability(shared_pool, config, model=wrapped, tokenizer=tokenizer)
    assert wrapped in prefix_cache.NO_PREFIX_CACHE
    assert scored["num_response_tokens"] == expected["num_response_tokens"]
    for a, b in zip(scored["learnability"], expected["learnability"]):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-4)
