"""Commits to the stages repo's push branch, made on its head (`parent_commit`), so runs sharing a repo keep
every stage: when another run committed meanwhile, the head and its index are read again, the commit's
index update is merged into that index, and the commit is made again.

`HeadCommits` holds the branch's head as last read or committed (its commit and index) and the lock every
commit of a `StageMirror` and of its row checkpoints holds, so two commits never run at once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

from persyn_hub.publish.mirror.index import IndexUpdate, copy_index, index_at
from persyn_hub.publish.mirror.layout import describe, where

logger = logging.getLogger("persyn_hub")

CONFLICT_STATUSES = (409, 412)
"""The branch moved since `parent_commit` (another run committed): read the head again, commit again."""
CONFLICT_ATTEMPTS = 20
HEAD_TIMEOUT = 20.0
"""Seconds a read of the push branch's head waits for an answer."""


class HeadCommits:
    """Commits on the head of `repo_id`'s branch `revision` (None: main); the repo is created (`private`)
    and the branch too, when the first commit finds neither. `conflicts` counts the commits that met a
    head another run had moved, and were made again on it."""

    def __init__(self, api: Any, repo_id: str, revision: str | None = None, private: bool = True) -> None:
        self.api = api
        self.repo_id = repo_id
        self.revision = revision
        self.private = private
        self.lock = threading.RLock()
        """Held by every commit (of the mirror and of its row checkpoints)."""
        self.conflicts = 0
        self._head: tuple[str, dict[str, Any]] | None = None
        """The push branch's head commit and its index (None: to be read before the next commit)."""
        self._warned_public = False

    # -- the head's index ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the branch's head now (a failure is warned about: the next commit reads it again)."""
        self._head = self.read_head(strict=False)

    def index_copy(self) -> dict[str, Any] | None:
        """A copy of the head's index (None: the head is not known)."""
        return copy_index(self._head[1]) if self._head else None

    def has(self, name: str, key: str) -> bool:
        """Whether the head's index holds stage `name` under `key`."""
        return self._head is not None and key in self._head[1].get("stages", {}).get(name, {})

    def entry(self, name: str, key: str) -> dict[str, Any]:
        """The head index's entry of stage `name` under `key` ({} when it has none)."""
        return self._head[1].get("stages", {}).get(name, {}).get(key, {}) if self._head else {}

    def record(self, name: str, key: str, commit: str) -> None:
        """Note in the head's index that stage `name`/`key` is at `commit` (recorded with the next commit)."""
        if self.has(name, key):
            assert self._head is not None
            self._head[1]["stages"][name][key]["commit"] = commit

    # -- commits ------------------------------------------------------------------------------------

    def commit(self, files: dict[str, bytes | Path], message: str, update: IndexUpdate | None = None) -> str:
        """One commit of `files` (plus what `update(index)` adds for the head's index) on the branch's head
        (`parent_commit`); when another run moved the head meanwhile, read it again and commit again."""
        from huggingface_hub import CommitOperationAdd

        # lazy: publish.client loads huggingface_hub, which this module otherwise does not
        from persyn_hub.publish.client import status_of

        with self.lock:
            for _ in range(CONFLICT_ATTEMPTS):
                if self._head is None:
                    self.ensure_repo()
                    self._head = self.read_head(strict=True)
                assert self._head is not None
                sha, index = self._head
                extra: dict[str, bytes | Path] = {}
                if update is not None:
                    index, extra = update(index)
                operations = [
                    CommitOperationAdd(
                        path_in_repo=path,
                        path_or_fileobj=content if isinstance(content, bytes) else str(content),
                    )
                    for path, content in sorted({**files, **extra}.items())
                ]
                try:
                    info = self.api.create_commit(
                        self.repo_id,
                        operations,
                        commit_message=message,
                        repo_type="dataset",
                        revision=self.revision,
                        parent_commit=sha,
                    )
                except Exception as error:
                    if status_of(error) not in CONFLICT_STATUSES:
                        raise
                    self.conflicts += 1
                    self._head = None  # another run committed: read its head and index again
                    time.sleep(random.uniform(0.05, 0.5))
                    continue
                self._head = (info.oid, index)
                return info.oid
        raise RuntimeError(f"{CONFLICT_ATTEMPTS} commits in a row met a head another run had moved")

    def ensure_repo(self) -> None:
        """Create the repo (and the push branch) when missing."""
        self.api.create_repo(self.repo_id, repo_type="dataset", private=self.private, exist_ok=True)
        if self.revision and self.revision != "main":
            self.api.create_branch(self.repo_id, branch=self.revision, repo_type="dataset", exist_ok=True)

    def read_head(self, strict: bool) -> tuple[str, dict[str, Any]] | None:
        """The push branch's head commit and its index; None when the repo or branch does not exist yet
        (or, unless `strict`, cannot be read: the run goes on, and the next commit reads it again)."""
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = self.api.dataset_info(self.repo_id, revision=self.revision, timeout=HEAD_TIMEOUT)
            if not info.private and self.private and not self._warned_public:
                self._warned_public = True
                logger.warning(
                    "Hub stages: %s is public: every stage pushed there (prompts, teacher answers, scores) "
                    "can be read by anyone. Make it private in its settings on the Hub, or set "
                    "output.hub.stages_repo to a private repo (output.hub.stages_private: false silences this).",
                    self.repo_id,
                )
            return str(info.sha), index_at(self.api, self.repo_id, str(info.sha))
        except (RepositoryNotFoundError, RevisionNotFoundError):
            if strict:
                raise
            return None
        except Exception as error:  # noqa: BLE001 - the Hub unreachable: run here, publish when it is back
            if strict:
                raise
            logger.warning(
                "Hub stages: could not read %s (%s); every stage is computed here, and pushed when it answers",
                where(self.repo_id, self.revision), describe(error),
            )  # fmt: skip
            return None


__all__ = ["CONFLICT_ATTEMPTS", "CONFLICT_STATUSES", "HEAD_TIMEOUT", "HeadCommits"]
