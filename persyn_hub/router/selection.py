"""Generate-then-Select: per prompt, the teacher whose answer scores best, among answers already made.

PerSyn's labeled prompts have every teacher's answer and score, so their best answer is known and paid
for: they keep it instead of being routed. The same rule is the Oracle / `gts_*` baselines of
`persyn compare`, so "best" means one thing everywhere.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from persyn_hub.errors import require_columns
from persyn_hub.scoring.answers import is_usable_answer

SELECT_COLUMNS = ("prompt_id", "teacher", "response", "error")


def _column(dataset: Dataset, name: str) -> list:
    return dataset.select_columns([name]).flatten_indices().data.column(name).to_pylist()


def _floats(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def select_best(labels: Dataset, by: str = "reward", teachers: list[str] | None = None) -> dict[str, str]:
    """prompt_id -> the teacher with the highest `by` score among its usable answers.

    Usable: no `error` and a non-empty response (and, for `reward`, no `excluded` reason). Ties go to the
    earliest teacher in `teachers` (default: sorted names). With `by="reward"`, a prompt no reward can
    rank (one usable teacher left, or unscored answers) falls back to the best `quality`, then to the
    first usable answer, so a labeled prompt is only lost when no teacher answered it at all.
    """
    require_columns(labels, (*SELECT_COLUMNS, by), reader="select_best", source="the labeled pool")
    prompt_ids = _column(labels, "prompt_id")
    row_teachers = _column(labels, "teacher")
    order = list(teachers) if teachers is not None else sorted(set(row_teachers))
    rank = {name: i for i, name in enumerate(order)}
    usable = np.array(
        [is_usable_answer(r, e) for e, r in zip(_column(labels, "error"), _column(labels, "response"))]
    )
    primary = _floats(_column(labels, by))
    if by == "reward" and "excluded" in labels.column_names:
        primary[np.array([e is not None for e in _column(labels, "excluded")])] = np.nan
    fallback = (
        _floats(_column(labels, "quality"))
        if "quality" in labels.column_names
        else np.full(len(labels), np.nan)
    )
    best: dict[str, tuple] = {}
    for row, (prompt_id, teacher) in enumerate(zip(prompt_ids, row_teachers)):
        if not usable[row]:
            continue
        has_primary, has_fallback = not np.isnan(primary[row]), not np.isnan(fallback[row])
        key = (
            has_primary,
            primary[row] if has_primary else -np.inf,
            has_fallback and not has_primary,
            fallback[row] if has_fallback and not has_primary else -np.inf,
            -rank.get(teacher, len(rank)),
        )
        if prompt_id not in best or key > best[prompt_id][0]:
            best[prompt_id] = (key, teacher)
    return {prompt_id: teacher for prompt_id, (_, teacher) in best.items()}
