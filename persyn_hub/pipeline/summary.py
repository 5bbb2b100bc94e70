"""The run summary: what was made, what it cost, how long each stage took, where it is."""

from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset

from persyn_hub.bundled import package_version
from persyn_hub.generation.backends import backend_of
from persyn_hub.labeling.design import describe_design
from persyn_hub.pipeline.outputs import RunOutputs
from persyn_hub.recipe.config import PersynRecipe
from persyn_hub.recipe.dtypes import describe_cpu as cpu
from persyn_hub.scoring.answers import FULL_MARKS

TRACKED_PACKAGES = ("persyn_hub", "torch", "transformers", "datasets", "huggingface_hub", "trl", "accelerate")


def describe_cpu() -> dict[str, Any]:
    """Which CPU/GPU produced the timings (bf16 runs 2-4x slower where it is only emulated)."""

    info = cpu()
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a summary never fails on hardware introspection
        pass
    return info


def package_versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **{name: package_version(name) for name in TRACKED_PACKAGES}}


def generations_made(generation: dict[str, list[dict[str, Any]]]) -> int:
    """Model generations the run paid for (requests, and rows a resumed run took from its checkpoint);
    reference and pool answers cost none. Read from each stage's own accounting, so a cached re-run
    reports the same number."""
    return sum(
        int(part.get("requests", 0) or 0) + int(part.get("reused", 0) or 0)
        for parts in generation.values()
        for part in parts
    )


def teacher_notes(generation: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(system prompts folded, teachers stopped), per teacher, from the generation stages' accounting:
    what a reader must know about how the answers were asked for, and which ones were never asked."""
    folded: dict[str, Any] = {}
    stopped: dict[str, Any] = {}
    for teacher, parts in generation.items():
        rows = sum(int(part.get("folded_rows", 0) or 0) for part in parts)
        if rows:
            reasons = [part["system_folded"] for part in parts if part.get("system_folded")]
            folded[teacher] = {"rows": rows, "reason": reasons[0] if reasons else "a system turn is refused"}
        halted = [part for part in parts if part.get("stopped")]
        if halted:
            stopped[teacher] = {
                "rows_not_sent": sum(int(part.get("stopped_rows", 0) or 0) for part in halted),
                "reason": halted[0]["stopped"],
                "phases": [part.get("phase") for part in halted],
            }
    return folded, stopped


def category_table(dataset: Dataset, column: str | None, teachers: list[str]) -> dict[str, dict[str, int]]:
    """{category: {teacher: rows}}: which teacher each task type went to."""
    if not column or column not in dataset.column_names or not len(dataset):
        return {}
    table: dict[str, Counter] = {}
    for category, teacher in zip(dataset[column], dataset["teacher"]):
        table.setdefault(str(category), Counter())[teacher] += 1
    return {c: {t: counts.get(t, 0) for t in teachers} for c, counts in sorted(table.items())}


def verified_correct_share(final: Dataset) -> float | None:
    """Share of the published rows whose verifier score is full marks (None: no verifier ran)."""
    if "quality" not in final.column_names or not len(final):
        return None
    scores = [q for q in final["quality"]]
    return round(sum(1 for q in scores if q is not None and q >= FULL_MARKS) / len(scores), 4)


def build_summary(
    *,
    recipe: PersynRecipe,
    run_dir: Path,
    outputs: RunOutputs,
    stages: list[dict[str, Any]],
    seconds: float,
    versions: dict[str, Any],
) -> dict[str, Any]:
    """Counts come from the data (what was answered, kept, left out), so a cached re-run reports the same."""
    final, failed, labels, assigned = outputs.final, outputs.failed, outputs.labels, outputs.assigned
    generation = outputs.generation
    router, truncated = outputs.router_metrics, outputs.truncated
    num_prompts = len(outputs.prompts)
    num_labeled = min(recipe.labeling.num_prompts, num_prompts)
    teachers = recipe.teacher_names()
    counts = Counter(final["teacher"])
    labeled_rows = assigned.filter(lambda rows: rows["labeled"], batched=True) if len(assigned) else assigned
    folded, stopped = teacher_notes(generation)
    return {
        "name": recipe.name,
        "rows": len(final),
        "teacher_counts": {name: counts.get(name, 0) for name in teachers},
        "prompts": num_prompts,
        "prompt_source": outputs.prompt_report,
        "labeled_prompts": num_labeled,
        "routed_prompts": len(assigned) - len(labeled_rows),
        "labeling": labeling_summary(recipe, labels, generation),
        **generation_cost(recipe, generation, num_prompts),
        "stages": stages,
        "generation": generation,
        "system_prompt_folded": folded,
        "stopped_teachers": stopped,
        "router": router,
        "quality": {
            "kind": recipe.quality.kind,
            "verified_correct_share": verified_correct_share(final),
        },
        **({"verified_routing": outputs.verification} if outputs.verification else {}),
        "categories": category_counts(recipe.prompts.category_column, final, labeled_rows, teachers),
        "truncated": {"answers": truncated, "dropped": truncated if recipe.output.drop_truncated else 0},
        "failures": failure_counts(failed, labels),
        "seconds": round(seconds, 2),
        "seed": recipe.seed,
        "alpha": recipe.labeling.alpha,
        "reward_formula": "r = (1 - alpha) * quality + alpha * learnability (per-prompt normalized)",
        "student": recipe.student.model,
        "teachers": teachers,
        "output_dir": str(run_dir),
        "artifacts": {name: str(run_dir / "artifacts" / name) for name in ("labels", "routing", "dataset")},
        "versions": versions,
        "machine": describe_cpu(),
    }


def generation_cost(
    recipe: PersynRecipe, generation: dict[str, list[dict[str, Any]]], num_prompts: int
) -> dict[str, Any]:
    """The generations this run made against Generate-then-Select's (every model teacher on every prompt;
    reference and pool teachers cost none), the share saved, and the requests sent this run."""

    model_teachers = sum(1 for t in recipe.teachers if not backend_of(t).answers_from_data)
    made = generations_made(generation)
    generate_then_select = num_prompts * model_teachers
    return {
        "generations_made": made,
        "generations_generate_then_select": generate_then_select,
        "generation_savings": round(1 - made / generate_then_select, 4) if generate_then_select else 0.0,
        "requests_this_run": sum(
            s.get("requests_this_run", 0) for parts in generation.values() for s in parts
        ),
    }


def labeling_summary(
    recipe: PersynRecipe, labels: Dataset, generation: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The labeling design as carried out (read from the labeled answers, so a cached re-run says the same):
    full or balanced pairs, m, the labeled answers against full labeling's, the pairs, and the model
    generations the labeling cost (reference and pool answers cost none)."""
    asked: dict[str, list[str]] = {}
    for prompt_id, teacher in zip(labels["prompt_id"], labels["teacher"]):
        asked.setdefault(prompt_id, []).append(teacher)
    record = describe_design(asked, recipe.teacher_names(), recipe.labeling.teachers_per_prompt, recipe.seed)
    record["labeling_generations"] = generations_made(
        {t: [part for part in parts if part.get("phase") == "labeling"] for t, parts in generation.items()}
    )
    return record


