"""`persyn run`: the whole PerSyn pipeline, Route then Generate, as the list of stages in `pipeline/stages.py`.

    persyn run recipes/demo/task-mix-smollm2.yaml [--key value ...] [--retry-failed]
    accelerate launch --multi_gpu --num_processes 8 -m persyn_hub.cli run RECIPE    # one process per GPU
    torchrun --nproc_per_node 8 -m persyn_hub.cli run RECIPE                        # the same, plain torch

Every stage's output is saved under `output.dir/stages/`, keyed by what changes it (its identity and
its inputs' content), so a re-run reuses finished stages and a crashed generation resumes from its
row checkpoints. One writer per output directory; the run log, summary and card are written here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datasets import Dataset

from persyn_hub.errors import PersynError
from persyn_hub.pipeline.cache import StageCache
from persyn_hub.pipeline.launch import Launch, LaunchError, connect
from persyn_hub.pipeline.outputs import run_outputs
from persyn_hub.pipeline.run_lock import HOST, RunLockedError, run_lock
from persyn_hub.pipeline.runner import Stage, StageRunner
from persyn_hub.pipeline.shared_dir import check_shared_dir
from persyn_hub.pipeline.stage_names import ASSEMBLE
from persyn_hub.pipeline.stages import persyn_stages
from persyn_hub.pipeline.summary import build_summary, package_versions
from persyn_hub.progress import enter_stage
from persyn_hub.publish.finished import add_traffic, publish_finished_run, wants_publish, write_summary
from persyn_hub.publish.mirror.stage_mirror import StageMirror
from persyn_hub.recipe.config import PersynRecipe

logger = logging.getLogger("persyn_hub")


@contextmanager
def run_log(run_dir: Path, launch: Launch | None = None) -> Iterator[None]:
    """`run.log` (the main process), `run.rank-<i>.log` (the others): a timeline that travels with the data."""
    launch = launch or Launch()
    name = "run.log" if launch.main else f"run.rank-{launch.index}.log"
    handler = logging.FileHandler(run_dir / name, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def run_pipeline(
    recipe: PersynRecipe,
    *,
    retry_failed: bool = False,
    then: Callable[[StageRunner], list[Stage]] | None = None,
    break_lock: bool = False,
) -> dict[str, Any]:
    """Run a recipe end to end and return (and write) its summary.

    `retry_failed`: ask the rows whose generation failed in an earlier run again (otherwise a finished
    stage, failed rows included, is reused as it is). `then(runner)`: stages to run after the run's own,
    on its runner and under its lock and log (`persyn compare` labels the routed prompts so).
    `break_lock`: take the run lock over from a holder that is not a live process of this host
    (`pipeline/run_lock.py`). Under a launch, any failure of this process, wherever it happens, is written
    to the launch's abort key, so the other processes stop at once with its line."""
    started = time.perf_counter()
    run_dir = Path(recipe.output.dir)
    for key, value in recipe.env.items():
        os.environ[key] = str(value)
    launch = connect(recipe.launch.timeout, recipe.launch.stall_timeout)
    try:
        if launch.main:  # the others must find rank 0's folder, not make one of their own
            run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(run_dir, launch, break_lock=break_lock):
            check_shared_dir(run_dir, launch)
            with run_log(run_dir, launch):
                summary, runner = _run(recipe, run_dir, started, retry_failed, launch)
                for stage in then(runner) if then else ():
                    runner.run(stage)
                launch.finish()
                return summary
    except BaseException as error:
        launch.abort(failure_line(launch, error))  # the first line written stays: the root cause
        raise
    finally:
        launch.stop_heartbeat()


