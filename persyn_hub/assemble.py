"""Assembly: routed prompts + their teacher's response -> the SFT-ready personalized data set."""

from __future__ import annotations

import pyarrow as pa
from datasets import Dataset

RESPONSE_COLUMNS = ["prompt_id", "teacher", "response", "finish_reason", "num_tokens", "error"]


def collect_responses(*parts: Dataset) -> pa.Table:
    """One arrow table of (prompt_id, teacher) -> response; a later part wins over an earlier one."""
    tables = [part.data.table.select(RESPONSE_COLUMNS) for part in parts if len(part)]
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


def assemble_dataset(routed: Dataset, responses: pa.Table, labeled_ids: set[str]) -> tuple[Dataset, Dataset]:
    """Join each routed prompt with its routed teacher's response.

    Reads `routed[prompt_id, messages, teacher, router_scores, ...]`. Returns `(final, failed)`:
    `final` has `messages` (prompt turns + assistant answer), `prompt_id`, `teacher`, `router_scores`,
    `num_tokens`, `finish_reason`, `labeled` and any carried columns; `failed` holds the routed rows
    whose generation failed (with `error`), kept out of the training set but never dropped silently.
    """
    lookup = {
        (p, t): i
        for i, (p, t) in enumerate(zip(responses["prompt_id"].to_pylist(), responses["teacher"].to_pylist()))
    }
    rows = [lookup.get((p, t)) for p, t in zip(routed["prompt_id"], routed["teacher"])]
    missing = [p for p, row in zip(routed["prompt_id"], rows) if row is None]
    if missing:
        raise RuntimeError(
            f"assembly: no generation found for routed prompt(s) {missing[:5]}; re-run to resume."
        )
    picked = responses.take(pa.array(rows, type=pa.int64()))
    joined = routed
    for column in ("response", "finish_reason", "num_tokens", "error"):
        joined = joined.add_column(column, picked[column].to_pylist())
    joined = joined.add_column("labeled", [p in labeled_ids for p in joined["prompt_id"]])
    ok = [
        i
        for i, (error, text) in enumerate(zip(joined["error"], joined["response"]))
        if error is None and text
    ]
    ok_set = set(ok)
    failed = joined.select([i for i in range(len(joined)) if i not in ok_set])
    final = joined.select(ok).map(_to_messages, batched=True, desc="Assembling messages")
    final = final.remove_columns(["response", "error", "prompt"]).flatten_indices()
    leading = ["prompt_id", "messages", "teacher", "router_scores"]
    final = final.select_columns(leading + [c for c in final.column_names if c not in leading])
    return final, failed
