"""Generation through inference endpoints: TGI, vLLM, llama.cpp or any OpenAI-compatible server.

Chat teachers go through `huggingface_hub.AsyncInferenceClient.chat_completion` (the Messages API all
of them serve). Base (`prompt_format: completion`) teachers go to `/v1/completions`, which
AsyncInferenceClient has no method for, so it is posted with huggingface_hub's own async HTTP session
and headers; `endpoint_api: tgi` uses TGI's native `text_generation` route instead.

Every endpoint has `max_concurrency` slots; a row takes whichever slot frees first, so a slow or dead
replica gets less work. Failed attempts are retried with exponential backoff and jitter (Retry-After
wins) and hold the endpoint's slot for the backoff, which steers traffic away from a struggling
replica. After `max_retries` the row keeps an `error` and the run goes on. Finished rows reach the
checkpoint within a fraction of a second, so a killed run loses almost nothing.

A wrong setting fails every row alike, so it is caught once, not per row. Before a stage, preflight
sends the teacher's first prompt as generation will (`probe_first_prompt`); a server that refuses a
system turn gets it folded into the first user turn from then on, and any other refusal stops the run
before spending. During generation, `stop_after_failures` non-retryable failures in a row with the same
error stop the teacher (`StopGuard`): the rows not yet sent get a failed record `--retry-failed` redoes.

This module is the entry point (`generate_with_endpoints`). The parts: `client` (servers and
slots), `records` (rows in, records out), `guard` (refusals and stops per process),
`checks` (settings, reachability, fixes) and `generator` (the requests and the probe).
"""

from __future__ import annotations

from datasets import Dataset, Features

from persyn_hub.fingerprint import run_fingerprint
from persyn_hub.generation.checkpoint import RECORD_FEATURES, GenerationCheckpoint
from persyn_hub.generation.endpoint.checks import check_teacher
from persyn_hub.generation.endpoint.generator import EndpointGenerator
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.progress import progress_bar
from persyn_hub.recipe.sections import TeacherConfig

MAP_BATCH_SIZE = 1024
"""Rows per `Dataset.map` batch; each batch runs its rows concurrently. Batches end with a barrier
(the last slow request holds the next batch), so they are large; progress is counted per row."""


def generate_with_endpoints(
    dataset: Dataset,
    teacher: TeacherConfig,
    *,
    checkpoint: GenerationCheckpoint,
    stats: GenerationStats,
) -> Dataset:
    """Have a served teacher answer every row; rows already in `checkpoint` are reused, not re-sent.

    Reads `prompt_id`, `messages`. Adds `teacher`, `response`, `finish_reason`, `num_tokens`,
    `num_prompt_tokens`, `error` (failed rows keep the reason and raw output; a re-run retries only
    them). Rows keep their input order. Params come from `teacher`: `endpoints`, `prompt_format`,
    `endpoint_api`, `max_concurrency` (per endpoint), `timeout`, `max_retries`, `retry_backoff`,
    `served_model_name`, `generation`.
    Example::

        teacher = TeacherConfig(name="t", endpoints=["http://127.0.0.1:8080"], max_concurrency=4)
        with GenerationCheckpoint("runs/x/ckpt") as ckpt:
            out = generate_with_endpoints(prompts, teacher, checkpoint=ckpt, stats=GenerationStats("t"))
    """
    missing = {"prompt_id", "messages"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"generate_with_endpoints needs columns {sorted(missing)}; got {dataset.column_names}. "
            "Load prompts with persyn_hub.data.load_prompts."
        )
    check_teacher(teacher)
    features = Features({**dataset.features, **RECORD_FEATURES})
    with (
        progress_bar(len(dataset), f"Generating with {teacher.name}", "row") as progress,
    ):
        return dataset.map(
            EndpointGenerator(teacher, checkpoint, stats, progress),
            batched=True,
            batch_size=MAP_BATCH_SIZE,
            features=features,
            load_from_cache_file=False,
            new_fingerprint=run_fingerprint(),
        )
