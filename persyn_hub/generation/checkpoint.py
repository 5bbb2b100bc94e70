"""Row-level checkpoints for generation, so a killed run never pays for a finished request twice.

Each run of a generation stage appends finished rows to its own JSONL part file inside the stage's
checkpoint directory (one writer per file, flushed and fsynced per batch). On resume every part is
read back; a torn last line from a crash is ignored. Rows whose last record has an `error` are
generated again; rows with a response are reused as they are.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RECORD_FIELDS = ("response", "finish_reason", "num_tokens", "num_prompt_tokens", "error")


class GenerationCheckpoint:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        for part in sorted(self.directory.glob("part-*.jsonl")):
            self._read_part(part)
        self._part = self.directory / f"part-{time.time_ns()}-{os.getpid()}.jsonl"
        self._handle = None

    def _read_part(self, part: Path) -> None:
        with part.open("r", encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn write from a crash: the row is simply generated again
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.records[record["prompt_id"]] = record

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
