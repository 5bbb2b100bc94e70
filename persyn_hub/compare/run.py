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
4. The student is fine-tuned on each set with the same TRL settings, once per seed, for the same whole
   number of epochs over its own set (`sft.num_train_epochs`; `max_steps` is refused), so every student
   sees every row; all sets hold the same prompts, so the step counts are equal too. Each student is
   evaluated with lm-evaluation-harness on the same items (greedy), together with the untrained student.
5. Each cell is the mean over seeds and items with a 95% interval that counts the spread between seeds
   and between items (`compare.intervals`); differences to PerSyn and Oracle - random are paired (seed
   with seed, item with item), significant when their interval excludes 0. `comparison.md` (self-contained:
   the command, the budget, the tables, per-seed values), `.json` and `.png` land in `output_dir`, and the
   markdown goes into the run's data set card.

The recipe is read by `compare.recipe`; step 3 is `compare.training_sets`; this module runs the rest.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from datasets import Dataset

from persyn_hub.compare.evaluation import evaluate_model
from persyn_hub.compare.recipe import CompareRecipe, EvaluationSettings, load_compare_recipe, load_pipeline_of
from persyn_hub.compare.report import BASE_ROW, comparison_markdown, summarize_comparison, write_comparison
from persyn_hub.compare.sft import SFTScriptArguments, train
from persyn_hub.compare.student_cache import CACHE_FOLDER, StudentCache, StudentKey, training_rows_digest
from persyn_hub.compare.training_sets import build_training_sets
from persyn_hub.eval_tasks.items import is_eval_item
from persyn_hub.pipeline.runner import Stage
from persyn_hub.pipeline.stage_names import ASSEMBLE, COMBINE, PROMPTS, ROUTE
from persyn_hub.recipe.config import RecipeError
from persyn_hub.router.assignment import ROUTED

logger = logging.getLogger("persyn_hub")

TRAIN_PROMPTS = "compare/train-prompts"
PREFIX = "compare/"


# --------------------------------------------------------------------------------------------------
# 1-2. The run, and every teacher's scored answer on its routed prompts


def pipeline_recipe_of(recipe: CompareRecipe) -> Any:
    return load_pipeline_of(recipe)


def run_and_label_routed_prompts(pipeline: Any) -> tuple[dict[str, Any], Any, Dataset]:
    """Run (or reuse) the pipeline, then have every teacher answer its routed prompts, as stages of the
    same run: (its summary, its stage runner, every teacher's scored answer on the routed prompts)."""
    # lazy: pipeline.generation_stages loads pyarrow, which this module otherwise does not
    from persyn_hub.pipeline.generation_stages import labeling_stages

    # lazy: pipeline.run loads pyarrow, which this module otherwise does not
    from persyn_hub.pipeline.run import run_pipeline

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
# 4. Train and evaluate


def _train(
    dataset_dir: Path, output_dir: Path, student: str, sft: dict[str, Any], seed: int
) -> dict[str, Any]:
    from trl import ModelConfig, SFTConfig

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


REPORT_KEYS = ("model", "tasks", "limit", "max_gen_toks", "scores", "items")
"""What a stored report keeps: everything the comparison reads (scores and per-item values)."""


