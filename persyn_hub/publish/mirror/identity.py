"""A stage's identity as the stages repo records it, and why a published key is not this run's key: the
identity fields and inputs that differ, named in the log when a stage is computed again."""

from __future__ import annotations

import json
from typing import Any

from persyn_hub.fingerprint import plain_value
from persyn_hub.publish.scrub import scrub_value


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


def public_identity(identity: Any) -> Any:
    """A stage identity as the repo records it: plain, without local paths or credentials."""

    return scrub_value(plain_value(identity))


def latest_key(published: dict[str, Any]) -> str:
    """The key of a stage the repo published last (highest `order`)."""
    return max(published, key=lambda k: published[k].get("order", 0))


def key_differences(stage: Any, inputs: dict, published: dict[str, Any], index: dict[str, Any]) -> str:
    """What differs between this run's stage and the repo's latest key of it (identity, inputs); `published`
    is the index's keys of the stage, `index` the whole index (the stages it has, when it has not this one)."""
    if not published:
        names = sorted(index.get("stages", {}))
        return f"the repo has no stage {stage.name}" + (f"; it has {', '.join(names)}" if names else "")
    latest = published[latest_key(published)]
    lines = identity_differences(latest.get("identity"), public_identity(stage.identity))
    for input_name in sorted(set(latest.get("inputs", {})) | set(inputs)):
        theirs = (latest.get("inputs", {}).get(input_name) or {}).get("digest")
        ours = (inputs.get(input_name) or {}).get("digest")
        if theirs != ours:
            lines.append(f"input {input_name} differs (its content digest {theirs} -> {ours})")
    return "; ".join(lines) or "the stage's key derivation changed"


__all__ = ["identity_differences", "key_differences", "latest_key", "public_identity"]
