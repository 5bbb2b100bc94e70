"""Row checkpoint reads of a sharded generation stage: held index (read once per stage) vs re-read per chunk.

A local teacher's generation stage is cut into chunks of `launch.chunk_rows` rows that the processes of a
launch claim one by one; each chunk opens the teacher's row checkpoint. Before, every open read every
part file whole, so a process re-read the checkpoint at each chunk: lines parsed per generated row grew
with the prompt count (about chunks / 2). Now the runner holds one index per stage and process
(`held_checkpoints`), and each chunk reads only the lines the other processes appended since.

Simulated launch: N processes (spawned) claim chunks from a shared counter, as ranks claim them from the
launch's store; each chunk opens `GenerationCheckpoint` as `generate_responses` does and runs a
`CheckpointedGenerator` (the base of every backend) whose teacher answers instantly, so each finished
batch is appended to the process's part file through the real checkpoint API. "held" wraps the chunk
loop in `held_checkpoints()` as `StageRunner` does; "re-read" does not (the old behaviour: a fresh read
of every part file per chunk). Both modes run in the same invocation.
Last line: `parsed_per_row held=<smallest>..<largest> reread=<smallest>..<largest>` over the prompt counts.

Run:
  python benchmarks/bench_checkpoint_index.py --prompts 5000,50000 --processes 4 --chunk-rows 256
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # run from a checkout, installed or not

from persyn_hub.generation.checkpoint import CheckpointedGenerator, GenerationCheckpoint  # noqa: E402
from persyn_hub.generation.checkpoint_index import held_checkpoints  # noqa: E402
from persyn_hub.generation.stats import GenerationStats  # noqa: E402

BATCH = 64
"""Rows per `Dataset.map` batch, each batch's answers appended together (as the local backends do)."""


class InstantTeacher(CheckpointedGenerator):
    """A teacher that answers at once: what is left is the checkpoint's own cost."""

    def __init__(self, checkpoint: GenerationCheckpoint, response_chars: int):
        teacher = argparse.Namespace(name="bench")
        super().__init__(teacher, checkpoint, GenerationStats("bench"))
        self.response = "x" * response_chars

    def generate_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records = [
            {"prompt_id": row["prompt_id"], "response": self.response, "finish_reason": "stop",
             "num_tokens": 64, "num_prompt_tokens": 32, "error": None}
            for row in rows
        ]  # fmt: skip
        self.checkpoint.write(records)
        return records


def rank(folder: str, prompts: int, chunk_rows: int, held: bool, response_chars: int, counter, out) -> None:
    """One process of the launch: claim chunks until none is left; report lines parsed and rows made."""
    indexes, generated = {}, 0  # every index this process read through: one when held, one per chunk if not
    chunks = -(-prompts // chunk_rows)
    with held_checkpoints() if held else contextlib.nullcontext():
        while True:
            with counter.get_lock():
                index, counter.value = counter.value, counter.value + 1
            if index >= chunks:
                break
            ids = [f"p{i}" for i in range(index * chunk_rows, min(prompts, (index + 1) * chunk_rows))]
            with GenerationCheckpoint(folder) as checkpoint:
                indexes[id(checkpoint.index)] = checkpoint.index
                generator = InstantTeacher(checkpoint, response_chars)
                for start in range(0, len(ids), BATCH):
                    generator({"prompt_id": ids[start : start + BATCH]})
                generated += len(ids)
    parsed = sum(index.lines_read for index in indexes.values())
    out.put((parsed, generated))


def launch(prompts: int, processes: int, chunk_rows: int, held: bool, response_chars: int) -> dict:
    context = multiprocessing.get_context("spawn")
    counter, out = context.Value("i", 0), context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        ranks = [
            context.Process(
                target=rank, args=(folder, prompts, chunk_rows, held, response_chars, counter, out)
            )
            for _ in range(processes)
        ]
        for process in ranks:
            process.start()
        results = [out.get() for _ in ranks]
        for process in ranks:
            process.join()
        seconds = time.perf_counter() - started
        if any(process.exitcode for process in ranks):
            raise RuntimeError("a rank failed")
        with GenerationCheckpoint(folder) as check:  # every row made once, none lost
            if len(check.records) != prompts or sum(g for _, g in results) != prompts:
                raise RuntimeError(f"{len(check.records)} rows in the checkpoint for {prompts} prompts")
    parsed = sum(p for p, _ in results)
    return {"parsed": parsed, "per_row": parsed / prompts, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", default="5000,50000", help="comma-separated prompt counts")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--chunk-rows", type=int, default=256, help="launch.chunk_rows (its default)")
    parser.add_argument("--response-chars", type=int, default=200)
    args = parser.parse_args()
    counts = [int(n) for n in args.prompts.split(",")]
    print(
        f"{args.processes} processes, chunks of {args.chunk_rows} rows, {args.response_chars}-char answers; "
        "lines parsed from the checkpoint per generated row (all processes), wall time; held is bounded "
        f"by {args.processes - 1} (each process reads the others' rows once)"
    )
    print(f"  {'prompts':>8} {'chunks':>7} {'held':>18} {'re-read per chunk':>22}")
    ratios: dict[str, list[float]] = {"held": [], "reread": []}
    for prompts in counts:
        held = launch(prompts, args.processes, args.chunk_rows, True, args.response_chars)
        reread = launch(prompts, args.processes, args.chunk_rows, False, args.response_chars)
        ratios["held"].append(held["per_row"])
        ratios["reread"].append(reread["per_row"])
        print(
            f"  {prompts:>8} {-(-prompts // args.chunk_rows):>7} "
            f"{held['per_row']:>8.2f} ({held['seconds']:5.1f} s) "
            f"{reread['per_row']:>11.2f} ({reread['seconds']:6.1f} s)"
        )
    print(
        f"parsed_per_row held={min(ratios['held']):.2f}..{max(ratios['held']):.2f} "
        f"reread={min(ratios['reread']):.2f}..{max(ratios['reread']):.2f}"
    )


if __name__ == "__main__":
    main()
