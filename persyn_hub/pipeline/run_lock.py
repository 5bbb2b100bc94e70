"""One writer per output directory, across processes, hosts and a launcher's restarts.

The lock is a file lock on `output.dir/.persyn.lock` (taken by the main process of a launch), and
`.persyn.lock.owner` names its holder: host, pid, launch and attempt, and a heartbeat (wall-clock seconds
and a count) that a thread refreshes while the run lives. The file lock alone cannot tell a run on another
node from a dead one: on a shared filesystem the lock of a crashed node may stay held, and where locks are
node-local it is never seen at all. So the owner file decides:

| the holder the owner file names | a new run |
| --- | --- |
| a live process on this host, holding the lock | refuses at once (`--break-lock` too) |
| a process on this host whose lock is free (it was killed) | takes over, with a warning |
| an earlier attempt of this same launch (the launcher stopped it, then restarted the ranks) | takes over at once |
| another host, no beat for `launch.timeout` seconds | takes over, with a warning naming it |
| another host, beating | watches it: a new beat refuses; no beat for `launch.timeout` takes over |
| nobody readable (no owner file, or an older persyn's), the lock held | refuses |

`persyn run --break-lock` takes the lock over from any holder but a live process on this host, with a
warning. A beat's age is read from the holder's wall clock, so hosts' clocks are assumed to agree to well
within `launch.timeout` (NTP); a holder whose clock runs ahead is still taken over once it has not beaten
for `launch.timeout` seconds of this host's own clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from persyn_hub.errors import PersynError
from persyn_hub.pipeline.launch import Launch

logger = logging.getLogger("persyn_hub")

LOCK = ".persyn.lock"
OWNER = ".persyn.lock.owner"
HOST = socket.gethostname()


class RunLockedError(PersynError, RuntimeError):
    """Another `persyn run` is writing the same output directory."""


@dataclass(frozen=True)
class Holder:
    """What `.persyn.lock.owner` says; `record` is empty when the file is not this version's JSON."""

    text: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.record.get("host") == HOST

    @property
    def alive_here(self) -> bool:
        """A live process of this host (a pid reused since is counted alive: refusing is the safe side)."""
        if not self.local:
            return False
        try:
            os.kill(int(self.record.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OverflowError):
            return True
        return True

    def age(self) -> float:
        """Seconds since its last beat by this host's clock (0 when its clock runs ahead)."""
        return max(0.0, time.time() - float(self.record.get("heartbeat", 0.0)))

    def describe(self) -> str:
        if not self.record:
            return self.text or "another process"
        record = self.record
        launch = (
            f", launch {record['launch']} attempt {record.get('attempt', 1)}" if record.get("launch") else ""
        )
        return (
            f"persyn run (pid {record.get('pid')} on host {record.get('host')}{launch}, "
            f"last beat {self.age():.0f} s ago)"
        )


def read_holder(path: Path) -> Holder | None:
    """The owner file's holder, None when there is no owner file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as error:  # unreadable: named as it is
        return Holder(f"an unreadable owner file ({type(error).__name__})")
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return Holder(text, record if isinstance(record, dict) and "host" in record else {})


@contextlib.contextmanager
def run_lock(run_dir: Path, launch: Launch | None = None, *, break_lock: bool = False) -> Iterator[None]:
    """One writer per output directory: a second run (or launch) on it refuses instead of corrupting it.

    Under a launch the lock belongs to the launch's attempt: the main process takes it and tells the
    others through the launch's store whether it got it.
    """
    launch = launch or Launch()
    if not launch.main:
        refusal = launch.wait_for("run-lock", stage="start", ranks=[0])
        if refusal:
            raise RunLockedError(refusal)
        yield
        return
    try:
        lock, beat = _take(run_dir, launch, break_lock)
    except RunLockedError as error:
        launch.signal("run-lock", str(error))
        raise
    try:
        launch.signal("run-lock", "")
        yield
    finally:
        beat.stop()
        (run_dir / OWNER).unlink(missing_ok=True)
        lock.release()


def _take(run_dir: Path, launch: Launch, break_lock: bool) -> tuple[FileLock, OwnerBeat]:
    """The lock and this run's beating owner file, or `RunLockedError` naming the holder."""
    lock = FileLock(str(run_dir / LOCK))
    free = _acquire(lock)
    holder = read_holder(run_dir / OWNER)
    if holder is not None or not free:
        try:
            reason = _takeover_reason(run_dir, holder, launch, free, break_lock)
        except RunLockedError:
            if free:  # a holder beating on another host, where file locks do not reach
                lock.release()
            raise
        logger.warning(
            "output.dir %r: taking over the run lock of %s: %s",
            str(run_dir), holder.describe() if holder else "another process", reason,
        )  # fmt: skip
        if not free and not _acquire(lock):
            lock = _break(run_dir)
    beat = OwnerBeat(run_dir / OWNER, _record(launch), every=max(0.2, min(10.0, launch.timeout / 8)))
    beat.start()
    if not free:  # the lock was broken: another run breaking it at the same moment may have won
        time.sleep(min(1.0, launch.timeout / 8))
        current = read_holder(run_dir / OWNER)
        if current is None or current.record.get("token") != beat.record["token"]:
            beat.stop()
            lock.release()
            raise RunLockedError(_refusal(run_dir, current, "took the lock over at the same moment"))
    return lock, beat


def _takeover_reason(
    run_dir: Path, holder: Holder | None, launch: Launch, free: bool, break_lock: bool
) -> str:
    """Why the lock may be taken from `holder`, or `RunLockedError` when it may be alive."""
    if holder is None or not holder.record:
        if free:
            return "its run ended without removing its lock"
        if break_lock:
            return "--break-lock"
        raise RunLockedError(_refusal(run_dir, holder, hint=True))
    if holder.alive_here and not free:
        raise RunLockedError(_refusal(run_dir, holder, "is alive on this host"))
    if launch.id and holder.record.get("launch") == launch.id:
        return (
            f"attempt {holder.record.get('attempt')} of this same launch, which the launcher stopped "
            f"before starting attempt {launch.attempt}"
        )
    if holder.local and free:
        return "its process is gone (the lock was free)"
    if break_lock:
        return "--break-lock"
    if holder.age() > launch.timeout:
        return f"it has not beaten for {holder.age():.0f} s (launch.timeout {launch.timeout:.0f} s)"
    if _beats_within(run_dir / OWNER, holder, launch.timeout - holder.age()):
        raise RunLockedError(_refusal(run_dir, read_holder(run_dir / OWNER) or holder, hint=True))
    return f"it has not beaten for launch.timeout ({launch.timeout:.0f} s)"


def _beats_within(path: Path, holder: Holder, seconds: float) -> bool:
    """Whether the owner file changes (a beat, or a release) within `seconds` of this host's clock."""
    logger.info(
        "output.dir %r: the run lock is held by %s; waiting up to %.0f s (launch.timeout) for a sign of life "
        "before taking it over", str(path.parent), holder.describe(), max(0.0, seconds),
    )  # fmt: skip
    deadline = time.monotonic() + max(0.0, seconds)
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.05, seconds / 20)))
        current = read_holder(path)
        if current is None or current.text != holder.text:
            return True
    return False


