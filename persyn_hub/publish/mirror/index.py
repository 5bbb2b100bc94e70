"""The stages repo's index (`stages.json`): read at a revision, and a published stage merged into the index
of the branch's head, with the card rendered from the merged index (so runs sharing a repo keep every
stage)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persyn_hub.publish.mirror.card import render_stages_card
from persyn_hub.publish.mirror.layout import INDEX_FILE, describe

logger = logging.getLogger("persyn_hub")

IndexUpdate = Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, bytes | Path]]]
"""The head's index -> (the index with what a commit adds, the files that record it)."""


def copy_index(index: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of an index (plain JSON)."""
    return json.loads(json.dumps(index))


def index_at(api: Any, repo_id: str, revision: str | None) -> dict[str, Any]:
    """The repo's index at `revision` ({} when it has none); other failures are raised."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        with tempfile.TemporaryDirectory(prefix="persyn-index-") as tmp:
            path = api.hf_hub_download(
                repo_id, INDEX_FILE, repo_type="dataset", revision=revision, cache_dir=tmp
            )
            return json.loads(Path(path).read_text())
    except EntryNotFoundError:
        return {}


def read_index(api: Any, repo_id: str, revision: str | None) -> dict[str, Any]:
    """The repo's index at `revision`; {} when the repo, revision or index is missing, or the Hub cannot
    be read (named in a warning)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return index_at(api, repo_id, revision)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return {}
    except Exception as error:  # noqa: BLE001 - the Hub unreachable: run here, publish when it is back
        logger.warning(
            "Hub stages: could not read %s from %s (%s); every stage is computed here",
            INDEX_FILE, repo_id, describe(error),
        )  # fmt: skip
        return {}


def index_update(
    name: str, key: str, entry: dict[str, Any], repo_id: str, recipe_name: str, license: str
) -> IndexUpdate:
    """The update a stage commit makes to the head's index: the stage's entry under `name`/`key` (after
    every entry already there), `latest[name] = key`, and the index and card files."""

    def update(index: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes | Path]]:
        index = copy_index(index)
        order = 1 + max(
            (e.get("order", 0) for keys in index.get("stages", {}).values() for e in keys.values()),
            default=0,
        )
        index.setdefault("stages", {}).setdefault(name, {})[key] = {**entry, "order": order}
        index["latest"] = {**index.get("latest", {}), name: key}
        card = render_stages_card(index, repo_id, recipe_name, license)
        return index, {
            INDEX_FILE: (json.dumps(index, indent=2, sort_keys=True) + "\n").encode(),
            "README.md": card.encode(),
        }

    return update


__all__ = ["IndexUpdate", "copy_index", "index_at", "index_update", "read_index"]
