"""Train a PerSyn router on the labeled pool with the transformers `Trainer`.

One linear function, `train_router`, reads like the recipe's `router:` section: pivot the pool to one row
per prompt, split by prompt (seeded) into train / validation / test, fine-tune backbone + head with a
Bradley-Terry pairwise loss, stop early on the validation loss, measure the router on the test prompts
only against the best single teacher (chosen on train) and random assignment, and save weights, tokenizer and model card. Because it is a plain `Trainer`, the same call runs on
several GPUs under accelerate:

    accelerate launch -m persyn_hub.cli run recipes/demo/asdiv-smollm2.yaml
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    EarlyStoppingCallback,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from persyn_hub.bundled import resolve_model
from persyn_hub.labeling.design import describe_design, effective_per_prompt
from persyn_hub.progress import advance
from persyn_hub.recipe.config import RouterSettings
from persyn_hub.router.budgets import calibration_table
from persyn_hub.router.curve import (
    CURVE_FILE,
    check_fractions,
    curve_point,
    learning_curve_png,
    subset_indices,
)
from persyn_hub.router.info import RouterInfo
from persyn_hub.router.labels import RewardTable, RouterSplits, pivot_rewards, split_by_prompt
from persyn_hub.router.metrics import effective_rewards, impute_unasked, mask_unasked, routing_metrics
from persyn_hub.router.modeling import bradley_terry_loss, new_router
from persyn_hub.router.routing import score_texts
from persyn_hub.router.storage import save_router

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterTask:
    """What a router is for, recorded in its config and card: the teachers it routes between, the student
    it routes for, the alpha its labels were combined with, where the labels are published; and the seed
    every training (the run's router and each learning-curve router) uses."""

    teachers: list[str]
    student: str
    alpha: float
    seed: int = 0
    label_repo: str | None = None
    label_revision: str | None = None
    teachers_per_prompt: int | None = None
    """Partial labeling's m (None: every teacher answered every labeled prompt), for the card."""

    @classmethod
    def from_recipe(cls, recipe: Any) -> RouterTask:
        return cls(
            teachers=recipe.teacher_names(),
            student=recipe.student.model,
            alpha=recipe.labeling.alpha,
            seed=recipe.seed,
            label_repo=recipe.output.hub.labels_repo,
            teachers_per_prompt=effective_per_prompt(
                recipe.labeling.teachers_per_prompt, len(recipe.teachers)
            ),
        )

    def info(self, settings: RouterSettings) -> RouterInfo:
        """What the router's config records (`router.info.RouterInfo`)."""
        return RouterInfo(
            teachers=list(self.teachers),
            student=self.student,
            alpha=self.alpha,
            backbone=settings.backbone,
            label_repo=self.label_repo,
            label_revision=self.label_revision,
            max_length=settings.max_length,
            tie_margin=settings.tie_margin,
        )


@dataclass
class RouterTrainingResult:
    router: PreTrainedModel
    tokenizer: Any
    metrics: dict[str, Any]


@dataclass
class RewardCollator:
    """Pads the tokenized prompts and stacks the reward vectors (NaN = unusable teacher) as `labels`,
    which the Trainer hands to the Bradley-Terry loss (`compute_loss_func`), not to the model."""

    tokenizer: Any

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rewards = torch.tensor([f["rewards"] for f in features], dtype=torch.float32)
        text = [{k: v for k, v in f.items() if k != "rewards"} for f in features]
        batch = self.tokenizer.pad(text, return_tensors="pt")
        batch["labels"] = rewards
        return dict(batch)


class ProgressCallback(TrainerCallback):
    """Every training and evaluation step is work progress: a launch's other processes wait for the
    router as long as its training moves (`pipeline/liveness.py`), however long it takes."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        advance()

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        advance()


def _tokenized(table: RewardTable, tokenizer, max_length: int) -> Dataset:
    dataset = table.to_dataset()
    return dataset.map(
        lambda batch: tokenizer(batch["prompt"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["prompt_id", "prompt"],
        desc="Tokenizing router prompts",
    )


RouterFactory = Callable[[RouterInfo, Any], PreTrainedModel]
"""(what the router is for, its tokenizer) -> a fresh router; `new_router` unless a benchmark compares heads."""


def fit_router(
    train: RewardTable,
    validation: RewardTable,
    settings: RouterSettings,
    task: RouterTask,
    checkpoints: Path,
    build: RouterFactory = new_router,
) -> tuple[PreTrainedModel, Any, Trainer]:
    """Fine-tune a fresh router (backbone + head) on `train`, early-stopped on `validation`, seeded."""
    seed = task.seed
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(settings.backbone), padding_side="right")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-style encoders ship without a pad token
    router = build(task.info(settings), tokenizer)
    if settings.freeze_backbone:
        router.base_model.requires_grad_(False)

    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=settings.num_train_epochs,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        per_device_eval_batch_size=max(settings.per_device_train_batch_size, 32),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        save_total_limit=1,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        label_names=["labels"],
        remove_unused_columns=False,
        seed=seed,
        data_seed=seed,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=router,
        args=args,
        data_collator=RewardCollator(tokenizer),
        train_dataset=_tokenized(train, tokenizer, settings.max_length),
        eval_dataset=_tokenized(validation, tokenizer, settings.max_length),
        processing_class=tokenizer,
        compute_loss_func=lambda outputs, rewards, **_: bradley_terry_loss(
            outputs.logits, rewards, settings.tie_margin
        ),
        callbacks=[
            EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience),
            ProgressCallback(),
        ],
    )
    trainer.train()
    return trainer.model, tokenizer, trainer


def train_router(
    labels: Dataset,
    settings: RouterSettings,
    task: RouterTask,
    *,
    output_dir: str,
    learning_curve: Sequence[float] = (),
) -> RouterTrainingResult:
    """Train, evaluate and save a router; returns the router, its tokenizer and held-out metrics.

    Reads the LABELED POOL: one row per (prompt_id, teacher) with `prompt_id`, `prompt`, `teacher`,
    `reward` (float|None) and `excluded` (str|None). Rows with `excluded` set or no reward are unusable
    and rank below every usable answer to the same prompt (so the router learns to avoid a teacher that
    fails there); prompts with fewer than two usable teachers are dropped; pairs whose rewards differ by at most
    `settings.tie_margin` give no signal. The prompts split into train / validation (early stopping and
    checkpoint choice) / test; every metric is measured on the test prompts only, against the best single
    teacher chosen on the train prompts (see `persyn_hub.router.metrics`). Writes `output_dir`:
    config.json, model.safetensors, tokenizer, router_metrics.json, README.md (model card). Metrics keys:
    top1_agreement, hit_at_k, reward_recovered, reward_recovered_best_single, reward_recovered_random,
    regret*, intervals (bootstrap), teacher_distribution, oracle_share (all labeled prompts), split_sizes,
    calibration; with `learning_curve` (shares of the train prompts, e.g. [0.25, 0.5, 1.0]) also
    `learning_curve`: one point per share, each a router trained on a nested seeded subset of the train
    prompts with the same validation and test prompts (see `persyn_hub.router.curve`), plotted to
    `learning_curve.png`. The full share is the returned router itself; each smaller one costs a training.

    Example:
        >>> task = RouterTask(["smollm2", "gemma"], student="bundled:smollm2-135m-instruct", alpha=0.4)
        >>> result = train_router(labels, RouterSettings(num_train_epochs=3, max_length=64), task,
        ...     output_dir="runs/router")
        >>> result.metrics["reward_recovered"], result.metrics["reward_recovered_random"]
    """
    table, splits = _split(labels, settings, task)
    output = Path(output_dir)
    checkpoints = output / "checkpoints"
    router, tokenizer, trainer = fit_router(splits.train, splits.validation, settings, task, checkpoints)
    metrics = _held_out_metrics(router, tokenizer, trainer, table, splits, settings, task)
    if learning_curve:
        metrics["learning_curve"] = _learning_curve(
            splits, settings, learning_curve, metrics, task, checkpoints
        )
    logger.info(
        "Router on %d test prompts: top-1 %.3f, reward recovered %.3f (best single %.3f, random %.3f)",
        len(splits.test),
        metrics["top1_agreement"],
        metrics["reward_recovered"],
        metrics["reward_recovered_best_single"],
        metrics["reward_recovered_random"],
    )
    if trainer.is_world_process_zero():
        save_router(router, tokenizer, output, metrics, settings=dataclasses.asdict(settings), seed=task.seed)
        if metrics.get("learning_curve"):
            png = learning_curve_png(metrics["learning_curve"], metrics["reward_recovered_random"])
            (output / CURVE_FILE).write_bytes(png)
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return RouterTrainingResult(router=router, tokenizer=tokenizer, metrics=metrics)


def _split(labels: Dataset, settings: RouterSettings, task: RouterTask) -> tuple[RewardTable, RouterSplits]:
    """One row per prompt with >= 2 usable teachers, split by prompt (seeded) into train/validation/test."""
    table = pivot_rewards(labels, task.teachers)  # checks columns and usable pairs before any model loads
    splits = split_by_prompt(table, settings.validation_fraction, settings.test_fraction, task.seed)
    logger.info(
        "Router: %d prompts with >= 2 usable teachers (train %d, validation %d, test %d), teachers %s",
        len(table),
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        task.teachers,
    )
    if not _has_ordered_pair(splits.train.rewards, settings.tie_margin):
        logger.warning(
            "Router: every training pair is a tie (within %g); the router learns nothing", settings.tie_margin
        )
    return table, splits


def metrics_on_test_prompts(
    router: PreTrainedModel,
    tokenizer: Any,
    test: RewardTable,
    train: RewardTable,
    settings: RouterSettings,
    task: RouterTask,
) -> dict[str, Any]:
    """Routing metrics of `router` on the `test` prompts, its best single teacher chosen on `train`: the one
    protocol for the run's router, each learning-curve router and `benchmarks/bench_router_head.py`.
    Under partial labeling every figure is among the teachers asked on each prompt (`impute_unasked`)."""
    metrics = routing_metrics(
        mask_unasked(score_texts(test.prompts, router, tokenizer), test.asked),
        impute_unasked(test.rewards, test.asked),
        impute_unasked(train.rewards, train.asked),
        task.teachers,
        settings.tie_margin,
        seed=task.seed,
    )
    if not (test.fully_observed and train.fully_observed):
        metrics["evaluated_among"] = "the teachers asked on each test prompt (partial labeling)"
    return metrics


def _held_out_metrics(
    router: PreTrainedModel,
    tokenizer: Any,
    trainer: Trainer,
    table: RewardTable,
    splits: RouterSplits,
    settings: RouterSettings,
    task: RouterTask,
) -> dict[str, Any]:
    """Every reported number comes from the test prompts: neither training nor early stopping saw them
    (the oracle share and the calibration table describe all labeled prompts, and say so)."""
    validation_loss = trainer.evaluate()["eval_loss"]
    metrics = metrics_on_test_prompts(router, tokenizer, splits.test, splits.train, settings, task)
    metrics.update(
        split_sizes=splits.sizes(),
        num_train_prompts=len(splits.train),
        num_eval_prompts=len(splits.test),
        oracle_share_test=metrics["oracle_share"],
        oracle_share=oracle_share(impute_unasked(table.rewards, table.asked), task.teachers),
        # the labeling the router learned from (its prompts with two usable answers): design, answers, pairs
        labeling=describe_design(
            table.asked_per_prompt(), task.teachers, task.teachers_per_prompt, task.seed
        ),
        validation_loss=float(validation_loss),
        epochs_trained=float(trainer.state.epoch or 0.0),
        # "no" = float32: the recipe's precision, never a launch config's `mixed_precision` (single_process)
        training_mixed_precision=str(trainer.accelerator.mixed_precision),
        test_prompt_ids=list(splits.test.prompt_ids),
        validation_prompt_ids=list(splits.validation.prompt_ids),
        train_prompt_ids=list(splits.train.prompt_ids),
        calibration=calibration_table(score_texts(table.prompts, router, tokenizer), task.teachers),
    )
    return metrics


def _learning_curve(
    splits: RouterSplits,
    settings: RouterSettings,
    fractions: Sequence[float],
    full_metrics: dict[str, Any],
    task: RouterTask,
    checkpoints: Path,
) -> list[dict[str, Any]]:
    """Test reward recovered of routers trained on nested shares of the train prompts (same seed, same
    validation and test prompts); the full share is the run's router, trained once."""
    points = []
    for fraction in check_fractions(list(fractions)):
        indices = subset_indices(len(splits.train), fraction, task.seed)
        train = splits.train.subset(indices)
        answers = train.answers() + splits.validation.answers()  # what the router saw was paid for
        if len(indices) == len(splits.train):
            points.append(curve_point(fraction, len(indices), full_metrics, answers))
            continue
        router, tokenizer, trainer = fit_router(train, splits.validation, settings, task, checkpoints)
        metrics = metrics_on_test_prompts(router, tokenizer, splits.test, train, settings, task)
        metrics["epochs_trained"] = float(trainer.state.epoch or 0.0)
        points.append(curve_point(fraction, len(indices), metrics, answers))
        shutil.rmtree(checkpoints, ignore_errors=True)
        logger.info(
            "Router learning curve: %d train prompts (%.0f%%) -> reward recovered %.3f on the test prompts",
            len(indices),
            100 * fraction,
            metrics["reward_recovered"],
        )
    return points


def _has_ordered_pair(rewards: np.ndarray, tie_margin: float) -> bool:
    finite = np.where(np.isfinite(rewards), rewards, np.nan)
    spread = np.nanmax(finite, axis=1) - np.nanmin(finite, axis=1)
    return bool((spread > tie_margin).any())


def oracle_share(rewards: np.ndarray, teachers: list[str]) -> dict[str, float]:
    """Share of labeled prompts each teacher is the oracle for (first best): does the oracle vary at all?"""
    best = effective_rewards(rewards).argmax(axis=1)
    counts = np.bincount(best, minlength=len(teachers))
    return {name: float(count / max(len(rewards), 1)) for name, count in zip(teachers, counts)}
