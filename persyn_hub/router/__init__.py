"""The PerSyn router: prompt text -> one score per teacher, trained on the labeled pool.

Importing this package registers `PersynRouter` with `AutoConfig`/`AutoModel` (model_type
`persyn_router`), so saved routers load with `AutoModel.from_pretrained` and no remote code.

    from persyn_hub.router import load_router, route_prompts
    router, tokenizer = load_router("runs/persyn/artifacts/router")
    routed = route_prompts(prompts, router, tokenizer, budgets={"big-teacher": 0.3})
"""

from persyn_hub.router.budgets import (
    BudgetError,
    assign_with_budgets,
    calibration_table,
    greedy_truncation,
    teacher_capacities,
)
from persyn_hub.router.labels import RouterDataError, pivot_rewards, split_by_prompt
from persyn_hub.router.metrics import routing_metrics
from persyn_hub.router.modeling import (
    PersynRouter,
    PersynRouterConfig,
    bradley_terry_loss,
    register_auto_classes,
)
from persyn_hub.router.routing import route_prompts, score_texts
from persyn_hub.router.storage import RouterMismatchError, load_router, router_identity, save_router
from persyn_hub.router.training import RouterTask, RouterTrainingResult, train_router

register_auto_classes()

__all__ = [
    "BudgetError",
    "PersynRouter",
    "PersynRouterConfig",
    "RouterDataError",
    "RouterMismatchError",
    "RouterTask",
    "RouterTrainingResult",
    "assign_with_budgets",
    "bradley_terry_loss",
    "calibration_table",
    "greedy_truncation",
    "load_router",
    "pivot_rewards",
    "route_prompts",
    "router_identity",
    "routing_metrics",
    "save_router",
    "score_texts",
    "split_by_prompt",
    "teacher_capacities",
    "train_router",
]
