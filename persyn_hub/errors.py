"""The one base class of every error a user can fix by changing their input."""

from __future__ import annotations


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


__all__ = ["PersynError", "RecipeError"]
