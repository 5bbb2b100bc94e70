"""Answers a data set already holds: a parallel-response pool (Magpie-Zoo, an earlier run, distilabel).

A teacher with a `pool_column` answers from that column when the cell holds text (wide format, text or
a dict with the text under `prompts.pool.response_key` and precomputed scores beside it). No request is
made, so labeling a 50K x 19 pool costs only the scoring. A missing or empty cell is an unusable answer
with a reason, never an empty string scored as zero; a teacher that also has a model or endpoints
generates those rows instead.
"""

from __future__ import annotations

import json
from typing import Any

from datasets import Dataset

from persyn_hub.generation.checkpoint import RECORD_FEATURES
from persyn_hub.recipe.sections import PoolConfig, TeacherConfig

POOL_FINISH = "pool"
"""`finish_reason` of an answer taken from the pool (it cost no generation)."""


def cell_answer(cell: Any, pool: PoolConfig) -> tuple[str | None, dict[str, float], str | None]:
    """(answer text, numeric scores beside it, why it is unusable)."""
    if cell is None:
        return None, {}, "missing cell"
    if isinstance(cell, dict):
        text = cell.get(pool.response_key)
        scores = {
            str(k): float(v)
            for k, v in cell.items()
            if k != pool.response_key and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    else:
        text, scores = cell, {}
    if not isinstance(text, str):
        return None, scores, f"no text under {pool.response_key!r}" if isinstance(cell, dict) else "not text"
    if not text.strip():
        return None, scores, "empty answer"
    return text, scores, None


def pool_answer_columns(teachers: list[TeacherConfig]) -> list[str]:
    """The prompts' columns that hold a pool teacher's answers: read once, by that teacher's generation,
    then left out of every generated row (a labeled row holds its own answer, not the whole pool's)."""
    return [teacher.pool_column for teacher in teachers if teacher.pool_column]


def pool_answers(dataset: Dataset, teacher: TeacherConfig, pool: PoolConfig) -> Dataset:
    """The generation columns for every row, from `teacher.pool_column`; unusable cells carry `error`."""
    column = teacher.pool_column or teacher.name
    if column not in dataset.column_names:
        raise ValueError(
            f"teachers ({teacher.name!r}).pool_column: column {column!r} is not in the prompts "
            f"({dataset.column_names}); name the pool's column for this teacher."
        )

    def write(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {column: [] for column in (*RECORD_FEATURES, "pool_scores")}
        for cell in batch[column]:
            text, scores, problem = cell_answer(cell, pool)
            out["teacher"].append(teacher.name)
            out["response"].append(text)
            out["finish_reason"].append(POOL_FINISH if problem is None else "error")
            out["num_tokens"].append(0)
            out["num_prompt_tokens"].append(0)
            out["error"].append(None if problem is None else f"pool: {problem} in column {column!r}")
            out["pool_scores"].append(json.dumps(scores, sort_keys=True) if scores else None)
        return out

    return dataset.map(write, batched=True, desc=f"Pool answers ({teacher.name})")
