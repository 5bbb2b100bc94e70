"""Folders written whole and vouched for by digests: what the stage cache, the router and the Hub copies share.

A folder is written into a staging sibling and swapped in, so a reader never sees half of it; a
`_SUCCESS` marker beside it holds the sha256 of every file, so damage is reported instead of read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset, Features, load_from_disk

SUCCESS = "_SUCCESS"
"""The marker a finished stage folder holds (its key, its files' digests, how long it took)."""


EMPTY_MARKER = "empty_features.json"


def write_folder_whole(path: Path, write: Callable[[Path], None]) -> None:
    """`write` into a staging sibling, then swap it in: readers never see half of `path`."""
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)


def save_dataset_folder(dataset: Dataset, path: Path) -> None:
    """`save_to_disk`, swapped in whole (readers never see half of it), that also keeps 0-row sets.

    `datasets` writes no shard for a 0-row table and then cannot load it back; an empty stage (a
    teacher the router gave no prompt) is stored as its features alone.
    """

    def write(staging: Path) -> None:
        if len(dataset) == 0:
            staging.mkdir(parents=True)
            (staging / EMPTY_MARKER).write_text(json.dumps(dataset.features.to_dict()))
        else:
            dataset.save_to_disk(str(staging))

    write_folder_whole(path, write)


def load_dataset_folder(path: Path) -> Dataset:
    """Read what `save_dataset_folder` wrote."""
    marker = Path(path) / EMPTY_MARKER
    if marker.is_file():
        features = Features.from_dict(json.loads(marker.read_text()))
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return load_from_disk(str(path))


def file_digest(file: Path) -> str | None:
    """sha256 of a file, None when it is missing."""
    if not file.is_file():
        return None
    sha = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def folder_digest(path: Path) -> dict[str, str | None]:
    """sha256 of every file under `path`, by relative name: what `_SUCCESS` vouches for."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file())
    return {file.relative_to(path).as_posix(): file_digest(file) for file in files}


__all__ = [
    "EMPTY_MARKER",
    "SUCCESS",
    "file_digest",
    "folder_digest",
    "load_dataset_folder",
    "save_dataset_folder",
    "write_folder_whole",
]
