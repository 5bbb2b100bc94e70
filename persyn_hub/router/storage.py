"""Save and load a router: safetensors weights, the backbone's tokenizer, its metrics and its model card.

A saved router folder is a complete Hub model repo: `config.json` (with the teachers, the student and the
label data's revision), `model.safetensors`, tokenizer files, `router_metrics.json` and `README.md`
(rendered by `persyn_hub.router.card.render_router_card`). Publishing it is `persyn_hub.publish.hub.publish_router`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from persyn_hub.errors import PersynError
from persyn_hub.folders import file_digest
from persyn_hub.router.card import render_router_card
from persyn_hub.router.info import LEGACY_MODEL_TYPE, METRICS_FILE, router_info

logger = logging.getLogger(__name__)


class RouterMismatchError(PersynError, ValueError):
    """A router was trained for another teacher pool than the recipe's."""


def save_router(
    router: PreTrainedModel,
    tokenizer,
    directory: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    settings: dict[str, Any] | None = None,
    seed: int | None = None,
) -> Path:
    """Write weights (safetensors), config, tokenizer, `router_metrics.json` and the card as README.md.

    The folder loads with transformers alone (`AutoModelForSequenceClassification`, `pipeline`); the
    tokenizer is saved padding on the right, where a decoder router reads its last token."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    router.save_pretrained(directory, safe_serialization=True)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(directory)
    (directory / METRICS_FILE).write_text(
        json.dumps({"metrics": metrics or {}, "settings": settings, "seed": seed}, indent=2, default=str)
    )
    # The card names the Hub repo when there is one; a local folder's path would make the saved files (and
    # the cache keys chained on them) depend on where the run happened.
    card = render_router_card(router_info(router), metrics, repo_id=repo_id, settings=settings, seed=seed)
    card.save(directory / "README.md")
    return directory


def load_router(
    name_or_path: str,
    expected_teachers: list[str] | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    device: str | None = None,
) -> tuple[PreTrainedModel, Any]:
    """Load a router (local folder or Hub repo) and its tokenizer, in eval mode; no remote code.

    A router is a sequence-classification model with a `persyn` config entry; routers saved before that
    format (model_type `persyn_router`) load through `router.legacy`. `expected_teachers`: the recipe's
    teacher names; a router trained for another pool stops here with both lists named (order may
    differ: `router_scores` follow the router's own order).
    """
    kwargs = {"revision": revision, "token": token}
    if _model_type(name_or_path, **kwargs) == LEGACY_MODEL_TYPE:
        from persyn_hub.router.legacy import register_auto_classes  # old routers only: its config API

        register_auto_classes()
        model = AutoModel.from_pretrained(name_or_path, use_safetensors=True, **kwargs)  # never a pickle
    else:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
        _info_or_mismatch(config, name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, config=config, use_safetensors=True, **kwargs
        )
    teachers = _info_or_mismatch(model.config, name_or_path).teachers
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


def _model_type(name_or_path: str, **kwargs) -> str | None:
    """config.json's model_type, read as JSON: a legacy router's type is unknown to transformers."""
    path = Path(name_or_path)
    config = (
        path / "config.json"
        if path.is_dir()
        else Path(hf_hub_download(name_or_path, "config.json", **kwargs))
    )
    return json.loads(config.read_text()).get("model_type")


def _info_or_mismatch(config, name_or_path: str):
    try:
        return router_info(config)
    except ValueError as error:
        raise RouterMismatchError(f"{name_or_path!r}: {error}") from None


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
