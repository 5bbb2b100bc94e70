"""The comparison's numbers and how they are shown: means with bootstrap intervals, the table, the chart.

Every cell is the mean over seeds and evaluation items of one strategy's per-item scores, with a 95%
percentile interval from resampling items and seeds with replacement (the same draws for every
strategy, so differences are paired). A difference is called significant when its interval excludes 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

BASE_ROW = "student (no SFT)"


def score_matrix(reports: list[dict[str, Any]], task: str, metric: str) -> np.ndarray:
    """(seeds x items) per-item scores of one task metric."""
    return np.array([report["items"][task][metric] for report in reports], dtype=np.float64)


def bootstrap_cells(
    matrices: dict[str, np.ndarray], *, reference: Optional[str], resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Mean and 95% interval per strategy; paired difference to `reference` (same draws for all).

    Items and seeds are resampled with replacement; a strategy with fewer seeds (the untrained
    student: one) is resampled over its own seeds.
    """
    rng = np.random.default_rng(seed)
    items = next(iter(matrices.values())).shape[1]
    item_draws = rng.integers(0, items, size=(resamples, items)) if resamples else None
    seed_draws = {}
    cells: dict[str, dict[str, Any]] = {}
    boots: dict[str, np.ndarray] = {}
    for name, matrix in matrices.items():
        mean = float(matrix.mean())
        cell: dict[str, Any] = {"mean": mean, "per_seed": [float(m) for m in matrix.mean(axis=1)]}
        if resamples:
            n_seeds = matrix.shape[0]
            if n_seeds not in seed_draws:
                seed_draws[n_seeds] = rng.integers(0, n_seeds, size=(resamples, n_seeds))
            per_item = matrix[seed_draws[n_seeds]]  # resamples x seeds x items
            draws = np.take_along_axis(per_item, item_draws[:, None, :], axis=2).mean(axis=(1, 2))
            boots[name] = draws
            cell["interval"] = [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))]
        cells[name] = cell
    if resamples and reference in boots:
        for name, draws in boots.items():
            if name == reference:
                continue
            diff = draws - boots[reference]
            low, high = float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975))
            cells[name]["minus_" + reference] = {
                "mean": cells[name]["mean"] - cells[reference]["mean"],
                "interval": [low, high],
                "significant": bool(low > 0 or high < 0),
            }
    return cells


def summarize_comparison(
    recipe: Any,
    pipeline: Any,
    summary: dict[str, Any],
    info: dict[str, dict[str, Any]],
    training: dict[str, list[dict[str, Any]]],
    reports: dict[str, list[dict[str, Any]]],
    common: list[str],
) -> dict[str, Any]:
    """The comparison as data: one row per strategy with cost, training and scores with intervals."""
    first = next(iter(reports.values()))[0]
    metrics = [
        (row["task"], row["metric"])
        for row in first["scores"]
        if row["metric"] in first["items"].get(row["task"], {})
    ]
    scores: dict[str, dict[str, Any]] = {}
    for task, metric in metrics:
        matrices = {name: score_matrix(runs, task, metric) for name, runs in reports.items()}
        reference = "persyn" if "persyn" in matrices else None
        cells = bootstrap_cells(matrices, reference=reference, resamples=recipe.bootstrap, seed=recipe.seed)
        if "oracle" in matrices and "random" in matrices:
            pair = bootstrap_cells(
                {"oracle": matrices["oracle"], "random": matrices["random"]},
                reference="random",
                resamples=recipe.bootstrap,
                seed=recipe.seed,
            )
            cells["oracle"]["minus_random"] = pair["oracle"].get("minus_random")
        scores[f"{task} {metric}"] = {"items": int(matrices[next(iter(matrices))].shape[1]), "cells": cells}
    rows = []
    for name in reports:
        row = {"strategy": name, **({} if name == BASE_ROW else info[name])}
        if name in training:
            row["training"] = training[name]
            row["seeds"] = [run["seed"] for run in training[name]]
        row["scores"] = {key: value["cells"][name] for key, value in scores.items()}
        rows.append(row)
    return {
        "name": recipe.name,
        "student": recipe.student or pipeline.student.model,
        "pipeline": recipe.pipeline,
        "training_prompts": len(common),
        "seeds": recipe.seeds,
        "bootstrap": recipe.bootstrap,
        "sft": recipe.sft,
        "evaluation": asdict(recipe.evaluation),
        "scores": {key: {"items": value["items"]} for key, value in scores.items()},
        "rows": rows,
        "run": {
            k: summary.get(k)
            for k in ("rows", "labeled_prompts", "routed_prompts", "teacher_counts", "output_dir")
        },
    }