def category_counts(
    column: str | None, final: Dataset, labeled_rows: Dataset, teachers: list[str]
) -> dict[str, Any]:
    """Rows per category and teacher: in the published set, and the labeled prompts' best teachers."""
    return {
        "column": column,
        "published": category_table(final, column, teachers),
        "labeled_oracle": category_table(
            labeled_rows.filter(lambda r: [t is not None for t in r["teacher"]], batched=True),
            column,
            teachers,
        )
        if len(labeled_rows)
        else {},
    }


def failure_counts(failed: Dataset, labels: Dataset) -> dict[str, Any]:
    """Failed generations (count, first 50 prompt ids, reasons) and label rows excluded from the router."""
    excluded = (
        [reason for reason in labels["excluded"] if reason] if "excluded" in labels.column_names else []
    )
    return {
        "generation": len(failed),
        "failed_prompt_ids": failed["prompt_id"][:50] if len(failed) else [],
        "failed_reasons": dict(Counter(str(e).split(":")[0][:80] for e in failed["error"]))
        if len(failed)
        else {},
        "label_rows_excluded": len(excluded),
        "label_excluded_reasons": dict(Counter(r.split(":")[0][:80] for r in excluded)),
    }


def _interval(router: dict[str, Any], key: str) -> str:
    low_high = (router.get("intervals") or {}).get(key)
    return f" [{low_high[0]:.2f}, {low_high[1]:.2f}]" if low_high else ""


def _router_lines(router: dict[str, Any]) -> list[str]:
    sizes = router.get("split_sizes") or {}
    hits = ", ".join(f"hit@{k} {v:.2f}" for k, v in (router.get("hit_at_k") or {}).items())
    lines = [
        f"  router on {sizes.get('test', router.get('num_eval_prompts', '?'))} test prompts (trained on "
        f"{sizes.get('train', '?')}, early-stopped on {sizes.get('validation', '?')}; 95% bootstrap intervals):",
        f"    reward recovered {router['reward_recovered']:.2f}{_interval(router, 'reward_recovered')}"
        f"  best single teacher ({router.get('best_single_teacher')}) "
        f"{router['reward_recovered_best_single']:.2f}{_interval(router, 'reward_recovered_best_single')}"
        f"  random {router['reward_recovered_random']:.2f}{_interval(router, 'reward_recovered_random')}",
        f"    top-1 agreement {router['top1_agreement']:.2f}{_interval(router, 'top1_agreement')}"
        + (f", {hits}" if hits else "")
        + (f", regret {router['regret']:.3f}" if "regret" in router else ""),
    ]
    if "reward_recovered_minus_best_single" in (router.get("intervals") or {}):
        low, high = router["intervals"]["reward_recovered_minus_best_single"]
        verdict = "significant" if low > 0 or high < 0 else "not significant"
        lines.append(f"    router - best single: [{low:+.2f}, {high:+.2f}] ({verdict} at 95%)")
    if router.get("oracle_share"):
        shares = ", ".join(f"{t} {v:.0%}" for t, v in router["oracle_share"].items())
        lines.append(f"    oracle teacher on the labeled prompts: {shares}")
    if router.get("learning_curve"):
        points = ", ".join(
            f"{point['train_prompts']}"
            + (f" ({point['labeled_answers']} answers)" if point.get("labeled_answers") is not None else "")
            + f" -> {point['reward_recovered']:.2f}"
            + (f" [{point['interval'][0]:.2f}, {point['interval'][1]:.2f}]" if point.get("interval") else "")
            for point in router["learning_curve"]
        )
        lines.append(
            f"    learning curve (train prompts -> reward recovered on the same test prompts): {points}"
        )
    return lines


