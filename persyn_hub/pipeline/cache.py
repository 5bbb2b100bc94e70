"""Stage outputs on disk, keyed by what produced them, so a re-run reuses instead of recomputing.

A stage's key chains its own parameters with the keys of the stages it reads, so changing `alpha`
re-runs `combine` and everything after it, and nothing before. Each stage writes into
`stages/<name>-<key>/`: the data set is saved to a temporary folder and renamed into place, then a
`_SUCCESS` marker is written, so a crash never leaves an output that looks finished. The marker holds
the sha256 of every output file, so a damaged cache is reported instead of read as wrong data.
Generation checkpoints its rows in a folder of its own (`stages/rows--<teacher>-<key>/`, see
`pipeline/run.py`), kept across crashes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from persyn_hub.errors import PersynError
from persyn_hub.fingerprint import fingerprint
from persyn_hub.folders import (
    SUCCESS,
    file_digest,
    folder_digest,
    load_dataset_folder,
    save_dataset_folder,
    write_folder_whole,
)

logger = logging.getLogger(__name__)


class CorruptCacheError(PersynError, RuntimeError):
    """A finished-looking stage folder cannot be read back."""


@dataclass
class StageRecord:
    name: str
    seconds: float
    cached: bool
    key: str
    computed_seconds: float | None = None
    """How long the stage took when it was computed (from its marker); None for markers written before
    they held it. A cached stage's `seconds` is only the reload, so costs read this one."""


def _corrupt(folder: Path, problem: str) -> CorruptCacheError:
    return CorruptCacheError(
        f"The cached stage {folder} is unreadable ({problem}). Delete that folder and run again; only this "
        "stage will be recomputed (generated rows are kept apart, in stages/rows--*, and reused)."
    )


