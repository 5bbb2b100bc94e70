"""`persyn run`: the whole PerSyn pipeline, Route then Generate, as a chain of cached stages.

prompts -> label-generate (every teacher x labeled subset) -> learnability -> quality -> combine
-> router -> route (all prompts) -> generate (each teacher, only its own prompts) -> assemble.
Every stage's output is saved under `output.dir/stages/`, keyed by its inputs and parameters, so a
re-run reuses finished stages and a crashed generation resumes from its row checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets
from filelock import FileLock, Timeout

from persyn_hub.assemble import assemble_dataset, collect_responses
from persyn_hub.assignment import ROUTED
from persyn_hub.config import PersynRecipe, TeacherConfig
from persyn_hub.data import load_prompts
from persyn_hub.errors import PersynError
from persyn_hub.generation import generate_responses
from persyn_hub.preflight import check_before_work, source_identity
from persyn_hub.stage_cache import StageCache, save_dataset_folder, write_folder_whole
from persyn_hub.summary import build_summary, package_versions

logger = logging.getLogger("persyn_hub")


class RunLockedError(PersynError, RuntimeError):
    """Another `persyn run` is writing the same output directory."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One writer per output directory: a second run refuses at once instead of corrupting it."""
    lock = FileLock(str(run_dir / ".persyn.lock"))
    owner = run_dir / ".persyn.lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = owner.read_text().strip() if owner.is_file() else "another process"
        raise RunLockedError(
            f"output.dir {str(run_dir)!r} is in use by {who}. Wait for that run to finish, or set "
            "--output.dir to another directory."
        ) from None
    try:
        owner.write_text(f"persyn run (pid {os.getpid()})")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def generation_identity(teacher: TeacherConfig) -> dict[str, Any]:
    """What changes a teacher's answers; concurrency, timeouts and endpoint URLs do not."""
    return {
        "name": teacher.name,
        "model": teacher.model,
        "served_model_name": teacher.served_model_name,
        "prompt_format": teacher.prompt_format,
        "completion_template": teacher.completion_template if teacher.prompt_format == "completion" else None,
        "few_shot": teacher.few_shot if teacher.prompt_format == "completion" else [],
        "few_shot_separator": teacher.few_shot_separator,
        "generation": teacher.generation,
        "dtype": teacher.dtype,
        "system_prompt": teacher.system_prompt,
        "reference": teacher.response_template if teacher.backend == "reference" else None,
    }


def _generation_stage(
    cache: StageCache,
    name: str,
    key: str,
    prompts: Dataset,
    teacher: TeacherConfig,
    seed: int,
    rows_key: str,
    retry_failed: bool = False,
) -> tuple[Dataset, dict[str, Any]]:
    """Generate `prompts` with `teacher`; rows are checkpointed per teacher, not per stage.

    A row's answer depends on the prompt and the teacher only, so both phases of a teacher share one
    checkpoint (`stages/rows--<teacher>-<rows_key>/`): when a re-run routes differently (new budgets, a
    retried label row) no row a teacher already answered is requested again. A stage whose every row
    was attempted is done, failed rows included (their reasons are data): a prompt longer than the
    context or an empty greedy answer would fail the same way on every run. `retry_failed` asks the
    failed rows again.
    """
    stats_holder: dict[str, Any] = {}
    checkpoint_dir = cache.folder(f"rows/{teacher.name}", rows_key)

    def compute(folder: Path) -> Dataset:
        result, stats = generate_responses(prompts, teacher, checkpoint_dir=checkpoint_dir, seed=seed)
        stats_holder.update(stats.to_dict())
        cache.write_json(name, key, "stats.json", stats_holder)
        return result

    if retry_failed and cache.is_done(name, key) and cache.failed_rows(name, key):
        cache.forget(name, key)
    dataset = cache.dataset_stage(name, key, compute)
    stats = stats_holder or cache.read_json(name, key, "stats.json") or {}
    if not stats_holder:
        stats = {**stats, "requests_this_run": 0}
    else:
        stats["requests_this_run"] = stats.get("requests", 0)
    return dataset, stats


