"""Learnability from a served student (REAL llama.cpp server on 127.0.0.1) vs the in-process scorer.

The server runs the bundled SmolLM2 GGUF (Q4_1); the in-process student is the same GGUF dequantized to
float32, so the only differences are llama.cpp's quantized arithmetic. Requests go through a fault
proxy that makes one prompt's first requests fail (503, malformed JSON, dropped connection), so the
numbers below are also the numbers after retries.

Run: `pytest -m server tests/test_served_scoring.py` (needs `bash scripts/install-llama-server.sh`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from persyn_hub.bundled import bundled_gguf_path
from persyn_hub.recipe.config import StudentConfig
from persyn_hub.scoring.answers import is_usable_answer
from persyn_hub.scoring.learnability import served as served_scoring
from persyn_hub.scoring.learnability.scorer import load_student, score_learnability
from persyn_hub.scoring.learnability.server_replies import (
    LLAMA_CPP_SHIFT,
    ServedScoringError,
    llama_cpp_token_logprobs,
    response_sum,
    tgi_token_logprobs,
    vllm_token_logprobs,
)
from persyn_hub.scoring.learnability.tokens import tokenize_for_student

sys.path.insert(0, str(Path(__file__).parent))
from servers import FaultProxy, LlamaServer, llama_cpp_available  # noqa: E402

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not llama_cpp_available(),
        reason="llama_cpp is not importable: `bash scripts/install-llama-server.sh` to run the real-server tests",
    ),
]

STUDENT = "bundled:smollm2-135m-instruct"
ROW_TOL = 0.3
"""Nats per token between served (Q4_1 GGUF in llama.cpp) and in-process (its float32 dequantization)
learnability. Measured on these rows: max 0.106, mean 0.048 (0.14 on other ASDiv rows); the
gold-vs-wrong answer gap it must not blur is ~1 nat per token."""
TOKEN_TOL = 1.0
"""Per-token log-prob difference between the same two (measured: max 0.44, mean 0.08 over ~180 tokens;
read one position off, the mean is ~3.6)."""
FAULTS = ["503", "malformed", "drop"]


@pytest.fixture(scope="module")
def student():
    model, tokenizer = load_student(StudentConfig(model=STUDENT, dtype="float32"))
    return model, tokenizer


@pytest.fixture(scope="module")
def pool(asdiv_prompts) -> Dataset:
    """The 4 shortest real prompts x (gold answer sentence, a wrong one), a one-token answer, plus
    empty/failed rows."""
    shortest = sorted(range(len(asdiv_prompts)), key=lambda i: len(asdiv_prompts[i]["prompt"]))[:4]
    rows = []
    for row in asdiv_prompts.select(shortest):
        base = {"prompt_id": row["prompt_id"], "messages": row["messages"]}
        rows.append({**base, "response": f"The answer is {row['answer']}.", "error": None})
        rows.append({**base, "response": "It is 3.", "error": None})
    base = rows[0]
    rows.insert(3, {**base, "response": None, "error": "timeout after 120 s"})  # generation failed
    rows.insert(5, {**base, "response": "The answer is 7.", "error": "HTTP 500: raw output kept"})
    rows.append({**base, "response": "9", "error": None})  # one token: its edge tokens carry the score
    rows.append({**base, "response": "", "error": None})  # empty: unusable, never scored
    return Dataset.from_list(rows)


def _usable_rows(pool: Dataset) -> list[int]:
    return [i for i, row in enumerate(pool) if is_usable_answer(row["response"], row["error"])]


@pytest.fixture(scope="module")
def max_length(pool, student) -> int:
    """Cut the longest row's last 2 tokens, so truncation is compared too."""
    _, tokenizer = student
    usable = _usable_rows(pool)
    ids, _ = tokenize_for_student(
        tokenizer, [pool[i]["messages"] for i in usable], [pool[i]["response"] for i in usable]
    )
    return max(len(row) for row in ids) - 2