def _cell_text(cell: Optional[dict[str, Any]]) -> str:
    if not cell:
        return ""
    interval = cell.get("interval")
    return f"{cell['mean']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _difference_text(cell: Optional[dict[str, Any]]) -> str:
    if not cell:
        return ""
    low, high = cell["interval"]
    return f"{cell['mean']:+.3f} [{low:+.3f}, {high:+.3f}]" + (" *" if cell["significant"] else "")


def _number(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _teacher_mix(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{t} {c / total:.0%}" for t, c in counts.items() if c) if total else ""


def training_data_markdown(comparison: dict[str, Any]) -> str:
    """What each student learned from: teacher mix, fallbacks, checker-accepted share, quality, length and
    student log-prob of its training answers, and what choosing them cost (labeling, stage seconds)."""
    header = [
        "strategy",
        "teacher mix",
        "fallbacks",
        "extra answers",
        "checker-accepted share",
        "mean quality",
        "mean response tokens",
        "mean student log-prob",
        "labeling generations",
        "selection seconds",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    ties = []
    for row in comparison["rows"]:
        if "answers" not in row:
            continue
        answers, cost = row["answers"], row.get("cost") or {}
        seconds = _number(cost.get("seconds"), 1) + (" (cached)" if cost.get("cached_stages") else "")
        cells = [
            row["strategy"],
            _teacher_mix(row.get("teacher_counts") or {}),
            str(row.get("fallbacks", "")),
            str(row.get("extra_answers", "")),
            _number(answers.get("verified_correct_share")),
            _number(answers.get("mean_quality")),
            _number(answers.get("mean_response_tokens"), 1),
            _number(answers.get("mean_student_logprob")),
            str(cost.get("labeling_generations", "")),
            seconds,
        ]
        lines.append("| " + " | ".join(cells) + " |")
        tied = (row.get("defined_by") or {}).get("ties") or []
        if len(tied) > 1:
            ties.append(f"{row['strategy']}: {', '.join(tied)} tie; the tie rule chose {tied[0]}.")
    if len(lines) == 2:
        return ""
    note = (
        "\nTraining answers of each strategy on the common prompts: checker-accepted share = quality >= 1 "
        "(full marks), response tokens and log-prob per token under the untuned student. Fallbacks: prompts "
        "where the strategy's first choice was unusable (persyn_verified: unusable or rejected by the checker) and its "
        "own next choice answered; extra answers: answers asked beyond one per prompt. Ties in a "
        "single-teacher choice: strong/family_strong go to the teacher with more scored labeled answers, then "
        "recipe order; car to the earlier teacher in recipe order.\n"
    )
    return "\n".join(lines) + "\n" + note + ("\n" + "\n".join(ties) + "\n" if ties else "")


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """strategy x rows x cost x score (mean [95% interval]) x difference to PerSyn (* = significant)."""
    keys = list(comparison["scores"])
    header = ["strategy", "training rows", "teacher generations", "teacher tokens"]
    for key in keys:
        header += [key, f"{key}: minus persyn"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in comparison["rows"]:
        cost = row.get("cost") or {}
        cells = [
            row["strategy"],
            str(row.get("rows", "")),
            str(cost.get("generations", "")),
            str(cost.get("tokens", "")),
        ]
        for key in keys:
            cell = row["scores"].get(key)
            cells += [_cell_text(cell), _difference_text((cell or {}).get("minus_persyn"))]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for key in comparison["scores"]:
        oracle = next(
            (r["scores"][key].get("minus_random") for r in comparison["rows"] if r["strategy"] == "oracle"),
            None,
        )
        if oracle:
            notes.append(f"Oracle - random on {key}: {_difference_text(oracle)}.")
    ev = comparison["evaluation"]
    note = (
        f"\nStudent `{comparison['student']}` fine-tuned on the same {comparison['training_prompts']} training prompts "
        f"(the prompts `persyn run` routed, outside the labeled subset and every evaluation set) with each strategy's "
        f"answers, once per seed {comparison['seeds']}; evaluated greedily on {ev['tasks']} "
        f"({', '.join(str(v['items']) + ' items' for v in comparison['scores'].values())}, max {ev['max_gen_toks']} new tokens). "
        f"Cells: mean over seeds and items [95% bootstrap interval, {comparison['bootstrap']} resamples of items and seeds]; "
        "differences are paired bootstraps, * = the interval excludes 0. Teacher generations count model answers "
        "each strategy needed (reference answers are free): every strategy that read the labeled prompts (strong, mix, "
        "family_strong, car, persyn, persyn_verified) includes labeling every teacher on them; a fallback pays for the "
        "unusable first choice too, and persyn_verified for every answer the checker rejected; Oracle and Generate-then-Select pay every teacher on every prompt.\n"
    )
    data = training_data_markdown(comparison)
    return (
        "\n".join(lines)
        + "\n"
        + note
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
        + ("\n" + data if data else "")
    )


def plot_comparison(comparison: dict[str, Any], path: Path) -> None:
    """Scores with 95% intervals (one panel per task metric) and teacher generations per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(comparison["scores"])
    names = [row["strategy"] for row in comparison["rows"]]
    x = np.arange(len(names))
    fig, axes = plt.subplots(
        len(keys) + 1, 1, figsize=(max(6, 1.0 * len(names)), 3.2 * (len(keys) + 1)), sharex=True
    )
    for ax, key in zip(axes, keys):
        cells = [row["scores"].get(key) or {"mean": 0.0} for row in comparison["rows"]]
        means = np.array([c["mean"] for c in cells])
        low = np.array([c.get("interval", [c["mean"], c["mean"]])[0] for c in cells])
        high = np.array([c.get("interval", [c["mean"], c["mean"]])[1] for c in cells])
        colors = [
            "#C44E52" if n == "persyn" else "#8C8C8C" if n == "student (no SFT)" else "#4C72B0" for n in names
        ]
        ax.bar(x, means, color=colors)
        ax.errorbar(x, means, yerr=[means - low, high - means], fmt="none", ecolor="black", capsize=3)
        ax.set_ylabel(key)
    axes[0].set_title(f"{comparison['name']}: student {comparison['student']} (95% bootstrap intervals)")
    axes[-1].bar(
        x, [(row.get("cost") or {}).get("generations", 0) for row in comparison["rows"]], color="grey"
    )
    axes[-1].set_ylabel("teacher generations")
    axes[-1].set_xticks(x, names, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_comparison(comparison: dict[str, Any], out: Path, run_dir: Path) -> None:
    """comparison.json/.md/.png in `out`; the table beside the run too, where the data set card finds it."""
    text = comparison_markdown(comparison)
    for folder in (out, run_dir):
        (folder / "comparison.json").write_text(
            json.dumps(comparison, indent=2, default=str), encoding="utf-8"
        )
        (folder / "comparison.md").write_text(text, encoding="utf-8")
    plot_comparison(comparison, out / "comparison.png")


__all__ = [
    "BASE_ROW",
    "bootstrap_cells",
    "comparison_markdown",
    "plot_comparison",
    "score_matrix",
    "summarize_comparison",
    "training_data_markdown",
    "write_comparison",
]