def _labeling_lines(labeling: dict[str, Any] | None) -> list[str]:
    """The labeling design and what it cost, in one line."""
    if not labeling:
        return []
    design = (
        "every teacher per prompt"
        if labeling["design"] == "full"
        else f"{labeling['teachers_per_prompt']} teachers per prompt, pairs balanced "
        f"({labeling['pair_count_range'][0]}-{labeling['pair_count_range'][1]} prompts per pair)"
    )
    return [
        f"  labeling: {design}: {labeling['labeled_answers']} labeled answers (full labeling: "
        f"{labeling['full_labeling_answers']}), {labeling['labeling_generations']} model generations"
    ]


def _note_lines(summary: dict[str, Any]) -> list[str]:
    """Teachers whose system prompt was folded, and teachers that were stopped (the run says so)."""
    lines = []
    for teacher, fold in (summary.get("system_prompt_folded") or {}).items():
        lines.append(
            f"  {teacher}: system prompt folded into the first user turn on {fold['rows']} rows ({fold['reason']})"
        )
    for teacher, stop in (summary.get("stopped_teachers") or {}).items():
        lines.append(
            f"  STOPPED {teacher} ({', '.join(map(str, stop['phases']))}): {stop['reason']}; "
            f"{stop['rows_not_sent']} rows not sent. Fix it, then `persyn run RECIPE --retry-failed`."
        )
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable end-of-run report printed by `persyn run`."""
    lines = [
        f"PerSyn run {summary['name']!r} finished in {summary.get('wall_seconds', summary['seconds'])} s"
    ]
    lines.append(
        f"  rows in the personalized data set: {summary['rows']} (of {summary['prompts']} prompts: "
        f"{summary.get('labeled_prompts', 0)} labeled kept their best answer, "
        f"{summary.get('routed_prompts', 0)} routed)"
    )
    total = max(summary["rows"], 1)
    for name, count in summary["teacher_counts"].items():
        lines.append(f"    {name:<32} {count:>6}  {count / total:6.1%}")
    share = (summary.get("quality") or {}).get("verified_correct_share")
    if share is not None:
        lines.append(f"  verified correct ({summary['quality']['kind']}): {share:.1%} of the published rows")
    verified = summary.get("verified_routing")
    if verified:
        lines.append(
            f"  verified routing: {verified['routed_answers_rejected'] or 0} routed answers rejected by the "
            f"checker; up to {verified['fallback_on_incorrect']} fallback(s) each: {verified['extra_answers']} "
            f"extra answers ({verified['extra_generations']} model generations), {verified['recovered']} "
            f"prompts recovered; {verified['dropped_incorrect']} incorrect rows dropped"
        )
    lines += _labeling_lines(summary.get("labeling"))
    lines.append(
        f"  generations: {summary['generations_made']} made vs {summary['generations_generate_then_select']} "
        f"for Generate-then-Select ({summary['generation_savings']:.0%} saved); "
        f"{summary['requests_this_run']} requested in this run"
    )
    router = summary.get("router")
    if router:
        lines += _router_lines(router)
    categories = (summary.get("categories") or {}).get("published") or {}
    if categories:
        teachers = summary["teachers"]
        lines.append(f"  routing per {summary['categories']['column']} (published rows per teacher):")
        lines.append("    " + f"{'':<24}" + "".join(f"{t[:18]:>20}" for t in teachers))
        for category, counts in categories.items():
            lines.append(
                "    " + f"{category[:24]:<24}" + "".join(f"{counts.get(t, 0):>20}" for t in teachers)
            )
    truncated = summary.get("truncated") or {}
    if truncated.get("answers"):
        lines.append(
            f"  truncated answers (cut at max_new_tokens): {truncated['answers']}, "
            f"{truncated['dropped']} left out of the data set"
        )
    failures = summary["failures"]
    if failures["label_rows_excluded"]:
        lines.append(
            f"  labeled answers left out of the router's pairs: {failures['label_rows_excluded']} "
            f"{failures['label_excluded_reasons']}"
        )
    if failures["generation"]:
        lines.append(
            f"  failures: {failures['generation']} prompts without a usable answer {failures['failed_reasons']}; "
            "`persyn run RECIPE --retry-failed` asks the failed rows again."
        )
    lines += _note_lines(summary)
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
