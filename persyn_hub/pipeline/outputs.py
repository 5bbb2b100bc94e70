"""What a finished run holds, read back from its stages for the summary and the cards.

The stages write their data sets and side files (`stats.json`, `assembly.json`, ...) into the stage
cache; `run_outputs` gathers them once, so the summary and the cards never reach into stage folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from persyn_hub.folders import load_dataset_folder
from persyn_hub.pipeline.fallback import fallback_generate, fallback_route
from persyn_hub.pipeline.generation_stages import read_stats
from persyn_hub.pipeline.runner import StageRunner
from persyn_hub.pipeline.stage_names import (
    ASSEMBLE,
    ASSEMBLY_FILE,
    COMBINE,
    FALLBACK_FILE,
    PROMPTS,
    PROMPTS_FILE,
    ROUTE,
    ROUTER,
    label_generate,
    routed_generate,
)
from persyn_hub.recipe.config import PersynRecipe
from persyn_hub.router.info import read_router_record


@dataclass
class RunOutputs:
    """The outputs a summary and a card are written from."""

    prompts: Dataset
    labels: Dataset
    assigned: Dataset
    final: Dataset
    failed: Dataset
    truncated: int
    router_metrics: dict[str, Any] | None
    generation: dict[str, list[dict[str, Any]]]
    prompt_report: dict[str, Any]
    verification: dict[str, Any] = field(default_factory=dict)
    """Verified routing (`routing.fallback_on_incorrect`, `output.drop_incorrect`): what it did and cost."""


def run_outputs(recipe: PersynRecipe, runner: StageRunner) -> RunOutputs:
    generation: dict[str, list[dict[str, Any]]] = {}
    for teacher in recipe.teachers:
        for phase, name in (
            ("labeling", label_generate(teacher.name)),
            ("routed", routed_generate(teacher.name)),
        ):
            stats = read_stats(runner.cache.folder(name, runner.keys[name]))
            stats["requests_this_run"] = 0 if runner.cached[name] else stats.get("requests", 0)
            generation.setdefault(teacher.name, []).append({"phase": phase, **stats})

    rounds, extra_generations = [], 0
    for round_ in range(1, recipe.routing.fallback_on_incorrect + 1):
        name = fallback_route(round_)
        rounds.append(read_json_or_empty(runner.cache.folder(name, runner.keys[name]) / FALLBACK_FILE))
        for teacher in recipe.teachers:
            name = fallback_generate(round_, teacher.name)
            stats = read_stats(runner.cache.folder(name, runner.keys[name]))
            stats["requests_this_run"] = 0 if runner.cached[name] else stats.get("requests", 0)
            generation[teacher.name].append({"phase": f"fallback-{round_}", **stats})
            extra_generations += int(stats.get("requests", 0) or 0) + int(stats.get("reused", 0) or 0)
    assemble_folder = runner.cache.folder(ASSEMBLE, runner.keys[ASSEMBLE])
    assembly = json.loads((assemble_folder / ASSEMBLY_FILE).read_text())
    verification: dict[str, Any] = {}
    if rounds or recipe.output.drop_incorrect:
        fallback = assembly.get("fallback") or {}
        verification = {
            "fallback_on_incorrect": recipe.routing.fallback_on_incorrect,
            "routed_answers_rejected": rounds[0].get("rejected", 0) if rounds else None,
            "rounds": rounds,
            "extra_answers": fallback.get("extra_answers", 0),
            "extra_generations": extra_generations,
            "recovered": fallback.get("recovered", 0),
            "drop_incorrect": recipe.output.drop_incorrect,
            "dropped_incorrect": assembly.get("dropped_incorrect", 0),
        }

    router_record = {} if recipe.routing.reuse_router else read_router_record(runner.outputs[ROUTER])
    return RunOutputs(
        prompts=runner.outputs[PROMPTS],
        labels=runner.outputs[COMBINE],
        assigned=runner.outputs[ROUTE],
        final=runner.outputs[ASSEMBLE],
        failed=load_dataset_folder(assemble_folder / "failed"),
        truncated=assembly["truncated"],
        router_metrics=router_record.get("metrics"),
        generation=generation,
        prompt_report=read_json_or_empty(runner.cache.folder(PROMPTS, runner.keys[PROMPTS]) / PROMPTS_FILE),
        verification=verification,
    )


def read_json_or_empty(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


__all__ = ["RunOutputs", "run_outputs"]
