"""Every process of a launch must see the same `output.dir`: checked once, before any stage.

Data moves between the processes through `output.dir` alone, so a node whose `output.dir` is a folder of
its own (a node-local disk, or a path that exists on every node but is not shared) would compute chunks
no one joins, then fail on stages it cannot find. Rank 0 writes a token file there and publishes the
token through the launch's store; every other rank reads the file back and says so before any stage.
A rank that cannot (after a grace for a network filesystem's attribute cache) names its host in one line
and stops the launch: every process exits with status 2.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path

from persyn_hub.pipeline.launch import Launch, LaunchError

TOKEN = ".persyn.launch"
GRACE_SECONDS = 60.0
"""At most this long (and at most `launch.timeout`) a rank looks for rank 0's token: NFS clients may
cache "no such file" for up to a minute (acdirmax)."""


class SharedDirError(LaunchError):
    """A process of the launch does not see rank 0's `output.dir`."""


def check_shared_dir(run_dir: Path, launch: Launch) -> None:
    """Rank 0 writes the token and waits until every rank has read it; the others read it back."""
    if launch.count == 1:
        return
    if launch.main:
        mine = json.dumps(
            {"token": uuid.uuid4().hex, "host": socket.gethostname(), "attempt": launch.attempt}
        )
        staging = run_dir / f"{TOKEN}.partial"
        staging.write_text(mine, encoding="utf-8")
        os.replace(staging, run_dir / TOKEN)
        launch.signal("output-dir", mine)
        for rank in launch.others():
            launch.wait_for(f"output-dir/{rank}", stage="start", ranks=[rank])
        return
    expected = launch.wait_for("output-dir", stage="start", ranks=[0])
    grace = min(GRACE_SECONDS, launch.timeout)
    seen = _read_back(run_dir, expected, grace)
    if seen != expected:
        host0 = json.loads(expected)["host"]
        message = (
            f"launch: rank {launch.index} on host {socket.gethostname()} does not see rank 0's output.dir "
            f"{str(run_dir)!r} (rank 0 on host {host0} wrote {TOKEN} there; here, after {grace:.0f} s, "
            f"{_what(run_dir, seen)}): output.dir must be on a filesystem every node sees (a shared "
            "filesystem, not a node-local disk); set --output.dir to such a path."
        )
        raise SharedDirError(message)  # run_pipeline writes it to the abort key: every rank stops with it
    launch.signal(f"output-dir/{launch.index}")


def _read_back(run_dir: Path, expected: str, grace: float) -> str | None:
    """The token file's text once it equals `expected`, else what it last held (None: no file)."""
    deadline = time.monotonic() + grace
    while True:
        try:
            os.listdir(run_dir)  # a fresh directory listing: NFS revalidates its cached entries
            seen: str | None = (run_dir / TOKEN).read_text(encoding="utf-8")
        except OSError:
            seen = None
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def _what(run_dir: Path, seen: str | None) -> str:
    if not run_dir.is_dir():
        return "there is no such folder"
    if seen is None:
        return f"the folder has no {TOKEN}"
    return f"its {TOKEN} is another launch's"


__all__ = ["TOKEN", "SharedDirError", "check_shared_dir"]
