"""A served row in, a record out: whether its messages can be sent, the failed record it gets when
not, and the writer that puts finished records in the checkpoint in small groups."""

from __future__ import annotations

import time
from typing import Any, Optional

from persyn_hub.generation.checkpoint import GenerationCheckpoint

FLUSH_ROWS = 16
FLUSH_SECONDS = 0.25
"""Finished rows are written to the checkpoint in groups of at most this many rows / seconds."""


def check_messages(messages: Any) -> Optional[str]:
    """Why a row's `messages` cannot be sent (None when they can): the row fails, the others go on."""
    if not isinstance(messages, list) or not messages:
        return "messages is empty; every row needs at least one user turn"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages[{index}] is not a {{role, content}} mapping"
        if not isinstance(message.get("content"), str):
            return f"messages[{index}].content is {message.get('content')!r}, not a string"
    if messages[-1]["role"] != "user":
        return f"the last turn is {messages[-1]['role']!r}; the prompt must end with a user turn"
    if not messages[-1]["content"].strip():
        return "the last user turn is empty"
    return None


class CheckpointWriter:
    """Buffers finished records and writes them in small groups (one fsync per group, not per row)."""

    def __init__(self, checkpoint: GenerationCheckpoint):
        self.checkpoint = checkpoint
        self.pending: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append(record)
        if len(self.pending) >= FLUSH_ROWS or time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.checkpoint.write(self.pending)
            self.pending = []
        self.last = time.monotonic()


def failed_record(prompt_id: str, error: str, num_prompt_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "response": None,
        "finish_reason": None,
        "num_tokens": 0,
        "num_prompt_tokens": num_prompt_tokens,
        "error": error,
    }
