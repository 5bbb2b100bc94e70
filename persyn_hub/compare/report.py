"""The comparison's numbers and how they are shown: means with intervals, per-seed values, the chart.

Every cell is the mean over seeds and evaluation items of one strategy's per-item scores, with a 95%
interval that counts both what a new training run and what new evaluation items would change
(`compare.intervals`); differences are paired, seed with seed and item with item, and called
significant when their interval excludes 0. `comparison.md` is self-contained: the command that made
it, the budget, the tables and how to read them, so it can be pasted into a README unedited.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from persyn_hub.compare.intervals import interval_cells

BASE_ROW = "student (no SFT)"


def score_matrix(reports: list[dict[str, Any]], task: str, metric: str) -> np.ndarray:
    """(seeds x items) per-item scores of one task metric."""
    return np.array([report["items"][task][metric] for report in reports], dtype=np.float64)


def summarize_comparison(
    recipe: Any,
    pipeline: Any,
    summary: dict[str, Any],
    info: dict[str, dict[str, Any]],
    training: dict[str, list[dict[str, Any]]],
    reports: dict[str, list[dict[str, Any]]],
    common: list[str],
    command: Optional[str] = None,
) -> dict[str, Any]:
    """The comparison as data: one row per strategy with cost, training and scores with intervals;
    `command` (the `persyn compare` line that made it) heads the markdown."""
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
        cells = interval_cells(matrices, reference=reference, intervals=recipe.intervals)
        if "oracle" in matrices and "random" in matrices:
            pair = interval_cells(
                {"oracle": matrices["oracle"], "random": matrices["random"]},
                reference="random",
                intervals=recipe.intervals,
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
        "command": command,
        "student": recipe.student or pipeline.student.model,
        "pipeline": recipe.pipeline,
        "training_prompts": len(common),
        "seeds": recipe.seeds,
        "intervals": recipe.intervals,
        "sft": recipe.sft,
        "budget": training_budget(training),
        "evaluation": asdict(recipe.evaluation),
        "scores": {key: {"items": value["items"]} for key, value in scores.items()},
        "rows": rows,
        "run": {
            k: summary.get(k)
            for k in ("rows", "labeled_prompts", "routed_prompts", "teacher_counts", "output_dir")
        },
    }


def training_budget(training: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    """What every student actually trained: the distinct epochs completed, optimizer steps and rows over
    all strategies and seeds (one value each when the budget is the same for all)."""
    runs = [run for seeds in training.values() for run in seeds]
    return {
        key: sorted({run[key] for run in runs if run.get(key) is not None})
        for key in ("epochs", "steps", "rows")
    }


def _cell_text(cell: Optional[dict[str, Any]]) -> str:
    if not cell:
        return ""
    interval = cell.get("interval")
    return f"{cell['mean']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _difference_text(cell: Optional[dict[str, Any]]) -> str:
    if not cell:
        return ""
    if "interval" not in cell:
        return f"{cell['mean']:+.3f}"
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


def _budget_text(budget: dict[str, list[Any]]) -> str:
    epochs, steps, rows = (budget.get(key) or [] for key in ("epochs", "steps", "rows"))
    if len(epochs) == len(steps) == len(rows) == 1:
        return (
            f"{epochs[0]:g} epoch(s) over its {rows[0]} rows ({steps[0]} optimizer steps), the same for every "
            "strategy and seed"
        )
    return f"epochs {epochs}, optimizer steps {steps}, rows {rows}" if epochs else "TRL's settings"


def _heading(comparison: dict[str, Any]) -> str:
    """What was compared and how, so the markdown reads on its own (a README, a data set card)."""
    ev = comparison["evaluation"]
    items = ", ".join(f"{v['items']} items" for v in comparison["scores"].values())
    command = f"**`{comparison['command']}`**\n\n" if comparison.get("command") else ""
    intervals = (
        "Cells: mean over seeds and items [95% interval]; minus persyn: the paired difference (same seed, same "
        "item), * = its interval excludes 0. An interval counts what a new training run and what new evaluation "
        "items would change: SE^2 = var(seed means)/seeds + the items' variance beyond noise / items, times a "
        "multiplier that moves from the normal's to the t with seeds - 1 degrees of freedom as seeds dominate "
        "(about 4.3 with 3 seeds): few seeds give wide intervals, honestly (persyn_hub docs/comparison.md)."
        if comparison.get("intervals", True)
        else "Cells: mean over seeds and items (intervals off: `intervals: false`)."
    )
    return (
        f"{command}Student `{comparison['student']}` fine-tuned on the same {comparison['training_prompts']} "
        "training prompts (the prompts `persyn run` routed, outside the labeled subset and every evaluation set) "
        f"with each strategy's answers, once per SFT seed {comparison['seeds']}: "
        f"{_budget_text(comparison.get('budget') or {})}; evaluated greedily on {ev['tasks']} ({items}, "
        f"max {ev['max_gen_toks']} new tokens). {intervals}\n"
    )


def _students_text(comparison: dict[str, Any]) -> str:
    """How long the students took, and which came from an earlier comparison of the same run."""
    students = comparison.get("students")
    if not students:
        return ""
    runs = [run for row in comparison["rows"] for run in row.get("training") or []]
    trained = [run for run in runs if not run.get("reused")]
    text = (
        f"Training and evaluating the students took {students['seconds'] / 60:.1f} min "
        f"({len(trained)} trained here"
    )
    if students.get("reused"):
        text += (
            f"; {len(students['reused'])} reused with their evaluation from `{students['cache']}` "
            f"({', '.join(students['reused'])}): a student on the same training rows with the same settings, seed "
            "and package versions was already trained, by an earlier comparison of this run or here for a "
            "strategy whose set is the same rows"
        )
    return text + ").\n"


def per_seed_markdown(comparison: dict[str, Any]) -> str:
    """Per score: each student's mean per seed and its paired difference to persyn on the same seed."""
    seeds = comparison["seeds"]
    blocks = []
    for key in comparison["scores"]:
        paired = any("minus_persyn" in (row["scores"].get(key) or {}) for row in comparison["rows"])
        header = ["strategy"] + [f"seed {seed}" for seed in seeds]
        header += [f"minus persyn, seed {seed}" for seed in seeds] if paired else []
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in comparison["rows"]:
            cell = row["scores"].get(key) or {}
            means = cell.get("per_seed") or []
            means = means * len(seeds) if len(means) == 1 else means  # one model: the same in every column
            cells = [row["strategy"]] + [f"{m:.3f}" for m in means] + [""] * (len(seeds) - len(means))
            if paired:
                differences = (cell.get("minus_persyn") or {}).get("per_seed") or []
                cells += [f"{d:+.3f}" for d in differences] + [""] * (len(seeds) - len(differences))
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append(
            f"Per seed, {key}: each student's mean per SFT seed"
            + (
                " and its paired difference to persyn on the same seed (the untuned student is one model: its "
                "score in every seed column, minus each persyn seed)"
                if paired
                else ""
            )
            + ".\n\n"
            + "\n".join(lines)
            + "\n"
        )
    return "\n".join(blocks)


