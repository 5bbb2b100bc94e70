"""Quality: PerSyn's second signal, how good a teacher's response is.

`score_quality` dispatches on `quality.kind`: `math_answer` (final answer vs the gold `answer`,
math-verify), `instruction_following` (IFEval/IFBench checkers, fraction of checked instructions
passed), `reasoning_gym` (each task type's own reasoning-gym checker on the final answer), `column` (a score an
answer pool already holds), `reward_model` (a sequence-classification reward model's score) or `auto`
(one of these per row, by the columns the row has). Failed generations get
`quality=None` with the reason in `quality_detail`: a failure is data, never a zero score.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, Features, Value

from persyn_hub.fingerprint import fingerprint
from persyn_hub.recipe.config import QualityConfig
from persyn_hub.scoring.answers import is_usable_answer

QUALITY_FEATURES = {"quality": Value("float64"), "quality_detail": Value("string")}
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
    if missing:
        hints = "; ".join(
            f"{c}: {COLUMN_HINTS.get(c, 'it comes from the generation stage')}" for c in missing
        )
        raise ValueError(
            f"score_quality ({quality.kind}): the data set lacks column(s) {missing} "
            f"(it has {dataset.column_names}). {hints}."
        )
    present = [c for c in QUALITY_FEATURES if c in dataset.column_names]
    if present:
        raise ValueError(
            f"score_quality: column(s) {present} already exist; remove them before scoring again."
        )


def _failed_reason(response: Any, error: Any) -> str | None:
    """Why an answer is not scored, or None when it is usable (`answers.is_usable_answer`)."""
    if is_usable_answer(response, error):
        return None
    if error is not None:
        return f"generation failed: {str(error)[:200]}"
    return "no response" if not isinstance(response, str) else "empty answer"


def _math_batch(batch: dict[str, list]) -> dict[str, list]:
    from persyn_hub.verifiers.math_answer import check_math_answer

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


def _instructions_batch(batch: dict[str, list]) -> dict[str, list]:
    from persyn_hub.verifiers.instructions import check_instructions

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


def _procedural_batch(batch: dict[str, list]) -> dict[str, list]:
    from persyn_hub.procedural import score_procedural

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


def _column_batch(batch: dict[str, list], key: str) -> dict[str, list]:
    """The score the answer pool holds beside each answer (a generated answer has none)."""
    import json

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


def _auto_batch(
    batch: dict[str, list], quality: QualityConfig, model: Any, tokenizer: Any, progress: Any = None
) -> dict[str, list]:
    """Each row scored by its own kind's batch function; `quality_detail` starts with the kind."""
    n = len(batch["response"])
    rows = [{k: batch[k][i] for k in batch} for i in range(n)]
    kinds = [row_kind(row, quality) for row in rows]
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
        elif kind == "reward_model":
            scored = _reward_batch(sub, model, tokenizer, quality.max_length, progress)
        elif kind == "column":
            scored = _column_batch(sub, quality.column or "")
        else:
            scored = {
                "math_answer": _math_batch,
                "instruction_following": _instructions_batch,
                "reasoning_gym": _procedural_batch,
            }[kind](sub)
        for position, i in enumerate(index):
            out["quality"][i] = scored["quality"][position]
            out["quality_detail"][i] = f"[{kind}] {scored['quality_detail'][position]}"
    for i, kind in enumerate(kinds):
        if kind is None:
            out["quality_detail"][i] = (
                "[none] no quality signal for this row (no gold, checks, pool score or reward model)"
            )
    return out


def _reward_batch(
    batch: dict[str, list], model: Any, tokenizer: Any, max_length: int, progress: Any = None
) -> dict[str, list]:
    """Reward-model scores of the usable rows; `progress` (a bar in rows) advances after each forward."""
    from persyn_hub.scoring.reward_model import reward_scores

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
            model,
            tokenizer,
            [batch["messages"][i] for i in usable],
            [batch["response"][i] for i in usable],
            max_length,
        )
        for i, score, cut in zip(usable, scores, truncated):
            out["quality"][i] = score
            out["quality_detail"][i] = "reward model" + (
                f" (truncated to {max_length} tokens)" if cut else ""
            )
        if progress is not None:
            progress.update(len(usable))
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
    features = Features({**dataset.features, **QUALITY_FEATURES})
    key = fingerprint("quality", dataset._fingerprint, quality)
    if quality.kind == "auto":
        model = tokenizer = None
        reward_rows = _reward_rows(dataset, quality) if quality.reward_model else 0
        if reward_rows:
            from persyn_hub.scoring.reward_model import held_reward_model

            model, tokenizer = held_reward_model(quality)
        if model is None:
            return dataset.map(
                _auto_batch,
                batched=True,
                batch_size=256,
                fn_kwargs={"quality": quality, "model": None, "tokenizer": None},
                features=features,
                new_fingerprint=key,
                desc="Scoring each row with its own checker",
            )
        from persyn_hub.progress import progress_bar

        # the per-batch map bar would move every `batch_size` rows of any kind; this one counts model rows
        with progress_bar(reward_rows, "Scoring with the reward model", "row") as bar:
            return dataset.map(
                _auto_batch,
                batched=True,
                batch_size=quality.batch_size,
                fn_kwargs={"quality": quality, "model": model, "tokenizer": tokenizer, "progress": bar},
                features=features,
                new_fingerprint=key,
                desc="Scoring each row with its own checker",
            )
    if quality.kind == "column":
        return dataset.map(
            _column_batch,
            batched=True,
            batch_size=1024,
            fn_kwargs={"key": quality.column or ""},
            features=features,
            new_fingerprint=key,
            desc="Taking quality from the pool's scores",
        )
    if quality.kind == "reward_model":
        from persyn_hub.progress import progress_bar
        from persyn_hub.scoring.reward_model import held_reward_model

        model, tokenizer = held_reward_model(quality)
        with progress_bar(_reward_rows(dataset), "Scoring with the reward model", "row") as bar:
            return dataset.map(
                _reward_batch,
                batched=True,
                batch_size=quality.batch_size,
                fn_kwargs={
                    "model": model,
                    "tokenizer": tokenizer,
                    "max_length": quality.max_length,
                    "progress": bar,
                },
                features=features,
                new_fingerprint=key,
                desc="Scoring with the reward model",
            )
    function = {
        "math_answer": _math_batch,
        "instruction_following": _instructions_batch,
        "reasoning_gym": _procedural_batch,
    }[quality.kind]
    return dataset.map(
        function,
        batched=True,
        batch_size=256,
        features=features,
        new_fingerprint=key,
        desc="Verifying answers",
    )
