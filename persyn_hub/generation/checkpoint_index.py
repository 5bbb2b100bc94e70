"""A teacher's row checkpoint as read so far, kept current as chunks append, so each byte is read once.

A sharded generation stage builds a `GenerationCheckpoint` per chunk. Reading every part file back at each
chunk would read a 50K-prompt checkpoint about 200 times per teacher and process (over NFS, on a cluster).
Instead the runner holds one `CheckpointIndex` per checkpoint folder for the whole stage
(`held_checkpoints`): it remembers how far it has read each part file and, at the next chunk, reads only
the complete lines appended since (by the other processes of the launch); this process's own rows go
straight into it as they are written. A line without its newline is being written by another process
(or was torn by a crash): it is left for the next read, never counted as corrupt. Only a complete line
that does not parse is corrupt (reported, and its row generated again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

PARTS = "part-*.jsonl"

_held: dict[Path, CheckpointIndex] | None = None
"""The indexes held for the current stage, by folder (None: nothing is held, each open reads afresh)."""


class CheckpointIndex:
    """Every record of one checkpoint folder read so far (the last one per `prompt_id`), the byte offset
    reached in each part file, and this process's own part file, appended to for the index's life."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        self.offsets: dict[str, int] = {}
        """Part file name -> bytes of complete lines already read."""
        self.lines_read = 0
        """Complete lines parsed from part files (this process's own rows are never parsed back)."""
        self.corrupt_lines = 0
        self._part = self.directory / f"part-{time.time_ns()}-{os.getpid()}.jsonl"
        self._handle: IO[str] | None = None

    def refresh(self) -> int:
        """Read the complete lines appended to every other part file since the last read (a new part
        file from the start); returns how many of them were corrupt."""
        corrupt = 0
        for part in sorted(self.directory.glob(PARTS)):
            if part != self._part:
                corrupt += self._read_new_lines(part)
        self.corrupt_lines += corrupt
        return corrupt

    def _read_new_lines(self, part: Path) -> int:
        offset = self.offsets.get(part.name, 0)
        corrupt = 0
        try:
            handle = part.open("rb")
        except FileNotFoundError:  # removed since the listing (a stage forgotten by another process)
            return 0
        with handle:
            handle.seek(offset)
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written (or torn by a crash): read once it is complete
                offset += len(line)
                self.lines_read += 1
                try:
                    self.add(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    corrupt += 1
        self.offsets[part.name] = offset
        if corrupt:
            logger.warning(
                "checkpoint %s: %d corrupt line(s) ignored; their rows are generated again", part, corrupt
            )
        return corrupt

    def add(self, record: dict[str, Any]) -> None:
        """Keep `record` as its row's latest; a failure never replaces a finished answer (part files are
        read in whatever order their lines arrive, and a finished row is never asked again)."""
        known = self.records.get(record["prompt_id"])
        if known is not None and not known.get("error") and record.get("error"):
            return
        self.records[record["prompt_id"]] = record

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write `records` to this process's part file (flushed and fsynced) and keep them."""
        records = list(records)
        if not records:
            return
        if self._handle is None:
            self._handle = self._part.open("a", encoding="utf-8")
        for record in records:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.add(record)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@contextlib.contextmanager
def held_checkpoints() -> Iterator[None]:
    """Hold each checkpoint's index from one chunk of a stage to the next (the runner holds them for a
    stage's chunks); they are closed and forgotten when the block ends, so the next stage reads afresh."""
    global _held
    if _held is not None:  # already held by an outer block: that one releases them
        yield
        return
    _held = {}
    try:
        yield
    finally:
        indexes, _held = _held, None
        for index in indexes.values():
            index.close()


def open_index(directory: str | Path) -> tuple[CheckpointIndex, int, bool]:
    """The index of `directory`, current: (index, corrupt lines found by this read, whether it is held).

    While `held_checkpoints` is active the index is kept and only new lines are read; otherwise the
    folder is read whole into an index of its own.
    """
    if _held is None:
        index = CheckpointIndex(directory)
        return index, index.refresh(), False
    key = Path(directory).resolve()
    index = _held.get(key)
    if index is None:
        index = _held[key] = CheckpointIndex(key)
    return index, index.refresh(), True


__all__ = ["PARTS", "CheckpointIndex", "held_checkpoints", "open_index"]
