"""A published stage downloaded from the stages repo into its stage folder (`--resume-from-hub`, or a run
that finds its stage on the Hub): only the stage's `<config>/<key>/` files, unpacked by
`stage_data.unpack_stage` (the `_SUCCESS` marker last, so a cut download is no stage)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from persyn_hub.folders import SUCCESS
from persyn_hub.publish.mirror.layout import config_name
from persyn_hub.publish.mirror.stage_data import unpack_stage


def download_stage(
    api: Any, repo_id: str, revision: str | None, name: str, key: str, folder: Path, run_dir: Path
) -> None:
    """Download stage `name` under `key` from `repo_id` at `revision` into `folder` (the download waits in
    a temporary folder under `run_dir`); raises when the repo has no whole copy of it."""
    from huggingface_hub import snapshot_download

    prefix = f"{config_name(name)}/{key}"
    with tempfile.TemporaryDirectory(prefix="persyn-restore-", dir=run_dir) as tmp:
        snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=[f"{prefix}/*"],
            local_dir=tmp,
            endpoint=api.endpoint,
            token=api.token,
        )
        source = Path(tmp) / prefix
        if not (source / SUCCESS).is_file():
            raise FileNotFoundError(f"{prefix}/{SUCCESS} is not in the repo")
        unpack_stage(source, folder, f"{repo_id}@{revision or 'main'}")


__all__ = ["download_stage"]
