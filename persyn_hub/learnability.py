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

import inspect
import logging
import os
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features, List, Value

from persyn_hub.bundled import resolve_model
from persyn_hub.config import StudentConfig
from persyn_hub.dtypes import local_device, resolve_dtype
from persyn_hub.fingerprint import fingerprint

logger = logging.getLogger(__name__)

LEARNABILITY_COLUMNS = ("learnability", "learnability_sum", "num_response_tokens", "truncated")
SCORE_FEATURES = {
    "learnability": Value("float64"),
    "learnability_sum": Value("float64"),
    "num_response_tokens": Value("int64"),
}
LOGITS_BUDGET_BYTES = 1 << 30
"""Most bytes of logits one scoring batch may hold (rows x kept positions x vocabulary x 4)."""
KV_BUDGET_BYTES = 1 << 30
"""Most bytes of prompt key/value cache one response batch may copy (rows x cache length x bytes/token)."""
_IDS, _START, _ROW = "_persyn_ids", "_persyn_response_start", "_persyn_row"


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
# Shared prompt prefixes: encode each once, score its responses from the cache


class PrefixCacheUnsupported(RuntimeError):
    """The model did not continue the `DynamicCache` it was given; its rows take the plain path."""


_NO_PREFIX_CACHE: weakref.WeakSet = weakref.WeakSet()
"""Models that turned out not to continue a cache (`PrefixCacheUnsupported`): asked once, then skipped."""
_LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}
"""RoPE variants whose frequencies depend on the longest position in the call, not just on each one."""


def _rope_types(config: Any) -> set[str]:
    found: set[str] = set()
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(config, name, None)
        values = value.values() if isinstance(value, dict) and "rope_type" not in value else [value]
        found |= {v.get("rope_type") for v in values if isinstance(v, dict) and v.get("rope_type")}
    return found


def supports_prefix_cache(model: Any) -> bool:
    """Whether `model` can score responses continuing from a batch of cached prompt prefixes.

    Needs a decoder-only model implemented in transformers (remote code may treat a cache differently)
    whose forward takes a cache (`cache`, or `past_key_values` before transformers 5.24), `position_ids`,
    `attention_mask` and `logits_to_keep`, whose
    cache layers are all plain full-attention `DynamicLayer`s (a sliding-window or recurrent layer would
    not survive the masked gaps batched prefixes leave), and whose rotary embedding does not depend on
    the length of the call (dynamic NTK, LongRoPE).
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or model in _NO_PREFIX_CACHE:
        return False
    if not type(model).__module__.startswith("transformers."):
        return False
    try:
        parameters = inspect.signature(model.forward).parameters
        from transformers.cache_utils import DynamicCache, DynamicLayer

        layers = DynamicCache(config=config).layers
        text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        rope_types = _rope_types(text_config)
    except Exception:  # noqa: BLE001 - an unusual model simply takes the plain path
        return False
    needed = {"position_ids", "attention_mask", "logits_to_keep"}
    return (
        needed <= set(parameters)
        and _cache_argument(model) is not None
        and bool(layers)
        and all(type(layer) is DynamicLayer for layer in layers)
        and not rope_types & _LENGTH_DEPENDENT_ROPE
    )


def _cache_argument(model: Any) -> str | None:
    """The forward's cache argument: `cache` since transformers 5.24, `past_key_values` before."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _forward_overhead_tokens(device: torch.device) -> int:
    """What one extra forward costs, in padded positions: on a CPU a forward re-reads every weight from
    memory (about 30 positions' worth of compute for a small model); an accelerator is only kept busy
    by large batches."""
    return 32 if device.type == "cpu" else 512


def _partition(lengths: list[int], max_rows: Any, overhead: int) -> list[list[int]]:
    """Split positions 0..n-1 (of rows sorted by length) into contiguous batches minimizing the padded
    positions run plus `overhead` per batch, a batch of width w holding at most `max_rows(w)` rows.
    Exact, by dynamic programming over the split points."""
    n = len(lengths)
    if n == 0:
        return []
    best = np.zeros(n + 1)
    split = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        width = lengths[end - 1]
        rows = max(1, min(end, int(max_rows(width))))
        starts = np.arange(end - rows, end)
        costs = best[end - rows : end] + (end - starts) * width + overhead
        k = int(np.argmin(costs))
        best[end], split[end] = costs[k], starts[k]
    batches, end = [], n
    while end:
        batches.append(list(range(int(split[end]), end)))
        end = int(split[end])
    return batches[::-1]


@dataclass
class _Context:
    """Cached rows to continue from: the cache, its 2-D attention mask (0 on padding gaps) and, per row,
    how many real tokens it holds (the position of the next token)."""

    cache: Any
    mask: torch.Tensor
    lengths: torch.Tensor


