"""What a pushed file or card must not hold: tokens, credentials in URLs, absolute local paths.

A recipe is embedded in the cards and its fields in the stages repo's manifests, and a recipe may name
an absolute `output.dir`, an endpoint URL with `user:pass@` or `?api_key=...`, or a secret in `env`.
`scrub_value` (plain values: dicts, lists, strings) and `scrub_text` (any text) replace them:

- `scheme://user:pass@host` -> `scheme://***@host`; a query parameter named like a secret -> `***`;
- a Hugging Face token (`hf_...`) and the token this process uses -> `hf_***`;
- an absolute local path -> `<local>/<its last part>` (a file's or folder's name says what it was);
- a dict value whose key names a secret (`token`, `api_key`, `password`, `HF_TOKEN`, ...) -> `***`.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

MASK = "***"
SECRET_KEY = re.compile(
    r"(^|[_.-])(token|secret|password|passwd|api[_-]?key|apikey|access[_-]?key|credentials?|authorization)$",
    re.I,
)
"""A key or query parameter named like this holds a secret."""
SECRET_QUERY = re.compile(
    r"([?&](?:[\w.-]*(?:token|secret|passw(?:or)?d|api[_-]?key|access[_-]?key|auth|credential|signature|sig)"
    r"[\w.-]*)=)[^&#\s\"'`]*",
    re.I,
)
URL_CREDENTIALS = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s@\"'`]+@", re.I)
HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
ABSOLUTE_PATH = re.compile(r"^(?:/|[A-Za-z]:[\\/]|\\\\)")
LOCAL = "<local>"


def _current_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no token to mask
        return None


def scrub_text(text: str) -> str:
    """`text` without credentials in URLs, secret query parameters or tokens (module docstring)."""
    text = URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    text = SECRET_QUERY.sub(lambda m: f"{m.group(1)}{MASK}", text)
    token = _current_token()
    if token and len(token) >= 8:
        text = text.replace(token, "hf_***")
    return HF_TOKEN.sub("hf_***", text)


def scrub_path(value: str) -> str:
    """An absolute local path as `<local>/<its last part>`; anything else as it is."""
    if "://" in value or not ABSOLUTE_PATH.match(value):
        return value
    name = os.path.basename(value.rstrip("/\\"))
    return f"{LOCAL}/{name}" if name else LOCAL


def scrub_value(value: Any) -> Any:
    """A plain value (dicts, lists, scalars) with secrets and absolute local paths replaced."""
    if isinstance(value, dict):
        return {
            key: (MASK if isinstance(key, str) and SECRET_KEY.search(key) and item else scrub_value(item))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [scrub_value(item) for item in value]
    if isinstance(value, str):
        return scrub_text(scrub_path(value))
    return value


def scrub_recipe_yaml(text: str) -> str:
    """A recipe's YAML (`PersynRecipe.to_yaml()`) fit for a public card."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return scrub_text(text)
    return yaml.safe_dump(scrub_value(data), sort_keys=False, allow_unicode=True)


def scrub_url(url: str) -> str:
    """An endpoint URL without credentials (`user:pass@`, a token in the query)."""
    return scrub_text(url)


__all__ = ["MASK", "scrub_path", "scrub_recipe_yaml", "scrub_text", "scrub_url", "scrub_value"]
