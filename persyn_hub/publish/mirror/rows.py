"""Generation row checkpoints on the Hub, both ways: a rows thread pushes the rows a generation wrote since
its last push, and a generation stage that is not on the Hub gets back the rows its teacher pushed, so
only the missing rows are requested.

Pushes follow a timer (`checkpoint_minutes`; `checkpoint_every` rows too when it is set), so a day-long
generation makes a few commits an hour whatever its speed, well under the Hub's commit rate. Each push is
NEW files only: `rows/<stage folder>/<part>.lines-<first>-<end>.jsonl` holds lines `first` to `end - 1`
of the part file `<part>.jsonl` (part files are only appended to, and named per writer), so no row is
uploaded twice. A restore joins a part's pieces in order, up to the first gap. Whole part files that
an older version pushed (`rows/<stage folder>/<part>.jsonl`) are restored as well.

`RowCheckpoints` holds what it pushed and what it knows is on the Hub; `StageMirror` creates it and
passes the commit function its own commits use, so a rows commit and a stage commit never run at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persyn_hub.publish.mirror.layout import ROWS_DIR, describe, where
from persyn_hub.publish.scrub import scrub_text

logger = logging.getLogger("persyn_hub")

ROWS_POLL_SECONDS = 2.0
"""How often the rows thread looks for new checkpointed rows (pushes follow `checkpoint_minutes`/`_every`)."""
PIECE = re.compile(r"^(?P<part>part-[^/]+?)\.lines-(?P<start>\d{9})-(?P<end>\d{9})\.jsonl$")
WHOLE = re.compile(r"^(?P<part>part-[^/]+?)\.jsonl$")


def _complete_lines(path: Path) -> bytes:
    """A part file up to its last whole line (a line being written is pushed next time)."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def piece_name(folder: str, part: str, start: int, end: int) -> str:
    """The repo path of lines `start` to `end - 1` of `stages/<folder>/<part>` (`part` ends in `.jsonl`)."""
    return f"{ROWS_DIR}/{folder}/{part.removesuffix('.jsonl')}.lines-{start:09d}-{end:09d}.jsonl"


def _plain_commit(mirror_api: Any, repo_id: str, private: bool, revision: str | None, recipe_name: str):
    def commit(files: dict[str, bytes | Path], message: str) -> str:
        # lazy: publish.hub loads datasets and huggingface_hub, which this module otherwise does not
        from persyn_hub.publish.hub import commit_artifact

        return commit_artifact(
            mirror_api,
            repo_id,
            files,
            repo_type="dataset",
            message=message,
            private=private,
            revision=revision,
        )["revision"]

    return commit


