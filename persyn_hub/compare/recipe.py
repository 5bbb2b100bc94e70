"""The comparison recipe (`persyn compare RECIPE`): which run, which strategies, how every student is
trained and evaluated; misspelled keys fail when it is read, not after the pipeline ran."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from persyn_hub.compare.baselines import STRATEGIES
from persyn_hub.compare.sft_config import TRAINING, check_sft_values
from persyn_hub.data_files import read_text
from persyn_hub.recipe.config import RecipeError, load_recipe
from persyn_hub.recipe.dtypes import check_dtype
from persyn_hub.recipe.name_checks import check_model_name
from persyn_hub.recipe.parsing import apply_override, build_dataclass, parse_overrides


@dataclass
class EvaluationSettings:
    """How every student is evaluated (the same for all strategies)."""

    tasks: list[str] = field(default_factory=lambda: ["persyn_taskmix"])
    limit: Optional[int] = None
    max_gen_toks: int = 64
    batch_size: int = 32
    dtype: str = "float32"
    apply_chat_template: bool = True
    system_instruction: Optional[str] = None
    """None: the pipeline recipe's `prompts.system_prompt` (the students were trained with it)."""


@dataclass
class CompareRecipe:
    """A comparison: which run, which strategies, how to train and how to evaluate every student."""

    name: str = "compare"
    seed: int = 42
    pipeline: str = ""
    """The pipeline recipe to run (or reuse from its cache); its routed prompts are the training prompts."""
    pipeline_overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted recipe keys applied to `pipeline`, e.g. {labeling.num_prompts: 32}."""
    student: Optional[str] = None
    """Student to fine-tune; None: the pipeline recipe's student."""
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    strong_teacher: Optional[str] = None
    """The Strong baseline's teacher; None: the highest mean quality on the labeled prompts."""
    weak_teacher: Optional[str] = None
    """Mix's weak teacher; None: the lowest mean quality on the labeled prompts."""
    fallback_on_incorrect: int = 1
    """`persyn_verified`: at most this many extra answers per prompt when the checker rejects the routed
    one (the run's `routing.fallback_on_incorrect`, simulated on the pool every teacher answered)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """SFT seeds (data order, dropout): every strategy is trained once per seed; the intervals count the
    spread between seeds (t with seeds - 1 degrees of freedom), so one seed hides the training-run noise
    and 3 give wide intervals; 5 narrow them a lot (docs/comparison.md)."""
    intervals: bool = True
    """95% intervals over seeds and items for every cell and paired difference (`compare.intervals`)."""
    include_base_student: bool = True
    reuse_students: bool = True
    """Reuse a student another comparison of the same run already trained and evaluated on the same rows,
    settings, seed and package versions (`compare.student_cache`, under the run's `output.dir`); false
    trains every student again."""
    max_train_prompts: Optional[int] = None
    """None: every routed prompt; N: only the first N routed prompts (by prompt id) for every strategy, a
    quick check. Every student still trains whole epochs over all its rows."""
    sft: dict[str, Any] = field(default_factory=dict)
    """TRL SFTConfig keys used for every student (output_dir and seed are set per run). The budget is whole
    epochs (`num_train_epochs`, >= 1; TRL's default is 3) over each student's own set, the same for every
    strategy, so every student sees every row; `max_steps` is refused, since it would cut sets short."""
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    output_dir: str = "runs/compare"

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise RecipeError(f"strategies: unknown {unknown}; choose from {list(STRATEGIES)}.")
        if not self.strategies:
            raise RecipeError("strategies: empty; list at least one of " + ", ".join(STRATEGIES))
        if not self.pipeline:
            raise RecipeError("pipeline: set the pipeline recipe whose routed prompts the students train on.")
        if not self.seeds:
            raise RecipeError("seeds: empty; give at least one SFT seed, e.g. [0, 1].")
        if self.fallback_on_incorrect < 1:
            raise RecipeError("fallback_on_incorrect: must be >= 1 (extra answers persyn_verified may ask).")
        if self.max_train_prompts is not None and self.max_train_prompts < 1:
            raise RecipeError("max_train_prompts: must be >= 1, or null for every training prompt.")
        _check_sft_keys(self.sft)

        check_model_name(self.student, "student")
        self.evaluation.dtype = check_dtype(self.evaluation.dtype, "evaluation.dtype")


def _check_sft_keys(sft: dict[str, Any]) -> None:
    """Misspelled training keys and wrong types fail when the recipe is read, not after the pipeline ran
    (checked against TRL's SFTConfig fields, cached per TRL version: `compare.sft_config`)."""

    for key in sft:
        if key in ("output_dir", "seed"):
            raise RecipeError(f"sft.{key}: set per student by the comparison (seeds: ...); remove it.")
    check_sft_values(sft, owners=(TRAINING,), prefix="sft.")
    if float(sft.get("max_steps", -1)) > 0:
        raise RecipeError(
            "sft.max_steps: the comparison trains every student whole epochs over its own training set, the "
            "same number for every strategy, so no student skips rows; remove max_steps and set "
            "sft.num_train_epochs (>= 1)."
        )
    if float(sft.get("num_train_epochs", 1)) < 1:
        raise RecipeError("sft.num_train_epochs: must be >= 1, so every student sees all its training rows.")


def load_compare_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> CompareRecipe:
    """Read a comparison recipe YAML; `--key value` overrides as for `persyn run`."""

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: comparison recipe not found.")
    try:
        values = yaml.safe_load(read_text(path, str(path), RecipeError)) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: a comparison recipe is a YAML mapping of keys such as `pipeline:`.")
    for key, value in parse_overrides(overrides or []):
        apply_override(values, key, value)
    if "bootstrap" in values:
        raise RecipeError(
            f"{path}: bootstrap: removed; intervals no longer resample (they combine the spread between seeds "
            "and between items, docs/comparison.md). Delete the key, or set `intervals: false` to turn them off."
        )
    try:
        return build_dataclass(CompareRecipe, values, "")
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None


def pipeline_override_flags(recipe: CompareRecipe) -> list[str]:
    """`pipeline_overrides` as `persyn run` flags: {labeling.num_prompts: 32} -> [--labeling.num_prompts, 32]."""
    import json

    flags: list[str] = []
    for key, value in recipe.pipeline_overrides.items():
        flags += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return flags


def load_pipeline_of(recipe: CompareRecipe, where: str = "") -> Any:
    """The comparison's pipeline recipe with its `pipeline_overrides`, checked as `persyn run` checks it;
    a missing file or a bad key names the comparison's `pipeline` field (`where`: the comparison's file)."""

    prefix = f"{where}: " if where else ""
    if not Path(recipe.pipeline).is_file():
        raise RecipeError(
            f"{prefix}pipeline: pipeline recipe {recipe.pipeline!r} not found (paths are relative to the "
            f"directory persyn runs in, {Path.cwd()}); fix the path, e.g. recipes/demo/task-mix-smollm2.yaml."
        )
    try:
        pipeline = load_recipe(recipe.pipeline, pipeline_override_flags(recipe))
    except RecipeError as error:
        inner = str(error).removeprefix(f"{recipe.pipeline}: ")
        if inner.split(":", 1)[0] in recipe.pipeline_overrides:  # the key came from pipeline_overrides
            raise RecipeError(f"{prefix}pipeline_overrides.{inner}") from None
        raise RecipeError(f"{prefix}pipeline ({recipe.pipeline}): {inner}") from None
    names = pipeline.teacher_names()
    for key in ("strong_teacher", "weak_teacher"):
        name = getattr(recipe, key)
        if name is not None and name not in names:
            raise RecipeError(
                f"{prefix}{key}: {name!r} is not a teacher of {recipe.pipeline} (teachers: {names})."
            )
    return pipeline


__all__ = [
    "CompareRecipe",
    "EvaluationSettings",
    "load_compare_recipe",
    "load_pipeline_of",
    "pipeline_override_flags",
]
