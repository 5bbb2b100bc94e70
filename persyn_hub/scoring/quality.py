"""Quality: PerSyn's second signal, how good a teacher's response is.

`score_quality` dispatches on `quality.kind`: `math_answer` (final answer vs the gold `answer`,
math-verify), `instruction_following` (IFEval/IFBench checkers, fraction of checked instructions
passed), `reasoning_gym` (each task type's own reasoning-gym checker on the final answer), `column` (a score an
answer pool already holds), `reward_model` (a sequence-classification reward model's score) or `auto`
(one of these per row, by the columns the row has). Failed generations get
`quality=None` with the reason in `quality_detail`: a failure is data, never a zero score.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, Features, Value

from persyn_hub.errors import refuse_columns, require_columns
from persyn_hub.fingerprint import fingerprint
from persyn_hub.procedural import score_procedural
from persyn_hub.progress import progress_bar
from persyn_hub.recipe.config import QualityConfig
from persyn_hub.scoring.answers import is_usable_answer
from persyn_hub.verifiers.instructions import check_instructions
from persyn_hub.verifiers.math_answer import check_math_answer

QUALITY_FEATURES = {"quality": Value("float64"), "quality_detail": Value("string")}


@dataclass
class Scoring:
    """What a kind's batch function may need beyond its rows: the settings, and the reward model (with its
    progress bar) when the run holds one."""

    quality: QualityConfig
    model: Any = None
    tokenizer: Any = None
    progress: Any = None


@dataclass(frozen=True)
class Kind:
    """One `quality.kind`: its batch function, the map's label, and its map batch size (a checker's batch
    is cheap; with a reward model held, `quality.batch_size` rows go through it at once)."""

    batch: Callable[[dict[str, list], Scoring], dict[str, list]]
    description: str
    map_batch_size: int = 256


NEEDED_COLUMNS = {
    "math_answer": ("response", "answer"),
    "instruction_following": ("response", "instruction_id_list", "kwargs", "prompt"),
    "reward_model": ("response", "messages"),
    "reasoning_gym": ("response", "prompt", "answer", "metadata"),
    "column": ("response", "pool_scores"),
    "auto": ("response",),
}
COLUMN_HINTS = {
    "answer": "set prompts.answer_column to the gold answer column",
    "instruction_id_list": "add it to prompts.keep_columns (IFEval/IFBench rows)",
    "kwargs": "add it to prompts.keep_columns (IFEval/IFBench rows)",
}


def _check_columns(dataset: Dataset, quality: QualityConfig) -> None:
    if quality.kind not in NEEDED_COLUMNS:
        raise ValueError(f"quality.kind: {quality.kind!r} is not one of {sorted(NEEDED_COLUMNS)}.")
    missing = [c for c in NEEDED_COLUMNS[quality.kind] if c not in dataset.column_names]
    hints = "; ".join(f"{c}: {COLUMN_HINTS.get(c, 'it comes from the generation stage')}" for c in missing)
    require_columns(
        dataset, NEEDED_COLUMNS[quality.kind], reader=f"score_quality ({quality.kind})", fix=f"{hints}."
    )
    refuse_columns(dataset, QUALITY_FEATURES, reader="score_quality", fix="Remove them before scoring again.")


def _failed_reason(response: Any, error: Any) -> str | None:
    """Why an answer is not scored, or None when it is usable (`answers.is_usable_answer`)."""
    if is_usable_answer(response, error):
        return None
    if error is not None:
        return f"generation failed: {str(error)[:200]}"
    return "no response" if not isinstance(response, str) else "empty answer"


def _math_batch(batch: dict[str, list], scoring: Scoring) -> dict[str, list]:

    out: dict[str, list] = {"quality": [], "quality_detail": []}
    errors = batch.get("error") or [None] * len(batch["response"])
    for response, error, gold in zip(batch["response"], errors, batch["answer"]):
        reason = _failed_reason(response, error)
        if reason:
            out["quality"].append(None)
            out["quality_detail"].append(reason)
            continue
        verdict = check_math_answer(response, gold)
        out["quality"].append(None if verdict.correct is None else float(verdict.correct))
        out["quality_detail"].append(verdict.detail)
    return out


def _instructions_batch(batch: dict[str, list], scoring: Scoring) -> dict[str, list]:

    out: dict[str, list] = {"quality": [], "quality_detail": []}
    errors = batch.get("error") or [None] * len(batch["response"])
    rows = zip(batch["response"], errors, batch["instruction_id_list"], batch["kwargs"], batch["prompt"])
    for response, error, ids, kwargs, prompt in rows:
        reason = _failed_reason(response, error)
        if reason:
            out["quality"].append(None)
            out["quality_detail"].append(reason)
            continue
        verdict = check_instructions(response, ids, kwargs, prompt)
        out["quality"].append(verdict.score)
        out["quality_detail"].append(verdict.detail())
    return out


def _procedural_batch(batch: dict[str, list], scoring: Scoring) -> dict[str, list]:

    out: dict[str, list] = {"quality": [], "quality_detail": []}
    errors = batch.get("error") or [None] * len(batch["response"])
    rows = zip(batch["response"], errors, batch["prompt"], batch["answer"], batch["metadata"])
    for response, error, prompt, answer, metadata in rows:
        reason = _failed_reason(response, error)
        if reason:
            out["quality"].append(None)
            out["quality_detail"].append(reason)
            continue
        score, detail = score_procedural(response, prompt, answer, metadata)
        out["quality"].append(score)
        out["quality_detail"].append(detail)
    return out


def _column_batch(batch: dict[str, list], scoring: Scoring) -> dict[str, list]:
    """The score the answer pool holds beside each answer (a generated answer has none)."""
    import json

    key = scoring.quality.column or ""

    out: dict[str, list] = {"quality": [], "quality_detail": []}
    errors = batch.get("error") or [None] * len(batch["response"])
    for response, error, raw in zip(batch["response"], errors, batch["pool_scores"]):
        reason = _failed_reason(response, error)
        scores = json.loads(raw) if raw else {}
        if reason or key not in scores:
            out["quality"].append(None)
            out["quality_detail"].append(reason or f"no {key!r} score in the pool for this answer")
            continue
        out["quality"].append(float(scores[key]))
        out["quality_detail"].append(f"pool score {key}")
    return out


def row_kind(row: dict[str, Any], quality: QualityConfig) -> str | None:
    """`auto`: which checker a row gets, from `kind_column` or from the columns it has."""
    import json

    if quality.kind_column and row.get(quality.kind_column):
        return str(row[quality.kind_column])
    metadata = row.get("metadata")
    if isinstance(metadata, str) and '"source_dataset"' in metadata:
        return "reasoning_gym"
    if row.get("instruction_id_list"):
        return "instruction_following"
    if row.get("answer") not in (None, ""):
        return "math_answer"
    if quality.column and row.get("pool_scores") and quality.column in json.loads(row["pool_scores"]):
        return "column"
    if quality.reward_model:
        return "reward_model"
    return None


def _auto_batch(batch: dict[str, list], scoring: Scoring) -> dict[str, list]:
    """Each row scored by its own kind's batch function; `quality_detail` starts with the kind."""
    n = len(batch["response"])
    rows = [{k: batch[k][i] for k in batch} for i in range(n)]
    kinds = [row_kind(row, scoring.quality) for row in rows]
    out: dict[str, list] = {"quality": [None] * n, "quality_detail": [""] * n}
    for kind in sorted({k for k in kinds if k}):
        index = [i for i, k in enumerate(kinds) if k == kind]
        sub = {k: [batch[k][i] for i in index] for k in batch}
        missing = [c for c in NEEDED_COLUMNS.get(kind, ("?",)) if c not in batch]
        if kind not in NEEDED_COLUMNS or kind == "auto" or missing:
            scored = {
                "quality": [None] * len(index),
                "quality_detail": [f"cannot score as {kind!r}: missing {missing}"] * len(index),
            }
        else:
            scored = KINDS[kind].batch(sub, scoring)
        for position, i in enumerate(index):
            out["quality"][i] = scored["quality"][position]
            out["quality_detail"][i] = f"[{kind}] {scored['quality_detail'][position]}"
    for i, kind in enumerate(kinds):
        if kind is None:
            out["quality_detail"][i] = (
                "[none] no quality signal for this row (no gold, checks, pool score or reward model)"
            )
    return out


