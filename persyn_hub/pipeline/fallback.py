"""Verified routing: a routed answer the checker rejects goes to the router's next-best teacher.

With a verifiable quality (math answers, reasoning-gym checkers, instruction checkers) a routed answer can
be checked before it enters the training set. `routing.fallback_on_incorrect: N` adds N rounds after the
routed generation stages; round k is two declared stages:

    fallback-route-k             verify each routed prompt's newest answer; a rejected (or failed) one is
                                 re-assigned to the router's best teacher not asked yet (`router_scores`)
    fallback-generate-k/<name>   each teacher answers the prompts re-assigned to it in round k

so a prompt costs at most N extra generations. `assemble` then publishes, per prompt, the first verified
answer among the teachers asked (`fallback_teachers`, the router's own choice first); when none verifies,
the first usable one, which `output.drop_incorrect` leaves out. Labeled prompts keep their best labeled
answer (every teacher already answered them: there is nothing left to ask). Budgets bound the router's
first choice only; fallbacks are extra answers, counted in the summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, List, Value

from persyn_hub.recipe.config import QualityConfig
from persyn_hub.router.assignment import ROUTED
from persyn_hub.router.info import RouterInfo
from persyn_hub.scoring.answers import FULL_MARKS, is_usable_answer
from persyn_hub.scoring.quality import score_quality

TRIED = "fallback_teachers"
"""Teachers asked for a prompt, in order: the router's choice, then each fallback."""
ROUND = "fallback_round"
"""The round whose teacher is the prompt's newest candidate (0: the router's choice)."""


def fallback_route(round_: int) -> str:
    return f"fallback-route-{round_}"


def fallback_generate(round_: int, teacher: str) -> str:
    return f"fallback-generate-{round_}/{teacher}"


def router_teachers(router_folder: str | Path) -> list[str]:
    """The router's teacher order (the order of `router_scores`), from its saved config."""
    return RouterInfo.of(json.loads((Path(router_folder) / "config.json").read_text())).teachers


def verify_answers(
    rows: Dataset, responses: pa.Table, teachers: list[str | None], quality: QualityConfig
) -> list[bool]:
    """For each row of `rows` (prompt columns), is `teachers[i]`'s answer usable and given full marks by
    the checker? A missing answer (the teacher was never asked) or a failed one is not verified."""
    lookup = {
        (p, t): i
        for i, (p, t) in enumerate(zip(responses["prompt_id"].to_pylist(), responses["teacher"].to_pylist()))
    }
    texts, errors = responses["response"].to_pylist(), responses["error"].to_pylist()
    picked = [lookup.get((p, t)) for p, t in zip(rows["prompt_id"], teachers)]
    response = [None if i is None else texts[i] for i in picked]
    error = ["not answered" if i is None else errors[i] for i in picked]
    usable = [is_usable_answer(r, e) for r, e in zip(response, error)]
    if not any(usable):
        return [False] * len(rows)

    drop = [
        c for c in ("teacher", "response", "error", "quality", "quality_detail") if c in rows.column_names
    ]
    candidates = rows.remove_columns(drop).flatten_indices()
    candidates = candidates.add_column("teacher", teachers).add_column("response", response)
    candidates = candidates.add_column("error", error)
    scores = score_quality(candidates, quality)["quality"]
    return [ok and score is not None and score >= FULL_MARKS for ok, score in zip(usable, scores)]


