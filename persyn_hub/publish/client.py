"""The Hub client every push of a run goes through: `HfApi` with retries that honour the Hub's rate limits,
and a count of what the run sent (`HubTraffic`, the summary's `hub.commits` / `hub.bytes_uploaded`).

`huggingface_hub` retries downloads (`http_backoff`), but a commit, a repo creation or a listing that
meets a 429 (rate limit) or a 5xx raises `HfHubHTTPError` at once. `HubClient` retries those calls: after
the server's `Retry-After` seconds when it sends one, else with exponential backoff, at most
`MAX_ATTEMPTS` tries; connection errors and timeouts are retried the same way. A 412 (the branch moved
since `parent_commit`) is not retried here: the stage mirror re-reads the repo and commits again.

    api = HubClient(traffic=HubTraffic())     # endpoint and token as HfApi finds them
    api.create_commit(...)                    # retried; counted in api.traffic
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from persyn_hub.publish.mirror.layout import describe

logger = logging.getLogger("persyn_hub")

T = TypeVar("T")

RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
MAX_ATTEMPTS = 6
"""Tries of one call (the first included) before its error is raised."""
BASE_WAIT = 1.0
"""Seconds before the first retry without `Retry-After`; doubled each time, at most `MAX_WAIT`."""
MAX_WAIT = 60.0
MAX_RETRY_AFTER = 600.0
"""A longer `Retry-After` is not waited for: the call fails (a stage push is then retried later)."""


@dataclass
class HubTraffic:
    """What a run sent to the Hub: commits made, bytes uploaded (new file contents), retries and 429s met."""

    commits: int = 0
    bytes_uploaded: int = 0
    retries: int = 0
    rate_limited: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                "commits": self.commits,
                "bytes_uploaded": self.bytes_uploaded,
                "retries": self.retries,
                "rate_limited": self.rate_limited,
            }


def status_of(error: BaseException) -> int | None:
    """The HTTP status of a failed Hub call (None: no response, e.g. a connection error)."""
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def is_transport_error(error: BaseException) -> bool:
    """A connection error or a timeout (httpx / httpx2 / requests / the standard library), not an answer."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"TransportError", "ConnectionError", "Timeout", "TimeoutError", "TimeoutException"})


def is_transient(error: BaseException) -> bool:
    """Worth trying again: a 408/429/5xx answer, a connection error or a timeout."""
    return status_of(error) in RETRY_STATUSES or is_transport_error(error)


def retry_after(error: BaseException) -> float | None:
    """The server's `Retry-After` (seconds) on a failed call, None when it sent none (or an HTTP date)."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(str(value).strip())) if value is not None else None
    except ValueError:
        return None


def with_retries(
    call: Callable[[], T],
    what: str,
    *,
    traffic: HubTraffic | None = None,
    attempts: int = MAX_ATTEMPTS,
    deadline: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, tried again after a transient failure (see the module docstring). `deadline`: seconds after
    which no new try starts (the last error is raised), so a dead endpoint fails in bounded time."""

    started = time.monotonic()
    wait = BASE_WAIT
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or attempt == attempts:
                raise
            told = retry_after(error)
            if status_of(error) == 429 and traffic is not None:
                traffic.add(rate_limited=1)
            pause = told if told is not None else wait
            if pause > MAX_RETRY_AFTER or (
                deadline is not None and time.monotonic() - started + pause >= deadline
            ):
                raise
            logger.warning(
                "Hub: %s failed (%s); retrying in %.1f s%s (try %d of %d)",
                what, describe(error), pause, " as the Hub asked (Retry-After)" if told is not None else "",
                attempt + 1, attempts,
            )  # fmt: skip
            if traffic is not None:
                traffic.add(retries=1)
            sleep(pause)
            wait = min(MAX_WAIT, wait * 2)
    raise AssertionError("unreachable")  # pragma: no cover


def _changed(operation: CommitOperationAdd) -> bool:
    """Whether `create_commit` sent this file (the Hub did not have these bytes at this path)."""
    remote = getattr(operation, "_remote_oid", None)
    if getattr(operation, "_should_ignore", False):
        return False
    try:
        return remote is None or remote != operation._local_oid
    except Exception:  # noqa: BLE001 - an attribute of another huggingface_hub version: count it
        return True


class HubClient(HfApi):
    """`HfApi` whose commits, repo creations, branches and listings are retried (module docstring) and
    whose commits and uploaded bytes are counted in `traffic`."""

    def __init__(self, *args: Any, traffic: HubTraffic | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.traffic = traffic if traffic is not None else HubTraffic()

    def create_commit(self, repo_id: str, operations: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        operations = list(operations)
        info = with_retries(
            lambda: super(HubClient, self).create_commit(repo_id, operations, **kwargs),
            f"commit to {repo_id}",
            traffic=self.traffic,
        )
        added = [op for op in operations if isinstance(op, CommitOperationAdd) and _changed(op)]
        if added or any(isinstance(op, CommitOperationDelete) for op in operations):
            self.traffic.add(commits=1, bytes_uploaded=sum(op.upload_info.size for op in added))
        return info

    def create_repo(self, repo_id: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return with_retries(
            lambda: super(HubClient, self).create_repo(repo_id, **kwargs),
            f"create {repo_id}",
            traffic=self.traffic,
        )

    def create_branch(self, repo_id: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return with_retries(
            lambda: super(HubClient, self).create_branch(repo_id, **kwargs),
            f"create a branch of {repo_id}",
            traffic=self.traffic,
        )

    def repo_info(self, repo_id: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return with_retries(
            lambda: super(HubClient, self).repo_info(repo_id, **kwargs),
            f"read {repo_id}",
            traffic=self.traffic,
        )

    def list_repo_files(self, repo_id: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return with_retries(
            lambda: super(HubClient, self).list_repo_files(repo_id, **kwargs),
            f"list {repo_id}",
            traffic=self.traffic,
        )


__all__ = [
    "MAX_ATTEMPTS",
    "HubClient",
    "HubTraffic",
    "is_transient",
    "is_transport_error",
    "retry_after",
    "status_of",
    "with_retries",
]