def _export(dataset: Dataset, path: Path) -> None:
    """Copy a stage's output to `artifacts/`, swapping it in whole so readers never see half of it."""
    save_dataset_folder(dataset, path)


def _export_folder(source: Path, path: Path) -> None:
    """Copy a folder stage (the trained router) to `artifacts/`, swapped in whole like the data sets."""
    write_folder_whole(path, lambda staging: shutil.copytree(source, staging))


def run_pipeline(recipe: PersynRecipe, *, retry_failed: bool = False) -> dict[str, Any]:
    """Run a recipe end to end and return (and write) its summary.

    `retry_failed`: ask the rows whose generation failed in an earlier run again (otherwise a finished
    stage, failed rows included, is reused as it is)."""
    started = time.perf_counter()
    run_dir = Path(recipe.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for key, value in recipe.env.items():
        os.environ[key] = str(value)
    with run_lock(run_dir), run_log(run_dir):
        return _run(recipe, run_dir, started, retry_failed)


def _run(recipe: PersynRecipe, run_dir: Path, started: float, retry_failed: bool) -> dict[str, Any]:
    from persyn_hub.assignment import assign_teachers
    from persyn_hub.combine import combine_rewards
    from persyn_hub.learnability import score_learnability
    from persyn_hub.quality import score_quality
    from persyn_hub.router import load_router, router_identity, train_router
    from persyn_hub.selection import select_best

    (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    cache = StageCache(run_dir)
    names = recipe.teacher_names()
    logger.info(
        "PerSyn run %r: %d teachers %s, student %s", recipe.name, len(names), names, recipe.student.model
    )

    prompts_key = cache.key("prompts", recipe.prompts, recipe.seed, source_identity(recipe.prompts))
    prompts = cache.dataset_stage("prompts", prompts_key, lambda _: load_prompts(recipe.prompts, recipe.seed))
    check_before_work(recipe, prompts)

    num_labeled = min(recipe.labeling.num_prompts, len(prompts))
    labeled_prompts = prompts.select(range(num_labeled))
    label_parts, generation_stats = [], {}
    label_keys = []
    rows_keys = {
        teacher.name: cache.key("rows", prompts_key, generation_identity(teacher), recipe.seed)
        for teacher in recipe.teachers
    }
    for teacher in recipe.teachers:
        key = cache.key("label-generate", prompts_key, num_labeled, generation_identity(teacher), recipe.seed)
        label_keys.append(key)
        part, stats = _generation_stage(
            cache,
            f"label-generate/{teacher.name}",
            key,
            labeled_prompts,
            teacher,
            recipe.seed,
            rows_keys[teacher.name],
            retry_failed,
        )
        label_parts.append(part)
        generation_stats.setdefault(teacher.name, []).append({"phase": "labeling", **stats})
    pool = concatenate_datasets(label_parts)

    # Rows still failed are part of the key: once a re-run generates them, scoring, the router and the
    # routing are recomputed with them instead of being reused from the run that lacked them.
    label_failures = sorted(
        f"{teacher}/{prompt_id}"
        for teacher, prompt_id, error in zip(pool["teacher"], pool["prompt_id"], pool["error"])
        if error is not None
    )
    learn_key = cache.key(
        "learnability", label_keys, recipe.student, *([label_failures] if label_failures else [])
    )
    pool = cache.dataset_stage("learnability", learn_key, lambda _: score_learnability(pool, recipe.student))
    quality_key = cache.key("quality", learn_key, recipe.quality)
    pool = cache.dataset_stage("quality", quality_key, lambda _: score_quality(pool, recipe.quality))
    combine_key = cache.key("combine", quality_key, recipe.labeling)
    labels = cache.dataset_stage("combine", combine_key, lambda _: combine_rewards(pool, recipe.labeling))
    _export(labels, run_dir / "artifacts" / "labels")

    router_metrics: dict[str, Any] | None = None
    if recipe.routing.reuse_router:
        source = recipe.routing.reuse_router
        router_key = cache.key("router", source, router_identity(source))
        router_source = source
        shutil.rmtree(run_dir / "artifacts" / "router", ignore_errors=True)  # not this run's router
    else:
        router_key = cache.key("router", combine_key, recipe.router, recipe.seed, names, recipe.student.model)

        def train(folder: Path) -> None:
            result = train_router(
                labels,
                recipe.router,
                teachers=names,
                student=recipe.student.model,
                alpha=recipe.labeling.alpha,
                output_dir=str(folder),
                seed=recipe.seed,
                label_repo=recipe.output.hub.labels_repo,
            )
            (folder / "router_metrics.json").write_text(json.dumps(result.metrics, indent=2, default=str))

        router_dir = cache.folder_stage("router", router_key, train)
        router_metrics = json.loads((router_dir / "router_metrics.json").read_text())
        router_source = str(router_dir)
        _export_folder(router_dir, run_dir / "artifacts" / "router")  # what `router_repo` publishes
    router, tokenizer = load_router(router_source, expected_teachers=names)

    # Labeled prompts keep their best labeled answer (Generate-then-Select, already paid for); only the
    # other prompts are routed, and only their routed teacher generates.
    route_key = cache.key("route", prompts_key, combine_key, router_key, recipe.routing.budgets, num_labeled)
    labeled_ids = set(labeled_prompts["prompt_id"])
    assigned = cache.dataset_stage(
        "route",
        route_key,
        lambda _: assign_teachers(
            prompts, labeled_ids, select_best(labels, "reward", names), router, tokenizer, recipe
        ),
    )
    _export(assigned, run_dir / "artifacts" / "routing")

    generated_parts = []
    for teacher in recipe.teachers:
        own = assigned.filter(
            lambda batch, name=teacher.name: [
                t == name and s == ROUTED for t, s in zip(batch["teacher"], batch["selected_by"])
            ],
            batched=True,
            desc=f"Selecting {teacher.name}'s prompts",
        ).select_columns([c for c in prompts.column_names])
        key = cache.key("generate", route_key, generation_identity(teacher), recipe.seed)
        part, stats = _generation_stage(
            cache,
            f"generate/{teacher.name}",
            key,
            own,
            teacher,
            recipe.seed,
            rows_keys[teacher.name],
            retry_failed,
        )
        generated_parts.append(part)
        generation_stats.setdefault(teacher.name, []).append({"phase": "routed", **stats})

    logger.info("stage assemble: started (%s)", run_dir / "artifacts" / "dataset")
    responses = collect_responses(*label_parts, *generated_parts)
    assembly = assemble_dataset(
        assigned, responses, drop_truncated=recipe.output.drop_truncated, quality=recipe.quality
    )
    final, failed = assembly.final, assembly.failed
    _export(final, run_dir / "artifacts" / "dataset")

    summary = build_summary(
        recipe=recipe,
        run_dir=run_dir,
        final=final,
        failed=failed,
        truncated=assembly.truncated,
        labels=labels,
        assigned=assigned,
        label_parts=label_parts,
        generated_parts=generated_parts,
        num_prompts=len(prompts),
        num_labeled=num_labeled,
        stages=cache.summary(),
        generation=generation_stats,
        router=router_metrics,
        seconds=time.perf_counter() - started,
        versions=package_versions(),
    )
    _write_card(final, recipe, summary, run_dir)
    if any([recipe.output.hub.labels_repo, recipe.output.hub.dataset_repo, recipe.output.hub.router_repo]):
        from persyn_hub.hub import publish_run

        summary["hub"] = publish_run(run_dir, recipe, summary)
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    logger.info("Finished in %.1f s: %d rows in %s", summary["wall_seconds"], summary["rows"], run_dir)
    return summary


def _write_card(final: Dataset, recipe: PersynRecipe, summary: dict[str, Any], run_dir: Path) -> None:
    """A local copy of the data set card, so an unpublished run documents itself too."""
    try:
        from persyn_hub.cards import render_dataset_card
    except ImportError:
        return
    card = render_dataset_card(recipe=recipe, summary=summary, dataset=final)
    (run_dir / "artifacts" / "dataset" / "README.md").write_text(str(card), encoding="utf-8")


__all__ = ["RunLockedError", "run_pipeline"]
