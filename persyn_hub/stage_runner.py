"""A declared stage and the runner that derives its cache key and runs it through the stage cache.

A `Stage` names its inputs (earlier stages) and its identity (the recipe fields and model identities
that change its output, see `persyn_hub.identity`). Its cache key is derived, never written by hand:
the stage name, its identity and the CONTENT digests of its inputs. So a changed field recomputes the
stage that declares it; a stage whose input data changed (a failed row answered on `--retry-failed`)
recomputes; a stage whose inputs came out the same is reused. PerSyn's own stages are in `stages.py`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persyn_hub.stage_cache import StageCache, save_dataset_folder, write_folder_whole


@dataclass
class StageContext:
    """What a stage's `compute` sees: its inputs' outputs by stage name, its folder, the run's options."""

    outputs: dict[str, Any]
    folder: Path
    cache: StageCache
    retry_failed: bool = False

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


@dataclass
class StageRunner:
    """Runs declared stages in order through the stage cache; keeps outputs, keys and content digests."""

    cache: StageCache
    retry_failed: bool = False
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
        if stage.rerun_failed and self.retry_failed and self.cache.is_done(stage.name, key):
            if self.cache.failed_rows(stage.name, key):
                self.cache.forget(stage.name, key)
        done_before = self.cache.is_done(stage.name, key)
        if stage.folder:
            output = self.cache.folder_stage(
                stage.name, key, lambda folder: stage.compute(dataclasses.replace(context, folder=folder))
            )
        else:
            output = self.cache.dataset_stage(stage.name, key, lambda _: stage.compute(context))
        self.outputs[stage.name] = output
        self.keys[stage.name] = key
        self.digests[stage.name] = self.cache.output_digest(stage.name, key)
        self.cached[stage.name] = done_before
        if stage.export:
            export(output, self.cache.root / "artifacts" / stage.export)
        if stage.check is not None:
            stage.check(context)
        return output

    def summary(self) -> list[dict[str, Any]]:
        return self.cache.summary()


def export(output: Any, path: Path) -> None:
    """Copy a stage's output to `artifacts/`, swapped in whole so readers never see half of it."""
    if isinstance(output, Path):
        write_folder_whole(path, lambda staging: shutil.copytree(output, staging))
    else:
        save_dataset_folder(output, path)
