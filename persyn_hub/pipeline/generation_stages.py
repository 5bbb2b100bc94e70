"""Teachers' generation stages, and the labeling chain built on them: every teacher answers the labeled
prompts -> learnability -> quality -> combined reward."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

from persyn_hub.generation import generate_responses
from persyn_hub.generation.backends import backend_of, generates_here
from persyn_hub.generation.pool import pool_answer_columns
from persyn_hub.labeling.design import effective_per_prompt, make_design, prompts_of
from persyn_hub.pipeline.identity import quality_identity, student_identity, teacher_identity
from persyn_hub.pipeline.runner import Stage, StageContext, StageRunner
from persyn_hub.pipeline.stage_names import (
    COMBINE,
    LEARNABILITY,
    PROMPTS,
    QUALITY,
    STATS_FILE,
    label_generate,
)
from persyn_hub.recipe.config import PersynRecipe, TeacherConfig
from persyn_hub.scoring.combine import COMBINE_COLUMNS, COMBINE_READS, combine_rewards
from persyn_hub.scoring.learnability.tokens import LEARNABILITY_COLUMNS, LEARNABILITY_READS
from persyn_hub.scoring.quality import QUALITY_FEATURES, score_quality


def generate(
    context: StageContext, prompts: Dataset, teacher: TeacherConfig, recipe: PersynRecipe, rows_key: str
) -> Dataset:
    """`teacher` answers `prompts`; finished rows land in the teacher's row checkpoint at once.

    Both phases of a teacher (labeling, routed) share one checkpoint, keyed by the teacher and the
    prompts: a row a teacher already answered is never requested again, whatever the routing.
    """

    checkpoint = context.cache.folder(f"rows/{teacher.name}", rows_key)
    result, stats = generate_responses(
        prompts, teacher, checkpoint_dir=checkpoint, seed=recipe.seed, pool=recipe.prompts.pool
    )
    context.folder.mkdir(parents=True, exist_ok=True)
    context.side_file(STATS_FILE).write_text(json.dumps(stats.to_dict(), indent=2, default=str))
    # lean rows: each holds its own answer, not every pool teacher's cell beside it
    pool_cells = [c for c in pool_answer_columns(recipe.teachers) if c in result.column_names]
    return result.remove_columns(pool_cells)


def read_stats(folder: Path) -> dict[str, Any]:
    """A generation stage's accounting, summed over its chunks (whichever process computed each)."""
    total: dict[str, Any] = {}
    for file in sorted(folder.glob("stats*.json")):
        for key, value in json.loads(file.read_text()).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict):
                merged = total.setdefault(key, {})
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
            elif total.get(key) is None:  # the first chunk that says something (a stop reason)
                total[key] = value
    return total


def generation_parallelism(teacher: TeacherConfig) -> str:
    """In-process teachers generate in chunks on every process (each on its own device); endpoint
    teachers are driven from the main process alone (one async client already keeps every replica
    busy, and splitting it would multiply connections and per-endpoint health without adding
    throughput), and reference and pool answers cost nothing to write."""

    return "main" if teacher.pool_column else backend_of(teacher).parallelism


def generation_stage(
    name: str,
    teacher: TeacherConfig,
    recipe: PersynRecipe,
    rows: Any,
    rows_key: Any,
    **declaration: Any,
) -> Stage:
    """`teacher` answers `rows(context)`: in chunks on every process for an in-process teacher, on the
    main process for the others (see `generation_parallelism`)."""
    parallel = generation_parallelism(teacher)

    def compute(context: StageContext) -> Dataset:
        prompts = context.rows if parallel == "chunks" else rows(context)
        return generate(context, prompts, teacher, recipe, rows_key())

    return Stage(
        name,
        compute,
        rerun_failed=True,
        parallel=parallel,
        rows=rows if parallel == "chunks" else None,
        # a vLLM group's other processes take no chunk
        works_here=lambda: generates_here(teacher, recipe.teachers.index(teacher)),
        **declaration,
    )


def rows_key(runner: StageRunner, teacher: TeacherConfig, recipe: PersynRecipe, prompts_stage: str) -> str:
    return runner.cache.key("rows", runner.digests[prompts_stage], teacher_identity(teacher), recipe.seed)


def _concat(context: StageContext, names: list[str]) -> Dataset:
    return concatenate_datasets([context[name] for name in names])


