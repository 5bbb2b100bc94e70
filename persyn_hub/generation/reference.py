"""A reference teacher: the answer a data set already holds (a gold solution, a solver's worked answer).

It costs no generation, is always as right as the data set, and is usually LESS learnable for a small
student than a small model's own phrasing: the strong member of a pool against which small LLM teachers
win the prompts they can answer. The answer is `response_template` filled from the prompt's columns.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

from datasets import Dataset

from persyn_hub.generation.checkpoint import RECORD_FEATURES
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.recipe.sections import TeacherConfig


def template_columns(template: str) -> list[str]:
    """Columns a template reads: `{answer}` -> answer, `{metadata[expression]}` -> metadata."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return list(dict.fromkeys(re.split(r"[.\[]", name, maxsplit=1)[0] for name in fields))


def _value(raw: Any) -> Any:
    """A JSON object held as text (reasoning-gym's `metadata`) becomes a dict the template can index."""
    if isinstance(raw, str) and raw.startswith("{"):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def write_references(dataset: Dataset, teacher: TeacherConfig, stats: GenerationStats) -> Dataset:
    """Adds the generation columns; a row whose template column is empty fails with the reason."""
    template = teacher.response_template or ""
    columns = template_columns(template)
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"teachers ({teacher.name!r}).response_template: column(s) {missing} are not in the prompts "
            f"({dataset.column_names}); add them to prompts.keep_columns."
        )

    def write(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["prompt_id"])
        out: dict[str, list] = {column: [] for column in RECORD_FEATURES}
        out.update(teacher=[teacher.name] * n, num_tokens=[0] * n, num_prompt_tokens=[0] * n)
        for i in range(n):
            values = {c: batch[c][i] for c in columns}
            empty = [c for c, v in values.items() if v is None or str(v).strip() == ""]
            if empty:
                out["response"].append(None)
                out["finish_reason"].append("error")
                out["error"].append(f"reference: column(s) {empty} empty for this prompt")
                continue
            try:
                response = template.format(**{c: _value(v) for c, v in values.items()})
            except (KeyError, IndexError, TypeError) as error:
                out["response"].append(None)
                out["finish_reason"].append("error")
                out["error"].append(f"reference: the template's field {error} is missing for this prompt")
                continue
            out["response"].append(response)
            out["finish_reason"].append("reference")
            out["error"].append(None)
        return out

    result = dataset.map(write, batched=True, desc=f"Reference answers ({teacher.name})")
    for error in result["error"]:
        if error:
            stats.add_failure(error)
    return result