def _forward_segments(
    model: Any,
    segments: list[list[int]],
    parent: _Context | None,
    parents: list[int] | None,
    pad_token_id: int,
    logits_to_keep: Any,
) -> tuple[torch.Tensor, _Context]:
    """One forward of right-padded `segments`, row i continuing row `parents[i]` of `parent` (row i when
    `parents` is None; a fresh start when `parent` is None). Returns the kept logits and the extended
    context."""
    from transformers.cache_utils import DynamicCache

    device = next(model.parameters()).device
    width = max(len(segment) for segment in segments)
    input_ids = torch.full((len(segments), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(segments), width), dtype=torch.long)
    for i, segment in enumerate(segments):
        input_ids[i, : len(segment)] = torch.tensor(segment, dtype=torch.long)
        mask[i, : len(segment)] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    if parent is None:
        cache = DynamicCache()
        full_mask = mask
        base = torch.zeros(len(segments), dtype=torch.long, device=device)
    else:
        if parents is not None:
            index = torch.tensor(parents, dtype=torch.long, device=device)
            parent = _Context(
                [(k.index_select(0, index), v.index_select(0, index)) for k, v in _kv(parent.cache)],
                parent.mask.index_select(0, index),
                parent.lengths.index_select(0, index),
            )
        cache = DynamicCache(ddp_cache_data=_kv(parent.cache))
        full_mask = torch.cat([parent.mask, mask], dim=1)
        base = parent.lengths
    out = model(
        input_ids=input_ids,
        attention_mask=full_mask,
        position_ids=base.unsqueeze(1) + torch.arange(width, device=device),
        use_cache=True,
        logits_to_keep=logits_to_keep,
        **{_cache_argument(model): cache},
    )
    cache = out.get("cache", out.get("past_key_values"))
    if not isinstance(cache, DynamicCache) or cache.get_seq_length() != full_mask.shape[1]:
        raise PrefixCacheUnsupported(f"{type(model).__name__} did not extend the DynamicCache it was given")
    return out.logits, _Context(cache, full_mask, base + mask.sum(dim=1))


