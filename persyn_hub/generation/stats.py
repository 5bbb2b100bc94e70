"""Per-teacher generation accounting, carried into the summary and the data set cards."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


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

    def add_failure(self, reason: str) -> None:
        self.failures += 1
        self.failure_reasons[reason.split(":")[0][:80]] += 1

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["failure_reasons"] = dict(self.failure_reasons)
        return values
