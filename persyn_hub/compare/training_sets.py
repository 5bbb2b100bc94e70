"""Step 3 of the comparison: one SFT training set per strategy, on the same prompts. Each strategy ranks
the teachers per prompt and takes the first whose answer is usable, falling back to its own next choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset

from persyn_hub.compare.recipe import CompareRecipe
from persyn_hub.scoring.answers import is_trainable_answer


def _rows(pool: Dataset) -> dict[tuple[str, str], dict[str, Any]]:
    columns = [
        "prompt_id",
        "teacher",
        "messages",
        "response",
        "error",
        "finish_reason",
        "num_tokens",
        "num_prompt_tokens",
        "quality",
        "learnability",
        "num_response_tokens",
    ]
    table = pool.select_columns([c for c in columns if c in pool.column_names]).to_list()
    return {(row["prompt_id"], row["teacher"]): row for row in table}


def _trainable(row: dict[str, Any] | None) -> bool:
    return bool(row) and is_trainable_answer(row["response"], row["error"], row.get("finish_reason"))


def student_family(pipeline: Any) -> str:
    if pipeline.student.family:
        return pipeline.student.family
    from transformers import AutoConfig

    from persyn_hub.bundled import resolve_model

    return AutoConfig.from_pretrained(resolve_model(pipeline.student.model)).model_type


def teacher_families(pipeline: Any) -> dict[str, str | None]:
    """A teacher's `family`, else its local model's model_type; None for endpoint and reference teachers."""
    from transformers import AutoConfig

    from persyn_hub.bundled import resolve_model
    from persyn_hub.generation import backend_for

    families: dict[str, str | None] = {}
    for teacher in pipeline.teachers:
        family = teacher.family
        if family is None and teacher.model and backend_for(teacher) in ("transformers", "vllm"):
            family = AutoConfig.from_pretrained(resolve_model(teacher.model)).model_type
        families[teacher.name] = family
    return families


def router_teachers(router_dir: Any, fallback: list[str]) -> list[str]:
    """The router's own teacher order (`router_scores` follow it): its saved config's `teachers`."""
    path = Path(str(router_dir)) / "config.json"
    if path.is_file():
        teachers = json.loads(path.read_text(encoding="utf-8")).get("teachers")
        if teachers:
            return list(teachers)
    return list(fallback)


def routed_choices(assigned: Dataset, order: list[str]) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """(prompt_id -> routed teacher, prompt_id -> {teacher: router score}) for the ROUTED prompts."""
    from persyn_hub.router.assignment import ROUTED

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


def choose_training_answers(
    rankings: dict[str, dict[str, list[str]]],
    usable: Any,
    prompt_ids: list[str],
    verified: Any = None,
    extra: int = 1,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, int]], list[str], dict[str, dict[str, list[str]]]]:
    """Each strategy's first usable teacher in its own order ({strategy: {prompt: teacher}}), its counts
    (`fallbacks`: prompts answered by a later choice; `unanswerable`: none of its choices usable), the
    common prompts (those every strategy could answer; with full rankings, the prompts some teacher
    answered), and the teachers each strategy asked per prompt, in order, up to its pick. A verified
    strategy (`baselines.VERIFIED`) also needs `verified(prompt, teacher)` within `extra` extra answers."""
    from persyn_hub.compare.baselines import VERIFIED, first_usable, verified_picks

    picks: dict[str, dict[str, str]] = {}
    counts: dict[str, dict[str, int]] = {}
    asked: dict[str, dict[str, list[str]]] = {}
    for strategy, ranking in rankings.items():
        if strategy in VERIFIED:
            chosen, asked[strategy], lost = verified_picks(ranking, usable, verified, extra)
        else:
            chosen, _, lost = first_usable(ranking, usable)
            asked[strategy] = {p: ranking[p][: ranking[p].index(t) + 1] for p, t in chosen.items()}
        picks[strategy] = chosen
        counts[strategy] = {"unanswerable": len(lost) + len(set(prompt_ids) - set(ranking))}
        counts[strategy]["fallbacks_all"] = sum(1 for p, t in chosen.items() if t != ranking[p][0])
    common = sorted(set.intersection(*(set(c) for c in picks.values()))) if picks else []
    for strategy, ranking in rankings.items():  # fallbacks among the prompts actually trained on
        counts[strategy]["fallbacks"] = sum(1 for p in common if picks[strategy][p] != ranking[p][0])
        counts[strategy]["extra_answers"] = sum(len(asked[strategy][p]) - 1 for p in common)
    return picks, counts, common, asked


def build_training_sets(
    recipe: CompareRecipe, pipeline: Any, runner: Any, pool: Dataset
) -> tuple[dict[str, Dataset], dict[str, dict[str, Any]], list[str]]:
    """({strategy: SFT data set}, {strategy: picks, cost and what was dropped}, the common prompt ids).

    Each strategy takes, per prompt, the first teacher of its own ranking whose answer is usable (no
    error, not truncated): an unusable first choice falls back to the strategy's OWN next choice
    (`baselines.strategy_rankings`) and is counted, so no strategy's failures shape the others' prompts.
    """
    from persyn_hub.compare.baselines import pool_verified, strategy_rankings
    from persyn_hub.compare.protocol import answer_stats, strategy_cost
    from persyn_hub.pipeline.stages import ASSEMBLE, COMBINE, ROUTE, ROUTER
    from persyn_hub.router.assignment import ROUTED
    from persyn_hub.router.storage import read_router_record

    teachers = pipeline.teacher_names()
    free = {t.name for t in pipeline.teachers if t.backend == "reference"}
    labels, final = runner.outputs[COMBINE], runner.outputs[ASSEMBLE]
    metrics = read_router_record(runner.outputs[ROUTER])["metrics"]
    prompt_ids = sorted(set(pool["prompt_id"]))
    rows = _rows(pool)
    published = {
        row["prompt_id"]: row
        for row in final.select_columns(["prompt_id", "teacher", "messages", "selected_by"]).to_list()
        if row["selected_by"] == ROUTED
    }
    routed_teachers, router_scores = routed_choices(
        runner.outputs[ROUTE], router_teachers(runner.outputs[ROUTER], teachers)
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
            labels=labels,
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

    def usable(prompt_id: str, teacher: str) -> bool:
        return _trainable(rows.get((prompt_id, teacher)))

    picks, counts, common, asked = choose_training_answers(
        rankings, usable, prompt_ids, pool_verified(pool), recipe.fallback_on_incorrect
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
        messages = []
        for p in common:
            if strategy.startswith("persyn") and p in published and published[p]["teacher"] == chosen[p]:
                messages.append(published[p]["messages"])  # exactly the row `persyn run` published
            else:
                row = rows[(p, chosen[p])]
                messages.append(list(row["messages"]) + [{"role": "assistant", "content": row["response"]}])
        sets[strategy] = Dataset.from_dict(
            {"prompt_id": common, "teacher": [chosen[p] for p in common], "messages": messages}
        )
    return sets, info, common


__all__ = [
    "build_training_sets",
    "choose_training_answers",
    "routed_choices",
    "router_teachers",
    "student_family",
    "teacher_families",
]
