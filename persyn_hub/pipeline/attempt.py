"""Which attempt of a launch this process belongs to, agreed on by every rank through the rendezvous store.

A launcher's store can outlive its processes: `torchrun --max-restarts N` (and `accelerate launch`, which
starts its processes through it) restarts every rank of a failed launch on the same store (static
rendezvous) or the same rendezvous store (c10d), so the keys of a dead attempt (its abort, its chunk
claims, its "chunks done" and "exit" signals) are still there when the next attempt starts. Every key of
a run therefore lives under a prefix of its own attempt, `persyn/<attempt id>/`, which the ranks agree on
at start without trusting anything an earlier attempt may have left in the store:

1. every rank writes a fresh random nonce to `persyn/hello/<rank>`;
2. rank 0 draws a fresh attempt id and publishes `persyn/attempt`: the id and the nonces it read,
   published again whenever a nonce changes (it may first read one an earlier attempt left);
3. a rank takes the attempt once the published record holds its own nonce, and acknowledges under the
   attempt's prefix (a key no earlier attempt can have written); rank 0 goes on once every rank has.

The restart counter torchrun exports (`TORCHELASTIC_RESTART_COUNT`) is not what the ranks agree on: under
c10d rendezvous each node's agent counts its own restarts (a node that joins later starts at 0), and a
bare `srun` exports none. The launch's id (`persyn/launch`, set once per store) is shared by its attempts:
the run lock an earlier attempt of the same launch left is taken over (`pipeline/run_lock.py`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from persyn_hub.errors import PersynError

logger = logging.getLogger("persyn_hub")

POLL_SECONDS = 0.05


class AttemptError(PersynError, RuntimeError):
    """The ranks of a launch could not agree on their attempt within `launch.timeout`."""


@dataclass(frozen=True)
class Attempt:
    """One start of a launch's processes on a rendezvous store."""

    launch: str
    """The launch's id: the same for every attempt on this store."""
    id: str
    """This attempt's id: the prefix of every key the run reads or writes."""
    number: int
    """1 for the first attempt on this store, 2 after the launcher's first restart, ..."""


def agree_on_attempt(store: Any, index: int, count: int, timeout: float) -> Attempt:
    """This process's attempt, the same on every rank (see the module docstring); `store` is the
    launcher's store under the prefix `persyn/`. Raises `AttemptError` after `timeout` seconds."""
    nonce = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    try:
        store.set(f"hello/{index}", nonce)
        attempt = _lead(store, count, deadline) if index == 0 else _follow(store, index, nonce, deadline)
    except AttemptError:
        raise
    except Exception as error:  # noqa: BLE001 - the store's host went away during the start
        raise AttemptError(
            f"launch: rank {index} lost the rendezvous store while the ranks agreed on their attempt "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}); "
            "rank 0 or the launcher died. Run the same command again."
        ) from error
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if index == 0 and attempt.number > 1:
        logger.info(
            "launch %s: attempt %d on this rendezvous store%s: what earlier attempts left in the store "
            "(abort, chunk claims, signals) is ignored; finished stages and chunks in output.dir are reused",
            attempt.launch, attempt.number, f" (torchrun restart {restarts})" if restarts else "",
        )  # fmt: skip
    return attempt


def _lead(store: Any, count: int, deadline: float) -> Attempt:
    """Rank 0: draw the attempt and publish it until every rank has acknowledged it."""
    launch = _text(store.compare_set("launch", "", uuid.uuid4().hex[:12]))
    attempt = Attempt(launch, uuid.uuid4().hex[:12], int(store.add("attempts", 1)))
    published: list[str] | None = None
    while True:
        hellos = [_get(store, f"hello/{rank}") for rank in range(count)]
        if hellos != published:
            record = {"launch": attempt.launch, "id": attempt.id, "number": attempt.number, "hellos": hellos}
            store.set("attempt", json.dumps(record))
            published = hellos
        waiting = [rank for rank in range(1, count) if not store.check([f"{attempt.id}/ack/{rank}"])]
        if not waiting:
            return attempt
        if time.monotonic() > deadline:
            raise AttemptError(
                f"launch: rank 0 heard from no process of rank(s) {waiting} of {count} within launch.timeout "
                "after the rendezvous: they died or hang at start. Run the same command again."
            )
        time.sleep(POLL_SECONDS)


def _follow(store: Any, index: int, nonce: str, deadline: float) -> Attempt:
    """Another rank: wait for rank 0's record naming this process's own nonce, then acknowledge it."""
    while True:
        record = json.loads(_get(store, "attempt") or "{}")
        hellos = record.get("hellos", [])
        if index < len(hellos) and hellos[index] == nonce:
            store.set(f"{record['id']}/ack/{index}", "1")
            return Attempt(record["launch"], record["id"], int(record["number"]))
        if time.monotonic() > deadline:
            raise AttemptError(
                f"launch: rank {index} got no word from rank 0 within launch.timeout after the rendezvous: "
                "rank 0 died or hangs at start. Run the same command again."
            )
        time.sleep(POLL_SECONDS)


def _get(store: Any, key: str) -> str:
    """The key's value, or "" while no process has set it (a plain `get` would block)."""
    return _text(store.get(key)) if store.check([key]) else ""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__ = ["Attempt", "AttemptError", "agree_on_attempt"]
