"""`persyn plan-labeling RECIPE [--designs 2,3,full] [--spends 64,128,256] [--output DIR] [--key value ...]`

Which labeling design buys the best router for the answers you can pay for? On a pool whose answers
already exist (a pool from a data set, or a finished run with full labeling: its stages are reused from
output.dir), simulates full labeling against m teachers per prompt at equal spend, on the same held-out test
prompts, with 95% bootstrap intervals over them (and paired ones for each design minus full labeling), and
writes plan.json, plan.md and plan.png to --output (default OUTPUT_DIR/labeling-plan). It generates nothing:
a teacher that would have to generate and has no finished labeling stage stops the command, before any
model is asked, with one line naming it. Any recipe key can be overridden as for `persyn run` (e.g.
--router.num_train_epochs 5): each (design, spend) trains one router.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from datasets import Dataset

from persyn_hub.generation.backends import backend_of
from persyn_hub.labeling.plan import PlanError, PlanSettings, simulate_plan
from persyn_hub.pipeline.cache import StageCache
from persyn_hub.pipeline.generation_stages import read_stats
from persyn_hub.pipeline.run import run_lock
from persyn_hub.pipeline.runner import StageRunner
from persyn_hub.pipeline.stage_names import COMBINE, label_generate
from persyn_hub.pipeline.stages import persyn_stages
from persyn_hub.recipe.config import PersynRecipe, load_recipe
from persyn_hub.router.curve import reward_png

logger = logging.getLogger(__name__)

PLAN_FILES = ("plan.json", "plan.md", "plan.png")


def labeled_pool(recipe: PersynRecipe) -> tuple[Dataset, int]:
    """The recipe's labeled prompts, every teacher's answer scored and combined (the run's stages up to
    `combine`, with full labeling, from and into output.dir's stage cache); (labels, generations made).

    A label stage that would generate (a model teacher whose stage is not finished) is refused before it
    runs: the plan spends no generation. Preflight checks are skipped for the same reason (they probe
    endpoints); a finished stage's answers are reused as they are."""
    recipe.labeling.teachers_per_prompt = None  # a plan hides answers of a FULL labeling
    run_dir = Path(recipe.output.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(StageCache(run_dir), chunk_rows=recipe.launch.chunk_rows)
    generating = {
        label_generate(t.name): t.name for t in recipe.teachers if not backend_of(t).answers_from_data
    }
    with run_lock(run_dir):
        for stage in persyn_stages(recipe, runner):
            if stage.name in generating and not runner.cache.is_done(stage.name, runner.key(stage)):
                raise PlanError(
                    f"plan-labeling: teacher {generating[stage.name]!r} would have to generate its labeled "
                    f"answers (stage {stage.name} is not finished in {run_dir}); the plan generates nothing. "
                    "Run `persyn run RECIPE` with full labeling first, or plan on a pool from a data set."
                )
            runner.run(replace(stage, check=None))
            if stage.name == COMBINE:
                break
    made = sum(
        int(read_stats(runner.cache.folder(name, runner.keys[name])).get("requests", 0) or 0)
        for name in (label_generate(t.name) for t in recipe.teachers)
        if not runner.cached[name]
    )
    if made:  # a bug, not an input error: the guard above should have stopped it
        raise RuntimeError(f"plan-labeling made {made} generation requests; it must make none")
    return runner.outputs[COMBINE], made


def _cell(point: dict[str, Any]) -> str:
    interval = point.get("interval")
    return f"{point['reward_recovered']:.3f}" + (
        f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
    )


def plan_markdown(plan: dict[str, Any]) -> str:
    """The plan as a table: one row per spend, one column per design (reward recovered [95% interval],
    labeled prompts), and each partial design's paired difference from full labeling."""
    labels = list(dict.fromkeys(point["design"] for point in plan["points"]))
    cells = {(p["spend"], p["design"]): p for p in plan["points"]}
    lines = [
        f"# Labeling plan: {len(plan['teachers'])} teachers, {plan['test_prompts']} test prompts answered by all",
        "",
        "Reward recovered on the same test prompts (95% bootstrap interval) for routers trained on the",
        "answers each design buys at each spend (labeled answers on train + validation prompts).",
        "",
        "| Labeled answers | " + " | ".join(labels) + " |",
        "| --- | " + " | ".join("---" for _ in labels) + " |",
    ]
    for spend in plan["spends"]:
        row = [
            f"{_cell(cells[(spend, label)])} ({cells[(spend, label)]['labeled_prompts']} prompts)"
            if (spend, label) in cells
            else "n/a"
            for label in labels
        ]
        lines.append(f"| {spend} | " + " | ".join(row) + " |")
    if plan["differences"]:
        lines += [
            "",
            "| Labeled answers | Design | Minus full labeling (paired 95% interval) |",
            "| --- | --- | --- |",
        ]
        for diff in plan["differences"]:
            low_high = diff["interval"]
            bracket = f" [{low_high[0]:+.3f}, {low_high[1]:+.3f}]" if low_high else ""
            lines.append(f"| {diff['spend']} | {diff['design']} | {diff['minus_full']:+.3f}{bracket} |")
    lines += ["", f"Generation requests made by this plan: {plan['generations']}."]
    return "\n".join(lines) + "\n"


def plan_png(plan: dict[str, Any]) -> bytes:
    """Reward recovered against labeled answers, one line per design, with the intervals as error bars."""
    import matplotlib  # lazily: only the plot needs it

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.4), dpi=100)
    axis = figure.subplots()
    for label in dict.fromkeys(point["design"] for point in plan["points"]):
        points = [p for p in plan["points"] if p["design"] == label]
        values = [p["reward_recovered"] for p in points]
        low = [v - (p["interval"] or [v, v])[0] for v, p in zip(values, points)]
        high = [(p["interval"] or [v, v])[1] - v for v, p in zip(values, points)]
        axis.errorbar(
            [p["labeled_answers"] for p in points], values, yerr=[low, high], fmt="o-", capsize=3, label=label
        )
    return reward_png(
        figure,
        axis,
        "labeled answers (train + validation)",
        "Labeling designs at equal spend (95% intervals)",
    )


