"""Real servers for tests and benchmarks: llama.cpp's OpenAI-compatible server and a fault proxy.

`LlamaServer` runs `python -m llama_cpp.server` on a free port of 127.0.0.1, serving a bundled GGUF;
it can be stopped and started again on the same port (a server restart in the middle of a stage).
`FaultProxy` forwards HTTP/1.1 requests to an upstream server and, following a plan keyed by prompt
text, answers some of them itself: 429 with Retry-After, 500, 503, a hang, a dropped connection,
malformed JSON, or the real answer with its text emptied. It counts requests and upstream successes
per prompt, so a test can check that every row was generated exactly once; preflight's probe request
(header `X-Persyn-Probe`) passes through uncounted, in `probes`.
`ScriptedChatServer` is a minimal OpenAI-compatible chat server whose answers follow a settable mode:
answer, refuse every request with an OpenAI-style error (a wrong setting), refuse system turns only
(like Gemma-2's template), or fail with 503.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

FAULTS = ("429", "500", "503", "hang", "drop", "malformed", "empty")


def llama_cpp_available() -> bool:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on 127.0.0.1 serving one GGUF (the process is ours to stop)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        port: Optional[int] = None,
        n_ctx: int = 2048,
        threads: int = 1,
        batch_invariant: bool = True,
    ):
        self.model_path = str(model_path)
        self.batch_invariant = batch_invariant
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.threads = threads
        self.process: Optional[subprocess.Popen] = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> LlamaServer:
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", self.model_path,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--verbose", "false",
        ]  # fmt: skip
        if self.batch_invariant:
            # One token per eval: llama-cpp-python reuses the previous request's matching prefix and only
            # evaluates the rest, and a CPU build's kernels are not batch-invariant, so with larger evals
            # the same prompt gives slightly different logits after different predecessors. Benchmarks
            # keep the server's default batches (prompt evaluation is much faster).
            command += ["--n_batch", "1", "--n_ubatch", "1"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited ({self.process.returncode}); see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama.cpp server did not start in {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        """Kill the server at once (SIGKILL: an abrupt crash, connections reset)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TransformersServer(LlamaServer):
    """`transformers serve` (continuous batching) on 127.0.0.1; requests must pass `model=<model_path>`."""

    def __init__(self, model_path: str | Path, *, port: Optional[int] = None, num_blocks: int = 64):
        super().__init__(model_path, port=port)
        self.num_blocks = num_blocks

    def start(self, timeout: float = 300.0) -> TransformersServer:
        command = [
            str(Path(sys.executable).parent / "transformers"), "serve",
            "--continuous-batching", "--cb-num-blocks", str(self.num_blocks),
            "--dtype", "bfloat16", "--device", "cpu",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited ({self.process.returncode}); see {self.log_path}"
                )
            try:
                # /health, not /v1/models: listing models scans the HF cache and fails (500) without one
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"transformers serve did not start in {timeout}s; see {self.log_path}")


def prompt_key(body: dict) -> str:
    """The text a request is about: the last chat turn, or the completion prompt."""
    if "messages" in body and body["messages"]:
        return str(body["messages"][-1].get("content", ""))
    return str(body.get("prompt", body.get("inputs", "")))


