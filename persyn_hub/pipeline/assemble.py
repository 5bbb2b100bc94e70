"""Assembly: each prompt + the answer of the teacher it was assigned -> the SFT-ready personalized data set.

Labeled prompts were assigned their best labeled answer (Generate-then-Select, already paid for), the
others the router's teacher; assembly joins each with that teacher's response and keeps what cannot be
trained on apart, counted: failed generations, answers cut at `max_new_tokens`, prompts no teacher
answered.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from datasets import Dataset

from persyn_hub.errors import require_columns
from persyn_hub.recipe.config import QualityConfig
from persyn_hub.scoring.answers import FULL_MARKS, is_usable_answer
from persyn_hub.scoring.quality import score_quality

RESPONSE_COLUMNS = ["prompt_id", "teacher", "response", "finish_reason", "num_tokens", "error", "pool_scores"]
ASSIGNED_COLUMNS = ("prompt_id", "messages", "teacher")
NO_ANSWER = "no usable answer: every teacher failed on this labeled prompt"


@dataclass
class Assembly:
    """The training set and what was left out of it (with reasons), for the summary and the card."""

    final: Dataset
    failed: Dataset
    truncated: int
    dropped_incorrect: int = 0
    """Rows the verifier rejected, left out (`drop_incorrect`)."""


def collect_responses(*parts: Dataset) -> pa.Table:
    """One arrow table of (prompt_id, teacher) -> response; a later part wins over an earlier one."""
    tables = [
        part.data.table.select([c for c in RESPONSE_COLUMNS if c in part.column_names])
        for part in parts
        if len(part)
    ]
    if not tables:
        return pa.table({c: pa.array([], type=pa.string()) for c in RESPONSE_COLUMNS})
    table = pa.concat_tables(tables, promote_options="permissive")
    keys = [f"{p}\x1f{t}" for p, t in zip(table["prompt_id"].to_pylist(), table["teacher"].to_pylist())]
    last = {key: index for index, key in enumerate(keys)}
    return table.take(sorted(last.values()))


def _to_messages(batch: dict[str, list]) -> dict[str, list]:
    messages = [
        list(prompt) + [{"role": "assistant", "content": response}]
        for prompt, response in zip(batch["messages"], batch["response"])
    ]
    return {"messages": messages}


def assemble_dataset(
    assigned: Dataset,
    responses: pa.Table,
    *,
    drop_truncated: bool = True,
    quality: QualityConfig | None = None,
    drop_incorrect: bool = False,
) -> Assembly:
    """Join each prompt with its assigned teacher's response.

    Reads `assigned[prompt_id, messages, teacher, ...]` (teacher None: nobody answered) and keeps every
    other column (`router_scores`, `selected_by`, `answer`, ...). `final` has `messages` (prompt turns +
    assistant answer) first, then the rest; with a verifiable `quality` kind every row is checked again
    (`quality`, `quality_detail`), so the card can say how much of the set is verified correct.
    `failed` holds rows without a usable answer, with `error`. Truncated answers (`finish_reason`
    `length`) are dropped when `drop_truncated`, and counted either way. With `drop_incorrect` (a
    verifiable `quality` only), rows the verifier does not give full marks are dropped, and counted.
    """
    require_columns(
        assigned, ASSIGNED_COLUMNS, reader="assemble_dataset", source="the assignment",
        fix="Run the routing stage first.",
    )  # fmt: skip
    lookup = {
        (p, t): i
        for i, (p, t) in enumerate(zip(responses["prompt_id"].to_pylist(), responses["teacher"].to_pylist()))
    }
    rows = []
    for p, t in zip(assigned["prompt_id"], assigned["teacher"]):
        if t is not None and (p, t) not in lookup:
            raise RuntimeError(
                f"assembly: no generation found for prompt {p!r} and teacher {t!r}; re-run to resume."
            )
        rows.append(None if t is None else lookup[(p, t)])
    picked = responses.take(pa.array(rows, type=pa.int64()))
    joined = assigned
    for column in ("response", "finish_reason", "num_tokens", "error", "pool_scores"):
        if column not in picked.column_names:
            continue
        values = picked[column].to_pylist()
        if column == "error":
            values = [NO_ANSWER if row is None else value for row, value in zip(rows, values)]
        joined = joined.add_column(column, values)
    usable = [is_usable_answer(text, error) for error, text in zip(joined["error"], joined["response"])]
    truncated = [ok and reason == "length" for ok, reason in zip(usable, joined["finish_reason"])]
    keep = [i for i, ok in enumerate(usable) if ok and not (drop_truncated and truncated[i])]
    failed = joined.select([i for i, ok in enumerate(usable) if not ok])
    final = joined.select(keep).flatten_indices()
    if quality is not None and quality.kind != "reward_model" and len(final):
        final = score_quality(
            final.remove_columns([c for c in ("quality", "quality_detail") if c in final.column_names]),
            quality,
        )
    dropped_incorrect = 0
    if drop_incorrect and "quality" in final.column_names:
        correct = [q is not None and q >= FULL_MARKS for q in final["quality"]]
        dropped_incorrect = len(correct) - sum(correct)
        final = final.select([i for i, ok in enumerate(correct) if ok]).flatten_indices()
    final = final.map(_to_messages, batched=True, desc="Assembling messages")
    unused = ["response", "error", "prompt"]
    if "pool_scores" in final.column_names and all(v is None for v in final["pool_scores"]):
        unused.append("pool_scores")  # nothing came from an answer pool
    final = final.remove_columns([c for c in unused if c in final.column_names])
    leading = [c for c in ("prompt_id", "messages", "teacher", "router_scores") if c in final.column_names]
    final = final.select_columns(
        leading + [c for c in final.column_names if c not in leading]
    ).flatten_indices()
    return Assembly(
        final=final, failed=failed, truncated=int(sum(truncated)), dropped_incorrect=dropped_incorrect
    )
