"""Generation stage: each teacher answers its prompts; rows are checkpointed as they finish."""

from __future__ import annotations

import time
from pathlib import Path

from datasets import Dataset, Value

from persyn_hub.generation.backends import Backend, backend_for, backend_of
from persyn_hub.generation.checkpoint import RECORD_FEATURES, GenerationCheckpoint
from persyn_hub.generation.pool import pool_answers
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.recipe.sections import PoolConfig, TeacherConfig

GENERATION_FEATURES = {**RECORD_FEATURES, "pool_scores": Value("string")}
"""`pool_scores`: JSON of the scores an answer pool holds beside the answer (None when generated)."""
GENERATION_COLUMNS = list(GENERATION_FEATURES)


def with_generation_types(dataset: Dataset) -> Dataset:
    """Fixed column types, so an all-None `error` column is still a string column (parts concatenate)."""
    for column, feature in GENERATION_FEATURES.items():
        if column in dataset.column_names and dataset.features[column] != feature:
            dataset = dataset.cast_column(column, feature)
    return dataset


def with_generation_columns(dataset: Dataset) -> Dataset:
    """Every generation column present (a backend that has no pool leaves `pool_scores` out)."""
    if "pool_scores" not in dataset.column_names:
        dataset = dataset.add_column("pool_scores", [None] * len(dataset))
    return with_generation_types(dataset)


def generate_responses(
    dataset: Dataset,
    teacher: TeacherConfig,
    *,
    checkpoint_dir: str | Path,
    seed: int = 42,
    pool: PoolConfig | None = None,
) -> tuple[Dataset, GenerationStats]:
    """Have `teacher` answer every row; resume from `checkpoint_dir` after a crash.

    Reads `prompt_id`, `messages`. Adds `teacher`, `response`, `finish_reason`, `num_tokens`,
    `num_prompt_tokens`, `error` (failed rows are kept, with the reason; a re-run retries only them).
    Example: `generate_responses(prompts, recipe.teachers[0], checkpoint_dir="runs/x/ckpt")`.
    """
    missing = {"prompt_id", "messages"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"generate_responses needs columns {sorted(missing)}; got {dataset.column_names}.")
    stats = GenerationStats(teacher=teacher.name)
    if len(dataset) == 0:
        empty = {column: [] for column in GENERATION_COLUMNS}
        return with_generation_types(Dataset.from_dict({**dataset.to_dict(), **empty})), stats
    backend = backend_of(teacher)
    started = time.perf_counter()
    if teacher.pool_column and pool is not None:
        return _from_pool(dataset, teacher, backend, pool, checkpoint_dir, seed, stats)
    if backend.generate is not None and not backend.checkpoints:  # nothing to pay for: no checkpoint
        result = backend.generate(dataset, teacher, checkpoint=None, stats=stats, seed=seed)
        stats.seconds = time.perf_counter() - started
        return with_generation_columns(result), stats
    with GenerationCheckpoint(checkpoint_dir) as checkpoint:
        stats.corrupt_checkpoint_lines = checkpoint.corrupt_lines
        if backend.generate is None:  # a pool teacher without the pool
            raise ValueError(f"teachers.{teacher.name}.backend: unknown backend {backend.name!r}.")
        result = backend.generate(dataset, teacher, checkpoint=checkpoint, stats=stats, seed=seed)
    stats.seconds = time.perf_counter() - started
    return with_generation_columns(result), stats


def _from_pool(
    dataset: Dataset,
    teacher: TeacherConfig,
    backend: Backend,
    pool: PoolConfig,
    checkpoint_dir: str | Path,
    seed: int,
    stats: GenerationStats,
) -> tuple[Dataset, GenerationStats]:
    """Pool answers first; a teacher with a model or endpoints generates the rows the pool lacks."""
    import dataclasses

    started = time.perf_counter()
    answered = with_generation_columns(pool_answers(dataset, teacher, pool))
    missing = [i for i, error in enumerate(answered["error"]) if error is not None]
    if missing and backend.generate is not None:
        generator = dataclasses.replace(teacher, pool_column=None)
        generated, generated_stats = generate_responses(
            dataset.select(missing), generator, checkpoint_dir=checkpoint_dir, seed=seed
        )
        stats = dataclasses.replace(generated_stats, teacher=teacher.name)
        rows = {i: row for i, row in zip(missing, generated.select_columns(GENERATION_COLUMNS).to_list())}
        columns = {c: answered[c] for c in GENERATION_COLUMNS}
        for i, row in rows.items():
            for c in GENERATION_COLUMNS:
                columns[c][i] = row[c]
        answered = with_generation_types(
            answered.remove_columns(GENERATION_COLUMNS).add_column("teacher", columns["teacher"])
        )
        for c in GENERATION_COLUMNS[1:]:
            answered = answered.add_column(c, columns[c])
        answered = with_generation_types(answered)
    else:
        for error in answered["error"]:
            if error:
                stats.add_failure(error)
    stats.seconds = time.perf_counter() - started
    return answered, stats


__all__ = [
    "GENERATION_COLUMNS",
    "GenerationCheckpoint",
    "GenerationStats",
    "backend_for",
    "generate_responses",
]
