"""Whether a process of a launch is alive AND making progress, and what it is blocked in when it is not.

A heartbeat alone says that a process exists, not that it works: a main thread stuck in a CUDA sync, an
engine call or a read on a hung NFS mount releases the GIL, so a heartbeat thread beside it would beat
forever while every other process waits. So the heartbeat thread (`Watchdog`, one per process of a
launch) does two things every beat:

* it bumps the process's beat counter (the others end the launch within `launch.timeout` when it stops:
  a process killed, stopped, or frozen with the GIL held), and publishes the process's work progress
  (`persyn_hub.progress.WORK`: its stage and how far it got, bumped by the progress bars, generation
  checkpoints, model loads, router training steps, routing batches and the runner's stages and chunks);
* when that progress has not moved for `launch.stall_timeout` seconds while the main thread is not
  waiting for another process, it names the stall: the stage and the main thread's stack (the frame it
  is blocked in) go to the log, one line to every process through the launch's abort key, and the
  process exits with status 2 (its main thread cannot be unblocked, so it cannot raise).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persyn_hub.progress import WORK
from persyn_hub.recipe.sections import LaunchConfig

logger = logging.getLogger("persyn_hub")

DEFAULT_STALL_TIMEOUT = LaunchConfig.stall_timeout
"""`launch.stall_timeout`: longer than the slowest single step of a run (a model load, one batch)."""
STALL_EXIT_STATUS = 2
LOG_FRAMES = 12
"""Frames of the blocked main thread written to the log (innermost last)."""
LINE_FRAMES = 3
"""Frames named in the one-line error (innermost first)."""
POLL_SECONDS = 0.2
LEFT_GRACE_SECONDS = 1.0
"""After the others said they left (the last thing their exit does), the time they get to finish exiting
before this one does: a launcher's agent stops the remaining processes as soon as one exits."""


def progress_key(rank: int) -> str:
    """Where rank `rank` publishes its stage and progress (JSON), for the processes waiting on it."""
    return f"progress/{rank}"


def left_key(rank: int) -> str:
    """Set by a process as its interpreter exits after an abort, once its error line is printed."""
    return f"left/{rank}"


@dataclass
class Watchdog:
    """The heartbeat thread of one process: beats, publishes progress, and ends the launch on a stall."""

    store: Any
    """Its own store connection: a slow store never delays the main thread's waits."""
    rank: int
    others: Sequence[int]
    beat_key: str
    abort_key: str
    every: float
    """Seconds between beats."""
    stall_timeout: float
    timeout: float
    """`launch.timeout`: how long a stalled process waits for the others to read its abort."""
    halt: threading.Event
    worker: int = field(default_factory=threading.get_ident)
    """The thread that does the process's work (the one that started the launch)."""

    def run(self) -> None:
        """Beat until halted; on a stall, end the launch (this returns only when halted)."""
        last: tuple[int, bool] | None = None
        moved = time.monotonic()
        while not self.halt.is_set():
            with contextlib.suppress(Exception):  # a store that does not answer is the waiters' concern
                self.store.add(self.beat_key, 1)
            now = time.monotonic()
            state = (WORK.moves, WORK.waits > 0)
            if state != last:
                last, moved = state, now
                self._publish(waiting=state[1])
            elif not state[1] and now - moved > self.stall_timeout:
                self._end_launch(now - moved)
            self.halt.wait(self.every)

    def _publish(self, *, waiting: bool) -> None:
        value = json.dumps({"stage": WORK.stage, "done": WORK.done, "waiting": waiting})
        with contextlib.suppress(Exception):
            self.store.set(progress_key(self.rank), value)

    def _end_launch(self, seconds: float) -> None:
        """Name the stall to every process, log the blocked stack, and exit: the main thread cannot raise."""
        frames = worker_frames(self.worker)
        message = stall_message(WORK.stage, self.rank, seconds, self.stall_timeout, frames)
        with contextlib.suppress(Exception):  # the first abort message stays
            self.store.compare_set(self.abort_key, "", message)
        logger.error(
            "%s\nThe main thread of rank %d is blocked here (innermost last):\n%s",
            message, self.rank, "".join(traceback.format_list(frames[-LOG_FRAMES:])).rstrip(),
        )  # fmt: skip
        # the line first: a launcher's agent stops this process as soon as another one exits
        print(f"persyn: error: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        self._await_others()
        logging.shutdown()
        os._exit(STALL_EXIT_STATUS)

    def _await_others(self) -> None:
        """Stay until every other process has left (it may need this process's store to read the abort),
        at most `launch.timeout` seconds."""
        deadline = time.monotonic() + self.timeout
        keys = [left_key(rank) for rank in self.others]
        while keys and time.monotonic() < deadline:
            try:
                if self.store.check(keys):
                    time.sleep(LEFT_GRACE_SECONDS)
                    return
            except Exception:  # noqa: BLE001 - the store's host has left: nobody is left to tell
                return
            time.sleep(POLL_SECONDS)


def worker_frames(thread_id: int) -> traceback.StackSummary:
    """The stack of thread `thread_id` right now (outermost first); empty when it has ended."""
    frame = sys._current_frames().get(thread_id)
    return traceback.extract_stack(frame) if frame is not None else traceback.StackSummary()


def stall_message(
    stage: str, rank: int, seconds: float, stall_timeout: float, frames: traceback.StackSummary
) -> str:
    """One line naming the stage, the rank and where its main thread is blocked (innermost frame first)."""
    where = " <- ".join(
        f"{frame.name} ({Path(frame.filename).name}:{frame.lineno})"
        for frame in reversed(frames[-LINE_FRAMES:])
    )
    code = f": `{frames[-1].line}`" if frames and frames[-1].line else ""
    return (
        f"stage {stage}: rank {rank} made no progress for {seconds:.0f} s (launch.stall_timeout "
        f"{stall_timeout:.0f} s) while alive; its main thread is blocked in {where or 'an unknown frame'}"
        f"{code}. The stack is in rank {rank}'s log. Rank {rank} stops the launch. Finished work is kept: "
        "run the same command again to resume."
    )


def describe_progress(store: Any, ranks: Sequence[int]) -> str:
    """What the ranks waited for last published: `rank 0 in stage router (35 done)`, for the wait log."""
    parts = []
    for rank in ranks:
        try:
            if not store.check([progress_key(rank)]):
                continue
            state = json.loads(store.get(progress_key(rank)).decode())
        except Exception:  # noqa: BLE001 - a log line is not worth a failed wait
            continue
        parts.append(f"rank {rank} in stage {state['stage']} ({state['done']} done)")
    return "; ".join(parts)


__all__ = [
    "DEFAULT_STALL_TIMEOUT",
    "Watchdog",
    "describe_progress",
    "left_key",
    "progress_key",
    "stall_message",
    "worker_frames",
]
