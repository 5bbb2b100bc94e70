"""Checks of a served teacher before it is sent rows: its settings (`check_teacher`), that a server
answers at all (`check_endpoints`), and the fix a refused probe points to (`ProbeRefused`, `probe_fix`)."""

from __future__ import annotations

import logging

from persyn_hub.generation.endpoint.client import endpoint_root
from persyn_hub.generation.endpoint.guard import failure_text
from persyn_hub.generation.retry import RowError
from persyn_hub.recipe.sections import TeacherConfig

logger = logging.getLogger(__name__)


def check_teacher(teacher: TeacherConfig) -> None:
    where = f"teachers.{teacher.name}"
    if not teacher.endpoints:
        raise ValueError(f"{where}.endpoints: the endpoint backend needs at least one server URL.")
    for url in teacher.endpoints:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{where}.endpoints: {url!r} is not an http(s) URL (write http://host:port).")
    if teacher.timeout <= 0:
        raise ValueError(f"{where}.timeout: {teacher.timeout} must be positive (seconds).")
    if teacher.max_retries < 0 or teacher.retry_backoff < 0:
        raise ValueError(f"{where}: max_retries and retry_backoff must not be negative.")
    if teacher.max_concurrency <= 0:
        raise ValueError(f"{where}.max_concurrency: must be positive.")
    if teacher.stop_after_failures < 0:
        raise ValueError(f"{where}.stop_after_failures: must not be negative (0 never stops the teacher).")


class ProbeRefused(ValueError):
    """The server refused a teacher's first prompt with an error no retry can change (one line)."""


def probe_fix(failure: RowError, url: str) -> str:
    """The fix a refusal points to: the model name, the system prompt, or the teacher's settings."""
    text = failure_text(failure).lower()
    if failure.reason.startswith("HTTP 404") or "model" in text:
        served = served_models(url)
        listed = f" (it serves {served})" if served else ""
        return f"Set served_model_name to a model the server serves{listed}, or check the endpoint."
    if "system" in text:
        return (
            "Remove the system prompt (prompts.system_prompt or the teacher's system_prompt), or serve a chat "
            "template that takes one."
        )
    return (
        "Check the teacher's settings (served_model_name, endpoint_api, generation) against what the server "
        "accepts, or check the endpoint."
    )


def served_models(root: str, timeout: float = 5.0) -> list[str]:
    """The model ids a server lists at /v1/models (first 5), for the fix of an unknown-model refusal."""
    import httpx

    try:
        body = httpx.get(f"{endpoint_root(root)}/v1/models", timeout=timeout).json()
        return [str(model["id"]) for model in body.get("data", [])][:5]
    except Exception:  # noqa: BLE001 - only a hint
        return []


def check_endpoints(teacher: TeacherConfig, timeout: float = 10.0) -> None:
    """Before any work: the URLs are well formed and at least one server answers HTTP (any status).

    A dead replica among live ones only costs retries, so only a pool where none answers is refused.
    The probe sends no token.
    """
    import httpx

    check_teacher(teacher)
    unreachable = []
    for url in teacher.endpoints:
        root = endpoint_root(url)
        try:
            httpx.get(f"{root}/v1/models", timeout=min(timeout, teacher.timeout))
        except httpx.HTTPError as error:
            unreachable.append(f"{root} ({type(error).__name__}: {error})")
    if unreachable and len(unreachable) == len(teacher.endpoints):
        raise ValueError(
            f"no endpoint answers: {'; '.join(unreachable)}. Start the server or fix the URL; nothing was generated."
        )
    for problem in unreachable:
        logger.warning(
            "teachers.%s.endpoints: %s does not answer; its share goes to the others", teacher.name, problem
        )
