"""Stable hashes of configs and inputs, used as stage cache keys and `datasets` fingerprints.

`datasets` hashes a mapped function by pickling it; a function that holds a model gets a new hash
each run (or pickles gigabytes), so stages pass a `new_fingerprint` derived from what matters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def plain_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **dataclasses.asdict(value)}
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def fingerprint(*parts: Any, length: int = 16) -> str:
    """A hex digest of JSON-serializable parts (dataclasses included), order-sensitive."""
    payload = json.dumps([plain_value(p) for p in parts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def run_fingerprint() -> str:
    """A fresh `datasets` fingerprint for output that depends on more than its inputs (a generation's
    checkpoint): `datasets` must never hand back an earlier run's result, or an operation chained on it,
    from its cache files. Reuse across runs is the stage cache's job, keyed by what the output is."""
    import uuid

    return uuid.uuid4().hex[:16]
