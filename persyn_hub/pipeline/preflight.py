"""Checks that run before any expensive work, so a bad recipe fails in seconds, not hours in.

Every generating teacher's first prompt is rendered (local teachers: their chat template) or sent
(endpoint teachers: one real request) exactly as generation will do it, so a setting that would fail
every row fails once here: a template or server that refuses a system turn gets it folded into the first
user turn (logged, and recorded in the summary and card by the generation stages); anything else that
refuses the prompt stops the run with one line naming the teacher, the message and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset

from persyn_hub.bundled import bundled_data, is_bundled, package_version, resolve_model
from persyn_hub.errors import PersynError
from persyn_hub.generation.backends import backend_of, check_placements
from persyn_hub.generation.prompting import folds, system_turn_refusal
from persyn_hub.generation.reference import template_columns
from persyn_hub.recipe.config import REASONING_GYM, PersynRecipe, PromptsConfig, RecipeError, TeacherConfig

IFBENCH_COLUMNS = ("instruction_id_list", "kwargs")
logger = logging.getLogger(__name__)


class PreflightError(PersynError, RuntimeError):
    """Something the run needs is missing; nothing has been generated yet."""


def source_identity(config: PromptsConfig) -> dict[str, Any]:
    """What makes a prompt source's content differ between runs (for the stage cache key)."""
    if config.source == REASONING_GYM:
        return {"generator": "reasoning-gym", "version": package_version("reasoning-gym")}
    if is_bundled(config.source):
        return {
            "bundled": config.source,
            "version": package_version(bundled_data(config.source).distribution),
        }
    path = Path(config.source)
    if path.exists():
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}
    return {"hub": config.source, "revision": config.revision}


def _check_local_model(field: str, name: str, *, trust_remote_code: bool, need_chat_template: bool) -> Any:
    """The model's config and tokenizer load (its tokenizer is returned), with a chat template if needed."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        path = resolve_model(name)
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - every load failure gets the same clear report
        raise PreflightError(
            f"{field}: cannot load {name!r} ({type(error).__name__}: {str(error).splitlines()[0][:300]}). "
            "Check the model id/path (and that you are logged in for gated models)."
        ) from error
    if need_chat_template and not getattr(tokenizer, "chat_template", None):
        raise PreflightError(
            f"{field}: {name!r} has no chat template, so chat prompts would give garbage. Set "
            "prompt_format: completion with few_shot examples for this base model."
        )
    return tokenizer


def _render_first_prompt(field: str, teacher: TeacherConfig, tokenizer: Any, messages: list[dict]) -> None:
    """Render the first prompt as generation will (`render_prompt`, folding included), or stop the run."""
    # lazy: generation.local loads torch and transformers, which this module otherwise does not
    from persyn_hub.generation.local import render_prompt

    try:
        render_prompt(teacher, tokenizer, messages)
    except Exception as error:  # noqa: BLE001 - a template raises whatever its author chose
        message = " ".join(str(error).split())[:300]
        what, fix = (
            ("its chat template", "Fix the model's chat template, or set prompt_format: completion")
            if teacher.prompt_format == "chat"
            else ("its completion_template", "Fix completion_template (one {prompt} field, no other braces)")
        )
        raise PreflightError(
            f"{field}: {what} cannot render the first prompt ({type(error).__name__}: {message}). {fix}; "
            "nothing was generated."
        ) from error
    refusal = system_turn_refusal(tokenizer) if teacher.prompt_format == "chat" else None
    if folds(teacher, messages, refusal):
        logger.warning("%s: %s; the system prompt is folded into the first user turn", field, refusal)


def _probe_endpoint(field: str, teacher: TeacherConfig, messages: list[dict]) -> None:
    """One real request with the first prompt; a refusal no retry changes stops the run here."""
    # lazy: generation.endpoint.checks loads huggingface_hub, which this module otherwise does not
    from persyn_hub.generation.endpoint.checks import ProbeRefused

    # lazy: generation.endpoint.generator loads huggingface_hub, which this module otherwise does not
    from persyn_hub.generation.endpoint.generator import probe_first_prompt

    try:
        probe_first_prompt(teacher, messages)
    except ProbeRefused as error:
        raise PreflightError(f"{field}: {error}") from error


def _check_teacher(index: int, teacher: TeacherConfig, columns: set[str], first: list[dict] | None) -> None:
    """The teacher can answer: its model loads or its endpoints answer, and `first` (the first prompt's
    messages; None without prompts) renders or is accepted as generation will send it."""
    field = f"teachers[{index}] ({teacher.name!r})"

    backend = backend_of(teacher)
    if teacher.pool_column and not backend.template_answers:  # the pool answers first
        _check_pool_column(field, teacher, columns, first)
        if backend.preflight_beside_pool and teacher.model:  # its model fills the pool's gaps
            TEACHER_CHECKS[backend.preflight](field, teacher, columns, None)
    else:
        TEACHER_CHECKS[backend.preflight](field, teacher, columns, first)


def _check_response_template(field: str, teacher: TeacherConfig, columns: set[str], first: Any) -> None:

    missing = [c for c in template_columns(teacher.response_template or "") if c not in columns]
    if missing:
        raise RecipeError(
            f"{field}.response_template: column(s) {missing} are not in the prompts (columns: "
            f"{sorted(columns)}); add them to prompts.keep_columns or fix the template."
        )


def _check_pool_column(field: str, teacher: TeacherConfig, columns: set[str], first: Any) -> None:
    column = teacher.pool_column or teacher.name
    if column not in columns:
        raise RecipeError(
            f"{field}.pool_column: the pool has no column {column!r} (columns: {sorted(columns)}); name "
            "this teacher's column with pool_column."
        )


def _check_teacher_model(field: str, teacher: TeacherConfig, columns: set[str], first: Any) -> None:
    tokenizer = _check_local_model(
        f"{field}.model",
        teacher.model or "",
        trust_remote_code=teacher.trust_remote_code,
        need_chat_template=teacher.prompt_format == "chat",
    )
    if first is not None:
        _render_first_prompt(field, teacher, tokenizer, first)


def _check_vllm_prompt(field: str, teacher: TeacherConfig, columns: set[str], first: Any) -> None:
    if first is not None:
        tokenizer = _vllm_tokenizer(teacher)
        if tokenizer is not None:
            _render_first_prompt(field, teacher, tokenizer, first)


def _check_endpoints(field: str, teacher: TeacherConfig, columns: set[str], first: Any) -> None:
    # lazy: generation.endpoint.checks loads huggingface_hub, which this module otherwise does not
    from persyn_hub.generation.endpoint.checks import check_endpoints

    try:
        check_endpoints(teacher)
    except Exception as error:  # noqa: BLE001
        raise PreflightError(f"{field}.endpoints: {error}") from error
    if first is not None:
        _probe_endpoint(field, teacher, first)


TEACHER_CHECKS: dict[str, Callable[[str, TeacherConfig, set[str], Any], None]] = {
    "response_template": _check_response_template,
    "pool_column": _check_pool_column,
    "local_model": _check_teacher_model,
    "vllm_tokenizer": _check_vllm_prompt,
    "endpoints": _check_endpoints,
}
"""A teacher's check before any work, by the name its backend gives (`Backend.preflight`):
`check(field, teacher, prompt columns, first prompt's messages or None)`."""


def _vllm_tokenizer(teacher: TeacherConfig) -> Any:
    """A vLLM teacher's tokenizer, to render its first prompt; None when transformers cannot load it
    (vLLM may serve models transformers does not know: the engine reports its own load errors)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            resolve_model(teacher.model or ""), trust_remote_code=teacher.trust_remote_code
        )
    except Exception as error:  # noqa: BLE001
        logger.debug("teacher %s: tokenizer not loaded for preflight (%s)", teacher.name, error)
        return None


