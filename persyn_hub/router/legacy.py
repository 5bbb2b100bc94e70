"""Routers saved before 0.2: `PersynRouter`, a backbone plus a linear head with persyn_hub's own pooling.

They loaded only with persyn_hub installed (model_type `persyn_router`, registered on import). New routers
are standard transformers sequence-classification models (`router.modeling`); this module stays so that
`load_router` and `persyn route` still read old routers, and `benchmarks/bench_router_head.py` can
compare the two heads on the same labels. `register_auto_classes` runs only when such a router is loaded.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from persyn_hub.bundled import resolve_model
from persyn_hub.router.info import LEGACY_MODEL_TYPE
from persyn_hub.router.modeling import bradley_terry_loss

logger = logging.getLogger(__name__)

MODEL_TYPE = LEGACY_MODEL_TYPE
POOLINGS = ("mean", "cls", "last")


def is_causal_lm_config(config: PreTrainedConfig | dict | None) -> bool:
    """Whether a backbone config is a decoder-only LM (Llama, Qwen2, GPT-2, ...) rather than an encoder.

    Decides the default pooling: a causal LM's tokens only see what precedes them, so only the last
    token has read the whole prompt. BERT-likes sit in both auto mappings (`BertLMHeadModel`), hence
    the masked-LM check.
    """
    if config is None:
        return False
    values = config if isinstance(config, dict) else config.to_dict()
    if values.get("is_encoder_decoder"):
        return False
    if values.get("is_decoder"):
        return True
    architectures = values.get("architectures") or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return True
    if any(name.endswith(("ForMaskedLM", "ForPreTraining")) for name in architectures):
        return False
    model_type = values.get("model_type")
    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


class PersynRouterConfig(PreTrainedConfig):
    """What a router is (backbone config, pooling, head size) and what it was trained for."""

    model_type = MODEL_TYPE
    # A plain `sub_configs` entry, built in `__post_init__`, rather than transformers' `SubConfigSpec`
    # (added after 5.19): the same config loads on every transformers setup.cfg accepts.
    sub_configs = {"encoder_config": AutoConfig}

    encoder_config: dict | PreTrainedConfig | None = None
    encoder_name: str | None = None
    """The backbone checkpoint the router started from (Hub id, path or `bundled:NAME`), encoder or causal LM."""
    teachers: list[str] | None = None
    """Teacher names in score order: `router_scores[i]` belongs to `teachers[i]`."""
    student: str | None = None
    alpha: float | None = None
    label_repo: str | None = None
    label_revision: str | None = None
    pooling: str | None = None
    """`mean` (attention-masked mean of the last hidden states), `cls` (first non-padding token) or
    `last` (last non-padding token, whatever the padding side). Unset: `last` for a causal-LM backbone
    (the paper's router), `mean` for an encoder; the resolved value is saved, so a saved router keeps it."""
    max_length: int = 256
    tie_margin: float = 1e-6
    classifier_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        if not isinstance(self.encoder_config, PreTrainedConfig):  # a dict from config.json, or unset
            values = dict(self.encoder_config or {})
            self.encoder_config = AutoConfig.for_model(values.pop("model_type", "bert"), **values)
        super().__post_init__(**kwargs)
        self.teachers = list(self.teachers or [])
        if self.pooling is None:
            self.pooling = "last" if self.is_causal_backbone else "mean"
        if self.pooling not in POOLINGS:
            raise ValueError(f"PersynRouterConfig.pooling: {self.pooling!r} is not one of {POOLINGS}.")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"PersynRouterConfig.teachers: names repeat in {self.teachers}.")

    @property
    def is_causal_backbone(self) -> bool:
        """True for a decoder-only LM backbone (see `is_causal_lm_config`)."""
        return is_causal_lm_config(self.encoder_config)


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
        # The head is built in the default dtype; the backbone must match it whatever dtype its checkpoint
        # had (a bf16 Qwen config would otherwise give a bf16 backbone under a float32 head).
        encoder = AutoModel.from_config(config.encoder_config, dtype=torch.get_default_dtype())
        self.encoder = _encoder_without_pooler(encoder)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.score = nn.Linear(config.encoder_config.hidden_size, len(config.teachers))
        accepted = inspect.signature(self.encoder.forward).parameters
        self._encoder_takes = {
            name for name in ("token_type_ids", "position_ids", "use_cache") if name in accepted
        }
        self._causal_backbone = config.is_causal_backbone
        self.post_init()

    @classmethod
    def from_encoder(
        cls,
        encoder_name_or_path: str,
        teachers: list[str],
        **config_values,
    ) -> PersynRouter:
        """A new router on a pretrained backbone (its weights loaded, the head freshly initialized).

        The backbone is an encoder (MiniLM, BERT, ...) or a causal LM (SmolLM2, Qwen2.5, ...): `AutoModel`
        gives a causal LM's base model, so its LM head (tied or not) is simply not part of the router.
        """
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

    from_backbone = from_encoder
    """Alias of `from_encoder` that reads better for a causal-LM backbone."""

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """One vector per prompt; `cls`/`last` read the first/last position whose mask is 1, so right
        padding, left padding and no padding give the same vector."""
        pooling = self.config.pooling
        if pooling == "mean":
            if attention_mask is None:
                return hidden.mean(dim=1)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if attention_mask is None:
            return hidden[:, -1] if pooling == "last" else hidden[:, 0]
        real = attention_mask.to(torch.long)
        if pooling == "last":
            index = (real * torch.arange(hidden.shape[1], device=hidden.device)).argmax(dim=1)
        else:
            index = real.argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]

    def _backbone_inputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
    ) -> dict[str, torch.Tensor | bool | None]:
        """Keyword arguments for the backbone, so that padding (side and amount) never changes a score.

        A causal LM numbers positions 0, 1, ... from the first column, so under left padding a prompt
        would sit at other positions than alone: its positions come from the attention mask (as in
        `generate`). An encoder's position ids are its own business (RoBERTa offsets them), so a
        left-padded encoder batch is shifted to right padding instead. No KV cache: one read per prompt.
        """
        if attention_mask is not None and not self._causal_backbone:
            input_ids, attention_mask, token_type_ids = _left_aligned(
                input_ids, attention_mask, token_type_ids
            )
        inputs: dict[str, torch.Tensor | bool | None] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        if token_type_ids is not None and "token_type_ids" in self._encoder_takes:
            inputs["token_type_ids"] = token_type_ids
        if self._causal_backbone:
            if attention_mask is not None and "position_ids" in self._encoder_takes:
                inputs["position_ids"] = (attention_mask.to(torch.long).cumsum(dim=1) - 1).clamp(min=0)
            if "use_cache" in self._encoder_takes:
                inputs["use_cache"] = False
        return inputs

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        rewards: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """`logits`: scores per teacher; `loss`: Bradley-Terry loss when `rewards` (NaN = unusable) is given."""
        inputs = self._backbone_inputs(input_ids, attention_mask, token_type_ids)
        hidden = self.encoder(**inputs).last_hidden_state
        logits = self.score(self.dropout(self._pool(hidden, inputs["attention_mask"])))
        loss = None
        if rewards is not None:
            loss = bradley_terry_loss(logits, rewards, self.config.tie_margin)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _left_aligned(
    input_ids: torch.Tensor | None, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """The same three tensors with each row rotated so that its leading padding moves to the end.

    Right-padded batches (the encoder tokenizers' default) come back unchanged, as the same objects.
    """
    leading = (attention_mask.cumsum(dim=1) == 0).sum(dim=1)
    if not bool(leading.any()):
        return input_ids, attention_mask, token_type_ids
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    index = (columns + leading[:, None]) % attention_mask.shape[1]
    rotated = [t.gather(1, index) if t is not None else None for t in (input_ids, token_type_ids)]
    return rotated[0], attention_mask.gather(1, index), rotated[1]


def _encoder_without_pooler(encoder: nn.Module) -> nn.Module:
    """Drop a BERT-style pooler: the router pools itself, and unused weights break DDP."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def register_auto_classes() -> None:
    """Make `AutoConfig`/`AutoModel.from_pretrained` resolve `persyn_router` (idempotent)."""
    AutoConfig.register(MODEL_TYPE, PersynRouterConfig, exist_ok=True)
    AutoModel.register(PersynRouterConfig, PersynRouter, exist_ok=True)