def _kv(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a `DynamicCache` (or of an already unpacked list)."""
    if isinstance(cache, list):
        return cache
    return [(layer.keys, layer.values) for layer in cache.layers]


def _encode_prefixes(model: Any, prefixes: list[list[int]], pad_token_id: int) -> _Context:
    """Cache of each prefix (one row each); the part all of them share is encoded once."""
    shared = _common_prefix(min(prefixes), max(prefixes)) if len(prefixes) > 1 else 0
    shared = min(shared, max(len(p) for p in prefixes) - 1)  # leave every batch at least one column
    parent = None
    if shared > 0:
        parent = _forward_segments(model, [prefixes[0][:shared]], None, None, pad_token_id, 1)[1]
    rest = [prefix[shared:] for prefix in prefixes]
    parents = [0] * len(prefixes) if parent is not None else None
    return _forward_segments(model, rest, parent, parents, pad_token_id, 1)[1]


def _gather(contexts: list[_Context], picks: list[tuple[int, int]]) -> _Context:
    """Rows `picks` ((context, row) pairs, grouped by context) of several contexts as one context; the
    shorter caches are padded at the end (masked)."""
    width = max(contexts[c].mask.shape[1] for c, _ in picks)
    parts: dict[int, list[int]] = {}
    for c, row in picks:
        parts.setdefault(c, []).append(row)
    layers: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    masks, lengths = [], []
    for c, rows in parts.items():
        context = contexts[c]
        index = torch.tensor(rows, dtype=torch.long, device=context.mask.device)
        gap = width - context.mask.shape[1]
        masks.append(torch.nn.functional.pad(context.mask.index_select(0, index), (0, gap)))
        lengths.append(context.lengths.index_select(0, index))
        for layer, (keys, values) in enumerate(_kv(context.cache)):
            if len(layers) <= layer:
                layers.append(([], []))
            layers[layer][0].append(torch.nn.functional.pad(keys.index_select(0, index), (0, 0, 0, gap)))
            layers[layer][1].append(torch.nn.functional.pad(values.index_select(0, index), (0, 0, 0, gap)))
    if len(parts) == 1:
        kv = [(keys[0], values[0]) for keys, values in layers]
    else:
        kv = [(torch.cat(keys), torch.cat(values)) for keys, values in layers]
    return _Context(kv, torch.cat(masks), torch.cat(lengths))


def _cache_bytes(cache: Any) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in _kv(cache))


def prefix_shared_logprob_sums(
    model: Any,
    prefixes: list[list[int]],
    segments: list[list[int]],
    parents: list[int],
    pad_token_id: int,
    batch_tokens: int,
    vocab_size: int,
) -> tuple[list[float], list[int]]:
    """For each row `prefixes[parents[j]] + segments[j]`: the sum of log p(token | everything before) over
    `segments[j][1:]`, and how many tokens that is (`len(segments[j]) - 1`, at least 1).

    The same numbers as `response_logprob_sums` on the concatenated rows with start `len(prefix) + 1`,
    with each prefix encoded once. Prefixes are encoded shortest first in batches (the part common to a
    batch once, then the rest continuing from it), split where padding would cost more than another
    forward; while their caches fit `KV_BUDGET_BYTES`, the segments of the prefixes encoded so far are
    scored, sorted by length and split the same way, each continuing from its prefix's cache (explicit
    positions; the padding gaps between prefix and segment masked).
    Raises `PrefixCacheUnsupported` when the model does not continue the cache.
    """
    if any(len(segment) < 2 for segment in segments) or any(not prefix for prefix in prefixes):
        raise ValueError("prefix_shared_logprob_sums: prefixes must be non-empty and segments >= 2 tokens.")
    device = next(model.parameters()).device
    overhead = _forward_overhead_tokens(device)
    sums = [0.0] * len(segments)
    children: list[list[int]] = [[] for _ in prefixes]
    for j, g in enumerate(parents):
        children[g].append(j)
    order = sorted((g for g in range(len(prefixes)) if children[g]), key=lambda g: len(prefixes[g]))
    prefix_batches = _partition([len(prefixes[g]) for g in order], lambda w: batch_tokens // w, overhead)
    wave: list[tuple[_Context, list[int]]] = []
    wave_bytes = 0
    for number, batch in enumerate(prefix_batches):
        groups = [order[b] for b in batch]
        context = _encode_prefixes(model, [prefixes[g] for g in groups], pad_token_id)
        wave.append((context, groups))
        wave_bytes += _cache_bytes(context.cache)
        if wave_bytes < KV_BUDGET_BYTES and number < len(prefix_batches) - 1:
            continue
        _score_wave(model, wave, children, segments, sums, pad_token_id, batch_tokens, vocab_size, overhead)
        wave, wave_bytes = [], 0
    return sums, [len(segment) - 1 for segment in segments]


def _score_wave(
    model: Any,
    wave: list[tuple[_Context, list[int]]],
    children: list[list[int]],
    segments: list[list[int]],
    sums: list[float],
    pad_token_id: int,
    batch_tokens: int,
    vocab_size: int,
    overhead: int,
) -> None:
    """Score the segments whose prefixes `wave` holds (into `sums`), in length-sorted packed batches."""
    contexts = [context for context, _ in wave]
    rows = sorted(
        ((j, c, r) for c, (_, groups) in enumerate(wave) for r, g in enumerate(groups) for j in children[g]),
        key=lambda row: len(segments[row[0]]),
    )
    cached = max(context.mask.shape[1] for context in contexts)
    kv_bytes = _cache_bytes(contexts[0].cache) // max(1, contexts[0].mask.numel())

    def max_rows(width: int) -> int:
        return min(
            batch_tokens // width,
            LOGITS_BUDGET_BYTES // max(1, (width - 1) * vocab_size * 4),
            KV_BUDGET_BYTES // max(1, (cached + width) * kv_bytes),
        )

    device = contexts[0].mask.device
    for batch in _partition([len(segments[j]) for j, _, _ in rows], max_rows, overhead):
        chosen = sorted((rows[b] for b in batch), key=lambda row: row[1])  # grouped by context
        width = max(len(segments[j]) for j, _, _ in chosen)
        context = _gather(contexts, [(c, r) for _, c, r in chosen])
        logits = _forward_segments(
            model,
            [segments[j] for j, _, _ in chosen],
            context,
            None,
            pad_token_id,
            torch.arange(width - 1, device=device),
        )[0]
        for i, (j, _, _) in enumerate(chosen):
            row_logits = logits[i, : len(segments[j]) - 1].float()
            targets = torch.tensor(segments[j][1:], device=row_logits.device).unsqueeze(-1)
            token_logprobs = row_logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(row_logits, dim=-1)
            sums[j] = float(token_logprobs.double().sum())
        del logits, context


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


def _begin(start: int) -> int:
    """First scored position of a row (position 0 has no context to be predicted from)."""
    return max(start, 1)


def _score_sorted_batch(
    batch: dict[str, list],
    model: Any,
    pad_token_id: int,
    batch_tokens: int,
    vocab_size: int,
    share_prefixes: bool = False,
) -> dict[str, list]:
    n = len(batch[_IDS])
    out: dict[str, list] = {
        "learnability": [None] * n,
        "learnability_sum": [None] * n,
        "num_response_tokens": [None] * n,
    }
    ids, row_starts = batch[_IDS], batch[_START]
    errors = batch.get("error") or [None] * n
    scorable = [
        i for i in range(n) if _usable(batch["response"][i], errors[i]) and row_starts[i] < len(ids[i])
    ]
    scorable_set = set(scorable)
    for i in range(n):  # a usable row with nothing left to score (empty or cut away) counts 0 tokens
        if _usable(batch["response"][i], errors[i]) and i not in scorable_set:
            out["num_response_tokens"][i] = 0

    def record(i: int, total: float, count: int) -> None:
        out["num_response_tokens"][i] = count
        if count:
            out["learnability_sum"][i] = total
            out["learnability"][i] = total / count

    plain = scorable
    with torch.inference_mode():
        if share_prefixes:
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in scorable:
                prefix = tuple(ids[i][: _begin(row_starts[i]) - 1])
                if prefix:  # the last prompt token goes with the response: it predicts the first one
                    groups.setdefault(prefix, []).append(i)
            shared = [rows for rows in groups.values() if len(rows) > 1]
            if shared:
                prefixes = [list(ids[rows[0]][: _begin(row_starts[rows[0]]) - 1]) for rows in shared]
                members = [i for rows in shared for i in rows]
                parents = [g for g, rows in enumerate(shared) for _ in rows]
                segments = [ids[i][_begin(row_starts[i]) - 1 :] for i in members]
                try:
                    sums, counts = prefix_shared_logprob_sums(
                        model, prefixes, segments, parents, pad_token_id, batch_tokens, vocab_size
                    )
                except PrefixCacheUnsupported as error:
                    logger.warning("Prefix-shared scoring is not available (%s); scoring full rows.", error)
                    _NO_PREFIX_CACHE.add(model)
                else:
                    for i, total, count in zip(members, sums, counts):
                        record(i, total, count)
                    done = set(members)
                    plain = [i for i in scorable if i not in done]
        plain = sorted(plain, key=lambda i: len(ids[i]))
        lengths = [len(ids[i]) for i in plain]
        starts = [row_starts[i] for i in plain]
        for group in pack_batches(lengths, starts, batch_tokens, vocab_size):
            rows = [ids[plain[g]] for g in group]
            sums, counts = response_logprob_sums(model, rows, [starts[g] for g in group], pad_token_id)
            for g, total, count in zip(group, sums, counts):
                record(plain[g], total, count)
    return out


def _scoring_order(ids: list[list[int]], starts: list[int], share_prefixes: bool) -> np.ndarray:
    """Row order for scoring: by length; with prefix sharing, rows whose prompt prefix other rows share
    come after the rest, grouped by prefix (shortest prefixes first) so a group lands in one batch."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    if not share_prefixes:
        return np.argsort(lengths, kind="stable")
    keys: list[tuple[int, int] | None] = []
    for row, start in zip(ids, starts):
        cut = _begin(start) - 1
        keys.append((cut, hash(tuple(row[:cut]))) if 0 < cut < len(row) - 1 else None)
    seen = Counter(key for key in keys if key is not None)
    sort_keys = [
        (1, key[0], key[1], int(length)) if key is not None and seen[key] > 1 else (0, 0, 0, int(length))
        for key, length in zip(keys, lengths)
    ]
    return np.array(sorted(range(len(ids)), key=sort_keys.__getitem__), dtype=np.int64)


def _score_local(dataset: Dataset, student: StudentConfig, model: Any, tokenizer: Any, key: str) -> Dataset:
    """Tokenize, order rows (by length, prompt-sharing rows grouped), score in packed batches, restore order."""
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
    share_prefixes = supports_prefix_cache(model)
    order = _scoring_order(tokenized[_IDS], tokenized[_START], share_prefixes)
    ordered = tokenized.select(order)
    scored = ordered.map(
        _score_sorted_batch,
        features=Features({**tokenized.features, **SCORE_FEATURES}),
        batched=True,
        batch_size=max(256, student.batch_tokens // 16),
        fn_kwargs={
            "model": model,
            "pad_token_id": pad_token_id,
            "batch_tokens": student.batch_tokens,
            "vocab_size": vocab_size,
            "share_prefixes": share_prefixes,
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
        from persyn_hub.served_scoring import score_learnability_served

        return score_learnability_served(dataset, student)
    if model is None or tokenizer is None:
        loaded_model, loaded_tokenizer = load_student(student)
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
