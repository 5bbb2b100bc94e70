"""`persyn compare RECIPE`: does routing help this student? Every strategy, one protocol, with error bars.

    persyn compare recipes/demo/compare-task-mix-smollm2.yaml
    python -m persyn_hub.compare.run recipes/demo/compare-task-mix-smollm2.yaml --seeds '[0]'

Protocol (the same for every strategy):
1. `persyn run` the pipeline recipe (or reuse its cache). The training prompts are the prompts it
   ROUTED: outside the router's labeled subset and, since `persyn run` drops them, outside every
   evaluation set.
2. Every teacher answers every training prompt and each answer is scored (learnability, quality,
   combined reward): the Oracle's pool, paid for this experiment only. The teachers' row checkpoints
   are shared with the run, so the answers the run already has are not asked again.
3. Each strategy (`persyn_hub.compare.baselines`) ranks the teachers per training prompt and takes the
   first whose answer is usable (no error, not truncated): an unusable first choice falls back to the
   strategy's OWN next choice, counted as a fallback, so no strategy's failures remove prompts from the
   others. PerSyn's rows are the routed data set `persyn run` published (a fallback: the router's next
   score). Every strategy trains on the same prompts (those some teacher answered usably). Ties in a
   single-teacher choice follow a stated rule and are reported (`baselines.quality_ranking`); costs
   charge the labeling to every strategy that read the labeled prompts, with stage seconds
   (`compare.protocol`), and each row reports what its student learned from.
4. The student is fine-tuned on each set with the same TRL settings, once per seed, and evaluated with
   lm-evaluation-harness on the same items (greedy), together with the untrained student.
5. Each cell is the mean over seeds and items with a 95% bootstrap interval (items and seeds
   resampled, the same draw for every strategy); differences to PerSyn and Oracle - random are paired
   bootstraps, significant when their interval excludes 0. `comparison.md`, `.json` and `.png` land in
   `output_dir`, and the table goes into the run's data set card.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from datasets import Dataset

from persyn_hub.compare.baselines import STRATEGIES
from persyn_hub.compare.report import BASE_ROW, comparison_markdown, summarize_comparison, write_comparison
from persyn_hub.pipeline.fallback import FULL_MARKS
from persyn_hub.recipe.config import RecipeError
from persyn_hub.recipe.parsing import apply_override, build_dataclass, parse_overrides
from persyn_hub.scoring.answers import is_trainable_answer

logger = logging.getLogger("persyn_hub")

TRAIN_PROMPTS = "compare/train-prompts"
PREFIX = "compare/"


@dataclass
class EvaluationSettings:
    """How every student is evaluated (the same for all strategies)."""

    tasks: list[str] = field(default_factory=lambda: ["persyn_taskmix"])
    limit: Optional[int] = None
    max_gen_toks: int = 64
    batch_size: int = 32
    dtype: str = "float32"
    apply_chat_template: bool = True
    system_instruction: Optional[str] = None
    """None: the pipeline recipe's `prompts.system_prompt` (the students were trained with it)."""


