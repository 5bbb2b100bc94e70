"""The SFT view of a labeled row: the tokens the student will train on, found exactly as TRL finds them.

The whole conversation (prompt turns + assistant turn) goes through the student's chat template, and the
response tokens are those after the common prefix with the prompt rendered with `add_generation_prompt=True`,
so the scored tokens are the ones SFT trains on (closing tokens such as `<|im_end|>` included). A student
without a chat template (a base model) gets plain text: the prompt turns joined by blank lines, then the
response. Shared by the in-process scorer and the served-student scorer.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Value

from persyn_hub.scoring.answers import is_usable_answer

logger = logging.getLogger(__name__)

LEARNABILITY_COLUMNS = ("learnability", "learnability_sum", "num_response_tokens", "truncated")
LEARNABILITY_READS = ("messages", "response")
"""The prompt turns and the teacher's answer: what the student is scored on."""


SCORE_FEATURES = {
    "learnability": Value("float64"),
    "learnability_sum": Value("float64"),
    "num_response_tokens": Value("int64"),
}


IDS_COLUMN, START_COLUMN, _ROW = "_persyn_ids", "_persyn_response_start", "_persyn_row"


def _plain_prompt(messages: list[dict[str, str]]) -> str:
    """Base-model fallback: the prompt turns' text joined by blank lines, then a newline."""
    return "\n\n".join(m["content"] for m in messages) + "\n"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def tokenize_for_student(
    tokenizer: Any, conversations: list[list[dict[str, str]]], responses: list[str]
) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt + response and the index of the first response token, per row.

    Mirrors TRL's prompt-completion tokenization (the response starts where the tokenized prompt and
    prompt+response diverge), so learnability is measured on the tokens SFT trains on.
    """
    if getattr(tokenizer, "chat_template", None):
        prompts = [
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            for messages in conversations
        ]
        fulls = [
            tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": response}], tokenize=False
            )
            for messages, response in zip(conversations, responses)
        ]
        special = False  # the template writes its own special tokens
    else:
        prompts = [_plain_prompt(messages) for messages in conversations]
        fulls = [prompt + response for prompt, response in zip(prompts, responses)]
        special = True  # e.g. BOS, as a base model saw in pre-training
    prompt_ids = tokenizer(prompts, add_special_tokens=special)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=special)["input_ids"]
    starts = [common_prefix(p, f) for p, f in zip(prompt_ids, full_ids)]
    return [list(ids) for ids in full_ids], starts


def tokenize_batch(batch: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    errors = batch.get("error") or [None] * len(batch["response"])
    keep = [i for i, (r, e) in enumerate(zip(batch["response"], errors)) if is_usable_answer(r, e)]
    ids_out: list[list[int]] = [[] for _ in batch["response"]]
    starts_out = [0] * len(batch["response"])
    truncated = [False] * len(batch["response"])
    if keep:
        ids, starts = tokenize_for_student(
            tokenizer, [batch["messages"][i] for i in keep], [batch["response"][i] for i in keep]
        )
        for i, row_ids, start in zip(keep, ids, starts):
            if len(row_ids) > max_length:
                truncated[i] = True
                row_ids = row_ids[:max_length]
            ids_out[i] = row_ids
            starts_out[i] = start
    return {IDS_COLUMN: ids_out, START_COLUMN: starts_out, "truncated": truncated}
