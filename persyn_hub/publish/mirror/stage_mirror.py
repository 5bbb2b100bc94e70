"""Runs that outlive their machine: every finished stage on the Hub as it finishes, and a run that continues
from there.

`StageMirror` is the `mirror` of a `StageRunner` (main process only). Its repo is laid out as
`publish.mirror.layout` describes; its card is `publish.mirror.card`.

- `publish(stage, key, folder, inputs)`: one commit per finished stage (files, manifest, index, card). A
  failed push is logged ("the Hub copy is behind") and retried at the next stage; the run goes on.
- `restore(stage, key, folder, inputs)`: before the main process decides on a stage that is not on disk,
  download it when the repo has this key (the `_SUCCESS` marker last, so a cut download is no stage).
  When the repo has the stage under another key, the log names the identity fields or inputs that differ.
  A generation stage that is not on the Hub gets the row checkpoints its teacher pushed: only the
  missing rows are requested.
- A thread pushes new generation rows every `checkpoint_every` rows or `checkpoint_minutes` minutes
  (`rows`, a `publish.mirror.rows.RowCheckpoints` the mirror creates; it takes the mirror's lock).

The token is whatever `huggingface_hub` finds (HF_TOKEN / `hf auth login`) and goes to the Hub endpoint
only; it is never logged or written (see docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
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
    private: bool = False
    license: str = "other"
    checkpoint_every: int = 256
    checkpoint_minutes: float = 10.0
    index: dict[str, Any] = field(default_factory=dict)
    published: dict[str, dict[str, str]] = field(default_factory=dict)
    """This run's stages on the Hub: name -> {key, commit}."""
    restored: list[str] = field(default_factory=list)
    behind: dict[str, Any] = field(default_factory=dict)
    """Stages whose push failed, by name: retried at the next stage and at the end of the run."""
    rows: RowCheckpoints = field(init=False)
    """The generation row checkpoints (pushed by its thread, restored for a generation stage)."""
    _lock: threading.RLock = field(default_factory=threading.RLock)
    """Held by every Hub commit and download of the mirror and of its `rows`."""
    _write_index: dict[str, Any] = field(default_factory=dict)
    """The push branch's index, extended by every stage this run publishes."""

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
            lock=self._lock,
        )

    @classmethod
    def for_recipe(cls, recipe: Any, run_dir: Path, api: Any = None) -> StageMirror | None:
        """The mirror `recipe.output.hub` asks for, or None when stage publishing is off."""
        hub = recipe.output.hub
        repo_id = stages_repo(hub)
        if repo_id is None:
            return None
        from huggingface_hub import HfApi

        read_repo, read_revision = (
            parse_repo_revision(hub.resume_from) if hub.resume_from else (repo_id, None)
        )
        return cls(
            api=api or HfApi(),
            repo_id=repo_id,
            run_dir=Path(run_dir),
            recipe_name=recipe.name,
            revision=hub.revision,
            read_repo=read_repo,
            read_revision=read_revision or hub.revision,
            private=hub.private,
            license=hub.license,
            checkpoint_every=hub.checkpoint_every,
            checkpoint_minutes=hub.checkpoint_minutes,
        )

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> StageMirror:
        """Read the repo's index (a missing repo is an empty one) and start pushing row checkpoints."""
        self.index = self._read_index(self.read_repo or self.repo_id, self.read_revision)
        if (self.read_repo or self.repo_id) != self.repo_id or self.read_revision != self.revision:
            # the push branch's index is the one this run extends
            self._write_index = self._read_index(self.repo_id, self.revision)
        else:
            self._write_index = json.loads(json.dumps(self.index))
        stages = sum(len(keys) for keys in self.index.get("stages", {}).values())
        logger.info(
            "Hub stages: %s (%d published stage output(s) to reuse)", self._where(self.read_repo), stages
        )
        self.rows.start()
        return self

    def finish(self) -> dict[str, Any]:
        """Stop the rows thread, retry what is behind; returns the summary's `hub.stages` record."""
        self.rows.stop()
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
            "behind": sorted(self.behind),
        }

    # -- restore ------------------------------------------------------------------------------------

    def restore(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> bool:
        """Download `stage` for `key` into `folder` when the repo has it; True when it is now on disk."""
        name = stage.name
        published = self.index.get("stages", {}).get(name, {})
        if key in published:
            try:
                with self._lock:
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
        if published:
            self._say_what_differs(stage, key, inputs, published)
        if getattr(stage, "rerun_failed", False):  # a generation stage: its teacher's pushed rows
            self.rows.restore_rows(name.rsplit("/", 1)[-1])
        return False

    def _say_what_differs(self, stage: Any, key: str, inputs: dict, published: dict[str, Any]) -> None:
        latest_key = max(published, key=lambda k: published[k].get("order", 0))
        latest = published[latest_key]
        lines = identity_differences(latest.get("identity"), plain_value(stage.identity))
        for input_name in sorted(set(latest.get("inputs", {})) | set(inputs)):
            theirs = (latest.get("inputs", {}).get(input_name) or {}).get("digest")
            ours = (inputs.get(input_name) or {}).get("digest")
            if theirs != ours:
                lines.append(f"input {input_name} differs (its content digest {theirs} -> {ours})")
        logger.info(
            "stage %s: the Hub has it under key %s, not %s, so it is computed again: %s",
            stage.name, latest_key, key, "; ".join(lines) or "the stage's key derivation changed",
        )  # fmt: skip

    def _download_stage(self, name: str, key: str, folder: Path) -> None:
        from huggingface_hub import snapshot_download

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
            folder.mkdir(parents=True, exist_ok=True)
            (folder / SUCCESS).unlink(missing_ok=True)
            for entry in sorted(source.iterdir()):
                if entry.name in (SUCCESS, MANIFEST_FILE):
                    continue
                target = folder / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                shutil.move(str(entry), str(target))
            shutil.move(str(source / SUCCESS), str(folder / SUCCESS))  # last: the stage is whole

    # -- publish ------------------------------------------------------------------------------------

    def publish(self, stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]]) -> None:
        """One commit holding the finished stage; a failure leaves it `behind`, retried at the next stage."""
        with self._lock:
            self._retry_behind()
            if self._has(stage.name, key):
                self.published.setdefault(
                    stage.name, {"key": key, "commit": self._entry(stage.name, key).get("commit", "")}
                )
                return
            self.behind[stage.name] = (stage, key, folder, inputs)
            self._try_publish(stage, key, folder, inputs)

    def _has(self, name: str, key: str) -> bool:
        return key in self._write_index.get("stages", {}).get(name, {})

    def _entry(self, name: str, key: str) -> dict[str, Any]:
        return self._write_index.get("stages", {}).get(name, {}).get(key, {})

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
        from persyn_hub.folders import EMPTY_MARKER
        from persyn_hub.publish.hub import commit_artifact

        name = stage.name
        prefix = f"{config_name(name)}/{key}"
        marker = json.loads((folder / SUCCESS).read_text())
        files: dict[str, bytes | Path] = {
            f"{prefix}/{rel}": path for rel, path in _stage_files(folder).items()
        }
        entry: dict[str, Any] = {
            "config": config_name(name),
            "key": key,
            "identity": plain_value(stage.identity),
            "inputs": inputs,
            "rows": marker.get("rows"),
            "kind": "folder" if getattr(stage, "folder", False) else "dataset",
            "order": 1
            + max(
                (
                    e.get("order", 0)
                    for keys in self._write_index.get("stages", {}).values()
                    for e in keys.values()
                ),
                default=0,
            ),
        }
        if entry["kind"] == "dataset":
            data = folder / "data"
            if (data / EMPTY_MARKER).is_file():  # 0 rows (a teacher routed no prompt): no config, since
                features = json.loads((data / EMPTY_MARKER).read_text())  # `datasets` loads no empty file
                entry["columns"] = {column: type_text(spec) for column, spec in features.items()}
            else:
                entry["data_files"] = f"{prefix}/data/data-*.arrow"
                entry["columns"] = columns(data)
        index = json.loads(json.dumps(self._write_index))
        index.setdefault("stages", {}).setdefault(name, {})[key] = entry
        index["latest"] = {**index.get("latest", {}), name: key}
        manifest = {k: v for k, v in entry.items() if k != "order"} | {"stage": name}
        files[f"{prefix}/{MANIFEST_FILE}"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        files[INDEX_FILE] = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
        files["README.md"] = render_stages_card(index, self.repo_id, self.recipe_name, self.license).encode()
        result = commit_artifact(
            self.api,
            self.repo_id,
            files,
            repo_type="dataset",
            message=f"PerSyn {self.recipe_name}: stage {name} (key {key})",
            private=self.private,
            revision=self.revision,
        )
        commit = result["revision"]
        index["stages"][name][key]["commit"] = commit  # known once committed: recorded with the next one
        self._write_index = index
        if (self.read_repo or self.repo_id) == self.repo_id and self.read_revision == self.revision:
            self.index = index
        return commit

    # -- helpers ------------------------------------------------------------------------------------

    def _read_index(self, repo_id: str, revision: str | None) -> dict[str, Any]:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            with tempfile.TemporaryDirectory(prefix="persyn-index-") as tmp:
                path = self.api.hf_hub_download(
                    repo_id, INDEX_FILE, repo_type="dataset", revision=revision, cache_dir=tmp
                )
                return json.loads(Path(path).read_text())
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return {}
        except Exception as error:  # noqa: BLE001 - the Hub unreachable: run here, publish when it is back
            logger.warning(
                "Hub stages: could not read %s from %s (%s); every stage is computed here",
                INDEX_FILE, repo_id, describe(error),
            )  # fmt: skip
            return {}

    def _where(self, repo: str | None = None) -> str:
        return where(repo or self.repo_id, self.revision)


__all__ = ["StageMirror", "identity_differences"]
