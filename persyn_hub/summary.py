"""The run summary: what was made, what it cost, how long each stage took, where it is."""

from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset

from persyn_hub.bundled import package_version
from persyn_hub.config import PersynRecipe

TRACKED_PACKAGES = ("persyn_hub", "torch", "transformers", "datasets", "huggingface_hub", "trl", "accelerate")


def package_versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **{name: package_version(name) for name in TRACKED_PACKAGES}}


def build_summary(
    *,
    recipe: PersynRecipe,
    run_dir: Path,
    final: Dataset,
    failed: Dataset,
    labels: Dataset,
    num_prompts: int,
    num_labeled: int,
    stages: list[dict[str, Any]],
    generation: dict[str, list[dict[str, Any]]],
    router: dict[str, Any] | None,
    seconds: float,
    versions: dict[str, Any],
) -> dict[str, Any]:
    """Counts are structural (what the method needs), so a fully cached re-run reports the same numbers."""
    teachers = recipe.teacher_names()
    counts = Counter(final["teacher"])
    made = num_labeled * len(teachers) + (num_prompts - num_labeled)
    generate_then_select = num_prompts * len(teachers)
    excluded = (
        [reason for reason in labels["excluded"] if reason] if "excluded" in labels.column_names else []
    )
    return {
        "name": recipe.name,
        "rows": len(final),
        "teacher_counts": {name: counts.get(name, 0) for name in teachers},
        "prompts": num_prompts,
        "labeled_prompts": num_labeled,
        "generations_made": made,
        "generations_generate_then_select": generate_then_select,
        "generation_savings": round(1 - made / generate_then_select, 4) if generate_then_select else 0.0,
        "requests_this_run": sum(
            s.get("requests_this_run", 0) for parts in generation.values() for s in parts
        ),
        "stages": stages,
        "generation": generation,
        "router": router,
        "failures": {
            "generation": len(failed),
            "failed_prompt_ids": failed["prompt_id"][:50] if len(failed) else [],
            "failed_reasons": dict(Counter(str(e).split(":")[0][:80] for e in failed["error"]))
            if len(failed)
            else {},
            "label_rows_excluded": len(excluded),
            "label_excluded_reasons": dict(Counter(r.split(":")[0][:80] for r in excluded)),
        },
        "seconds": round(seconds, 2),
        "seed": recipe.seed,
        "alpha": recipe.labeling.alpha,
        "student": recipe.student.model,
        "teachers": teachers,
        "output_dir": str(run_dir),
        "artifacts": {name: str(run_dir / "artifacts" / name) for name in ("labels", "routing", "dataset")},
        "versions": versions,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable end-of-run report printed by `persyn run`."""
    lines = [
        f"PerSyn run {summary['name']!r} finished in {summary.get('wall_seconds', summary['seconds'])} s"
    ]
    lines.append(f"  rows in the personalized data set: {summary['rows']} (of {summary['prompts']} prompts)")
    total = max(summary["rows"], 1)
    for name, count in summary["teacher_counts"].items():
        lines.append(f"    {name:<32} {count:>6}  {count / total:6.1%}")
    lines.append(
        f"  generations: {summary['generations_made']} made vs {summary['generations_generate_then_select']} "
        f"for Generate-then-Select ({summary['generation_savings']:.0%} saved); "
        f"{summary['requests_this_run']} requested in this run"
    )
    router = summary.get("router")
    if router:
        lines.append(
            "  router (held-out): top-1 agreement {:.2f}, reward recovered {:.2f} "
            "(best single teacher {:.2f}, random {:.2f})".format(
                router.get("top1_agreement", float("nan")),
                router.get("reward_recovered", float("nan")),
                router.get("reward_recovered_best_single", float("nan")),
                router.get("reward_recovered_random", float("nan")),
            )
        )
    failures = summary["failures"]
    if failures["generation"] or failures["label_rows_excluded"]:
        lines.append(
            f"  failures: {failures['generation']} routed rows failed generation {failures['failed_reasons']}; "
            f"{failures['label_rows_excluded']} labeled rows excluded. Re-run to retry only those."
        )
    lines.append("  stages:")
    for stage in summary["stages"]:
        lines.append(
            f"    {stage['name']:<40} {stage['seconds']:>8.1f} s  {'cached' if stage['cached'] else ''}"
        )
    lines.append(
        f"  output: {summary['output_dir']}  (summary.json, artifacts/: dataset, labels, routing, router)"
    )
    for artifact, info in (summary.get("hub") or {}).items():
        lines.append(f"  hub {artifact}: {info}")
    return "\n".join(lines)
