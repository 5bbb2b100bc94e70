"""How response log-probabilities are computed: the plain path and the prompt-prefix cache path.

Plain: rows sorted by length, packed under a token budget, one forward per batch with logits only from
the first response position (`logits_to_keep`). Prefix cache: each distinct prompt is encoded once (the
part all prompts of a batch share, such as a system turn, once per batch) and its responses are scored as
a batch continuing from the cache. Either way only the target token's log-probability is taken
(logsumexp + gather, in float32), never a full log-softmax over the vocabulary.

Long rows are different: a row scored alone with no padding takes SDPA's causal kernel, which skips the
upper half of the attention matrix, while any padding or cached prefix needs an explicit mask and the
whole rectangle (measured on a 2-core CPU at 1,200 tokens: 9 ms causal vs 18 ms masked per layer). So a
response only continues a shared prompt cache while the prompt work saved outweighs that attention, and
rows past a length where one more forward costs less than the masked half of their attention are scored
alone (`attention_per_position`, from the model's sizes).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from persyn_hub.scoring.learnability_tokens import _IDS, _START, _common_prefix, _usable

logger = logging.getLogger(__name__)

LOGITS_BUDGET_BYTES = 1 << 30
"""Most bytes of logits one scoring batch may hold (rows x kept positions x vocabulary x 4)."""


KV_BUDGET_BYTES = 1 << 30
"""Most bytes of prompt key/value cache one response batch may copy (rows x cache length x bytes/token)."""


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


def attention_per_position(model: Any) -> float:
    """Attention FLOPs per (query, key) pair over FLOPs per position of the model's dense layers: the
    ratio that decides when attention, not the matmuls, dominates a row's cost."""
    config = model.config
    config = getattr(config, "get_text_config", lambda: config)()
    hidden = getattr(config, "hidden_size", None)
    layers = getattr(config, "num_hidden_layers", None)
    dense = model.num_parameters(exclude_embeddings=True) if hasattr(model, "num_parameters") else 0
    if not hidden or not layers or not dense:
        return 0.0  # unknown sizes: attention never decides
    return 4.0 * hidden * layers / (2.0 * dense)  # QK^T and AV over all heads vs 2 FLOPs per parameter


def solo_length(model: Any, device: torch.device) -> int:
    """Rows at least this long are scored one per forward: padding them into a batch would cost the
    masked half of their attention (ratio x length^2 / 2 positions' worth), more than a forward's
    overhead."""
    ratio = attention_per_position(model)
    if ratio <= 0:
        return 1 << 62
    return int((2 * _forward_overhead_tokens(device) / ratio) ** 0.5)


def shares_prefix_profitably(ratio: float, prefix: int, segment: int, siblings: int) -> bool:
    """Whether continuing a cached `prefix` beats scoring the full row alone: the prefix positions saved
    (less its one shared encoding) against the attention the mask no longer lets the kernel skip."""
    length, siblings = prefix + segment, max(1, siblings)
    saved = prefix * (1.0 - 1.0 / siblings)
    # masked rectangle + this row's part of the prefix's causal encoding - the full row's causal triangle
    extra = ratio * (segment * length + prefix * prefix / (2.0 * siblings) - length * length / 2.0)
    return saved > extra


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
    progress: Any = None,
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
            if shared:
                prefixes = [list(ids[rows[0]][: _begin(row_starts[rows[0]]) - 1]) for rows in shared]
                members = [i for rows in shared for i in rows]
                parents = [g for g, rows in enumerate(shared) for _ in rows]
                segments = [ids[i][_begin(row_starts[i]) - 1 :] for i in members]
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
                    _NO_PREFIX_CACHE.add(model)
                    if progress is not None and reported[0]:
                        progress.update(-reported[0])  # these rows are scored again below
                else:
                    for i, total, count in zip(members, sums, counts):
                        record(i, total, count)
                    done = set(members)
                    plain = [i for i in scorable if i not in done]
        plain = sorted(plain, key=lambda i: len(ids[i]))
        lengths = [len(ids[i]) for i in plain]
        starts = [row_starts[i] for i in plain]
        solo = solo_length(model, next(model.parameters()).device)
        packed = sum(1 for length in lengths if length < solo)
        alone = ([g] for g in range(packed, len(plain)))  # unpadded: SDPA's causal kernel
        for group in itertools.chain(
            pack_batches(lengths[:packed], starts[:packed], batch_tokens, vocab_size), alone
        ):
            rows = [ids[plain[g]] for g in group]
            sums, counts = response_logprob_sums(model, rows, [starts[g] for g in group], pad_token_id)
            for g, total, count in zip(group, sums, counts):
                record(plain[g], total, count)
            if progress is not None:
                progress.update(sum(counts))
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
