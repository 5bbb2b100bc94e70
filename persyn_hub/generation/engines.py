"""Models kept loaded from one chunk of a stage to the next, and released when the stage ends.

A sharded stage computes its rows chunk by chunk in every process (so its result does not depend on the
process count, see `pipeline/runner.py`). Loading a teacher, the student or a reward model once per chunk
would cost a model load per few hundred rows, minutes each for a large vLLM engine. Loaders ask
`held_engine` instead: the engine stays loaded for the next chunk of the same stage, and the runner calls
`release_engines()` when the stage ends, so the next stage's model gets the memory. One engine is held
at a time: asking for another releases the first.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from persyn_hub.progress import advance

logger = logging.getLogger(__name__)

T = TypeVar("T")

_held: dict[Hashable, tuple[Any, Callable[[Any], None] | None]] = {}


def held_engine(key: Hashable, load: Callable[[], T], release: Callable[[T], None] | None = None) -> T:
    """The engine loaded under `key`, loading it (after releasing any other) when none is held."""
    if key in _held:
        return _held[key][0]
    release_engines()
    advance()  # a model load is one long step of progress: it counts when it starts and when it ends
    engine = load()
    advance()
    _held[key] = (engine, release)
    return engine


def release_engines() -> None:
    """Free every held engine (and, on a GPU, its cached memory)."""
    if not _held:
        return
    while _held:
        key, (engine, release) = _held.popitem()
        if release is not None:
            try:
                release(engine)
            except Exception as error:  # noqa: BLE001 - a failed teardown must not lose the stage's result
                logger.warning("releasing engine %s failed: %s: %s", key, type(error).__name__, error)
        del engine
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["held_engine", "release_engines"]
