"""Generation row checkpoints on the Hub, both ways: a rows thread pushes the new whole lines of the run's
row checkpoints every `checkpoint_every` rows or `checkpoint_minutes` minutes, and a generation stage that
is not on the Hub gets back the rows its teacher pushed, so only the missing rows are requested.
`RowCheckpoints` holds what it pushed and what it knows is on the Hub; `StageMirror` creates it and passes
the lock its own commits take, so a rows commit and a stage commit never run at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from persyn_hub.publish.mirror.layout import ROWS_DIR, describe, where

logger = logging.getLogger("persyn_hub")

ROWS_POLL_SECONDS = 2.0
"""How often the rows thread looks for new checkpointed rows (pushes follow `checkpoint_every`/`_minutes`)."""


def _complete_lines(path: Path) -> bytes:
    """A part file up to its last whole line (a line being written is pushed next time)."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


class RowCheckpoints:
    """A run's row checkpoints on the Hub: `start`/`stop` (the rows thread, calling `push_rows`) and
    `restore_rows` (a generation stage that is not on the Hub). `rows_restored` counts the rows restored."""

    def __init__(
        self,
        api: Any,
        repo_id: str,
        run_dir: Path,
        *,
        recipe_name: str = "persyn",
        revision: str | None = None,
        read_repo: str | None = None,
        read_revision: str | None = None,
        private: bool = False,
        checkpoint_every: int = 256,
        checkpoint_minutes: float = 10.0,
        lock: threading.RLock | None = None,
    ) -> None:
        self.api = api
        self.repo_id = repo_id
        self.run_dir = Path(run_dir)
        self.recipe_name = recipe_name
        self.revision = revision
        self.read_repo = read_repo
        self.read_revision = read_revision
        self.private = private
        self.checkpoint_every = checkpoint_every
        self.checkpoint_minutes = checkpoint_minutes
        self.rows_restored = 0
        self._lock = lock if lock is not None else threading.RLock()
        self._pushed_lines: dict[str, int] = {}
        """Part file -> its whole lines on the Hub (pushed by this run or restored from it)."""
        self._last_push = time.monotonic()
        self._hub_files: list[str] | None = None
        """The read repo's files, listed once (None: not listed yet, or stale after a push)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the rows thread: `push_rows` every `ROWS_POLL_SECONDS` until `stop`."""
        self._thread = threading.Thread(target=self._push_loop, name="persyn-hub-rows", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the rows thread (waits up to a minute for a push under way)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _push_loop(self) -> None:
        while not self._stop.wait(ROWS_POLL_SECONDS):
            self.push_rows()

    def restore_rows(self, teacher: str) -> None:
        """Download the teacher's pushed row checkpoints that are not on disk (part files never change name)."""
        pattern = re.compile(rf"^{ROWS_DIR}/(rows--{re.escape(teacher)}-[0-9a-f]{{16}})/(part-[^/]+\.jsonl)$")
        try:
            with self._lock:
                files = self._list_files()
                wanted = [
                    (path, match)
                    for path in files
                    if (match := pattern.match(path))
                    and not (self.run_dir / "stages" / match.group(1) / match.group(2)).is_file()
                ]
                if not wanted:
                    return
                from huggingface_hub import hf_hub_download

                rows = 0
                for path, match in wanted:
                    local = hf_hub_download(
                        self.read_repo or self.repo_id,
                        path,
                        repo_type="dataset",
                        revision=self.read_revision,
                        endpoint=self.api.endpoint,
                        token=self.api.token,
                        cache_dir=self.run_dir / ".hub-cache",
                    )
                    target = self.run_dir / "stages" / match.group(1) / match.group(2)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    data = Path(local).read_bytes()
                    target.with_suffix(".partial").write_bytes(data)
                    os.replace(target.with_suffix(".partial"), target)
                    self._pushed_lines[str(target)] = data.count(b"\n")
                    rows += data.count(b"\n")
                self.rows_restored += rows
                shutil.rmtree(self.run_dir / ".hub-cache", ignore_errors=True)
            logger.info(
                "teacher %s: %d checkpointed row(s) restored from the Hub (%d part file(s)); only the others "
                "are requested",
                teacher, rows, len(wanted),
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - without them the rows are generated again
            logger.warning(
                "teacher %s: could not restore row checkpoints from the Hub (%s)", teacher, describe(error)
            )

    def push_rows(self, force: bool = False) -> list[str]:
        """Push the row checkpoints' new whole lines when `checkpoint_every` rows or `checkpoint_minutes`
        have passed (or `force`); returns the prompt ids pushed (none when nothing was due or it failed)."""
        with self._lock:
            changed: dict[str, bytes] = {}
            new_ids: list[str] = []
            for part in sorted((self.run_dir / "stages").glob("rows--*/part-*.jsonl")):
                try:
                    data = _complete_lines(part)
                except OSError:
                    continue
                lines = data.count(b"\n")
                pushed = self._pushed_lines.get(str(part), 0)
                if lines > pushed:
                    changed[str(part)] = data
                    for line in data.splitlines()[pushed:]:
                        try:
                            new_ids.append(json.loads(line)["prompt_id"])
                        except (ValueError, KeyError, TypeError):
                            continue
            if not changed:
                return []
            due = (
                force
                or len(new_ids) >= self.checkpoint_every
                or time.monotonic() - self._last_push >= self.checkpoint_minutes * 60
            )
            if not due:
                return []
            files = {
                f"{ROWS_DIR}/{Path(path).parent.name}/{Path(path).name}": data
                for path, data in changed.items()
            }
            from persyn_hub.publish.hub import commit_artifact

            try:
                commit_artifact(
                    self.api,
                    self.repo_id,
                    files,
                    repo_type="dataset",
                    message=f"PerSyn {self.recipe_name}: {len(new_ids)} generated row(s) checkpointed",
                    private=self.private,
                    revision=self.revision,
                )
            except Exception as error:  # noqa: BLE001 - retried at the next poll
                logger.warning(
                    "row checkpoints: the Hub copy (%s) is behind by %d row(s): push failed (%s); retrying",
                    self._where(), len(new_ids), describe(error),
                )  # fmt: skip
                return []
            for path, data in changed.items():
                self._pushed_lines[path] = data.count(b"\n")
            self._last_push = time.monotonic()
            self._hub_files = None
            logger.info("row checkpoints: %d new row(s) pushed to %s", len(new_ids), self._where())
            return new_ids

    def _list_files(self) -> list[str]:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        if self._hub_files is None:
            try:
                self._hub_files = self.api.list_repo_files(
                    self.read_repo or self.repo_id, repo_type="dataset", revision=self.read_revision
                )
            except (RepositoryNotFoundError, RevisionNotFoundError):
                self._hub_files = []
        return self._hub_files

    def _where(self) -> str:
        return where(self.repo_id, self.revision)


__all__ = ["ROWS_POLL_SECONDS", "RowCheckpoints"]
