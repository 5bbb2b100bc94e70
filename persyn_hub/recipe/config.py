"""A recipe: one YAML file describes one PerSyn run.

`PersynRecipe` holds one dataclass per section (`recipe/sections.py`); `load_recipe` reads the YAML and
`--key value` overrides through `recipe/parsing.py` (every key checked, misspellings named with the
closest valid key: `persyn run RECIPE --labeling.alpha 0.2 --teachers.0.generation.max_new_tokens 32`),
then `validate_recipe` runs the cross-field checks, each naming the key at fault and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from persyn_hub.data_files import read_text
from persyn_hub.errors import RecipeError
from persyn_hub.recipe.name_checks import check_model_name, check_prompts_source, check_task_names
from persyn_hub.recipe.parsing import RENAMED_KEYS, apply_override, build_dataclass, parse_overrides
from persyn_hub.recipe.sections import (
    REASONING_GYM,
    FewShotExample,
    GenerationConfig,
    HubConfig,
    LabelingConfig,
    LaunchConfig,
    OutputConfig,
    PoolConfig,
    ProceduralTask,
    PromptsConfig,
    QualityConfig,
    RouterSettings,
    RoutingConfig,
    StudentConfig,
    TeacherConfig,
)

SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY")


RECIPE_VERSION = 2
"""Version 2: `labeling.alpha` weights LEARNABILITY (the paper's r = (1 - alpha) * quality + alpha *
learnability, default 0.4); version 1 recipes used it for quality. `persyn migrate` rewrites a version 1
recipe."""


@dataclass
class PersynRecipe:
    name: str = "persyn"
    recipe_version: int = RECIPE_VERSION
    """Recipe format; 2 = `labeling.alpha` weights learnability (see RECIPE_VERSION)."""
    seed: int = 42
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    quality: QualityConfig = field(default_factory=QualityConfig)
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    router: RouterSettings = field(default_factory=RouterSettings)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set before the run (like TRL's `env:` block); never put tokens here."""

    def __post_init__(self) -> None:
        validate_recipe(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def teacher_names(self) -> list[str]:
        return [teacher.name for teacher in self.teachers]


def validate_recipe(recipe: PersynRecipe) -> None:
    """Cross-field checks; each failure says which key is wrong and how to fix it."""
    from persyn_hub.generation.backends import BACKENDS  # lazily: the generation package imports this module
    from persyn_hub.recipe.dtypes import check_dtype  # lazily: dtypes imports RecipeError from here

    recipe.student.dtype = check_dtype(recipe.student.dtype, "student.dtype")
    recipe.quality.dtype = check_dtype(recipe.quality.dtype, "quality.dtype")
    if len(recipe.teachers) < 2:
        raise RecipeError(
            f"teachers: the pool has {len(recipe.teachers)} teacher(s); PerSyn routes between at least 2. "
            "Add entries under `teachers:`."
        )
    names = recipe.teacher_names()
    for index, teacher in enumerate(recipe.teachers):
        where = f"teachers[{index}] ({teacher.name!r})"
        if not teacher.name or not teacher.name.strip():
            raise RecipeError(f"teachers[{index}].name: empty; give every teacher a unique name.")
        if names.count(teacher.name) > 1:
            raise RecipeError(f"{where}.name: {teacher.name!r} is used twice; teacher names must be unique.")
        backend = BACKENDS.get(teacher.backend)  # None for `auto`
        answers_from_data = bool(backend and backend.answers_from_data) or recipe.prompts.pool is not None
        if not teacher.model and not teacher.endpoints and not answers_from_data:
            raise RecipeError(f"{where}: set `model` (local) or `endpoints` (served teacher).")
        if backend is not None and backend.needs_endpoints and not teacher.endpoints:
            raise RecipeError(f"{where}.endpoints: backend is {backend.name!r} but no endpoint URL is given.")
        if backend is not None and backend.needs_model and not teacher.model:
            raise RecipeError(f"{where}.model: backend {backend.name!r} needs a model id or path.")
        if teacher.prompt_format == "completion" and "{prompt}" not in teacher.completion_template:
            raise RecipeError(f"{where}.completion_template: must contain '{{prompt}}'.")
        if teacher.generation.max_new_tokens <= 0:
            raise RecipeError(f"{where}.generation.max_new_tokens: must be positive.")
        if teacher.max_concurrency <= 0 or teacher.batch_size <= 0:
            raise RecipeError(f"{where}: max_concurrency and batch_size must be positive.")
        teacher.dtype = check_dtype(teacher.dtype, f"{where}.dtype")
    if not 0.0 <= recipe.labeling.alpha <= 1.0:
        raise RecipeError(f"labeling.alpha: {recipe.labeling.alpha} is outside [0, 1].")
    if recipe.labeling.num_prompts < 2:
        raise RecipeError("labeling.num_prompts: the router needs at least 2 labeled prompts.")
    validate_labeling_design(recipe)
    if recipe.prompts.num_prompts is not None and recipe.prompts.num_prompts < recipe.labeling.num_prompts:
        raise RecipeError(
            f"prompts.num_prompts ({recipe.prompts.num_prompts}) is smaller than labeling.num_prompts "
            f"({recipe.labeling.num_prompts}); the labeled subset is drawn from the routed prompts."
        )
    if recipe.quality.kind == "reward_model" and not recipe.quality.reward_model:
        raise RecipeError("quality.reward_model: quality.kind is 'reward_model' but no model is named.")
    if recipe.quality.kind == "math_answer" and not recipe.prompts.answer_column:
        raise RecipeError("prompts.answer_column: the math_answer verifier needs the gold answer column.")
    check_prompts_source(recipe.prompts.source)
    unknown = sorted(set(recipe.routing.budgets) - set(names))
    if unknown:
        raise RecipeError(f"routing.budgets: unknown teacher(s) {unknown}; the pool is {names}.")
    for name, share in recipe.routing.budgets.items():
        if not 0.0 <= float(share) <= 1.0:
            raise RecipeError(f"routing.budgets.{name}: {share} is not a share in [0, 1].")
    for key in recipe.env:
        if any(word in key.upper() for word in SECRET_WORDS):
            raise RecipeError(
                f"env.{key}: secrets do not belong in a recipe (recipes are saved with the run and pushed "
                "to the Hub). Use `hf auth login` or export the variable in your shell instead."
            )
    if recipe.launch.timeout <= 0:
        raise RecipeError(f"launch.timeout: {recipe.launch.timeout} must be a positive number of seconds.")
    if recipe.launch.stall_timeout <= 0:
        raise RecipeError(
            f"launch.stall_timeout: {recipe.launch.stall_timeout} must be a positive number of seconds "
            "(longer than the slowest model load or batch; default 1800)."
        )
    if recipe.launch.chunk_rows < 1:
        raise RecipeError(f"launch.chunk_rows: {recipe.launch.chunk_rows} must be at least 1.")
    validate_splits(recipe.router)
    validate_verified_routing(recipe)
    validate_sources(recipe)
    if recipe.routing.reuse_router and recipe.output.hub.router_repo:
        raise RecipeError(
            "output.hub.router_repo: this recipe routes with a given router (routing.reuse_router) and trains "
            "none, so there is no router to publish. Remove one of the two."
        )


def verifiable_quality(quality: QualityConfig) -> bool:
    """Does every row's quality come from a checker (full marks = verified correct)?"""
    if quality.kind in ("math_answer", "instruction_following", "reasoning_gym"):
        return True
    return quality.kind == "auto" and not quality.reward_model and not quality.column


def validate_verified_routing(recipe: PersynRecipe) -> None:
    """Fallback on incorrect answers and dropping them need a checker, not a reward model's score."""
    fallback, drop = recipe.routing.fallback_on_incorrect, recipe.output.drop_incorrect
    if fallback < 0:
        raise RecipeError(
            f"routing.fallback_on_incorrect: {fallback} must be 0 (off) or more extra generations."
        )
    if (fallback or drop) and not verifiable_quality(recipe.quality):
        key = "routing.fallback_on_incorrect" if fallback else "output.drop_incorrect"
        raise RecipeError(
            f"{key}: needs a verifiable quality.kind (math_answer, instruction_following, reasoning_gym, or auto "
            f"without a reward model or score column), not {recipe.quality.kind!r}."
        )
    if fallback and fallback >= len(recipe.teachers):
        raise RecipeError(
            f"routing.fallback_on_incorrect: {fallback} extra generations, but the pool has only "
            f"{len(recipe.teachers) - 1} other teacher(s) to fall back to; use at most {len(recipe.teachers) - 1}."
        )
    for value in recipe.router.learning_curve:
        if not 0.0 < float(value) <= 1.0:
            raise RecipeError(
                f"router.learning_curve: {value} is not a share of the train prompts in (0, 1]."
            )


def validate_labeling_design(recipe: PersynRecipe) -> None:
    """Partial labeling asks m teachers per labeled prompt: a pair needs two, and there are only K."""
    per_prompt, count = recipe.labeling.teachers_per_prompt, len(recipe.teachers)
    if per_prompt is not None and not 2 <= per_prompt <= count:
        raise RecipeError(
            f"labeling.teachers_per_prompt: {per_prompt} is not between 2 (a pair to compare) and {count} "
            f"(the teachers); set 2 to {count}, or leave it unset for every teacher on every labeled prompt."
        )


def validate_splits(router: RouterSettings) -> None:
    """The labeled prompts split three ways; each share must leave room for the others."""
    for name in ("validation_fraction", "test_fraction"):
        value = getattr(router, name)
        if not 0.0 < value < 1.0:
            raise RecipeError(f"router.{name}: {value} must be in (0, 1).")
    if router.validation_fraction + router.test_fraction >= 0.9:
        raise RecipeError(
            f"router.validation_fraction + router.test_fraction = "
            f"{router.validation_fraction + router.test_fraction:.2f} leaves under 10% of the labeled prompts "
            "to train on; lower one of them."
        )


def validate_sources(recipe: PersynRecipe) -> None:
    """Procedural prompts and reference teachers: what they need is named before anything runs."""
    from persyn_hub.generation.backends import BACKENDS  # lazily: the generation package imports this module

    prompts = recipe.prompts
    if prompts.source == REASONING_GYM and not prompts.tasks:
        raise RecipeError(
            "prompts.tasks: source is 'reasoning-gym' but no task is listed; add e.g. "
            "`tasks: [{name: basic_arithmetic, size: 100, config: {max_digits: 2}}]`."
        )
    if prompts.tasks and prompts.source != REASONING_GYM:
        raise RecipeError(
            "prompts.tasks: only used with `source: reasoning-gym`; remove it or change source."
        )
    if prompts.tasks:
        check_task_names([task.name for task in prompts.tasks])
    labels = [task.label or task.name for task in prompts.tasks]
    for index, task in enumerate(prompts.tasks):
        if task.size <= 0:
            raise RecipeError(f"prompts.tasks[{index}] ({task.name!r}).size: must be positive.")
        if labels.count(labels[index]) > 1:
            raise RecipeError(
                f"prompts.tasks[{index}]: category {labels[index]!r} is used twice; give one a `label`."
            )
    if recipe.quality.kind == "reasoning_gym" and prompts.source != REASONING_GYM:
        if "metadata" not in prompts.keep_columns:
            raise RecipeError(
                "quality.kind: 'reasoning_gym' scores with each prompt's reasoning-gym `metadata`; use "
                "`prompts.source: reasoning-gym` or keep a `metadata` column (prompts.keep_columns)."
            )
    if recipe.quality.kind == "column" and not recipe.quality.column:
        raise RecipeError(
            "quality.column: quality.kind is 'column' but no score key is named (e.g. a reward score)."
        )
    if recipe.quality.kind_column and recipe.quality.kind_column not in prompts.keep_columns:
        prompts.keep_columns = [*prompts.keep_columns, recipe.quality.kind_column]
    check_model_name(recipe.student.model, "student.model")
    check_model_name(recipe.router.backbone, "router.backbone")
    if recipe.quality.reward_model:
        check_model_name(recipe.quality.reward_model, "quality.reward_model")
    for index, teacher in enumerate(recipe.teachers):
        where = f"teachers[{index}] ({teacher.name!r})"
        check_model_name(teacher.model, f"{where}.model")
        backend = BACKENDS.get(teacher.backend)  # None for `auto`
        if (backend is not None and backend.reads_pool) or (
            teacher.pool_column is None
            and teacher.backend == "auto"
            and not teacher.model
            and not teacher.endpoints
            and prompts.pool is not None
        ):
            teacher.pool_column = teacher.pool_column or teacher.name
        if teacher.pool_column:
            if prompts.pool is None:
                raise RecipeError(
                    f"{where}.pool_column: answers from a pool need `prompts.pool` (format wide or long) to say "
                    "how the source holds them."
                )
            if teacher.pool_column not in prompts.keep_columns:
                prompts.keep_columns = [*prompts.keep_columns, teacher.pool_column]
        template_answers = backend is not None and backend.template_answers
        if template_answers and not teacher.response_template:
            raise RecipeError(
                f"{where}.response_template: a reference teacher writes its answer from the prompt's columns; "
                'set e.g. response_template: "The answer is {answer}."'
            )
        if teacher.response_template and not template_answers:
            raise RecipeError(f"{where}.response_template: only used with `backend: reference`.")
        if teacher.system_prompt is not None and teacher.prompt_format != "chat":
            raise RecipeError(
                f"{where}.system_prompt: only chat teachers take a system turn; a completion teacher is "
                "prompted by completion_template and few_shot."
            )


# --------------------------------------------------------------------------------------------------
# YAML -> dataclasses


def check_recipe_version(values: dict[str, Any]) -> None:
    """A version 1 recipe that sets alpha meant the QUALITY weight: refuse it rather than flip it silently."""
    version = values.get("recipe_version")
    if isinstance(version, int) and version > RECIPE_VERSION:
        raise RecipeError(
            f"recipe_version: {version} is newer than this persyn_hub reads ({RECIPE_VERSION}); upgrade persyn_hub."
        )
    labeling = values.get("labeling")
    if version is None and isinstance(labeling, dict) and "alpha" in labeling:
        old = labeling["alpha"]
        same = f"{1 - float(old):g}" if isinstance(old, (int, float)) else "1 - your value"
        raise RecipeError(
            f"labeling.alpha: since recipe_version {RECIPE_VERSION} alpha weights LEARNABILITY, as in the PerSyn "
            f"paper (r = (1 - alpha) * quality + alpha * learnability, default 0.4); this recipe has no "
            f"recipe_version, so its alpha: {old} weighted QUALITY. Run `persyn migrate RECIPE` (alpha becomes "
            f"{same}), or add `recipe_version: {RECIPE_VERSION}` if {old} already means the learnability weight."
        )


def recipe_from_dict(values: dict[str, Any]) -> PersynRecipe:
    if not isinstance(values, dict):
        raise RecipeError("The recipe must be a YAML mapping of keys such as `prompts:`, `teachers:`.")
    check_recipe_version(values)
    return build_dataclass(PersynRecipe, values, "")


def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> PersynRecipe:
    """Read a recipe YAML (safely: no Python objects) and apply `--key value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found.")

    try:
        values = yaml.safe_load(read_text(path, str(path), RecipeError)) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    for key, value in parse_overrides(overrides or []):
        apply_override(values, key, value)
    try:
        return recipe_from_dict(values)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None


__all__ = [
    "RECIPE_VERSION", "REASONING_GYM", "RENAMED_KEYS", "SECRET_WORDS", "FewShotExample", "GenerationConfig",
    "HubConfig", "LabelingConfig", "LaunchConfig", "OutputConfig", "PersynRecipe", "PoolConfig",
    "ProceduralTask", "PromptsConfig", "QualityConfig", "RecipeError", "RouterSettings", "RoutingConfig",
    "StudentConfig", "TeacherConfig", "load_recipe", "parse_overrides", "recipe_from_dict", "validate_recipe",
]  # fmt: skip
