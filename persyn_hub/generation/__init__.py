"""Generation stage: each teacher answers its prompts; rows are checkpointed as they finish."""

from __future__ import annotations

import time
from pathlib import Path

from datasets import Dataset, Value

from persyn_hub.config import TeacherConfig
from persyn_hub.generation.checkpoint import GenerationCheckpoint
from persyn_hub.generation.stats import GenerationStats

GENERATION_FEATURES = {
    "teacher": Value("string"),
    "response": Value("string"),
    "finish_reason": Value("string"),
    "num_tokens": Value("int64"),
    "num_prompt_tokens": Value("int64"),
    "error": Value("string"),
}
GENERATION_COLUMNS = list(GENERATION_FEATURES)


def with_generation_types(dataset: Dataset) -> Dataset:
    """Fixed column types, so an all-None `error` column is still a string column (parts concatenate)."""
    for column, feature in GENERATION_FEATURES.items():
        if column in dataset.column_names and dataset.features[column] != feature:
            dataset = dataset.cast_column(column, feature)
    return dataset


def backend_for(teacher: TeacherConfig) -> str:
    """`auto` picks the endpoint backend when URLs are given, else in-process transformers."""
    if teacher.backend != "auto":
        return teacher.backend
    return "endpoint" if teacher.endpoints else "transformers"


def generate_responses(
    dataset: Dataset,
    teacher: TeacherConfig,
    *,
    checkpoint_dir: str | Path,
    seed: int = 42,
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
    backend = backend_for(teacher)
    started = time.perf_counter()
    if backend == "reference":  # no model: nothing to pay for, so nothing to checkpoint
        from persyn_hub.generation.reference import write_references

        result = write_references(dataset, teacher, stats)
        stats.seconds = time.perf_counter() - started
        return with_generation_types(result), stats
    with GenerationCheckpoint(checkpoint_dir) as checkpoint:
        if backend == "transformers":
            from persyn_hub.generation.local import generate_locally

            result = generate_locally(dataset, teacher, checkpoint=checkpoint, stats=stats, seed=seed)
        elif backend == "endpoint":
            from persyn_hub.generation.endpoint import generate_with_endpoints

            result = generate_with_endpoints(dataset, teacher, checkpoint=checkpoint, stats=stats)
        elif backend == "vllm":
            from persyn_hub.generation.vllm_backend import generate_with_vllm

            result = generate_with_vllm(dataset, teacher, checkpoint=checkpoint, stats=stats, seed=seed)
        else:
            raise ValueError(f"teachers.{teacher.name}.backend: unknown backend {backend!r}.")
    stats.seconds = time.perf_counter() - started
    return with_generation_types(result), stats


__all__ = [
    "GENERATION_COLUMNS",
    "GenerationCheckpoint",
    "GenerationStats",
    "backend_for",
    "generate_responses",
]
