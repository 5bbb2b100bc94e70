"""Row-level checkpoints for generation, so a killed run never pays for a finished request twice.

Each process of a generation stage appends finished rows to its own JSONL part file inside the
teacher's checkpoint directory (one writer per file, flushed and fsynced per batch). Every part is read
back once per process and stage (`checkpoint_index.py`); a torn last line from a crash is ignored. Rows
whose last record has an `error` are generated again; rows with a response are reused as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Value

from persyn_hub.generation.checkpoint_index import open_index
from persyn_hub.progress import advance

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
    """One generation call's view of a teacher's row checkpoint: the rows finished so far and the
    writer for new ones. Within a stage's chunks (`held_checkpoints`) every view shares one index, so
    the folder is read once per process and stage; outside, each view reads it whole."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.index, self.corrupt_lines, self._held = open_index(self.directory)
        """`corrupt_lines`: lines that could not be read by this open (reported, rows generated again)."""

    @property
    def records(self) -> dict[str, dict[str, Any]]:
        return self.index.records

    def done(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished record of a row, or None when it must be (re)generated."""
        record = self.index.records.get(prompt_id)
        if record is None or record.get("error"):
            return None
        return record

    def failed_ids(self) -> list[str]:
        return [key for key, record in self.index.records.items() if record.get("error")]

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        advance()  # finished rows, whatever the backend: a launch's liveness counts them as progress
        self.index.append(records)

    def close(self) -> None:
        if not self._held:  # a held index stays open for the stage's next chunk
            self.index.close()

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
        advance()  # a batch started: its rows may all come from the checkpoint
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
