"""Combine: one reward per (prompt, teacher), the paper's r = (1 - alpha) * quality + alpha * learnability.

Both signals are normalized per prompt across its teachers (z-score, min-max, or none), so the reward
only ranks teachers within a prompt, which is all the router's pairwise loss uses. alpha weights
LEARNABILITY (default 0.4): the paper found 0.1-0.4 best and dropping quality the most harmful. Rows that
cannot be ranked are excluded with a reason, never given a zero: no usable answer (failed, empty, or a
reference teacher with nothing for this prompt), a missing score, or a prompt left with fewer than two
usable teachers. All teachers equal on a signal -> that signal is 0 for all of them (a tie), never NaN.
Grouping is numpy over arrow columns: no Python loop over rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from persyn_hub.errors import refuse_columns, require_columns
from persyn_hub.fingerprint import fingerprint
from persyn_hub.recipe.config import LabelingConfig

COMBINE_COLUMNS = ("quality_norm", "learnability_norm", "reward", "excluded")
COMBINE_READS = ("prompt_id", "teacher", "quality", "learnability")
REASON_FAILED = "no usable answer"
REASON_NO_QUALITY = "no quality score"
REASON_NO_LEARNABILITY = "no learnability score"
REASON_FEW_TEACHERS = "fewer than 2 usable teachers for this prompt"
_TIE = 1e-12


def _floats(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values with NaN for nulls, valid mask); NaN scores count as missing too."""
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    return np.nan_to_num(values, nan=0.0), ~np.isnan(values)


def normalize_per_group(values: np.ndarray, groups: np.ndarray, num_groups: int, method: str) -> np.ndarray:
    """Normalize `values` within each group id (rows outside any group carry group -1 and get NaN)."""
    out = np.full(values.shape, np.nan)
    member = groups >= 0
    if not member.any():
        return out
    g, x = groups[member], values[member]
    if method == "none":
        out[member] = x
        return out
    count = np.bincount(g, minlength=num_groups).astype(np.float64)
    if method == "zscore":
        mean = np.bincount(g, weights=x, minlength=num_groups) / np.maximum(count, 1)
        deviation = x - mean[g]
        std = np.sqrt(
            np.bincount(g, weights=deviation * deviation, minlength=num_groups) / np.maximum(count, 1)
        )
        scale = std[g]
        tie = scale <= _TIE * np.maximum(1.0, np.abs(mean[g]))
        out[member] = np.where(tie, 0.0, deviation / np.where(tie, 1.0, scale))
        return out
    if method == "minmax":
        low = np.full(num_groups, np.inf)
        high = np.full(num_groups, -np.inf)
        np.minimum.at(low, g, x)
        np.maximum.at(high, g, x)
        span = (high - low)[g]
        tie = span <= _TIE * np.maximum(1.0, np.abs(high[g]))
        out[member] = np.where(tie, 0.0, (x - low[g]) / np.where(tie, 1.0, span))
        return out
    raise ValueError(f"labeling.normalization: {method!r} is not one of ['zscore', 'minmax', 'none'].")


def _check(dataset: Dataset, labeling: LabelingConfig) -> None:
    require_columns(
        dataset,
        COMBINE_READS,
        reader="combine_rewards",
        fix="Run score_learnability and score_quality on it first.",
    )
    refuse_columns(
        dataset, COMBINE_COLUMNS, reader="combine_rewards", fix="Remove them before combining again."
    )
    if not 0.0 <= labeling.alpha <= 1.0:
        raise ValueError(f"labeling.alpha: {labeling.alpha} is outside [0, 1].")
    if labeling.normalization not in ("zscore", "minmax", "none"):
        raise ValueError(
            f"labeling.normalization: {labeling.normalization!r} is not one of ['zscore', 'minmax', 'none']."
        )


def combine_rewards(dataset: Dataset, labeling: LabelingConfig) -> Dataset:
    """Add `quality_norm`, `learnability_norm`, `reward` (float|None) and `excluded` (str|None).

    Reads `prompt_id`, `teacher`, `quality`, `learnability` and, when present, `error`. Params:
    `labeling.alpha` (weight of learnability), `labeling.normalization` (zscore | minmax | none, per prompt).
    Excluded rows (reason in `excluded`) have None in the three numeric columns.

    Example:
        >>> pool = Dataset.from_dict({"prompt_id": ["p", "p"], "teacher": ["a", "b"],
        ...                           "quality": [1.0, 0.0], "learnability": [-1.0, -2.0]})
        >>> combine_rewards(pool, LabelingConfig(alpha=0.4, normalization="minmax"))["reward"]
        [1.0, 0.0]
    """
    _check(dataset, labeling)
    table = dataset.with_format("arrow")[:]
    n = table.num_rows
    quality, has_quality = _floats(table.column("quality"))
    learn, has_learn = _floats(table.column("learnability"))
    reason = np.full(n, None, dtype=object)
    if "error" in table.column_names:
        failed = pc.is_valid(table.column("error")).to_numpy(zero_copy_only=False)
        reason[failed] = REASON_FAILED
    reason[(reason == None) & ~has_learn] = REASON_NO_LEARNABILITY  # noqa: E711 - elementwise
    reason[(reason == None) & ~has_quality] = REASON_NO_QUALITY  # noqa: E711
    usable = reason == None  # noqa: E711
    codes = pc.dictionary_encode(pc.cast(table.column("prompt_id"), pa.string())).combine_chunks().indices
    prompt_codes = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    num_prompts = int(prompt_codes.max()) + 1 if n else 0
    usable_per_prompt = np.bincount(prompt_codes[usable], minlength=num_prompts)
    few = usable & (usable_per_prompt[prompt_codes] < 2)
    reason[few] = REASON_FEW_TEACHERS
    usable &= ~few
    groups = np.where(usable, prompt_codes, -1)
    quality_norm = normalize_per_group(quality, groups, num_prompts, labeling.normalization)
    learn_norm = normalize_per_group(learn, groups, num_prompts, labeling.normalization)
    reward = (1.0 - labeling.alpha) * quality_norm + labeling.alpha * learn_norm
    mask = ~usable
    columns = {
        "quality_norm": pa.array(quality_norm, mask=mask, type=pa.float64()),
        "learnability_norm": pa.array(learn_norm, mask=mask, type=pa.float64()),
        "reward": pa.array(reward, mask=mask, type=pa.float64()),
        "excluded": pa.array(reason.tolist(), type=pa.string()),
    }
    result = dataset.flatten_indices() if dataset._indices is not None else dataset
    key = fingerprint("combine", dataset._fingerprint, labeling)
    for position, (name, values) in enumerate(columns.items()):
        result = result.add_column(name, values.to_pylist(), new_fingerprint=fingerprint(key, position))
    return result
