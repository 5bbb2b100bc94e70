"""Every card persyn_hub writes (the data set cards of a run and the router's model card), rendered from the
Jinja templates in `persyn_hub/model_cards/` through `huggingface_hub`'s `DatasetCard` / `ModelCard`.

Cards hold only what a re-run of the same recipe reproduces (counts, versions, seeds, router metrics, sample
rows, the recipe) and never timings or local paths, so re-publishing a finished run changes nothing on the
Hub. `render_dataset_card` works without pushing: the pipeline writes it to `artifacts/dataset/README.md`.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset
from huggingface_hub import DatasetCard, DatasetCardData

from persyn_hub.model_cards import hub_endpoint, template_path
from persyn_hub.publish.scrub import scrub_recipe_yaml, scrub_url
from persyn_hub.recipe.config import PersynRecipe

CHART_FILE = "teacher_distribution.png"
SAMPLE_TEXT_CHARS = 400
# Router metrics worth a line in the card (the rest stays in the router repo's card and metrics file).
ROUTER_METRIC_KEYS = (
    "top1_agreement",
    "reward_recovered",
    "reward_recovered_best_single",
    "reward_recovered_random",
    "regret",
    "best_single_teacher",
    "num_train_prompts",
    "num_eval_prompts",
)


def size_category(rows: int) -> str:
    """The Hub's `size_categories` bucket for a row count."""
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < limit:
            return label
    return "1M<n<10M" if rows < 10_000_000 else "n>1T"


def _quality_text(recipe: PersynRecipe) -> str:
    if recipe.quality.kind == "reward_model":
        return f"reward model `{recipe.quality.reward_model}`"
    return {
        "math_answer": "math answer verified against the gold answer",
        "instruction_following": "instruction checks passed",
        "reasoning_gym": "each task type's own reasoning-gym checker on the final answer",
        "column": f"the answer pool's precomputed `{recipe.quality.column}` score",
        "auto": "chosen per row: reasoning-gym checkers, instruction checks, the gold answer, a pool score"
        + (f" or reward model `{recipe.quality.reward_model}`" if recipe.quality.reward_model else ""),
    }.get(recipe.quality.kind, recipe.quality.kind)


