"""Which endpoint failures are worth retrying, and how long to wait before the next try.

Servers under load answer 429/503 (often with Retry-After), restart (connection refused/reset) or hang;
those pass, so they are retried with exponential backoff and jitter. A 4xx other than 408/429 says the
request itself is wrong (prompt too long, unknown model): retrying cannot help, the row fails at once.
"""

from __future__ import annotations

import asyncio
import json
import random
from email.utils import parsedate_to_datetime
from typing import Optional

import httpx2
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF = 60.0
MAX_RETRY_AFTER = 300.0
RAW_LIMIT = 500
"""Characters of raw server output kept in a row's `error`."""


class RowError(Exception):
    """A request failed; `reason` goes to the row's `error`, `retryable` says whether to try again."""

    def __init__(self, reason: str, *, retryable: bool, raw: str = "", retry_after: Optional[float] = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.raw = raw
        self.retry_after = retry_after

    def message(self, note: str = "") -> str:
        """The `error` column's text: reason, `note` (e.g. attempts), then the raw output if any."""
        text = f"{self.reason}{note}"
        return f"{text}; raw output: {self.raw[:RAW_LIMIT]!r}" if self.raw else text


MESSAGE_LIMIT = 300
"""Characters of a server's error message quoted in a stop or preflight message (one line)."""


def server_message(raw: str) -> str:
    """The server's own words from an error body, on one line: OpenAI-style `error.message`, TGI's
    `error`, FastAPI's `detail`, else the body itself (cut to MESSAGE_LIMIT characters)."""
    text = raw or ""
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        body = None
    if isinstance(body, dict):
        found = body.get("error", body.get("detail", body.get("message")))
        if isinstance(found, dict):
            found = found.get("message", found)
        if found is not None:
            text = found if isinstance(found, str) else json.dumps(found)
    text = " ".join(str(text).split())
    return text[:MESSAGE_LIMIT] + (" [...]" if len(text) > MESSAGE_LIMIT else "")


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After is seconds or an HTTP date; anything unreadable is ignored."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        from datetime import datetime, timezone

        delay = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
    except (TypeError, ValueError):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def classify(error: BaseException, url: str) -> RowError:
    """Turn a transport/HTTP exception into a `RowError` (reasons start with a short stable tag)."""
    if isinstance(error, RowError):
        return error
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        try:
            body = error.response.text
        except Exception:  # streamed bodies cannot be read twice
            body = ""
        hint = ""
        if status == 404:
            hint = " (wrong route? set the teacher's `endpoint_api`: 'openai' or 'tgi')"
        return RowError(
            f"HTTP {status}: {url}{hint}",
            retryable=status in RETRY_STATUS,
            raw=body,
            retry_after=parse_retry_after(error.response.headers.get("Retry-After")),
        )
    if isinstance(error, (InferenceTimeoutError, asyncio.TimeoutError, httpx2.TimeoutException)):
        return RowError(f"timeout: no answer from {url} in time", retryable=True)
    if isinstance(error, httpx2.TransportError):
        return RowError(f"connection error: {type(error).__name__} talking to {url}", retryable=True)
    raise error


def backoff_delay(attempt: int, base: float, retry_after: Optional[float] = None) -> float:
    """Delay before retry number `attempt` (0-based): base * 2**attempt, 50-100% jitter, or Retry-After."""
    delay = min(base * (2**attempt), MAX_BACKOFF) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
