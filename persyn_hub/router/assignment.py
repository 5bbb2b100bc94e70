"""Who answers each prompt: labeled prompts keep their best labeled answer, the rest go where the router says.

Labeled prompts were answered by every teacher and scored, so their best answer (Generate-then-Select
by the combined reward) is already paid for; routing them again would spend a generation and, for the
router's own training prompts, use an in-sample guess. Every other prompt is routed (argmax, or an
exact assignment under `routing.budgets`) and only its teacher generates.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, Value, concatenate_datasets

from persyn_hub.recipe.config import PersynRecipe

LABELED = "labeled_best"
"""`selected_by` of a labeled prompt: its best labeled answer (Generate-then-Select on the seed set)."""
ROUTED = "router"
"""`selected_by` of every other prompt: the router's choice."""


def assign_teachers(
    prompts: Dataset,
    labeled_ids: set[str],
    best: dict[str, str],
    router: Any,
    tokenizer: Any,
    recipe: PersynRecipe,
) -> Dataset:
    """`prompts` + `router_scores`, `teacher` (None: no teacher answered a labeled prompt), `selected_by`,
    `labeled`, in the prompts' order.

    `best` maps labeled prompt ids to their best teacher (`selection.select_best`). Budgets apply to the
    routed prompts only: the labeled prompts' answers already exist.
    """
    # lazy: router.routing loads torch and transformers, which this module otherwise does not
    from persyn_hub.router.routing import route_prompts

    flags = [p in labeled_ids for p in prompts["prompt_id"]]
    labeled = prompts.select([i for i, f in enumerate(flags) if f])
    unlabeled = prompts.select([i for i, f in enumerate(flags) if not f])
    batch = recipe.routing.batch_size
    routed = route_prompts(
        unlabeled, router, tokenizer, budgets=recipe.routing.budgets or None, batch_size=batch
    )
    scored = route_prompts(labeled, router, tokenizer, batch_size=batch)  # scores kept for the record
    kept = scored.map(
        lambda rows: {"teacher": [best.get(p) for p in rows["prompt_id"]]},
        batched=True,
        features=scored.features,
        desc="Keeping the best labeled answers",
    )
    parts = []
    for part, how in ((kept, LABELED), (routed, ROUTED)):
        part = part.add_column("selected_by", [how] * len(part)).cast_column("selected_by", Value("string"))
        parts.append(part.add_column("labeled", [how == LABELED] * len(part)))
    assigned = concatenate_datasets(parts)
    order = {p: i for i, p in enumerate(prompts["prompt_id"])}
    ids = assigned["prompt_id"]
    return assigned.select(sorted(range(len(assigned)), key=lambda i: order[ids[i]])).flatten_indices()
