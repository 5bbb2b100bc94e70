"""Row-level checkpoints for generation, so a killed run never pays for a finished request twice.

Each run of a generation stage appends finished rows to its own JSONL part file inside the stage's
checkpoint directory (one writer per file, flushed and fsynced per batch). On resume every part is
read back; a torn last line from a crash is ignored. Rows whose last record has an `error` are
generated again; rows with a response are reused as they are.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Value

logger = logging.getLogger(__name__)

RECORD_FEATURES = {
    "teacher": Value("string"),
    "response": Value("string"),
    "finish_reason": Value("string"),
    "num_tokens": Value("int64"),
    "num_prompt_tokens": Value("int64"),
    "error": Value("string"),
}
"""The columns every generation backend adds (typed, so an all-None `error` stays a string column)."""
RECORD_FIELDS = tuple(name for name in RECORD_FEATURES if name != "teacher")
"""What a checkpoint record holds per row (beside `prompt_id`)."""


class GenerationCheckpoint:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        self.corrupt_lines = 0
        """Lines of earlier parts that could not be read (reported, and their rows generated again)."""
        for part in sorted(self.directory.glob("part-*.jsonl")):
            self._read_part(part)
        self._part = self.directory / f"part-{time.time_ns()}-{os.getpid()}.jsonl"
        self._handle = None

    def _read_part(self, part: Path) -> None:
        corrupt = 0
        with part.open("r", encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn write from a crash: the row is simply generated again
                try:
                    record = json.loads(line)
                    self.records[record["prompt_id"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    corrupt += 1
        if corrupt:
            self.corrupt_lines += corrupt
            logger.warning(
                "checkpoint %s: %d corrupt line(s) ignored; their rows are generated again", part, corrupt
            )

    def done(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished record of a row, or None when it must be (re)generated."""
        record = self.records.get(prompt_id)
        if record is None or record.get("error"):
            return None
        return record

    def failed_ids(self) -> list[str]:
        return [key for key, record in self.records.items() if record.get("error")]

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        if not records:
            return
        if self._handle is None:
            self._handle = self._part.open("a", encoding="utf-8")
        for record in records:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.records[record["prompt_id"]] = record
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> GenerationCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CheckpointedGenerator:
    """Base of every generation backend, for `Dataset.map(batched=True)`: a row the checkpoint already
    answered is reused as it is; only the others go to `generate_rows`, which writes each record to the
    checkpoint as soon as it is finished (so a killed run never pays for it twice)."""

    def __init__(self, teacher: Any, checkpoint: GenerationCheckpoint, stats: Any):
        self.teacher, self.checkpoint, self.stats = teacher, checkpoint, stats

    def generate_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records (`prompt_id` + RECORD_FIELDS) of `rows`, each checkpointed once finished."""
        raise NotImplementedError

    def reused(self, count: int) -> None:
        """Hook: `count` rows of this batch came from the checkpoint (progress bars count them)."""

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        records: dict[str, dict[str, Any]] = {}
        todo = []
        for row in rows:
            done = self.checkpoint.done(row["prompt_id"])
            if done is None:
                todo.append(row)
            else:
                records[row["prompt_id"]] = done
                self.stats.reused += 1
        self.reused(len(rows) - len(todo))
        if todo:
            records.update({record["prompt_id"]: record for record in self.generate_rows(todo)})
        out: dict[str, list] = {"teacher": [self.teacher.name] * len(rows)}
        for key in RECORD_FIELDS:
            out[key] = [records[row["prompt_id"]].get(key) for row in rows]
        return out