def failure_line(launch: Launch, error: BaseException) -> str:
    """One line for the launch's abort key: which rank, on which host, failed how."""
    if isinstance(error, LaunchError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return f"rank {launch.index} on host {HOST} was interrupted. Run the same command again to resume."
    text = str(error).splitlines()[0][:300] if str(error).strip() else ""
    return f"rank {launch.index} on host {HOST} failed: {type(error).__name__}: {text}"


def _run(
    recipe: PersynRecipe, run_dir: Path, started: float, retry_failed: bool, launch: Launch
) -> tuple[dict[str, Any], StageRunner]:
    if launch.main:
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    logger.info(
        "PerSyn run %r: teachers %s, student %s%s",
        recipe.name,
        recipe.teacher_names(),
        recipe.student.model,
        f" (process {launch.index + 1} of {launch.count}, launch {launch.id})" if launch.count > 1 else "",
    )
    runner = StageRunner(
        StageCache(run_dir), retry_failed=retry_failed, launch=launch, chunk_rows=recipe.launch.chunk_rows
    )
    api = hub_client(recipe) if launch.main else None
    try:
        runner.mirror = stage_mirror(recipe, run_dir, api) if launch.main else None
    except PersynError as error:  # e.g. a --resume-from-hub repo that cannot be read: before any stage
        launch.abort(str(error))
        raise
    try:
        for stage in persyn_stages(recipe, runner):
            runner.run(stage)
    finally:
        hub_stages = runner.mirror.finish() if runner.mirror is not None else None
        runner.mirror = None
    if not launch.main:  # summary, cards and publishing happen once, on the main process
        return {"rank": launch.index, "output_dir": str(run_dir)}, runner
    enter_stage("summary and publishing")  # what a stall of the main process names from here on
    if recipe.routing.reuse_router:
        shutil.rmtree(run_dir / "artifacts" / "router", ignore_errors=True)  # not this run's router

    summary = build_summary(
        recipe=recipe,
        run_dir=run_dir,
        outputs=run_outputs(recipe, runner),
        stages=runner.summary(),
        seconds=time.perf_counter() - started,
        versions=package_versions(),
    )
    write_local_card(runner.outputs[ASSEMBLE], recipe, summary, run_dir)

    if hub_stages is not None:
        summary["hub"] = {"stages": hub_stages}
    if hub_stages is not None or wants_publish(recipe):
        add_traffic(summary, getattr(api, "traffic", None))
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    write_summary(run_dir, summary)  # before the final publish: a failed publish leaves a finished run
    if wants_publish(recipe):
        summary = publish_finished_run(run_dir, recipe, summary, api=api)
    logger.info("Finished in %.1f s: %d rows in %s", summary["wall_seconds"], summary["rows"], run_dir)
    return summary, runner


def hub_client(recipe: PersynRecipe) -> Any:
    """The Hub client of a run's pushes (retries past rate limits, counts commits and bytes), or None when
    the recipe pushes nothing."""

    hub = recipe.output.hub
    if not (wants_publish(recipe) or hub.stages or hub.stages_repo or hub.resume_from):
        return None
    # lazy: publish.client loads huggingface_hub, which this module otherwise does not
    from persyn_hub.publish.client import HubClient, HubTraffic

    return HubClient(traffic=HubTraffic())


def stage_mirror(recipe: PersynRecipe, run_dir: Path, api: Any = None) -> Any:
    """The Hub copy of the run's stages (`output.hub.stages`, `stages_repo`, `resume_from`), started; None
    when the recipe publishes no stages. See `persyn_hub/publish/mirror/stage_mirror.py`."""

    mirror = StageMirror.for_recipe(recipe, run_dir, api)
    return mirror.start() if mirror is not None else None


def write_local_card(final: Dataset, recipe: PersynRecipe, summary: dict[str, Any], run_dir: Path) -> None:
    """A local copy of the data set card, so an unpublished run documents itself too."""
    # lazy: publish.cards loads huggingface_hub, which this module otherwise does not
    from persyn_hub.publish.cards import comparison_card_section, render_dataset_card

    card = render_dataset_card(
        recipe=recipe, summary=summary, dataset=final, comparison=comparison_card_section(run_dir)
    )
    (run_dir / "artifacts" / "dataset" / "README.md").write_text(str(card), encoding="utf-8")


__all__ = [
    "RunLockedError",
    "failure_line",
    "hub_client",
    "run_lock",
    "run_pipeline",
    "stage_mirror",
    "write_local_card",
]
