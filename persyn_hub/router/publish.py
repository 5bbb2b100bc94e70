"""Save, load and publish a router: safetensors weights, the encoder's tokenizer and a model card.

A saved router folder is a complete Hub model repo: `config.json` (with the teachers, the student and the
label data's revision), `model.safetensors`, tokenizer files, `router_metrics.json` and `README.md`
rendered from `model_cards/router_card.md`. `push_router` uploads that folder in one commit.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download
from transformers import AutoModel, AutoTokenizer

from persyn_hub.errors import PersynError
from persyn_hub.router.modeling import PersynRouter, PersynRouterConfig, register_auto_classes
from persyn_hub.stage_cache import file_digest

logger = logging.getLogger(__name__)

METRICS_FILE = "router_metrics.json"
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


class RouterMismatchError(PersynError, ValueError):
    """A router was trained for another teacher pool than the recipe's."""


def card_template_path() -> Path:
    """`$PERSYN_ROUTER_CARD` if set, else the packaged `model_cards/router_card.md` (one lookup for every card)."""
    if os.environ.get("PERSYN_ROUTER_CARD"):
        return Path(os.environ["PERSYN_ROUTER_CARD"])
    from persyn_hub.cards import template_path

    return template_path("router_card.md")


def render_router_card(
    config,
    metrics: dict[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    settings: dict[str, Any] | None = None,
    seed: int | None = None,
) -> ModelCard:
    """The router's model card: purpose, teachers, student, alpha, training data, metrics, calibration, usage."""
    import persyn_hub

    metrics = dict(metrics or {})
    calibration = metrics.get("calibration") or []
    encoder = config.encoder_name or getattr(config.encoder_config, "_name_or_path", "") or "unknown"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["persyn", "router", "distillation", "multi-teacher"],
        datasets=[config.label_repo] if config.label_repo else None,
        base_model=encoder if _is_hub_id(encoder) else None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        teachers=list(config.teachers),
        student=config.student or "unknown",
        alpha=config.alpha,
        encoder_name=encoder,
        pooling=config.pooling,
        max_length=config.max_length,
        tie_margin=config.tie_margin,
        label_repo=config.label_repo,
        label_revision=config.label_revision,
        metrics=metrics if all(key in metrics for key in CARD_METRICS) else None,
        calibration=calibration,
        calibration_prompts=sum((metrics.get("split_sizes") or {}).values())
        or metrics.get("num_train_prompts", 0) + metrics.get("num_eval_prompts", 0),
        interval=lambda key: _interval_text(metrics, key),
        settings=settings,
        seed=seed,
        repo_id=repo_id or "path/or/hub-id/of/this/router",
        persyn_version=persyn_hub.__version__,
    )


def _interval_text(metrics: dict[str, Any], key: str) -> str:
    """` [low, high]` for a metric with a bootstrap interval, else nothing."""
    low_high = (metrics.get("intervals") or {}).get(key)
    return f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""


def _is_hub_id(name: str) -> bool:
    return (
        bool(name) and not name.startswith("bundled:") and name.count("/") == 1 and not os.path.exists(name)
    )


def save_router(
    router: PersynRouter,
    tokenizer,
    directory: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    settings: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Path:
    """Write weights (safetensors), config, tokenizer, `router_metrics.json` and the card as README.md."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    router.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / METRICS_FILE).write_text(
        json.dumps({"metrics": metrics or {}, "settings": settings, "seed": seed}, indent=2, default=str)
    )
    card = render_router_card(
        router.config, metrics, repo_id=repo_id or str(directory), settings=settings, seed=seed
    )
    card.save(directory / "README.md")
    return directory


def load_router(
    name_or_path: str,
    expected_teachers: list[str] | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | None = None,
) -> tuple[PersynRouter, Any]:
    """Load a router (local folder or Hub repo) and its tokenizer, in eval mode; no remote code.

    `expected_teachers`: the recipe's teacher names; a router trained for another pool stops here with
    both lists named (order may differ: `router_scores` follow the router's own order).
    """
    register_auto_classes()
    kwargs = {"revision": revision, "token": token}
    model = AutoModel.from_pretrained(name_or_path, use_safetensors=True, **kwargs)  # never a pickle
    if not isinstance(model, PersynRouter):
        raise RouterMismatchError(
            f"{name_or_path!r} is a {type(model).__name__} (model_type {model.config.model_type!r}), not a "
            "PerSyn router (model_type 'persyn_router'); train one with `persyn run` or train_router()."
        )
    teachers = list(model.config.teachers)
    if expected_teachers is not None and sorted(teachers) != sorted(expected_teachers):
        raise RouterMismatchError(
            f"The router {name_or_path!r} scores teachers {teachers}, but the recipe's teachers are "
            f"{list(expected_teachers)}. Missing from the router: "
            f"{sorted(set(expected_teachers) - set(teachers))}; not in the recipe: "
            f"{sorted(set(teachers) - set(expected_teachers))}. Train a router for this pool or fix "
            "the teacher names."
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def router_identity(name_or_path: str, *, revision: str | None = None) -> str:
    """What the router *is*, for cache keys: the sha256 of a local folder's weights and config, or the
    Hub commit a repo id resolves to. A router retrained in place then routes again; the path alone
    would reuse the old routing."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) + [path / "config.json"]
        return ",".join(f"{file.name}:{file_digest(file)}" for file in files)
    config = hf_hub_download(name_or_path, "config.json", revision=revision)  # cached, works offline
    return f"{name_or_path}@{Path(config).parent.name}"  # .../snapshots/<commit sha>/config.json


def push_router(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload PerSyn router",
) -> str:
    """Upload a `save_router` folder as a model repo (card re-rendered with `repo_id`); returns the commit URL.

    `router.push_to_hub(repo_id)` works as for any transformers model; this also uploads the tokenizer,
    the metrics and the card in the same commit.
    """
    directory = Path(directory)
    router_config = PersynRouterConfig.from_pretrained(directory)
    saved = json.loads((directory / METRICS_FILE).read_text()) if (directory / METRICS_FILE).is_file() else {}
    card = render_router_card(
        router_config,
        saved.get("metrics"),
        repo_id=repo_id,
        settings=saved.get("settings"),
        seed=saved.get("seed"),
    )
    card.save(directory / "README.md")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(directory),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=["checkpoints/*", "*.lock"],
    )
    return str(getattr(commit, "commit_url", commit))
