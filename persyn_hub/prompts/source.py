"""Reading the prompt source: a data set from the Hub, a saved `Dataset`, a local data file, a bundled set or
generated reasoning-gym items; what `persyn validate` checks of a local source; how messages name its rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, load_dataset, load_from_disk

from persyn_hub.bundled import bundled_data_file, is_bundled
from persyn_hub.data_files import LOCAL_BUILDERS, check_data_file, load_local_file, row_lines
from persyn_hub.errors import PromptDataError
from persyn_hub.procedural import generate_tasks
from persyn_hub.prompts.columns import apply_bundled_defaults, check_columns
from persyn_hub.recipe.config import REASONING_GYM, PromptsConfig


def read_source(config: PromptsConfig, seed: int) -> Dataset:
    source = config.source
    if source == REASONING_GYM:
        return generate_tasks(config.tasks, seed)
    if is_bundled(source):
        return load_dataset("json", data_files=str(bundled_data_file(source)), split="train")
    path = Path(source)
    if path.is_dir() and (path / "dataset_info.json").is_file():
        return load_from_disk(str(path))
    if path.suffix in LOCAL_BUILDERS:
        if not path.is_file():
            raise PromptDataError(f"prompts.source: file {source!r} does not exist.")
        return _read_local_file(path)
    return load_dataset(source, config.subset, split=config.split, revision=config.revision)


def _read_local_file(path: Path) -> Dataset:
    """A local data file through `datasets`; an empty, blank, non-UTF-8 or malformed file is one error naming
    the file and its first bad line instead of a traceback (`data_files.load_local_file`)."""
    return load_local_file(path, "prompts.source", PromptDataError)


def where_in_source(config: PromptsConfig, index: int) -> str:
    """`row 3 of 'x.jsonl' (line 5)`: a source row, with its line when the source is a local .jsonl file
    (a long pool's rows are pivoted, so only their index is named)."""
    return f"row {index} of {config.source!r}{source_lines(config, [index])}"


def source_lines(config: PromptsConfig, indices: list[int]) -> str:
    long_pool = config.pool is not None and config.pool.format == "long"
    return "" if long_pool else row_lines(config.source, indices)


def local_source_columns(config: PromptsConfig) -> set[str] | None:
    """The columns of a local prompt source, read without loading it (None: not a local source)."""
    path = Path(config.source)
    if path.is_dir() and (path / "dataset_info.json").is_file():
        return set(load_from_disk(str(path)).column_names)
    if path.suffix not in LOCAL_BUILDERS or not path.is_file():
        return None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        check_data_file(path, "prompts.source", PromptDataError)
        return set(pq.read_schema(path).names)
    return set(_read_local_file(path).column_names)


def check_local_source(config: PromptsConfig, pool_teachers: list[str]) -> None:
    """What `persyn validate` can see without loading a model: a local source has the recipe's columns,
    and every teacher that answers from the pool has answers there (`pool_teachers`: their columns, or
    for a long pool their names)."""
    columns = local_source_columns(config)
    if columns is None:
        return
    pool = config.pool
    if pool is not None and pool.format == "long":
        needed = [
            ("prompts.pool.teacher_column", pool.teacher_column),
            ("prompts.pool.response_column", pool.response_column),
        ]
        needed += [("prompts.pool.score_columns", name) for name in pool.score_columns]
        for key, column in needed:
            if column not in columns:
                raise PromptDataError(
                    f"{key}: column {column!r} is not in {config.source!r}; its columns are {sorted(columns)}."
                )
        present = set(map(str, read_source(config, seed=0)[pool.teacher_column]))
        missing = [name for name in pool_teachers if name not in present]
        if missing:
            raise PromptDataError(
                f"teachers: {missing} answer from the pool, but {config.source!r} has no row with "
                f"{pool.teacher_column} = {missing[0]!r} (teachers there: {sorted(present)[:20]}). Set the "
                "teacher's pool_column to a name the pool has, or give it a model or endpoints."
            )
        columns = columns | set(pool_teachers)
    else:
        missing = [name for name in pool_teachers if name not in columns]
        if missing:
            raise PromptDataError(
                f"teachers: {missing} answer from the pool, but {config.source!r} has no such column (its "
                f"columns are {sorted(columns)}). Set the teacher's pool_column to one of them, or give it a "
                "model or endpoints."
            )
    check_columns(columns, apply_bundled_defaults(config))


def short_repr(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
