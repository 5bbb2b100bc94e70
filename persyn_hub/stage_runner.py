"""A declared stage and the runner that derives its cache key and runs it through the stage cache.

A `Stage` names its inputs (earlier stages) and its identity (the recipe fields and model identities
that change its output, see `persyn_hub.identity`). Its cache key is derived, never written by hand:
the stage name, its identity and the CONTENT digests of its inputs. So a changed field recomputes the
stage that declares it; a stage whose input data changed (a failed row answered on `--retry-failed`)
recomputes; a stage whose inputs came out the same is reused. PerSyn's own stages are in `stages.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from persyn_hub.stage_cache import StageCache, load_dataset_folder, save_dataset_folder, write_folder_whole

logger = logging.getLogger("persyn_hub")

SHARD_DONE = "_SHARD_DONE"


@dataclass(frozen=True)
class Ranks:
    """This process's place in a launch (`accelerate launch`, `torchrun`, Slurm): rank `index` of `count`.

    Processes coordinate through the stage cache on a shared filesystem, not through collectives: a
    stage that runs for hours on the main process (endpoint generation, router training) cannot time
    out the others, and a rank killed mid-stage leaves its finished rows and shards for the resume.
    """

    index: int = 0
    count: int = 1
    launch: str = ""
    """Identifies this launch (torchrun's run id, else the rendezvous port): what "finished in this
    launch" markers are named by, so a marker left by an earlier launch is never waited on by mistake."""

    @property
    def main(self) -> bool:
        return self.index == 0


LAUNCH_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
)  # fmt: skip


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Run a block as if this were the only process (the main process training the router alone):
    without the launch variables, the Trainer does not wait for processes that are not training."""
    saved = {name: os.environ.pop(name) for name in LAUNCH_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def launch_ranks() -> Ranks:
    """From the launcher's environment (`RANK` / `WORLD_SIZE`, set by accelerate launch and torchrun).

    The launch id is drawn by rank 0 and handed to the others in ONE broadcast at start-up (gloo, then
    the group is closed): the launchers' own run ids are "none" and their ports fixed, so they cannot tell
    this launch's "finished" markers from an earlier launch's. No collective is used after that.
    """
    index, count = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if count == 1:
        return Ranks()
    import uuid

    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo", init_method="env://")
    box = [uuid.uuid4().hex[:12] if index == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if created:
        dist.destroy_process_group()
    return Ranks(index, count, str(box[0]))


@dataclass
class StageContext:
    """What a stage's `compute` sees: its inputs' outputs by stage name, its folder, the run's options."""

    outputs: dict[str, Any]
    folder: Path
    cache: StageCache
    retry_failed: bool = False
    shard: tuple[int, int] | None = None
    """(index, count) when this process computes only its contiguous part of a `shards` stage."""

    def my_rows(self, dataset: Any) -> Any:
        """The rows this process computes: all of them, or its contiguous shard."""
        if self.shard is None:
            return dataset
        index, count = self.shard
        return dataset.shard(num_shards=count, index=index, contiguous=True)

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
    parallel: Literal["main", "shards"] = "main"
    """Under a launch with several processes: `shards` = every process computes its contiguous part
    (`context.my_rows`) and the main process joins them in order; `main` = the main process computes,
    the others wait for the result."""


@dataclass
class StageRunner:
    """Runs declared stages in order through the stage cache; keeps outputs, keys and content digests."""

    cache: StageCache
    retry_failed: bool = False
    ranks: Ranks = field(default_factory=Ranks)
    poll_seconds: float = 0.5
    outputs: dict[str, Any] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)

    def key(self, stage: Stage) -> str:
        missing = [name for name in stage.inputs if name not in self.digests]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} reads {missing}, which have not run yet")
        return self.cache.key(stage.name, stage.identity, [self.digests[name] for name in stage.inputs])

    def run(self, stage: Stage) -> Any:
        key = self.key(stage)
        context = StageContext(
            {name: self.outputs[name] for name in stage.inputs},
            self.cache.folder(stage.name, key),
            self.cache,
            self.retry_failed,
        )
        retry = (
            stage.rerun_failed
            and self.retry_failed
            and self.cache.is_done(stage.name, key)
            and self.cache.failed_rows(stage.name, key) > 0
        )
        done_before = self.cache.is_done(stage.name, key) and not retry
        if self.ranks.count > 1 and not done_before:
            self._run_launched(stage, key, context, retry)
            output = self.cache.load_finished(stage.name, key, folder_output=stage.folder)
        else:
            output = self._compute(stage, key, context, retry)
        self.outputs[stage.name] = output
        self.keys[stage.name] = key
        self.digests[stage.name] = self.cache.output_digest(stage.name, key)
        self.cached[stage.name] = done_before
        if stage.export and self.ranks.main:
            export(output, self.cache.root / "artifacts" / stage.export)
        if stage.check is not None and self.ranks.main:
            stage.check(context)
        return output

    def _compute(self, stage: Stage, key: str, context: StageContext, retry: bool) -> Any:
        """Compute the whole stage in this process (or reuse it), after forgetting it for a retry."""
        if retry:
            self.cache.forget(stage.name, key)
        if stage.folder:
            return self.cache.folder_stage(
                stage.name, key, lambda folder: stage.compute(dataclasses.replace(context, folder=folder))
            )
        return self.cache.dataset_stage(stage.name, key, lambda _: stage.compute(context))

    def summary(self) -> list[dict[str, Any]]:
        return self.cache.summary()

    def _run_launched(self, stage: Stage, key: str, context: StageContext, retry: bool) -> None:
        """Several processes: finish the stage on disk (this rank's part, then the join or the wait)."""
        folder = self.cache.folder(stage.name, key)
        finished = folder / f"_LAUNCH_DONE-{self.ranks.launch}"
        if stage.parallel == "shards" and not stage.folder:
            part = folder / "shards" / f"rank-{self.ranks.index}"
            if not (part / SHARD_DONE).is_file():  # a shard finished before a kill is kept
                logger.info(
                    "stage %s: rank %d/%d computes its shard", stage.name, self.ranks.index, self.ranks.count
                )
                result = stage.compute(
                    dataclasses.replace(context, shard=(self.ranks.index, self.ranks.count))
                )
                save_dataset_folder(result, part)
                (part / SHARD_DONE).write_text(json.dumps({"rows": len(result)}))
            if self.ranks.main:
                parts = [folder / "shards" / f"rank-{i}" for i in range(self.ranks.count)]
                self._wait(stage.name, lambda: all((p / SHARD_DONE).is_file() for p in parts))
                from datasets import concatenate_datasets

                joined = concatenate_datasets([load_dataset_folder(p) for p in parts])
                if retry:
                    self.cache.forget(stage.name, key)
                self.cache.dataset_stage(stage.name, key, lambda _: joined)
                shutil.rmtree(folder / "shards", ignore_errors=True)
        elif self.ranks.main:
            self._compute(stage, key, context, retry)
        if self.ranks.main:
            finished.write_text("done")
        else:
            self._wait(stage.name, finished.is_file)

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        started = time.monotonic()
        announced = False
        while not ready():
            if not announced and time.monotonic() - started > 5:
                logger.info("stage %s: rank %d waits for the other processes", name, self.ranks.index)
                announced = True
            time.sleep(self.poll_seconds)


def export(output: Any, path: Path) -> None:
    """Copy a stage's output to `artifacts/`, swapped in whole so readers never see half of it."""
    if isinstance(output, Path):
        write_folder_whole(path, lambda staging: shutil.copytree(output, staging))
    else:
        save_dataset_folder(output, path)
