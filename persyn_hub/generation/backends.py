"""The generation backends, one table: what each needs, where it runs, what makes its answers, how it generates.

A teacher's `backend` (`TeacherConfig.backend`) names a row of `BACKENDS`; `auto` resolves to one of
them (`backend_of`). Every place that treats backends differently (recipe validation, preflight, stage
parallelism and identity, placement on GPUs, the summary's counts, `persyn compare`) asks the table's
fields instead of comparing names, so a backend is added or changed here.

Importing this module loads no torch and no data library: each backend's implementation module is
imported when it first generates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from persyn_hub.generation.placement import check_engine_group, leads_engine_group, warn_if_gpus_are_shared

if TYPE_CHECKING:
    from datasets import Dataset

    from persyn_hub.generation.checkpoint import GenerationCheckpoint
    from persyn_hub.generation.stats import GenerationStats
    from persyn_hub.recipe.sections import TeacherConfig

AUTO = "auto"
"""`backend: auto`: the endpoint backend when URLs are given, transformers for a model, else the pool."""

IDENTITY_PARTS = ("response_template", "prompt", "pool_column", "served_model", "weights", "sampling_batch")
"""What may enter a teacher's stage identity (`pipeline/identity.py` adds them in this order):
`response_template` (the reference template), `prompt` (format, templates, few-shot, system prompt and
decoding), `pool_column` (when set), `served_model` (the name asked of a server and its API), `weights`
(the local model's files, dtype, trust_remote_code), `sampling_batch` (the batch size when sampling)."""


@dataclass(frozen=True)
class Backend:
    """One generation backend: what the call sites need to know about it."""

    name: str
    """The `backend:` value in a recipe."""
    parallelism: Literal["chunks", "main"]
    """Its generation stages' parallelism: `chunks` on every process (in-process models), `main` on the
    main process alone (one async client already keeps every server busy; data answers cost nothing).
    A teacher whose pool answers first runs on `main` whatever its backend."""
    uses_local_gpus: bool
    """It runs the model on this node's GPUs (placement: each process's own GPU, or engine groups)."""
    engine_groups: bool
    """One engine spans `tensor_parallel_size` GPUs of a node; only the process that leads a group
    generates (`placement.engine_group`)."""
    needs_model: bool
    """It loads `model`'s weights itself (a model id or path is required; its config names its family)."""
    needs_endpoints: bool
    """It sends requests to `endpoints` (at least one URL is required)."""
    answers_from_data: bool
    """Its answers come from the prompts' data: no model, no generation to pay for or count."""
    reads_pool: bool
    """Its answers are its column of the answer pool (`prompts.pool`), and it generates none."""
    template_answers: bool
    """Its answer is `response_template` filled from the prompt's columns (the only backend that takes one)."""
    checkpoints: bool
    """Its rows are checkpointed as they finish (generation that costs something to redo)."""
    identity: frozenset[str]
    """What enters its stage identity (of `IDENTITY_PARTS`)."""
    preflight: str
    """Its check before any work, by name (`pipeline/preflight.py` `TEACHER_CHECKS`)."""
    preflight_beside_pool: bool
    """With an answer pool answering first, its own check still runs, without the first prompt."""
    generate: Optional[Callable[..., Dataset]]
    """`generate(dataset, teacher, *, checkpoint, stats, seed)` -> the answered rows; None: it generates
    nothing itself (`generate_responses` reads its answers elsewhere)."""


def _generate_locally(
    dataset: Dataset,
    teacher: TeacherConfig,
    *,
    checkpoint: GenerationCheckpoint,
    stats: GenerationStats,
    seed: int,
) -> Dataset:
    # lazy: generation.local loads datasets and torch, which this module otherwise does not
    from persyn_hub.generation.local import generate_locally

    return generate_locally(dataset, teacher, checkpoint=checkpoint, stats=stats, seed=seed)


def _generate_with_vllm(
    dataset: Dataset,
    teacher: TeacherConfig,
    *,
    checkpoint: GenerationCheckpoint,
    stats: GenerationStats,
    seed: int,
) -> Dataset:
    # lazy: generation.vllm_backend loads datasets, which this module otherwise does not
    from persyn_hub.generation.vllm_backend import generate_with_vllm

    return generate_with_vllm(dataset, teacher, checkpoint=checkpoint, stats=stats, seed=seed)


def _generate_with_endpoints(
    dataset: Dataset,
    teacher: TeacherConfig,
    *,
    checkpoint: GenerationCheckpoint,
    stats: GenerationStats,
    seed: int,
) -> Dataset:
    # lazy: generation.endpoint.generate loads datasets and huggingface_hub, which this module otherwise does not
    from persyn_hub.generation.endpoint.generate import generate_with_endpoints

    return generate_with_endpoints(dataset, teacher, checkpoint=checkpoint, stats=stats)


def _write_references(
    dataset: Dataset, teacher: TeacherConfig, *, checkpoint: None, stats: GenerationStats, seed: int
) -> Dataset:
    # lazy: generation.reference loads datasets, which this module otherwise does not
    from persyn_hub.generation.reference import write_references

    return write_references(dataset, teacher, stats)


_MODEL_ANSWERS = frozenset({"prompt", "pool_column", "sampling_batch"})

BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            name="transformers",
            parallelism="chunks",
            uses_local_gpus=True,
            engine_groups=False,
            needs_model=True,
            needs_endpoints=False,
            answers_from_data=False,
            reads_pool=False,
            template_answers=False,
            checkpoints=True,
            identity=_MODEL_ANSWERS | {"weights"},
            preflight="local_model",
            preflight_beside_pool=True,
            generate=_generate_locally,
        ),
        Backend(
            name="vllm",
            parallelism="chunks",
            uses_local_gpus=True,
            engine_groups=True,
            needs_model=True,
            needs_endpoints=False,
            answers_from_data=False,
            reads_pool=False,
            template_answers=False,
            checkpoints=True,
            identity=_MODEL_ANSWERS | {"weights"},
            preflight="vllm_tokenizer",
            preflight_beside_pool=False,
            generate=_generate_with_vllm,
        ),
        Backend(
            name="endpoint",
            parallelism="main",
            uses_local_gpus=False,
            engine_groups=False,
            needs_model=False,
            needs_endpoints=True,
            answers_from_data=False,
            reads_pool=False,
            template_answers=False,
            checkpoints=True,
            identity=_MODEL_ANSWERS | {"served_model"},
            preflight="endpoints",
            preflight_beside_pool=False,
            generate=_generate_with_endpoints,
        ),
        Backend(
            name="reference",
            parallelism="main",
            uses_local_gpus=False,
            engine_groups=False,
            needs_model=False,
            needs_endpoints=False,
            answers_from_data=True,
            reads_pool=False,
            template_answers=True,
            checkpoints=False,  # no model: nothing to pay for, so nothing to checkpoint
            identity=frozenset({"response_template"}),  # no prompt, no model, no decoding
            preflight="response_template",
            preflight_beside_pool=False,
            generate=_write_references,
        ),
        Backend(
            name="pool",
            parallelism="main",
            uses_local_gpus=False,
            engine_groups=False,
            needs_model=False,
            needs_endpoints=False,
            answers_from_data=True,
            reads_pool=True,
            template_answers=False,
            checkpoints=False,
            identity=frozenset({"pool_column"}),  # the answers are the prompts' data, in the prompts' digest
            preflight="pool_column",
            preflight_beside_pool=False,
            generate=None,
        ),
    )
}
"""Every backend by name (`auto` is not one: it resolves to one, see `backend_of`)."""

