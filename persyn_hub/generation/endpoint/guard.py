"""What this process learned about a served teacher's server, so a wrong setting fails once, not per row.

Preflight's probe records whether the server refuses a system turn (`server_refusal`: then it is folded
into the first user turn); `StopGuard` stops a teacher whose requests keep failing alike, and the stop
holds for the later stages until a probe is answered again (`probed`).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from persyn_hub.generation.auth import redact
from persyn_hub.generation.endpoint.records import failed_record
from persyn_hub.generation.retry import RowError, server_message
from persyn_hub.recipe.sections import TeacherConfig

logger = logging.getLogger(__name__)

SERVER_REFUSALS: dict[tuple, Optional[str]] = {}
"""Per process: an endpoint teacher -> why its server refuses a system turn (None: it takes one), from
preflight's probe. Endpoint teachers are driven from the process that ran preflight, so it is known there."""
STOPPED: dict[tuple, str] = {}
"""Per process: endpoint teachers stopped by their `StopGuard`, and why. A stop holds for the stages
after it (the routed prompts of a stopped teacher are not sent either) until a probe is answered."""


def server_key(teacher: TeacherConfig) -> tuple:
    """What identifies a served teacher's server-side chat template: its servers and the model asked for."""
    return (teacher.name, tuple(teacher.endpoints), teacher.served_model_name, teacher.endpoint_api)


def server_refusal(teacher: TeacherConfig) -> Optional[str]:
    """Why the teacher's server refuses a system turn, as preflight's probe found (None: not refused, or
    not probed in this process)."""
    return SERVER_REFUSALS.get(server_key(teacher))


def failure_text(failure: RowError) -> str:
    """`HTTP 400: <the server's message>`: the status without the URL, then the server's own words."""
    message = server_message(failure.raw)
    return redact(f"{failure.reason.split(':')[0]}: {message}" if message else failure.reason)


class StopGuard:
    """Stops a teacher whose last `limit` requests failed with the same non-retryable error.

    A wrong setting (a refused system turn, a model the server does not have) fails every row alike:
    sending the rest only multiplies the failure. Successes reset the count; retryable failures (429,
    5xx, timeouts) neither count nor reset it, they have their own retry path.
    """

    def __init__(self, teacher: TeacherConfig):
        self.teacher = teacher
        self.limit = teacher.stop_after_failures
        self.streak = 0
        self.last: Optional[str] = None
        self.stopped: Optional[str] = STOPPED.get(server_key(teacher)) if self.limit > 0 else None
        """Why the teacher was stopped (`failure_text` of the repeated error); None while it runs."""

    def succeeded(self) -> None:
        self.streak, self.last = 0, None

    def failed(self, failure: RowError, url: str) -> None:
        if self.limit <= 0 or self.stopped:
            return
        why = failure_text(failure)
        self.streak = self.streak + 1 if why == self.last else 1
        self.last = why
        if self.streak >= self.limit:
            self.stopped = STOPPED[server_key(self.teacher)] = why
            logger.error(
                "teacher %s stopped: its last %d requests to %s failed alike (%s). The rows not yet sent are "
                "marked failed; fix the cause, then `persyn run RECIPE --retry-failed` asks them again.",
                self.teacher.name, self.limit, url, why,
            )  # fmt: skip

    def record(self, prompt_id: str) -> dict[str, Any]:
        """The failed record of a row not sent because the teacher was stopped."""
        return failed_record(
            prompt_id,
            f"teacher stopped: its last {self.limit} requests failed alike ({self.stopped}); this row was not "
            "sent. Fix the cause, then `persyn run RECIPE --retry-failed` asks it again",
        )


def probed(teacher: TeacherConfig, refusal: Optional[str], failure: Optional[RowError]) -> Optional[str]:
    """Remember the probe's outcome for this process's generation, and say what it means in the log.
    A probe the server answered lifts a stop from an earlier stage (the cause was fixed)."""
    SERVER_REFUSALS[server_key(teacher)] = refusal
    if failure is None:
        STOPPED.pop(server_key(teacher), None)
    if refusal:
        logger.warning(
            "teacher %s: %s; the system prompt is folded into the first user turn", teacher.name, refusal
        )
    if failure is not None:
        logger.warning(
            "teacher %s: the probe request failed (%s)",
            teacher.name,
            redact(failure.message()),
        )
    return refusal
