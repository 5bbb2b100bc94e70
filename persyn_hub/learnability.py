"""Learnability: how likely the student already finds a teacher's response (PerSyn's first signal).

learnability = the student's mean log-probability of the response tokens given the prompt, teacher-forced.
The prompt and response are tokenized the way TRL's `SFTTrainer` tokenizes prompt-completion chat data:
the whole conversation (prompt turns + assistant turn) through the student's chat template, and the
response tokens are those after the common prefix with the prompt rendered with
`add_generation_prompt=True`. So the scored tokens are exactly the ones SFT will train on, closing
tokens of the assistant turn (e.g. `<|im_end|>`) included. A student without a chat template (a base
model) is scored on plain text: the prompt turns joined by blank lines, a newline, then the response.

Speed, on any device: rows are sorted by length and packed into batches under a token budget (little
padding); the model computes logits only for the positions that predict response tokens
(`logits_to_keep`), and only the target token's log-probability is taken (logsumexp + gather, one row
at a time, in float32), never a full log-softmax over the vocabulary. Under `accelerate launch` each
process scores a contiguous shard and the scores are gathered back in the original order.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features, List, Value

from persyn_hub.bundled import resolve_model
from persyn_hub.config import StudentConfig
from persyn_hub.fingerprint import fingerprint

logger = logging.getLogger(__name__)

LEARNABILITY_COLUMNS = ("learnability", "learnability_sum", "num_response_tokens", "truncated")
SCORE_FEATURES = {
    "learnability": Value("float64"),
    "learnability_sum": Value("float64"),
    "num_response_tokens": Value("int64"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
LOGITS_BUDGET_BYTES = 1 << 30
"""Most bytes of logits one scoring batch may hold (rows x kept positions x vocabulary x 4)."""
_IDS, _START, _ROW = "_persyn_ids", "_persyn_response_start", "_persyn_row"


def torch_dtype(name: str) -> Any:
    """Recipe dtype name -> torch dtype; a clear error names the valid choices."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}.")
    return DTYPES[name]


def load_student(student: StudentConfig) -> tuple[Any, Any]:
    """Load the student (`bundled:` names resolved) in the recipe's dtype, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(student.model)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=student.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype(student.dtype), trust_remote_code=student.trust_remote_code
    )
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------------------------------
# Tokenization (the SFT view of a row)


def _plain_prompt(messages: list[dict[str, str]]) -> str:
    """Base-model fallback: the prompt turns' text joined by blank lines, then a newline."""
    return "\n\n".join(m["content"] for m in messages) + "\n"


def _common_prefix(a: list[int], b: list[int]) -> int:
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
    starts = [_common_prefix(p, f) for p, f in zip(prompt_ids, full_ids)]
    return [list(ids) for ids in full_ids], starts


# --------------------------------------------------------------------------------------------------
# Scoring one batch


def _accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def response_logprob_sums(
    model: Any, rows: list[list[int]], starts: list[int], pad_token_id: int
) -> tuple[list[float], list[int]]:
    """Sum of log p(token | prefix) over tokens [start, len) of each row, and how many were scored.

    Right padding keeps real positions unchanged (causal attention never sees the pads); logits are
    computed only from the first position that predicts a response token onward.
    """
    device = next(model.parameters()).device
    lengths = [len(r) for r in rows]
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, : len(ids)] = 1
    first = max(1, min(starts))  # position 0 has no context to be predicted from
    kwargs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = torch.arange(first - 1, width - 1, device=device)
        offset = first - 1
    else:
        offset = 0
    logits = model(**kwargs, use_cache=False).logits
    sums, counts = [], []
    for i, (ids, start) in enumerate(zip(rows, starts)):
        begin = max(start, 1)
        if begin >= len(ids):
            sums.append(0.0)
            counts.append(0)
            continue
        row_logits = logits[i, begin - 1 - offset : len(ids) - 1 - offset].float()
        targets = torch.tensor(ids[begin:], device=row_logits.device).unsqueeze(-1)
        token_logprobs = row_logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(row_logits, dim=-1)
        sums.append(float(token_logprobs.double().sum()))
        counts.append(len(ids) - begin)
    return sums, counts


