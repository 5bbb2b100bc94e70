"""How the processes of a launch learn that the others are done, or gone.

Under `accelerate launch`, `torchrun` or `srun` every process of a run knows its `RANK` of `WORLD_SIZE`
and where the launcher's rendezvous store is (`MASTER_ADDR:MASTER_PORT`: the TCPStore that torchrun's
agent, or rank 0, hosts). This module connects to that store through torch's own `env://` rendezvous
and uses nothing else: keyed signals ("stage X finished", "rank 2 finished its chunks"), one atomic
counter per sharded stage from which the processes claim chunks, and a heartbeat counter per process,
bumped by a background thread. Data never goes through the store; it goes through the stage cache on
the shared filesystem.

Every wait is a liveness wait: it lasts as long as the processes it waits for show signs of life, so a
main-process stage may run for a day, while a process that dies (SIGKILL, OOM, a lost node) or hangs
(SIGSTOP, a stuck CUDA call or NFS mount: its heartbeat thread stops too) ends every other process
within `launch.timeout` seconds with one line naming the stage and the rank. A process that fails with
an error says so through the store first, so the others stop at once with its message.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from persyn_hub.errors import PersynError
from persyn_hub.generation.placement import LAUNCH_VARIABLES

logger = logging.getLogger("persyn_hub")

ABORT = "abort"
POLL_SECONDS = 0.2
STORE_TIMEOUT_LIMIT = 30.0
"""The longest a single store call may block (seconds), whatever `launch.timeout` is."""
ACCELERATE_PREFIX = "ACCELERATE_"
"""accelerate launch passes its config (mixed precision, DeepSpeed, dynamo) to the Trainer this way."""


class LaunchError(PersynError, RuntimeError):
    """A process of the launch died, hung or failed; the message names the stage and the rank."""


@dataclass
class Launch:
    """This process's place in a launch: rank `index` of `count`, and the store the ranks signal through.

    `Launch()` is a run of one process: every wait returns at once and nothing is signalled.
    """

    index: int = 0
    count: int = 1
    id: str = ""
    timeout: float = 600.0
    """Liveness timeout in seconds (`launch.timeout`): how long a silent process is waited for."""
    store: Any = None
    _halt: threading.Event = field(default_factory=threading.Event, repr=False)
    _heartbeat: threading.Thread | None = field(default=None, repr=False)

    @property
    def main(self) -> bool:
        return self.index == 0

    @property
    def beat_seconds(self) -> float:
        return max(0.2, min(5.0, self.timeout / 8))

    # -- signals -----------------------------------------------------------------------------------

    def signal(self, key: str, value: str = "1") -> None:
        if self.store is not None:
            self.store.set(key, value)

    def claim(self, counter: str) -> int:
        """The next number of `counter` (0, 1, 2, ... across all processes, each handed out once)."""
        return int(self.store.add(counter, 1)) - 1 if self.store is not None else 0

    def abort(self, message: str) -> None:
        """Tell every process to stop with `message` (the first message stays)."""
        if self.store is None:
            return
        with contextlib.suppress(Exception):  # the store may be gone already; the exit says the rest
            self.store.compare_set(ABORT, "", message)

    def wait_for(self, key: str, *, stage: str, ranks: Sequence[int]) -> str:
        """The value of `key` once some process set it, while every rank in `ranks` shows signs of life.

        Raises `LaunchError` when any process aborted the launch, when a rank of `ranks` has not beaten
        for `timeout` seconds, or when the store itself (hosted by rank 0 or the launcher) has not
        answered for `timeout` seconds.
        """
        if self.store is None:
            return ""
        seen: dict[int, tuple[int, float]] = {}
        unanswered_since: float | None = None
        announced = False
        started = time.monotonic()
        while True:
            now = time.monotonic()
            try:
                if self.store.check([ABORT]):
                    raise LaunchError(self.store.get(ABORT).decode())
                if self.store.check([key]):
                    return self.store.get(key).decode()
                beats = {rank: int(self.store.add(beat_key(rank), 0)) for rank in ranks}
                unanswered_since = None
            except LaunchError:
                raise
            except Exception as error:  # noqa: BLE001 - the store's host is gone or frozen
                unanswered_since = unanswered_since or now
                if now - unanswered_since > self.timeout:
                    raise LaunchError(
                        f"stage {stage}: rank {self.index} cannot reach the launch's rendezvous store "
                        f"(hosted by rank 0 or the launcher) for {self.timeout:.0f} s ({type(error).__name__}); "
                        "rank 0 died or hangs. Finished work is kept: run the same command again to resume."
                    ) from error
                time.sleep(POLL_SECONDS)
                continue
            silent = []
            for rank, beat in beats.items():
                if rank not in seen or seen[rank][0] != beat:
                    seen[rank] = (beat, now)
                elif now - seen[rank][1] > self.timeout:
                    silent.append(rank)
            if silent:
                names = ", ".join(str(rank) for rank in silent)
                message = (
                    f"stage {stage}: rank {names} did not arrive: no sign of life for {self.timeout:.0f} s "
                    f"(launch.timeout); it died or hangs. Rank {self.index} stops the launch. Finished work "
                    "is kept: run the same command again (with any number of processes) to resume."
                )
                self.abort(message)
                raise LaunchError(message)
            if not announced and now - started > 10:
                logger.info("stage %s: rank %d waits for rank(s) %s", stage, self.index, list(ranks))
                announced = True
            time.sleep(POLL_SECONDS)

    def others(self) -> list[int]:
        return [rank for rank in range(self.count) if rank != self.index]

    # -- life ----------------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Bump this process's beat counter from a daemon thread (it stops when the process is stopped).

        The thread is stopped and joined at interpreter exit: a daemon thread still inside a store call
        when the interpreter finalizes is unwound through torch's C++ code, which aborts the process
        ("terminate called without an active exception") and turns a clean exit code into SIGABRT.
        """
        if self.store is None or self._heartbeat is not None:
            return
        store = self.store.clone()  # its own connection: a slow store never delays the main thread's waits

        def beat() -> None:
            while not self._halt.is_set():
                with contextlib.suppress(Exception):  # a store that does not answer is the waiters' concern
                    store.add(beat_key(self.index), 1)
                self._halt.wait(self.beat_seconds)

        self._heartbeat = threading.Thread(target=beat, name="persyn-heartbeat", daemon=True)
        self._heartbeat.start()
        atexit.register(self.stop_heartbeat)

    def stop_heartbeat(self) -> None:
        """Stop beating and wait for the thread's store call in flight (bounded by the store's timeout)."""
        self._halt.set()
        thread, self._heartbeat = self._heartbeat, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=STORE_TIMEOUT_LIMIT + 1.0)

    def finish(self) -> None:
        """Leave the launch together: rank 0 (which may host the store) waits until every rank is done."""
        if self.store is None:
            return
        self.signal(f"exit/{self.index}")
        if self.main:
            for rank in self.others():
                self.wait_for(f"exit/{rank}", stage="end of run", ranks=[rank])
        self.stop_heartbeat()