def _score_table(comparison: dict[str, Any]) -> str:
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
    return "\n".join(lines) + "\n"


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """The whole report: what ran, the score table, Oracle - random, per-seed values, training data."""
    notes = []
    for key in comparison["scores"]:
        oracle = next(
            (r["scores"][key].get("minus_random") for r in comparison["rows"] if r["strategy"] == "oracle"),
            None,
        )
        if oracle:
            per_seed = ", ".join(f"{d:+.3f}" for d in oracle.get("per_seed") or [])
            notes.append(f"Oracle - random on {key}: {_difference_text(oracle)} (per seed: {per_seed}).")
    costs = (
        "Teacher generations count model answers each strategy needed (reference answers are free): every strategy "
        "that read the labeled prompts (strong, mix, family_strong, car, persyn, persyn_verified) includes labeling "
        "every teacher on them; a fallback pays for the unusable first choice too, and persyn_verified for every "
        "answer the checker rejected; Oracle and Generate-then-Select pay every teacher on every prompt.\n"
    )
    data = training_data_markdown(comparison)
    return (
        _heading(comparison)
        + "\n"
        + _score_table(comparison)
        + "\n"
        + costs
        + _students_text(comparison)
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
        + "\n"
        + per_seed_markdown(comparison)
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
    axes[0].set_title(
        f"{comparison['name']}: student {comparison['student']} (95% intervals over seeds and items)"
    )
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
    "comparison_markdown",
    "per_seed_markdown",
    "plot_comparison",
    "score_matrix",
    "summarize_comparison",
    "training_budget",
    "training_data_markdown",
    "write_comparison",
]