class FaultProxy:
    """HTTP/1.1 proxy on 127.0.0.1 in a background thread; injects faults by plan, counts requests.

    `plan` maps a substring of the prompt text to a list of faults applied to that prompt's successive
    requests (then requests pass through), e.g. `{"apples": ["429", "500"]}`. `default` (a list of
    faults) applies likewise to every prompt no rule matches. `hang_seconds` is how long "hang" waits.
    """

    def __init__(self, upstream: str, *, retry_after: float = 1.0, hang_seconds: float = 30.0):
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.plan: dict[str, list[str]] = {}
        self.default: list[str] = []
        self.requests: Counter = Counter()
        self.authorizations: set[str] = set()
        """Every Authorization header value the proxy saw (a leaked token would show here)."""
        self.successes: Counter = Counter()
        self.injected: Counter = Counter()
        self.request_times: dict[str, list[float]] = defaultdict(list)
        self.probes = 0
        """Preflight probe requests (header X-Persyn-Probe): forwarded, never faulted or counted above."""
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self) -> None:
        with self._lock:
            self.plan, self.default = {}, []
            self.requests.clear()
            self.probes = 0
            self.successes.clear()
            self.injected.clear()
            self.request_times.clear()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- serving -----------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    def _next_fault(self, key: str) -> Optional[str]:
        with self._lock:
            self.requests[key] += 1
            self.request_times[key].append(time.monotonic())
            for pattern, faults in self.plan.items():
                if pattern in key:
                    count = sum(n for k, n in self.requests.items() if pattern in k)
                    return faults[count - 1] if count <= len(faults) else None
            count = self.requests[key]
            return self.default[count - 1] if count <= len(self.default) else None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    line = (await reader.readline()).decode("latin-1")
                    if line in ("\r\n", "\n", ""):
                        break
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                if not await self._handle(method, path, headers, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def _handle(self, method: str, path: str, headers: dict, body: bytes, writer) -> bool:
        """Answer one request; False closes the connection."""
        fault = None
        key = ""
        self.authorizations.add(str({k.lower(): v for k, v in headers.items()}.get("authorization")))
        probe = method == "POST" and "x-persyn-probe" in headers
        if probe:  # preflight's probe: passed through, counted apart
            with self._lock:
                self.probes += 1
        elif method == "POST":
            try:
                key = prompt_key(json.loads(body or b"{}"))
            except json.JSONDecodeError:
                key = ""
            fault = self._next_fault(key)
        if fault:
            with self._lock:
                self.injected[fault] += 1
        if fault == "drop":
            return False
        if fault == "hang":
            await asyncio.sleep(self.hang_seconds)
            return False
        if fault in ("429", "500", "503"):
            extra = {"Retry-After": f"{self.retry_after:g}"} if fault in ("429", "503") else {}
            await self._reply(writer, int(fault), b'{"error": "injected"}', extra)
            return True
        status, payload = await asyncio.to_thread(self._forward, method, path, headers, body)
        if status == 200 and method == "POST" and not probe:
            with self._lock:
                self.successes[key] += 1
        if fault == "malformed":
            payload = payload[: max(1, len(payload) // 2)]
        elif fault == "empty" and status == 200:
            data = json.loads(payload)
            for choice in data.get("choices", []):
                if "message" in choice:
                    choice["message"]["content"] = ""
                else:
                    choice["text"] = ""
            payload = json.dumps(data).encode()
        await self._reply(writer, status, payload, {})
        return True

    def _forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.upstream + path,
            data=body if method == "POST" else None,
            method=method,
            headers={"Content-Type": headers.get("content-type", "application/json")},
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except OSError as error:  # upstream down: what a gateway in front of a dead server says
            return 502, json.dumps({"error": f"upstream unreachable: {error}"}).encode()

    @staticmethod
    async def _reply(writer, status: int, payload: bytes, extra: dict) -> None:
        lines = [
            f"HTTP/1.1 {status} X",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            "Connection: keep-alive",
            *(f"{k}: {v}" for k, v in extra.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()


class ScriptedChatServer:
    """An OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 (a threading HTTP server) whose replies
    follow `mode`, settable while it runs:

    - `answer`: a chat completion whose text names the last user turn;
    - `refuse`: `status` with an OpenAI-style error body carrying `message`, to every request (a wrong
      `served_model_name`, an unknown model);
    - `refuse_system`: that error only to requests with a system turn (a Gemma-2 template), else answer;
    - `unavailable`: 503, which clients retry.

    `answer_first` requests are answered whatever the mode (e.g. the probe, then refusals). Every chat
    request is counted in `requests` (probes too: `probes` counts those) and kept in `bodies`.
    """

    def __init__(
        self, mode: str = "answer", *, status: int = 400, message: str = "System role not supported"
    ):
        self.mode, self.status, self.message = mode, status, message
        self.answer_first = 0
        self.requests = 0
        self.probes = 0
        self.bodies: list[dict] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ScriptedChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reply(self, body: dict, probe: bool) -> tuple[int, dict]:
        """(status, JSON body) for one chat request, by the mode; counts it."""
        with self._lock:
            self.requests += 1
            self.probes += probe
            self.bodies.append(body)
            count = self.requests
        messages = body.get("messages") or []
        system = any(m.get("role") == "system" for m in messages)
        if (
            count <= self.answer_first
            or self.mode == "answer"
            or (self.mode == "refuse_system" and not system)
        ):
            return 200, self.completion(messages)
        if self.mode == "unavailable":
            return 503, {"error": {"message": "overloaded", "type": "server_error", "code": 503}}
        error = {"message": self.message, "type": "invalid_request_error", "param": None, "code": self.status}
        return self.status, {"error": error}

    @staticmethod
    def completion(messages: list[dict]) -> dict:
        text = f"Answer to: {str(messages[-1].get('content', ''))[-40:]}" if messages else "Answer"
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    def _handler(self) -> type:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/v1/models"):
                    self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "code": 404}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "code": 404}})
                    return
                self._send(*server.reply(body, probe="X-Persyn-Probe" in self.headers))

        return Handler
