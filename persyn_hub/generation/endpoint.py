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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import random
import time
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from datasets import Dataset, Features
from datasets.utils import tqdm
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.utils import build_hf_headers, get_async_session, hf_raise_for_status

from persyn_hub.fingerprint import run_fingerprint
from persyn_hub.generation.auth import client_token, redact, token_for
from persyn_hub.generation.checkpoint import (
    RECORD_FEATURES,
    CheckpointedGenerator,
    GenerationCheckpoint,
)
from persyn_hub.generation.prompting import (
    chat_messages,
    completion_text,
    cut_at_stop,
    default_stop,
    folds,
    has_system_turn,
    prompt_turns,
)
from persyn_hub.generation.retry import RowError, backoff_delay, classify, server_message
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.progress import progress_bar
from persyn_hub.recipe.config import TeacherConfig

logger = logging.getLogger(__name__)

MAP_BATCH_SIZE = 1024
"""Rows per `Dataset.map` batch; each batch runs its rows concurrently. Batches end with a barrier
(the last slow request holds the next batch), so they are large; progress is counted per row."""
FLUSH_ROWS = 16
FLUSH_SECONDS = 0.25
"""Finished rows are written to the checkpoint in groups of at most this many rows / seconds."""
TGI_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}

COOLDOWN_BASE = 0.5
MAX_COOLDOWN = 30.0
"""Seconds a repeatedly failing endpoint's slots are held back: doubles per consecutive failure."""

PROBE_HEADER = "X-Persyn-Probe"
"""Header of preflight's probe request (value `preflight`), so server logs and proxies can tell it apart."""
PROBE_MAX_TOKENS = 16
"""New tokens the probe asks for at most: the request is the real one otherwise, and a long-answer
teacher's probe takes seconds, not minutes."""
NO_CHECKPOINT: Any = None
"""The probe's generator: it sends one request and writes no row, so it has no checkpoint."""
_SERVER_REFUSALS: dict[tuple, Optional[str]] = {}
"""Per process: an endpoint teacher -> why its server refuses a system turn (None: it takes one), from
preflight's probe. Endpoint teachers are driven from the process that ran preflight, so it is known there."""
_STOPPED: dict[tuple, str] = {}
"""Per process: endpoint teachers stopped by their `StopGuard`, and why. A stop holds for the stages
after it (the routed prompts of a stopped teacher are not sent either) until a probe is answered."""

T = TypeVar("T")


def endpoint_root(url: str) -> str:
    """`http://h:8080/v1/` -> `http://h:8080`: users paste either form."""
    root = url.strip().rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to the end from sync code, also when called inside a running loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def check_messages(messages: Any) -> Optional[str]:
    """Why a row's `messages` cannot be sent (None when they can): the row fails, the others go on."""
    if not isinstance(messages, list) or not messages:
        return "messages is empty; every row needs at least one user turn"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages[{index}] is not a {{role, content}} mapping"
        if not isinstance(message.get("content"), str):
            return f"messages[{index}].content is {message.get('content')!r}, not a string"
    if messages[-1]["role"] != "user":
        return f"the last turn is {messages[-1]['role']!r}; the prompt must end with a user turn"
    if not messages[-1]["content"].strip():
        return "the last user turn is empty"
    return None


@dataclass
class Endpoint:
    """One server: its root URL and the clients that talk to it (opened per map batch)."""

    root: str
    token: Optional[str]
    """The Hub token for Hugging Face hosts only (`generation.auth`); never logged."""
    chat: AsyncInferenceClient
    http: Any = None
    """huggingface_hub's async HTTP session (an `httpx2.AsyncClient`), for `/v1/completions` only."""


