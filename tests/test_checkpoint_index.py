"""A teacher's row checkpoint is read once per process and stage, and kept current as chunks append.

The runner holds one index per checkpoint folder while it computes a stage's chunks; each chunk's
`GenerationCheckpoint` reads only the complete lines appended since the previous chunk (by other
processes), its own rows go straight into the index, and a line still being written is left for the next
read. `lines_read` counts the lines the index parsed, so a re-read shows up as a count too high.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from datasets import Dataset

from persyn_hub.generation.checkpoint import GenerationCheckpoint
from persyn_hub.generation.checkpoint_index import held_checkpoints
from persyn_hub.pipeline.cache import StageCache
from persyn_hub.pipeline.runner import Stage, StageContext, StageRunner

ROOT = Path(__file__).parents[1]


def record(prompt_id: str, response: str | None = "ok", error: str | None = None) -> dict:
    return {"prompt_id": prompt_id, "response": response, "error": error}


def line(prompt_id: str, **fields) -> str:
    return json.dumps(record(prompt_id, **fields)) + "\n"


def earlier_part(folder: Path, name: str, ids: list[str]) -> Path:
    """A part file another (earlier or concurrent) process wrote."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"part-{name}.jsonl"
    part.write_text("".join(line(i) for i in ids))
    return part


def test_checkpoint_index_reads_each_byte_once_across_a_stages_chunks(tmp_path):
    """Through the runner: 5 chunks of a stage share one index that parsed the earlier rows once."""
    checkpoint_dir = tmp_path / "rows"
    earlier_part(checkpoint_dir, "1-1", [f"old{i}" for i in range(100)])
    seen: list[tuple[int, int]] = []

    def generate(context: StageContext) -> Dataset:
        with GenerationCheckpoint(checkpoint_dir) as checkpoint:
            seen.append((id(checkpoint.index), checkpoint.index.lines_read))
            assert checkpoint.done("old99") is not None
            checkpoint.write(record(i) for i in context.rows["prompt_id"])
        return Dataset.from_dict({"prompt_id": context.rows["prompt_id"]})

    prompts = Dataset.from_dict({"prompt_id": [f"p{i}" for i in range(10)]})
    stage = Stage("generate", generate, identity=1, parallel="chunks", rows=lambda _: prompts)
    StageRunner(StageCache(tmp_path / "run"), chunk_rows=2).run(stage)

    assert len(seen) == 5 and len({index for index, _ in seen}) == 1  # one index for the stage
    assert [lines for _, lines in seen] == [100] * 5  # the earlier part parsed once, own rows never
    with GenerationCheckpoint(checkpoint_dir) as after:  # outside a stage: read whole, afresh
        assert after.index.lines_read == 110 and id(after.index) != seen[0][0]
        assert all(after.done(f"p{i}") for i in range(10))


WRITER = """
import sys
from persyn_hub.generation.checkpoint import GenerationCheckpoint
with GenerationCheckpoint(sys.argv[1]) as checkpoint:
    checkpoint.write({"prompt_id": f"other{i}", "response": "ok", "error": None} for i in range(20))
"""


def test_checkpoint_index_picks_up_lines_another_process_appended_between_chunks(tmp_path):
    earlier_part(tmp_path, "1-1", ["a", "b"])
    with held_checkpoints():
        with GenerationCheckpoint(tmp_path) as first:
            first.write([record("mine")])
        assert first.index.lines_read == 2
        done = subprocess.run(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        with GenerationCheckpoint(tmp_path) as second:
            assert second.index is first.index
            assert all(second.done(f"other{i}") for i in range(20)) and second.done("mine")
            assert second.index.lines_read == 2 + 20  # only the other process's new lines
    assert len(list(tmp_path.glob("part-*.jsonl"))) == 3  # one part per writer, not one per chunk


def test_checkpoint_index_half_written_line_is_read_once_complete_and_not_corrupt(tmp_path, caplog):
    part = earlier_part(tmp_path, "1-2", ["a"])
    whole = (json.dumps(record("b", response="café"), ensure_ascii=False) + "\n").encode()
    cut = whole.index("é".encode()) + 1  # mid-character, as a reader may catch a writer
    with caplog.at_level(logging.WARNING), held_checkpoints():
        with part.open("ab") as writer:  # another writer, caught mid-line
            writer.write(whole[:cut])
        first = GenerationCheckpoint(tmp_path)
        assert first.done("b") is None and first.corrupt_lines == 0
        with part.open("ab") as writer:
            writer.write(whole[cut:] + b"not json\n")
        second = GenerationCheckpoint(tmp_path)
        assert second.done("b") == record("b", response="café")
        assert second.corrupt_lines == 1  # a complete line that does not parse is corrupt
        third = GenerationCheckpoint(tmp_path)
        assert third.corrupt_lines == 0  # ... and reported once, not at every chunk
        assert third.index.lines_read == 3  # "a", the completed "b" once, the corrupt line once
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "1 corrupt line(s) ignored" in warnings[0]
