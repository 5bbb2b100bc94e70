"""The stages repo's names and layout, shared by the mirror that writes it, the rows it holds and its card.

The repo (`output.hub.stages_repo`, default `<dataset_repo>-stages`, created private) holds, per stage,
its files under `<config>/<key>/` (config = the stage name with `/` as `--`: `learnability`,
`label-generate--<teacher>`):

    <config>/<key>/_SUCCESS                      the marker, with every output file's sha256
    <config>/<key>/data/train-*.parquet          the data set, as `push_to_hub` writes it
                                                 (`load_dataset(repo, "<config>")` reads it)
    <config>/<key>/persyn-stage.json             key, identity (the recipe fields behind the key), inputs' keys
    <config>/<key>/...                           the stage's side files (stats.json, a router's folder, ...)
    rows/rows--<teacher>-<key>/<part>.lines-<first>-<end>.jsonl
                                                 generation rows pushed while a stage runs, each line once
    stages.json, README.md                       the index of published stages and the card (configs, keys)

A restore rebuilds the stage folder's `data/` from the Parquet shards; its marker keeps the digests of the
files the stage wrote (`digest_files`), so every later key matches. An older version's push (`data/*.arrow`,
whole row part files) is restored as well.

`describe` is how a failed Hub call is named in the log (one line, the token and URL credentials masked),
`where` how a repo's branch is.
"""

from __future__ import annotations

from typing import Any

from persyn_hub.errors import PersynError
from persyn_hub.publish.scrub import scrub_text

INDEX_FILE = "stages.json"
MANIFEST_FILE = "persyn-stage.json"
ROWS_DIR = "rows"


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


def where(repo_id: str, revision: str | None) -> str:
    """`repo@branch` as the log names a repo's branch (`main` when none is set)."""
    return f"{repo_id}@{revision or 'main'}"


def describe(error: BaseException) -> str:
    # lazy: generation.auth loads huggingface_hub, which this module otherwise does not
    from persyn_hub.generation.auth import redact

    text = str(error).splitlines()[0][:300] if str(error) else ""
    return scrub_text(redact(f"{type(error).__name__}: {text}"))


__all__ = [
    "INDEX_FILE",
    "MANIFEST_FILE",
    "ROWS_DIR",
    "StagesRepoError",
    "config_name",
    "describe",
    "parse_repo_revision",
    "stages_repo",
    "where",
]
