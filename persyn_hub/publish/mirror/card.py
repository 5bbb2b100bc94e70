"""The stages repo's card (README.md): one config per published data set stage, every key, and what
each column means; and the column types a stage's index entry lists for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from persyn_hub.model_cards import template_path
from persyn_hub.publish.mirror.layout import config_name


def columns(data: Path) -> dict[str, str]:
    info = data / "dataset_info.json"
    if not info.is_file():
        return {}
    features = json.loads(info.read_text()).get("features") or {}
    return {column: type_text(spec) for column, spec in features.items()}


def type_text(spec: Any) -> str:
    if isinstance(spec, dict):
        if spec.get("_type") == "Value":
            return str(spec.get("dtype"))
        if spec.get("_type") in ("List", "Sequence", "LargeList"):
            return f"list[{type_text(spec.get('feature'))}]"
        return spec.get("_type") or "struct"
    if isinstance(spec, list):
        return f"list[{type_text(spec[0]) if spec else ''}]"
    return str(spec)


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


__all__ = ["COLUMN_DOCS", "columns", "render_stages_card", "type_text"]
