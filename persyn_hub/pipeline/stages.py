"""PerSyn's stages, declared once: each one's computation, inputs and what changes its output.

    prompts -> label-generate/<teacher> (every teacher, labeled subset) -> learnability -> quality
    -> combine -> router -> route (labeled prompts keep their best answer, the rest are routed)
    -> generate/<teacher> (each teacher, only its routed prompts) -> assemble

`persyn_stages(recipe)` is that list; `persyn run` runs it with `StageRunner`, which derives every
cache key from the stage's `identity` and its inputs' content (see `pipeline/runner.py`).
`labeling_stages` is the labeling chain alone, for any prompt subset: `persyn compare` runs it on the
training prompts to get every teacher's scored answer there (the Oracle's pool).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

from persyn_hub.folders import save_dataset_folder
from persyn_hub.pipeline.identity import (
    quality_identity,
    router_training_identity,
    student_identity,
    teacher_identity,
)
from persyn_hub.pipeline.launch import single_process
from persyn_hub.pipeline.runner import Stage, StageContext, StageRunner
from persyn_hub.recipe.config import PersynRecipe, TeacherConfig
from persyn_hub.router.labels import LABEL_COLUMNS
from persyn_hub.scoring.combine import COMBINE_COLUMNS, COMBINE_READS
from persyn_hub.scoring.learnability.tokens import LEARNABILITY_COLUMNS, LEARNABILITY_READS
from persyn_hub.scoring.quality import QUALITY_FEATURES

logger = logging.getLogger("persyn_hub")

PROMPTS = "prompts"
LEARNABILITY, QUALITY, COMBINE = "learnability", "quality", "combine"
ROUTER, ROUTE, ASSEMBLE = "router", "route", "assemble"
STATS_FILE = "stats.json"
ASSEMBLY_FILE = "assembly.json"
FALLBACK_FILE = "fallback.json"
PROMPTS_FILE = "prompts.json"


def label_generate(name: str) -> str:
    return f"label-generate/{name}"


def routed_generate(name: str) -> str:
    return f"generate/{name}"


# --------------------------------------------------------------------------------------------------
# Computations


def _load_prompts(recipe: PersynRecipe) -> Any:
    def compute(context: StageContext) -> Dataset:
        from persyn_hub.data import load_prompts

        report: dict[str, Any] = {}
        prompts = load_prompts(recipe.prompts, recipe.seed, report)
        context.folder.mkdir(parents=True, exist_ok=True)
        (context.folder / PROMPTS_FILE).write_text(json.dumps(report))
        return prompts

    return compute


def generate(
    context: StageContext, prompts: Dataset, teacher: TeacherConfig, recipe: PersynRecipe, rows_key: str
) -> Dataset:
    """`teacher` answers `prompts`; finished rows land in the teacher's row checkpoint at once.

    Both phases of a teacher (labeling, routed) share one checkpoint, keyed by the teacher and the
    prompts: a row a teacher already answered is never requested again, whatever the routing.
    """
    from persyn_hub.generation import generate_responses
    from persyn_hub.generation.pool import pool_answer_columns

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
    from persyn_hub.generation.backends import backend_of

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

    from persyn_hub.generation.backends import generates_here

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


# --------------------------------------------------------------------------------------------------
# Declarations


def labeling_stages(
    recipe: PersynRecipe,
    runner: StageRunner,
    *,
    prompts_stage: str,
    select: Any,
    prefix: str = "",
    select_identity: Any = None,
    rows_from: str = PROMPTS,
) -> list[Stage]:
    """Every teacher answers the prompts `select(prompts)` picks; learnability, quality, combined reward.

    Stage names get `prefix` (e.g. `compare/`) so another prompt subset caches apart; answers go to and
    come from the teachers' row checkpoints of the run's prompts (`rows_from`), so no prompt a teacher
    answered for the run is asked again.
    """
    from persyn_hub.scoring.combine import combine_rewards
    from persyn_hub.scoring.learnability.scorer import score_learnability
    from persyn_hub.scoring.quality import score_quality

    generated = [prefix + label_generate(t.name) for t in recipe.teachers]
    stages = [
        generation_stage(
            name,
            teacher,
            recipe,
            lambda context: select(context[prompts_stage]),
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


def _train_router(recipe: PersynRecipe) -> Any:
    def compute(context: StageContext) -> None:
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
    if recipe.routing.reuse_router:
        from persyn_hub.router import router_identity

        source = recipe.routing.reuse_router
        return Stage(ROUTER, _copy_router(source), identity={"reuse": router_identity(source)}, folder=True)
    return Stage(
        ROUTER,
        _train_router(recipe),
        inputs=(COMBINE,),
        reads={COMBINE: LABEL_COLUMNS},
        identity={
            "settings": router_training_identity(recipe.router),
            "seed": recipe.seed,
            "teachers": recipe.teacher_names(),
            "student": recipe.student.model,
            "alpha": recipe.labeling.alpha,
            "label_repo": recipe.output.hub.labels_repo,
        },
        folder=True,
        export="router",
    )


def _route(recipe: PersynRecipe) -> Any:
    def compute(context: StageContext) -> Dataset:
        from persyn_hub.router import load_router
        from persyn_hub.router.assignment import assign_teachers
        from persyn_hub.router.selection import select_best

        prompts = context[PROMPTS]
        labeled_ids = set(prompts.select(range(num_labeled(recipe, prompts)))["prompt_id"])
        router, tokenizer = load_router(str(context[ROUTER]), expected_teachers=recipe.teacher_names())
        best = select_best(context[COMBINE], "reward", recipe.teacher_names())
        return assign_teachers(prompts, labeled_ids, best, router, tokenizer, recipe)

    return compute


def num_labeled(recipe: PersynRecipe, prompts: Dataset) -> int:
    return min(recipe.labeling.num_prompts, len(prompts))


def _own_routed_prompts(context: StageContext, teacher: TeacherConfig) -> Dataset:
    from persyn_hub.router.assignment import ROUTED

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


def _assemble(recipe: PersynRecipe, parts: list[str], assignment: str = ROUTE) -> Any:
    def compute(context: StageContext) -> Dataset:
        from persyn_hub.pipeline.assemble import assemble_dataset, collect_responses

        responses = collect_responses(*(context[name] for name in parts))
        assigned, fallback = context[assignment], None
        if assignment != ROUTE:  # verified routing: the first verified answer among the teachers asked
            from persyn_hub.pipeline.fallback import choose_verified

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
        from persyn_hub.pipeline.assemble import collect_responses
        from persyn_hub.pipeline.fallback import next_round, router_teachers

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
    from persyn_hub.pipeline.fallback import fallback_route, own_fallback_ids

    mine = own_fallback_ids(context[fallback_route(round_)], teacher.name, round_)
    return context[PROMPTS].filter(
        lambda batch: [p in mine for p in batch["prompt_id"]],
        batched=True,
        desc=f"Selecting {teacher.name}'s fallback prompts (round {round_})",
    )


def fallback_stages(recipe: PersynRecipe, runner: StageRunner) -> tuple[list[Stage], list[str], str]:
    """`routing.fallback_on_incorrect` rounds of verify-then-ask-the-next-teacher (see
    `pipeline/fallback.py`): (stages, their generation stages, the last assignment stage); no stages when 0."""
    from persyn_hub.pipeline.fallback import fallback_generate, fallback_route

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


def persyn_stages(recipe: PersynRecipe, runner: StageRunner) -> list[Stage]:
    """The whole run, in order."""
    from persyn_hub.pipeline.preflight import check_before_work, source_identity

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
        ),
        router_stage(recipe),
        Stage(
            ROUTE,
            _route(recipe),
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
            lambda context, teacher=teacher: _own_routed_prompts(context, teacher),
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
            _assemble(recipe, parts, assignment),
            inputs=tuple(dict.fromkeys((ROUTE, assignment, *parts))),
            identity=identity,
            export="dataset",
        )
    )
    return stages


__all__ = [
    "generation_stage",
    "label_generate",
    "labeling_stages",
    "persyn_stages",
    "read_stats",
    "routed_generate",
]