@pytest.fixture(scope="module")
def scored(pool, student, max_length):
    """In-process scores, then served scores (through the fault proxy), recording the raw llama.cpp replies."""
    model, tokenizer = student
    local = score_learnability(
        pool, StudentConfig(model=STUDENT, max_length=max_length), model=model, tokenizer=tokenizer
    )
    usable = _usable_rows(pool)
    _, starts = tokenize_for_student(
        tokenizer, [pool[i]["messages"] for i in usable], [pool[i]["response"] for i in usable]
    )
    min_start = min(starts)
    calls: list[tuple[list[int], dict]] = []
    real = served_scoring.llama_cpp_token_logprobs

    def spy(body, server_ids, bos_token_id, shift=LLAMA_CPP_SHIFT):
        calls.append((list(server_ids), body))
        return real(body, server_ids, bos_token_id, shift)

    with LlamaServer(bundled_gguf_path(STUDENT)) as server, FaultProxy(server.url, retry_after=0.1) as proxy:
        proxy.plan = {pool[1]["messages"][-1]["content"]: FAULTS}  # one prompt's first 3 requests fail
        config = StudentConfig(
            model=STUDENT, max_length=max_length, endpoint=proxy.url, max_concurrency=2, retry_backoff=0.05
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(served_scoring, "llama_cpp_token_logprobs", spy)
            served = score_learnability(pool, config)
        injected = dict(proxy.injected)
        # every response cut away by max_length: 0 tokens and None scores, and nothing to ask the server
        cut = StudentConfig(model=STUDENT, max_length=min_start, endpoint=server.url)
        cut_served = score_learnability(pool, cut)
        # a tokenizer that is not the served model's: refused, naming the row, never scored wrong
        other = StudentConfig(model="bundled:minilm-l6-v2", endpoint=server.url)
        with pytest.raises(ServedScoringError, match=r"row 0 .*tokenized the text differently"):
            score_learnability(pool.select([0]), other)
    cut_local = score_learnability(
        pool, StudentConfig(model=STUDENT, max_length=min_start), model=model, tokenizer=tokenizer
    )
    return {
        "local": local,
        "served": served,
        "calls": calls,
        "injected": injected,
        "cut": (cut_local, cut_served),
    }


def test_served_llama_cpp_matches_in_process(pool, scored):
    local, served = scored["local"], scored["served"]
    assert served.column_names == local.column_names
    assert served["prompt_id"] == pool["prompt_id"] and served["response"] == pool["response"]
    assert served["truncated"] == local["truncated"] and any(local["truncated"])
    assert served["num_response_tokens"] == local["num_response_tokens"]
    diffs = []
    for a, b, sa, sb in zip(
        local["learnability"], served["learnability"], local["learnability_sum"], served["learnability_sum"]
    ):
        assert (a is None) == (b is None) and (sa is None) == (sb is None)
        if a is not None:
            diffs.append(abs(a - b))
    assert len(diffs) == len(_usable_rows(pool)) == 9 and max(diffs) <= ROW_TOL, diffs
    print(
        f"served vs in-process learnability: max |diff| {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f}"
    )
    # the served scores rank each prompt's gold and wrong answers as in-process does, where it is clear
    for gold, wrong in ((0, 1), (2, 4), (6, 7), (8, 9)):
        gap = local["learnability"][gold] - local["learnability"][wrong]
        if abs(gap) > 2 * ROW_TOL:
            assert (served["learnability"][gold] - served["learnability"][wrong]) * gap > 0
    # the faults were injected and retried through
    assert scored["injected"] == {fault: 1 for fault in FAULTS}


def test_failed_and_empty_rows_as_in_process(pool, scored):
    local, served = scored["local"], scored["served"]
    for i in (3, 5):  # error set (with or without a response): None scores, not truncated, no request
        assert pool[i]["error"] is not None
        for name in ("learnability", "learnability_sum", "num_response_tokens"):
            assert served[i][name] is None and local[i][name] is None
        assert served[i]["truncated"] is False
    empty = len(pool) - 1  # no error but no text: unusable, so never scored nor sent, as in-process
    assert pool[empty]["response"] == "" and pool[empty]["error"] is None
    for name in ("learnability", "learnability_sum", "num_response_tokens"):
        assert served[empty][name] is None and local[empty][name] is None
    assert served[empty]["truncated"] is False and local[empty]["truncated"] is False
    assert len(scored["calls"]) == 9  # one completion per usable row (retried ones parse once)


def test_response_cut_away_as_in_process(pool, scored):
    local, served = scored["cut"]
    assert served.to_list() == local.to_list()
    usable = [is_usable_answer(r, e) for r, e in zip(pool["response"], pool["error"])]
    assert served["num_response_tokens"] == [0 if u else None for u in usable]
    assert served["truncated"] == usable and set(served["learnability"]) == {None}


def test_llama_cpp_shift_correction(scored, student, pool, max_length):
    """Corrected, llama.cpp's echo matches the in-process log-prob of every token and the row's
    learnability; read one position off (the uncorrected alignment) it is far away on both."""
    model, tokenizer = student
    usable = _usable_rows(pool)
    all_ids, starts = tokenize_for_student(
        tokenizer, [pool[i]["messages"] for i in usable], [pool[i]["response"] for i in usable]
    )
    rows = {tuple(ids[:max_length]): (i, start) for i, ids, start in zip(usable, all_ids, starts)}
    local = scored["local"]["learnability"]
    corrected, uncorrected, row_fixed, row_naive = [], [], [], []
    for server_ids, body in scored["calls"]:
        fixed = llama_cpp_token_logprobs(body, server_ids, 1)
        naive = llama_cpp_token_logprobs(body, server_ids, 1, shift=0)
        assert fixed[-1] is not None and naive[-1] is None  # uncorrected, the last token has no value
        i, start = rows[tuple(server_ids)]
        window = range(max(start, 1), len(server_ids))
        row_fixed.append(abs(sum(fixed[p] for p in window) / len(window) - local[i]))
        naive_values = [naive[p] for p in window if naive[p] is not None]
        row_naive.append(abs(sum(naive_values) / len(naive_values) - local[i]))
        if len(corrected) > 150:
            continue  # per token, ~3 rows are plenty (a float32 forward per row)
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([server_ids])).logits[0].double(), dim=-1)
        reference = [None] + [logprobs[p - 1, server_ids[p]].item() for p in range(1, len(server_ids))]
        corrected += [abs(v - r) for v, r in zip(fixed, reference) if v is not None and r is not None]
        uncorrected += [abs(v - r) for v, r in zip(naive, reference) if v is not None and r is not None]
    mean_fixed = sum(corrected) / len(corrected)
    mean_naive = sum(uncorrected) / len(uncorrected)
    print(
        f"per token |served - in-process| over {len(corrected)} tokens: corrected max {max(corrected):.3f} "
        f"mean {mean_fixed:.3f}; uncorrected mean {mean_naive:.3f}. Per row: corrected max "
        f"{max(row_fixed):.3f}, uncorrected {sorted(round(d, 3) for d in row_naive)}"
    )
    assert max(corrected) <= TOKEN_TOL and mean_fixed < 0.1
    assert mean_naive > 2.0 and mean_naive > 20 * mean_fixed
    assert max(row_fixed) <= ROW_TOL
    # per row the shift mostly moves the window over near-certain template tokens (`assistant\n`,
    # `<|im_end|>\n`), but it breaks rows whose edge tokens carry the score (the one-token answer)
    assert max(row_naive) > 3 * ROW_TOL


