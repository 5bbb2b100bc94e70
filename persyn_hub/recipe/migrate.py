"""`persyn migrate RECIPE`: rewrite a recipe of an older format into the current one, explicitly.

Version 1 -> 2: `labeling.alpha` weighted quality; it now weights learnability as in the paper, so the
same weighting is `1 - alpha`. Renamed keys (`config.RENAMED_KEYS`) move to their new names. Nothing is
migrated silently: `persyn run` refuses a version 1 recipe that sets alpha and points here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from persyn_hub.recipe.config import RECIPE_VERSION, RENAMED_KEYS, RecipeError, recipe_from_dict


def migrate_values(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the recipe in the current format, one line per change made)."""
    values = copy.deepcopy(values)
    changes: list[str] = []
    version = values.get("recipe_version")
    if version == RECIPE_VERSION:
        return values, changes
    labeling = values.get("labeling")
    if isinstance(labeling, dict) and "alpha" in labeling:
        old = float(labeling["alpha"])
        labeling["alpha"] = round(1.0 - old, 6)
        changes.append(
            f"labeling.alpha: {old:g} (quality weight) -> {labeling['alpha']:g} (learnability weight; "
            "same rewards)"
        )
    for old, new in RENAMED_KEYS.items():
        (section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        block = values.get(section)
        if isinstance(block, dict) and old_key in block:
            values.setdefault(new_section, {})[new_key] = block.pop(old_key)
            changes.append(f"{old} -> {new}")
    values = {"recipe_version": RECIPE_VERSION, **{k: v for k, v in values.items() if k != "recipe_version"}}
    changes.append(f"recipe_version: {version or 1} -> {RECIPE_VERSION}")
    recipe_from_dict(copy.deepcopy(values))  # the result must be a valid recipe
    return values, changes


def migrate_file(path: str | Path) -> tuple[str, list[str]]:
    """The migrated YAML text of `path` (comments are not kept) and the list of changes."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found.")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: not a recipe (a YAML mapping).")
    migrated, changes = migrate_values(values)
    return yaml.safe_dump(migrated, sort_keys=False, allow_unicode=True), changes
