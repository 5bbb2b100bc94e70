"""A finished stage folder as the files of its commit, and back.

`stage_upload` turns a stage folder into the files pushed under `<config>/<key>/` (the data set as Parquet
shards, one config per stage; side files scrubbed of local paths and credentials; the manifest) and the
stage's index entry. `unpack_stage` turns a downloaded copy back into the stage folder: the data folder
rebuilt from the Parquet shards, the `_SUCCESS` marker last, so a cut download is no stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from persyn_hub.folders import EMPTY_MARKER, SUCCESS, folder_digest, load_dataset_folder, save_dataset_folder
from persyn_hub.publish.mirror.card import columns, type_text
from persyn_hub.publish.mirror.identity import public_identity
from persyn_hub.publish.mirror.layout import MANIFEST_FILE, config_name
from persyn_hub.publish.scrub import scrub_text, scrub_value

SKIPPED_PARTS = ("chunks",)
TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".txt", ".md")


def stage_files(folder: Path) -> dict[str, Path]:
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


def scrubbed_errors(dataset: Any) -> Any:
    """`dataset` with credentials masked in its `error` column (a failed request may quote its URL)."""

    if "error" not in dataset.column_names or getattr(dataset.features["error"], "dtype", None) != "string":
        return dataset
    if all(scrub_text(e) == e for e in dataset["error"] if e):
        return dataset
    return dataset.map(
        lambda batch: {"error": [scrub_text(e) if e else e for e in batch["error"]]},
        batched=True,
        keep_in_memory=True,
    )


def public_file(relative: str, path: Path) -> bytes | Path:
    """A stage's side file as it is pushed: JSON and text scrubbed of local paths, credentials and tokens
    (a server's message in `stats.json` may quote its URL). The data and a folder stage's output, which the
    marker vouches for, go as they are."""

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


def rebuild_data(parquet: list[Path], target: Path) -> None:
    """The stage's data folder (`save_to_disk`) from its Parquet shards (features from their metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    table = pa.concat_tables([pq.read_table(str(path)) for path in parquet])
    save_dataset_folder(Dataset(table), target)


def stage_upload(
    stage: Any, key: str, folder: Path, inputs: dict[str, dict[str, str]], tmp: Path
) -> tuple[dict[str, bytes | Path], dict[str, Any]]:
    """The files of the stage's commit (repo path -> content; Parquet shards are written under `tmp`, which
    must outlive the commit) and the stage's index entry."""
    # lazy: publish.hub loads huggingface_hub, which this module otherwise does not
    from persyn_hub.publish.hub import parquet_shards

    name = stage.name
    prefix = f"{config_name(name)}/{key}"
    marker = json.loads((folder / SUCCESS).read_text())
    kind = "folder" if getattr(stage, "folder", False) else "dataset"
    files: dict[str, bytes | Path] = {
        f"{prefix}/{rel}": public_file(rel, path) for rel, path in stage_files(folder).items()
    }
    entry: dict[str, Any] = {
        "config": config_name(name),
        "key": key,
        "identity": public_identity(stage.identity),
        "inputs": inputs,
        "rows": marker.get("rows"),
        "kind": kind,
    }
    if kind == "dataset":
        data = folder / "data"
        if (data / EMPTY_MARKER).is_file():  # 0 rows (a teacher routed no prompt): no config, since
            features = json.loads((data / EMPTY_MARKER).read_text())  # `datasets` loads no empty file
            entry["columns"] = {column: type_text(spec) for column, spec in features.items()}
        else:  # the data set as `push_to_hub` writes it: Parquet shards, one config per stage
            files = {path: value for path, value in files.items() if not path.startswith(f"{prefix}/data/")}
            dataset = scrubbed_errors(load_dataset_folder(data))
            files.update(parquet_shards(dataset, tmp, f"{prefix}/data"))
            entry["data_files"] = f"{prefix}/data/train-*.parquet"
            entry["columns"] = columns(data)
    manifest = entry | {"stage": name}
    files[f"{prefix}/{MANIFEST_FILE}"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return files, entry


def unpack_stage(source: Path, folder: Path, restored_from: str) -> None:
    """Move a downloaded stage copy (`source`, holding `_SUCCESS`) into `folder`: its data rebuilt from the
    Parquet shards, the marker last (`restored_from` names the repo and revision it came from)."""

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
    rebuild_data(parquet, folder / "data")
    # The marker vouches for the rebuilt files; the digest later keys chain on stays the one of the
    # files the stage wrote where it ran (`StageCache.output_digest` reads `digest_files`).
    marker = json.loads((source / SUCCESS).read_text())
    marker["digest_files"] = marker.get("digest_files") or marker.get("files")
    marker["files"] = folder_digest(folder / "data")
    marker["restored_from"] = restored_from
    partial = folder / f"{SUCCESS}.partial"
    partial.write_text(json.dumps(marker))
    partial.replace(folder / SUCCESS)  # last: the stage is whole


__all__ = ["public_file", "rebuild_data", "scrubbed_errors", "stage_files", "stage_upload", "unpack_stage"]