@dataclass
class StageCache:
    root: Path
    records: list[StageRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "stages").mkdir(parents=True, exist_ok=True)

    def key(self, name: str, *parts: Any) -> str:
        return fingerprint(name, *parts)

    def folder(self, name: str, key: str) -> Path:
        return self.root / "stages" / f"{name.replace('/', '--')}-{key}"

    def is_done(self, name: str, key: str) -> bool:
        return (self.folder(name, key) / SUCCESS).is_file()

    def output_digest(self, name: str, key: str) -> str:
        """A digest of a finished stage's output files (from its marker): what later stages' keys chain on.

        `state.json` is left out: it holds the `datasets` fingerprint, which records HOW rows were
        computed; identical rows from a differently parameterized stage must chain as identical."""
        marker = json.loads((self.folder(name, key) / SUCCESS).read_text())
        # a stage restored from the Hub's Parquet copy chains on the files it had where it ran
        files = {
            file: digest
            for file, digest in (marker.get("digest_files") or marker.get("files") or {}).items()
            if Path(file).name != "state.json"
        }
        return fingerprint(name, files or key)

    def failed_rows(self, name: str, key: str) -> int:
        """Rows of a finished stage that carry an `error` (0 when it has no such column)."""
        dataset = self._load(self.folder(name, key))
        if "error" not in dataset.column_names:
            return 0
        return sum(1 for error in dataset["error"] if error is not None)

    def forget(self, name: str, key: str) -> None:
        """Unmark a finished stage so the next `dataset_stage` call computes it again."""
        (self.folder(name, key) / SUCCESS).unlink(missing_ok=True)

    def _verify(self, folder: Path, output: Path) -> None:
        """Raise `CorruptCacheError` when the files under `output` are not the ones `_SUCCESS` vouches for."""
        try:
            expected = json.loads((folder / SUCCESS).read_text()).get("files")
        except (OSError, ValueError, AttributeError) as error:
            raise _corrupt(folder, f"{SUCCESS}: {type(error).__name__}: {error}") from error
        if expected is None:
            return  # written before markers held checksums
        # Files added later (`datasets` cache files next to a loaded set) are not the stage's output.
        damaged = sorted(name for name, digest in expected.items() if file_digest(output / name) != digest)
        if damaged:
            raise _corrupt(
                folder, f"{damaged[:5]} under {output.name}/ changed or went missing since it was written"
            )

    def _load(self, folder: Path) -> Dataset:
        self._verify(folder, folder / "data")
        try:
            return load_dataset_folder(folder / "data")
        except Exception as error:  # noqa: BLE001 - any unreadable cache is reported the same way
            raise _corrupt(folder, f"{type(error).__name__}: {error}") from error

    def load_finished(self, name: str, key: str, *, folder_output: bool = False) -> Dataset | Path:
        """A finished stage's output, checked against its marker, without recording a stage run."""
        folder = self.folder(name, key)
        if folder_output:
            self._verify(folder, folder / "output")
            return folder / "output"
        return self._load(folder)

    def dataset_stage(
        self,
        name: str,
        key: str,
        compute: Callable[[Path], Dataset],
        started: float | None = None,
    ) -> Dataset:
        """Load `name`'s output for `key`, or compute it, save it atomically and mark it done.

        `compute` gets the stage folder (for checkpoints); a crash before the marker leaves the stage
        unfinished, so the next run enters it again and resumes from those checkpoints. `started`: when
        the stage's work began (`time.perf_counter()`), if before this call (a chunked stage computes its
        chunks first, then joins them here); its seconds count from there.
        """
        folder = self.folder(name, key)
        announced, started = started is not None, started if started is not None else time.perf_counter()
        if (folder / SUCCESS).is_file():
            dataset = self._load(folder)
            self._record_reuse(name, key, folder, started)
            logger.info("stage %s: cached (%s)", name, folder)
            return dataset
        if not announced:
            logger.info("stage %s: started (%s)", name, folder)
        folder.mkdir(parents=True, exist_ok=True)
        dataset = compute(folder)
        save_dataset_folder(dataset, folder / "data")
        dataset = load_dataset_folder(folder / "data")
        seconds = time.perf_counter() - started
        marker = {
            "key": key,
            "rows": len(dataset),
            "files": folder_digest(folder / "data"),
            "seconds": seconds,
        }
        (folder / SUCCESS).write_text(json.dumps(marker))
        self.records.append(StageRecord(name, seconds, False, key, seconds))
        return dataset

    def _record_reuse(self, name: str, key: str, folder: Path, started: float) -> None:
        computed = json.loads((folder / SUCCESS).read_text()).get("seconds")
        self.records.append(StageRecord(name, time.perf_counter() - started, True, key, computed))

    def folder_stage(self, name: str, key: str, compute: Callable[[Path], None]) -> Path:
        """Like `dataset_stage` for outputs that are a folder (a trained router)."""
        folder = self.folder(name, key)
        started = time.perf_counter()
        output = folder / "output"
        if (folder / SUCCESS).is_file():
            self._verify(folder, output)
            self._record_reuse(name, key, folder, started)
            logger.info("stage %s: cached (%s)", name, folder)
            return output
        logger.info("stage %s: started (%s)", name, folder)

        def write(staging: Path) -> None:
            staging.mkdir(parents=True)
            compute(staging)

        write_folder_whole(output, write)
        seconds = time.perf_counter() - started
        (folder / SUCCESS).write_text(
            json.dumps({"key": key, "files": folder_digest(output), "seconds": seconds})
        )
        self.records.append(StageRecord(name, seconds, False, key, seconds))
        return output

    def write_json(self, name: str, key: str, filename: str, payload: Any) -> None:
        path = self.folder(name, key) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, path)

    def read_json(self, name: str, key: str, filename: str) -> Any:
        path = self.folder(name, key) / filename
        return json.loads(path.read_text()) if path.is_file() else None

    def summary(self) -> list[dict[str, Any]]:
        """Per stage: this run's seconds, whether it was reused, and the seconds it took when computed."""
        return [
            {
                "name": r.name,
                "seconds": round(r.seconds, 2),
                "cached": r.cached,
                "computed_seconds": None if r.computed_seconds is None else round(r.computed_seconds, 2),
            }
            for r in self.records
        ]
