"""Publish a finished run to the Hub: labels + routing, the router, then the personalized data set.

Each artifact is ONE commit holding all its files (parquet shards written here, the card, the chart), so a
failed push leaves the repo at its previous commit and `load_dataset` keeps working; re-running publishes
whatever is missing. `create_commit` drops files whose content the Hub already has, and a commit with no
change is skipped, so re-publishing a finished run adds no commit. Order matters: the labels and router
commits come first, so the data set card can name the exact commit shas it was built from.

    from persyn_hub.publish.hub import publish_run
    hub = publish_run(Path("runs/persyn"), recipe, summary)   # {"dataset": {"repo_id", "revision", "url"}, ...}

The token is whatever `huggingface_hub` finds (`HF_TOKEN` or `hf auth login`); it is never logged or written.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from persyn_hub.errors import PersynError
from persyn_hub.publish.cards import (
    CHART_FILE,
    comparison_card_section,
    render_dataset_card,
    render_labels_card,
    teacher_distribution_png,
)
from persyn_hub.publish.client import HubClient
from persyn_hub.publish.scrub import scrub_value
from persyn_hub.recipe.config import PersynRecipe
from persyn_hub.router.card import render_router_card
from persyn_hub.router.info import CONFIG_KEY, METRICS_FILE, RouterInfo, read_router_record

logger = logging.getLogger(__name__)

MAX_SHARD_BYTES = 500 * 1024 * 1024
ROUTER_SKIP = ("checkpoints/", "runs/", ".lock")


class PublishError(PersynError, RuntimeError):
    """A run directory lacks an artifact the recipe asks to publish."""


def parquet_shards(dataset: Dataset, folder: Path, prefix: str, split: str = "train") -> dict[str, Path]:
    """Write `dataset` as `<prefix>/<split>-0000i-of-0000n.parquet` files (the layout `push_to_hub` uses).

    Shards are cut by size, so the same data gives byte-identical files on every run.
    """
    num_shards = max(1, math.ceil(dataset.data.nbytes / MAX_SHARD_BYTES))
    files = {}
    for index in range(num_shards):
        name = f"{prefix}/{split}-{index:05d}-of-{num_shards:05d}.parquet"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.shard(num_shards, index, contiguous=True).to_parquet(str(path))
        files[name] = path
    return files


def commit_artifact(
    api: HfApi,
    repo_id: str,
    files: dict[str, bytes | Path],
    *,
    repo_type: str,
    message: str,
    private: bool = False,
    revision: str | None = None,
    replace_prefixes: tuple[str, ...] = (),
) -> dict[str, str]:
    """Create the repo/branch if needed and commit `files` in one commit; returns repo_id, revision (sha), url.

    Files under `replace_prefixes` that the new set no longer has (e.g. a shard count that shrank) are deleted in
    the same commit. When nothing differs, no commit is made and the current head is returned.
    """
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(
            path_in_repo=path, path_or_fileobj=content if isinstance(content, bytes) else str(content)
        )
        for path, content in sorted(files.items())
    ]
    if replace_prefixes:
        try:
            existing = api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            existing = []
        stale = [p for p in existing if p.startswith(replace_prefixes) and p not in files]
        operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
    info = api.create_commit(
        repo_id, operations, commit_message=message, repo_type=repo_type, revision=revision
    )
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    url = f"{api.endpoint.rstrip('/')}/{prefix}{repo_id}/tree/{info.oid}"
    logger.info("Hub %s %s at %s", repo_type, repo_id, info.oid)
    return {"repo_id": repo_id, "revision": info.oid, "url": url}


def _load(run_dir: Path, name: str) -> Dataset:
    path = run_dir / "artifacts" / name
    if not path.is_dir():
        raise PublishError(
            f"{path} is missing: the recipe names a Hub repo for it but the run did not produce it. "
            "Run `persyn run` to completion first."
        )
    return load_from_disk(str(path))


def publish_labels(
    api: HfApi, run_dir: Path, recipe: PersynRecipe, summary: dict[str, Any], workdir: Path
) -> dict[str, str]:
    """Labeled pool (config `labels`) and routing decisions (config `routing`) in one commit of the labels repo."""
    hub = recipe.output.hub
    labels = _load(run_dir, "labels")
    routing_dir = run_dir / "artifacts" / "routing"
    routing = load_from_disk(str(routing_dir)) if routing_dir.is_dir() else None
    files: dict[str, bytes | Path] = dict(parquet_shards(labels, workdir, "labels"))
    if routing is not None:
        files.update(parquet_shards(routing, workdir, "routing"))
    card = render_labels_card(
        recipe=recipe,
        summary=summary,
        labels=labels,
        routing=routing,
        repo_id=hub.labels_repo,
        hub_url=api.endpoint,
    )
    files["README.md"] = str(card).encode()
    return commit_artifact(
        api,
        hub.labels_repo,
        files,
        repo_type="dataset",
        message=f"PerSyn {recipe.name}: labeled pool and routing",
        private=hub.private,
        revision=hub.revision,
        replace_prefixes=("labels/", "routing/"),
    )


def _router_files(
    folder: Path, labels: dict[str, str] | None, repo_id: str, stages: dict[str, Any] | None = None
) -> dict[str, bytes | Path]:
    """The router folder's files as pushed: `config.json`, `router_metrics.json` and the card without
    absolute local paths or secrets (a backbone given as a local folder is one), naming the labels commit
    when it was pushed and the exact stage commits it was trained on when stages were published."""
    files: dict[str, bytes | Path] = {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part in path.relative_to(folder).as_posix() for part in ROUTER_SKIP)
    }
    config_path = folder / "config.json"
    if not config_path.is_file():
        return files
    config = scrub_value(json.loads(config_path.read_text()))
    try:
        RouterInfo.of(config)
    except ValueError:
        return files  # not a router this package saved: its files as they are
    if labels:
        # a legacy router (model_type persyn_router) keeps these at the top level
        entry = config.get(CONFIG_KEY, config)
        entry.update(label_repo=labels["repo_id"], label_revision=labels["revision"])
    record = scrub_value(read_router_record(folder))
    files["config.json"] = _json_bytes(config)
    if record:
        files[METRICS_FILE] = _json_bytes(record)
    card = render_router_card(
        RouterInfo.of(config),
        record.get("metrics") or {},
        repo_id=repo_id,
        settings=record.get("settings"),
        seed=record.get("seed"),
        stages=stages,
    )
    files["README.md"] = str(card).encode()
    return files


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()


def publish_router(
    api: HfApi,
    run_dir: Path,
    recipe: PersynRecipe,
    labels: dict[str, str] | None,
    stages: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The `save_pretrained` router folder as a model repo, in one commit."""
    hub = recipe.output.hub
    folder = run_dir / "artifacts" / "router"
    if not (folder / "config.json").is_file():
        raise PublishError(
            f"{folder} has no config.json: it is not a saved router (save_router/save_pretrained)."
        )
    return commit_artifact(
        api,
        hub.router_repo,
        _router_files(folder, labels, hub.router_repo, stages),
        repo_type="model",
        message=f"PerSyn {recipe.name}: router",
        private=hub.private,
        revision=hub.revision,
    )


