"""Route prompts: score every prompt with the router (a batched `datasets.map`), then pick its teacher.

Without budgets each prompt takes its argmax teacher in the same pass. With budgets the choice depends on
all prompts at once, so the scores are computed first, the assignment is solved exactly
(`budgets.assign_with_budgets`), and a second map writes the `teacher` column.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import torch
from datasets import Dataset, List, Value
from transformers import PreTrainedModel

from persyn_hub.errors import require_columns
from persyn_hub.progress import advance
from persyn_hub.router.budgets import assign_with_budgets, check_budgets
from persyn_hub.router.info import router_info

logger = logging.getLogger(__name__)


def router_digest(router: PreTrainedModel) -> str:
    """Hash of the router's weights and config: a stable `datasets` fingerprint for the scoring map."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(router.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(router.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.inference_mode()
def score_texts(texts: list[str], router: PreTrainedModel, tokenizer, batch_size: int = 64) -> np.ndarray:
    """Router scores (len(texts) x teachers) for prompt texts, float32."""
    router.eval()
    info = router_info(router)
    outputs = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            truncation=True,
            max_length=info.max_length,
            padding=True,
            padding_side="right",  # a decoder router reads its last real token at its own position
            return_tensors="pt",
        ).to(router.device)
        outputs.append(router(**batch).logits.float().cpu().numpy())
        advance()  # a launch's liveness: routing a large pool is a long loop
    if not outputs:
        return np.zeros((0, len(info.teachers)), dtype=np.float32)
    return np.concatenate(outputs)


def _check_prompt_column(dataset: Dataset) -> None:
    require_columns(
        dataset, ("prompt",), reader="route_prompts", fix="It reads the prompt text; load prompts with "
        "persyn_hub.data.load_prompts.",
    )  # fmt: skip


def route_prompts(
    dataset: Dataset,
    router: PreTrainedModel,
    tokenizer,
    *,
    budgets: dict[str, float] | None = None,
    batch_size: int = 64,
) -> Dataset:
    """Add `router_scores` (list[float], router's teacher order) and `teacher` (routed teacher name).

    Reads: `prompt` (str; the router sees the prompt text only). Writes: `router_scores`, `teacher`
    (an existing column of that name is replaced). `budgets`: max share of prompts per teacher, solved
    exactly as an assignment that maximizes the total score; unset teachers are unbounded.

    Example:
        >>> router, tokenizer = load_router("runs/persyn/artifacts/router")
        >>> routed = route_prompts(prompts, router, tokenizer, budgets={"big-teacher": 0.3})
        >>> routed[0]["teacher"], routed[0]["router_scores"]
    """
    _check_prompt_column(dataset)
    teachers = router_info(router).teachers
    budgets = check_budgets(budgets, teachers)
    if batch_size <= 0:
        raise ValueError(f"batch_size: {batch_size} must be positive.")
    for column in ("teacher", "router_scores"):
        if column in dataset.column_names:
            logger.warning("route_prompts: replacing the existing %r column", column)
    base = dataset.remove_columns([c for c in ("teacher", "router_scores") if c in dataset.column_names])
    identity = router_digest(router)
    names = np.array(teachers, dtype=object)

    def score(batch: dict) -> dict:
        scores = score_texts(batch["prompt"], router, tokenizer, batch_size)
        out = {"router_scores": scores.tolist()}
        if not budgets:
            out["teacher"] = names[scores.argmax(axis=1)].tolist() if len(scores) else []
        return out

    features = base.features.copy()
    features["router_scores"] = List(Value("float32"))
    if not budgets:
        features["teacher"] = Value("string")
    scored = base.map(
        score,
        batched=True,
        batch_size=batch_size,
        features=features,
        new_fingerprint=_fingerprint(base, "route-scores", identity, batch_size, bool(budgets)),
        desc="Routing prompts",
    )
    if not budgets:
        return scored

    scores = _score_matrix(scored, len(teachers))
    assignment = assign_with_budgets(scores, teachers, budgets)
    features = scored.features.copy()
    features["teacher"] = Value("string")
    routed = scored.map(
        lambda batch, indices: {"teacher": names[assignment[indices]].tolist()},
        batched=True,
        with_indices=True,
        features=features,
        new_fingerprint=_fingerprint(scored, "route-budgets", budgets),
        desc="Assigning teachers under budgets",
    )
    counts = np.bincount(assignment, minlength=len(teachers))
    logger.info(
        "Routed %d prompts under budgets %s: %s", len(routed), budgets, dict(zip(teachers, counts.tolist()))
    )
    return routed


def _score_matrix(scored: Dataset, num_teachers: int) -> np.ndarray:
    column = scored.with_format("arrow", columns=["router_scores"])[:]["router_scores"].combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(scored), num_teachers)


def _fingerprint(dataset: Dataset, *parts) -> str:
    text = json.dumps([dataset._fingerprint, *parts], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
