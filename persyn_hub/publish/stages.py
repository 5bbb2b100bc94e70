"""Runs that outlive their machine: every finished stage on the Hub as it finishes, and a run that continues
from there.

`StageMirror` is the `mirror` of a `StageRunner` (main process only). Its repo (`output.hub.stages_repo`,
default `<dataset_repo>-stages`) holds, per stage, the exact files of the stage folder under
`<config>/<key>/` (config = the stage name with `/` as `--`: `learnability`, `label-generate--<teacher>`),
so a restored stage has the same content digest and every later key matches:

    <config>/<key>/_SUCCESS                  the marker, with every output file's sha256
    <config>/<key>/data/data-*.arrow         the data set (`load_dataset(repo, "<config>")` reads it)
    <config>/<key>/persyn-stage.json         key, identity (the recipe fields behind the key), inputs' keys
    rows/rows--<teacher>-<key>/part-*.jsonl  generation row checkpoints, pushed while a stage runs
    stages.json, README.md                   the index of published stages and the card (configs, keys)

- `publish(stage, key, folder, inputs)`: one commit per finished stage (files, manifest, index, card). A
  failed push is logged ("the Hub copy is behind") and retried at the next stage; the run goes on.
- `restore(stage, key, folder, inputs)`: before the main process decides on a stage that is not on disk,
  download it when the repo has this key (the `_SUCCESS` marker last, so a cut download is no stage).
  When the repo has the stage under another key, the log names the identity fields or inputs that differ.
  A generation stage that is not on the Hub gets the row checkpoints its teacher pushed: only the
  missing rows are requested.
- A thread pushes new generation rows every `checkpoint_every` rows or `checkpoint_minutes` minutes.

The token is whatever `huggingface_hub` finds (HF_TOKEN / `hf auth login`) and goes to the Hub endpoint
only; it is never logged or written (see docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persyn_hub.errors import PersynError
from persyn_hub.fingerprint import plain_value
from persyn_hub.folders import SUCCESS

logger = logging.getLogger("persyn_hub")

INDEX_FILE = "stages.json"
MANIFEST_FILE = "persyn-stage.json"
ROWS_DIR = "rows"
ROWS_POLL_SECONDS = 2.0
"""How often the rows thread looks for new checkpointed rows (pushes follow `checkpoint_every`/`_minutes`)."""
SKIPPED_PARTS = ("chunks",)


class StagesRepoError(PersynError, ValueError):
    """`output.hub.stages` is on but no repo can be named for it."""


def config_name(stage: str) -> str:
    return stage.replace("/", "--")


def parse_repo_revision(value: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`); `org/name` -> (`org/name`, None)."""
    repo, _, revision = value.partition("@")
    return repo, revision or None


def stages_repo(hub: Any) -> str | None:
    """The repo a run's stages go to, or None when stage publishing is off."""
    if hub.stages_repo:
        return hub.stages_repo
    if hub.resume_from:
        return parse_repo_revision(hub.resume_from)[0]
    if not hub.stages:
        return None
    if not hub.dataset_repo:
        raise StagesRepoError(
            "output.hub.stages: true needs a repo: set output.hub.stages_repo (or output.hub.dataset_repo, "
            "whose `-stages` sibling is then used)."
        )
    return f"{hub.dataset_repo}-stages"


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


