"""From the labeled pool (one row per prompt and teacher) to router training rows (one row per prompt).

The pivot runs on arrow columns and numpy arrays: the pool is read column-wise once, every
(prompt, teacher) reward lands in a (prompts x teachers) matrix with NaN where the teacher's row is
missing, excluded or unscored, and prompts with fewer than two usable teachers are dropped (they cannot
order a pair). The held-out split is by prompt, so no prompt's text is seen in training and evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from persyn_hub.errors import PersynError, require_columns

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ("prompt_id", "prompt", "teacher", "reward", "excluded")


class RouterDataError(PersynError, ValueError):
    """The labeled pool cannot train a router; the message names the column/row and the fix."""


@dataclass
class RewardTable:
    """Rewards pivoted to one row per prompt: `rewards[i, k]` is teacher k's reward on prompt i (NaN: unusable
    or not asked). `observed[i, k]`: teacher k was asked on prompt i (partial labeling asks m of K; None:
    every teacher was asked)."""

    prompt_ids: list[str]
    prompts: list[str]
    rewards: np.ndarray
    teachers: list[str]
    observed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @property
    def asked(self) -> np.ndarray:
        """(prompts x teachers) booleans: which teacher answered (usable or not) which prompt."""
        return np.ones(self.rewards.shape, dtype=bool) if self.observed is None else self.observed

    @property
    def fully_observed(self) -> bool:
        return bool(self.asked.all())

    def answers(self) -> int:
        """Labeled answers these prompts cost (failed ones included: they were asked for)."""
        return int(self.asked.sum())

    def asked_per_prompt(self) -> dict[str, list[str]]:
        """prompt id -> the teachers asked on it (the labeling design, as it was carried out)."""
        return {
            p: [t for t, a in zip(self.teachers, row) if a] for p, row in zip(self.prompt_ids, self.asked)
        }

    def subset(self, indices: np.ndarray) -> RewardTable:
        return RewardTable(
            [self.prompt_ids[i] for i in indices],
            [self.prompts[i] for i in indices],
            self.rewards[indices],
            self.teachers,
            None if self.observed is None else self.observed[indices],
        )

    def training_rewards(self) -> np.ndarray:
        """Rewards with every unusable answer ranked one unit below the prompt's worst usable one.

        A failed or unscorable answer is worse than any usable answer to the same prompt; left as NaN
        it would give no pair at all, and a teacher that always fails on some prompt type (a dead
        replica, a reference without an answer there) would never be learned to be avoided. Two
        unusable answers tie, so they give no pair between them. A teacher that was not asked (partial
        labeling) stays NaN: the Bradley-Terry loss takes only the pairs that were observed.
        """
        worst = np.nanmin(self.rewards, axis=1, keepdims=True)
        unusable = ~np.isfinite(self.rewards) & self.asked
        return np.where(unusable, worst - 1.0, self.rewards)

    def to_dataset(self) -> Dataset:
        """`prompt_id`, `prompt`, `rewards` (list of floats in teacher order, `training_rewards`)."""
        flat = pa.array(self.training_rewards().astype(np.float32).ravel(), type=pa.float32())
        rewards = pa.FixedSizeListArray.from_arrays(flat, len(self.teachers)).cast(pa.list_(pa.float32()))
        table = pa.table(
            {"prompt_id": pa.array(self.prompt_ids), "prompt": pa.array(self.prompts), "rewards": rewards}
        )
        return Dataset(table)


def check_label_columns(labels: Dataset) -> None:
    require_columns(
        labels,
        LABEL_COLUMNS,
        reader="train_router",
        source="the labeled pool",
        fix="It reads the combined pool: one row per (prompt_id, teacher) with prompt, reward and excluded "
        "(run the combine stage first).",
        error=RouterDataError,
    )


def pivot_rewards(labels: Dataset, teachers: list[str]) -> RewardTable:
    """Pivot the labeled pool; rows with `excluded` set or no finite `reward` become NaN.

    Raises `RouterDataError` for teachers outside `teachers`, for a (prompt_id, teacher) pair that occurs
    twice, and when no prompt has two usable teachers.
    """
    check_label_columns(labels)
    if len(set(teachers)) != len(teachers) or len(teachers) < 2:
        raise RouterDataError(f"teachers: need at least 2 distinct names, got {teachers}.")
    table = labels.select_columns(list(LABEL_COLUMNS)).with_format("arrow")[:]
    if table.num_rows == 0:
        raise RouterDataError("The labeled pool is empty: label some prompts with every teacher first.")

    teacher_index = pc.index_in(table["teacher"], value_set=pa.array(teachers, type=pa.string()))
    if teacher_index.null_count:
        found = set(table["teacher"].to_pylist())
        raise RouterDataError(
            f"The labeled pool has teacher(s) {sorted(found - set(teachers))} that are not in the recipe's "
            f"teachers {teachers}; label with the recipe's pool or fix the teacher names."
        )
    encoded = pc.dictionary_encode(table["prompt_id"].cast(pa.string()).combine_chunks())
    prompt_index = encoded.indices.to_numpy()
    prompt_ids = encoded.dictionary.to_pylist()
    teacher_index = teacher_index.to_numpy(zero_copy_only=False).astype(np.int64)

    pair_keys = prompt_index.astype(np.int64) * len(teachers) + teacher_index
    unique_keys, counts = np.unique(pair_keys, return_counts=True)
    if (counts > 1).any():
        key = int(unique_keys[np.argmax(counts > 1)])
        raise RouterDataError(
            f"prompt_id {prompt_ids[key // len(teachers)]!r} has {int(counts.max())} rows for teacher "
            f"{teachers[key % len(teachers)]!r}; the pool needs one row per (prompt_id, teacher)."
        )

    reward = table["reward"].cast(pa.float64()).to_numpy()
    excluded = table["excluded"].cast(pa.string())
    is_excluded = pc.fill_null(pc.greater(pc.utf8_length(excluded), 0), False).to_numpy(zero_copy_only=False)
    usable = np.isfinite(reward) & ~is_excluded

    rewards = np.full((len(prompt_ids), len(teachers)), np.nan)
    rewards[prompt_index[usable], teacher_index[usable]] = reward[usable]
    observed = np.zeros(rewards.shape, dtype=bool)
    observed[prompt_index, teacher_index] = True  # a row exists: the teacher was asked (partial labeling)
    _, first_row = np.unique(prompt_index, return_index=True)
    prompts = table["prompt"].take(pa.array(first_row)).to_pylist()
    pivoted = RewardTable(prompt_ids, prompts, rewards, list(teachers), observed)

    usable_per_prompt = np.isfinite(rewards).sum(axis=1)
    keep = np.flatnonzero(usable_per_prompt >= 2)
    if keep.size == 0:
        raise RouterDataError(
            f"No prompt of the labeled pool ({len(prompt_ids)} prompts, {table.num_rows} rows) has two "
            f"usable teachers (a reward that is not None and `excluded` unset); the router learns from "
            "pairs of teachers on the same prompt. Check why generations failed or were unscorable."
        )
    dropped = len(prompt_ids) - keep.size
    if dropped:
        logger.warning(
            "Router: dropped %d of %d prompts with fewer than two usable teachers", dropped, len(prompt_ids)
        )
    never = [name for k, name in enumerate(teachers) if not np.isfinite(rewards[:, k]).any()]
    if never:
        logger.warning("Router: teacher(s) %s have no usable reward on any prompt", never)
    return pivoted.subset(keep)


@dataclass
class RouterSplits:
    """Labeled prompts split by prompt: train (fit), validation (early stopping), test (metrics only)."""

    train: RewardTable
    validation: RewardTable
    test: RewardTable

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def split_by_prompt(
    table: RewardTable, validation_fraction: float, test_fraction: float, seed: int
) -> RouterSplits:
    """Seeded three-way split by prompt, at least one prompt in each part.

    The test part never drives training or checkpoint choice, so metrics measured on it are what the
    router does on prompts it has not seen, the way it will be used.
    """
    if len(table) < 3:
        raise RouterDataError(
            f"Only {len(table)} labeled prompt(s) have two usable teachers; the router needs at least 3 (train, "
            "validation, test). Label more prompts (labeling.num_prompts)."
        )
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise RouterDataError(f"router.{name}: {value} must be in (0, 1).")
    order = np.random.default_rng(seed).permutation(len(table))
    num_test = max(1, round(test_fraction * len(table)))
    num_validation = max(1, round(validation_fraction * len(table)))
    while num_test + num_validation > len(table) - 1:  # keep at least one prompt to train on
        if num_test >= num_validation and num_test > 1:
            num_test -= 1
        else:
            num_validation -= 1
    test = order[:num_test]
    validation = order[num_test : num_test + num_validation]
    train = order[num_test + num_validation :]
    return RouterSplits(
        table.subset(np.sort(train)), table.subset(np.sort(validation)), table.subset(np.sort(test))
    )
