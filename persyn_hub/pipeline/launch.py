"""How the processes of a launch learn that the others are done, or gone.

Under `accelerate launch`, `torchrun` or `srun` every process of a run knows its `RANK` of `WORLD_SIZE`
and where the launcher's rendezvous store is (`MASTER_ADDR:MASTER_PORT`: the TCPStore that torchrun's
agent, or rank 0, hosts). This module connects to that store through torch's own `env://` rendezvous
and uses nothing else: keyed signals ("stage X finished", "rank 2 finished its chunks"), one atomic
counter per sharded stage from which the processes claim chunks, and a heartbeat counter and a
progress record per process, kept by a background thread (`pipeline/liveness.py`). Data never goes
through the store; it goes through the stage cache on the shared filesystem.

Every wait is a liveness wait: it lasts as long as the processes it waits for show signs of life, so a
main-process stage may run for a day. A process that dies (SIGKILL, OOM, a lost node) or is frozen whole
(SIGSTOP, or a call that holds the GIL: its heartbeat thread stops too) ends every other process within
`launch.timeout` seconds with one line naming the stage and the rank. A heartbeat cannot see a hang
inside the main thread (a stuck CUDA sync or engine call, a read on a hung NFS mount: the GIL is
released and the heartbeat thread beats on), so the heartbeat thread also watches the process's work
progress: when it has not moved for `launch.stall_timeout` seconds outside a wait, that process names its
stage and the frame it is blocked in and ends the launch (exit 2 on every process). A process that fails
with an error says so through the store first, so the others stop at once with its message.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from persyn_hub.errors import PersynError
from persyn_hub.generation.placement import LAUNCH_VARIABLES
from persyn_hub.pipeline.attempt import agree_on_attempt
from persyn_hub.pipeline.liveness import DEFAULT_STALL_TIMEOUT, Watchdog, describe_progress, left_key
from persyn_hub.progress import waiting

logger = logging.getLogger("persyn_hub")

ABORT = "abort"
POLL_SECONDS = 0.2
ANNOUNCE_SECONDS = 300.0
"""How often a long wait logs what the awaited ranks are doing."""
LEAVE_SECONDS = 5.0
"""The longest an exiting process tries to say it left (a frozen store host must not hold its exit)."""
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
    """The launch's id, shared by its attempts (a launcher's restarts) on one rendezvous store."""
    attempt: int = 1
    """Which start of the launch this is (`pipeline/attempt.py`): every store key belongs to it alone."""
    timeout: float = 600.0
    """Liveness timeout in seconds (`launch.timeout`): how long a silent process is waited for."""
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    """Seconds a living process may go without progress outside a wait (`launch.stall_timeout`)."""
    store: Any = None
    _halt: threading.Event = field(default_factory=threading.Event, repr=False)
    _heartbeat: threading.Thread | None = field(default=None, repr=False)
    _leaving: bool = field(default=False, repr=False)

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
        self.leave_at_exit()

    def leave_at_exit(self) -> None:
        """Say "rank i left" once this process exits after an abort (after its error line is printed): a
        stalled process that hosts the store stays until then, so every rank can read its abort."""
        if self.store is None or self._leaving:
            return
        self._leaving = True

        def leave() -> None:
            with contextlib.suppress(Exception):  # the store's host has left already, or is frozen
                self.store.set_timeout(timedelta(seconds=LEAVE_SECONDS))
                self.store.set(left_key(self.index), "1")

        atexit.register(leave)
        atexit.unregister(self.stop_heartbeat)  # handlers run last-in first-out: leave after it
        atexit.register(self.stop_heartbeat)

    def wait_for(self, key: str, *, stage: str, ranks: Sequence[int]) -> str:
        """The value of `key` once some process set it, while every rank in `ranks` shows signs of life.

        While it waits this process is not stalled (its own progress does not move; theirs counts).
        """
        with waiting():
            try:
                return self._wait(key, stage=stage, ranks=ranks)
            except LaunchError:
                self.leave_at_exit()
                raise

    def _wait(self, key: str, *, stage: str, ranks: Sequence[int]) -> str:
        """`wait_for` itself.

        Raises `LaunchError` when any process aborted the launch, when a rank of `ranks` has not beaten
        for `timeout` seconds, or when the store itself (hosted by rank 0 or the launcher) has not
        answered for `timeout` seconds.
        """
        if self.store is None:
            return ""
        seen: dict[int, tuple[int, float]] = {}
        unanswered_since: float | None = None
        announce_at = time.monotonic() + 10
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
            if now > announce_at:  # then every few minutes, with what the awaited ranks are doing
                where = describe_progress(self.store, ranks)
                logger.info(
                    "stage %s: rank %d waits for rank(s) %s%s",
                    stage, self.index, list(ranks), f" ({where})" if where else "",
                )  # fmt: skip
                announce_at = now + ANNOUNCE_SECONDS
            time.sleep(POLL_SECONDS)

    def others(self) -> list[int]:
        return [rank for rank in range(self.count) if rank != self.index]

    # -- life ----------------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Beat, publish progress and watch for a stall from a daemon thread (`liveness.Watchdog`); call it
        from the thread that does the process's work, whose stack a stall names.

        The thread is stopped and joined at interpreter exit: a daemon thread still inside a store call
        when the interpreter finalizes is unwound through torch's C++ code, which aborts the process
        ("terminate called without an active exception") and turns a clean exit code into SIGABRT.
        """
        if self.store is None or self._heartbeat is not None:
            return
        watchdog = Watchdog(
            store=self.store.clone(),  # its own connection: a slow store never delays the main thread's waits
            rank=self.index,
            others=self.others(),
            beat_key=beat_key(self.index),
            abort_key=ABORT,
            every=self.beat_seconds,
            stall_timeout=self.stall_timeout,
            timeout=self.timeout,
            halt=self._halt,
        )
        self._heartbeat = threading.Thread(target=watchdog.run, name="persyn-heartbeat", daemon=True)
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


def connect(timeout: float, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> Launch:
    """This process's launch from the launcher's environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...).

    One process (no launcher) gets `Launch()` and touches no network. Under a launcher the store is the
    rendezvous store of torch's `env://` method, so no port is opened beyond the launcher's own. Call it
    from the thread that does the run's work: a stall names that thread's stack.
    """
    index, count = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if count == 1:
        return Launch(timeout=timeout, stall_timeout=stall_timeout)
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
    base = dist.PrefixStore("persyn/", store)
    attempt = agree_on_attempt(base, index, count, timeout)  # a restarted launch's keys are its own
    prefixed = dist.PrefixStore(f"{attempt.id}/", base)
    launch = Launch(
        index, count, id=attempt.launch, attempt=attempt.number, timeout=timeout,
        stall_timeout=stall_timeout, store=prefixed,
    )  # fmt: skip
    launch.start_heartbeat()
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
