"""Reward-model quality: one scalar per (prompt, response) from a sequence-classification model.

Any `AutoModelForSequenceClassification` checkpoint with a single output (`num_labels == 1`, as TRL's
`RewardTrainer` trains them) works, by Hub id, local path or `bundled:` name. Each conversation is
written with the reward model's own chat template exactly as `RewardTrainer` tokenized its training
pairs (prompt turns + assistant turn through `apply_chat_template`); a reward model without a chat
template gets the plain text "prompt\\nresponse" plus EOS, as TRL does for non-chat data.
"""

from __future__ import annotations

from typing import Any

import torch

from persyn_hub.bundled import resolve_model
from persyn_hub.errors import PersynError
from persyn_hub.recipe.config import QualityConfig
from persyn_hub.recipe.dtypes import local_device, resolve_dtype


class RewardModelError(PersynError, ValueError):
    """The configured reward model cannot give one score per conversation."""


def load_reward_model(quality: QualityConfig) -> tuple[Any, Any]:
    """Load `quality.reward_model`; refuse a classifier head with more than one label."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    name = quality.reward_model
    if not name:
        raise RewardModelError("quality.reward_model: no model named; set a reward model id or path.")
    path = resolve_model(name)
    config = AutoConfig.from_pretrained(path, trust_remote_code=quality.trust_remote_code)
    if getattr(config, "num_labels", None) != 1:
        raise RewardModelError(
            f"quality.reward_model: {name!r} has num_labels={getattr(config, 'num_labels', None)}; a reward "
            "model outputs one score (num_labels=1). Use a reward model (e.g. trained with TRL's "
            "RewardTrainer), not a multi-class classifier or a causal LM."
        )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=quality.trust_remote_code)
    device = local_device()
    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=resolve_dtype(quality.dtype, device), trust_remote_code=quality.trust_remote_code
    )
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:  # needed to find each row's last token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def held_reward_model(quality: QualityConfig) -> tuple[Any, Any]:
    """The reward model, loaded once for every chunk of the quality stage (released when it ends)."""
    # lazy: generation.engines loads datasets, which this module otherwise does not
    from persyn_hub.generation.engines import held_engine

    key = ("reward-model", quality.reward_model, quality.dtype, quality.trust_remote_code)
    return held_engine(key, lambda: load_reward_model(quality))


def conversation_texts(tokenizer: Any, conversations: list[list[dict]], responses: list[str]) -> list[str]:
    """Prompt turns + assistant response, rendered as the reward model was trained on them."""
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": response}], tokenize=False
            )
            for messages, response in zip(conversations, responses)
        ]
    eos = tokenizer.eos_token or ""
    return [
        "\n\n".join(m["content"] for m in messages) + "\n" + response + eos
        for messages, response in zip(conversations, responses)
    ]


def reward_scores(
    model: Any, tokenizer: Any, conversations: list[list[dict]], responses: list[str], max_length: int
) -> tuple[list[float], list[bool]]:
    """One reward per conversation, and whether it was cut to `max_length` tokens."""
    texts = conversation_texts(tokenizer, conversations, responses)
    special = not getattr(tokenizer, "chat_template", None)
    full = tokenizer(texts, add_special_tokens=special)["input_ids"]
    truncated = [len(ids) > max_length for ids in full]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        encoded = tokenizer(
            texts,
            add_special_tokens=special,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
    finally:
        tokenizer.padding_side = previous_side
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(**{k: v.to(device) for k, v in encoded.items()}).logits
    return [float(x) for x in logits[:, 0].float().cpu()], truncated
