"""`persyn compare RECIPE`: train and evaluate one student per data strategy, on the same labeled pool.

    persyn compare recipes/demo/compare-asdiv-smollm2.yaml
    python -m persyn_hub.compare recipes/demo/compare-asdiv-smollm2.yaml --evaluation.limit 10

Steps: (1) get the labeled pool (every teacher answered every prompt) and the router's choices,
from a finished run (`labels:` / `routing:`) or by running the pipeline recipe (`pipeline:`);
(2) drop held-out evaluation prompts from the pool (eval_tasks/heldout.py); (3) build each strategy's
SFT data set (persyn_hub.baselines); (4) fine-tune the student on each (persyn_hub.sft); (5) evaluate
each with lm-eval (persyn_hub.evaluation), plus the untrained student; (6) write
`comparison.json`, `comparison.md` (strategy x cost x scores) and `comparison.png` into `output_dir`.
`comparison_card_section(output_dir)` returns the table as a card section for the data set card.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from datasets import Dataset, load_from_disk

from persyn_hub.baselines import STRATEGIES, build_baseline, pool_cost, summarize
from persyn_hub.config import RecipeError, _apply_override, _build_dataclass, parse_overrides

logger = logging.getLogger("persyn_hub")

BASE_ROW = "student (no SFT)"


@dataclass
class EvaluationSettings:
    """How every student is evaluated (the same for all strategies)."""

    tasks: list[str] = field(default_factory=lambda: ["persyn_asdiv"])
    limit: Optional[int] = 20
    max_gen_toks: int = 128
    batch_size: int = 8
    dtype: str = "float32"
    apply_chat_template: bool = True
    system_instruction: Optional[str] = None
    """None: the pipeline recipe's `prompts.system_prompt` (the students were trained with it)."""


@dataclass
class CompareRecipe:
    """A comparison: which pool, which strategies, how to train and how to evaluate."""

    name: str = "compare"
    seed: int = 42
    pipeline: Optional[str] = None
    """Pipeline recipe to run (or reuse from its cache) for the labeled pool and the router's choices."""
    pipeline_overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted recipe keys applied to `pipeline`, e.g. {labeling.num_prompts: 32}."""
    labels: Optional[str] = None
    """A finished run's artifacts/labels folder, or its published labels repo (`org/repo[@revision]`,
    config `labels`); used instead of running `pipeline`. Then `routing` too (folder, or the same repo)."""
    routing: Optional[str] = None
    student: Optional[str] = None
    """Student to fine-tune; None: the pipeline recipe's student."""
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    include_base_student: bool = True
    drop_heldout: bool = True
    """Remove held-out evaluation prompts from the pool before building any training set."""
    sft: dict[str, Any] = field(default_factory=dict)
    """TRL SFTConfig keys used for every student (output_dir is set per strategy)."""
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    output_dir: str = "runs/compare"

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise RecipeError(f"strategies: unknown {unknown}; choose from {list(STRATEGIES)}.")
        if not self.strategies:
            raise RecipeError("strategies: empty; list at least one of " + ", ".join(STRATEGIES))
        if not self.pipeline and not self.labels:
            raise RecipeError(
                "pipeline / labels: set `pipeline` (a recipe to run) or `labels` (a finished run)."
            )
        _check_sft_keys(self.sft)
        if self.labels and "persyn" in self.strategies and not self.routing:
            raise RecipeError(
                "routing: the persyn strategy needs the routed prompts (a run's artifacts/routing)."
            )


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
        if key == "output_dir":
            raise RecipeError("sft.output_dir: set per strategy under output_dir; remove it.")


