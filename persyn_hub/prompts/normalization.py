"""Normalizing a source row: its chat `messages`, the `prompt` text, a stable `prompt_id` and the `answer`."""

from __future__ import annotations

import hashlib
from typing import Any

from persyn_hub.errors import PromptDataError
from persyn_hub.prompts.columns import template_fields
from persyn_hub.prompts.source import where_in_source
from persyn_hub.recipe.config import PromptsConfig


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _row_messages(row: dict[str, Any], config: PromptsConfig, row_index: int) -> list[dict[str, str]]:
    if config.prompt_template:
        for name in template_fields(config.prompt_template):
            if row[name] is None or isinstance(row[name], (list, dict)):
                raise PromptDataError(
                    f"{where_in_source(config, row_index)}: column {name!r} (prompts.prompt_template) is "
                    f"{row[name]!r}, not text; fix the row or drop it."
                )
        value: Any = config.prompt_template.format(**row)
    else:
        value = row[config.prompt_column]
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = [{"role": str(m.get("role", "")), "content": m.get("content")} for m in value]
        for message in messages:
            if not isinstance(message["content"], str):
                raise PromptDataError(
                    f"{where_in_source(config, row_index)}: a message's content is "
                    f"{type(message['content']).__name__}, not text; fix the row or drop it."
                )
        if messages[-1]["role"] != "user":
            raise PromptDataError(
                f"{where_in_source(config, row_index)}: the chat must end with a user turn to be answered."
            )
    else:
        raise PromptDataError(
            f"{where_in_source(config, row_index)}: prompt {value!r} is {type(value).__name__}; expected text or a chat "
            "list of {role, content} messages. Fix the row, or point prompts.prompt_column at a text column."
        )
    if not messages[-1]["content"].strip():
        raise PromptDataError(
            f"{where_in_source(config, row_index)}: the prompt is empty or whitespace; remove the row."
        )
    if config.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": config.system_prompt}] + messages
    return messages


def normalize_batch(batch: dict[str, list], indices: list[int], config: PromptsConfig) -> dict[str, list]:
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    out: dict[str, list] = {"prompt_id": [], "messages": [], "prompt": []}
    if config.answer_column:
        out["answer"] = []
    for row, index in zip(rows, indices):
        messages = _row_messages(row, config, index)
        text = messages[-1]["content"]
        if config.id_column:
            identifier = row[config.id_column]
            if identifier is None or str(identifier).strip() == "":
                raise PromptDataError(
                    f"{where_in_source(config, index)}: prompts.id_column {config.id_column!r} is empty; give the row "
                    "an id or remove it."
                )
            identifier = str(identifier)
        else:
            identifier = prompt_hash("\x1e".join(m["role"] + "\x1f" + m["content"] for m in messages))
        out["prompt_id"].append(identifier)
        out["messages"].append(messages)
        out["prompt"].append(text)
        if config.answer_column:
            answer = row[config.answer_column]
            out["answer"].append(None if answer is None else str(answer))
    return out