def _trim(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SAMPLE_TEXT_CHARS:
        return value[:SAMPLE_TEXT_CHARS] + " [...]"
    if isinstance(value, list):
        return [_trim(item) for item in value]
    if isinstance(value, dict):
        return {key: _trim(item) for key, item in value.items()}
    if isinstance(value, float):
        return round(value, 4)
    return value


def sample_rows(dataset: Dataset, count: int = 3) -> str:
    """The first `count` rows as indented JSON, long strings cut."""
    rows = dataset.select(range(min(count, len(dataset)))).to_list()
    return json.dumps([_trim(row) for row in rows], indent=2, ensure_ascii=False, default=str)


def teacher_counts(summary: dict[str, Any], dataset: Dataset | None, teachers: list[str]) -> dict[str, int]:
    counts = summary.get("teacher_counts")
    if not counts and dataset is not None and "teacher" in dataset.column_names:
        found = Counter(dataset["teacher"])
        counts = {name: found.get(name, 0) for name in teachers}
    return dict(counts or {})


def teacher_distribution_png(counts: dict[str, int], title: str = "Rows per teacher") -> bytes:
    """A small bar chart (PNG bytes, matplotlib Agg). Byte-identical for the same counts, so re-pushes are no-ops."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 0.5 + 0.45 * max(len(counts), 1)), dpi=100)
    axis = figure.subplots()
    names = list(counts)
    axis.barh(names, [counts[name] for name in names], color="#4C72B0")
    axis.invert_yaxis()
    axis.set_xlim(0, max([*counts.values(), 1]) * 1.2)  # room for the count labels
    axis.set_xlabel("rows")
    axis.set_title(title)
    for index, name in enumerate(names):
        axis.text(counts[name], index, f" {counts[name]}", va="center")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _versions(summary: dict[str, Any]) -> dict[str, str]:
    return {name: version for name, version in (summary.get("versions") or {}).items() if version}


def generation_costs(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per teacher and phase (labeling, routed): what generation cost, for the card's accounting table.

    Figures are the stage's own accounting (requests made when the stage ran, rows reused from an
    interrupted run's checkpoint, tokens, failures), so a resumed run still reports what was paid.
    """
    costs = []
    for teacher, parts in (summary.get("generation") or {}).items():
        for part in parts:
            costs.append(
                {
                    "teacher": teacher,
                    "phase": part.get("phase", ""),
                    "requests": int(part.get("requests", 0) or 0),
                    "reused": int(part.get("reused", 0) or 0),
                    "retries": int(part.get("retries", 0) or 0),
                    "prompt_tokens": int(part.get("prompt_tokens", 0) or 0),
                    "completion_tokens": int(part.get("completion_tokens", 0) or 0),
                    "failures": int(part.get("failures", 0) or 0),
                    "seconds": round(float(part.get("seconds", 0.0) or 0.0), 1),
                }
            )
    return costs


def _cells(notes: dict[str, Any] | None) -> dict[str, Any]:
    """Per-teacher notes with `|` escaped in their reasons, so a server's message keeps the table intact."""
    return {
        teacher: {**note, "reason": str(note.get("reason", "")).replace("|", "\\|")}
        for teacher, note in (notes or {}).items()
    }


def comparison_card_section(run_dir: str | Path) -> str | None:
    """The data set card's comparison section, when `persyn compare` ran on this run."""
    path = Path(run_dir) / "comparison.md"
    if not path.is_file():
        return None
    return "## Student comparison (`persyn compare`)\n\n" + path.read_text(encoding="utf-8")


def render_dataset_card(
    *,
    recipe: PersynRecipe,
    summary: dict[str, Any],
    dataset: Dataset | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    labels_repo: str | None = None,
    labels_revision: str | None = None,
    router_repo: str | None = None,
    router_revision: str | None = None,
    chart_file: str | None = None,
    data_files: str = "data/train-*",
    license: str | None = None,
    hub_url: str | None = None,
    comparison: str | None = None,
) -> DatasetCard:
    """The personalized data set's card: YAML metadata (configs, license, task, tags, size) and provenance body.

    `labels_revision` / `router_revision` are the commit shas those repos were pushed at, so the card names
    exactly the data and router this set was built from. `chart_file` is the repo path of the
    teacher-distribution PNG when one is committed beside the card. `comparison`: the `persyn compare`
    table of this run (`compare.comparison_card_section`), when one was made.
    """
    hub = recipe.output.hub
    teachers = list(summary.get("teachers") or recipe.teacher_names())
    counts = teacher_counts(summary, dataset, teachers)
    rows = int(summary.get("rows", len(dataset) if dataset is not None else 0))
    repo_id = repo_id or hub.dataset_repo or "path/to/this/dataset"
    return DatasetCard.from_template(
        _dataset_card_data(recipe, rows, license or hub.license, data_files),
        template_path=str(template_path("dataset_card.md")),
        pretty_name=f"PerSyn {recipe.name}: {rows} rows for {recipe.student.model}",
        repo_id=repo_id,
        revision=revision if revision and revision != "main" else None,
        hub_url=scrub_url(hub_url or hub_endpoint()).rstrip("/"),
        student=recipe.student.model,
        teachers=teachers,
        alpha=recipe.labeling.alpha,
        quality=_quality_text(recipe),
        seed=recipe.seed,
        router_repo=router_repo,
        router_revision=router_revision,
        labels_repo=labels_repo,
        labels_revision=labels_revision,
        rows=rows,
        has_quality=dataset is not None and "quality" in dataset.column_names,
        teacher_counts=counts,
        chart_file=chart_file,
        has_answer=dataset is not None and "answer" in dataset.column_names,
        sample_rows=sample_rows(dataset) if dataset is not None else "[]",
        recipe_yaml=scrub_recipe_yaml(recipe.to_yaml()).strip(),  # no local path, credential, token
        comparison=comparison,
        **_summary_facts(summary, rows),
    )


def _dataset_card_data(recipe: PersynRecipe, rows: int, license: str, data_files: str) -> DatasetCardData:
    """The dataset card's YAML metadata: configs, license, task, tags, size."""
    return DatasetCardData(
        license=license,
        task_categories=["text-generation"],
        language=None,
        tags=["persyn", "distillation", "synthetic", "multi-teacher", "sft"],
        size_categories=[size_category(rows)],
        pretty_name=f"PerSyn {recipe.name}",
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
    )


def _summary_facts(summary: dict[str, Any], rows: int) -> dict[str, Any]:
    """The dataset card's fields read from the run summary: prompt counts, verification, truncation,
    categories, generations and their costs, failures, router metrics and versions."""
    router_metrics = {
        key: (round(value, 4) if isinstance(value, float) else value)
        for key, value in (summary.get("router") or {}).items()
        if key in ROUTER_METRIC_KEYS
    }
    failures = {
        "generation": 0,
        "label_rows_excluded": 0,
        "failed_reasons": {},
        **(summary.get("failures") or {}),
    }
    return {
        "prompts": summary.get("prompts", rows),
        "labeled_prompts": summary.get("labeled_prompts", "n/a"),
        "routed_prompts": summary.get("routed_prompts", "n/a"),
        "eval_items_dropped": (summary.get("prompt_source") or {}).get("eval_items_dropped"),
        "verified_share": (summary.get("quality") or {}).get("verified_correct_share"),
        "verified_routing": summary.get("verified_routing"),
        "truncated": {"answers": 0, "dropped": 0, **(summary.get("truncated") or {})},
        "categories": (summary.get("categories") or {}).get("published") or None,
        "category_column": (summary.get("categories") or {}).get("column") or "category",
        "generations_made": summary.get("generations_made", "n/a"),
        "generations_gts": summary.get("generations_generate_then_select", "n/a"),
        "savings": summary.get("generation_savings"),
        "failures": failures,
        "generation_costs": generation_costs(summary),
        "folded": _cells(summary.get("system_prompt_folded")),
        "stopped": _cells(summary.get("stopped_teachers")),
        "router_metrics": router_metrics or None,
        "versions": _versions(summary),
    }


# --------------------------------------------------------------------------------------------------
def render_labels_card(
    *,
    recipe: PersynRecipe,
    summary: dict[str, Any],
    labels: Dataset,
    routing: Dataset | None = None,
    repo_id: str | None = None,
    hub_url: str | None = None,
) -> DatasetCard:
    """The intermediate repo's card: configs `labels` (default) and `routing`, scores, recipe, versions."""
    hub = recipe.output.hub
    teachers = list(summary.get("teachers") or recipe.teacher_names())
    configs = [
        {
            "config_name": "labels",
            "data_files": [{"split": "train", "path": "labels/train-*"}],
            "default": True,
        }
    ]
    if routing is not None:
        configs.append(
            {"config_name": "routing", "data_files": [{"split": "train", "path": "routing/train-*"}]}
        )
    routed = (
        Counter(routing["teacher"])
        if routing is not None and "teacher" in routing.column_names
        else Counter()
    )
    excluded = sum(1 for reason in labels["excluded"] if reason) if "excluded" in labels.column_names else 0
    card_data = DatasetCardData(
        license=hub.license,
        task_categories=["text-generation"],
        tags=["persyn", "distillation", "synthetic", "multi-teacher", "router-labels"],
        size_categories=[size_category(max(len(labels), len(routing) if routing is not None else 0))],
        pretty_name=f"PerSyn {recipe.name} labels and routing",
        configs=configs,
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(template_path("labels_card.md")),
        pretty_name=f"PerSyn {recipe.name}: labeled pool and routing decisions",
        repo_id=repo_id or hub.labels_repo or "path/to/this/dataset",
        dataset_repo=hub.dataset_repo,
        hub_url=scrub_url(hub_url or hub_endpoint()).rstrip("/"),
        student=recipe.student.model,
        teachers=teachers,
        quality=_quality_text(recipe),
        alpha=recipe.labeling.alpha,
        normalization=recipe.labeling.normalization,
        label_rows=len(labels),
        routing_rows=len(routing) if routing is not None else 0,
        excluded=excluded,
        seed=recipe.seed,
        routed_counts={name: routed.get(name, 0) for name in teachers},
        versions=_versions(summary),
        recipe_yaml=scrub_recipe_yaml(recipe.to_yaml()).strip(),  # no local path, credential, token
    )


__all__ = [
    "CHART_FILE",
    "comparison_card_section",
    "render_dataset_card",
    "render_labels_card",
    "sample_rows",
    "size_category",
    "teacher_distribution_png",
]
