"""`persyn validate FILE`: every kind of recipe the repo ships, told apart by its keys and checked by its own
parser, without loading a model, starting a run or training.

- pipeline recipe (`persyn run`): `prompts:`, `teachers:`, `student:` ... (`recipe.config.load_recipe`), and a
  local prompt file's columns, pool teachers and rows (`data.check_local_source`).
- comparison recipe (`persyn compare`): a `pipeline:` key (`compare.recipe.load_compare_recipe`), then the
  pipeline recipe it names with its `pipeline_overrides`, checked as a pipeline recipe.
- SFT config (`persyn sft --config`): `dataset_name:` / `model_name_or_path:`; every key against
  SFTScriptArguments, TRL's SFTConfig and ModelConfig (`compare.sft_config`), unknown keys refused as
  TrlParser refuses them.
- accelerate config (`accelerate launch --config_file`): `compute_environment:` / `distributed_type:`; not a
  persyn recipe, refused with the command that takes it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import yaml

from persyn_hub.compare.sft_config import MODEL, SCRIPT, check_sft_recipe, dataset_note
from persyn_hub.data_files import LOCAL_BUILDERS, check_data_file, read_text
from persyn_hub.errors import RecipeError
from persyn_hub.recipe.config import PersynRecipe, load_recipe
from persyn_hub.recipe.parsing import parse_overrides

KINDS = {
    "pipeline": "pipeline recipe",
    "comparison": "comparison recipe",
    "sft": "SFT config",
    "accelerate": "accelerate config",
}
"""Kind -> what `persyn validate` calls it in its first output line."""
ACCELERATE_KEYS = ("compute_environment", "distributed_type")
SFT_KEYS = ("dataset_name", "model_name_or_path")
COMPARISON_KEY = "pipeline"


def kind_of(values: Any) -> str:
    """The kind of a parsed YAML file: accelerate, comparison, SFT or (by default) pipeline."""

    if not isinstance(values, dict):
        return "pipeline"  # its parser says what a recipe must be
    keys = set(map(str, values))
    if keys & set(ACCELERATE_KEYS):
        return "accelerate"
    if COMPARISON_KEY in keys:
        return "comparison"
    sections = {f.name for f in dataclasses.fields(PersynRecipe)} - {"name", "seed", "env"}
    if not keys & sections and keys & set(SFT_KEYS):
        return "sft"
    return "pipeline"


def file_kind(path: str | Path) -> str:
    """The kind of the YAML file at `path`; a file that cannot be read is left to the pipeline parser, which
    names the problem."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "pipeline"
    return kind_of(values)


def _read_mapping(path: Path, what: str) -> dict[str, Any]:

    if not path.is_file():
        raise RecipeError(f"{path}: {what} not found.")
    try:
        values = yaml.safe_load(read_text(path, str(path), RecipeError))
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: an {what} is a YAML mapping of settings.")
    return values


def _check_local_prompts(recipe: Any) -> None:
    """A local prompt file (or saved data set) is read as `persyn run` reads it, so a column it lacks, a pool
    teacher without answers, an empty file, a bad row or two rows contradicting each other fail now, before
    any model loads (`persyn_hub.data`, and `datasets`, are imported only for a local source)."""

    source = Path(recipe.prompts.source)
    if source.suffix not in LOCAL_BUILDERS and not source.is_dir():
        return
    # lazy: data loads datasets and pyarrow, which this module otherwise does not
    from persyn_hub.data import load_prompts

    # lazy: prompts.source loads datasets and pyarrow, which this module otherwise does not
    from persyn_hub.prompts.source import check_local_source

    check_local_source(recipe.prompts, [t.pool_column for t in recipe.teachers if t.pool_column])
    # every row normalized and its id checked; the evaluation-item filter (which generates the packaged
    # evaluation sets) and the shuffle are left to the run
    load_prompts(dataclasses.replace(recipe.prompts, drop_eval_items=False, shuffle=False), seed=recipe.seed)


def validate_pipeline(path: Path, overrides: list[str]) -> str:

    recipe = load_recipe(path, overrides)
    _check_local_prompts(recipe)
    applied = f"; overrides {' '.join(overrides)}" if overrides else ""
    return (
        f"# pipeline recipe: {path} (keys, types, names, local paths and prompt columns checked{applied})\n"
        + recipe.to_yaml()
    )


def validate_comparison(path: Path, overrides: list[str]) -> str:
    # lazy: compare.recipe loads datasets and numpy, which this module otherwise does not
    from persyn_hub.compare.recipe import load_compare_recipe, load_pipeline_of

    compare = load_compare_recipe(path, overrides)
    pipeline = load_pipeline_of(compare, str(path))
    try:
        _check_local_prompts(pipeline)
    except RecipeError as error:
        raise RecipeError(f"{path}: pipeline ({compare.pipeline}): {error}") from None
    with_overrides = (
        f" with pipeline_overrides {json.dumps(compare.pipeline_overrides)}"
        if compare.pipeline_overrides
        else ""
    )
    return (
        f"# comparison recipe: {path} (keys, types, strategies, sft keys and the pipeline recipe checked)\n"
        + yaml.safe_dump(dataclasses.asdict(compare), sort_keys=False, allow_unicode=True)
        + f"---\n# pipeline recipe: {compare.pipeline}{with_overrides}\n"
        + pipeline.to_yaml()
    )


def validate_sft(path: Path, overrides: list[str]) -> str:

    values = _read_mapping(path, "SFT config")
    for key, value in parse_overrides(overrides):
        values[key] = value  # as text, the way TrlParser reads a command-line flag (`--save_strategy no`)
    grouped = check_sft_recipe(values, str(path))
    dataset = str(grouped[SCRIPT]["dataset_name"])
    note = dataset_note(dataset)
    local = Path(dataset).expanduser()
    if note is None and local.is_file():
        if local.suffix in LOCAL_BUILDERS:
            check_data_file(local, f"{path}: dataset_name", RecipeError)
    lines = [
        f"# SFT config: {path} (keys and types checked against SFTScriptArguments, TRL SFTConfig and "
        f"ModelConfig; nothing trained)"
    ]
    if note:
        lines.append(f"# note: {note}")
    text = "\n".join(lines) + "\n"
    for owner, settings in grouped.items():
        if settings:
            label = owner if owner in (SCRIPT, MODEL, "env") else f"TRL {owner}"
            body = {"env": settings} if owner == "env" else settings
            text += f"# {label}\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    return text


def validate_accelerate(path: Path, overrides: list[str]) -> str:
    raise RecipeError(
        f"{path}: an accelerate config (it sets {'/'.join(ACCELERATE_KEYS)}), not a persyn recipe; give it to "
        f"`accelerate launch --config_file {path} ...`, and validate the recipe it launches (e.g. persyn "
        "validate recipes/demo/sft.yaml)."
    )


VALIDATORS = {
    "pipeline": validate_pipeline,
    "comparison": validate_comparison,
    "sft": validate_sft,
    "accelerate": validate_accelerate,
}


def validate_file(path: str | Path, overrides: Optional[list[str]] = None, kind: Optional[str] = None) -> str:
    """Check the recipe at `path` with the parser of its kind (told from its keys unless `kind` is given);
    returns what `persyn validate` prints, whose first line names the kind and the file."""
    kind = kind or file_kind(path)
    return VALIDATORS[kind](Path(path), list(overrides or []))


__all__ = ["KINDS", "file_kind", "kind_of", "validate_file"]
