"""Learnability: how likely the student already finds a teacher's response (PerSyn's first signal).

learnability = the student's mean log-probability of the response tokens given the prompt, teacher-forced.
The prompt and response are tokenized the way TRL's `SFTTrainer` tokenizes prompt-completion chat data:
the whole conversation (prompt turns + assistant turn) through the student's chat template, and the
response tokens are those after the common prefix with the prompt rendered with
`add_generation_prompt=True`. So the scored tokens are exactly the ones SFT will train on, closing
tokens of the assistant turn (e.g. `<|im_end|>`) included. A student without a chat template (a base
model) is scored on plain text: the prompt turns joined by blank lines, a newline, then the response.

Speed, on any device: in a PerSyn pool every prompt is answered by several teachers, so rows that share
their prompt's tokens are grouped: each distinct prompt is encoded once (a key/value cache; the prefix
that all prompts of a batch share, such as the chat template's system turn, once per batch), and its
responses are scored as a batch continuing from the cache, packed by response length under a token
budget. Only response positions get logits, and only the target token's log-probability is taken
(logsumexp + gather, one row at a time, in float32), never a full log-softmax over the vocabulary.
Rows that share no prompt, or a student whose cache cannot be continued this way (sliding-window or
recurrent layers), take the plain path: rows sorted by length, packed under the token budget, one full
forward per batch with logits only from the first response position (`logits_to_keep`). Under
`accelerate launch` each process scores a contiguous shard and the scores are gathered back in the
original order.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset, Features, List, Value

from persyn_hub.bundled import resolve_model
from persyn_hub.errors import refuse_columns, require_columns
from persyn_hub.fingerprint import fingerprint
from persyn_hub.generation.engines import held_engine
from persyn_hub.progress import progress_bar
from persyn_hub.recipe.config import StudentConfig
from persyn_hub.recipe.dtypes import local_device, resolve_dtype
from persyn_hub.scoring.learnability.engines import score_sorted_batch, scoring_order
from persyn_hub.scoring.learnability.prefix import supports_prefix_cache
from persyn_hub.scoring.learnability.tokens import (
    IDS_COLUMN,
    LEARNABILITY_COLUMNS,
    LEARNABILITY_READS,
    SCORE_FEATURES,
    START_COLUMN,
    tokenize_batch,
)

logger = logging.getLogger(__name__)


def _response_token_total(tokenized: Dataset) -> int:
    """Response tokens the scorer will score: the bar's total (unusable rows hold no ids: 0)."""
    table = tokenized.with_format("arrow")
    lengths = np.asarray(pc.list_value_length(table[IDS_COLUMN]).to_numpy(), dtype=np.int64)
    starts = np.asarray(table[START_COLUMN].to_numpy(), dtype=np.int64)
    return int(np.maximum(0, lengths - np.maximum(starts, 1)).sum())


