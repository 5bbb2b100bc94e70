"""Learnability from a served student: TGI prefill details, vLLM prompt_logprobs, llama-cpp-python echo.

Same columns, semantics and row order as the in-process scorer (`learnability.score_learnability`):
each row is tokenized locally exactly as SFT will see it (`tokenize_for_student`: the student's chat
template, `max_length` truncation), the server is asked for the log-prob of every token of that text
given the tokens before it, and the response tokens are picked by position in the local token ids. The
server's tokens are checked against the local ids token by token; a mismatch stops the stage naming the
row, never a silently wrong score. Failed rows (`error` set, `response` None) get None scores without
a request, like in-process.

APIs (`student.endpoint_api`; `auto` asks the server which it is):

- `tgi`: POST `/generate` `{"inputs": text, "parameters": {"max_new_tokens": 1, "details": true,
  "decoder_input_details": true}}` -> `details.prefill[i] = {id, text, logprob}` (the first logprob null).
- `vllm`: POST `/v1/completions` `{"prompt": [token ids], "max_tokens": 1, "prompt_logprobs": 1}` ->
  `choices[0].prompt_logprobs[i] = {"<token id>": {logprob, rank, decoded_token}, ...}` (the first null).
  Token ids are sent, so vLLM scores exactly the local tokens.
- `llama_cpp` (`python -m llama_cpp.server`, llama-cpp-python 0.3.x): POST `/v1/completions`
  `{"prompt": text, "echo": true, "logprobs": 1, "max_tokens": 1}`; the server's token ids come from
  `/extras/tokenize`. Its echo is misaligned and is read with a correction: `llama_cpp_token_logprobs`
  (`server_replies.py` reads every API's reply).

A server that puts a BOS token in front of a text that already starts with one (TGI, or llama.cpp with
`add_bos_token`) is sent the text without its leading BOS, so it scores the tokens SFT sees.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Optional

from datasets import Dataset, Features, Value
from huggingface_hub.utils import build_hf_headers, get_async_session, hf_raise_for_status

from persyn_hub.bundled import resolve_model
from persyn_hub.fingerprint import fingerprint
from persyn_hub.generation.auth import token_for
from persyn_hub.generation.endpoint.client import endpoint_root, run_coroutine
from persyn_hub.generation.retry import RowError, backoff_delay, classify
from persyn_hub.recipe.config import StudentConfig
from persyn_hub.scoring.answers import is_usable_answer
from persyn_hub.scoring.learnability.server_replies import (
    ServedScoringError,
    first_difference,
    llama_cpp_token_logprobs,
    llama_cpp_tokens,
    response_sum,
    tgi_token_logprobs,
    vllm_token_logprobs,
)
from persyn_hub.scoring.learnability.tokens import (
    IDS_COLUMN,
    SCORE_FEATURES,
    START_COLUMN,
    tokenize_batch,
)

logger = logging.getLogger(__name__)

MAP_BATCH_SIZE = 256
"""Rows per `Dataset.map` batch; each batch's rows are scored concurrently."""
APIS = ("tgi", "vllm", "llama_cpp")


# --------------------------------------------------------------------------------------------------
# Talking to the server


