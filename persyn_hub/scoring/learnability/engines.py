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
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from persyn_hub.scoring.answers import is_usable_answer
from persyn_hub.scoring.learnability.costs import LOGITS_BUDGET_BYTES, first_scored_position, solo_length
from persyn_hub.scoring.learnability.prefix import score_shared_prefixes
from persyn_hub.scoring.learnability.tokens import IDS_COLUMN, START_COLUMN

logger = logging.getLogger(__name__)


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


def score_sorted_batch(
    batch: dict[str, list],
    model: Any,
    pad_token_id: int,
    batch_tokens: int,
    vocab_size: int,
    share_prefixes: bool = False,
    progress: Any = None,
) -> dict[str, list]:
    n = len(batch[IDS_COLUMN])
    out: dict[str, list] = {
        "learnability": [None] * n,
        "learnability_sum": [None] * n,
        "num_response_tokens": [None] * n,
    }
    ids, row_starts = batch[IDS_COLUMN], batch[START_COLUMN]
    errors = batch.get("error") or [None] * n
    scorable = [
        i
        for i in range(n)
        if is_usable_answer(batch["response"][i], errors[i]) and row_starts[i] < len(ids[i])
    ]
    scorable_set = set(scorable)
    for i in range(n):  # a usable row with nothing left to score (empty or cut away) counts 0 tokens
        if is_usable_answer(batch["response"][i], errors[i]) and i not in scorable_set:
            out["num_response_tokens"][i] = 0

    def record(i: int, total: float, count: int) -> None:
        out["num_response_tokens"][i] = count
        if count:
            out["learnability_sum"][i] = total
            out["learnability"][i] = total / count

    plain = scorable
    with torch.inference_mode():
        if share_prefixes:
            for i, total, count in score_shared_prefixes(
                model, ids, row_starts, scorable, pad_token_id, batch_tokens, vocab_size, progress
            ):
                record(i, total, count)
            done = {i for i in scorable if out["num_response_tokens"][i] is not None}
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


def scoring_order(ids: list[list[int]], starts: list[int], share_prefixes: bool) -> np.ndarray:
    """Row order for scoring: by length; with prefix sharing, rows whose prompt prefix other rows share
    come after the rest, grouped by prefix (shortest prefixes first) so a group lands in one batch."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    if not share_prefixes:
        return np.argsort(lengths, kind="stable")
    keys: list[tuple[int, int] | None] = []
    for row, start in zip(ids, starts):
        cut = first_scored_position(start) - 1
        keys.append((cut, hash(tuple(row[:cut]))) if 0 < cut < len(row) - 1 else None)
    seen = Counter(key for key in keys if key is not None)
    sort_keys = [
        (1, key[0], key[1], int(length)) if key is not None and seen[key] > 1 else (0, 0, 0, int(length))
        for key, length in zip(keys, lengths)
    ]
    return np.array(sorted(range(len(ids)), key=sort_keys.__getitem__), dtype=np.int64)