def load_student(student: StudentConfig) -> tuple[Any, Any]:
    """Load the student (`bundled:` names resolved) in the recipe's dtype, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(student.model)
    device = local_device()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=student.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(student.dtype, device), trust_remote_code=student.trust_remote_code
    )
    model.to(device).eval()
    return model, tokenizer


def _check_columns(dataset: Dataset) -> None:
    require_columns(
        dataset,
        LEARNABILITY_READS,
        reader="score_learnability",
        fix="It reads `messages` (the prompt turns) and `response` (the teacher's answer) from generation.",
    )
    refuse_columns(
        dataset,
        LEARNABILITY_COLUMNS,
        reader="score_learnability",
        fix="Drop them (dataset.remove_columns) before scoring again.",
    )


def _score_local(
    dataset: Dataset,
    student: StudentConfig,
    model: Any,
    tokenizer: Any,
    key: str,
    progress_desc: str = "Scoring learnability",
    show_progress: bool = True,
) -> Dataset:
    """Tokenize, order rows (by length, prompt-sharing rows grouped), score in packed batches, restore order.

    The bar counts response tokens and advances after every model batch, so it moves (with a rate and
    an ETA) even when one map batch holds the whole pool.
    """
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    vocab_size = int(getattr(model.config, "vocab_size", None) or len(tokenizer))
    if hasattr(model.config, "get_text_config"):
        vocab_size = int(getattr(model.config.get_text_config(), "vocab_size", vocab_size))
    tokenized = dataset.map(
        tokenize_batch,
        features=Features(
            {
                **dataset.features,
                IDS_COLUMN: List(Value("int32")),
                START_COLUMN: Value("int32"),
                "truncated": Value("bool"),
            }
        ),
        batched=True,
        batch_size=256,
        fn_kwargs={"tokenizer": tokenizer, "max_length": student.max_length},
        new_fingerprint=fingerprint("learnability-tokenize", key),
        desc="Tokenizing for the student",
    )
    share_prefixes = supports_prefix_cache(model)
    order = scoring_order(tokenized[IDS_COLUMN], tokenized[START_COLUMN], share_prefixes)
    ordered = tokenized.select(order)
    total = _response_token_total(tokenized)
    with progress_bar(total, progress_desc, "tok", show_progress) as progress:
        scored = ordered.map(
            score_sorted_batch,
            features=Features({**tokenized.features, **SCORE_FEATURES}),
            batched=True,
            batch_size=max(256, student.batch_tokens // 16),
            fn_kwargs={
                "model": model,
                "pad_token_id": pad_token_id,
                "batch_tokens": student.batch_tokens,
                "vocab_size": vocab_size,
                "share_prefixes": share_prefixes,
                "progress": progress,
            },
            new_fingerprint=fingerprint("learnability-score", key),
            desc="Scoring learnability",
        )
        if total and progress.n == 0:
            progress.set_postfix_str("scores read from the cache", refresh=False)
    restored = scored.select(np.argsort(order, kind="stable")).flatten_indices()
    return restored.remove_columns([IDS_COLUMN, START_COLUMN])


def _model_identity(student: StudentConfig, model: Any) -> dict[str, Any]:
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or student.model
    return {"model": name, "dtype": str(getattr(model, "dtype", student.dtype))}


def score_learnability(
    dataset: Dataset,
    student: StudentConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    in_process: bool = False,
) -> Dataset:
    """Add `learnability`, `learnability_sum`, `num_response_tokens`, `truncated` to a labeled pool.

    Reads `messages` (prompt turns), `response` and, when present, `error`. Rows whose generation failed
    (`error` set) or whose `response` is None get None scores (and `truncated=False`); they are never
    scored as a number. A row longer than `student.max_length` tokens is cut at the end and flagged
    `truncated=True`; its score covers the response tokens that fit (None when none fit).

    `in_process`: score here even under `accelerate launch` (the caller gave this process its shard).
    Params: `student` (model, dtype, max_length, batch_tokens, endpoint); `model`/`tokenizer` to reuse a
    loaded student. With `student.endpoint` set the served student is asked instead (TGI, vLLM or llama-cpp-python's server; see served_scoring).

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
        # lazy: scoring.learnability.served loads huggingface_hub, which this module otherwise does not
        from persyn_hub.scoring.learnability.served import score_learnability_served

        return score_learnability_served(dataset, student)
    if model is None or tokenizer is None:
        key = ("student", student.model, student.dtype, student.trust_remote_code)
        loaded_model, loaded_tokenizer = held_engine(key, lambda: load_student(student))
        model = model if model is not None else loaded_model
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    key = fingerprint(dataset._fingerprint, student, _model_identity(student, model))
    if in_process:
        return _score_local(dataset, student, model, tokenizer, key)
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
    scored = _score_local(
        shard,
        student,
        model,
        tokenizer,
        fingerprint(key, state.process_index),
        progress_desc=f"Scoring learnability (process {state.process_index} of {state.num_processes})",
        show_progress=state.is_local_main_process,
    )
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
