"""Router backbones on the real bundled models: a MiniLM encoder (mean pooling) and, as in the paper, a
causal LM (SmolLM2-135M-Instruct) whose LM head is replaced by the teacher head (last-token pooling)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoTokenizer

from persyn_hub.router import (
    PersynRouter,
    PersynRouterConfig,
    bradley_terry_loss,
    load_router,
    route_prompts,
    save_router,
    score_texts,
)
from persyn_hub.router.modeling import is_causal_lm_config

TEACHERS = ["small", "medium", "large"]
PROMPTS = [
    "What is 7 + 5?",
    "A farmer has 17 sheep and all but 9 run away. How many sheep does the farmer have left now?",
    "Hi",
    "Write a haiku about rain.",
]
REWARDS = torch.tensor(
    [[1.0, 0.0, 0.5], [0.0, 1.0, float("nan")], [0.2, 0.9, 0.1], [0.7, 0.3, 0.3]], dtype=torch.float32
)


def tokenizer_for(path: str, padding_side: str | None = None):
    """The tokenizer as `train_router` sets it up: a decoder without a pad token pads with EOS."""
    kwargs = {"padding_side": padding_side} if padding_side else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def smollm2_router(smollm2_path) -> PersynRouter:
    torch.manual_seed(0)
    return PersynRouter.from_encoder("bundled:smollm2-135m-instruct", TEACHERS, max_length=64)


@pytest.fixture(scope="module")
def minilm_router(minilm_path) -> PersynRouter:
    torch.manual_seed(0)
    return PersynRouter.from_encoder("bundled:minilm-l6-v2", TEACHERS, max_length=64)


def test_the_pooling_default_follows_the_backbone(smollm2_router, minilm_router):
    assert smollm2_router.config.pooling == "last" and smollm2_router.config.is_causal_backbone
    assert minilm_router.config.pooling == "mean" and not minilm_router.config.is_causal_backbone
    for model_type, causal in [("gpt2", True), ("qwen2", True), ("bert", False), ("roberta", False)]:
        assert is_causal_lm_config(AutoConfig.for_model(model_type)) is causal, model_type
    explicit = PersynRouterConfig(
        encoder_config=smollm2_router.config.encoder_config.to_dict(), teachers=TEACHERS, pooling="mean"
    )
    assert explicit.pooling == "mean"
    with pytest.raises(ValueError, match="pooling"):
        PersynRouterConfig(teachers=TEACHERS, pooling="max")


def test_the_causal_lms_pretrained_weights_are_the_backbone_without_its_lm_head(smollm2_router, smollm2_path):
    assert type(smollm2_router.encoder).__name__ == "LlamaModel"
    assert smollm2_router.dtype == torch.float32
    names = set(smollm2_router.state_dict())
    assert {"score.weight", "score.bias"} <= names and not any("lm_head" in name for name in names)
    encoder = smollm2_router.encoder
    with safe_open(str(Path(smollm2_path) / "model.safetensors"), "pt") as checkpoint:
        torch.testing.assert_close(
            encoder.layers[7].self_attn.q_proj.weight,
            checkpoint.get_tensor("model.layers.7.self_attn.q_proj.weight"),
        )
        torch.testing.assert_close(
            encoder.embed_tokens.weight, checkpoint.get_tensor("model.embed_tokens.weight")
        )


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("backbone", ["smollm2", "minilm"])
def test_a_batch_scores_like_each_prompt_alone_whatever_the_padding_side(
    backbone, padding_side, request, smollm2_path, minilm_path
):
    router = request.getfixturevalue(f"{backbone}_router")
    tokenizer = tokenizer_for(smollm2_path if backbone == "smollm2" else minilm_path, padding_side)
    alone = np.concatenate([score_texts([prompt], router, tokenizer) for prompt in PROMPTS])
    batched = score_texts(PROMPTS, router, tokenizer, batch_size=len(PROMPTS))
    assert tokenizer(PROMPTS, padding=True, return_tensors="pt")["attention_mask"].float().mean() < 0.9
    np.testing.assert_allclose(batched, alone, atol=1e-4, rtol=0)


def test_a_causal_lm_router_trains_saves_reloads_and_routes(smollm2_router, smollm2_path, tmp_path):
    router = copy.deepcopy(smollm2_router)
    tokenizer = tokenizer_for(smollm2_path)
    batch = tokenizer(PROMPTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    optimizer = torch.optim.SGD(router.parameters(), lr=3e-3)  # no optimizer state: fast on 2 CPU cores
    router.train()
    losses = []
    for _ in range(3):
        loss = bradley_terry_loss(router(**batch).logits, REWARDS, router.config.tie_margin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    router.eval()
    with torch.no_grad():
        losses.append(router(**batch, rewards=REWARDS).loss.item())
    assert losses[-1] < losses[0], losses
    assert not torch.equal(router.encoder.norm.weight, smollm2_router.encoder.norm.weight)  # backbone learned

    save_router(router, tokenizer, tmp_path, {})
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.py"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["pooling"] == "last" and saved["encoder_config"]["model_type"] == "llama"

    expected = score_texts(PROMPTS, router, tokenizer)
    auto = AutoModel.from_pretrained(tmp_path)  # persyn_hub is imported: no remote code
    assert isinstance(auto, PersynRouter) and auto.config.pooling == "last"
    np.testing.assert_array_equal(score_texts(PROMPTS, auto, tokenizer), expected)

    loaded, loaded_tokenizer = load_router(str(tmp_path), expected_teachers=list(reversed(TEACHERS)))
    prompts = Dataset.from_dict({"prompt_id": [f"p{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS})
    routed = route_prompts(prompts, loaded, loaded_tokenizer, batch_size=len(PROMPTS))  # same batch
    scores = np.array(routed["router_scores"], dtype=np.float32)
    np.testing.assert_array_equal(scores, expected)
    assert routed["teacher"] == [TEACHERS[i] for i in expected.argmax(axis=1)]


def test_a_saved_minilm_router_with_mean_pooling_still_loads(minilm_router, minilm_path, tmp_path):
    tokenizer = tokenizer_for(minilm_path)
    save_router(minilm_router, tokenizer, tmp_path, {})
    expected = score_texts(PROMPTS, minilm_router, tokenizer)
    legacy = {  # config.json as routers were saved before causal-LM backbones existed
        "alpha": None,
        "architectures": ["PersynRouter"],
        "classifier_dropout": 0.0,
        "dtype": "float32",
        "encoder_config": json.loads((Path(minilm_path) / "config.json").read_text()),
        "encoder_name": "bundled:minilm-l6-v2",
        "label_repo": None,
        "label_revision": None,
        "max_length": 64,
        "model_type": "persyn_router",
        "pooling": "mean",
        "student": None,
        "teachers": TEACHERS,
        "tie_margin": 1e-06,
        "transformers_version": "5.24.0",
    }
    for config in (legacy, {k: v for k, v in legacy.items() if k != "pooling"}):
        (tmp_path / "config.json").write_text(json.dumps(config))
        loaded, loaded_tokenizer = load_router(str(tmp_path))
        assert loaded.config.pooling == "mean" and loaded.config.encoder_config.model_type == "bert"
        np.testing.assert_array_equal(score_texts(PROMPTS, loaded, loaded_tokenizer), expected)