class RowCheckpoints:
    """A run's row checkpoints on the Hub: `start`/`stop` (the rows thread, calling `push_rows`) and
    `restore_rows` (a generation stage that is not on the Hub). `rows_restored` counts the rows restored,
    `rows_pushed` the rows this run pushed."""

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
        private: bool = True,
        checkpoint_every: int | None = None,
        checkpoint_minutes: float = 10.0,
        commit: Callable[[dict[str, bytes | Path], str], str] | None = None,
    ) -> None:
        self.api = api
        self.repo_id = repo_id
        self.run_dir = Path(run_dir)
        self.recipe_name = recipe_name
        self.revision = revision
        self.read_repo = read_repo
        self.read_revision = read_revision
        self.checkpoint_every = checkpoint_every
        self.checkpoint_minutes = checkpoint_minutes
        self.commit = commit or _plain_commit(api, repo_id, private, revision, recipe_name)
        self.rows_restored = 0
        self.rows_pushed = 0
        self._lock = threading.RLock()
        """Held while the pushed state changes (a push, a restore)."""
        self._pushed_lines: dict[str, int] = {}
        """Part file -> its whole lines on the Hub (pushed by this run or restored from it)."""
        self._last_push = time.monotonic()
        self._hub_files: list[str] | None = None
        """The read repo's files, listed once (None: not listed yet)."""
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

    # -- restore ------------------------------------------------------------------------------------

    def _wanted(self, teacher: str) -> dict[tuple[str, str], list[tuple[int, int, str]]]:
        """(stage folder, part file) -> its pieces on the Hub as (first line, end line, repo path), for the
        teacher's part files that are not on disk; a whole part file is one piece from line 0."""
        folder_pattern = re.compile(rf"^rows--{re.escape(teacher)}-[0-9a-f]{{16}}$")
        pieces: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
        for path in self._list_files():
            parts = path.split("/")
            if len(parts) != 3 or parts[0] != ROWS_DIR or not folder_pattern.match(parts[1]):
                continue
            if match := PIECE.match(parts[2]):
                start, end = int(match["start"]), int(match["end"])
            elif match := WHOLE.match(parts[2]):
                start, end = 0, -1  # a whole file: its lines are counted once downloaded
            else:
                continue
            part = f"{match['part']}.jsonl"
            if not (self.run_dir / "stages" / parts[1] / part).is_file():
                pieces.setdefault((parts[1], part), []).append((start, end, path))
        return pieces

    def restore_rows(self, teacher: str) -> None:
        """Download the teacher's pushed row checkpoints that are not on disk, joining each part's pieces."""
        try:
            with self._lock:
                wanted = self._wanted(teacher)
                if not wanted:
                    return
                from huggingface_hub import hf_hub_download

                rows = 0
                for (folder, part), pieces in sorted(wanted.items()):
                    whole = [p for p in pieces if p[1] < 0]
                    chosen = whole[:1] or _contiguous(pieces)
                    data = b""
                    for _, _, path in chosen:
                        local = hf_hub_download(
                            self.read_repo or self.repo_id,
                            path,
                            repo_type="dataset",
                            revision=self.read_revision,
                            endpoint=self.api.endpoint,
                            token=self.api.token,
                            cache_dir=self.run_dir / ".hub-cache",
                        )
                        data += _complete_lines(Path(local))
                    if not data:
                        continue
                    target = self.run_dir / "stages" / folder / part
                    target.parent.mkdir(parents=True, exist_ok=True)
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

    # -- push ---------------------------------------------------------------------------------------

    def due(self, new_rows: int) -> bool:
        """Whether a push is due: `checkpoint_minutes` since the last one, or `checkpoint_every` new rows."""
        if self.checkpoint_every and new_rows >= self.checkpoint_every:
            return True
        return time.monotonic() - self._last_push >= self.checkpoint_minutes * 60

    def push_rows(self, force: bool = False) -> list[str]:
        """Push the lines written since the last push as new files when a push is due (or `force`);
        returns the prompt ids pushed (none when nothing was due or the push failed)."""

        with self._lock:
            changed: dict[str, tuple[int, int, bytes]] = {}
            new_ids: list[str] = []
            for part in sorted((self.run_dir / "stages").glob("rows--*/part-*.jsonl")):
                try:
                    data = _complete_lines(part)
                except OSError:
                    continue
                lines = data.splitlines(keepends=True)
                pushed = self._pushed_lines.get(str(part), 0)
                if len(lines) > pushed:
                    changed[str(part)] = (pushed, len(lines), b"".join(lines[pushed:]))
                    for line in lines[pushed:]:
                        try:
                            new_ids.append(json.loads(line)["prompt_id"])
                        except (ValueError, KeyError, TypeError):
                            continue
            if not changed or not (force or self.due(len(new_ids))):
                return []
            # an error message may quote an endpoint URL: no credentials leave the machine
            files: dict[str, bytes | Path] = {
                piece_name(Path(path).parent.name, Path(path).name, start, end): scrub_text(
                    piece.decode("utf-8", "replace")
                ).encode()
                for path, (start, end, piece) in changed.items()
            }
            try:
                self.commit(files, f"PerSyn {self.recipe_name}: {len(new_ids)} generated row(s) checkpointed")
            except Exception as error:  # noqa: BLE001 - retried at the next poll
                logger.warning(
                    "row checkpoints: the Hub copy (%s) is behind by %d row(s): push failed (%s); retrying",
                    self._where(), len(new_ids), describe(error),
                )  # fmt: skip
                return []
            for path, (_, end, _) in changed.items():
                self._pushed_lines[path] = end
            self._last_push = time.monotonic()
            self.rows_pushed += len(new_ids)
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


def _contiguous(pieces: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """The pieces that join into lines 0..n without a gap (a later piece after a gap is of no use)."""
    chosen, end = [], 0
    for start, stop, path in sorted(pieces):
        if start == end and stop > start:
            chosen.append((start, stop, path))
            end = stop
    return chosen


__all__ = ["ROWS_POLL_SECONDS", "RowCheckpoints", "piece_name"]