def _complete_lines(path: Path) -> bytes:
    """A part file up to its last whole line (a line being written is pushed next time)."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


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
    rows_restored: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _pushed_lines: dict[str, int] = field(default_factory=dict)
    _last_rows_push: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _hub_files: list[str] | None = None
    _write_index: dict[str, Any] = field(default_factory=dict)
    """The push branch's index, extended by every stage this run publishes."""

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
        self._thread = threading.Thread(target=self._push_rows_loop, name="persyn-hub-rows", daemon=True)
        self._thread.start()
        return self

    def finish(self) -> dict[str, Any]:
        """Stop the rows thread, retry what is behind; returns the summary's `hub.stages` record."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
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
            "rows_restored": self.rows_restored,
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
                    name, self._where(self.read_repo), _describe(error),
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
            self._restore_rows(name.rsplit("/", 1)[-1])
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

    def _restore_rows(self, teacher: str) -> None:
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
                "teacher %s: could not restore row checkpoints from the Hub (%s)", teacher, _describe(error)
            )

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
                stage.name, self._where(), _describe(error),
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
                entry["columns"] = {column: _type_text(spec) for column, spec in features.items()}
            else:
                entry["data_files"] = f"{prefix}/data/data-*.arrow"
                entry["columns"] = _columns(data)
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

    # -- row checkpoints ----------------------------------------------------------------------------

    def _push_rows_loop(self) -> None:
        while not self._stop.wait(ROWS_POLL_SECONDS):
            self.push_rows()

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
                or time.monotonic() - self._last_rows_push >= self.checkpoint_minutes * 60
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
                    self._where(), len(new_ids), _describe(error),
                )  # fmt: skip
                return []
            for path, data in changed.items():
                self._pushed_lines[path] = data.count(b"\n")
            self._last_rows_push = time.monotonic()
            self._hub_files = None
            logger.info("row checkpoints: %d new row(s) pushed to %s", len(new_ids), self._where())
            return new_ids

    # -- helpers ------------------------------------------------------------------------------------

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
                INDEX_FILE, repo_id, _describe(error),
            )  # fmt: skip
            return {}

    def _where(self, repo: str | None = None) -> str:
        return f"{repo or self.repo_id}@{self.revision or 'main'}"


def _columns(data: Path) -> dict[str, str]:
    info = data / "dataset_info.json"
    if not info.is_file():
        return {}
    features = json.loads(info.read_text()).get("features") or {}
    return {column: _type_text(spec) for column, spec in features.items()}


def _type_text(spec: Any) -> str:
    if isinstance(spec, dict):
        if spec.get("_type") == "Value":
            return str(spec.get("dtype"))
        if spec.get("_type") in ("List", "Sequence", "LargeList"):
            return f"list[{_type_text(spec.get('feature'))}]"
        return spec.get("_type") or "struct"
    if isinstance(spec, list):
        return f"list[{_type_text(spec[0]) if spec else ''}]"
    return str(spec)


def _describe(error: BaseException) -> str:
    from persyn_hub.generation.auth import redact

    text = str(error).splitlines()[0][:300] if str(error) else ""
    return redact(f"{type(error).__name__}: {text}")


# Columns a reader meets in the stage configs (the rest are the prompt's own columns).
COLUMN_DOCS = {
    "prompt_id": "stable id of the prompt",
    "messages": "the prompt as a chat (the final set: with the assistant's answer)",
    "teacher": "the teacher that answered (route: the teacher chosen)",
    "response": "the teacher's answer",
    "finish_reason": "`stop` or `length` (cut at max_new_tokens)",
    "num_tokens": "answer tokens",
    "num_prompt_tokens": "prompt tokens",
    "error": "why the generation failed (null when it did not)",
    "learnability": "the untuned student's mean log-probability per answer token (teacher-forced)",
    "num_response_tokens": "answer tokens in the student's tokenizer",
    "quality": "the quality score (reward model or verifier)",
    "reward": "r = (1 - alpha) * quality + alpha * learnability, per-prompt normalized signals",
    "router_scores": "the router's score per teacher",
    "selected_by": "`labeled` (best scored answer) or `routed` (the router's choice)",
    "excluded": "why a row was left out of the router's training (null when it was not)",
}


def render_stages_card(index: dict[str, Any], repo_id: str, recipe_name: str, license: str) -> str:
    """The stages repo's card: one config per published data set stage (its latest key), every key."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from model_cards import template_path

    stages = index.get("stages", {})
    latest = index.get("latest", {})
    configs = []
    rows = []
    for name in sorted(stages, key=lambda n: min(e.get("order", 0) for e in stages[n].values())):
        for key, entry in sorted(stages[name].items(), key=lambda item: item[1].get("order", 0)):
            rows.append({"name": name, "key": key, "current": latest.get(name) == key, **entry})
        entry = stages[name].get(latest.get(name), {})
        if entry.get("data_files"):
            configs.append(
                {
                    "config_name": config_name(name),
                    "data_files": [{"split": "train", "path": entry["data_files"]}],
                    **({"default": True} if name == "learnability" else {}),
                }
            )
    columns = sorted({c for entry in rows for c in (entry.get("columns") or {})})
    card_data = DatasetCardData(
        license=license,
        tags=["persyn", "distillation", "synthetic", "pipeline-stages"],
        pretty_name=f"PerSyn {recipe_name} stages",
        configs=configs,
    )
    return str(
        DatasetCard.from_template(
            card_data,
            template_path=str(template_path("stages_card.md")),
            pretty_name=f"PerSyn {recipe_name}: every stage's output",
            repo_id=repo_id,
            stages=rows,
            configs=[c["config_name"] for c in configs],
            column_docs=[(c, COLUMN_DOCS.get(c, "a column of the prompt source")) for c in columns],
            json=json,
        )
    )


__all__ = ["StageMirror", "StagesRepoError", "identity_differences", "render_stages_card", "stages_repo"]
