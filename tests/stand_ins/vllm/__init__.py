"""A stand-in for vLLM's offline API (`LLM`, `SamplingParams`), for tests on machines without a GPU.

vLLM cannot run here, so tests put this folder on `PYTHONPATH` of the processes they start. It records
what each engine was given, as the engine saw it when it started, to the JSON-lines file named by
`PERSYN_VLLM_RECORD`: the process, the launcher's rank variables, `CUDA_VISIBLE_DEVICES`, the start
method of its (would-be) worker processes, its arguments; then every `chat`/`generate` call (with the
rank variables at call time) and every `shutdown`. Tests read the record, so a wrong placement fails.

Answers are a pure function of the prompt (the same in every process), rendered like vLLM does: chat
conversations through the model's own chat template (the tokenizer is real; the weights are never
loaded). `PERSYN_VLLM_DELAY` (seconds per call) makes a call take time, as a real engine's does, so that
the processes of a launch share a stage's chunks instead of the first one taking them all.

Ports, as vLLM takes them: an engine probes for the first free port from `VLLM_PORT` up (binds and
releases it; any free port when unset), and its distributed store binds that port later and holds it for
the engine's life. Two engines of a node that probe the same port at the same moment both find it free,
and the second to bind fails with EADDRINUSE. `PERSYN_VLLM_START_BARRIER` (`<folder>:<engines>`) makes
that moment certain: every engine waits for the others before probing, and again before binding.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BARRIER = "PERSYN_VLLM_START_BARRIER"
"""`<folder>:<engines>`: engines wait for each other before probing their port and before binding it."""
RECORD = "PERSYN_VLLM_RECORD"
"""Environment variable naming the JSON-lines file every engine event is appended to."""
SEEN = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
    "CUDA_VISIBLE_DEVICES", "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_PORT",
)  # fmt: skip
"""Environment variables recorded when an engine starts (None when unset)."""
__version__ = "0.0.0+stand-in"


def record(event: str, **details: Any) -> None:
    """Append one event; one `write` on an append-only file, so processes of a launch never interleave."""
    line = json.dumps({"event": event, "pid": os.getpid(), **details}) + "\n"
    descriptor = os.open(os.environ[RECORD], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def wait_for_engines(phase: str) -> None:
    """With `PERSYN_VLLM_START_BARRIER` set: arrive at `phase` and wait until every engine has."""
    if not os.environ.get(BARRIER):
        return
    folder, count = os.environ[BARRIER].rsplit(":", 1)
    arrived = Path(folder) / phase
    arrived.mkdir(parents=True, exist_ok=True)
    (arrived / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(arrived.iterdir())) < int(count):
        if time.monotonic() > deadline:
            raise TimeoutError(f"stand-in vLLM: the other engines never reached {phase!r}")
        time.sleep(0.01)


def probe_port() -> int:
    """vLLM's `get_open_port`: the first port from `VLLM_PORT` up that binds now (released at once)."""
    port = int(os.environ["VLLM_PORT"]) if os.environ.get("VLLM_PORT") else 0
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("", port))
                return probe.getsockname()[1]
            except OSError:
                port += 1


def bind_engine_port() -> tuple[int, socket.socket]:
    """Probe a port, then bind it for the engine's life, as vLLM's distributed store does later."""
    wait_for_engines("probe")
    port = probe_port()
    wait_for_engines("bind")
    store = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        store.bind(("", port))
        store.listen()
    except OSError as error:
        store.close()
        wait_for_engines("bound")
        if error.errno == errno.EADDRINUSE:
            record("port-clash", port=port, environment={name: os.environ.get(name) for name in SEEN})
            raise RuntimeError(f"EADDRINUSE: the engine's port {port} was taken by another engine") from error
        raise
    wait_for_engines("bound")  # hold it while the other engines bind theirs
    return port, store


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"
    index: int = 0


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class LLMEngine:
    def __init__(self, llm: LLM):
        self.llm = llm

    def shutdown(self) -> None:
        self.llm.store.close()
        record("shutdown", engine=self.llm.engine_id)


class LLM:
    """Records its start; answers deterministically from the prompt text."""

    def __init__(self, model: str, **kwargs: Any):
        self.model = model
        self.kwargs = kwargs
        self.engine_id = f"{os.getpid()}-{id(self)}"
        self.port, self.store = bind_engine_port()
        self.llm_engine = LLMEngine(self)
        self._tokenizer: Any = None
        record(
            "engine",
            engine=self.engine_id,
            port=self.port,
            model=model,
            tensor_parallel_size=kwargs.get("tensor_parallel_size", 1),
            dtype=kwargs.get("dtype"),
            seed=kwargs.get("seed"),
            environment={name: os.environ.get(name) for name in SEEN},
        )

    def get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def chat(self, messages: list[list[dict[str, str]]], sampling_params: SamplingParams, **_: Any) -> list:
        tokenizer = self.get_tokenizer()
        prompts = [
            tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
            for turns in messages
        ]
        return self._answer("chat", prompts, sampling_params)

    def generate(self, prompts: list[str], sampling_params: SamplingParams, **_: Any) -> list:
        return self._answer("generate", list(prompts), sampling_params)

    def _answer(self, call: str, prompts: list[str], params: SamplingParams) -> list[RequestOutput]:
        record(
            call,
            engine=self.engine_id,
            prompts=prompts,
            max_tokens=params.max_tokens,
            rank=os.environ.get("RANK"),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        time.sleep(float(os.environ.get("PERSYN_VLLM_DELAY", "0")))
        return [answer(prompt, params.max_tokens) for prompt in prompts]


def answer(prompt: str, max_tokens: int) -> RequestOutput:
    """The stand-in's answer to `prompt`: a number drawn from the prompt's text, as an answer sentence."""
    words = f"The answer is {zlib.crc32(prompt.encode()) % 100}.".split()[:max_tokens]
    finish = "stop" if len(words) == 4 else "length"
    return RequestOutput(
        prompt=prompt,
        prompt_token_ids=list(range(len(prompt.split()))),
        outputs=[CompletionOutput(" ".join(words), list(range(len(words))), finish)],
    )
