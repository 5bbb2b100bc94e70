"""Router backbones on the real bundled models: a MiniLM encoder (its own BERT classification head) and, as
in the paper, a causal LM (SmolLM2-135M-Instruct) whose LM head is replaced by one score per teacher, read at
the last non-padding token. Both are standard transformers sequence classifiers, so a saved router loads
with transformers alone; routers saved by earlier versions (`PersynRouter`) still load."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ranking_with_transformers_alone
from datasets import Dataset
from safetensors import safe_open
from transformers import AutoTokenizer

from persyn_hub.router import (
    RouterBackboneError,
    RouterInfo,
    bradley_terry_loss,
    load_router,
    new_router,
    route_prompts,
    router_info,
    save_router,
    score_texts,
)

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


def info_for(backbone: str) -> RouterInfo:
    return RouterInfo(
        teachers=TEACHERS, backbone=backbone, max_length=64, student="bundled:smollm2-135m-instruct"
    )


@pytest.fixture(scope="module")
def smollm2_router(smollm2_path):
    torch.manual_seed(0)
    return new_router(info_for("bundled:smollm2-135m-instruct"), tokenizer_for(smollm2_path))


@pytest.fixture(scope="module")
def minilm_router(minilm_path):
    torch.manual_seed(0)
    return new_router(info_for("bundled:minilm-l6-v2"), tokenizer_for(minilm_path))


def test_each_backbone_gets_its_own_sequence_classification_model(smollm2_router, minilm_router, tmp_path):
    assert type(smollm2_router).__name__ == "LlamaForSequenceClassification"
    assert type(minilm_router).__name__ == "BertForSequenceClassification"
    for router in (smollm2_router, minilm_router):
        assert router.config.id2label == dict(enumerate(TEACHERS)) and router.config.num_labels == 3
        assert router_info(router) == info_for(router_info(router).backbone)
    assert smollm2_router.config.pad_token_id is not None  # the last non-padding token is found by it
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))  # no sequence classifier
    with pytest.raises(RouterBackboneError, match="router.backbone"):
        new_router(info_for(str(tmp_path)), None)


def test_the_causal_lms_pretrained_weights_are_the_backbone_without_its_lm_head(smollm2_router, smollm2_path):
    assert smollm2_router.dtype == torch.float32
    names = set(smollm2_router.state_dict())
    assert {"score.weight"} <= names and not any("lm_head" in name for name in names)
    with safe_open(str(Path(smollm2_path) / "model.safetensors"), "pt") as checkpoint:
        for name in ("model.layers.7.self_attn.q_proj.weight", "model.embed_tokens.weight"):
            torch.testing.assert_close(smollm2_router.state_dict()[name], checkpoint.get_tensor(name))


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


def test_a_causal_lm_router_trains_saves_and_loads_with_transformers_alone(
    smollm2_router, smollm2_path, tmp_path
):
    router = copy.deepcopy(smollm2_router)
    tokenizer = tokenizer_for(smollm2_path)
    batch = tokenizer(PROMPTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    optimizer = torch.optim.SGD(router.parameters(), lr=3e-3)  # no optimizer state: fast on 2 CPU cores
    router.train()
    losses = []
    for _ in range(4):
        loss = bradley_terry_loss(router(**batch).logits, REWARDS, router_info(router).tie_margin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    router.eval()
    assert losses[-1] < losses[0], losses
    assert not torch.equal(router.model.norm.weight, smollm2_router.model.norm.weight)  # backbone learned

    save_router(router, tokenizer, tmp_path, {})
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.py"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (
        saved["architectures"] == ["LlamaForSequenceClassification"] and saved["persyn"]["max_length"] == 64
    )

    expected = score_texts(PROMPTS, router, tokenizer)
    alone = ranking_with_transformers_alone(tmp_path, PROMPTS)
    assert alone["type"] == "LlamaForSequenceClassification" and not alone["persyn_imported"]
    assert alone["labels"] == TEACHERS
    assert alone["ranked"] == [[TEACHERS[i] for i in np.argsort(-row, kind="stable")] for row in expected]

    loaded, loaded_tokenizer = load_router(str(tmp_path), expected_teachers=list(reversed(TEACHERS)))
    prompts = Dataset.from_dict({"prompt_id": [f"p{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS})
    routed = route_prompts(prompts, loaded, loaded_tokenizer, batch_size=len(PROMPTS))
    np.testing.assert_allclose(np.array(routed["router_scores"], dtype=np.float32), expected, atol=1e-5)
    assert routed["teacher"] == [TEACHERS[i] for i in expected.argmax(axis=1)]


def test_a_router_saved_by_an_earlier_version_still_loads_and_routes(minilm_path, tmp_path):
    from persyn_hub.router.legacy import PersynRouter

    torch.manual_seed(0)
    legacy = PersynRouter.from_encoder("bundled:minilm-l6-v2", TEACHERS, max_length=64, alpha=0.4)
    tokenizer = tokenizer_for(minilm_path)
    legacy.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "persyn_router"
    expected = score_texts(PROMPTS, legacy, tokenizer)
    loaded, loaded_tokenizer = load_router(str(tmp_path), expected_teachers=TEACHERS)
    assert isinstance(loaded, PersynRouter) and router_info(loaded).head == "mean"
    assert router_info(loaded).alpha == 0.4 and router_info(loaded).teachers == TEACHERS
    np.testing.assert_array_equal(score_texts(PROMPTS, loaded, loaded_tokenizer), expected)