# --------------------------------------------------------------------------------------------------
# Pure parsers, on the reply shapes the servers document


def test_tgi_prefill_parser():
    # huggingface_hub's TextGenerationOutput docs: details.prefill = [{id, text, logprob}], first null
    body = {
        "generated_text": "100",
        "details": {
            "finish_reason": "length",
            "generated_tokens": 1,
            "prefill": [
                {"id": 487, "text": "The", "logprob": None},
                {"id": 53789, "text": " hugging", "logprob": -13.171875},
                {"id": 204, "text": " ", "logprob": -7.0390625},
            ],
            "tokens": [{"id": 1425, "text": "100", "logprob": -1.0, "special": False}],
        },
    }
    ids, values = tgi_token_logprobs(body)
    assert ids == [487, 53789, 204] and values == [None, -13.171875, -7.0390625]
    assert response_sum(values, 1, 3) == (pytest.approx(-20.2109375), 2)


def test_vllm_prompt_logprobs_parser():
    # vLLM PromptLogprobs: list[None | {token_id: Logprob(logprob, rank, decoded_token)}], JSON keys are strings
    body = {
        "choices": [
            {
                "text": "x",
                "prompt_logprobs": [
                    None,
                    {"53789": {"logprob": -13.17, "rank": 900, "decoded_token": " hugging"},
                     "11": {"logprob": -1.2, "rank": 1, "decoded_token": ","}},
                    {"204": {"logprob": -7.04, "rank": 30, "decoded_token": " "}},
                ],
            }
        ]
    }  # fmt: skip
    assert vllm_token_logprobs(body, [487, 53789, 204]) == [None, -13.17, -7.04]
    with pytest.raises(ServedScoringError, match="token 2"):
        vllm_token_logprobs(body, [487, 53789, 205])
    with pytest.raises(ServedScoringError, match="3 prompt tokens"):
        vllm_token_logprobs(body, [487, 53789, 204, 9])


def test_llama_cpp_refuses_prompts_without_leading_bos():
    body = {
        "choices": [{"logprobs": {"token_logprobs": [None, -1.0, -2.0]}}],
        "usage": {"completion_tokens": 0},
    }
    assert llama_cpp_token_logprobs(body, [1, 5, 6, 7], 1) == [None, None, -1.0, -2.0]
    with pytest.raises(ServedScoringError, match="misaligned"):
        llama_cpp_token_logprobs(body, [5, 6, 7], 1)
