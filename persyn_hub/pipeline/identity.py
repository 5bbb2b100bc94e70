"""What makes a stage's output differ: the recipe fields and model identities its cache key is built from.

A cache key built from a model's NAME reuses old rows after the model behind the name changed (a Hub
repo updated, a local checkpoint retrained in place). Models are identified by what they are: a bundled
model by its package version, a local folder by digests of its files, a Hub id by the commit it resolves
to. Settings that only change how fast or where a stage runs (concurrency, timeouts, retries, endpoint
URLs, batch sizes of deterministic work) are left out, so changing them reuses every finished stage.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

from persyn_hub.bundled import BUNDLED_MODELS, PREFIX, is_bundled, package_version
from persyn_hub.generation.backends import backend_of
from persyn_hub.recipe.config import QualityConfig, RouterSettings, StudentConfig, TeacherConfig
from persyn_hub.recipe.dtypes import dtype_name, local_device, resolve_dtype
from persyn_hub.verifiers.math_answer import RULES_VERSION as MATH_RULES

logger = logging.getLogger(__name__)

_EDGE = 16 << 20
"""Bytes hashed at each end of a weight file: enough to tell retrained weights apart, cheap for GBs."""

VERIFIER_PACKAGES = {
    "math_answer": ("math-verify",),
    "instruction_following": ("if-verifiable",),
    "reasoning_gym": ("reasoning-gym",),
    "reward_model": (),
}


def _file_identity(file: Path) -> str:
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with file.open("rb") as handle:
        if size <= 2 * _EDGE:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_EDGE))
            handle.seek(size - _EDGE)
            digest.update(handle.read(_EDGE))
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def _folder_identity(path: str, mtimes: tuple) -> dict[str, str]:
    folder = Path(path)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".gguf", ".model")
    )
    return {file.name: _file_identity(file) for file in files}


@functools.lru_cache(maxsize=64)
def _hub_commit(name: str, revision: str | None) -> str | None:
    """The commit a Hub id resolves to (from the local cache when offline), or None when unknown."""
    try:
        from huggingface_hub import hf_hub_download

        config = hf_hub_download(name, "config.json", revision=revision)
        return Path(config).parent.name  # .../snapshots/<commit sha>/config.json
    except Exception as error:  # noqa: BLE001 - offline and not cached: fall back to the name
        logger.warning(
            "Cannot resolve %r to a commit (%s); its cache key uses the name%s, so an update of the repo "
            "will not be noticed. Pin a revision to be exact.",
            name,
            type(error).__name__,
            f" and revision {revision!r}" if revision else "",
        )
        return None


def model_identity(name: str | None, revision: str | None = None) -> dict[str, Any] | None:
    """What a model IS, for cache keys: bundled package version, local file digests, or Hub commit."""
    if not name:
        return None
    if is_bundled(name):
        key = name.removeprefix(PREFIX)
        bundled = BUNDLED_MODELS.get(key)
        return {"bundled": key, "version": package_version(bundled.distribution) if bundled else None}
    path = Path(name)
    if path.is_dir():
        mtimes = tuple(
            sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir() if p.is_file())
        )
        return {"local": True, "files": _folder_identity(str(path.resolve()), mtimes)}
    if path.is_file():
        return {"local_file": path.name, "digest": _file_identity(path)}
    return {"hub": name, "revision": revision, "commit": _hub_commit(name, revision)}


def _resolved_dtype(name: str) -> str:
    """`auto` as this process's device resolves it: every stage loads its models there."""

    return dtype_name(resolve_dtype(name, local_device()))


def teacher_identity(teacher: TeacherConfig) -> dict[str, Any]:
    """What changes a teacher's answers; concurrency, timeouts, retries and endpoint URLs do not."""

    backend = backend_of(teacher)
    parts = backend.identity  # what makes this backend's answers (`Backend.identity`)
    identity: dict[str, Any] = {"name": teacher.name, "backend": backend.name}
    if "response_template" in parts:  # written from the data set: no prompt, no model, no decoding
        identity["response_template"] = teacher.response_template
    if "prompt" in parts:
        completion = teacher.prompt_format == "completion"
        identity.update(
            prompt_format=teacher.prompt_format,
            completion_template=teacher.completion_template if completion else None,
            few_shot=teacher.few_shot if completion else [],
            few_shot_separator=teacher.few_shot_separator if completion else None,
            system_prompt=teacher.system_prompt,
            generation=teacher.generation,
        )
    if "pool_column" in parts and teacher.pool_column:  # pool answers: already in the prompts' digest
        identity["pool_column"] = teacher.pool_column
    if "served_model" in parts:  # the server decides the weights; what we ask for is all we know
        identity.update(
            model=teacher.model,
            served_model_name=teacher.served_model_name,
            endpoint_api="tgi" if teacher.endpoint_api == "tgi" else "openai",  # auto asks the OpenAI routes
        )
    if "weights" in parts:
        identity.update(
            model=model_identity(teacher.model),
            dtype=_resolved_dtype(teacher.dtype),
            trust_remote_code=teacher.trust_remote_code,
        )
    if "sampling_batch" in parts and teacher.generation.temperature > 0:  # seeds are drawn per batch
        identity["batch_size"] = teacher.batch_size
    return identity


def student_identity(student: StudentConfig) -> dict[str, Any]:
    """What changes learnability scores: the student's weights, dtype, truncation, how it is served."""
    identity: dict[str, Any] = {
        "model": model_identity(student.model),
        "max_length": student.max_length,
        "trust_remote_code": student.trust_remote_code,
    }
    if student.endpoint:
        identity.update(
            served=True, endpoint_api=student.endpoint_api, served_model_name=student.served_model_name
        )
    else:
        identity["dtype"] = _resolved_dtype(student.dtype)
    return identity


def quality_identity(quality: QualityConfig) -> dict[str, Any]:
    """What changes quality scores: the checker (and its package version) or the reward model."""
    # lazy: procedural loads datasets, which this module otherwise does not
    from persyn_hub.procedural import RULES_VERSION as ANSWER_EXTRACTION

    packages = sorted(
        {p for kind, names in VERIFIER_PACKAGES.items() for p in names if quality.kind in (kind, "auto")}
    )
    identity: dict[str, Any] = {
        "kind": quality.kind,
        "checkers": {name: package_version(name) for name in packages},
        "rules": {"math_answer": MATH_RULES, "answer_extraction": ANSWER_EXTRACTION},
        "column": quality.column,
        "kind_column": quality.kind_column,
    }
    if quality.kind == "reward_model" or (quality.kind == "auto" and quality.reward_model):
        identity.update(
            reward_model=model_identity(quality.reward_model),
            max_length=quality.max_length,
            dtype=_resolved_dtype(quality.dtype),
            trust_remote_code=quality.trust_remote_code,
        )
    return identity


def router_training_identity(settings: RouterSettings) -> dict[str, Any]:
    """Every router setting changes the trained weights; the backbone is identified by what it is."""
    return {**settings.__dict__, "backbone": model_identity(settings.backbone)}


__all__ = [
    "model_identity",
    "quality_identity",
    "router_training_identity",
    "student_identity",
    "teacher_identity",
]
