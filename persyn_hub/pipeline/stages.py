"""PerSyn's stages, declared once: each one's computation, inputs and what changes its output.

    prompts -> label-generate/<teacher> (every teacher, labeled subset) -> learnability -> quality
    -> combine -> router -> route (labeled prompts keep their best answer, the rest are routed)
    -> generate/<teacher> (each teacher, only its routed prompts) -> assemble

`persyn_stages(recipe)` is that list; `persyn run` runs it with `StageRunner`, which derives every
cache key from the stage's `identity` and its inputs' content (see `pipeline/runner.py`).
`labeling_stages` (`pipeline/generation_stages.py`) is the labeling chain alone, for any prompt subset:
`persyn compare` runs it on the training prompts to get every teacher's scored answer there (the Oracle's
pool). The router, routing, fallback and assembly stages are declared in `pipeline/routing_stages.py`, the
stage names in `pipeline/stage_names.py`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from datasets import Dataset

from persyn_hub.data import load_prompts
from persyn_hub.pipeline.generation_stages import generation_stage, labeling_stages, rows_key
from persyn_hub.pipeline.identity import quality_identity, teacher_identity
from persyn_hub.pipeline.preflight import check_before_work, source_identity
from persyn_hub.pipeline.routing_stages import (
    assemble_computation,
    fallback_stages,
    num_labeled,
    own_routed_prompts,
    route_computation,
    router_stage,
)
from persyn_hub.pipeline.runner import Stage, StageContext, StageRunner
from persyn_hub.pipeline.stage_names import (
    ASSEMBLE,
    COMBINE,
    PROMPTS,
    PROMPTS_FILE,
    ROUTE,
    ROUTER,
    label_generate,
    routed_generate,
)
from persyn_hub.recipe.config import PersynRecipe

logger = logging.getLogger("persyn_hub")


def _load_prompts(recipe: PersynRecipe) -> Any:
    def compute(context: StageContext) -> Dataset:

        report: dict[str, Any] = {}
        prompts = load_prompts(recipe.prompts, recipe.seed, report)
        context.folder.mkdir(parents=True, exist_ok=True)
        (context.folder / PROMPTS_FILE).write_text(json.dumps(report))
        return prompts

    return compute


def persyn_stages(recipe: PersynRecipe, runner: StageRunner) -> list[Stage]:
    """The whole run, in order."""

    teachers = recipe.teachers
    stages = [
        Stage(
            PROMPTS,
            _load_prompts(recipe),
            identity={
                "prompts": recipe.prompts,
                "seed": recipe.seed,
                "source": source_identity(recipe.prompts),
            },
            check=lambda context: check_before_work(recipe, runner.outputs[PROMPTS]),
        ),
        *labeling_stages(
            recipe,
            runner,
            prompts_stage=PROMPTS,
            select=lambda prompts: prompts.select(range(num_labeled(recipe, prompts))),
            select_identity={"labeled_prompts": recipe.labeling.num_prompts},
            teachers_per_prompt=recipe.labeling.teachers_per_prompt,
        ),
        router_stage(recipe),
        Stage(
            ROUTE,
            route_computation(recipe),
            inputs=(PROMPTS, COMBINE, ROUTER),
            identity={"budgets": recipe.routing.budgets, "labeled_prompts": recipe.labeling.num_prompts},
            export="routing",
        ),
    ]
    stages += [
        generation_stage(
            routed_generate(teacher.name),
            teacher,
            recipe,
            lambda context, teacher=teacher: own_routed_prompts(context, teacher),
            lambda teacher=teacher: rows_key(runner, teacher, recipe, PROMPTS),
            inputs=(PROMPTS, ROUTE),
            identity={"teacher": teacher_identity(teacher), "seed": recipe.seed},
        )
        for teacher in teachers
    ]
    parts = [label_generate(t.name) for t in teachers] + [routed_generate(t.name) for t in teachers]
    verified_routing, fallback_parts, assignment = fallback_stages(recipe, runner)
    stages += verified_routing
    parts += fallback_parts
    identity: dict[str, Any] = {
        "drop_truncated": recipe.output.drop_truncated,
        "verify": quality_identity(recipe.quality),
    }
    if recipe.output.drop_incorrect:  # only when set: the default run's cache keys stay as they were
        identity["drop_incorrect"] = True
    stages.append(
        Stage(
            ASSEMBLE,
            assemble_computation(recipe, parts, assignment),
            inputs=tuple(dict.fromkeys((ROUTE, assignment, *parts))),
            identity=identity,
            export="dataset",
        )
    )
    return stages


__all__ = ["persyn_stages"]