def next_round(
    assigned: Dataset,
    responses: pa.Table,
    quality: QualityConfig,
    order: list[str],
    round_: int,
) -> tuple[Dataset, dict[str, int]]:
    """Round `round_`: routed prompts whose newest answer (from round `round_ - 1`) is not verified are
    re-assigned to the router's best teacher not asked yet. Returns the assignment with `teacher`,
    `fallback_teachers` and `fallback_round` updated, and the round's counts (checked, rejected, sent)."""
    if TRIED not in assigned.column_names:
        assigned = assigned.add_column(TRIED, [[t] if t is not None else [] for t in assigned["teacher"]])
        assigned = assigned.add_column(ROUND, [0] * len(assigned))
    newest = [
        i
        for i, (how, r, t) in enumerate(zip(assigned["selected_by"], assigned[ROUND], assigned["teacher"]))
        if how == ROUTED and r == round_ - 1 and t is not None
    ]
    current = assigned.select(newest)
    verified = verify_answers(current, responses, current["teacher"], quality)
    scores = current["router_scores"]
    tried, rounds, teacher = list(assigned[TRIED]), list(assigned[ROUND]), list(assigned["teacher"])
    rejected = sent = 0
    for row, ok, row_scores in zip(newest, verified, scores):
        if ok:
            continue
        rejected += 1
        ranked = [order[k] for k in np.argsort(-np.asarray(row_scores, dtype=np.float64), kind="stable")]
        untried = [name for name in ranked if name not in tried[row]]
        if not untried:
            continue
        tried[row] = [*tried[row], untried[0]]
        rounds[row], teacher[row] = round_, untried[0]
        sent += 1
    columns = {"teacher": teacher, TRIED: tried, ROUND: rounds}
    result = assigned.remove_columns(list(columns))
    for name, values in columns.items():
        result = result.add_column(name, values)
    features = result.features.copy()
    features.update({"teacher": Value("string"), TRIED: List(Value("string")), ROUND: Value("int64")})
    result = result.cast(features)
    return result, {"checked": len(newest), "rejected": rejected, "sent": sent}


def own_fallback_ids(assigned: Dataset, teacher: str, round_: int) -> set[str]:
    """Prompt ids re-assigned to `teacher` in round `round_`."""
    return {
        p
        for p, t, r in zip(assigned["prompt_id"], assigned["teacher"], assigned[ROUND])
        if t == teacher and r == round_
    }


def choose_verified(
    assigned: Dataset, responses: pa.Table, quality: QualityConfig
) -> tuple[Dataset, dict[str, Any]]:
    """Per prompt with fallbacks, the first verified answer among the teachers asked (the router's choice
    first); when none verifies, the first usable one. Returns the assignment with `teacher` set to it (and
    `fallback_round` dropped), and counts for the summary."""
    multi = [i for i, tried in enumerate(assigned[TRIED]) if len(tried) > 1]
    teacher = list(assigned["teacher"])
    recovered = 0
    if multi:
        rows = assigned.select(multi)
        pairs = [(row, name) for row, tried in zip(range(len(multi)), rows[TRIED]) for name in tried]
        expanded = rows.select([row for row, _ in pairs])
        names = [name for _, name in pairs]
        verified = verify_answers(expanded, responses, names, quality)
        lookup = {
            (p, t): i
            for i, (p, t) in enumerate(
                zip(responses["prompt_id"].to_pylist(), responses["teacher"].to_pylist())
            )
        }
        texts, errors = responses["response"].to_pylist(), responses["error"].to_pylist()
        prompt_ids = rows["prompt_id"]
        by_row: dict[int, list[tuple[str, bool, bool]]] = {}
        for (row, name), ok in zip(pairs, verified):
            index = lookup.get((prompt_ids[row], name))
            usable = index is not None and is_usable_answer(texts[index], errors[index])
            by_row.setdefault(row, []).append((name, ok, usable))
        for row, candidates in by_row.items():
            chosen = next((name for name, ok, _ in candidates if ok), None)
            if chosen is not None and chosen != candidates[0][0]:
                recovered += 1
            if chosen is None:
                chosen = next((name for name, _, usable in candidates if usable), candidates[0][0])
            teacher[multi[row]] = chosen
    result = assigned.remove_columns(["teacher", ROUND]).add_column("teacher", teacher)
    result = result.cast_column("teacher", Value("string"))
    counts = {
        "prompts_with_fallbacks": len(multi),
        "recovered": recovered,
        "extra_answers": int(sum(len(tried) - 1 for tried in assigned[TRIED])),
    }
    return result, counts


__all__ = [
    "ROUND",
    "TRIED",
    "choose_verified",
    "fallback_generate",
    "fallback_route",
    "next_round",
    "own_fallback_ids",
    "router_teachers",
    "verify_answers",
]
