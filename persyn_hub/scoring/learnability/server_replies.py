"""A served student's replies read as per-token log-probs: one pure function per server API (TGI prefill
details, vLLM `prompt_logprobs`, llama-cpp-python's echo), and the checks that tie them to the local
tokens (`response_sum`, `first_difference`). `served.py` sends the requests (see its docstring for the
payloads); a reply that cannot be matched to the local tokens raises `ServedScoringError`.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

from persyn_hub.errors import PersynError
from persyn_hub.generation.retry import RowError

LLAMA_CPP_SHIFT = 1
"""llama-cpp-python's echoed entry k scores prompt token k + 1 (see `llama_cpp_token_logprobs`)."""


class ServedScoringError(PersynError, RuntimeError):
    """The served student's answer cannot be matched to the local tokens: the stage stops, naming the row."""


# --------------------------------------------------------------------------------------------------
# Parsing: one reply -> per-token log-probs (pure functions, one per server)


def malformed(what: str, body: Any) -> RowError:
    """A reply that lacks what was asked for: a retryable row error holding the start of the reply."""
    return RowError(f"malformed response: {what}", retryable=True, raw=json.dumps(body)[:2000])


def tgi_token_logprobs(body: Any) -> tuple[list[int], list[Optional[float]]]:
    """TGI `/generate` with `decoder_input_details`: the server's prompt token ids and their log-probs.

    `details.prefill[i].logprob` is log p(token i | tokens < i); the first has no context (null).
    """
    if isinstance(body, list) and body:  # the legacy `/` route answers a list
        body = body[0]
    try:
        prefill = body["details"]["prefill"]
        ids = [int(token["id"]) for token in prefill]
        values = [None if token.get("logprob") is None else float(token["logprob"]) for token in prefill]
    except (KeyError, TypeError, ValueError):
        raise malformed("no details.prefill [{id, logprob}]", body) from None
    if not prefill:
        raise malformed("empty details.prefill (is decoder_input_details supported?)", body)
    values[0] = None
    return ids, values


def vllm_token_logprobs(body: Any, ids: list[int]) -> list[Optional[float]]:
    """vLLM `prompt_logprobs` for the prompt token ids `ids`, checked token by token.

    Entry i maps token ids (JSON keys are strings) to `{logprob, rank, decoded_token}`; vLLM always
    includes the prompt's own token, so a missing key means the reply is not about `ids`.
    """
    try:
        entries = body["choices"][0]["prompt_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise malformed("no choices[0].prompt_logprobs", body) from None
    if not isinstance(entries, list):
        raise malformed("choices[0].prompt_logprobs is not a list (was prompt_logprobs sent?)", body)
    if len(entries) != len(ids):
        raise ServedScoringError(
            f"the server scored {len(entries)} prompt tokens, the student has {len(ids)}"
        )
    values: list[Optional[float]] = [None]
    for position in range(1, len(ids)):
        entry = entries[position]
        value = entry.get(str(ids[position])) if isinstance(entry, dict) else None
        if value is None:
            got = sorted(entry) if isinstance(entry, dict) else entry
            raise ServedScoringError(
                f"token {position}: the server's prompt_logprobs list {got}, not the local token {ids[position]}"
            )
        values.append(float(value["logprob"] if isinstance(value, dict) else value))
    return values


def llama_cpp_token_logprobs(
    body: Any, server_ids: list[int], bos_token_id: Optional[int], shift: int = LLAMA_CPP_SHIFT
) -> list[Optional[float]]:
    """llama-cpp-python's `echo` + `logprobs` reply -> log p(token p | tokens < p) per position p.

    llama-cpp-python 0.3.x (`Llama._create_completion`) drops a leading BOS from the echoed tokens,
    pairs the k-th remaining token with logits row k of the whole prompt, and leaves out every token
    whose id is BOS. So, when the prompt starts with BOS, the values are right but entry k belongs to
    prompt token k + `shift` (= 1) and later BOS-id tokens (SmolLM2's `<|im_start|>`) have no entry:
    read index for index against the token ids, each value lands on the token before the one it scores.
    This function puts every value back on its token (None where the server gives none: position 0,
    position 1 which the server nulls, skipped BOS-id tokens). When the prompt does NOT start with BOS,
    token k is paired with row k, i.e. scored against the next position's distribution (the upstream
    bug); no shift recovers those numbers, so such prompts are refused. `shift` is a parameter only so
    tests can show what the uncorrected reading gives.
    """
    if bos_token_id is None or not server_ids or server_ids[0] != bos_token_id:
        raise ServedScoringError(
            "llama-cpp-python's echo log-probs are misaligned (each token scored against the next position) "
            "unless the prompt starts with the BOS token, and this student's text does not "
            f"(first token {server_ids[:1]}, BOS {bos_token_id}); serve it with TGI or vLLM instead"
        )
    try:
        choice = body["choices"][0]
        values = choice["logprobs"]["token_logprobs"]
        completion_tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise malformed("no choices[0].logprobs.token_logprobs (was echo sent?)", body) from None
    if not isinstance(values, list):
        raise malformed("choices[0].logprobs.token_logprobs is not a list", body)
    positions = [k + shift for k, token in enumerate(server_ids[1:]) if token != bos_token_id]
    extra = len(values) - len(positions)  # the generated token (max_tokens=1) may follow the prompt's
    if not 0 <= extra <= completion_tokens:
        raise ServedScoringError(
            f"llama.cpp echoed {len(values)} log-probs for {len(server_ids)} prompt tokens "
            f"({len(positions)} expected after its BOS handling); its echo format changed?"
        )
    out: list[Optional[float]] = [None] * len(server_ids)
    for position, value in zip(positions, values):
        if 0 <= position < len(out):
            out[position] = None if value is None else float(value)
    return out


def response_sum(values: list[Optional[float]], start: int, length: int) -> tuple[Optional[float], int]:
    """Sum of the response tokens' log-probs (positions [max(start, 1), length)) and their count.

    Mirrors `learnability.response_logprob_sums`: position 0 has no context, and a row with no
    response token left counts 0 tokens with a None sum.
    """
    begin = max(start, 1)
    if begin >= length:
        return None, 0
    picked = values[begin:length]
    missing = [begin + i for i, value in enumerate(picked) if value is None]
    if len(picked) != length - begin or missing:
        raise ServedScoringError(f"the server gave no log-prob for response token(s) {missing[:5]}")
    return math.fsum(picked), length - begin  # type: ignore[arg-type]


def first_difference(a: list[int], b: list[int]) -> Optional[int]:
    """First position where two token lists differ (None when equal)."""
    for position, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return position
    return None if len(a) == len(b) else min(len(a), len(b))


def llama_cpp_tokens(body: Any) -> list[int]:
    """llama-cpp-python's `/extras/tokenize` reply -> the server's token ids."""
    try:
        return [int(token) for token in body["tokens"]]
    except (KeyError, TypeError, ValueError):
        raise malformed("no tokens from /extras/tokenize", body) from None


__all__ = [
    "LLAMA_CPP_SHIFT",
    "ServedScoringError",
    "first_difference",
    "llama_cpp_token_logprobs",
    "llama_cpp_tokens",
    "malformed",
    "response_sum",
    "tgi_token_logprobs",
    "vllm_token_logprobs",
]