class SlotPool:
    """`per_endpoint` slots per endpoint; `acquire` hands out whichever endpoint has a slot free first.

    It also tracks each endpoint's consecutive failures. A replica that keeps failing (down, restarting)
    has its slots held back for a growing cooldown, and a failure there is charged to the endpoint, not
    to the row, while another replica is healthy: a dead replica among live ones costs retries, not rows.
    """

    def __init__(self, endpoints: list[Endpoint], per_endpoint: int):
        self.endpoints = endpoints
        self.failures: dict[int, int] = {id(endpoint): 0 for endpoint in endpoints}
        self._free: asyncio.Queue[Endpoint] = asyncio.Queue()
        for _ in range(per_endpoint):
            for endpoint in endpoints:
                self._free.put_nowait(endpoint)

    async def acquire(self, avoid: Optional[Endpoint] = None) -> Endpoint:
        """A free slot; a retry passes the endpoint that just failed it, to land elsewhere if it can."""
        endpoint = await self._free.get()
        while endpoint is avoid and self._others(avoid):
            self._free.put_nowait(endpoint)  # wait a moment for a slot of another endpoint
            await asyncio.sleep(0.02)
            endpoint = await self._free.get()
            if endpoint is avoid:
                avoid = None if random.random() < 0.02 else avoid  # all others stuck: eventually take it
        return endpoint

    def _others(self, avoid: Endpoint) -> bool:
        return any(endpoint is not avoid for endpoint in self.endpoints)

    def succeeded(self, endpoint: Endpoint) -> None:
        self.failures[id(endpoint)] = 0
        self.release(endpoint)

    def failed(self, endpoint: Endpoint, delay: float) -> bool:
        """Return the slot after a backoff; True when the row should be charged for this attempt.

        The first failure of a healthy endpoint is charged (it may be the row's fault); repeated
        failures of one endpoint while another one is healthy are the endpoint's fault.
        """
        streak = self.failures[id(endpoint)]
        self.failures[id(endpoint)] = streak + 1
        healthy_elsewhere = any(
            self.failures[id(other)] == 0 for other in self.endpoints if other is not endpoint
        )
        cooldown = min(COOLDOWN_BASE * (2**streak), MAX_COOLDOWN) if streak and healthy_elsewhere else 0.0
        self.release(endpoint, after=max(delay, cooldown))
        return streak == 0 or not healthy_elsewhere

    def release(self, endpoint: Endpoint, after: float = 0.0) -> None:
        """Give the slot back, `after` seconds later when the endpoint just failed (backoff)."""
        if after > 0:
            asyncio.get_running_loop().call_later(after, self._free.put_nowait, endpoint)
        else:
            self._free.put_nowait(endpoint)


class CheckpointWriter:
    """Buffers finished records and writes them in small groups (one fsync per group, not per row)."""

    def __init__(self, checkpoint: GenerationCheckpoint):
        self.checkpoint = checkpoint
        self.pending: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append(record)
        if len(self.pending) >= FLUSH_ROWS or time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.checkpoint.write(self.pending)
            self.pending = []
        self.last = time.monotonic()


def failed_record(prompt_id: str, error: str, num_prompt_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id,
        "response": None,
        "finish_reason": None,
        "num_tokens": 0,
        "num_prompt_tokens": num_prompt_tokens,
        "error": error,
    }


def server_key(teacher: TeacherConfig) -> tuple:
    """What identifies a served teacher's server-side chat template: its servers and the model asked for."""
    return (teacher.name, tuple(teacher.endpoints), teacher.served_model_name, teacher.endpoint_api)


def server_refusal(teacher: TeacherConfig) -> Optional[str]:
    """Why the teacher's server refuses a system turn, as preflight's probe found (None: not refused, or
    not probed in this process)."""
    return _SERVER_REFUSALS.get(server_key(teacher))


def failure_text(failure: RowError) -> str:
    """`HTTP 400: <the server's message>`: the status without the URL, then the server's own words."""
    message = server_message(failure.raw)
    return redact(f"{failure.reason.split(':')[0]}: {message}" if message else failure.reason)