class ServedScorer:
    """Callable for `Dataset.map(batched=True, with_indices=True)`: scores a batch through the server."""

    def __init__(self, student: StudentConfig, tokenizer: Any, api: str, model_name: Optional[str]):
        self.student = student
        self.tokenizer = tokenizer
        self.api = api
        self.model_name = model_name
        self.root = endpoint_root(student.endpoint or "")
        self.bos = tokenizer.bos_token_id
        self.strip_bos = False
        """Learned from the server: it adds a BOS itself, so texts are sent without their leading one."""
        self.token = token_for(self.root)  # Hugging Face hosts only (generation.auth); never logged

    # ---- one HTTP call, with retries -----------------------------------------------------------
    async def request_json(
        self, http: Any, method: str, path: str, payload: Optional[dict], parse: Callable[[Any], Any]
    ) -> Any:
        """GET/POST `path`, decode JSON, `parse` it; retry transport failures and malformed replies."""
        url = f"{self.root}{path}"
        for attempt in range(self.student.max_retries + 1):
            try:
                body = await asyncio.wait_for(self._send(http, method, url, payload), self.student.timeout)
                return parse(body)
            except ServedScoringError:
                raise
            except Exception as error:  # classify() re-raises what is not a server/transport failure
                failure = classify(error, url)
            if not failure.retryable:
                hint = (
                    " (wrong route? set student.endpoint_api)"
                    if failure.reason.startswith("HTTP 404")
                    else ""
                )
                raise ServedScoringError(failure.message(hint))
            if attempt == self.student.max_retries:
                raise ServedScoringError(failure.message(f" after {attempt + 1} attempts"))
            delay = backoff_delay(attempt, self.student.retry_backoff, failure.retry_after)
            logger.debug("%s: %s; retry %d in %.1fs", url, failure.reason, attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _send(self, http: Any, method: str, url: str, payload: Optional[dict]) -> Any:
        headers = build_hf_headers(token=self.token or False)
        if method == "GET":
            response = await http.get(url, headers=headers)
        else:
            response = await http.post(url, json=payload, headers=headers)
        hf_raise_for_status(response)
        raw = response.text
        try:
            return json.loads(raw)
        except json.JSONDecodeError as error:
            raise RowError(f"malformed response: {error.msg}", retryable=True, raw=raw) from None

    def _with_model(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.model_name:
            payload["model"] = self.model_name
        return payload

    # ---- one row -------------------------------------------------------------------------------
    def _text(self, ids: list[int]) -> str:
        sent = ids[1:] if self.strip_bos and ids and ids[0] == self.bos else ids
        return self.tokenizer.decode(sent, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _check_tokens(self, server_ids: list[int], ids: list[int]) -> bool:
        """True when the server saw the local tokens; False when it added a BOS (resend without ours)."""
        if server_ids == ids:
            return True
        added_bos = server_ids == ids[:1] + ids and ids[:1] == [self.bos]
        if added_bos and not self.strip_bos:
            return False
        at = first_difference(server_ids, ids) or 0
        note = (
            " (the server adds a BOS token the student's template does not write)"
            if server_ids[1:] == ids
            else ""
        )
        raise ServedScoringError(
            f"the server tokenized the text differently from {self.student.model!r}'s tokenizer at token "
            f"{at}: server {server_ids[max(0, at - 2) : at + 3]} vs local {ids[max(0, at - 2) : at + 3]} "
            f"({len(server_ids)} vs {len(ids)} tokens){note}; student.model must name the served model"
        )

    async def _token_logprobs(self, http: Any, ids: list[int]) -> list[Optional[float]]:
        if self.api == "vllm":
            payload = self._with_model(
                {"prompt": ids, "max_tokens": 1, "prompt_logprobs": 1, "temperature": 0}
            )
            return await self.request_json(
                http, "POST", "/v1/completions", payload, lambda body: vllm_token_logprobs(body, ids)
            )
        for _ in range(2):  # a second pass only after learning that the server adds its own BOS
            text = self._text(ids)
            if self.api == "tgi":
                parameters = {"max_new_tokens": 1, "details": True, "decoder_input_details": True}
                payload = {"inputs": text, "parameters": parameters}
                server_ids, values = await self.request_json(
                    http, "POST", "/generate", payload, tgi_token_logprobs
                )
            else:
                server_ids = await self.request_json(
                    http, "POST", "/extras/tokenize", self._with_model({"input": text}), llama_cpp_tokens
                )
            if not self._check_tokens(server_ids, ids):
                self.strip_bos = True
                continue
            if self.api == "llama_cpp":
                payload = self._with_model(
                    {"prompt": text, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
                )
                values = await self.request_json(
                    http,
                    "POST",
                    "/v1/completions",
                    payload,
                    partial(llama_cpp_token_logprobs, server_ids=server_ids, bos_token_id=self.bos),
                )
            return values
        raise AssertionError("unreachable")

    async def _row(
        self, http: Any, slots: asyncio.Semaphore, index: int, ids: list[int], start: int
    ) -> tuple[Optional[float], int]:
        async with slots:
            try:
                values = await self._token_logprobs(http, ids)
                return response_sum(values, start, len(ids))
            except ServedScoringError as error:
                raise ServedScoringError(f"row {index} ({self.root}, {self.api}): {error}") from None

    async def _score(self, rows: list[tuple[int, list[int], int]]) -> list[tuple[Optional[float], int]]:
        slots = asyncio.Semaphore(self.student.max_concurrency)
        async with get_async_session() as http:
            return await asyncio.gather(*(self._row(http, slots, *row) for row in rows))

    # ---- one map batch -------------------------------------------------------------------------
    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        tokenized = tokenize_batch(batch, self.tokenizer, self.student.max_length)
        n = len(indices)
        out: dict[str, list] = {
            "truncated": tokenized["truncated"],
            "learnability": [None] * n,
            "learnability_sum": [None] * n,
            "num_response_tokens": [None] * n,
        }
        errors = batch.get("error") or [None] * n
        todo = []
        for i in range(n):
            if not is_usable_answer(batch["response"][i], errors[i]):
                continue  # failed generation: None scores, like in-process
            ids, start = tokenized[IDS_COLUMN][i], tokenized[START_COLUMN][i]
            if max(start, 1) >= len(ids):
                out["num_response_tokens"][i] = 0  # nothing left to score (cut away by max_length)
            else:
                todo.append(i)
        if todo:
            rows = [(indices[i], tokenized[IDS_COLUMN][i], tokenized[START_COLUMN][i]) for i in todo]
            for i, (total, count) in zip(todo, run_coroutine(self._score(rows))):
                out["num_response_tokens"][i] = count
                if count:
                    out["learnability_sum"][i] = total
                    out["learnability"][i] = total / count
        return out


async def _probe(scorer: ServedScorer) -> tuple[str, Optional[str]]:
    """Which API the server speaks (when `auto`) and, for vLLM, the model name to send."""
    api = scorer.student.endpoint_api
    model_name = scorer.student.served_model_name
    if api != "auto" and (api != "vllm" or model_name):
        return api, model_name
    async with get_async_session() as http:
        if api == "auto":
            try:
                info = await scorer.request_json(http, "GET", "/info", None, lambda body: body)
            except ServedScoringError:
                info = None  # vLLM and llama-cpp-python have no /info
            if isinstance(info, dict) and "model_id" in info:
                return "tgi", model_name
        models = await scorer.request_json(http, "GET", "/v1/models", None, lambda body: body)
    try:
        listed = models["data"][0]
    except (KeyError, IndexError, TypeError):
        raise ServedScoringError(f"{scorer.root}/v1/models lists no model: {str(models)[:300]}") from None
    owner = listed.get("owned_by")
    if api == "auto":
        api = {"vllm": "vllm", "me": "llama_cpp"}.get(owner, "")  # "me": llama-cpp-python's server
        if not api:
            raise ServedScoringError(
                f"student.endpoint_api: cannot tell which server {scorer.root} is (owned_by={owner!r}); "
                f"set it to one of {list(APIS)}."
            )
    if api == "vllm" and not model_name:
        model_name = listed.get("id")
    return api, model_name


def _check_student(student: StudentConfig) -> None:
    url = student.endpoint or ""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"student.endpoint: {url!r} is not an http(s) URL (write http://host:port).")
    if student.endpoint_api not in ("auto", *APIS):
        raise ValueError(f"student.endpoint_api: {student.endpoint_api!r} is not one of {['auto', *APIS]}.")
    if student.max_concurrency <= 0 or student.timeout <= 0:
        raise ValueError("student.max_concurrency and student.timeout must be positive.")
    if student.max_retries < 0 or student.retry_backoff < 0:
        raise ValueError("student.max_retries and student.retry_backoff must not be negative.")


def score_learnability_served(dataset: Dataset, student: StudentConfig, *, tokenizer: Any = None) -> Dataset:
    """Add `truncated`, `learnability`, `learnability_sum`, `num_response_tokens`, asking `student.endpoint`.

    Called by `score_learnability` when `student.endpoint` is set; the columns mean exactly what they
    mean in-process. Only the student's tokenizer is loaded (from `student.model`), to render each row
    as SFT will and to check the server's tokens. A row the server cannot score (tokens differ, retries
    exhausted, longer than its context) stops the stage with a `ServedScoringError` naming the row.

    Example::

        student = StudentConfig(model="bundled:smollm2-135m-instruct", endpoint="http://127.0.0.1:8080")
        scored = score_learnability(pool, student)  # dispatches here
    """
    _check_student(student)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            resolve_model(student.model), trust_remote_code=student.trust_remote_code
        )
    scorer = ServedScorer(student, tokenizer, "auto", None)
    scorer.api, scorer.model_name = run_coroutine(_probe(scorer))
    logger.info("Scoring learnability with the served student at %s (%s)", scorer.root, scorer.api)
    features = Features({**dataset.features, "truncated": Value("bool"), **SCORE_FEATURES})
    return dataset.map(
        scorer,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        with_indices=True,
        features=features,
        load_from_cache_file=False,  # the model behind a URL can change: always ask it
        new_fingerprint=fingerprint("learnability-served", dataset._fingerprint, student, scorer.api),
        desc="Scoring learnability (served student)",
    )