def _acquire(lock: FileLock) -> bool:
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True


def _break(run_dir: Path) -> FileLock:
    """A fresh lock file in place of one a dead holder still holds (its old inode stays locked)."""
    (run_dir / LOCK).unlink(missing_ok=True)
    lock = FileLock(str(run_dir / LOCK))
    if not _acquire(lock):
        raise RunLockedError(
            _refusal(run_dir, read_holder(run_dir / OWNER), "took the lock over at the same moment")
        )
    return lock


def _refusal(run_dir: Path, holder: Holder | None, state: str = "", *, hint: bool = False) -> str:
    who = holder.describe() if holder is not None else "another process"
    return (
        f"output.dir {str(run_dir)!r} is in use by {who}{f', which {state}' if state else ''}. Wait for that run to "
        "finish, or set --output.dir to another directory"
        + (
            "; if that run is gone (a crashed node), persyn run --break-lock takes its lock over."
            if hint
            else "."
        )
    )


def _record(launch: Launch) -> dict[str, Any]:
    now = time.time()
    return {
        "host": HOST,
        "pid": os.getpid(),
        "launch": launch.id,
        "attempt": launch.attempt,
        "processes": launch.count,
        "started": now,
        "heartbeat": now,
        "beats": 0,
        "token": uuid.uuid4().hex,
    }


@dataclass
class OwnerBeat:
    """The owner file, rewritten whole every `every` seconds with a new heartbeat while the run lives."""

    path: Path
    record: dict[str, Any]
    every: float
    _halt: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def write(self) -> None:
        self.record["heartbeat"] = time.time()
        self.record["beats"] += 1
        staging = self.path.with_name(f"{self.path.name}.{self.record['token'][:8]}.partial")
        staging.write_text(json.dumps(self.record), encoding="utf-8")
        os.replace(staging, self.path)

    def start(self) -> None:
        self.write()

        def beat() -> None:
            while not self._halt.wait(self.every):
                with contextlib.suppress(OSError):  # a full or gone disk is the run's own error to report
                    self.write()

        self._thread = threading.Thread(target=beat, name="persyn-lock-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


__all__ = ["HOST", "LOCK", "OWNER", "Holder", "OwnerBeat", "RunLockedError", "read_holder", "run_lock"]