def _reward_batch(batch: dict[str, list], scoring: Scoring) -> dict[str, list]:
    """Reward-model scores of the usable rows; `scoring.progress` (a bar in rows) advances after each forward."""
    # lazy: scoring.reward_model loads torch, which this module otherwise does not
    from persyn_hub.scoring.reward_model import reward_scores

    max_length = scoring.quality.max_length

    n = len(batch["response"])
    errors = batch.get("error") or [None] * n
    out: dict[str, list] = {"quality": [None] * n, "quality_detail": [""] * n}
    usable = []
    for i, (response, error) in enumerate(zip(batch["response"], errors)):
        reason = _failed_reason(response, error)
        if reason:
            out["quality_detail"][i] = reason
        else:
            usable.append(i)
    if usable:
        scores, truncated = reward_scores(
            scoring.model,
            scoring.tokenizer,
            [batch["messages"][i] for i in usable],
            [batch["response"][i] for i in usable],
            max_length,
        )
        for i, score, cut in zip(usable, scores, truncated):
            out["quality"][i] = score
            out["quality_detail"][i] = "reward model" + (
                f" (truncated to {max_length} tokens)" if cut else ""
            )
        if scoring.progress is not None:
            scoring.progress.update(len(usable))
    return out


def _reward_rows(dataset: Dataset, quality: QualityConfig | None = None) -> int:
    """Rows the reward model will score (the bar's total): usable rows, and in `auto` those of its kind."""
    errors = dataset["error"] if "error" in dataset.column_names else [None] * len(dataset)
    if quality is None:
        return sum(_failed_reason(r, e) is None for r, e in zip(dataset["response"], errors))
    return sum(
        row_kind(row, quality) == "reward_model" and _failed_reason(row["response"], row.get("error")) is None
        for row in dataset
    )


