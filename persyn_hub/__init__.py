"""persyn_hub: personalized distillation data via router-guided multi-teacher distillation (PerSyn).

Importing the package loads neither torch nor transformers (`persyn --help` and `persyn validate` answer
at once); the router and pipeline names below are imported on first use. A saved router needs no
persyn_hub at all: it is a standard transformers sequence-classification model.
"""

from __future__ import annotations

import importlib
from typing import Any

from persyn_hub.recipe.config import PersynRecipe, RecipeError, load_recipe

__version__ = "0.1.0"

_LAZY = {
    "load_router": "persyn_hub.router.storage",
    "route_prompts": "persyn_hub.router.routing",
    "train_router": "persyn_hub.router.training",
    "run_pipeline": "persyn_hub.pipeline.run",
}
"""Public names whose modules import torch: loaded when first asked for (PEP 562)."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'persyn_hub' has no attribute {name!r}")


__all__ = ["PersynRecipe", "RecipeError", "__version__", "load_recipe", *_LAZY]