@dataclass
class CompareRecipe:
    """A comparison: which run, which strategies, how to train and how to evaluate every student."""

    name: str = "compare"
    seed: int = 42
    pipeline: str = ""
    """The pipeline recipe to run (or reuse from its cache); its routed prompts are the training prompts."""
    pipeline_overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted recipe keys applied to `pipeline`, e.g. {labeling.num_prompts: 32}."""
    student: Optional[str] = None
    """Student to fine-tune; None: the pipeline recipe's student."""
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    strong_teacher: Optional[str] = None
    """The Strong baseline's teacher; None: the highest mean quality on the labeled prompts."""
    weak_teacher: Optional[str] = None
    """Mix's weak teacher; None: the lowest mean quality on the labeled prompts."""
    fallback_on_incorrect: int = 1
    """`persyn_verified`: at most this many extra answers per prompt when the checker rejects the routed
    one (the run's `routing.fallback_on_incorrect`, simulated on the pool every teacher answered)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """SFT seeds (data order, dropout): every strategy is trained once per seed; the intervals resample
    seeds and items together, so one seed hides the training-run noise."""
    bootstrap: int = 1000
    include_base_student: bool = True
    sft: dict[str, Any] = field(default_factory=dict)
    """TRL SFTConfig keys used for every student (output_dir and seed are set per run)."""
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    output_dir: str = "runs/compare"

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise RecipeError(f"strategies: unknown {unknown}; choose from {list(STRATEGIES)}.")
        if not self.strategies:
            raise RecipeError("strategies: empty; list at least one of " + ", ".join(STRATEGIES))
        if not self.pipeline:
            raise RecipeError("pipeline: set the pipeline recipe whose routed prompts the students train on.")
        if not self.seeds:
            raise RecipeError("seeds: empty; give at least one SFT seed, e.g. [0, 1].")
        if self.fallback_on_incorrect < 1:
            raise RecipeError("fallback_on_incorrect: must be >= 1 (extra answers persyn_verified may ask).")
        if self.bootstrap < 0:
            raise RecipeError("bootstrap: must be >= 0 (0 turns the intervals off).")
        _check_sft_keys(self.sft)


def _check_sft_keys(sft: dict[str, Any]) -> None:
    """Misspelled training keys fail when the recipe is read, not after the pipeline ran."""
    import dataclasses
    import difflib

    from trl import SFTConfig

    known = {f.name for f in dataclasses.fields(SFTConfig)}
    for key in sft:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"sft.{key}: not a TRL SFTConfig field.{hint}")
        if key in ("output_dir", "seed"):
            raise RecipeError(f"sft.{key}: set per student by the comparison (seeds: ...); remove it.")


def load_compare_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> CompareRecipe:
    """Read a comparison recipe YAML; `--key value` overrides as for `persyn run`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: comparison recipe not found.")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key, value in parse_overrides(overrides or []):
        apply_override(values, key, value)
    try:
        return build_dataclass(CompareRecipe, values, "")
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None


# --------------------------------------------------------------------------------------------------
# 1-2. The run, and every teacher's scored answer on its routed prompts


def pipeline_recipe_of(recipe: CompareRecipe) -> Any:
    from persyn_hub.recipe.config import load_recipe

    overrides: list[str] = []
    for key, value in recipe.pipeline_overrides.items():
        overrides += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return load_recipe(recipe.pipeline, overrides)


def run_and_label_routed_prompts(pipeline: Any) -> tuple[dict[str, Any], Any, Dataset]:
    """Run (or reuse) the pipeline, then have every teacher answer its routed prompts, as stages of the
    same run: (its summary, its stage runner, every teacher's scored answer on the routed prompts)."""
    from persyn_hub.pipeline.run import run_pipeline
    from persyn_hub.pipeline.runner import Stage
    from persyn_hub.pipeline.stages import COMBINE, PROMPTS, ROUTE, labeling_stages
    from persyn_hub.router.assignment import ROUTED

    def routed_prompts(context: Any) -> Dataset:
        ids = {p for p, s in zip(context[ROUTE]["prompt_id"], context[ROUTE]["selected_by"]) if s == ROUTED}
        return context[PROMPTS].filter(lambda rows: [p in ids for p in rows["prompt_id"]], batched=True)

    finished: dict[str, Any] = {}

    def label_routed_prompts(runner: Any) -> list[Stage]:
        finished["runner"] = runner
        stages = [Stage(TRAIN_PROMPTS, routed_prompts, inputs=(PROMPTS, ROUTE))]
        return stages + labeling_stages(
            pipeline, runner, prompts_stage=TRAIN_PROMPTS, select=lambda prompts: prompts, prefix=PREFIX
        )

    summary = run_pipeline(pipeline, then=label_routed_prompts)
    runner = finished["runner"]
    return summary, runner, runner.outputs[PREFIX + COMBINE]


# --------------------------------------------------------------------------------------------------
# 3. One training set per strategy, on the same prompts


def _rows(pool: Dataset) -> dict[tuple[str, str], dict[str, Any]]:
    columns = [
        "prompt_id",
        "teacher",
        "messages",
        "response",
        "error",
        "finish_reason",
        "num_tokens",
        "num_prompt_tokens",
        "quality",
        "learnability",
        "num_response_tokens",
    ]
    table = pool.select_columns([c for c in columns if c in pool.column_names]).to_list()
    return {(row["prompt_id"], row["teacher"]): row for row in table}


def _trainable(row: dict[str, Any] | None) -> bool:
    return bool(row) and is_trainable_answer(row["response"], row["error"], row.get("finish_reason"))


def student_family(pipeline: Any) -> str:
    if pipeline.student.family:
        return pipeline.student.family
    from transformers import AutoConfig

    from persyn_hub.bundled import resolve_model

    return AutoConfig.from_pretrained(resolve_model(pipeline.student.model)).model_type


