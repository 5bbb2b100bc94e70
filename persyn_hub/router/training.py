"""Train a PerSyn router on the labeled pool with the transformers `Trainer`.

One linear function, `train_router`, reads like the recipe's `router:` section: pivot the pool to one row
per prompt, split by prompt (seeded), fine-tune encoder + head with a Bradley-Terry pairwise loss, stop
early on the held-out loss, measure the router against the best single teacher and random assignment,
and save weights, tokenizer and model card. Because it is a plain `Trainer`, the same call runs on
several GPUs under accelerate:

    accelerate launch -m persyn_hub.cli run recipes/demo/asdiv-smollm2.yaml
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)

from persyn_hub.bundled import resolve_model
from persyn_hub.config import RouterSettings
from persyn_hub.router.budgets import calibration_table
from persyn_hub.router.labels import RewardTable, pivot_rewards, split_by_prompt
from persyn_hub.router.metrics import routing_metrics
from persyn_hub.router.modeling import PersynRouter
from persyn_hub.router.publish import save_router
from persyn_hub.router.routing import score_texts

logger = logging.getLogger(__name__)


@dataclass
class RouterTrainingResult:
    router: PersynRouter
    tokenizer: Any
    metrics: dict[str, Any]


@dataclass
class RewardCollator:
    """Pads the tokenized prompts and stacks the reward vectors (NaN = unusable teacher)."""

    tokenizer: Any

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rewards = torch.tensor([f["rewards"] for f in features], dtype=torch.float32)
        text = [{k: v for k, v in f.items() if k != "rewards"} for f in features]
        batch = self.tokenizer.pad(text, return_tensors="pt")
        batch["rewards"] = rewards
        return dict(batch)


def _tokenized(table: RewardTable, tokenizer, max_length: int) -> Dataset:
    dataset = table.to_dataset()
    return dataset.map(
        lambda batch: tokenizer(batch["prompt"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=["prompt_id", "prompt"],
        desc="Tokenizing router prompts",
    )


def train_router(
    labels: Dataset,
    settings: RouterSettings,
    *,
    teachers: list[str],
    student: str,
    alpha: float,
    output_dir: str,
    seed: int,
    label_repo: str | None = None,
    label_revision: str | None = None,
) -> RouterTrainingResult:
    """Train, evaluate and save a router; returns the router, its tokenizer and held-out metrics.

    Reads the LABELED POOL: one row per (prompt_id, teacher) with `prompt_id`, `prompt`, `teacher`,
    `reward` (float|None) and `excluded` (str|None). Rows with `excluded` set or no reward are unusable;
    prompts with fewer than two usable teachers are dropped; pairs whose rewards differ by at most
    `settings.tie_margin` give no signal. Writes `output_dir`: config.json, model.safetensors, tokenizer,
    router_metrics.json, README.md (model card). Metrics keys: top1_agreement, reward_recovered,
    reward_recovered_best_single, reward_recovered_random, teacher_distribution, num_train_prompts,
    num_eval_prompts (plus oracle/mean-reward details, eval_loss and a calibration table).

    Example:
        >>> result = train_router(labels, RouterSettings(num_train_epochs=3, max_length=64),
        ...     teachers=["smollm2", "gemma"], student="bundled:smollm2-135m-instruct", alpha=0.5,
        ...     output_dir="runs/router", seed=0)
        >>> result.metrics["reward_recovered"], result.metrics["reward_recovered_random"]
    """
    table = pivot_rewards(labels, teachers)  # checks columns and usable pairs before any model loads
    train_table, eval_table = split_by_prompt(table, settings.eval_fraction, seed)
    logger.info(
        "Router: %d prompts with >= 2 usable teachers (%d train, %d held out), teachers %s",
        len(table),
        len(train_table),
        len(eval_table),
        teachers,
    )
    if not _has_ordered_pair(train_table.rewards, settings.tie_margin):
        logger.warning(
            "Router: every training pair is a tie (within %g); the router learns nothing", settings.tie_margin
        )

    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(settings.backbone))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-style encoders ship without a pad token
    router = PersynRouter.from_encoder(
        settings.backbone,
        teachers,
        student=student,
        alpha=alpha,
        label_repo=label_repo,
        label_revision=label_revision,
        max_length=settings.max_length,
        tie_margin=settings.tie_margin,
    )
    if settings.freeze_backbone:
        router.encoder.requires_grad_(False)

    output = Path(output_dir)
    checkpoints = output / "checkpoints"
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
        label_names=["rewards"],
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
        train_dataset=_tokenized(train_table, tokenizer, settings.max_length),
        eval_dataset=_tokenized(eval_table, tokenizer, settings.max_length),
        processing_class=tokenizer,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience)],
    )
    trainer.train()
    router = trainer.model
    eval_loss = trainer.evaluate()["eval_loss"]

    eval_scores = score_texts(eval_table.prompts, router, tokenizer)
    metrics = routing_metrics(
        eval_scores, eval_table.rewards, train_table.rewards, teachers, settings.tie_margin
    )
    metrics.update(
        num_train_prompts=len(train_table),
        num_eval_prompts=len(eval_table),
        eval_loss=float(eval_loss),
        epochs_trained=float(trainer.state.epoch or 0.0),
        calibration=calibration_table(score_texts(table.prompts, router, tokenizer), teachers),
    )
    logger.info(
        "Router held-out: top-1 %.3f, reward recovered %.3f (best single %.3f, random %.3f)",
        metrics["top1_agreement"],
        metrics["reward_recovered"],
        metrics["reward_recovered_best_single"],
        metrics["reward_recovered_random"],
    )
    if trainer.is_world_process_zero():
        save_router(router, tokenizer, output, metrics, settings=dataclasses.asdict(settings), seed=seed)
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return RouterTrainingResult(router=router, tokenizer=tokenizer, metrics=metrics)


def _has_ordered_pair(rewards: np.ndarray, tie_margin: float) -> bool:
    finite = np.where(np.isfinite(rewards), rewards, np.nan)
    spread = np.nanmax(finite, axis=1) - np.nanmin(finite, axis=1)
    return bool((spread > tie_margin).any())
