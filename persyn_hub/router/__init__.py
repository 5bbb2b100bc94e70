"""The PerSyn router: prompt text -> one score per teacher, trained on the labeled pool.

A router is a standard transformers sequence-classification model (one label per teacher), so it
loads with `AutoModelForSequenceClassification` or `pipeline("text-classification")` and no persyn_hub.
Here it is trained, saved with its card, loaded and used to route a data set:

    from persyn_hub.router import load_router, route_prompts
    router, tokenizer = load_router("runs/persyn/artifacts/router")
    routed = route_prompts(prompts, router, tokenizer, budgets={"big-teacher": 0.3})
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BudgetError": "persyn_hub.router.budgets",
    "RouterBackboneError": "persyn_hub.router.modeling",
    "RouterDataError": "persyn_hub.router.labels",
    "RouterInfo": "persyn_hub.router.info",
    "RouterMismatchError": "persyn_hub.router.storage",
    "RouterTask": "persyn_hub.router.training",
    "RouterTrainingResult": "persyn_hub.router.training",
    "assign_with_budgets": "persyn_hub.router.budgets",
    "bradley_terry_loss": "persyn_hub.router.modeling",
    "calibration_table": "persyn_hub.router.budgets",
    "greedy_truncation": "persyn_hub.router.budgets",
    "load_router": "persyn_hub.router.storage",
    "new_router": "persyn_hub.router.modeling",
    "pivot_rewards": "persyn_hub.router.labels",
    "route_prompts": "persyn_hub.router.routing",
    "router_identity": "persyn_hub.router.storage",
    "router_info": "persyn_hub.router.info",
    "routing_metrics": "persyn_hub.router.metrics",
    "save_router": "persyn_hub.router.storage",
    "score_texts": "persyn_hub.router.routing",
    "split_by_prompt": "persyn_hub.router.labels",
    "teacher_capacities": "persyn_hub.router.budgets",
    "train_router": "persyn_hub.router.training",
}
"""Public name -> its module. Imported on first use (PEP 562): reading `router.info` or `router.card`
then loads no torch, Trainer or `evaluate`."""


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'persyn_hub.router' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
