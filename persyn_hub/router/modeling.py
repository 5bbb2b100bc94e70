"""`PersynRouter`: a text encoder plus a linear head that gives one score per teacher.

The router is a plain transformers `PreTrainedModel` whose config holds the encoder's config as a
sub-config (`encoder_config`), so `from_pretrained` rebuilds the whole model from one `config.json` and
one `model.safetensors` with no network access and no remote code: the class is registered with
`AutoConfig`/`AutoModel` when `persyn_hub` is imported. Teacher names, the student, alpha and the label
data's repo/revision travel in the config, so a router on the Hub says what it was trained for.

Scores are Bradley-Terry logits: only differences between teachers of one prompt carry meaning.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import SequenceClassifierOutput

logger = logging.getLogger(__name__)

MODEL_TYPE = "persyn_router"


class PersynRouterConfig(PreTrainedConfig):
    """What a router is (encoder config, pooling, head size) and what it was trained for."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder_config: dict | PreTrainedConfig | None = None
    encoder_name: str | None = None
    """The encoder checkpoint the router started from (Hub id, path or `bundled:NAME`)."""
    teachers: list[str] | None = None
    """Teacher names in score order: `router_scores[i]` belongs to `teachers[i]`."""
    student: str | None = None
    alpha: float | None = None
    label_repo: str | None = None
    label_revision: str | None = None
    pooling: str = "mean"
    """`mean` (attention-masked mean of the last hidden states) or `cls` (first token)."""
    max_length: int = 256
    tie_margin: float = 1e-6
    classifier_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.teachers = list(self.teachers or [])
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"PersynRouterConfig.pooling: {self.pooling!r} is not 'mean' or 'cls'.")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"PersynRouterConfig.teachers: names repeat in {self.teachers}.")


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


class PersynRouter(PreTrainedModel):
    """Prompt text -> one Bradley-Terry score per teacher (`logits`, shape (batch, num_teachers))."""

    config_class = PersynRouterConfig
    config: PersynRouterConfig
    base_model_prefix = "router"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: PersynRouterConfig):
        super().__init__(config)
        if len(config.teachers) < 2:
            raise ValueError(f"PersynRouter needs at least 2 teachers, the config lists {config.teachers}.")
        self.encoder = _encoder_without_pooler(AutoModel.from_config(config.encoder_config))
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.score = nn.Linear(config.encoder_config.hidden_size, len(config.teachers))
        self.post_init()

    @classmethod
    def from_encoder(
        cls,
        encoder_name_or_path: str,
        teachers: list[str],
        **config_values,
    ) -> PersynRouter:
        """A new router on a pretrained encoder (its weights loaded, the head freshly initialized)."""
        from persyn_hub.bundled import resolve_model

        encoder = _encoder_without_pooler(AutoModel.from_pretrained(resolve_model(encoder_name_or_path)))
        config = PersynRouterConfig(
            encoder_config=encoder.config.to_dict(),
            encoder_name=encoder_name_or_path,
            teachers=list(teachers),
            **config_values,
        )
        router = cls(config)
        missing, unexpected = router.encoder.load_state_dict(encoder.state_dict(), strict=False)
        if missing:
            raise RuntimeError(f"Encoder {encoder_name_or_path!r} lacks weights the router needs: {missing}")
        if unexpected:
            logger.debug("Encoder weights not used by the router: %s", unexpected)
        return router

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.config.pooling == "cls" or attention_mask is None:
            return hidden[:, 0] if self.config.pooling == "cls" else hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        rewards: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """`logits`: scores per teacher; `loss`: Bradley-Terry loss when `rewards` (NaN = unusable) is given."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        logits = self.score(self.dropout(self._pool(hidden, attention_mask)))
        loss = None
        if rewards is not None:
            loss = bradley_terry_loss(logits, rewards, self.config.tie_margin)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _encoder_without_pooler(encoder: nn.Module) -> nn.Module:
    """Drop a BERT-style pooler: the router pools itself, and unused weights break DDP."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def register_auto_classes() -> None:
    """Make `AutoConfig`/`AutoModel.from_pretrained` resolve `persyn_router` (idempotent)."""
    AutoConfig.register(MODEL_TYPE, PersynRouterConfig, exist_ok=True)
    AutoModel.register(PersynRouterConfig, PersynRouter, exist_ok=True)
