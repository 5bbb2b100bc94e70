"""The one base class of every error a user can fix by changing their input."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class PersynError(Exception):
    """An error in the user's input or environment, not a bug in persyn_hub.

    Contract: the message is one line that names the field, key, row or file at fault and says the
    fix (e.g. "prompts.source: file 'data/x.jsonl' does not exist; ..."). The `persyn` command prints
    it as `persyn: error: <message>` and exits with status 2, without a traceback; any other exception
    is a bug and keeps its traceback. Each subclass also keeps its historical base (ValueError,
    RuntimeError), so existing `except ValueError` callers still catch it.
    """


class RecipeError(PersynError, ValueError):
    """A recipe value is missing or wrong; the message names the key and the fix."""


class PromptDataError(PersynError, ValueError):
    """The prompt source does not have the shape the recipe says; the message names row/column."""


class ColumnError(PersynError, ValueError):
    """A data set lacks a column a step reads, or already holds one the step adds."""


def require_columns(
    dataset: Any,
    columns: Iterable[str],
    *,
    reader: str,
    source: str = "the data set",
    fix: str = "",
    error: type[Exception] = ColumnError,
) -> None:
    """The one "lacks column(s)" check: `reader` (who reads) names the fault, `source` whose data it is."""
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise error(
            f"{reader}: {source} lacks column(s) {missing} (it has {dataset.column_names})."
            + (f" {fix}" if fix else "")
        )


def refuse_columns(
    dataset: Any, columns: Iterable[str], *, reader: str, fix: str = "", error: type[Exception] = ColumnError
) -> None:
    """The one "already has column(s)" check: a step that adds columns does not overwrite them silently."""
    present = [column for column in columns if column in dataset.column_names]
    if present:
        raise error(f"{reader}: the data set already has column(s) {present}." + (f" {fix}" if fix else ""))


__all__ = [
    "ColumnError",
    "PersynError",
    "PromptDataError",
    "RecipeError",
    "refuse_columns",
    "require_columns",
]
