"""What a scoring forward costs, from the model's sizes: the budgets batches are packed under, the fixed
cost of one more forward, and the attention a masked (padded or cache-continuing) row pays per position.

These numbers decide the two choices of `engines`: which rows continue a shared prompt
cache (`shares_prefix_profitably`) and which are scored alone, unpadded, on SDPA's causal kernel
(`solo_length`). Measured on a 2-core CPU at 1,200 tokens: 9 ms causal vs 18 ms masked per layer.
"""

from __future__ import annotations

from typing import Any

import torch

LOGITS_BUDGET_BYTES = 1 << 30
"""Most bytes of logits one scoring batch may hold (rows x kept positions x vocabulary x 4)."""


KV_BUDGET_BYTES = 1 << 30
"""Most bytes of prompt key/value cache one response batch may copy (rows x cache length x bytes/token)."""


def forward_overhead_tokens(device: torch.device) -> int:
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
    return int((2 * forward_overhead_tokens(device) / ratio) ** 0.5)


def shares_prefix_profitably(ratio: float, prefix: int, segment: int, siblings: int) -> bool:
    """Whether continuing a cached `prefix` beats scoring the full row alone: the prefix positions saved
    (less its one shared encoding) against the attention the mask no longer lets the kernel skip."""
    length, siblings = prefix + segment, max(1, siblings)
    saved = prefix * (1.0 - 1.0 / siblings)
    # masked rectangle + this row's part of the prefix's causal encoding - the full row's causal triangle
    extra = ratio * (segment * length + prefix * prefix / (2.0 * siblings) - length * length / 2.0)
    return saved > extra


def first_scored_position(start: int) -> int:
    """First scored position of a row (position 0 has no context to be predicted from)."""
    return max(start, 1)
