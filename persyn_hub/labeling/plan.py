"""Simulate labeling designs on answers that already exist: full labeling against m teachers per prompt,
at equal spend (labeled answers), measured on the same held-out prompts.

On a pool whose every labeled prompt has every teacher's scored answer (a pool from a data set, or a run
with full labeling), any design is simulated exactly by hiding answers: for a spend S and a design m, the
first S / m prompts of one seeded order (nested: a larger spend only adds prompts) keep the answers the
balanced design (`labeling/design.py`) asks for, their rewards are combined again over the answers kept
(per-prompt normalization sees only those, as in a real run), and a router is trained on them (train and
validation prompts split as the recipe splits them) and measured on test prompts that every design shares
and every teacher answered. So the plan answers: for the answers I can pay for, label fewer prompts with
every teacher, or more prompts with a few?

    result = simulate_plan(labels, recipe, PlanSettings(designs=[2, 4], spends=[64, 128, 192]), workdir)
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from persyn_hub.errors import PersynError
from persyn_hub.labeling.design import make_design
from persyn_hub.recipe.config import PersynRecipe
from persyn_hub.router.labels import RewardTable, RouterDataError, pivot_rewards
from persyn_hub.router.metrics import effective_rewards, impute_unasked, mask_unasked
from persyn_hub.router.routing import score_texts
from persyn_hub.router.training import RouterTask, fit_router, metrics_on_test_prompts
from persyn_hub.scoring.combine import COMBINE_COLUMNS, combine_rewards

logger = logging.getLogger(__name__)

MIN_PROMPTS = 3
"""A simulated labeling needs prompts to train on and one to stop early on."""


class PlanError(PersynError, ValueError):
    """The plan cannot be made from this pool; the message names what is missing and the fix."""


@dataclass(frozen=True)
class PlanSettings:
    """What `persyn plan-labeling` compares: designs (teachers per prompt; the pool's size = full) at
    spends (labeled answers on the train and validation prompts); bootstrap resamples of the intervals."""

    designs: list[int] = field(default_factory=list)
    spends: list[int] = field(default_factory=list)
    bootstrap: int = 1000


@dataclass
class PlanPoint:
    """One simulated labeling: its design, spend and the router it gave, measured on the test prompts."""

    design: int
    spend: int
    labeled_prompts: int
    labeled_answers: int
    """Answers paid for: every designed answer, usable or not."""
    router_prompts: int
    """Labeled prompts with two usable answers: those the router learned from."""
    metrics: dict[str, Any]
    gains: np.ndarray
    """Per test prompt: routed effective reward minus the worst (for paired differences)."""

    def record(self, full: int) -> dict[str, Any]:
        intervals = self.metrics.get("intervals") or {}
        return {
            "design": "full" if self.design == full else f"m={self.design}",
            "teachers_per_prompt": self.design,
            "spend": self.spend,
            "labeled_prompts": self.labeled_prompts,
            "labeled_answers": self.labeled_answers,
            "router_prompts": self.router_prompts,
            "reward_recovered": self.metrics["reward_recovered"],
            "interval": intervals.get("reward_recovered"),
            "top1_agreement": self.metrics["top1_agreement"],
            "reward_recovered_best_single": self.metrics["reward_recovered_best_single"],
            "best_single_teacher": self.metrics["best_single_teacher"],
            "epochs_trained": self.metrics.get("epochs_trained"),
        }


def fully_labeled(labels: Dataset, teachers: list[str]) -> RewardTable:
    """The labeled prompts every teacher answered (usable or not), pivoted; a PlanError when there are none."""
    table = pivot_rewards(labels, teachers)
    full = np.flatnonzero(table.asked.all(axis=1))
    if len(full) < 2 * MIN_PROMPTS:
        raise PlanError(
            f"plan-labeling: only {len(full)} labeled prompts have an answer from every teacher {teachers}; a plan "
            "hides answers of fully labeled prompts. Use a pool from a data set or a run with full labeling "
            "(labeling.teachers_per_prompt unset) and more labeled prompts (labeling.num_prompts)."
        )
    return table.subset(full)


def default_designs(num_teachers: int) -> list[int]:
    """m = 2 and 3 (those below the pool's size) and full labeling."""
    return sorted({m for m in (2, 3) if m < num_teachers} | {num_teachers})


def default_spends(pool_prompts: int) -> list[int]:
    """A quarter, a half and all of what labeling every non-test prompt with two teachers costs."""
    most = 2 * pool_prompts
    return sorted({max(2 * MIN_PROMPTS, round(share * most)) for share in (0.25, 0.5, 1.0)})


def _split(table: RewardTable, recipe: PersynRecipe) -> tuple[RewardTable, np.ndarray]:
    """(the test prompts every design is measured on, the seeded order in which the others get labeled)."""
    order = np.random.default_rng(recipe.seed).permutation(len(table))
    num_test = max(1, round(recipe.router.test_fraction * len(table)))
    return table.subset(np.sort(order[:num_test])), order[num_test:]


def _labeled_table(
    labels: Dataset, prompt_ids: list[str], design: int, recipe: PersynRecipe
) -> RewardTable | None:
    """The answers `design` asks for on `prompt_ids`, their rewards combined again over those answers
    (None: no prompt kept two usable answers)."""
    teachers = recipe.teacher_names()
    asked = make_design(prompt_ids, teachers, design, recipe.seed)
    keep = labels.filter(
        lambda batch: [t in asked.get(p, ()) for p, t in zip(batch["prompt_id"], batch["teacher"])],
        batched=True,
        desc=f"Hiding answers ({design} teachers per prompt)",
    )
    combined = combine_rewards(
        keep.remove_columns([c for c in COMBINE_COLUMNS if c in keep.column_names]), recipe.labeling
    )
    try:
        return pivot_rewards(combined, teachers)
    except RouterDataError:
        return None


def _train_and_measure(
    table: RewardTable, test: RewardTable, recipe: PersynRecipe, workdir: Path
) -> tuple[dict[str, Any], np.ndarray]:
    """Train on `table` (split into train / validation as the recipe splits), measure on `test`."""
    settings = recipe.router
    share = settings.validation_fraction / (1.0 - settings.test_fraction)
    order = np.random.default_rng(recipe.seed).permutation(len(table))
    num_validation = min(max(1, round(share * len(table))), len(table) - 2)
    validation, train = (
        table.subset(np.sort(order[:num_validation])),
        table.subset(np.sort(order[num_validation:])),
    )
    task = RouterTask.from_recipe(recipe)
    router, tokenizer, trainer = fit_router(train, validation, settings, task, workdir)
    metrics = metrics_on_test_prompts(router, tokenizer, test, train, settings, task)
    metrics["epochs_trained"] = float(trainer.state.epoch or 0.0)
    scores = mask_unasked(score_texts(test.prompts, router, tokenizer), test.asked)
    effective = effective_rewards(impute_unasked(test.rewards, test.asked))
    gains = effective[np.arange(len(test)), scores.argmax(axis=1)] - effective.min(axis=1)
    shutil.rmtree(workdir, ignore_errors=True)
    return metrics, gains


def simulate_plan(
    labels: Dataset, recipe: PersynRecipe, settings: PlanSettings, workdir: Path
) -> dict[str, Any]:
    """Every (design, spend) of `settings` simulated on `labels` (the combine stage's output: one row per
    prompt and teacher); returns the plan: test prompts, points, paired differences against full labeling."""
    teachers = recipe.teacher_names()
    table = fully_labeled(labels, teachers)
    test, order = _split(table, recipe)
    pool_ids = [table.prompt_ids[i] for i in order]
    designs = sorted(set(settings.designs or default_designs(len(teachers))))
    for design in designs:
        if not 2 <= design <= len(teachers):
            raise PlanError(f"--designs: {design} is not between 2 and {len(teachers)} (the teachers).")
    spends = sorted(set(settings.spends or default_spends(len(pool_ids))))
    points: list[PlanPoint] = []
    skipped: list[dict[str, Any]] = []
    for spend in spends:
        for design in designs:
            count = spend // design
            if not MIN_PROMPTS <= count <= len(pool_ids):
                skipped.append(
                    {"design": design, "spend": spend, "prompts_needed": count, "prompts": len(pool_ids)}
                )
                continue
            labeled = _labeled_table(labels, pool_ids[:count], design, recipe)
            if labeled is None or len(labeled) < MIN_PROMPTS:  # too few prompts with two usable answers
                skipped.append({"design": design, "spend": spend, "usable_prompts": len(labeled or [])})
                continue
            metrics, gains = _train_and_measure(labeled, test, recipe, workdir / f"m{design}-s{spend}")
            points.append(PlanPoint(design, spend, count, count * design, len(labeled), metrics, gains))
            logger.info(
                "plan-labeling: %d teachers per prompt, %d answers on %d prompts -> reward recovered %.3f",
                design, count * design, count, metrics["reward_recovered"],
            )  # fmt: skip
    effective = effective_rewards(test.rewards)
    gap = effective.max(axis=1) - effective.min(axis=1)
    return {
        "teachers": teachers,
        "test_prompts": len(test),
        "test_prompt_ids": list(test.prompt_ids),
        "pool_prompts": len(pool_ids),
        "designs": designs,
        "spends": spends,
        "seed": recipe.seed,
        "bootstrap": settings.bootstrap,
        "points": [point.record(len(teachers)) for point in points],
        "differences": _differences(points, len(teachers), gap, settings.bootstrap, recipe.seed),
        "skipped": skipped,
    }


def _differences(
    points: list[PlanPoint], full: int, gap: np.ndarray, bootstrap: int, seed: int
) -> list[dict[str, Any]]:
    """Each partial design minus full labeling at the same spend: reward recovered on the same test prompts,
    with a paired bootstrap interval over them (the same resampled prompts for both designs)."""
    by_spend = {(p.spend, p.design): p for p in points}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(gap), size=(bootstrap, len(gap))) if bootstrap else None
    differences = []
    for (spend, design), point in sorted(by_spend.items()):
        baseline = by_spend.get((spend, full))
        if design == full or baseline is None:
            continue
        delta = _recovered(point.gains, gap) - _recovered(baseline.gains, gap)
        interval = None
        if picks is not None:
            draws = _recovered(point.gains[picks], gap[picks]) - _recovered(baseline.gains[picks], gap[picks])
            interval = [float(v) for v in np.quantile(draws, [0.025, 0.975])]
        differences.append(
            {"design": f"m={design}", "spend": spend, "minus_full": float(delta), "interval": interval}
        )
    return differences


def _recovered(gains: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Reward recovered (summed over the last axis) with 1.0 where there is no gap, as the metrics define it."""
    total = gap.sum(axis=-1)
    return np.where(total > 0, gains.sum(axis=-1) / np.where(total > 0, total, 1.0), 1.0)


__all__ = ["PlanError", "PlanSettings", "default_designs", "default_spends", "fully_labeled", "simulate_plan"]
