"""A declared stage and the runner that derives its cache key and runs it through the stage cache.

A `Stage` names its inputs (earlier stages) and its identity (the recipe fields and model identities
that change its output, see `persyn_hub.pipeline.identity`). Its cache key is derived, never written by hand:
the stage name, its identity and the CONTENT digests of its inputs. So a changed field recomputes the
stage that declares it; a stage whose input data changed (a failed row answered on `--retry-failed`)
recomputes; a stage whose inputs came out the same is reused. PerSyn's own stages are in `pipeline/stages.py`.

Under a launch of several processes (see `pipeline/launch.py`) the main process decides, for every stage,
whether it is finished or must run, and tells the others. A `main` stage runs on the main process while
the others wait. A `chunks` stage maps over rows that every process can build; they are cut into
chunks that depend only on the rows (`launch.chunk_rows` rows, a `chunk_by` group kept whole), never
on the process count. One process computes every chunk; N processes claim chunks from a counter in the
launch's store. Each chunk is computed as if it were the whole input, so its batches (and therefore
its bf16 numerics) are the same whichever process computes it, and the joined stage equals the
1-process stage row for row. A finished chunk is saved with a marker naming its rows; a resumed launch
with any process count reuses the chunks whose rows match and computes the rest (`pipeline/chunks.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset

from persyn_hub.errors import require_columns
from persyn_hub.folders import save_dataset_folder, write_folder_whole
from persyn_hub.generation.checkpoint_index import held_checkpoints
from persyn_hub.generation.engines import release_engines
from persyn_hub.pipeline.cache import StageCache
from persyn_hub.pipeline.chunks import (
    CHUNKS,
    DEFAULT_CHUNK_ROWS,
    Chunk,
    chunk_is_done,
    chunk_marker,
    join_chunks,
    plan_chunks,
)
from persyn_hub.pipeline.launch import Launch, LaunchError
from persyn_hub.progress import advance, enter_stage

logger = logging.getLogger("persyn_hub")


@dataclass
class StageContext:
    """What a stage's `compute` sees: its inputs' outputs by stage name, its folder, the run's options."""

    outputs: dict[str, Any]
    folder: Path
    cache: StageCache
    retry_failed: bool = False
    rows: Dataset | None = None
    """For a `chunks` stage: the rows of the chunk being computed."""
    chunk: Chunk | None = None

    def side_file(self, name: str) -> Path:
        """Where a stage writes a file beside its data set (`stats.json`): one per chunk when chunked,
        so a resumed chunk overwrites its own and the chunks of a later plan never mix with stale ones."""
        if self.chunk is None:
            return self.folder / name
        stem, dot, suffix = name.rpartition(".")
        return self.folder / f"{stem or suffix}.chunk-{self.chunk.name}{dot}{suffix if stem else ''}"

    def __getitem__(self, name: str) -> Any:
        return self.outputs[name]


@dataclass(frozen=True)
class Stage:
    """One step of a run. `compute(context)` returns a `Dataset` (or, with `folder=True`, writes into
    `context.folder`); `check(context)` runs every time, cached or not (preflight checks)."""

    name: str
    compute: Callable[[StageContext], Any]
    inputs: tuple[str, ...] = ()
    identity: Any = None
    folder: bool = False
    export: str | None = None
    """Copy the output to `artifacts/<export>` (swapped in whole)."""
    check: Callable[[StageContext], None] | None = None
    rerun_failed: bool = False
    """A generation stage: with `--retry-failed`, a finished output with failed rows is computed again."""
    parallel: Literal["main", "chunks"] = "main"
    """`main`: the main process computes, the others wait. `chunks`: `compute` maps `context.rows`, one
    chunk at a time, in every process (see the module docstring); the output has one row per row."""
    rows: Callable[[StageContext], Dataset] | None = None
    """For `chunks`: the rows the stage maps over (every process builds the same)."""
    chunk_by: str | None = None
    """For `chunks`: rows sharing this column's value stay in one chunk (a prompt's answers: one prefix)."""
    works_here: Callable[[], bool] | None = None
    """For `chunks`: False where this process takes no chunk (a vLLM group led by another process)."""
    reads: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Columns it reads, by input stage: checked before it computes (one line naming both stages)."""
    adds: Sequence[str] = ()
    """Columns its output must hold: checked after it computes."""


def check_reads(stage: Stage, inputs: Mapping[str, Any]) -> None:
    """Every column `stage` declares it reads is in the input that should have made it (one line naming
    the stage, the column and that input), before anything is computed."""
    for name, columns in stage.reads.items():
        if name not in stage.inputs:
            raise RuntimeError(
                f"stage {stage.name}: reads columns of {name!r}, which is not one of its inputs"
            )
        if isinstance(inputs[name], Dataset):
            require_columns(
                inputs[name],
                columns,
                reader=f"stage {stage.name}",
                source=f"the output of stage {name}",
                fix=f"Stage {name} should have added it; an output cached by another version may lack it: "
                f"delete stages/{name.replace('/', '--')}-* and run again.",
            )


@dataclass(frozen=True)
class Decision:
    """The main process's word on a stage, which every process follows."""

    done: bool
    retry: bool