BACKEND_NAMES = (AUTO, *BACKENDS)
"""The values `backend:` takes in a recipe."""


def backend_of(teacher: TeacherConfig) -> Backend:
    """The backend `teacher` generates with. `auto` picks the endpoint backend when URLs are given,
    in-process transformers for a model, and the answer pool for a teacher that has neither.

    Raises ValueError for a name that is no backend (a recipe cannot hold one; a hand-made config can).
    """
    name = teacher.backend
    if name == AUTO:
        if teacher.endpoints:
            name = "endpoint"
        else:
            name = "transformers" if teacher.model or not teacher.pool_column else "pool"
    if name not in BACKENDS:
        raise ValueError(f"teachers.{teacher.name}.backend: unknown backend {name!r}.")
    return BACKENDS[name]


def backend_for(teacher: TeacherConfig) -> str:
    """The name of `backend_of(teacher)`."""
    return backend_of(teacher).name


def generates_here(teacher: TeacherConfig, index: int | None = None) -> bool:
    """Whether this process may generate for `teacher`: False only for an engine-group teacher (vLLM)
    whose group this process does not lead (another process of the node generates on those GPUs).

    Other teachers place nothing here (transformers runs on every process's own GPU; endpoint,
    reference and pool answers use no local GPU), so the stage's own parallelism decides for them.
    `index` (the teacher's place in `teachers`) only makes errors name the exact recipe field.
    """
    backend = backend_of(teacher)
    if not backend.uses_local_gpus:
        return True

    if not backend.engine_groups:
        warn_if_gpus_are_shared(teacher)
        return True
    return leads_engine_group(teacher, index)


def check_placements(teachers: list[TeacherConfig]) -> None:
    """Every engine-group (vLLM) teacher fits this node's GPUs, checked before any work so a misfit
    fails in seconds. Raises `PlacementError` naming `teachers[i].tensor_parallel_size` and the fix."""

    for index, teacher in enumerate(teachers):
        if backend_of(teacher).engine_groups:
            check_engine_group(teacher, index)


__all__ = [
    "AUTO",
    "BACKENDS",
    "BACKEND_NAMES",
    "Backend",
    "backend_for",
    "backend_of",
    "check_placements",
    "generates_here",
]