def design_identity(select_identity: Any, recipe: PersynRecipe, teachers_per_prompt: int | None) -> Any:
    """The labeled prompts' identity with the design in it (m and the teachers; the seed is in the stage's
    identity already), so a cached full labeling is never taken for a partial one; unchanged under full
    labeling, whose keys stay as they were."""
    per_prompt = effective_per_prompt(teachers_per_prompt, len(recipe.teachers))
    if per_prompt is None:
        return select_identity
    design = {"teachers_per_prompt": per_prompt, "teachers": recipe.teacher_names()}
    return {"select": select_identity, "design": design}


def designed_prompts(
    picked: Dataset, teacher: TeacherConfig, recipe: PersynRecipe, teachers_per_prompt: int | None
) -> Dataset:
    """The labeled prompts `teacher` answers: all of `picked` under full labeling, else those the balanced
    design (`labeling/design.py`, seeded by the run's seed) gives it."""
    per_prompt = effective_per_prompt(teachers_per_prompt, len(recipe.teachers))
    if per_prompt is None:
        return picked
    design = make_design(list(picked["prompt_id"]), recipe.teacher_names(), per_prompt, recipe.seed)
    mine = prompts_of(design, teacher.name)
    return picked.filter(
        lambda batch: [p in mine for p in batch["prompt_id"]],
        batched=True,
        desc=f"Selecting {teacher.name}'s labeled prompts ({per_prompt} teachers per prompt)",
    )


def labeling_stages(
    recipe: PersynRecipe,
    runner: StageRunner,
    *,
    prompts_stage: str,
    select: Any,
    prefix: str = "",
    select_identity: Any = None,
    rows_from: str = PROMPTS,
    teachers_per_prompt: int | None = None,
) -> list[Stage]:
    """Every teacher answers the prompts `select(prompts)` picks; learnability, quality, combined reward.

    Stage names get `prefix` (e.g. `compare/`) so another prompt subset caches apart; answers go to and
    come from the teachers' row checkpoints of the run's prompts (`rows_from`), so no prompt a teacher
    answered for the run is asked again. `teachers_per_prompt` (partial labeling): each teacher answers
    only the picked prompts the design gives it (`designed_prompts`), the design in the stages' keys.
    """
    # lazy: scoring.learnability.scorer loads torch, which this module otherwise does not
    from persyn_hub.scoring.learnability.scorer import score_learnability

    select_identity = design_identity(select_identity, recipe, teachers_per_prompt)
    generated = [prefix + label_generate(t.name) for t in recipe.teachers]
    stages = [
        generation_stage(
            name,
            teacher,
            recipe,
            lambda context, teacher=teacher: designed_prompts(
                select(context[prompts_stage]), teacher, recipe, teachers_per_prompt
            ),
            lambda teacher=teacher: rows_key(runner, teacher, recipe, rows_from),
            inputs=tuple(dict.fromkeys((prompts_stage, rows_from))),
            identity={"teacher": teacher_identity(teacher), "seed": recipe.seed, "select": select_identity},
        )
        for name, teacher in zip(generated, recipe.teachers)
    ]
    in_process_student = not recipe.student.endpoint
    stages += [
        Stage(
            prefix + LEARNABILITY,
            lambda context: score_learnability(
                context.rows if in_process_student else _concat(context, generated),
                recipe.student,
                in_process=True,
            ),
            inputs=tuple(generated),
            reads=dict.fromkeys(generated, ("prompt_id", "teacher", *LEARNABILITY_READS)),
            adds=LEARNABILITY_COLUMNS,
            identity=student_identity(recipe.student),
            parallel="chunks" if in_process_student else "main",
            rows=lambda context: _concat(context, generated),
            chunk_by="prompt_id",  # a prompt's answers in one chunk: its tokens are encoded once
        ),
        Stage(
            prefix + QUALITY,
            lambda context: score_quality(
                context.rows if recipe.quality.reward_model else context[prefix + LEARNABILITY],
                recipe.quality,
            ),
            inputs=(prefix + LEARNABILITY,),
            reads={prefix + LEARNABILITY: ("prompt_id", "teacher", "response")},
            adds=tuple(QUALITY_FEATURES),
            identity=quality_identity(recipe.quality),
            parallel="chunks" if recipe.quality.reward_model else "main",
            rows=lambda context: context[prefix + LEARNABILITY],
            chunk_by="prompt_id",
        ),
        Stage(
            prefix + COMBINE,
            lambda context: combine_rewards(context[prefix + QUALITY], recipe.labeling),
            inputs=(prefix + QUALITY,),
            reads={prefix + QUALITY: COMBINE_READS},
            adds=COMBINE_COLUMNS,
            identity={"alpha": recipe.labeling.alpha, "normalization": recipe.labeling.normalization},
            export=None if prefix else "labels",
        ),
    ]
    return stages