class StopGuard:
    """Stops a teacher whose last `limit` requests failed with the same non-retryable error.

    A wrong setting (a refused system turn, a model the server does not have) fails every row alike:
    sending the rest only multiplies the failure. Successes reset the count; retryable failures (429,
    5xx, timeouts) neither count nor reset it, they have their own retry path.
    """

    def __init__(self, teacher: TeacherConfig):
        self.teacher = teacher
        self.limit = teacher.stop_after_failures
        self.streak = 0
        self.last: Optional[str] = None
        self.stopped: Optional[str] = _STOPPED.get(server_key(teacher)) if self.limit > 0 else None
        """Why the teacher was stopped (`failure_text` of the repeated error); None while it runs."""

    def succeeded(self) -> None:
        self.streak, self.last = 0, None

    def failed(self, failure: RowError, url: str) -> None:
        if self.limit <= 0 or self.stopped:
            return
        why = failure_text(failure)
        self.streak = self.streak + 1 if why == self.last else 1
        self.last = why
        if self.streak >= self.limit:
            self.stopped = _STOPPED[server_key(self.teacher)] = why
            logger.error(
                "teacher %s stopped: its last %d requests to %s failed alike (%s). The rows not yet sent are "
                "marked failed; fix the cause, then `persyn run RECIPE --retry-failed` asks them again.",
                self.teacher.name, self.limit, url, why,
            )  # fmt: skip

    def record(self, prompt_id: str) -> dict[str, Any]:
        """The failed record of a row not sent because the teacher was stopped."""
        return failed_record(
            prompt_id,
            f"teacher stopped: its last {self.limit} requests failed alike ({self.stopped}); this row was not "
            "sent. Fix the cause, then `persyn run RECIPE --retry-failed` asks it again",
        )


