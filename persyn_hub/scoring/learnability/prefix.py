"""Scoring from a shared prompt cache: each distinct prompt is encoded once (the part all prompts of a
batch share, such as a system turn, once per batch) and its responses are scored as a batch continuing
from the cache. Only models whose cache can be continued this way (no sliding-window or recurrent
layers, no length-dependent RoPE) take this path; `supports_prefix_cache` says which.
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from persyn_hub.scoring.learnability.costs import (
    KV_BUDGET_BYTES,
    LOGITS_BUDGET_BYTES,
    attention_per_position,
    first_scored_position,
    forward_overhead_tokens,
    shares_prefix_profitably,
)
from persyn_hub.scoring.learnability.tokens import common_prefix

logger = logging.getLogger(__name__)


class PrefixCacheUnsupported(RuntimeError):
    """The model did not continue the `DynamicCache` it was given; its rows take the plain path."""


NO_PREFIX_CACHE: weakref.WeakSet = weakref.WeakSet()
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
    if config is None or getattr(config, "is_encoder_decoder", False) or model in NO_PREFIX_CACHE:
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
    shared = common_prefix(min(prefixes), max(prefixes)) if len(prefixes) > 1 else 0
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
    progress: Callable[[int], Any] | None = None,
) -> tuple[list[float], list[int]]:
    """For each row `prefixes[parents[j]] + segments[j]`: the sum of log p(token | everything before) over
    `segments[j][1:]`, and how many tokens that is (`len(segments[j]) - 1`, at least 1).

    The same numbers as `response_logprob_sums` on the concatenated rows with start `len(prefix) + 1`,
    with each prefix encoded once. Prefixes are encoded shortest first in batches (the part common to a
    batch once, then the rest continuing from it), split where padding would cost more than another
    forward; while their caches fit `KV_BUDGET_BYTES`, the segments of the prefixes encoded so far are
    scored, sorted by length and split the same way, each continuing from its prefix's cache (explicit
    positions; the padding gaps between prefix and segment masked).
    `progress(n)` is called after each scored batch with the n tokens it scored.
    Raises `PrefixCacheUnsupported` when the model does not continue the cache.
    """
    if any(len(segment) < 2 for segment in segments) or any(not prefix for prefix in prefixes):
        raise ValueError("prefix_shared_logprob_sums: prefixes must be non-empty and segments >= 2 tokens.")
    device = next(model.parameters()).device
    overhead = forward_overhead_tokens(device)
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
        _score_wave(
            model, wave, children, segments, sums, pad_token_id, batch_tokens, vocab_size, overhead, progress
        )
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
    progress: Callable[[int], Any] | None = None,
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
        if progress is not None:
            progress(sum(len(segments[j]) - 1 for j, _, _ in chosen))


def score_shared_prefixes(
    model: Any,
    ids: list[list[int]],
    row_starts: list[int],
    scorable: list[int],
    pad_token_id: int,
    batch_tokens: int,
    vocab_size: int,
    progress: Any = None,
) -> list[tuple[int, float, int]]:
    """(row, log-prob sum, token count) of the rows worth scoring from a shared prompt cache; the others
    (and every row, when the model cannot continue a cache) are left to the plain path.

    A prompt's rows share its cache only where the prompt work saved outweighs the masked attention it
    costs (`shares_prefix_profitably`). A model that turns out not to continue a cache is remembered
    (`NO_PREFIX_CACHE`) and the progress bar is rolled back by what it had counted."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in scorable:
        prefix = tuple(ids[i][: first_scored_position(row_starts[i]) - 1])
        if prefix:  # the last prompt token goes with the response: it predicts the first one
            groups.setdefault(prefix, []).append(i)
    ratio = attention_per_position(model)
    shared = []
    for prefix, rows in groups.items():
        worth = [
            i
            for i in rows
            if shares_prefix_profitably(ratio, len(prefix), len(ids[i]) - len(prefix), len(rows))
        ]
        if len(worth) > 1:
            shared.append(worth)
    if not shared:
        return []
    prefixes = [list(ids[rows[0]][: first_scored_position(row_starts[rows[0]]) - 1]) for rows in shared]
    members = [i for rows in shared for i in rows]
    parents = [g for g, rows in enumerate(shared) for _ in rows]
    segments = [ids[i][first_scored_position(row_starts[i]) - 1 :] for i in members]
    reported = [0]

    def advance(tokens: int) -> None:
        reported[0] += tokens
        if progress is not None:
            progress.update(tokens)

    try:
        sums, counts = prefix_shared_logprob_sums(
            model, prefixes, segments, parents, pad_token_id, batch_tokens, vocab_size, advance
        )
    except PrefixCacheUnsupported as error:
        logger.warning("Prefix-shared scoring is not available (%s); scoring full rows.", error)
        NO_PREFIX_CACHE.add(model)
        if progress is not None and reported[0]:
            progress.update(-reported[0])  # these rows are scored again on the plain path
        return []
    return list(zip(members, sums, counts))
