"""Runs that outlive their machine: every finished stage on the Hub as it finishes, and a run that continues
from there.

`StageMirror` is the `mirror` of a `StageRunner` (main process only). Its repo is laid out as
`publish.mirror.layout` describes; its card is `publish.mirror.card`. It holds `commits`
(`mirror.commits.HeadCommits`: commits on the branch's head, merged with another run's), `pushes`
(`mirror.push_queue.PushQueue`: the push thread) and `rows`; a stage folder becomes its commit's files
and back in `mirror.stage_data`, is downloaded by `mirror.restore`, and the index is read and merged in
`mirror.index`.

- `start()`: an explicit resume (`--resume-from-hub REPO[@rev]`, `output.hub.resume_from`) whose repo or
  revision cannot be read stops the run before any stage with one line (`mirror.access`); a resume that
  finds nothing to reuse says why in one warning. A public stages repo is warned about once (the repo is
  created private unless `output.hub.stages_private: false`).
- `publish(stage, key, folder, inputs)`: queues the finished stage for the push thread and returns, so the
  run goes on computing (a bounded queue: at most `QUEUE_SIZE` stages wait). One commit per stage (data
  set as Parquet, side files, manifest, index, card), made on the branch's head (`parent_commit`): when
  another run committed meanwhile, the index is read again and merged, so runs sharing a repo keep every
  stage. A failed push is logged ("the Hub copy is behind") and retried with the next stage and at the end.
- `restore(stage, key, folder, inputs)`: before the main process decides on a stage that is not on disk,
  download it when the repo has this key (the Parquet data rebuilt into the stage folder, the `_SUCCESS`
  marker last, so a cut download is no stage). When the repo has the stage under another key, the log
  names the identity fields or inputs that differ. A generation stage that is not on the Hub gets the row
  checkpoints its teacher pushed: only the missing rows are requested.
- `finish()`: waits for the queued pushes, retries what is behind once more, and names what is still behind.
- A thread pushes new generation rows on a timer (`rows`, a `publish.mirror.rows.RowCheckpoints`).

The token is whatever `huggingface_hub` finds (HF_TOKEN / `hf auth login`) and goes to the Hub endpoint
only; it is never logged or written, and manifests and cards are scrubbed of local paths and credentials
(`publish.scrub`).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persyn_hub.publish.mirror.access import check_resume_source, resume_error
from persyn_hub.publish.mirror.commits import HeadCommits
from persyn_hub.publish.mirror.identity import (
    identity_differences,
    key_differences,
    latest_key,
    public_identity,
)
from persyn_hub.publish.mirror.index import index_at, index_update, read_index
from persyn_hub.publish.mirror.layout import INDEX_FILE, describe, parse_repo_revision, stages_repo, where
from persyn_hub.publish.mirror.push_queue import PushQueue
from persyn_hub.publish.mirror.restore import download_stage
from persyn_hub.publish.mirror.rows import RowCheckpoints
from persyn_hub.publish.mirror.stage_data import stage_upload

logger = logging.getLogger("persyn_hub")


@dataclass
class StageMirror:
    """The Hub copy of a run's stages (see the module docstring). Build it with `StageMirror.for_recipe`."""

    api: Any
    repo_id: str
    run_dir: Path
    recipe_name: str = "persyn"
    revision: str | None = None
    """Branch the stages are pushed to (None: main)."""
    read_revision: str | None = None
    """Revision restores read from (`--resume-from-hub REPO@rev`); default: the push branch's head."""
    read_repo: str | None = None
    private: bool = True
    """Create the repo private (`output.hub.stages_private`); an existing public repo is warned about."""
    license: str = "other"
    checkpoint_every: int | None = None
    checkpoint_minutes: float = 10.0
    resume: bool = False
    """An explicit resume (`--resume-from-hub`): a repo or revision that cannot be read stops the run."""
    index: dict[str, Any] = field(default_factory=dict)
    """The read repo's index: the stages a restore may download."""
    published: dict[str, dict[str, str]] = field(default_factory=dict)
    """This run's stages on the Hub: name -> {key, commit}."""
    restored: list[str] = field(default_factory=list)
    behind: dict[str, Any] = field(default_factory=dict)
    """Stages whose push failed, by name: retried with the next stage and at the end of the run."""
    commits: HeadCommits = field(init=False)
    """The commits on the push branch's head (its lock is held by every commit of the mirror and its `rows`)."""
    rows: RowCheckpoints = field(init=False)
    """The generation row checkpoints (pushed by its thread, restored for a generation stage)."""
    pushes: PushQueue = field(init=False)
    """The push thread and its bounded queue of finished stages."""
    _warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.commits = HeadCommits(self.api, self.repo_id, revision=self.revision, private=self.private)
        self.rows = RowCheckpoints(
            self.api,
            self.repo_id,
            self.run_dir,
            recipe_name=self.recipe_name,
            revision=self.revision,
            read_repo=self.read_repo,
            read_revision=self.read_revision,
            private=self.private,
            checkpoint_every=self.checkpoint_every,
            checkpoint_minutes=self.checkpoint_minutes,
            commit=self.commits.commit,
        )
        self.pushes = PushQueue(self._push)

    @property
    def conflicts(self) -> int:
        """Commits that met a head another run had moved, and were made again on it."""
        return self.commits.conflicts

    @classmethod
    def for_recipe(cls, recipe: Any, run_dir: Path, api: Any = None) -> StageMirror | None:
        """The mirror `recipe.output.hub` asks for, or None when stage publishing is off."""
        hub = recipe.output.hub
        repo_id = stages_repo(hub)
        if repo_id is None:
            return None
        # lazy: publish.client loads huggingface_hub, which this module otherwise does not
        from persyn_hub.publish.client import HubClient

        read_repo, read_revision = (
            parse_repo_revision(hub.resume_from) if hub.resume_from else (repo_id, None)
        )
        return cls(
            api=api or HubClient(),
            repo_id=repo_id,
            run_dir=Path(run_dir),
            recipe_name=recipe.name,
            revision=hub.revision,
            read_repo=read_repo,
            read_revision=read_revision or hub.revision,
            private=getattr(hub, "stages_private", True),
            license=hub.license,
            checkpoint_every=hub.checkpoint_every,
            checkpoint_minutes=hub.checkpoint_minutes,
            resume=bool(hub.resume_from),
        )

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> StageMirror:
        """Read the repos (an explicit resume's failure stops the run here, `ResumeSourceError`), then start
        the push thread and the rows thread."""
        read = self.read_repo or self.repo_id
        same = read == self.repo_id and self.read_revision == self.revision
        if self.resume:
            self._check_resume(read, same)
        self.commits.refresh()
        if not self.resume:
            if same:
                self.index = self.commits.index_copy() or {}
            else:
                self.index = read_index(self.api, read, self.read_revision)
        stages = sum(len(keys) for keys in self.index.get("stages", {}).values())
        logger.info("Hub stages: %s (%d published stage output(s) to reuse)", self._where(read), stages)
        self.rows.start()
        self.pushes.start()
        return self

    def _check_resume(self, read: str, same: bool) -> None:
        """An explicit resume: read the repo's index at the revision asked for, or stop the run."""

        sha = check_resume_source(self.api, read, self.read_revision)
        try:
            self.index = index_at(self.api, read, sha)
        except Exception as error:  # noqa: BLE001 - named in the one line
            raise resume_error(error, self.api, read, self.read_revision) from None
        if not self.index.get("stages"):
            self._warned.add("nothing")
            logger.warning(
                "Hub resume: %s holds no published stage (no %s): nothing to reuse; every stage is "
                "computed here. Check the repo id and revision (the stages repo of the run to resume).",
                where(read, self.read_revision), INDEX_FILE,
            )  # fmt: skip
        if not same:  # restores read the commit checked here, even if the branch moves meanwhile
            self.read_revision = self.rows.read_revision = sha

    def wait(self) -> None:
        """Wait until every queued stage push is done (made, or left `behind`)."""
        self.pushes.wait()

    def finish(self) -> dict[str, Any]:
        """Stop the rows thread, wait for the queued pushes, retry what is behind; returns the summary's
        `hub.stages` record."""
        self.rows.stop()
        self.pushes.stop()
        with self.commits.lock:
            self._retry_behind()
        if self.behind:
            logger.warning(
                "Hub stages: %s is behind this run by %s; the local run is complete. Run the same command "
                "again to publish them.",
                self._where(),
                sorted(self.behind),
            )
        return {
            "repo_id": self.repo_id,
            "revision": self.revision or "main",
            "stages": dict(self.published),
            "restored": list(self.restored),
            "rows_restored": self.rows.rows_restored,
            "rows_pushed": self.rows.rows_pushed,
            "behind": sorted(self.behind),
            "conflicts": self.conflicts,
        }

    # -- restore ------------------------------------------------------------------------------------

    def restore(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> bool:
        """Download `stage` for `key` into `folder` when the repo has it; True when it is now on disk."""
        name = stage.name
        published = self.index.get("stages", {}).get(name, {})
        if key in published:
            try:
                download_stage(
                    self.api,
                    self.read_repo or self.repo_id,
                    self.read_revision,
                    name,
                    key,
                    folder,
                    self.run_dir,
                )
            except Exception as error:  # noqa: BLE001 - the Hub copy is a convenience: compute instead
                logger.warning(
                    "stage %s: could not download it from %s (%s); computing it here",
                    name, self._where(self.read_repo), describe(error),
                )  # fmt: skip
                return False
            self.restored.append(name)
            self.published.setdefault(name, {"key": key, "commit": published[key].get("commit", "")})
            logger.info(
                "stage %s: restored from the Hub (%s, key %s)", name, self._where(self.read_repo), key
            )
            return True
        differences = key_differences(stage, inputs, published, self.index)
        if self.resume and not self.restored and "nothing" not in self._warned:
            self._warned.add("nothing")
            logger.warning(
                "Hub resume: nothing reused from %s so far: stage %s is not there under key %s (%s); it is "
                "computed here, and so is every stage that depends on it",
                self._where(self.read_repo), name, key, differences,
            )  # fmt: skip
        elif published:
            logger.info(
                "stage %s: the Hub has it under key %s, not %s, so it is computed again: %s",
                name, latest_key(published), key, differences,
            )  # fmt: skip
        if getattr(stage, "rerun_failed", False):  # a generation stage: its teacher's pushed rows
            self.rows.restore_rows(name.rsplit("/", 1)[-1])
        return False

    # -- publish ------------------------------------------------------------------------------------

    def publish(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> None:
        """Queue the finished stage for the push thread (waits only while `QUEUE_SIZE` stages wait);
        without a started push thread, push it now."""
        self.pushes.submit((stage, key, folder, inputs))

    def _push(self, item: tuple[Any, str, Path, dict[str, dict[str, str]]]) -> None:
        with self.commits.lock:
            self._publish_now(*item)

    def _publish_now(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> None:
        self._retry_behind()
        if self.commits.has(stage.name, key):
            self.published.setdefault(
                stage.name, {"key": key, "commit": self.commits.entry(stage.name, key).get("commit", "")}
            )
            return
        self.behind[stage.name] = (stage, key, folder, inputs)
        self._try_publish(stage, key, folder, inputs)

    def _retry_behind(self) -> None:
        for stage, key, folder, inputs in list(self.behind.values()):
            self._try_publish(stage, key, folder, inputs)

    def _try_publish(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> None:
        try:
            commit = self._commit_stage(stage, key, folder, inputs)
        except Exception as error:  # noqa: BLE001 - never blocks the local run
            logger.warning(
                "stage %s: the Hub copy (%s) is behind: push failed (%s); the run goes on and retries at the "
                "next stage",
                stage.name, self._where(), describe(error),
            )  # fmt: skip
            return
        self.behind.pop(stage.name, None)
        self.published[stage.name] = {"key": key, "commit": commit}
        logger.info("stage %s: published to %s at %s", stage.name, self._where(), commit)

    def _commit_stage(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> str:
        """One commit of the stage (data as Parquet, side files, manifest) with the head's index and card."""
        name = stage.name
        with tempfile.TemporaryDirectory(prefix="persyn-stage-push-") as tmp:
            files, entry = stage_upload(stage, key, folder, inputs, Path(tmp))
            update = index_update(name, key, entry, self.repo_id, self.recipe_name, self.license)
            commit = self.commits.commit(
                files, f"PerSyn {self.recipe_name}: stage {name} (key {key})", update
            )
        self.commits.record(name, key, commit)
        if (self.read_repo or self.repo_id) == self.repo_id and self.read_revision == self.revision:
            head_index = self.commits.index_copy()
            self.index = head_index if head_index is not None else self.index
        return commit

    def _where(self, repo: str | None = None) -> str:
        return where(repo or self.repo_id, self.revision)


__all__ = ["StageMirror", "identity_differences", "public_identity"]
