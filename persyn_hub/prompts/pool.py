"""Long answer pools: one row per prompt and teacher, pivoted into one row per prompt with a column per teacher."""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset

from persyn_hub.data_files import row_lines
from persyn_hub.errors import PromptDataError
from persyn_hub.prompts.columns import prompt_fields
from persyn_hub.prompts.source import short_repr
from persyn_hub.recipe.config import PromptsConfig

logger = logging.getLogger(__name__)


def _hashable(value: Any) -> Any:
    """A cell as a dict key: chat lists and mappings by their JSON text."""
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, sort_keys=True, default=str)
    return value


def pivot_long_pool(dataset: Dataset, config: PromptsConfig) -> Dataset:
    """A long answer pool (one row per prompt and teacher) -> one row per prompt, one column per teacher
    holding {response_key: answer, score columns...}; a teacher without a row for a prompt gets None."""
    pool = config.pool
    assert pool is not None
    key = config.id_column or config.prompt_column
    needed = [
        c
        for c in (key, pool.teacher_column, pool.response_column, *pool.score_columns)
        if c not in dataset.column_names
    ]
    if needed:
        raise PromptDataError(
            f"prompts.pool: the long pool lacks column(s) {needed} (it has {dataset.column_names}); set "
            "prompts.pool.teacher_column / response_column / score_columns (and prompts.prompt_column)."
        )
    records = dataset.to_list()
    teachers = sorted({str(r[pool.teacher_column]) for r in records if r[pool.teacher_column] is not None})
    answer_columns = (pool.teacher_column, pool.response_column, *pool.score_columns)
    # what a prompt's row says besides its key: the same on every teacher's row of that prompt
    said = [c for c in (*prompt_fields(config), config.answer_column) if c and c != key]
    rows: dict[Any, dict[str, Any]] = {}
    first_row: dict[Any, int] = {}
    seen: dict[tuple[Any, str], int] = {}
    repeats = 0
    for index, record in enumerate(records):
        prompt, teacher = _hashable(record[key]), str(record[pool.teacher_column])
        if (prompt, teacher) in seen:
            earlier = seen[(prompt, teacher)]
            identical = records[earlier] == record
            if identical and config.drop_duplicates:
                repeats += 1
                continue
            where = (
                f"rows [{earlier}, {index}] of {config.source!r}{row_lines(config.source, [earlier, index])}"
            )
            if identical:
                raise PromptDataError(
                    f"prompts.pool: {where} repeat teacher {teacher!r}'s answer to prompt {short_repr(record[key])} "
                    "word for word; a long pool holds one row per (prompt, teacher): remove the repeat, or set "
                    "prompts.drop_duplicates: true to drop identical repeats."
                )
            differ = [c for c in record if records[earlier][c] != record[c]]
            raise PromptDataError(
                f"prompts.pool: {where} hold two different answers of teacher {teacher!r} to prompt "
                f"{short_repr(record[key])} (they differ in {differ}); a long pool holds one row per (prompt, teacher), "
                "and drop_duplicates drops only identical rows: remove the wrong one."
            )
        seen[(prompt, teacher)] = index
        if prompt in first_row:
            earlier = first_row[prompt]
            differ = [c for c in said if records[earlier][c] != record[c]]
            if differ:
                where = f"rows [{earlier}, {index}] of {config.source!r}{row_lines(config.source, [earlier, index])}"
                raise PromptDataError(
                    f"prompts.pool: {where} share {key} {short_repr(record[key])} but differ in column {differ[0]!r} "
                    f"({short_repr(records[earlier][differ[0]])} vs {short_repr(record[differ[0]])}); every teacher's row "
                    f"of a prompt repeats its {differ[0]}: fix the wrong row, or give the prompts distinct ids."
                )
        else:
            first_row[prompt] = index
        row = rows.setdefault(prompt, {c: v for c, v in record.items() if c not in answer_columns})
        row[teacher] = {
            pool.response_key: record[pool.response_column],
            **{c: record[c] for c in pool.score_columns},
        }
    if repeats:
        logger.info("prompts.pool: dropped %d identical repeated row(s) (drop_duplicates: true)", repeats)
    wide = [{**{t: None for t in teachers}, **row} for row in rows.values()]
    logger.info(
        "prompts.pool: pivoted %d long rows into %d prompts x %d teachers",
        len(records),
        len(wide),
        len(teachers),
    )
    return Dataset.from_list(wide)