def teacher_families(pipeline: Any) -> dict[str, str | None]:
    """A teacher's `family`, else its local model's model_type; None for endpoint and reference teachers."""
    from transformers import AutoConfig

    from persyn_hub.bundled import resolve_model
    from persyn_hub.generation import backend_for

    families: dict[str, str | None] = {}
    for teacher in pipeline.teachers:
        family = teacher.family
        if family is None and teacher.model and backend_for(teacher) in ("transformers", "vllm"):
            family = AutoConfig.from_pretrained(resolve_model(teacher.model)).model_type
        families[teacher.name] = family
    return families


def router_teachers(router_dir: Any, fallback: list[str]) -> list[str]:
    """The router's own teacher order (`router_scores` follow it): its saved config's `teachers`."""
    path = Path(str(router_dir)) / "config.json"
    if path.is_file():
        teachers = json.loads(path.read_text(encoding="utf-8")).get("teachers")
        if teachers:
            return list(teachers)
    return list(fallback)


def routed_choices(assigned: Dataset, order: list[str]) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """(prompt_id -> routed teacher, prompt_id -> {teacher: router score}) for the ROUTED prompts."""
    from persyn_hub.router.assignment import ROUTED

    columns = [
        c for c in ("prompt_id", "teacher", "selected_by", "router_scores") if c in assigned.column_names
    ]
    teachers: dict[str, str] = {}
    scores: dict[str, dict[str, float]] = {}
    for row in assigned.select_columns(columns).to_list():
        if row["selected_by"] != ROUTED or row["teacher"] is None:
            continue
        teachers[row["prompt_id"]] = row["teacher"]
        if row.get("router_scores"):
            scores[row["prompt_id"]] = dict(zip(order, map(float, row["router_scores"])))
    return teachers, scores


def choose_training_answers(
    rankings: dict[str, dict[str, list[str]]],
    usable: Any,
    prompt_ids: list[str],
    verified: Any = None,
    extra: int = 1,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, int]], list[str], dict[str, dict[str, list[str]]]]:
    """Each strategy's first usable teacher in its own order ({strategy: {prompt: teacher}}), its counts
    (`fallbacks`: prompts answered by a later choice; `unanswerable`: none of its choices usable), the
    common prompts (those every strategy could answer; with full rankings, the prompts some teacher
    answered), and the teachers each strategy asked per prompt, in order, up to its pick. A verified
    strategy (`baselines.VERIFIED`) also needs `verified(prompt, teacher)` within `extra` extra answers."""
    from persyn_hub.compare.baselines import VERIFIED, first_usable, verified_picks

    picks: dict[str, dict[str, str]] = {}
    counts: dict[str, dict[str, int]] = {}
    asked: dict[str, dict[str, list[str]]] = {}
    for strategy, ranking in rankings.items():
        if strategy in VERIFIED:
            chosen, asked[strategy], lost = verified_picks(ranking, usable, verified, extra)
        else:
            chosen, _, lost = first_usable(ranking, usable)
            asked[strategy] = {p: ranking[p][: ranking[p].index(t) + 1] for p, t in chosen.items()}
        picks[strategy] = chosen
        counts[strategy] = {"unanswerable": len(lost) + len(set(prompt_ids) - set(ranking))}
        counts[strategy]["fallbacks_all"] = sum(1 for p, t in chosen.items() if t != ranking[p][0])
    common = sorted(set.intersection(*(set(c) for c in picks.values()))) if picks else []
    for strategy, ranking in rankings.items():  # fallbacks among the prompts actually trained on
        counts[strategy]["fallbacks"] = sum(1 for p in common if picks[strategy][p] != ranking[p][0])
        counts[strategy]["extra_answers"] = sum(len(asked[strategy][p]) - 1 for p in common)
    return picks, counts, common, asked


