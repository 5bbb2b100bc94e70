"""The stages after labeling: train (or reuse) the router, route the prompts, the verified-routing fallback
rounds, and the assembly of the final data set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from datasets import Dataset

from persyn_hub.folders import save_dataset_folder
from persyn_hub.labeling.design import effective_per_prompt
from persyn_hub.pipeline.assemble import assemble_dataset, collect_responses
from persyn_hub.pipeline.fallback import (
    choose_verified,
    fallback_generate,
    fallback_route,
    next_round,
    own_fallback_ids,
    router_teachers,
)
from persyn_hub.pipeline.generation_stages import generation_stage, rows_key
from persyn_hub.pipeline.identity import quality_identity, router_training_identity, teacher_identity
from persyn_hub.pipeline.launch import single_process
from persyn_hub.pipeline.runner import Stage, StageContext, StageRunner
from persyn_hub.pipeline.stage_names import (
    ASSEMBLY_FILE,
    COMBINE,
    FALLBACK_FILE,
    PROMPTS,
    ROUTE,
    ROUTER,
    routed_generate,
)
from persyn_hub.recipe.config import PersynRecipe, TeacherConfig
from persyn_hub.router.assignment import ROUTED, assign_teachers
from persyn_hub.router.labels import LABEL_COLUMNS
from persyn_hub.router.selection import select_best


def _train_router(recipe: PersynRecipe) -> Any:
    def compute(context: StageContext) -> None:
        # lazy: router.training loads evaluate and huggingface_hub, which this module otherwise does not
        from persyn_hub.router.training import RouterTask, train_router

        with single_process():  # trained on the main process alone: an N-process run equals a 1-process one
            train_router(
                context[COMBINE],
                recipe.router,
                RouterTask.from_recipe(recipe),
                output_dir=str(context.folder),
                learning_curve=recipe.router.learning_curve,
            )

    return compute


def _copy_router(source: str) -> Any:
    def compute(context: StageContext) -> None:
        from huggingface_hub import snapshot_download

        path = Path(source) if Path(source).is_dir() else Path(snapshot_download(source))
        shutil.copytree(path, context.folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".cache"))

    return compute


def router_stage(recipe: PersynRecipe) -> Stage:
    """Train the router on the labeled pool, or take the one `routing.reuse_router` names."""
    # lazy: router.storage loads torch and transformers, which this module otherwise does not
    from persyn_hub.router.storage import router_identity

    if recipe.routing.reuse_router:
        source = recipe.routing.reuse_router
        return Stage(ROUTER, _copy_router(source), identity={"reuse": router_identity(source)}, folder=True)
    identity: dict[str, Any] = {
        "settings": router_training_identity(recipe.router),
        "seed": recipe.seed,
        "teachers": recipe.teacher_names(),
        "student": recipe.student.model,
        "alpha": recipe.labeling.alpha,
        "label_repo": recipe.output.hub.labels_repo,
    }
    per_prompt = effective_per_prompt(recipe.labeling.teachers_per_prompt, len(recipe.teachers))
    if per_prompt is not None:  # the card names the design; unset, the full labeling's keys stay as they were
        identity["teachers_per_prompt"] = per_prompt
    return Stage(
        ROUTER,
        _train_router(recipe),
        inputs=(COMBINE,),
        reads={COMBINE: LABEL_COLUMNS},
        identity=identity,
        folder=True,
        export="router",
    )


def route_computation(recipe: PersynRecipe) -> Any:
    def compute(context: StageContext) -> Dataset:
        # lazy: router.storage loads torch and transformers, which this module otherwise does not
        from persyn_hub.router.storage import load_router

        prompts = context[PROMPTS]
        labeled_ids = set(prompts.select(range(num_labeled(recipe, prompts)))["prompt_id"])
        router, tokenizer = load_router(str(context[ROUTER]), expected_teachers=recipe.teacher_names())
        best = select_best(context[COMBINE], "reward", recipe.teacher_names())
        return assign_teachers(prompts, labeled_ids, best, router, tokenizer, recipe)

    return compute


def num_labeled(recipe: PersynRecipe, prompts: Dataset) -> int:
    return min(recipe.labeling.num_prompts, len(prompts))


def own_routed_prompts(context: StageContext, teacher: TeacherConfig) -> Dataset:

    prompts, assigned = context[PROMPTS], context[ROUTE]
    mine = {
        p
        for p, t, s in zip(assigned["prompt_id"], assigned["teacher"], assigned["selected_by"])
        if t == teacher.name and s == ROUTED
    }
    return prompts.filter(
        lambda batch: [p in mine for p in batch["prompt_id"]],
        batched=True,
        desc=f"Selecting {teacher.name}'s prompts",
    )


def assemble_computation(recipe: PersynRecipe, parts: list[str], assignment: str = ROUTE) -> Any:
    def compute(context: StageContext) -> Dataset:

        responses = collect_responses(*(context[name] for name in parts))
        assigned, fallback = context[assignment], None
        if assignment != ROUTE:  # verified routing: the first verified answer among the teachers asked
            assigned, fallback = choose_verified(assigned, responses, recipe.quality)
        assembly = assemble_dataset(
            assigned,
            responses,
            drop_truncated=recipe.output.drop_truncated,
            quality=recipe.quality,
            drop_incorrect=recipe.output.drop_incorrect,
        )
        save_dataset_folder(assembly.failed, context.folder / "failed")
        record: dict[str, Any] = {"truncated": assembly.truncated}
        if recipe.output.drop_incorrect:
            record["dropped_incorrect"] = assembly.dropped_incorrect
        if fallback is not None:
            record["fallback"] = fallback
        (context.folder / ASSEMBLY_FILE).write_text(json.dumps(record))
        return assembly.final

    return compute


def _fallback_route(recipe: PersynRecipe, round_: int, previous: str, answered: list[str]) -> Any:
    def compute(context: StageContext) -> Dataset:

        assigned, counts = next_round(
            context[previous],
            collect_responses(*(context[name] for name in answered)),
            recipe.quality,
            router_teachers(context[ROUTER]),
            round_,
        )
        context.folder.mkdir(parents=True, exist_ok=True)
        (context.folder / FALLBACK_FILE).write_text(json.dumps(counts))
        return assigned

    return compute


def _own_fallback_prompts(context: StageContext, teacher: TeacherConfig, round_: int) -> Dataset:

    mine = own_fallback_ids(context[fallback_route(round_)], teacher.name, round_)
    return context[PROMPTS].filter(
        lambda batch: [p in mine for p in batch["prompt_id"]],
        batched=True,
        desc=f"Selecting {teacher.name}'s fallback prompts (round {round_})",
    )


def fallback_stages(recipe: PersynRecipe, runner: StageRunner) -> tuple[list[Stage], list[str], str]:
    """`routing.fallback_on_incorrect` rounds of verify-then-ask-the-next-teacher (see
    `pipeline/fallback.py`): (stages, their generation stages, the last assignment stage); no stages when 0."""

    stages: list[Stage] = []
    answered = [routed_generate(t.name) for t in recipe.teachers]
    assignment = ROUTE
    for round_ in range(1, recipe.routing.fallback_on_incorrect + 1):
        name = fallback_route(round_)
        stages.append(
            Stage(
                name,
                _fallback_route(recipe, round_, assignment, list(answered)),
                inputs=(assignment, ROUTER, *answered),
                identity={"round": round_, "verify": quality_identity(recipe.quality)},
            )
        )
        generated = [fallback_generate(round_, t.name) for t in recipe.teachers]
        stages += [
            generation_stage(
                stage_name,
                teacher,
                recipe,
                lambda context, teacher=teacher, round_=round_: _own_fallback_prompts(
                    context, teacher, round_
                ),
                lambda teacher=teacher: rows_key(runner, teacher, recipe, PROMPTS),
                inputs=(PROMPTS, name),
                identity={"teacher": teacher_identity(teacher), "seed": recipe.seed},
            )
            for stage_name, teacher in zip(generated, recipe.teachers)
        ]
        answered += generated
        assignment = name
    return stages, answered[len(recipe.teachers) :], assignment
