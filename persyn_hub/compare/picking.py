"""Which answer each strategy takes: the one picking path of the comparison (the run and the tests).

Every strategy ranks all teachers per prompt (`baselines.strategy_rankings`); `choose_training_answers`
takes, per strategy and prompt, the first teacher of its own ranking whose answer is trainable (no error,
some text, not cut at `max_new_tokens`: `pool_trainable`), so an unusable first choice falls back to the
strategy's own next choice and never removes the prompt from the other strategies. A verified strategy
(`baselines.VERIFIED`) also needs the checker's full marks (`pool_verified`) within its extra answers
(`verified_picks`), as `routing.fallback_on_incorrect` does in a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import Dataset

from persyn_hub.compare.baselines import VERIFIED, column
from persyn_hub.scoring.answers import FULL_MARKS, is_trainable_answer

ANSWER_COLUMNS = (
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
)


def answer_rows(pool: Dataset) -> dict[tuple[str, str], dict[str, Any]]:
    """(prompt_id, teacher) -> the pool's answer row (the columns of `ANSWER_COLUMNS` it has)."""
    table = pool.select_columns([c for c in ANSWER_COLUMNS if c in pool.column_names]).to_list()
    return {(row["prompt_id"], row["teacher"]): row for row in table}


def trainable_in(rows: dict[tuple[str, str], dict[str, Any]]) -> Callable[[str, str], bool]:
    """The usability test on `answer_rows`: the answer exists, did not fail, holds text and is complete."""

    def usable(prompt_id: str, teacher: str) -> bool:
        row = rows.get((prompt_id, teacher))
        return bool(row) and is_trainable_answer(row["response"], row["error"], row.get("finish_reason"))

    return usable


def pool_trainable(pool: Dataset) -> Callable[[str, str], bool]:
    """`trainable_in` on the pool's own answers: what a strategy may train on."""
    return trainable_in(answer_rows(pool))


def pool_verified(pool: Dataset) -> Callable[[str, str], bool]:
    """The checker's verdict as the pool holds it: quality at full marks."""

    full = {
        (p, t)
        for p, t, q in zip(column(pool, "prompt_id"), column(pool, "teacher"), column(pool, "quality"))
        if q is not None and float(q) >= FULL_MARKS
    }
    return lambda prompt_id, teacher: (prompt_id, teacher) in full


def first_usable(
    rankings: dict[str, list[str]], usable: Callable[[str, str], bool]
) -> tuple[dict[str, str], list[str], list[str]]:
    """(prompt_id -> the first usable teacher of its ranking, the prompts where that was not the first
    choice (fallbacks), the prompts where no teacher in the ranking was usable)."""
    chosen: dict[str, str] = {}
    fallbacks: list[str] = []
    lost: list[str] = []
    for prompt_id, order in rankings.items():
        pick = next((t for t in order if usable(prompt_id, t)), None)
        if pick is None:
            lost.append(prompt_id)
            continue
        chosen[prompt_id] = pick
        if pick != order[0]:
            fallbacks.append(prompt_id)
    return chosen, fallbacks, lost


def verified_picks(
    rankings: dict[str, list[str]],
    usable: Callable[[str, str], bool],
    verified: Callable[[str, str], bool],
    extra: int,
) -> tuple[dict[str, str], dict[str, list[str]], list[str]]:
    """Verified routing on a scored pool: per prompt, the first of `ranking[:1 + extra]` whose answer is
    usable and verified; none: the first usable answer of the ranking (the run publishes it unless
    `output.drop_incorrect`). Returns (prompt_id -> teacher, prompt_id -> the teachers asked, in order,
    the prompts no teacher could answer)."""
    chosen: dict[str, str] = {}
    asked: dict[str, list[str]] = {}
    lost: list[str] = []
    for prompt_id, order in rankings.items():
        window = order[: 1 + extra]
        pick = next((t for t in window if usable(prompt_id, t) and verified(prompt_id, t)), None)
        tried = window[: window.index(pick) + 1] if pick else list(window)
        if pick is None:
            pick = next((t for t in order if usable(prompt_id, t)), None)
            if pick is not None and pick not in tried:
                tried = order[: order.index(pick) + 1]
        if pick is None:
            lost.append(prompt_id)
            continue
        chosen[prompt_id], asked[prompt_id] = pick, tried
    return chosen, asked, lost


def choose_training_answers(
    rankings: dict[str, dict[str, list[str]]],
    usable: Callable[[str, str], bool],
    prompt_ids: list[str],
    verified: Callable[[str, str], bool] | None = None,
    extra: int = 1,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, int]], list[str], dict[str, dict[str, list[str]]]]:
    """Each strategy's first usable teacher in its own order ({strategy: {prompt: teacher}}), its counts
    (`fallbacks`: prompts answered by a later choice; `unanswerable`: none of its choices usable), the
    common prompts (those every strategy could answer; with full rankings, the prompts some teacher
    answered), and the teachers each strategy asked per prompt, in order, up to its pick. A verified
    strategy (`baselines.VERIFIED`) also needs `verified(prompt, teacher)` within `extra` extra answers."""
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


__all__ = [
    "ANSWER_COLUMNS",
    "answer_rows",
    "choose_training_answers",
    "first_usable",
    "pool_trainable",
    "pool_verified",
    "trainable_in",
    "verified_picks",
]
