"""The servers a served teacher's rows go to, and how requests share them.

`endpoint_root` turns what users paste into a root URL, `Endpoint` holds one server's clients, and
`SlotPool` hands each request whichever server has a slot free first, holding a failing one back.
`run_coroutine` drives the async clients from sync code (also inside a running loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from huggingface_hub import AsyncInferenceClient

COOLDOWN_BASE = 0.5
MAX_COOLDOWN = 30.0
"""Seconds a repeatedly failing endpoint's slots are held back: doubles per consecutive failure."""

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
