"""The final publish of a finished run, at the end of `persyn run` or again by itself (`persyn publish DIR`).

`persyn run` writes `summary.json` first, then publishes (labels, router, data set: `publish.hub`), then
writes `summary.json` again with the repos' commits and the run's Hub traffic (`hub.commits`,
`hub.bytes_uploaded`, `hub.retries`, `hub.rate_limited`: stage pushes, row checkpoints and the final publish
together). A failed publish leaves the finished run and its summary on disk and stops with one line that
says to run `persyn publish DIR`, which publishes the run again from `DIR/recipe.yaml` (the recipe the run
saved; `--output.hub.*` overrides allowed) and `DIR/summary.json`, computing nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from persyn_hub.errors import PersynError
from persyn_hub.publish.mirror.layout import describe
from persyn_hub.recipe.config import load_recipe

logger = logging.getLogger("persyn_hub")

TRAFFIC_KEYS = ("commits", "bytes_uploaded", "retries", "rate_limited")


class PublishFailedError(PersynError, RuntimeError):
    """The final publish of a finished run failed; the run's outputs and summary are on disk."""


class NotAFinishedRunError(PersynError, ValueError):
    """`persyn publish DIR`: DIR holds no finished run."""


def wants_publish(recipe: Any) -> bool:
    hub = recipe.output.hub
    return any([hub.labels_repo, hub.dataset_repo, hub.router_repo])


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    path = Path(run_dir) / "summary.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    partial.replace(path)


def add_traffic(summary: dict[str, Any], traffic: Any) -> None:
    """Add the client's counts to `summary["hub"]` (a `persyn publish` adds to what the run counted)."""
    if traffic is None:
        return
    hub = summary.setdefault("hub", {})
    for key, value in traffic.as_dict().items():
        hub[key] = int(hub.get(key) or 0) + value


def publish_finished_run(
    run_dir: Path, recipe: Any, summary: dict[str, Any], api: Any = None
) -> dict[str, Any]:
    """Publish the run's artifacts to the repos the recipe names, record them (and the traffic) in the
    summary and write it; `PublishFailedError` (one line, the fix) when a push fails."""
    # lazy: publish.client loads huggingface_hub, which this module otherwise does not
    from persyn_hub.publish.client import HubClient, HubTraffic

    # lazy: publish.hub loads datasets and huggingface_hub, which this module otherwise does not
    from persyn_hub.publish.hub import PublishError, publish_run

    run_dir = Path(run_dir)
    api = api or HubClient(traffic=HubTraffic())
    counted = getattr(api, "traffic", None)
    before = counted.as_dict() if counted is not None else {}
    try:
        published = publish_run(run_dir, recipe, summary, api=api)
    except PublishError:
        raise
    except Exception as error:  # noqa: BLE001 - every failure gets the same one line and fix
        raise PublishFailedError(
            f"output.hub: publishing {run_dir} failed ({describe(error)}); the run is complete and "
            f"{run_dir / 'summary.json'} is written. Fix: check the token and the network, then run "
            f"`persyn publish {run_dir}` to publish it again (nothing is computed again)."
        ) from None
    hub = summary.setdefault("hub", {})
    hub.update(published)
    if counted is not None:
        now = counted.as_dict()
        for key in TRAFFIC_KEYS:
            hub[key] = int(hub.get(key) or 0) + now.get(key, 0) - before.get(key, 0)
    write_summary(run_dir, summary)
    return summary


def publish_again(
    output_dir: str | Path, overrides: list[str] | None = None, api: Any = None
) -> dict[str, Any]:
    """`persyn publish OUTPUT_DIR`: the run's saved recipe (with `overrides`) and summary, published again."""

    run_dir = Path(output_dir)
    recipe_path, summary_path = run_dir / "recipe.yaml", run_dir / "summary.json"
    for path, why in ((recipe_path, "the recipe a run saves"), (summary_path, "written when a run finishes")):
        if not path.is_file():
            raise NotAFinishedRunError(
                f"persyn publish: {path} is missing ({why}): {run_dir} is not a finished run's output.dir. "
                "Fix: give the output.dir of a run that finished, or run `persyn run RECIPE` to completion first."
            )
    recipe = load_recipe(str(recipe_path), [*(overrides or []), "--output.dir", str(run_dir)])
    if not wants_publish(recipe):
        raise NotAFinishedRunError(
            f"persyn publish: {recipe_path} names no repo to publish to. Fix: set one, e.g. "
            "--output.hub.dataset_repo ORG/NAME (also labels_repo, router_repo)."
        )
    summary = json.loads(summary_path.read_text())
    return publish_finished_run(run_dir, recipe, summary, api=api)


__all__ = [
    "NotAFinishedRunError",
    "PublishFailedError",
    "add_traffic",
    "publish_again",
    "publish_finished_run",
    "wants_publish",
    "write_summary",
]
