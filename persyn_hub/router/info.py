"""What a router was trained for and what it measured, read from its folder without loading a model (no torch).

A router is a standard transformers sequence-classification model: one label per teacher (`id2label`
holds the teacher names, in score order) and a `persyn` entry in its config with the student, alpha,
backbone and the label data it was trained on. Routers saved before this format (model_type
`persyn_router`) kept the same facts as top-level config fields; `RouterInfo.of` reads both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_KEY = "persyn"
"""The config entry that marks a PerSyn router and holds what it was trained for."""

LEGACY_MODEL_TYPE = "persyn_router"

METRICS_FILE = "router_metrics.json"


@dataclass(frozen=True)
class RouterInfo:
    teachers: list[str]
    """Teacher names in score order: `router_scores[i]` belongs to `teachers[i]`."""
    student: str | None = None
    alpha: float | None = None
    backbone: str | None = None
    """The checkpoint the router started from (Hub id, path or `bundled:NAME`), encoder or causal LM."""
    label_repo: str | None = None
    label_revision: str | None = None
    max_length: int = 256
    tie_margin: float = 1e-6
    head: str = "sequence-classification"
    """How a prompt becomes one vector: the backbone's own sequence-classification head, or (legacy
    routers) `mean`/`cls`/`last` pooling of PersynRouter."""

    @classmethod
    def of(cls, config: Any) -> RouterInfo:
        """From a config object or its dict; raises `ValueError` for a model that is no PerSyn router."""
        values = config if isinstance(config, dict) else config.to_dict()
        if values.get("model_type") == LEGACY_MODEL_TYPE:
            encoder = values.get("encoder_config") or {}
            fields = {f.name for f in dataclasses.fields(cls)} - {"backbone", "head"}
            return cls(
                **{k: values[k] for k in fields if values.get(k) is not None},
                backbone=values.get("encoder_name") or encoder.get("_name_or_path"),
                head=values.get("pooling") or "mean",
            )
        entry = values.get(CONFIG_KEY)
        if not isinstance(entry, dict):
            raise ValueError(
                f"a {values.get('model_type')!r} model whose config has no {CONFIG_KEY!r} entry is not a PerSyn "
                "router; train one with `persyn run` or train_router()."
            )
        labels = values.get("id2label") or {}
        teachers = [labels[key] for key in sorted(labels, key=int)]
        return cls(teachers=teachers, **entry)

    def config_entry(self) -> dict[str, Any]:
        """The `persyn` entry of a router's config (teachers live in `id2label`)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "teachers"}


def router_info(model_or_config: Any) -> RouterInfo:
    """`RouterInfo` of a loaded router (or its config, or the config's dict)."""
    return RouterInfo.of(getattr(model_or_config, "config", model_or_config))


def read_router_record(directory: str | os.PathLike) -> dict[str, Any]:
    """`router_metrics.json` of a saved router: {"metrics", "settings", "seed"} ({} when there is none).
    Routers saved before the file held settings and seed kept the metrics alone: read as such."""
    path = Path(directory) / METRICS_FILE
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    if isinstance(saved, dict) and "metrics" in saved:
        return saved
    return {"metrics": saved, "settings": None, "seed": None}


__all__ = [
    "CONFIG_KEY",
    "LEGACY_MODEL_TYPE",
    "METRICS_FILE",
    "RouterInfo",
    "read_router_record",
    "router_info",
]
