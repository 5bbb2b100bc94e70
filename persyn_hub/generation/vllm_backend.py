"""In-process generation with vLLM, for GPU users who have it installed (`pip install persyn_hub[vllm]`).

vLLM schedules a whole `Dataset.map` batch at once (continuous batching), so this backend hands it
every missing row of a batch and lets it pick the order. Not needed for CI: the import is guarded and
a clear error says how to install it.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, Features

from persyn_hub.bundled import resolve_model
from persyn_hub.config import TeacherConfig
from persyn_hub.dtypes import dtype_name, local_device, resolve_dtype
from persyn_hub.fingerprint import run_fingerprint
from persyn_hub.generation.checkpoint import (
    RECORD_FEATURES,
    CheckpointedGenerator,
    GenerationCheckpoint,
)
from persyn_hub.generation.endpoint import check_messages, failed_record
from persyn_hub.generation.prompting import chat_messages, completion_text, default_stop
from persyn_hub.generation.stats import GenerationStats

MAP_BATCH_SIZE = 1024


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VllmGenerator(CheckpointedGenerator):
    """Callable for `Dataset.map(batched=True)`; the engine is created on the first batch with work."""

    def __init__(
        self, teacher: TeacherConfig, checkpoint: GenerationCheckpoint, stats: GenerationStats, seed: int
    ):
        super().__init__(teacher, checkpoint, stats)
        self.seed = seed
        self._llm: Any = None

    def _engine(self) -> Any:
        if self._llm is None:
            from vllm import LLM

            # vLLM's own `auto` is the checkpoint's dtype; resolve ours for the device vLLM runs on
            self._llm = LLM(
                model=resolve_model(self.teacher.model or ""),
                dtype=dtype_name(resolve_dtype(self.teacher.dtype, local_device())),
                seed=self.seed,
                trust_remote_code=self.teacher.trust_remote_code,
                tensor_parallel_size=self.teacher.tensor_parallel_size,
            )
        return self._llm

    def release(self) -> None:
        """Free the engine and its GPU memory before the next teacher's engine loads (one at a time)."""
        if self._llm is None:
            return
        import gc

        import torch

        try:  # vLLM >= 0.6 tears down its workers and the distributed state it created
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001 - older or newer vLLM: deleting the engine is what remains
            pass
        engine = getattr(self._llm, "llm_engine", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()
        self._llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

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
            conversations = [chat_messages(self.teacher, row["messages"]) for row in rows]
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
    try:
        return dataset.map(
            generator,
            batched=True,
            batch_size=MAP_BATCH_SIZE,
            features=Features({**dataset.features, **RECORD_FEATURES}),
            desc=f"Generating with {teacher.name} (vLLM)",
            load_from_cache_file=False,
            new_fingerprint=run_fingerprint(),
        )
    finally:
        generator.release()  # the next teacher's engine needs this one's GPU memory