def build_training_sets(
    recipe: CompareRecipe, pipeline: Any, runner: Any, pool: Dataset
) -> tuple[dict[str, Dataset], dict[str, dict[str, Any]], list[str]]:
    """({strategy: SFT data set}, {strategy: picks, cost and what was dropped}, the common prompt ids).

    Each strategy takes, per prompt, the first teacher of its own ranking whose answer is usable (no
    error, not truncated): an unusable first choice falls back to the strategy's OWN next choice
    (`baselines.strategy_rankings`) and is counted, so no strategy's failures shape the others' prompts.
    """
    from persyn_hub.compare.baselines import strategy_rankings
    from persyn_hub.compare.protocol import answer_stats, strategy_cost
    from persyn_hub.pipeline.stages import ASSEMBLE, COMBINE, ROUTE, ROUTER
    from persyn_hub.router.assignment import ROUTED
    from persyn_hub.router.storage import read_router_record

    teachers = pipeline.teacher_names()
    free = {t.name for t in pipeline.teachers if t.backend == "reference"}
    labels, final = runner.outputs[COMBINE], runner.outputs[ASSEMBLE]
    metrics = read_router_record(runner.outputs[ROUTER])["metrics"]
    prompt_ids = sorted(set(pool["prompt_id"]))
    rows = _rows(pool)
    published = {
        row["prompt_id"]: row
        for row in final.select_columns(["prompt_id", "teacher", "messages", "selected_by"]).to_list()
        if row["selected_by"] == ROUTED
    }
    routed_teachers, router_scores = routed_choices(
        runner.outputs[ROUTE], router_teachers(runner.outputs[ROUTER], teachers)
    )
    needs_family = "family_strong" in recipe.strategies
    families = teacher_families(pipeline) if needs_family else None  # each reads every teacher's config
    family = student_family(pipeline) if needs_family else None
    rankings: dict[str, dict[str, list[str]]] = {}
    info: dict[str, dict[str, Any]] = {}
    for strategy in recipe.strategies:
        ranking, defined_by = strategy_rankings(
            strategy,
            prompt_ids=prompt_ids,
            pool=pool,
            labels=labels,
            teachers=teachers,
            seed=recipe.seed,
            train_ids=metrics.get("train_prompt_ids"),
            families=families,
            student_family=family,
            routed=routed_teachers,
            router_scores=router_scores,
            strong=recipe.strong_teacher,
            weak=recipe.weak_teacher,
        )
        rankings[strategy] = ranking
        info[strategy] = {"defined_by": defined_by}

    def usable(prompt_id: str, teacher: str) -> bool:
        return _trainable(rows.get((prompt_id, teacher)))

    def verified(prompt_id: str, teacher: str) -> bool:
        quality = (rows.get((prompt_id, teacher)) or {}).get("quality")
        return quality is not None and float(quality) >= FULL_MARKS

    picks, counts, common, asked = choose_training_answers(
        rankings, usable, prompt_ids, verified, recipe.fallback_on_incorrect
    )
    label_rows = labels.select_columns(
        [c for c in ("teacher", "num_tokens", "num_prompt_tokens") if c in labels.column_names]
    ).to_list()
    sets: dict[str, Dataset] = {}
    for strategy, chosen in picks.items():
        info[strategy].update(
            unusable=counts[strategy]["unanswerable"],
            fallbacks=counts[strategy]["fallbacks"],
            extra_answers=counts[strategy]["extra_answers"],
            dropped_for_parity=len(chosen) - len(common),
            rows=len(common),
            teacher_counts={t: sum(1 for p in common if chosen[p] == t) for t in teachers},
            cost=strategy_cost(
                strategy,
                asked=asked[strategy],
                common=common,
                rows=rows,
                label_rows=label_rows,
                free=free,
                teachers=teachers,
                uses_labels=bool(info[strategy]["defined_by"].get("uses_labels")),
                # the runner's records: the run's stages and the comparison's own pool stages after them
                stages=runner.summary(),
            ),
            answers=answer_stats(chosen, common, rows),
        )
        messages = []
        for p in common:
            if strategy.startswith("persyn") and p in published and published[p]["teacher"] == chosen[p]:
                messages.append(published[p]["messages"])  # exactly the row `persyn run` published
            else:
                row = rows[(p, chosen[p])]
                messages.append(list(row["messages"]) + [{"role": "assistant", "content": row["response"]}])
        sets[strategy] = Dataset.from_dict(
            {"prompt_id": common, "teacher": [chosen[p] for p in common], "messages": messages}
        )
    return sets, info, common


# --------------------------------------------------------------------------------------------------
# 4. Train and evaluate


def _train(
    dataset_dir: Path, output_dir: Path, student: str, sft: dict[str, Any], seed: int
) -> dict[str, Any]:
    from trl import ModelConfig, SFTConfig

    from persyn_hub.compare.sft import SFTScriptArguments, train

    settings = {
        "report_to": "none",
        "save_strategy": "no",
        **sft,
        "seed": seed,
        "output_dir": str(output_dir),
    }
    return train(
        SFTScriptArguments(dataset_name=str(dataset_dir)),
        SFTConfig(**settings),
        ModelConfig(model_name_or_path=student, dtype="float32"),
    )


