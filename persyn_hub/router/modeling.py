"""A PerSyn router is a standard transformers sequence-classification model: one label per teacher.

`new_router("bundled:minilm-l6-v2", task_info, tokenizer)` loads the backbone with
`AutoModelForSequenceClassification`: an encoder gets its own classification head (BERT: the [CLS]
pooler), a decoder LM gets its `...ForSequenceClassification` (the LM head replaced by one score per
teacher, read at the last non-padding token: the paper's router). `id2label` holds the teacher names
and the config's `persyn` entry what the router was trained for (`router.info.RouterInfo`), so anyone
loads it with transformers alone:

    from transformers import pipeline
    pipeline("text-classification", model="org/router", top_k=None)("What is 17 + 25?")

Training uses the Bradley-Terry loss below on the per-prompt rewards. Scores are Bradley-Terry logits:
only differences between teachers of one prompt carry meaning (`pipeline` shows their softmax, which
keeps the order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from persyn_hub.bundled import resolve_model
from persyn_hub.errors import PersynError
from persyn_hub.router.info import CONFIG_KEY, RouterInfo


class RouterBackboneError(PersynError, ValueError):
    """The backbone has no sequence-classification model in transformers."""


def bradley_terry_loss(scores: torch.Tensor, rewards: torch.Tensor, tie_margin: float) -> torch.Tensor:
    """Mean of -log sigmoid(s_i - s_j) over the pairs of one prompt with r_i - r_j > tie_margin.

    `rewards` is (batch, teachers) with NaN for unusable teachers; NaN pairs and ties give no signal.
    A batch without any ordered pair returns a zero that still depends on `scores` (keeps DDP happy).
    """
    rewards = rewards.to(scores.dtype)
    reward_gap = rewards[:, :, None] - rewards[:, None, :]
    ordered = torch.nan_to_num(reward_gap, nan=0.0) > tie_margin
    if not bool(ordered.any()):
        return scores.sum() * 0.0
    score_gap = scores[:, :, None] - scores[:, None, :]
    return -F.logsigmoid(score_gap[ordered]).mean()


def new_router(info: RouterInfo, tokenizer) -> PreTrainedModel:
    """A router on `info.backbone`'s pretrained weights with a fresh head of one score per teacher.

    Built in the default dtype whatever the checkpoint's (a bf16 Qwen checkpoint would otherwise train
    in bf16). A decoder scores the last non-padding token, so it needs a pad token id: the tokenizer's.
    """
    if len(info.teachers) < 2:
        raise ValueError(f"A router needs at least 2 teachers, got {info.teachers}.")
    if len(set(info.teachers)) != len(info.teachers):
        raise ValueError(f"Router teachers repeat: {info.teachers}.")
    path = resolve_model(info.backbone)
    config = AutoConfig.from_pretrained(
        path,
        num_labels=len(info.teachers),
        id2label=dict(enumerate(info.teachers)),
        label2id={name: i for i, name in enumerate(info.teachers)},
    )
    if hasattr(config, "classifier_dropout"):
        # No dropout on the pooled vector: with a few hundred labeled prompts and early stopping on a small
        # validation split it cost reward recovered (benchmarks/bench_router_head.py, docs/hub.md).
        config.classifier_dropout = 0.0
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, dtype=torch.get_default_dtype()
        )
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise
        raise RouterBackboneError(
            f"router.backbone {info.backbone!r}: transformers has no sequence-classification model for it "
            "(AutoModelForSequenceClassification). Pick an encoder (BERT, MiniLM, RoBERTa, ...) or a decoder "
            "LM (Llama, Qwen2, SmolLM2, ...) that has one."
        ) from error
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    setattr(model.config, CONFIG_KEY, info.config_entry())
    return model


__all__ = ["RouterBackboneError", "bradley_terry_loss", "new_router"]