def write_plan(plan: dict[str, Any], output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "plan.json").write_text(json.dumps(plan, indent=2), encoding="utf-8")
    (output / "plan.md").write_text(plan_markdown(plan), encoding="utf-8")
    (output / "plan.png").write_bytes(plan_png(plan))


def _numbers(text: Optional[str], flag: str, full: int) -> list[int]:
    """`2,3,full` -> [2, 3, full]; a typo is one PlanError naming the flag."""
    if not text:
        return []
    try:
        return [full if part.strip() == "full" else int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PlanError(
            f"{flag}: {text!r} is not a comma-separated list of whole numbers (e.g. 2,3,full)."
        ) from None


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="persyn plan-labeling", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "recipe", help="pipeline recipe YAML whose labeled answers exist (a pool, or a finished run)"
    )
    parser.add_argument(
        "--designs", default=None, help="teachers per prompt to compare, e.g. 2,3,full (default)"
    )
    parser.add_argument("--spends", default=None, help="labeled answers to compare at, e.g. 64,128,256")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the intervals")
    parser.add_argument("--output", default=None, help="where to write plan.json, plan.md, plan.png")
    args, overrides = parser.parse_known_args(argv)
    recipe = load_recipe(args.recipe, overrides)
    full = len(recipe.teachers)
    settings = PlanSettings(
        designs=_numbers(args.designs, "--designs", full),
        spends=_numbers(args.spends, "--spends", full),
        bootstrap=args.bootstrap,
    )
    for design in settings.designs:  # before any model loads
        if not 2 <= design <= full:
            raise PlanError(f"--designs: {design} is not between 2 and {full} (the teachers); e.g. 2,3,full.")
    if any(spend <= 0 for spend in settings.spends):
        raise PlanError(
            f"--spends: {args.spends!r} must be positive numbers of labeled answers, e.g. 64,128,256."
        )
    labels, made = labeled_pool(recipe)
    output = Path(args.output or Path(recipe.output.dir) / "labeling-plan")
    plan = simulate_plan(labels, recipe, settings, output / "checkpoints")
    plan["generations"] = made
    write_plan(plan, output)
    print(plan_markdown(plan))
    print(f"Written to {output}/{{{','.join(PLAN_FILES)}}}")
    return 0


__all__ = ["labeled_pool", "main", "plan_markdown", "write_plan"]
