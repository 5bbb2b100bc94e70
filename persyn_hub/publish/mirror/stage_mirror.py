"""Runs that outlive their machine: every finished stage on the Hub as it finishes, and a run that continues
from there.

`StageMirror` is the `mirror` of a `StageRunner` (main process only). Its repo is laid out as
`publish.mirror.layout` describes; its card is `publish.mirror.card`.

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

import json
import logging
import queue
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persyn_hub.fingerprint import plain_value
from persyn_hub.folders import SUCCESS
from persyn_hub.publish.mirror.card import columns, render_stages_card, type_text
from persyn_hub.publish.mirror.layout import (
    INDEX_FILE,
    MANIFEST_FILE,
    config_name,
    describe,
    parse_repo_revision,
    stages_repo,
    where,
)
from persyn_hub.publish.mirror.rows import RowCheckpoints

logger = logging.getLogger("persyn_hub")

SKIPPED_PARTS = ("chunks",)
QUEUE_SIZE = 2
"""Finished stages that may wait for the push thread; a further `publish` waits for room (back-pressure)."""
CONFLICT_STATUSES = (409, 412)
"""The branch moved since `parent_commit` (another run committed): read the head again, commit again."""
CONFLICT_ATTEMPTS = 20
HEAD_TIMEOUT = 20.0
"""Seconds a read of the push branch's head waits for an answer."""


def identity_differences(published: Any, current: Any, path: str = "") -> list[str]:
    """Where two plain identities differ, as `field: published -> current` lines (most specific paths)."""
    if isinstance(published, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(published) | set(current), key=str):
            if key == "__type__":
                continue
            found += identity_differences(
                published.get(key), current.get(key), f"{path}.{key}" if path else str(key)
            )
        return found
    if published != current:
        return [f"{path or 'identity'}: {json.dumps(published)} -> {json.dumps(current)}"]
    return []