def check_before_work(recipe: PersynRecipe, prompts: Dataset) -> None:
    """Models load, endpoints answer, each teacher takes its first prompt, the quality signal has the
    columns it reads."""
    columns = set(prompts.column_names)
    if recipe.quality.kind == "math_answer" and "answer" not in columns:
        raise RecipeError("prompts.answer_column: the math_answer verifier needs gold answers; set it.")
    if recipe.quality.kind == "instruction_following":
        missing = [c for c in IFBENCH_COLUMNS if c not in columns]
        if missing:
            raise RecipeError(
                f"prompts.keep_columns: instruction_following needs columns {missing}; add them to keep_columns."
            )
    budgets = recipe.routing.budgets
    if budgets and set(budgets) == set(recipe.teacher_names()) and sum(budgets.values()) < 1.0:
        raise RecipeError(
            f"routing.budgets: shares sum to {sum(budgets.values()):.2f} < 1, so some prompts could go to no "
            "teacher. Raise a share or leave one teacher unbudgeted."
        )

    check_placements(recipe.teachers)  # a vLLM group that does not fit the node fails now, not at its stage
    first = prompts[0]["messages"] if len(prompts) and "messages" in columns else None
    for index, teacher in enumerate(recipe.teachers):
        _check_teacher(index, teacher, columns, first)
    # A served student is scored through the local tokenizer of student.model, so it must load too.
    _check_local_model(
        "student.model",
        recipe.student.model,
        trust_remote_code=recipe.student.trust_remote_code,
        need_chat_template=False,
    )
    if recipe.quality.kind in ("reward_model", "auto") and recipe.quality.reward_model:
        _check_reward_model(recipe)
    if recipe.routing.reuse_router:
        _check_router(recipe)


def _check_router(recipe: PersynRecipe) -> None:
    """A given router loads (safetensors only) and scores exactly the recipe's teachers."""
    open_router(recipe.routing.reuse_router or "", recipe.teacher_names(), field="routing.reuse_router")


def open_router(name: str, expected_teachers: list[str] | None, field: str) -> tuple[Any, Any]:
    """Load a router, or raise one PreflightError naming `field` and the fix (a wrong pool, no files)."""
    # lazy: router.storage loads torch and transformers, which this module otherwise does not
    from persyn_hub.router.storage import RouterMismatchError, load_router

    try:
        return load_router(name, expected_teachers=expected_teachers)
    except RouterMismatchError as error:
        raise PreflightError(f"{field}: {error}") from error
    except Exception as error:  # noqa: BLE001 - every load failure gets the same clear report
        raise PreflightError(
            f"{field}: cannot load {name!r} ({type(error).__name__}: {str(error).splitlines()[0][:300]}). "
            "Point it at a router folder or Hub repo saved by `persyn run` (model.safetensors + config.json)."
        ) from error


def _check_reward_model(recipe: PersynRecipe) -> None:
    from transformers import AutoConfig

    name = recipe.quality.reward_model or ""
    try:
        config = AutoConfig.from_pretrained(
            resolve_model(name), trust_remote_code=recipe.quality.trust_remote_code
        )
    except Exception as error:  # noqa: BLE001
        raise PreflightError(f"quality.reward_model: cannot load {name!r} ({error}).") from error
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise PreflightError(
            f"quality.reward_model: {name!r} is a {architectures[0]}, not a sequence-classification reward "
            "model (one score per conversation). Use a reward model such as a *ForSequenceClassification checkpoint."
        )
    if getattr(config, "num_labels", 1) != 1 and architectures:
        raise PreflightError(
            f"quality.reward_model: {name!r} has {config.num_labels} output labels; a reward model has exactly 1."
        )