def pack_batches(
    lengths: list[int], starts: list[int], batch_tokens: int, vocab_size: int
) -> Iterator[list[int]]:
    """Group row positions (already sorted by length) so padded tokens and logits stay under budget."""
    batch: list[int] = []
    width = 0
    min_start = 0
    for position, (length, start) in enumerate(zip(lengths, starts)):
        new_width = max(width, length)
        new_start = min(min_start, start) if batch else start
        kept = max(1, new_width - max(1, new_start) + 1)
        rows = len(batch) + 1
        over = rows * new_width > batch_tokens or rows * kept * vocab_size * 4 > LOGITS_BUDGET_BYTES
        if batch and over:
            yield batch
            batch, new_width, new_start = [], length, start
        batch.append(position)
        width, min_start = new_width, new_start
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------------
# The stage


def _check_columns(dataset: Dataset) -> None:
    missing = [c for c in ("messages", "response") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"score_learnability: the data set lacks column(s) {missing} (it has {dataset.column_names}); "
            "it reads `messages` (the prompt turns) and `response` (the teacher's answer) from generation."
        )
    present = [c for c in LEARNABILITY_COLUMNS if c in dataset.column_names]
    if present:
        raise ValueError(
            f"score_learnability: column(s) {present} already exist; drop them "
            "(dataset.remove_columns) before scoring again."
        )


def _usable(response: Any, error: Any) -> bool:
    return error is None and isinstance(response, str)


def _tokenize_batch(batch: dict[str, list], tokenizer: Any, max_length: int) -> dict[str, list]:
    errors = batch.get("error") or [None] * len(batch["response"])
    keep = [i for i, (r, e) in enumerate(zip(batch["response"], errors)) if _usable(r, e)]
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
    return {_IDS: ids_out, _START: starts_out, "truncated": truncated}


def _score_sorted_batch(
    batch: dict[str, list], model: Any, pad_token_id: int, batch_tokens: int, vocab_size: int
) -> dict[str, list]:
    n = len(batch[_IDS])
    out: dict[str, list] = {
        "learnability": [None] * n,
        "learnability_sum": [None] * n,
        "num_response_tokens": [None] * n,
    }
    errors = batch.get("error") or [None] * n
    scorable = [
        i
        for i in range(n)
        if _usable(batch["response"][i], errors[i]) and batch[_START][i] < len(batch[_IDS][i])
    ]
    scorable_set = set(scorable)
    for i in range(n):  # a usable row with nothing left to score (empty or cut away) counts 0 tokens
        if _usable(batch["response"][i], errors[i]) and i not in scorable_set:
            out["num_response_tokens"][i] = 0
    lengths = [len(batch[_IDS][i]) for i in scorable]
    starts = [batch[_START][i] for i in scorable]
    with torch.inference_mode():
        for group in pack_batches(lengths, starts, batch_tokens, vocab_size):
            rows = [batch[_IDS][scorable[g]] for g in group]
            sums, counts = response_logprob_sums(model, rows, [starts[g] for g in group], pad_token_id)
            for g, total, count in zip(group, sums, counts):
                i = scorable[g]
                out["num_response_tokens"][i] = count
                if count:
                    out["learnability_sum"][i] = total
                    out["learnability"][i] = total / count
    return out