def publish_dataset(
    api: HfApi,
    run_dir: Path,
    recipe: PersynRecipe,
    summary: dict[str, Any],
    workdir: Path,
    labels: dict[str, str] | None = None,
    router: dict[str, str] | None = None,
) -> dict[str, str]:
    """The SFT-ready set: `data/train-*.parquet`, the card and the teacher chart, in one commit."""
    hub = recipe.output.hub
    dataset = _load(run_dir, "dataset")
    files: dict[str, bytes | Path] = dict(parquet_shards(dataset, workdir, "data"))
    card = render_dataset_card(
        recipe=recipe,
        summary=summary,
        dataset=dataset,
        repo_id=hub.dataset_repo,
        revision=hub.revision,
        labels_repo=(labels or {}).get("repo_id"),
        labels_revision=(labels or {}).get("revision"),
        router_repo=(router or {}).get("repo_id") or recipe.routing.reuse_router,
        router_revision=(router or {}).get("revision"),
        chart_file=CHART_FILE,
        hub_url=api.endpoint,
        comparison=comparison_card_section(run_dir),
    )
    files["README.md"] = str(card).encode()
    counts = summary.get("teacher_counts") or {}
    files[CHART_FILE] = teacher_distribution_png(counts)
    return commit_artifact(
        api,
        hub.dataset_repo,
        files,
        repo_type="dataset",
        message=f"PerSyn {recipe.name}: personalized data set",
        private=hub.private,
        revision=hub.revision,
        replace_prefixes=("data/",),
    )


def _client() -> HfApi:
    """`HfApi` whose commits are retried past 429/5xx, honouring `Retry-After` (`publish.client`)."""

    return HubClient()


def publish_run(
    run_dir: Path, recipe: PersynRecipe, summary: dict[str, Any], *, api: HfApi | None = None
) -> dict[str, dict[str, str]]:
    """Push every repo the recipe names; returns `{artifact: {repo_id, revision (commit sha), url}}`.

    Artifacts: `labels` and `routing` (the same commit of `hub.labels_repo`), `router`, `dataset`. `api` defaults
    to `publish.client.HubClient()` (an `HfApi` that retries 429/5xx; endpoint from `HF_ENDPOINT`, token from
    `HF_TOKEN` / `hf auth login`).
    """
    run_dir = Path(run_dir)
    hub = recipe.output.hub
    api = api or _client()
    published: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="persyn-publish-") as tmp:
        workdir = Path(tmp)
        labels = None
        if hub.labels_repo:
            labels = publish_labels(api, run_dir, recipe, summary, workdir)
            published["labels"] = labels
            if (run_dir / "artifacts" / "routing").is_dir():
                published["routing"] = dict(labels)
        router = None
        if hub.router_repo:
            router = publish_router(api, run_dir, recipe, labels, (summary.get("hub") or {}).get("stages"))
            published["router"] = router
        if hub.dataset_repo:
            published["dataset"] = publish_dataset(api, run_dir, recipe, summary, workdir, labels, router)
    return published


__all__ = [
    "PublishError",
    "commit_artifact",
    "parquet_shards",
    "publish_dataset",
    "publish_labels",
    "publish_router",
    "publish_run",
]
