"""What counts as an answer: one rule for every stage that scores, selects or trains on teachers' answers."""

from __future__ import annotations

from typing import Any

FULL_MARKS = 1.0 - 1e-9
"""A quality at or above this is an answer the checker fully accepts (verified correct)."""


def is_usable_answer(response: Any, error: Any) -> bool:
    """A teacher's answer is usable when it did not fail and holds text that is not blank: a failed or
    empty answer is never scored, selected or trained on (it carries its reason in `error` instead)."""
    return error is None and isinstance(response, str) and bool(response.strip())


def is_trainable_answer(response: Any, error: Any, finish_reason: Any) -> bool:
    """Usable and complete: an answer cut at `max_new_tokens` is left out of training sets."""
    return is_usable_answer(response, error) and finish_reason != "length"