def beat_key(rank: int) -> str:
    return f"beat/{rank}"


def connect(timeout: float) -> Launch:
    """This process's launch from the launcher's environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...).

    One process (no launcher) gets `Launch()` and touches no network. Under a launcher the store is the
    rendezvous store of torch's `env://` method, so no port is opened beyond the launcher's own.
    """
    index, count = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if count == 1:
        return Launch(timeout=timeout)
    import torch.distributed as dist

    try:
        store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout)))
    except Exception as error:  # noqa: BLE001 - a rendezvous that times out is the launch's fault
        raise LaunchError(
            f"launch: rank {index} of {count} could not join the rendezvous at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within launch.timeout "
            f"({timeout:.0f} s): {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        ) from error
    store.set_timeout(timedelta(seconds=max(1.0, min(STORE_TIMEOUT_LIMIT, timeout / 4))))
    prefixed = dist.PrefixStore("persyn/", store)
    launch = Launch(index, count, timeout=timeout, store=prefixed)
    if launch.main:
        prefixed.set("launch-id", uuid.uuid4().hex[:12])
    launch.start_heartbeat()
    launch.id = launch.wait_for("launch-id", stage="start", ranks=[0])
    return launch


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Run a block as if this were the only process (the main process training the router alone).

    Without the launch variables the Trainer waits for no other process, and without accelerate's
    variables it uses the recipe's precision, not the launch config's (`mixed_precision: bf16` in
    `multi_gpu.yaml` would otherwise train the router under bf16 autocast in a launch only).
    """
    names = [n for n in os.environ if n in LAUNCH_VARIABLES or n.startswith(ACCELERATE_PREFIX)]
    saved = {name: os.environ.pop(name) for name in names}
    try:
        yield
    finally:
        os.environ.update(saved)


__all__ = ["Launch", "LaunchError", "connect", "single_process"]