def load_compare_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> CompareRecipe:
    """Read a comparison recipe YAML; `--key value` overrides as for `persyn run`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: comparison recipe not found.")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key, value in parse_overrides(overrides or []):
        _apply_override(values, key, value)
    try:
        return _build_dataclass(CompareRecipe, values, "")
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None


def load_artifact(source: str, config_name: str) -> Dataset:
    """A run's `artifacts/<name>` folder, or the labels repo a run published (config `labels`/`routing`).

    `org/repo` or `org/repo@revision` loads that Hub data set config, so a comparison can start from a
    labeled pool someone else published.
    """
    if Path(source).exists():
        return load_from_disk(source)
    from datasets import load_dataset

    repo, _, revision = source.partition("@")
    return load_dataset(repo, config_name, split="train", revision=revision or None)


def _pool_and_routing(recipe: CompareRecipe) -> tuple[Dataset, Optional[Dataset], Optional[Any], dict]:
    """(labeled pool, routed prompts, pipeline recipe or None, pipeline summary or {})."""
    if recipe.labels:
        routing = load_from_disk(recipe.routing) if recipe.routing else None
        return load_from_disk(recipe.labels), routing, None, {}
    from persyn_hub.config import load_recipe
    from persyn_hub.pipeline import run_pipeline

    overrides = []
    for key, value in recipe.pipeline_overrides.items():
        overrides += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    pipeline_recipe = load_recipe(recipe.pipeline, overrides)
    summary = run_pipeline(pipeline_recipe)
    artifacts = Path(pipeline_recipe.output.dir) / "artifacts"
    return (
        load_from_disk(str(artifacts / "labels")),
        load_from_disk(str(artifacts / "routing")),
        pipeline_recipe,
        summary,
    )


def _train(
    dataset_dir: Path, output_dir: Path, student: str, sft: dict[str, Any], seed: int
) -> dict[str, Any]:
    from trl import ModelConfig, SFTConfig

    from persyn_hub.sft import SFTScriptArguments, train

    settings = {
        "report_to": "none",
        "save_strategy": "no",
        "seed": seed,
        **sft,
        "output_dir": str(output_dir),
    }
    return train(
        SFTScriptArguments(dataset_name=str(dataset_dir)),
        SFTConfig(**settings),
        ModelConfig(model_name_or_path=student, dtype="float32"),
    )


def run_comparison(
    recipe: CompareRecipe | str | Path, overrides: Optional[list[str]] = None
) -> dict[str, Any]:
    """Build, train and evaluate every strategy; write the table and chart; return the comparison."""
    from persyn_hub.eval_tasks.heldout import drop_heldout
    from persyn_hub.evaluation import evaluate_model

    if not isinstance(recipe, CompareRecipe):
        recipe = load_compare_recipe(recipe, overrides)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.yaml").write_text(yaml.safe_dump(asdict(recipe), sort_keys=False), encoding="utf-8")

    pool, routing, pipeline_recipe, pipeline_summary = _pool_and_routing(recipe)
    labeling = pool_cost(pool)  # the router's labeling cost: every teacher on the labeled subset
    if recipe.drop_heldout and "prompt" in pool.column_names:
        before = len(pool)
        pool = drop_heldout(pool, "prompt")
        logger.info("compare: dropped %d held-out pool rows", before - len(pool))
    student = recipe.student or (pipeline_recipe.student.model if pipeline_recipe else None)
    if not student:
        raise RecipeError("student: not set and no pipeline recipe to take it from.")
    settings = recipe.evaluation
    system = settings.system_instruction
    if system is None and pipeline_recipe is not None:
        system = pipeline_recipe.prompts.system_prompt

    def evaluate(model: str, name: str) -> list[dict[str, Any]]:
        report = evaluate_model(
            model,
            settings.tasks,
            limit=settings.limit,
            max_gen_toks=settings.max_gen_toks,
            batch_size=settings.batch_size,
            dtype=settings.dtype,
            apply_chat_template=settings.apply_chat_template,
            system_instruction=system if settings.apply_chat_template else None,
            output_dir=out / "eval" / name,
            seed=recipe.seed,
        )
        return report["scores"]

    rows: list[dict[str, Any]] = []
    if recipe.include_base_student:
        rows.append(
            {
                "strategy": BASE_ROW,
                "rows": 0,
                "total_requests": 0,
                "total_tokens": 0,
                "scores": evaluate(student, "base"),
            }
        )
    for strategy in recipe.strategies:
        baseline = build_baseline(pool, strategy, seed=recipe.seed, routing=routing, labeling_cost=labeling)
        data_dir = out / "data" / strategy
        baseline.dataset.save_to_disk(str(data_dir))
        logger.info(
            "compare: %s: %d rows %s; training", strategy, len(baseline.dataset), baseline.teacher_counts
        )
        metrics = _train(data_dir, out / "students" / strategy, student, recipe.sft, recipe.seed)
        rows.append(
            {
                **summarize(baseline),
                "train_loss": metrics.get("train_loss"),
                "scores": evaluate(str(out / "students" / strategy), strategy),
            }
        )
    comparison = {
        "name": recipe.name,
        "student": student,
        "pool_rows": len(pool),
        "labeling_cost": {"requests": labeling[0], "tokens": labeling[1]},
        "evaluation": asdict(settings),
        "rows": rows,
        "pipeline_summary": {k: pipeline_summary.get(k) for k in ("rows", "teacher_counts", "output_dir")},
    }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2, default=str), encoding="utf-8")
    (out / "comparison.md").write_text(comparison_markdown(comparison), encoding="utf-8")
    plot_comparison(comparison, out / "comparison.png")
    if pipeline_recipe is not None:  # a copy beside the run it compares, for the data set card
        run_dir = Path(pipeline_recipe.output.dir)
        (run_dir / "comparison.md").write_text(comparison_markdown(comparison), encoding="utf-8")
        (run_dir / "comparison.json").write_text(
            json.dumps(comparison, indent=2, default=str), encoding="utf-8"
        )
    return comparison


def _score_columns(comparison: dict[str, Any]) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []
    for row in comparison["rows"]:
        for score in row["scores"]:
            key = (score["task"], score["metric"], score["filter"])
            if key not in seen:
                seen.append(key)
    return seen


def _score(row: dict[str, Any], key: tuple[str, str, str]) -> Optional[float]:
    for score in row["scores"]:
        if (score["task"], score["metric"], score["filter"]) == key:
            return score["value"]
    return None


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """One table: strategy x data rows x generation cost x benchmark scores."""
    keys = _score_columns(comparison)
    header = ["strategy", "rows", "teacher requests", "teacher tokens", "of which labeling"]
    header += [f"{task} {metric}" for task, metric, _ in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in comparison["rows"]:
        cells = [
            row["strategy"],
            str(row.get("rows", "")),
            str(row.get("total_requests", "")),
            str(row.get("total_tokens", "")),
            str(row.get("labeling_requests", 0) or ""),
        ]
        cells += ["" if (v := _score(row, key)) is None else f"{v:.3f}" for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    ev = comparison["evaluation"]
    note = (
        f"\nStudent `{comparison['student']}`; pool of {comparison['pool_rows']} labeled rows; "
        f"evaluated on {ev['limit'] or 'all'} held-out rows per task (max {ev['max_gen_toks']} new tokens). "
        "Cost counts teacher requests/tokens to build each set. PerSyn's answers come from the labeled pool, so its cost is that labeling (every teacher on the router's subset); at scale it is N_labeled x K + (N - N_labeled) generations.\n"
    )
    return "\n".join(lines) + "\n" + note


def plot_comparison(comparison: dict[str, Any], path: Path) -> None:
    """Bar chart: one group per strategy, one bar per benchmark score; teacher requests on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = _score_columns(comparison)
    names = [row["strategy"] for row in comparison["rows"]]
    x = np.arange(len(names))
    width = 0.8 / max(1, len(keys))
    fig, (ax, cost_ax) = plt.subplots(2, 1, figsize=(max(6, 1.2 * len(names)), 6.5), sharex=True)
    for i, key in enumerate(keys):
        values = [_score(row, key) or 0.0 for row in comparison["rows"]]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, values, width, label=f"{key[0]} {key[1]}")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"{comparison['name']}: student {comparison['student']}")
    cost_ax.bar(x, [row.get("total_requests", 0) for row in comparison["rows"]], color="grey")
    cost_ax.set_ylabel("teacher requests")
    cost_ax.set_xticks(x, names, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_card_section(output_dir: str | Path) -> Optional[str]:
    """Card hook: the comparison table as a markdown section, or None when no comparison was run."""
    path = Path(output_dir) / "comparison.md"
    if not path.is_file():
        return None
    return "## Student comparison\n\n" + path.read_text(encoding="utf-8")


def main(argv: Optional[list[str]] = None) -> int:
    """`persyn compare RECIPE [--key value ...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(
            "usage: persyn compare RECIPE [--key value ...]  (e.g. recipes/demo/compare-asdiv-smollm2.yaml)"
        )
        return 2
    comparison = run_comparison(argv[0], argv[1:])
    print(comparison_markdown(comparison))
    print(f"Written to {load_compare_recipe(argv[0], argv[1:]).output_dir}/comparison.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())


__all__ = [
    "CompareRecipe",
    "EvaluationSettings",
    "comparison_card_section",
    "load_compare_recipe",
    "run_comparison",
]
