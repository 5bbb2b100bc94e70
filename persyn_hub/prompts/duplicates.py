"""Rows that share a prompt id: identical repeats dropped on request, rows that say different things refused."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset

from persyn_hub.errors import PromptDataError
from persyn_hub.prompts.source import short_repr, source_lines
from persyn_hub.recipe.config import REASONING_GYM, PromptsConfig

logger = logging.getLogger(__name__)


PROVENANCE_COLUMNS = {REASONING_GYM: ("metadata",)}
"""Kept columns that say where a row came from, not what it says: two generated items with the same question
and answer differ only in `metadata` (their index among the generated items), and are repeats."""


def _content_columns(dataset: Dataset, config: PromptsConfig) -> list[str]:
    """What a normalized row says: its chat, gold answer, pool answers and kept columns."""
    skip = {"prompt_id", "prompt", *PROVENANCE_COLUMNS.get(config.source, ())}
    return [c for c in dataset.column_names if c not in skip]


def _column_label(column: str, config: PromptsConfig) -> str:
    if column == "messages":
        return "their prompt text"
    if column == "answer" and config.answer_column:
        return f"their answer (column {config.answer_column!r})"
    return f"column {column!r}"


def _describe_cell(column: str, value: Any) -> str:
    if column == "messages" and isinstance(value, list) and value:
        value = value[-1].get("content")
    return short_repr(value)


def check_unique_ids(dataset: Dataset, config: PromptsConfig) -> Dataset:
    """Rows sharing a prompt id: identical repeats are dropped under `drop_duplicates` (else refused); rows
    that say different things under one id (another text, another answer) are refused either way."""
    ids = dataset.data.column("prompt_id")
    counts = pc.value_counts(ids)
    repeated = {item["values"].as_py() for item in counts if item["counts"].as_py() > 1}
    if not repeated:
        return dataset
    id_list = ids.to_pylist()
    groups: dict[str, list[int]] = {}
    for index, value in enumerate(id_list):
        if value in repeated:
            groups.setdefault(value, []).append(index)
    columns = _content_columns(dataset, config)
    involved = sorted(i for rows in groups.values() for i in rows)
    content = dict(zip(involved, dataset.select(involved).select_columns(columns).to_list()))
    what = f"id {{}} (column {config.id_column!r})" if config.id_column else "the same prompt text"
    conflicts = []
    for value, rows in groups.items():
        for other in rows[1:]:
            differ = [c for c in columns if content[rows[0]][c] != content[other][c]]
            if differ:
                conflicts.append((value, rows, other, differ[0]))
                break
    if conflicts:
        value, rows, other, column = conflicts[0]
        shown = rows[:8]
        fix = (
            "give each prompt its own id, or remove the wrong rows"
            if config.id_column
            else "remove the wrong rows, or fix their answers"
        )
        raise PromptDataError(
            f"prompts: rows {shown}{' and more' if len(rows) > 8 else ''} share "
            f"{what.format(repr(value))} in {config.source!r}{source_lines(config, shown)} but differ in "
            f"{_column_label(column, config)}: row {rows[0]} has {_describe_cell(column, content[rows[0]][column])}, "
            f"row {other} {_describe_cell(column, content[other][column])}. {len(conflicts)} id(s) conflict; "
            f"prompts.drop_duplicates drops only identical rows: {fix}."
        )
    if config.drop_duplicates:
        first_rows = sorted({value: i for i, value in reversed(list(enumerate(id_list)))}.values())
        logger.info(
            "prompts: dropped %d identical repeated row(s) (drop_duplicates: true)",
            len(dataset) - len(first_rows),
        )
        return dataset.select(first_rows)
    first = next(iter(groups))
    rows = groups[first][:5]
    raise PromptDataError(
        f"prompts: rows {rows} share {what.format(repr(first))} in {config.source!r}"
        f"{source_lines(config, rows)}; {len(repeated)} id(s) repeat. Deduplicate the source, "
        "or set prompts.drop_duplicates: true to keep the first of each"
        + ("." if config.id_column else ", or set prompts.id_column to a unique id column.")
    )
