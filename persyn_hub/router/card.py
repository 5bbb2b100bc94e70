"""The router's model card: what it routes between, for which student, how well on unseen prompts.

Rendered from `persyn_hub/model_cards/router_card.md` when the router is saved (`router.storage.save_router`),
so a router folder or repo always carries the card its metrics describe.
"""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

import persyn_hub
from persyn_hub.model_cards import hub_endpoint, template_path
from persyn_hub.router.info import RouterInfo

CARD_METRICS = (
    "top1_agreement",
    "reward_recovered",
    "reward_recovered_best_single",
    "reward_recovered_random",
    "teacher_distribution",
    "num_train_prompts",
    "num_eval_prompts",
    "best_single_teacher",
    "mean_reward_routed",
    "mean_reward_best_single",
    "mean_reward_random",
    "mean_reward_oracle",
)
"""Metrics the card's evaluation table needs; a partial dict renders as "no held-out metrics"."""


def render_router_card(
    info: RouterInfo,
    metrics: dict[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    settings: dict[str, Any] | None = None,
    seed: int | None = None,
    stages: dict[str, Any] | None = None,
) -> ModelCard:
    """The router's model card: purpose, teachers, student, alpha, training data, metrics, calibration, usage.

    `stages`: the run's `summary["hub"]["stages"]` (published stages): the card links the exact commits of
    the stages the router was trained on (generation, learnability, quality, combine)."""

    metrics = dict(metrics or {})
    calibration = metrics.get("calibration") or []
    encoder = info.backbone or "unknown"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["persyn", "router", "distillation", "multi-teacher"],
        datasets=[info.label_repo] if info.label_repo else None,
        base_model=encoder if _is_hub_id(encoder) else None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("router_card.md")),
        teachers=list(info.teachers),
        student=info.student or "unknown",
        alpha=info.alpha,
        encoder_name=encoder,
        head=info.head,
        max_length=info.max_length,
        tie_margin=info.tie_margin,
        label_repo=info.label_repo,
        label_revision=info.label_revision,
        metrics=metrics if all(key in metrics for key in CARD_METRICS) else None,
        calibration=calibration,
        calibration_prompts=sum((metrics.get("split_sizes") or {}).values())
        or metrics.get("num_train_prompts", 0) + metrics.get("num_eval_prompts", 0),
        interval=lambda key: _interval_text(metrics, key),
        settings=settings,
        seed=seed,
        repo_id=repo_id or "path/or/hub-id/of/this/router",
        persyn_version=persyn_hub.__version__,
        training_stages=_training_stage_links(stages),
    )


def _training_stage_links(stages: dict[str, Any] | None) -> list[dict[str, str]]:
    """The published stages a router was trained on, each with its key and the commit that published it."""
    if not stages or not stages.get("repo_id"):
        return []
    repo, url = stages["repo_id"], hub_endpoint()
    links = []
    for name, info in (stages.get("stages") or {}).items():
        if not (name.startswith("label-generate/") or name in ("learnability", "quality", "combine")):
            continue
        config, commit = name.replace("/", "--"), info.get("commit") or ""
        revision = commit or stages.get("revision") or "main"
        links.append(
            {
                "name": name,
                "key": info.get("key", ""),
                "commit": commit,
                "url": f"{url}/datasets/{repo}/tree/{revision}/{config}/{info.get('key', '')}",
            }
        )
    return links


def _interval_text(metrics: dict[str, Any], key: str) -> str:
    """` [low, high]` for a metric with a bootstrap interval, else nothing."""
    low_high = (metrics.get("intervals") or {}).get(key)
    return f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""


def _is_hub_id(name: str) -> bool:
    return (
        bool(name) and not name.startswith("bundled:") and name.count("/") == 1 and not os.path.exists(name)
    )


__all__ = ["CARD_METRICS", "render_router_card"]
