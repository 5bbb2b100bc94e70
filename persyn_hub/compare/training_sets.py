"""Step 3 of the comparison: one SFT training set per strategy, on the same prompts. Each strategy ranks
the teachers per prompt and takes the first whose answer is usable, falling back to its own next choice."""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from persyn_hub.bundled import resolve_model
from persyn_hub.compare.baselines import strategy_rankings
from persyn_hub.compare.picking import answer_rows, choose_training_answers, pool_verified, trainable_in
from persyn_hub.compare.protocol import answer_stats, strategy_cost
from persyn_hub.compare.recipe import CompareRecipe
from persyn_hub.generation.backends import backend_of
from persyn_hub.pipeline.stage_names import ASSEMBLE, COMBINE, ROUTE, ROUTER
from persyn_hub.router.assignment import ROUTED
from persyn_hub.router.info import read_router_record


def student_family(pipeline: Any) -> str:
    if pipeline.student.family:
        return pipeline.student.family
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model(pipeline.student.model)).model_type


def teacher_families(pipeline: Any) -> dict[str, str | None]:
    """A teacher's `family`, else its local model's model_type; None for endpoint and reference teachers."""
    from transformers import AutoConfig

    families: dict[str, str | None] = {}
    for teacher in pipeline.teachers:
        family = teacher.family
        if family is None and teacher.model and backend_of(teacher).needs_model:
            family = AutoConfig.from_pretrained(resolve_model(teacher.model)).model_type
        families[teacher.name] = family
    return families


def routed_choices(assigned: Dataset, order: list[str]) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """(prompt_id -> routed teacher, prompt_id -> {teacher: router score}) for the ROUTED prompts."""

    columns = [
        c for c in ("prompt_id", "teacher", "selected_by", "router_scores") if c in assigned.column_names
    ]
    teachers: dict[str, str] = {}
    scores: dict[str, dict[str, float]] = {}
    for row in assigned.select_columns(columns).to_list():
        if row["selected_by"] != ROUTED or row["teacher"] is None:
            continue
        teachers[row["prompt_id"]] = row["teacher"]
        if row.get("router_scores"):
            scores[row["prompt_id"]] = dict(zip(order, map(float, row["router_scores"])))
    return teachers, scores


def strategy_orders(
    recipe: CompareRecipe, pipeline: Any, runner: Any, pool: Dataset, prompt_ids: list[str]
) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, Any]]]:
    """Every strategy's ranking of the teachers per prompt ({strategy: {prompt: teachers}}), read from the
    run's outputs (labels, router metrics, routed prompts), and {strategy: {"defined_by": ...}}."""
    # lazy: pipeline.fallback loads pyarrow, which this module otherwise does not
    from persyn_hub.pipeline.fallback import router_teachers

    teachers = pipeline.teacher_names()
    metrics = read_router_record(runner.outputs[ROUTER])["metrics"]
    routed_teachers, router_scores = routed_choices(
        runner.outputs[ROUTE], router_teachers(runner.outputs[ROUTER])
    )
    needs_family = "family_strong" in recipe.strategies
    families = teacher_families(pipeline) if needs_family else None  # each reads every teacher's config
    family = student_family(pipeline) if needs_family else None
    rankings: dict[str, dict[str, list[str]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for strategy in recipe.strategies:
        ranking, defined_by = strategy_rankings(
            strategy,
            prompt_ids=prompt_ids,
            pool=pool,
            labels=runner.outputs[COMBINE],
            teachers=teachers,
            seed=recipe.seed,
            train_ids=metrics.get("train_prompt_ids"),
            families=families,
            student_family=family,
            routed=routed_teachers,
            router_scores=router_scores,
            strong=recipe.strong_teacher,
            weak=recipe.weak_teacher,
        )
        rankings[strategy] = ranking
        info[strategy] = {"defined_by": defined_by}
    return rankings, info


def published_routed(final: Dataset) -> dict[str, dict[str, Any]]:
    """prompt_id -> the row `persyn run` published for a ROUTED prompt (teacher, messages)."""

    return {
        row["prompt_id"]: row
        for row in final.select_columns(["prompt_id", "teacher", "messages", "selected_by"]).to_list()
        if row["selected_by"] == ROUTED
    }


def training_set(
    strategy: str,
    chosen: dict[str, str],
    common: list[str],
    rows: dict[tuple[str, str], dict[str, Any]],
    published: dict[str, dict[str, Any]],
) -> Dataset:
    """The strategy's SFT set on `common`: the chosen answer as the assistant turn (PerSyn strategies
    reuse the exact row `persyn run` published when it holds the same teacher)."""
    messages = []
    for p in common:
        if strategy.startswith("persyn") and p in published and published[p]["teacher"] == chosen[p]:
            messages.append(published[p]["messages"])  # exactly the row `persyn run` published
        else:
            row = rows[(p, chosen[p])]
            messages.append(list(row["messages"]) + [{"role": "assistant", "content": row["response"]}])
    return Dataset.from_dict(
        {"prompt_id": common, "teacher": [chosen[p] for p in common], "messages": messages}
    )


def build_training_sets(
    recipe: CompareRecipe, pipeline: Any, runner: Any, pool: Dataset
) -> tuple[dict[str, Dataset], dict[str, dict[str, Any]], list[str]]:
    """({strategy: SFT data set}, {strategy: picks, cost and what was dropped}, the common prompt ids).

    Each strategy takes, per prompt, the first teacher of its own ranking whose answer is usable (no
    error, not truncated): an unusable first choice falls back to the strategy's OWN next choice
    (`baselines.strategy_rankings`) and is counted, so no strategy's failures shape the others' prompts.
    """

    teachers = pipeline.teacher_names()
    free = {t.name for t in pipeline.teachers if backend_of(t).template_answers}
    labels = runner.outputs[COMBINE]
    prompt_ids = sorted(set(pool["prompt_id"]))[: recipe.max_train_prompts]  # None: every routed prompt
    rows = answer_rows(pool)
    published = published_routed(runner.outputs[ASSEMBLE])
    rankings, info = strategy_orders(recipe, pipeline, runner, pool, prompt_ids)
    picks, counts, common, asked = choose_training_answers(
        rankings, trainable_in(rows), prompt_ids, pool_verified(pool), recipe.fallback_on_incorrect
    )
    label_rows = labels.select_columns(
        [c for c in ("teacher", "num_tokens", "num_prompt_tokens") if c in labels.column_names]
    ).to_list()
    sets: dict[str, Dataset] = {}
    for strategy, chosen in picks.items():
        info[strategy].update(
            unusable=counts[strategy]["unanswerable"],
            fallbacks=counts[strategy]["fallbacks"],
            extra_answers=counts[strategy]["extra_answers"],
            dropped_for_parity=len(chosen) - len(common),
            rows=len(common),
            teacher_counts={t: sum(1 for p in common if chosen[p] == t) for t in teachers},
            cost=strategy_cost(
                strategy,
                asked=asked[strategy],
                common=common,
                rows=rows,
                label_rows=label_rows,
                free=free,
                teachers=teachers,
                uses_labels=bool(info[strategy]["defined_by"].get("uses_labels")),
                # the runner's records: the run's stages and the comparison's own pool stages after them
                stages=runner.summary(),
            ),
            answers=answer_stats(chosen, common, rows),
        )
        sets[strategy] = training_set(strategy, chosen, common, rows, published)
    return sets, info, common


__all__ = [
    "build_training_sets",
    "published_routed",
    "routed_choices",
    "strategy_orders",
    "student_family",
    "teacher_families",
    "training_set",
]
