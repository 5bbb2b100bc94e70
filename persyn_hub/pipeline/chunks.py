"""A `chunks` stage's units of work: the plan that cuts its rows into chunks, a finished chunk's marker,
and the join of the chunks' outputs (see `pipeline/runner.py` for how processes claim them).

The plan depends on the rows alone (`launch.chunk_rows` rows, a `chunk_by` group kept whole), never on the
process count; a finished chunk is saved under `<stage>/chunks/<name>` with a marker naming its rows, so a
resumed launch with any process count reuses the chunks whose rows match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, concatenate_datasets

from persyn_hub.fingerprint import fingerprint
from persyn_hub.folders import load_dataset_folder
from persyn_hub.pipeline.launch import LaunchError

CHUNKS = "chunks"
DEFAULT_CHUNK_ROWS = 256


@dataclass(frozen=True)
class Chunk:
    """One unit of work of a `chunks` stage: rows `indices` of the stage's rows, chunk `index` of `count`."""

    index: int
    count: int
    indices: tuple[int, ...]
    rows_digest: str
    """A digest of the chunk's row ids: what its marker is checked against on resume."""

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"


def plan_chunks(rows: Dataset, chunk_rows: int, chunk_by: str | None = None) -> list[Chunk]:
    """Cut `rows` into chunks of about `chunk_rows` rows, in row order, keeping each `chunk_by` group whole.

    The plan depends on the rows alone (never on the process count), so any number of processes
    computes the same chunks, and a chunk's marker from an earlier launch can be checked against it.
    """
    ids = rows["prompt_id"] if "prompt_id" in rows.column_names else [str(i) for i in range(len(rows))]
    if chunk_by is None:
        groups = [list(range(start, min(start + 1, len(rows)))) for start in range(len(rows))]
    else:
        by_value: dict[Any, list[int]] = {}
        for position, value in enumerate(rows[chunk_by]):
            by_value.setdefault(value, []).append(position)
        groups = list(by_value.values())
    bundles: list[list[int]] = []
    for group in groups:
        if not bundles or len(bundles[-1]) + len(group) > chunk_rows and bundles[-1]:
            bundles.append([])
        bundles[-1].extend(group)
    return [
        Chunk(index, len(bundles), tuple(indices), fingerprint([ids[i] for i in indices]))
        for index, indices in enumerate(bundles)
    ]


def chunk_marker(folder: Path, chunk: Chunk) -> Path:
    return folder / CHUNKS / f"{chunk.name}.done"


def chunk_is_done(folder: Path, chunk: Chunk) -> bool:
    """Whether a finished chunk for exactly these rows is on disk (a marker of another plan is not)."""
    path = chunk_marker(folder, chunk)
    if not path.is_file():
        return False
    try:
        marker = json.loads(path.read_text())
    except ValueError:
        return False
    return marker.get("rows_digest") == chunk.rows_digest and marker.get("rows") == len(chunk.indices)


def join_chunks(folder: Path, plan: list[Chunk], num_rows: int) -> Dataset:
    """The chunks' outputs as one data set in the order of the stage's rows."""
    missing = [chunk.name for chunk in plan if not chunk_is_done(folder, chunk)]
    if missing:
        raise LaunchError(
            f"stage {folder.name}: chunk(s) {missing[:5]} were computed by no process (is every process "
            "excluded from this stage? see teachers[].tensor_parallel_size); run again to compute them."
        )
    if not plan:
        raise RuntimeError(f"stage {folder.name}: a chunked stage with no rows must not reach the join")
    parts = [load_dataset_folder(folder / CHUNKS / chunk.name) for chunk in plan]
    joined = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    order = np.concatenate([np.asarray(chunk.indices, dtype=np.int64) for chunk in plan])
    if len(order) != num_rows:
        raise RuntimeError(f"stage {folder.name}: the chunks hold {len(order)} rows for {num_rows}")
    if np.any(order[1:] < order[:-1]):  # groups kept whole: put the rows back in their order
        joined = joined.select(np.argsort(order, kind="stable")).flatten_indices()
    return joined


__all__ = [
    "CHUNKS",
    "DEFAULT_CHUNK_ROWS",
    "Chunk",
    "chunk_is_done",
    "chunk_marker",
    "join_chunks",
    "plan_chunks",
]