class EndpointGenerator(CheckpointedGenerator):
    """Served teachers: the rows the checkpoint lacks are sent concurrently, each checkpointed when done."""

    def __init__(
        self,
        teacher: TeacherConfig,
        checkpoint: GenerationCheckpoint,
        stats: GenerationStats,
        progress: Optional[tqdm] = None,
    ):
        super().__init__(teacher, checkpoint, stats)
        self.stop = default_stop(teacher)
        self.api = "tgi" if teacher.endpoint_api == "tgi" else "openai"
        self.progress = progress
        """Advanced per finished row, so a slow teacher shows progress within a map batch."""
        self.refusal = server_refusal(teacher)
        """Why the server refuses a system turn (preflight's probe): then it is folded into the user turn."""
        self.guard = StopGuard(teacher)
        self.headers: dict[str, str] = {}
        """Extra request headers (the probe marks itself)."""

    def _advance(self, rows: int) -> None:
        if self.progress is not None:
            self.progress.update(rows)
            if self.stats.failures:
                self.progress.set_postfix(failed=self.stats.failures, refresh=False)

    # ---- one request -------------------------------------------------------------------------
    async def _chat(self, endpoint: Endpoint, messages: list[dict[str, str]]) -> dict[str, Any]:
        config = self.teacher.generation
        try:
            output = await endpoint.chat.chat_completion(
                messages=prompt_turns(self.teacher, messages, self.refusal),
                model=self.teacher.served_model_name,
                max_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p if config.top_p < 1 else None,  # TGI refuses top_p=1
                stop=self.stop or None,
            )
        except json.JSONDecodeError as error:
            raise RowError(f"malformed response: {error.msg}", retryable=True, raw=error.doc) from None
        try:
            choice = output.choices[0]
            text = choice.message.content
            finish = choice.finish_reason
        except (AttributeError, IndexError, KeyError, TypeError):
            raise RowError(
                "malformed response: no choices[0].message", retryable=True, raw=str(output)
            ) from None
        usage = getattr(output, "usage", None)
        return {
            "text": text,
            "finish_reason": finish,
            "num_tokens": getattr(usage, "completion_tokens", None),
            "num_prompt_tokens": getattr(usage, "prompt_tokens", None),
        }

    async def _completion(self, endpoint: Endpoint, prompt: str) -> dict[str, Any]:
        config = self.teacher.generation
        payload: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
        }
        if config.top_p < 1:
            payload["top_p"] = config.top_p
        if self.stop:
            payload["stop"] = self.stop
        if self.teacher.served_model_name:
            payload["model"] = self.teacher.served_model_name
        response = await endpoint.http.post(
            f"{endpoint.root}/v1/completions",
            json=payload,
            headers={**build_hf_headers(token=endpoint.token or False), **self.headers},
        )
        hf_raise_for_status(response)
        raw = response.text
        try:
            body = json.loads(raw)
            choice = body["choices"][0]
            text, finish = choice["text"], choice.get("finish_reason")
        except json.JSONDecodeError as error:
            raise RowError(f"malformed response: {error.msg}", retryable=True, raw=raw) from None
        except (KeyError, IndexError, TypeError):
            raise RowError("malformed response: no choices[0].text", retryable=True, raw=raw) from None
        usage = body.get("usage") or {}
        return {
            "text": text,
            "finish_reason": finish,
            "num_tokens": usage.get("completion_tokens"),
            "num_prompt_tokens": usage.get("prompt_tokens"),
        }

    async def _text_generation(self, endpoint: Endpoint, prompt: str) -> dict[str, Any]:
        """TGI's native route; TGI wants temperature > 0 and top_p < 1, or None (greedy)."""
        config = self.teacher.generation
        sampling = config.temperature > 0
        try:
            output = await endpoint.chat.text_generation(
                prompt,
                max_new_tokens=config.max_new_tokens,
                do_sample=sampling,
                temperature=config.temperature if sampling else None,
                top_p=config.top_p if sampling and config.top_p < 1 else None,
                stop=self.stop or None,
                details=True,
            )
        except json.JSONDecodeError as error:
            raise RowError(f"malformed response: {error.msg}", retryable=True, raw=error.doc) from None
        details = getattr(output, "details", None)
        if details is None:
            raise RowError("malformed response: no details", retryable=True, raw=str(output))
        finish = str(getattr(details.finish_reason, "value", details.finish_reason))
        return {
            "text": cut_at_stop(output.generated_text, self.stop)[0],
            "finish_reason": TGI_FINISH.get(finish, finish),
            "num_tokens": details.generated_tokens,
            "num_prompt_tokens": len(details.prefill or []) or None,
        }

    def _request(self, endpoint: Endpoint, messages: list[dict[str, str]]) -> Coroutine[Any, Any, dict]:
        if self.teacher.prompt_format == "chat":
            return self._chat(endpoint, messages)
        prompt = completion_text(self.teacher, messages)
        if self.api == "tgi":
            return self._text_generation(endpoint, prompt)
        return self._completion(endpoint, prompt)

    # ---- one row, with retries ---------------------------------------------------------------
    async def _row(self, row: dict[str, Any], pool: SlotPool, writer: CheckpointWriter) -> dict[str, Any]:
        prompt_id = row["prompt_id"]
        problem = check_messages(row.get("messages"))
        if problem:
            record = failed_record(prompt_id, f"malformed prompt: row {prompt_id!r}: {problem}")
        elif self.guard.stopped:
            record = self._not_sent(prompt_id)
        else:
            if folds(self.teacher, row["messages"], self.refusal):
                self.stats.add_fold(self.refusal or "")
            record = await self._with_retries(prompt_id, row["messages"], pool)
        if record["error"]:
            self.stats.add_failure(record["error"])
        writer.add(record)
        self._advance(1)
        return record

    async def _with_retries(self, prompt_id: str, messages: list[dict], pool: SlotPool) -> dict[str, Any]:
        failed_on: Optional[Endpoint] = None
        charged = 0  # attempts that count against max_retries
        max_attempts = (self.teacher.max_retries + 1) * len(pool.endpoints)
        for attempt in range(max_attempts):
            endpoint = await pool.acquire(avoid=failed_on)
            if self.guard.stopped:  # stopped while this row waited for a slot: it is not sent
                pool.release(endpoint)
                return self._not_sent(prompt_id)
            if attempt:
                self.stats.retries += 1
            else:
                self.stats.requests += 1
            try:
                result = await asyncio.wait_for(self._request(endpoint, messages), self.teacher.timeout)
            except Exception as error:  # classify() re-raises what is not a server/transport failure
                failure = classify(error, endpoint.root)
            else:
                pool.succeeded(endpoint)
                self.guard.succeeded()
                return self._finished(prompt_id, result)
            if not failure.retryable:
                pool.succeeded(endpoint)  # the server answered; the request itself is wrong
                self.guard.failed(failure, endpoint.root)
                return failed_record(prompt_id, failure.message())
            delay = backoff_delay(charged, self.teacher.retry_backoff, failure.retry_after)
            charged += pool.failed(endpoint, delay)
            if charged > self.teacher.max_retries or attempt == max_attempts - 1:
                return failed_record(prompt_id, failure.message(f" after {attempt + 1} attempts"))
            logger.debug("%s: %s; retry %d in %.1fs", prompt_id, failure.reason, attempt + 1, delay)
            failed_on = endpoint
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _not_sent(self, prompt_id: str) -> dict[str, Any]:
        """A row the stopped teacher does not send: failed, counted, retried by `--retry-failed`."""
        self.stats.stopped = self.guard.stopped
        self.stats.stopped_rows += 1
        return self.guard.record(prompt_id)

    def _finished(self, prompt_id: str, result: dict[str, Any]) -> dict[str, Any]:
        text = (result["text"] or "").strip()
        num_tokens = int(result["num_tokens"] or 0)
        num_prompt_tokens = int(result["num_prompt_tokens"] or 0)
        self.stats.completion_tokens += num_tokens
        self.stats.prompt_tokens += num_prompt_tokens
        finish = result["finish_reason"]
        if not text:
            return failed_record(prompt_id, f"empty completion (finish_reason={finish})", num_prompt_tokens)
        return {
            "prompt_id": prompt_id,
            "response": text,
            "finish_reason": finish,
            "num_tokens": num_tokens,
            "num_prompt_tokens": num_prompt_tokens,
            "error": None,
        }

    # ---- one map batch -----------------------------------------------------------------------
    async def _open(self, stack: AsyncExitStack, url: str) -> Endpoint:
        root = endpoint_root(url)
        token = token_for(root)
        headers = self.headers or None
        if self.api == "tgi":
            chat = AsyncInferenceClient(
                model=root, token=client_token(root), timeout=self.teacher.timeout, headers=headers
            )
        else:
            chat = AsyncInferenceClient(
                base_url=f"{root}/v1", token=client_token(root), timeout=self.teacher.timeout, headers=headers
            )
        await stack.enter_async_context(chat)
        http = None
        if self.teacher.prompt_format == "completion" and self.api != "tgi":  # /v1/completions
            http = await stack.enter_async_context(get_async_session())
        return Endpoint(root=root, token=token, chat=chat, http=http)

    async def _generate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        writer = CheckpointWriter(self.checkpoint)
        async with AsyncExitStack() as stack:
            endpoints = [await self._open(stack, url) for url in self.teacher.endpoints]
            pool = SlotPool(endpoints, self.teacher.max_concurrency)
            try:
                return await asyncio.gather(*(self._row(row, pool, writer) for row in rows))
            finally:
                writer.flush()

    def reused(self, count: int) -> None:
        self._advance(count)

    async def probe_once(self, messages: list[dict[str, str]]) -> tuple[Optional[RowError], str]:
        """Send one prompt to the first endpoint that answers HTTP: (its failure or None, its root URL)."""
        failure, root = None, ""
        async with AsyncExitStack() as stack:
            for url in self.teacher.endpoints:
                endpoint = await self._open(stack, url)
                root = endpoint.root
                try:
                    await asyncio.wait_for(self._request(endpoint, messages), self.teacher.timeout)
                    return None, root
                except Exception as error:  # classify() re-raises what is not a server/transport failure
                    failure = classify(error, root)
                if not failure.retryable:
                    return failure, root
        return failure, root

    def generate_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.refusal is None and server_key(self.teacher) not in _SERVER_REFUSALS:
            self._decide_fold(rows)
        return run_coroutine(self._generate(rows))

    def _decide_fold(self, rows: list[dict[str, Any]]) -> None:
        """No preflight probed this teacher in this process (a library call, another command): probe
        here, once, when a row has a system turn its server might refuse."""
        first = next((row["messages"] for row in rows if check_messages(row.get("messages")) is None), None)
        if first is None or self.teacher.prompt_format != "chat":
            return
        if has_system_turn(chat_messages(self.teacher, first)):
            self.refusal = probe_first_prompt(self.teacher, first, stop_on_refusal=False)


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