def _stage_files(folder: Path) -> dict[str, Path]:
    """The files of a finished stage folder that make it whole elsewhere (not chunks, not `datasets`' caches)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            not path.is_file()
            or relative.parts[0] in SKIPPED_PARTS
            or path.name.startswith("cache-")
            or path.name.endswith((".partial", ".lock"))
            or any(part.endswith(".partial") for part in relative.parts)
        ):
            continue
        files[relative.as_posix()] = path
    return files


def public_identity(identity: Any) -> Any:
    """A stage identity as the repo records it: plain, without local paths or credentials."""
    from persyn_hub.publish.scrub import scrub_value

    return scrub_value(plain_value(identity))


def _scrubbed_errors(dataset: Any) -> Any:
    """`dataset` with credentials masked in its `error` column (a failed request may quote its URL)."""
    from persyn_hub.publish.scrub import scrub_text

    if "error" not in dataset.column_names or getattr(dataset.features["error"], "dtype", None) != "string":
        return dataset
    if all(scrub_text(e) == e for e in dataset["error"] if e):
        return dataset
    return dataset.map(
        lambda batch: {"error": [scrub_text(e) if e else e for e in batch["error"]]},
        batched=True,
        keep_in_memory=True,
    )


TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".txt", ".md")


def _public_file(relative: str, path: Path) -> bytes | Path:
    """A stage's side file as it is pushed: JSON and text scrubbed of local paths, credentials and tokens
    (a server's message in `stats.json` may quote its URL). The data and a folder stage's output, which the
    marker vouches for, go as they are."""
    from persyn_hub.publish.scrub import scrub_text, scrub_value

    if (
        relative.startswith(("data/", "output/"))
        or relative == SUCCESS
        or not relative.endswith(TEXT_SUFFIXES)
    ):
        return path
    text = path.read_text(encoding="utf-8", errors="replace")
    if relative.endswith(".json"):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if value is not None and scrub_value(value) != value:
            return (json.dumps(scrub_value(value), indent=2) + "\n").encode()
    scrubbed = scrub_text(text)
    return scrubbed.encode() if scrubbed != text else path


def _rebuild_data(parquet: list[Path], target: Path) -> None:
    """The stage's data folder (`save_to_disk`) from its Parquet shards (features from their metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    from persyn_hub.folders import save_dataset_folder

    table = pa.concat_tables([pq.read_table(str(path)) for path in parquet])
    save_dataset_folder(Dataset(table), target)


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
    rows: RowCheckpoints = field(init=False)
    """The generation row checkpoints (pushed by its thread, restored for a generation stage)."""
    conflicts: int = 0
    """Commits that met a head another run had moved, and were made again on it."""
    _lock: threading.RLock = field(default_factory=threading.RLock)
    """Held by every commit of the mirror and of its `rows`."""
    _head: tuple[str, dict[str, Any]] | None = None
    """The push branch's head commit and its index (None: to be read before the next commit)."""
    _queue: queue.Queue | None = None
    _worker: threading.Thread | None = None
    _warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
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
            commit=self._commit_files,
        )

    @classmethod
    def for_recipe(cls, recipe: Any, run_dir: Path, api: Any = None) -> StageMirror | None:
        """The mirror `recipe.output.hub` asks for, or None when stage publishing is off."""
        hub = recipe.output.hub
        repo_id = stages_repo(hub)
        if repo_id is None:
            return None
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
            from persyn_hub.publish.mirror.access import check_resume_source, resume_error

            sha = check_resume_source(self.api, read, self.read_revision)
            try:
                self.index = self._index_at(read, sha)
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
        self._head = self._read_head(strict=False)
        if not self.resume:
            if same:
                self.index = json.loads(json.dumps(self._head[1])) if self._head else {}
            else:
                self.index = self._read_index(read, self.read_revision)
        stages = sum(len(keys) for keys in self.index.get("stages", {}).values())
        logger.info("Hub stages: %s (%d published stage output(s) to reuse)", self._where(read), stages)
        self.rows.start()
        self._queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._worker = threading.Thread(target=self._work, name="persyn-hub-stages", daemon=True)
        self._worker.start()
        return self

    def wait(self) -> None:
        """Wait until every queued stage push is done (made, or left `behind`)."""
        if self._queue is not None:
            self._queue.join()

    def finish(self) -> dict[str, Any]:
        """Stop the rows thread, wait for the queued pushes, retry what is behind; returns the summary's
        `hub.stages` record."""
        self.rows.stop()
        if self._queue is not None and self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._queue = self._worker = None
        with self._lock:
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
                self._download_stage(name, key, folder)
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
        differences = self._differences(stage, inputs, published)
        if self.resume and not self.restored and "nothing" not in self._warned:
            self._warned.add("nothing")
            logger.warning(
                "Hub resume: nothing reused from %s so far: stage %s is not there under key %s (%s); it is "
                "computed here, and so is every stage that depends on it",
                self._where(self.read_repo), name, key, differences,
            )  # fmt: skip
        elif published:
            latest = max(published, key=lambda k: published[k].get("order", 0))
            logger.info(
                "stage %s: the Hub has it under key %s, not %s, so it is computed again: %s",
                name, latest, key, differences,
            )  # fmt: skip
        if getattr(stage, "rerun_failed", False):  # a generation stage: its teacher's pushed rows
            self.rows.restore_rows(name.rsplit("/", 1)[-1])
        return False

    def _differences(self, stage: Any, inputs: dict, published: dict[str, Any]) -> str:
        """What differs between this run's stage and the repo's latest key of it (identity, inputs)."""
        if not published:
            names = sorted(self.index.get("stages", {}))
            return f"the repo has no stage {stage.name}" + (f"; it has {', '.join(names)}" if names else "")
        latest = published[max(published, key=lambda k: published[k].get("order", 0))]
        lines = identity_differences(latest.get("identity"), public_identity(stage.identity))
        for input_name in sorted(set(latest.get("inputs", {})) | set(inputs)):
            theirs = (latest.get("inputs", {}).get(input_name) or {}).get("digest")
            ours = (inputs.get(input_name) or {}).get("digest")
            if theirs != ours:
                lines.append(f"input {input_name} differs (its content digest {theirs} -> {ours})")
        return "; ".join(lines) or "the stage's key derivation changed"

    def _download_stage(self, name: str, key: str, folder: Path) -> None:
        from huggingface_hub import snapshot_download

        from persyn_hub.folders import folder_digest

        prefix = f"{config_name(name)}/{key}"
        with tempfile.TemporaryDirectory(prefix="persyn-restore-", dir=self.run_dir) as tmp:
            snapshot_download(
                self.read_repo or self.repo_id,
                repo_type="dataset",
                revision=self.read_revision,
                allow_patterns=[f"{prefix}/*"],
                local_dir=tmp,
                endpoint=self.api.endpoint,
                token=self.api.token,
            )
            source = Path(tmp) / prefix
            if not (source / SUCCESS).is_file():
                raise FileNotFoundError(f"{prefix}/{SUCCESS} is not in the repo")
            parquet = sorted((source / "data").glob("*.parquet"))
            folder.mkdir(parents=True, exist_ok=True)
            (folder / SUCCESS).unlink(missing_ok=True)
            for entry in sorted(source.iterdir()):
                if entry.name in (SUCCESS, MANIFEST_FILE) or (parquet and entry.name == "data"):
                    continue
                target = folder / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                shutil.move(str(entry), str(target))
            if not parquet:  # a stage pushed as its files (a folder stage, or an older version's push)
                shutil.move(str(source / SUCCESS), str(folder / SUCCESS))  # last: the stage is whole
                return
            _rebuild_data(parquet, folder / "data")
            # The marker vouches for the rebuilt files; the digest later keys chain on stays the one of the
            # files the stage wrote where it ran (`StageCache.output_digest` reads `digest_files`).
            marker = json.loads((source / SUCCESS).read_text())
            marker["digest_files"] = marker.get("digest_files") or marker.get("files")
            marker["files"] = folder_digest(folder / "data")
            marker["restored_from"] = f"{self.read_repo or self.repo_id}@{self.read_revision or 'main'}"
            partial = folder / f"{SUCCESS}.partial"
            partial.write_text(json.dumps(marker))
            partial.replace(folder / SUCCESS)  # last: the stage is whole

    # -- publish ------------------------------------------------------------------------------------

    def publish(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> None:
        """Queue the finished stage for the push thread (waits only while `QUEUE_SIZE` stages wait);
        without a started push thread, push it now."""
        item = (stage, key, folder, inputs)
        if self._queue is None:
            with self._lock:
                self._publish_now(*item)
            return
        self._queue.put(item)

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                with self._lock:
                    self._publish_now(*item)
            except Exception as error:  # noqa: BLE001 - a push never stops the run; it stays behind
                logger.warning("Hub stages: push thread: %s", describe(error))
            finally:
                self._queue.task_done()

    def _publish_now(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> None:
        self._retry_behind()
        if self._has(stage.name, key):
            self.published.setdefault(
                stage.name, {"key": key, "commit": self._entry(stage.name, key).get("commit", "")}
            )
            return
        self.behind[stage.name] = (stage, key, folder, inputs)
        self._try_publish(stage, key, folder, inputs)

    def _has(self, name: str, key: str) -> bool:
        return self._head is not None and key in self._head[1].get("stages", {}).get(name, {})

    def _entry(self, name: str, key: str) -> dict[str, Any]:
        return self._head[1].get("stages", {}).get(name, {}).get(key, {}) if self._head else {}

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
        from persyn_hub.folders import EMPTY_MARKER, load_dataset_folder
        from persyn_hub.publish.hub import parquet_shards

        name = stage.name
        prefix = f"{config_name(name)}/{key}"
        marker = json.loads((folder / SUCCESS).read_text())
        kind = "folder" if getattr(stage, "folder", False) else "dataset"
        files: dict[str, bytes | Path] = {
            f"{prefix}/{rel}": _public_file(rel, path) for rel, path in _stage_files(folder).items()
        }
        entry: dict[str, Any] = {
            "config": config_name(name),
            "key": key,
            "identity": public_identity(stage.identity),
            "inputs": inputs,
            "rows": marker.get("rows"),
            "kind": kind,
        }
        with tempfile.TemporaryDirectory(prefix="persyn-stage-push-") as tmp:
            if kind == "dataset":
                data = folder / "data"
                if (data / EMPTY_MARKER).is_file():  # 0 rows (a teacher routed no prompt): no config, since
                    features = json.loads((data / EMPTY_MARKER).read_text())  # `datasets` loads no empty file
                    entry["columns"] = {column: type_text(spec) for column, spec in features.items()}
                else:  # the data set as `push_to_hub` writes it: Parquet shards, one config per stage
                    files = {
                        path: value for path, value in files.items() if not path.startswith(f"{prefix}/data/")
                    }
                    dataset = _scrubbed_errors(load_dataset_folder(data))
                    files.update(parquet_shards(dataset, Path(tmp), f"{prefix}/data"))
                    entry["data_files"] = f"{prefix}/data/train-*.parquet"
                    entry["columns"] = columns(data)
            manifest = entry | {"stage": name}
            files[f"{prefix}/{MANIFEST_FILE}"] = (
                json.dumps(manifest, indent=2, sort_keys=True) + "\n"
            ).encode()

            def update(index: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes | Path]]:
                index = json.loads(json.dumps(index))
                order = 1 + max(
                    (e.get("order", 0) for keys in index.get("stages", {}).values() for e in keys.values()),
                    default=0,
                )
                index.setdefault("stages", {}).setdefault(name, {})[key] = {**entry, "order": order}
                index["latest"] = {**index.get("latest", {}), name: key}
                card = render_stages_card(index, self.repo_id, self.recipe_name, self.license)
                return index, {
                    INDEX_FILE: (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(),
                    "README.md": card.encode(),
                }

            commit = self._commit_files(files, f"PerSyn {self.recipe_name}: stage {name} (key {key})", update)
        if self._head is not None and key in self._head[1].get("stages", {}).get(name, {}):
            self._head[1]["stages"][name][key]["commit"] = commit  # recorded with the next commit
        if (self.read_repo or self.repo_id) == self.repo_id and self.read_revision == self.revision:
            self.index = json.loads(json.dumps(self._head[1])) if self._head else self.index
        return commit

    # -- commits ------------------------------------------------------------------------------------

    def _commit_files(self, files: dict[str, bytes | Path], message: str, update: Any = None) -> str:
        """One commit of `files` (plus what `update(index)` adds for the head's index) on the branch's head
        (`parent_commit`); when another run moved the head meanwhile, read it again and commit again."""
        from huggingface_hub import CommitOperationAdd

        from persyn_hub.publish.client import status_of

        with self._lock:
            for _ in range(CONFLICT_ATTEMPTS):
                if self._head is None:
                    self._ensure_repo()
                    self._head = self._read_head(strict=True)
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

    def _ensure_repo(self) -> None:
        self.api.create_repo(self.repo_id, repo_type="dataset", private=self.private, exist_ok=True)
        if self.revision and self.revision != "main":
            self.api.create_branch(self.repo_id, branch=self.revision, repo_type="dataset", exist_ok=True)

    def _read_head(self, strict: bool) -> tuple[str, dict[str, Any]] | None:
        """The push branch's head commit and its index; None when the repo or branch does not exist yet
        (or, unless `strict`, cannot be read: the run goes on, and the next commit reads it again)."""
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = self.api.dataset_info(self.repo_id, revision=self.revision, timeout=HEAD_TIMEOUT)
            if not info.private and self.private and "public" not in self._warned:
                self._warned.add("public")
                logger.warning(
                    "Hub stages: %s is public: every stage pushed there (prompts, teacher answers, scores) "
                    "can be read by anyone. Make it private in its settings on the Hub, or set "
                    "output.hub.stages_repo to a private repo (output.hub.stages_private: false silences this).",
                    self.repo_id,
                )
            return str(info.sha), self._index_at(self.repo_id, str(info.sha))
        except (RepositoryNotFoundError, RevisionNotFoundError):
            if strict:
                raise
            return None
        except Exception as error:  # noqa: BLE001 - the Hub unreachable: run here, publish when it is back
            if strict:
                raise
            logger.warning(
                "Hub stages: could not read %s (%s); every stage is computed here, and pushed when it answers",
                self._where(), describe(error),
            )  # fmt: skip
            return None

    def _index_at(self, repo_id: str, revision: str | None) -> dict[str, Any]:
        """The repo's index at `revision` ({} when it has none); other failures are raised."""
        from huggingface_hub.errors import EntryNotFoundError

        try:
            with tempfile.TemporaryDirectory(prefix="persyn-index-") as tmp:
                path = self.api.hf_hub_download(
                    repo_id, INDEX_FILE, repo_type="dataset", revision=revision, cache_dir=tmp
                )
                return json.loads(Path(path).read_text())
        except EntryNotFoundError:
            return {}

    def _read_index(self, repo_id: str, revision: str | None) -> dict[str, Any]:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            return self._index_at(repo_id, revision)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return {}
        except Exception as error:  # noqa: BLE001 - the Hub unreachable: run here, publish when it is back
            logger.warning(
                "Hub stages: could not read %s from %s (%s); every stage is computed here",
                INDEX_FILE, repo_id, describe(error),
            )  # fmt: skip
            return {}

    def _where(self, repo: str | None = None) -> str:
        return where(repo or self.repo_id, self.revision)


__all__ = ["StageMirror", "identity_differences", "public_identity"]