def _evaluate(
    model: str, settings: EvaluationSettings, system: Optional[str], output_dir: Path, seed: int
) -> dict:
    from persyn_hub.compare.evaluation import evaluate_model

    return evaluate_model(
        model,
        settings.tasks,
        limit=settings.limit,
        max_gen_toks=settings.max_gen_toks,
        batch_size=settings.batch_size,
        dtype=settings.dtype,
        apply_chat_template=settings.apply_chat_template,
        system_instruction=system if settings.apply_chat_template else None,
        output_dir=output_dir,
        seed=seed,
        per_item=True,
    )


# --------------------------------------------------------------------------------------------------
# The whole comparison


def run_comparison(
    recipe: CompareRecipe | str | Path, overrides: Optional[list[str]] = None
) -> dict[str, Any]:
    """Run, build, train and evaluate every strategy; write the table and chart; return the comparison."""
    from persyn_hub.eval_tasks.items import is_eval_item
    from persyn_hub.pipeline.run import write_local_card
    from persyn_hub.pipeline.stages import ASSEMBLE

    if not isinstance(recipe, CompareRecipe):
        recipe = load_compare_recipe(recipe, overrides)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.yaml").write_text(yaml.safe_dump(asdict(recipe), sort_keys=False), encoding="utf-8")

    pipeline = pipeline_recipe_of(recipe)
    summary, runner, pool = run_and_label_routed_prompts(pipeline)
    sets, info, common = build_training_sets(recipe, pipeline, runner, pool)
    leaked = [p for p, text in zip(pool["prompt_id"], pool["prompt"]) if is_eval_item(text)]
    if leaked:  # persyn run drops them unless the recipe opted out; the comparison never trains on them
        raise RecipeError(
            f"pipeline: {len(set(leaked))} training prompt(s) are evaluation items; keep "
            "prompts.drop_eval_items: true in the pipeline recipe."
        )
    student = recipe.student or pipeline.student.model
    settings = recipe.evaluation
    system = (
        settings.system_instruction
        if settings.system_instruction is not None
        else pipeline.prompts.system_prompt
    )
    logger.info(
        "compare: %d strategies x %d seeds on the same %d training prompts",
        len(sets),
        len(recipe.seeds),
        len(common),
    )

    reports: dict[str, list[dict[str, Any]]] = {}
    if recipe.include_base_student:
        reports[BASE_ROW] = [_evaluate(student, settings, system, out / "eval" / "base", recipe.seed)]
    training: dict[str, list[dict[str, Any]]] = {}
    for strategy, dataset in sets.items():
        data_dir = out / "data" / strategy
        dataset.save_to_disk(str(data_dir))
        for seed in recipe.seeds:
            student_dir = out / "students" / f"{strategy}-seed{seed}"
            logger.info(
                "compare: %s (seed %d): %d rows %s",
                strategy,
                seed,
                len(dataset),
                info[strategy]["teacher_counts"],
            )
            metrics = _train(data_dir, student_dir, student, recipe.sft, seed)
            training.setdefault(strategy, []).append({"seed": seed, "train_loss": metrics.get("train_loss")})
            reports.setdefault(strategy, []).append(
                _evaluate(
                    str(student_dir), settings, system, out / "eval" / f"{strategy}-seed{seed}", recipe.seed
                )
            )
    comparison = summarize_comparison(recipe, pipeline, summary, info, training, reports, common)
    write_comparison(comparison, out, Path(pipeline.output.dir))
    write_local_card(
        runner.outputs[ASSEMBLE], pipeline, summary, Path(pipeline.output.dir)
    )  # now with the table
    return comparison


def main(argv: Optional[list[str]] = None) -> int:
    """`persyn compare RECIPE [--key value ...]`."""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="persyn compare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "recipe", help="comparison recipe YAML, e.g. recipes/demo/compare-task-mix-smollm2.yaml"
    )
    args, overrides = parser.parse_known_args(argv)
    comparison = run_comparison(args.recipe, overrides)
    print(comparison_markdown(comparison))
    print(f"Written to {load_compare_recipe(args.recipe, overrides).output_dir}/comparison.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())


__all__ = [
    "CompareRecipe",
    "EvaluationSettings",
    "build_training_sets",
    "comparison_markdown",
    "load_compare_recipe",
    "run_comparison",
]