def probe_first_prompt(
    teacher: TeacherConfig, messages: list[dict[str, str]], *, stop_on_refusal: bool = True
) -> Optional[str]:
    """Before a stage: send the teacher's first prompt once, as generation will send it (at most
    PROBE_MAX_TOKENS new tokens), so a wrong setting fails once here instead of once per row.

    A server that refuses the system turn but takes it folded into the first user turn: the fold applies
    to this process's generation from now on, and its reason is returned. Any other refusal (4xx, an
    unknown model) raises `ProbeRefused` with the server's message and the fix (without
    `stop_on_refusal`: returns None, and generation's `StopGuard` stops the teacher). A retryable failure
    (429, 5xx, a timeout) says nothing about the settings: a warning, and generation retries as usual.
    """
    check_teacher(teacher)
    generation = dataclasses.replace(
        teacher.generation, max_new_tokens=min(teacher.generation.max_new_tokens, PROBE_MAX_TOKENS)
    )
    stats = GenerationStats(teacher.name)
    prober = EndpointGenerator(dataclasses.replace(teacher, generation=generation), NO_CHECKPOINT, stats)
    prober.headers, prober.refusal = {PROBE_HEADER: "preflight"}, None
    failure, url = run_coroutine(prober.probe_once(messages))
    if failure is None or failure.retryable:
        return _probed(teacher, None, failure)
    if teacher.prompt_format == "chat" and has_system_turn(chat_messages(teacher, messages)):
        prober.refusal = f"the server refuses a system turn ({failure_text(failure)})"
        folded, _ = run_coroutine(prober.probe_once(messages))
        if folded is None or folded.retryable:
            return _probed(teacher, prober.refusal, folded)
    if not stop_on_refusal:
        return _probed(teacher, None, failure)
    raise ProbeRefused(
        f"{url} refused the first prompt ({failure_text(failure)}). {probe_fix(failure, url)} "
        "Nothing was generated."
    )


def _probed(teacher: TeacherConfig, refusal: Optional[str], failure: Optional[RowError]) -> Optional[str]:
    """Remember the probe's outcome for this process's generation, and say what it means in the log.
    A probe the server answered lifts a stop from an earlier stage (the cause was fixed)."""
    _SERVER_REFUSALS[server_key(teacher)] = refusal
    if failure is None:
        _STOPPED.pop(server_key(teacher), None)
    if refusal:
        logger.warning(
            "teacher %s: %s; the system prompt is folded into the first user turn", teacher.name, refusal
        )
    if failure is not None:
        logger.warning(
            "teacher %s: the probe request failed (%s)",
            teacher.name,
            redact(failure.message()),
        )
    return refusal


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
