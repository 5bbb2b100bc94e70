"""Finished stages pushed in the background: a bounded queue (at most `QUEUE_SIZE` stages wait; a further
`submit` waits for room) and the thread that pushes them one at a time, so the run goes on computing.
A push that fails never stops the run: the thread logs it and takes the next one."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from persyn_hub.publish.mirror.layout import describe

logger = logging.getLogger("persyn_hub")

QUEUE_SIZE = 2
"""Finished stages that may wait for the push thread; a further `publish` waits for room (back-pressure)."""


class PushQueue:
    """Calls `push(item)` for each submitted item on the push thread once `start`ed (before that, or after
    `stop`, at once in the caller's thread)."""

    def __init__(self, push: Callable[[Any], None], name: str = "persyn-hub-stages") -> None:
        self.push = push
        self.name = name
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None

    def start(self) -> None:
        """Start the push thread."""
        self._queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._worker = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._worker.start()

    def submit(self, item: Any) -> None:
        """Queue `item` for the push thread (waits only while `QUEUE_SIZE` items wait); without a started
        push thread, push it now."""
        if self._queue is None:
            self.push(item)
            return
        self._queue.put(item)

    def wait(self) -> None:
        """Wait until every queued item is pushed (or its push failed)."""
        if self._queue is not None:
            self._queue.join()

    def stop(self) -> None:
        """Let the push thread push what is queued, then end it."""
        if self._queue is not None and self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._queue = self._worker = None

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.push(item)
            except Exception as error:  # noqa: BLE001 - a push never stops the run; it stays behind
                logger.warning("Hub stages: push thread: %s", describe(error))
            finally:
                self._queue.task_done()


__all__ = ["QUEUE_SIZE", "PushQueue"]
