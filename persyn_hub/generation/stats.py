"""Per-teacher generation accounting, carried into the summary and the data set cards."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

logger = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    teacher: str
    requests: int = 0
    """Generation requests actually made in this run (reused checkpoint rows are not requests)."""
    retries: int = 0
    """Extra attempts after a failed request (429/5xx/timeout/connection error); not counted in requests."""
    reused: int = 0
    """Rows taken from the checkpoint of an earlier, interrupted or finished run."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    failures: int = 0
    corrupt_checkpoint_lines: int = 0
    """Checkpoint lines that could not be read back (their rows were generated again)."""
    failure_reasons: Counter = field(default_factory=Counter)
    system_folded: Optional[str] = None
    """Why this teacher's system turn was folded into the first user turn (its template refuses one)."""
    folded_rows: int = 0
    """Rows sent with the system text folded into the first user turn."""
    stopped: Optional[str] = None
    """Why generation stopped for this teacher (the same non-retryable error `stop_after_failures` times
    in a row, with the server's message); None when it was not stopped."""
    stopped_rows: int = 0
    """Rows not sent because the teacher was stopped (failed, and retried by `--retry-failed`)."""

    def add_failure(self, reason: str) -> None:
        self.failures += 1
        self.failure_reasons[reason.split(":")[0][:80]] += 1

    def add_fold(self, reason: str) -> None:
        """One row folded; the first one of a stage says so in the log."""
        if not self.folded_rows:
            logger.warning(
                "teacher %s: %s; the system prompt is folded into the first user turn", self.teacher, reason
            )
        self.system_folded = reason
        self.folded_rows += 1

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["failure_reasons"] = dict(self.failure_reasons)
        return values
