"""Students already trained and evaluated are not trained again.

A comparison trains one student per strategy and seed (minutes each on a CPU, hours at the paper's scale).
A comparison killed halfway, a second comparison of the same run (the full recipe after the default one),
or a rerun with one strategy added would otherwise pay for every student again. Each student's result
(its training metrics and its evaluation report) is kept as one JSON file under the pipeline run's
directory, keyed by everything that decides it: the training rows, the student model, the SFT settings,
the seed, the evaluation settings and the versions of torch, transformers, TRL and lm-eval. Anything
different is a different key, so a reused student is the student this comparison would have trained.
The model weights stay in the comparison that trained them (`students/`); only the numbers are shared.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from datasets import Dataset

CACHE_FOLDER = "compare-students"
"""Under the pipeline run's `output.dir`: every comparison of that run shares it."""

VERSIONED = ("torch", "transformers", "trl", "lm_eval", "persyn_hub")


def _versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def training_rows_digest(dataset: Optional[Dataset]) -> str:
    """A digest of the rows a student trains on (every column, in order); "" for the untrained student."""
    if dataset is None:
        return ""
    digest = hashlib.sha256()
    for row in dataset:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class StudentKey:
    """Everything that decides a student's numbers; `name` (strategy and seed) only says which it was."""

    name: str
    rows: str
    student: str
    seed: Optional[int]
    sft: dict[str, Any]
    evaluation: dict[str, Any]

    def digest(self) -> str:
        payload = {
            "rows": self.rows,
            "student": self.student,
            "seed": self.seed,
            "sft": self.sft,
            "evaluation": self.evaluation,
            "versions": _versions(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StudentCache:
    """One JSON file per finished student: {"key": ..., "training": ..., "report": ..., "seconds": ...}."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.folder = Path(folder)
        self.enabled = enabled
        self.reused: list[str] = []

    def _path(self, key: StudentKey) -> Path:
        """By content alone: two strategies whose sets are the same rows (persyn_verified when the checker
        rejected no routed answer) share one student, as training them twice would give the same one."""
        return self.folder / f"{key.digest()}.json"

    def get(self, key: StudentKey) -> Optional[dict[str, Any]]:
        """The stored result, or None (not stored, caching off, or a damaged file: trained again)."""
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or not entry.get("report"):
            return None
        self.reused.append(key.name)
        return entry

    def put(self, key: StudentKey, entry: dict[str, Any]) -> None:
        """Write atomically, so a kill while writing leaves no half file to be read as a result."""
        if not self.enabled:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps({"name": key.name, **entry}, default=str), encoding="utf-8")
        os.replace(partial, path)


__all__ = ["CACHE_FOLDER", "StudentCache", "StudentKey", "training_rows_digest"]