def _score_local(dataset: Dataset, student: StudentConfig, model: Any, tokenizer: Any, key: str) -> Dataset:
    """Tokenize, sort by length, score in packed batches, restore the original order."""
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    vocab_size = int(getattr(model.config, "vocab_size", None) or len(tokenizer))
    if hasattr(model.config, "get_text_config"):
        vocab_size = int(getattr(model.config.get_text_config(), "vocab_size", vocab_size))
    tokenized = dataset.map(
        _tokenize_batch,
        features=Features(
            {
                **dataset.features,
                _IDS: List(Value("int32")),
                _START: Value("int32"),
                "truncated": Value("bool"),
            }
        ),
        batched=True,
        batch_size=256,
        fn_kwargs={"tokenizer": tokenizer, "max_length": student.max_length},
        new_fingerprint=fingerprint("learnability-tokenize", key),
        desc="Tokenizing for the student",
    )
    lengths = np.fromiter((len(ids) for ids in tokenized[_IDS]), dtype=np.int64, count=len(tokenized))
    order = np.argsort(lengths, kind="stable")
    ordered = tokenized.select(order)
    scored = ordered.map(
        _score_sorted_batch,
        features=Features({**tokenized.features, **SCORE_FEATURES}),
        batched=True,
        batch_size=max(64, student.batch_tokens // 64),
        fn_kwargs={
            "model": model,
            "pad_token_id": pad_token_id,
            "batch_tokens": student.batch_tokens,
            "vocab_size": vocab_size,
        },
        new_fingerprint=fingerprint("learnability-score", key),
        desc="Scoring learnability",
    )
    restored = scored.select(np.argsort(order, kind="stable")).flatten_indices()
    return restored.remove_columns([_IDS, _START])


def _model_identity(student: StudentConfig, model: Any) -> dict[str, Any]:
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or student.model
    return {"model": name, "dtype": str(getattr(model, "dtype", student.dtype))}


def score_learnability(
    dataset: Dataset, student: StudentConfig, *, model: Any = None, tokenizer: Any = None
) -> Dataset:
    """Add `learnability`, `learnability_sum`, `num_response_tokens`, `truncated` to a labeled pool.

    Reads `messages` (prompt turns), `response` and, when present, `error`. Rows whose generation failed
    (`error` set) or whose `response` is None get None scores (and `truncated=False`); they are never
    scored as a number. A row longer than `student.max_length` tokens is cut at the end and flagged
    `truncated=True`; its score covers the response tokens that fit (None when none fit).

    Params: `student` (model, dtype, max_length, batch_tokens, endpoint); `model`/`tokenizer` to reuse a
    loaded student. With `student.endpoint` set the served student is asked instead (TGI or vLLM).

    Example:
        >>> pool = Dataset.from_list([{"messages": [{"role": "user", "content": "2+2?"}],
        ...                            "response": "4", "error": None}])
        >>> score_learnability(pool, StudentConfig())["learnability"]  # doctest: +SKIP
        [-1.23]
    """
    _check_columns(dataset)
    if student.max_length < 2:
        raise ValueError(f"student.max_length: {student.max_length} is too small to score anything.")
    if student.endpoint and model is None:
        from persyn_hub.served_scoring import score_learnability_served

        return score_learnability_served(dataset, student)
    if model is None or tokenizer is None:
        loaded_model, loaded_tokenizer = load_student(student)
        model = model if model is not None else loaded_model
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    key = fingerprint(dataset._fingerprint, student, _model_identity(student, model))
    from accelerate import PartialState

    # accelerate only detects CPU multi-process runs when told the run is on CPU
    state = PartialState(
        cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        or not torch.cuda.is_available()
    )
    if state.num_processes == 1:
        return _score_local(dataset, student, model, tokenizer, key)
    return _score_sharded(dataset, student, model, tokenizer, key, state)


def _score_sharded(
    dataset: Dataset, student: StudentConfig, model: Any, tokenizer: Any, key: str, state: Any
) -> Dataset:
    """`accelerate launch`: each process scores a contiguous shard; every process gets the whole result.

    Only the four score columns travel between processes (`gather_object`, in rank order), so the
    result is the input data set plus its scores in the original row order.
    """
    from accelerate.utils import gather_object

    model.to(state.device)
    shard = dataset.shard(num_shards=state.num_processes, index=state.process_index, contiguous=True)
    scored = _score_local(shard, student, model, tokenizer, fingerprint(key, state.process_index))
    columns = {name: scored[name] for name in LEARNABILITY_COLUMNS}
    gathered = gather_object([columns])
    merged: dict[str, list] = {name: [] for name in LEARNABILITY_COLUMNS}
    for part in gathered:
        for name in LEARNABILITY_COLUMNS:
            merged[name].extend(part[name])
    if len(merged["learnability"]) != len(dataset):
        raise RuntimeError(
            f"score_learnability: gathered {len(merged['learnability'])} scores for {len(dataset)} rows; "
            "every process must be given the same data set."
        )
    result = dataset
    features = {**SCORE_FEATURES, "truncated": Value("bool")}
    for name in LEARNABILITY_COLUMNS:
        result = result.add_column(name, merged[name], feature=features[name])
    return result
