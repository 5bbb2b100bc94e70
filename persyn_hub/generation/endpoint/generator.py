"""`EndpointGenerator`: the map function that sends a served teacher's rows (one request per row, with
retries over the endpoints' slots, one map batch at a time), and preflight's `probe_first_prompt`, the
same generator sending one prompt. A generator that no preflight probed probes itself, so the two live
together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, Optional

from datasets.utils import tqdm
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.utils import build_hf_headers, get_async_session, hf_raise_for_status

from persyn_hub.generation.auth import client_token, token_for
from persyn_hub.generation.checkpoint import CheckpointedGenerator, GenerationCheckpoint
from persyn_hub.generation.endpoint.checks import ProbeRefused, check_teacher, probe_fix
from persyn_hub.generation.endpoint.client import Endpoint, SlotPool, endpoint_root, run_coroutine
from persyn_hub.generation.endpoint.guard import (
    SERVER_REFUSALS,
    StopGuard,
    failure_text,
    probed,
    server_key,
    server_refusal,
)
from persyn_hub.generation.endpoint.records import CheckpointWriter, check_messages, failed_record
from persyn_hub.generation.prompting import (
    chat_messages,
    completion_text,
    cut_at_stop,
    default_stop,
    folds,
    has_system_turn,
    prompt_turns,
)
from persyn_hub.generation.retry import RowError, backoff_delay, classify
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.recipe.sections import TeacherConfig

logger = logging.getLogger(__name__)

TGI_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}

PROBE_HEADER = "X-Persyn-Probe"
"""Header of preflight's probe request (value `preflight`), so server logs and proxies can tell it apart."""
PROBE_MAX_TOKENS = 16
"""New tokens the probe asks for at most: the request is the real one otherwise, and a long-answer
teacher's probe takes seconds, not minutes."""
NO_CHECKPOINT: Any = None
"""The probe's generator: it sends one request and writes no row, so it has no checkpoint."""


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
        if self.refusal is None and server_key(self.teacher) not in SERVER_REFUSALS:
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
        return probed(teacher, None, failure)
    if teacher.prompt_format == "chat" and has_system_turn(chat_messages(teacher, messages)):
        prober.refusal = f"the server refuses a system turn ({failure_text(failure)})"
        folded, _ = run_coroutine(prober.probe_once(messages))
        if folded is None or folded.retryable:
            return probed(teacher, prober.refusal, folded)
    if not stop_on_refusal:
        return probed(teacher, None, failure)
    raise ProbeRefused(
        f"{url} refused the first prompt ({failure_text(failure)}). {probe_fix(failure, url)} "
        "Nothing was generated."
    )