@dataclass
class StageRunner:
    """Runs declared stages in order through the stage cache; keeps outputs, keys and content digests."""

    cache: StageCache
    retry_failed: bool = False
    launch: Launch = field(default_factory=Launch)
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    outputs: dict[str, Any] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    steps: int = 0
    mirror: Any = None
    """A copy of finished stages elsewhere (`publish.mirror.stage_mirror.StageMirror`, the Hub), main process only:
    `restore(stage, key, folder, inputs)` before deciding on a stage not on disk, `publish(...)` once it is."""

    def key(self, stage: Stage) -> str:
        missing = [name for name in stage.inputs if name not in self.digests]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} reads {missing}, which have not run yet")
        return self.cache.key(stage.name, stage.identity, [self.digests[name] for name in stage.inputs])

    def run(self, stage: Stage) -> Any:
        key = self.key(stage)
        self.steps += 1
        enter_stage(stage.name)  # what a stall names (pipeline/liveness.py)
        step = f"{self.steps:03d}-{stage.name}"
        context = StageContext(
            {name: self.outputs[name] for name in stage.inputs},
            self.cache.folder(stage.name, key),
            self.cache,
            self.retry_failed,
        )
        try:
            if self.mirror is not None and self.launch.main and not self.cache.is_done(stage.name, key):
                self.mirror.restore(stage, key, context.folder, self._inputs(stage))
            decision = self._decide(stage, key, step)
            if not decision.done:
                check_reads(stage, context.outputs)
            joined = None
            if not decision.done and stage.parallel == "chunks":
                joined = self._compute_chunks(stage, key, context, step)
            if self.launch.main:  # computes a `main` stage; loads (and records) a finished one
                self.outputs[stage.name] = (
                    joined if joined is not None else self._compute(stage, key, context)
                )
            if self.launch.main and stage.adds and isinstance(self.outputs[stage.name], Dataset):
                require_columns(
                    self.outputs[stage.name],
                    stage.adds,
                    reader=f"stage {stage.name}",
                    source="its own output",
                    fix=f"The stage declares these columns; delete {context.folder} and run again.",
                )
            if stage.check is not None and self.launch.main:
                stage.check(context)  # before the others go on: a failed check spends nothing more
            self._finish(step, stage.name)
            if not self.launch.main:  # inside the guard: a rank that cannot load it stops the others
                self.outputs[stage.name] = self.cache.load_finished(
                    stage.name, key, folder_output=stage.folder
                )
            output = self.outputs[stage.name]
            self.keys[stage.name] = key
            self.digests[stage.name] = self.cache.output_digest(stage.name, key)
            self.cached[stage.name] = decision.done
            if self.mirror is not None and self.launch.main:
                self.mirror.publish(stage, key, context.folder, self._inputs(stage))
            if stage.export and self.launch.main:
                export(output, self.cache.root / "artifacts" / stage.export)
        except LaunchError:
            raise
        except BaseException as error:
            self.launch.abort(
                f"stage {stage.name}: rank {self.launch.index} failed: {type(error).__name__}: "
                f"{str(error).splitlines()[0][:300] if str(error) else ''}"
            )
            raise
        return output

    def _inputs(self, stage: Stage) -> dict[str, dict[str, str]]:
        """The keys and content digests of a stage's inputs (what a mirror records beside its output)."""
        return {name: {"key": self.keys.get(name, ""), "digest": self.digests[name]} for name in stage.inputs}

    def _decide(self, stage: Stage, key: str, step: str) -> Decision:
        """The main process looks at the cache (and forgets a stage to retry); the others take its word,
        so every process follows one decision even where a shared filesystem shows files late."""
        if not self.launch.main:
            word = json.loads(self.launch.wait_for(f"{step}/decision", stage=stage.name, ranks=[0]))
            return Decision(**word)
        done = self.cache.is_done(stage.name, key)
        retry = (
            stage.rerun_failed and self.retry_failed and done and self.cache.failed_rows(stage.name, key) > 0
        )
        if retry:
            self.cache.forget(stage.name, key)
        decision = Decision(done=done and not retry, retry=retry)
        self.launch.signal(f"{step}/decision", json.dumps(dataclasses.asdict(decision)))
        return decision

    def _finish(self, step: str, name: str) -> None:
        """The main process says the stage is on disk; the others wait for that word."""
        if self.launch.count == 1:
            return
        if self.launch.main:
            self.launch.signal(f"{step}/finished")
        else:
            self.launch.wait_for(f"{step}/finished", stage=name, ranks=[0])

    def _compute(self, stage: Stage, key: str, context: StageContext) -> Any:
        """Compute the whole stage in this process, or load it when it is finished."""
        if stage.folder:
            return self.cache.folder_stage(
                stage.name, key, lambda folder: stage.compute(dataclasses.replace(context, folder=folder))
            )
        return self.cache.dataset_stage(stage.name, key, lambda _: stage.compute(context))

    # -- chunked stages ------------------------------------------------------------------------------

    def _compute_chunks(self, stage: Stage, key: str, context: StageContext, step: str) -> Dataset | None:
        """This process's chunks; on the main process, the joined stage (None on the others)."""
        assert stage.rows is not None, f"stage {stage.name}: a `chunks` stage declares its `rows`"
        started = time.perf_counter()
        folder = self.cache.folder(stage.name, key)
        logger.info("stage %s: started (%s)", stage.name, folder)
        rows = stage.rows(context)
        plan = plan_chunks(rows, self.chunk_rows, stage.chunk_by)
        if not plan:  # no rows (a teacher routed no prompt): the stage's empty, typed output
            if not self.launch.main:
                return None
            return self.cache.dataset_stage(
                stage.name,
                key,
                lambda _: stage.compute(dataclasses.replace(context, rows=rows)),
                started=started,
            )
        try:
            if stage.works_here is None or stage.works_here():
                with held_checkpoints():  # a teacher's row checkpoint: read once per stage, not per chunk
                    for chunk in self._claimed(step, plan, stage.name):
                        if chunk_is_done(folder, chunk):
                            continue
                        self._compute_chunk(stage, context, rows, chunk, folder)
        finally:
            release_engines()  # the next stage's model needs the memory
        self.launch.signal(f"{step}/chunks-done/{self.launch.index}")
        if not self.launch.main:
            return None
        for rank in self.launch.others():
            self.launch.wait_for(f"{step}/chunks-done/{rank}", stage=stage.name, ranks=[rank])
        joined = self.cache.dataset_stage(
            stage.name, key, lambda _: join_chunks(folder, plan, len(rows)), started=started
        )
        shutil.rmtree(folder / CHUNKS, ignore_errors=True)
        for stale in folder.glob("*.chunk-*"):  # side files of an earlier plan (another chunk_rows)
            if f"-of-{len(plan):05d}" not in stale.name:
                stale.unlink()
        return joined

    def _claimed(self, step: str, plan: list[Chunk], name: str) -> Iterator[Chunk]:
        """The chunks this process computes: all of them alone; under a launch, those it claims first."""
        if self.launch.count == 1:
            yield from plan
            return
        while True:
            try:
                index = self.launch.claim(f"{step}/claim")
            except Exception as error:  # noqa: BLE001 - the store's host is gone
                raise LaunchError(
                    f"stage {name}: rank {self.launch.index} cannot reach the launch's rendezvous store "
                    f"({type(error).__name__}); rank 0 died. Finished chunks are kept: run again to resume."
                ) from error
            if index >= len(plan):
                return
            yield plan[index]

    def _compute_chunk(
        self, stage: Stage, context: StageContext, rows: Dataset, chunk: Chunk, folder: Path
    ) -> None:
        started = time.perf_counter()
        logger.info(
            "stage %s: rank %d computes chunk %d of %d (%d rows)",
            stage.name, self.launch.index, chunk.index + 1, chunk.count, len(chunk.indices),
        )  # fmt: skip
        chunk_context = dataclasses.replace(context, rows=rows.select(chunk.indices), chunk=chunk)
        advance()
        result = stage.compute(chunk_context)
        advance()
        if len(result) != len(chunk.indices):
            raise RuntimeError(
                f"stage {stage.name}: chunk {chunk.name} gave {len(result)} rows for {len(chunk.indices)}"
            )
        save_dataset_folder(result, folder / CHUNKS / chunk.name)
        marker = {
            "index": chunk.index,
            "count": chunk.count,
            "rows": len(chunk.indices),
            "rows_digest": chunk.rows_digest,
            "processes": self.launch.count,
            "rank": self.launch.index,
            "seconds": round(time.perf_counter() - started, 2),
        }
        path = chunk_marker(folder, chunk)
        path.with_suffix(".partial").write_text(json.dumps(marker))
        os.replace(path.with_suffix(".partial"), path)

    def summary(self) -> list[dict[str, Any]]:
        return self.cache.summary()


def export(output: Any, path: Path) -> None:
    """Copy a stage's output to `artifacts/`, swapped in whole so readers never see half of it."""
    if isinstance(output, Path):
        write_folder_whole(path, lambda staging: shutil.copytree(output, staging))
    else:
        save_dataset_folder(output, path)