KINDS = {
    "math_answer": Kind(_math_batch, "Verifying answers"),
    "instruction_following": Kind(_instructions_batch, "Verifying answers"),
    "reasoning_gym": Kind(_procedural_batch, "Verifying answers"),
    "column": Kind(_column_batch, "Taking quality from the pool's scores", map_batch_size=1024),
    "reward_model": Kind(_reward_batch, "Scoring with the reward model"),
    "auto": Kind(_auto_batch, "Scoring each row with its own checker"),
}
"""Every `quality.kind` and how it scores a batch of rows (`auto` picks one of the others per row)."""


def score_quality(dataset: Dataset, quality: QualityConfig) -> Dataset:
    """Add `quality` (float|None) and `quality_detail` (str) to a labeled pool.

    Reads `response`, `error` (when present) and, per `quality.kind`: `answer` (math_answer: 1.0 right,
    0.0 wrong, None when the gold answer cannot be checked); `instruction_id_list`, `kwargs`, `prompt`
    (instruction_following: fraction of checked instructions passed, skipped checkers listed in the
    detail, None when none could be checked); `messages` (reward_model: the model's scalar score).
    Rows whose generation failed get None and the reason.

    Example:
        >>> pool = Dataset.from_list([{"response": "So 9 apples.", "answer": "9 apples", "error": None}])
        >>> score_quality(pool, QualityConfig(kind="math_answer"))["quality"]
        [1.0]
    """
    _check_columns(dataset, quality)
    kind = KINDS[quality.kind]
    scoring = Scoring(quality)
    model_rows = 0
    if quality.kind == "reward_model" or (quality.kind == "auto" and quality.reward_model):
        model_rows = _reward_rows(dataset, quality if quality.kind == "auto" else None)
    if model_rows:
        # lazy: scoring.reward_model loads torch, which this module otherwise does not
        from persyn_hub.scoring.reward_model import held_reward_model

        scoring.model, scoring.tokenizer = held_reward_model(quality)
    # a model's rows get a bar of their own: the map's bar would move every batch, of any kind
    bar = progress_bar(model_rows, "Scoring with the reward model", "row") if model_rows else nullcontext()
    with bar as scoring.progress:
        return dataset.map(
            kind.batch,
            batched=True,
            batch_size=quality.batch_size if scoring.model is not None else kind.map_batch_size,
            fn_kwargs={"scoring": scoring},
            features=Features({**dataset.features, **QUALITY_FEATURES}),
            new_fingerprint=fingerprint("quality", dataset._fingerprint, quality),
            desc=kind.description,
        )