@dataclass
class Students:
    """Trains and evaluates each student once per key: a student another comparison of the same run
    already has (same rows, settings, seed, versions) is read from the cache instead."""

    recipe: CompareRecipe
    student: str
    system: Optional[str]
    out: Path
    cache: StudentCache

    def _key(self, name: str, rows: str, seed: Optional[int]) -> StudentKey:
        evaluation = {**asdict(self.recipe.evaluation), "system": self.system, "seed": self.recipe.seed}
        sft = dict(self.recipe.sft) if seed is not None else {}
        return StudentKey(name, rows, str(self.student), seed, sft, evaluation)

    def _evaluate(self, model: str, name: str) -> dict[str, Any]:
        return _evaluate(
            model, self.recipe.evaluation, self.system, self.out / "eval" / name, self.recipe.seed
        )

    def _stored_or_run(self, key: StudentKey, compute: Any) -> dict[str, Any]:
        stored = self.cache.get(key)
        if stored is not None:
            logger.info(
                "compare: %s reused from %s (same rows, settings, versions)", key.name, self.cache.folder
            )
            return {**stored, "reused": True}
        started = time.perf_counter()
        metrics, report = compute()
        entry = {
            "training": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))},
            "report": {k: report[k] for k in REPORT_KEYS if k in report},
            "seconds": round(time.perf_counter() - started, 1),
        }
        if entry["report"]:  # a non-main process under accelerate gets no report: nothing to keep
            self.cache.put(key, entry)
        return {**entry, "reused": False}

    def base(self) -> dict[str, Any]:
        """The untrained student's evaluation report."""
        key = self._key("base", "", None)
        return self._stored_or_run(key, lambda: ({}, self._evaluate(self.student, "base")))["report"]

    def trained(self, strategy: str, data_dir: Path, rows: str, seed: int) -> tuple[dict[str, Any], dict]:
        """(training entry for the report, evaluation report) of one strategy's student at one seed."""
        name = f"{strategy}-seed{seed}"

        def compute() -> tuple[dict[str, Any], dict[str, Any]]:
            student_dir = self.out / "students" / name
            metrics = _train(data_dir, student_dir, self.student, self.recipe.sft, seed)
            return metrics, self._evaluate(str(student_dir), name)

        entry = self._stored_or_run(self._key(name, rows, seed), compute)
        metrics = entry["training"]
        run = {
            "seed": seed,
            "train_loss": metrics.get("train_loss"),
            "epochs": metrics.get("epoch"),
            "steps": metrics.get("global_step"),
            "rows": metrics.get("train_rows"),
            "seconds": entry["seconds"],
            "reused": entry["reused"],
        }
        return run, entry["report"]


# --------------------------------------------------------------------------------------------------
# The whole comparison


def run_comparison(
    recipe: CompareRecipe | str | Path, overrides: Optional[list[str]] = None
) -> dict[str, Any]:
    """Run, build, train and evaluate every strategy; write the table and chart; return the comparison."""
    # lazy: pipeline.run loads pyarrow, which this module otherwise does not
    from persyn_hub.pipeline.run import write_local_card

    command = None
    if not isinstance(recipe, CompareRecipe):
        command = shlex.join(["persyn", "compare", str(recipe), *(overrides or [])])
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
    started = time.perf_counter()
    logger.info(
        "compare: %d strategies x %d seeds on the same %d training prompts",
        len(sets),
        len(recipe.seeds),
        len(common),
    )

    cache = StudentCache(Path(pipeline.output.dir) / CACHE_FOLDER, enabled=recipe.reuse_students)
    students = Students(recipe, student, system, out, cache)
    reports: dict[str, list[dict[str, Any]]] = {}
    if recipe.include_base_student:
        reports[BASE_ROW] = [students.base()]
    training: dict[str, list[dict[str, Any]]] = {}
    for strategy, dataset in sets.items():
        data_dir = out / "data" / strategy
        dataset.save_to_disk(str(data_dir))
        rows = training_rows_digest(dataset)
        for seed in recipe.seeds:
            logger.info(
                "compare: %s (seed %d): %d rows %s",
                strategy,
                seed,
                len(dataset),
                info[strategy]["teacher_counts"],
            )
            run, report = students.trained(strategy, data_dir, rows, seed)
            training.setdefault(strategy, []).append(run)
            reports.setdefault(strategy, []).append(report)
    comparison = summarize_comparison(recipe, pipeline, summary, info, training, reports, common, command)
    comparison["students"] = {
        "reused": list(cache.reused),
        "cache": str(cache.folder) if cache.enabled else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
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


__all__ = ["comparison_markdown", "run_comparison"]
