"""Which servers get the user's Hugging Face token.

The token authenticates Hugging Face hosts (Inference Endpoints, Spaces, the Hub's inference routes). A
teacher endpoint elsewhere (a lab's TGI, a third-party vLLM) must not receive it, or anyone running that
server could read it from the request headers. Private gateways that do check HF tokens are named in
`PERSYN_HF_TOKEN_HOSTS` (comma-separated host names).
"""

from __future__ import annotations

import os
from typing import Optional
from urllib.parse import urlparse

from huggingface_hub import get_token

HF_HOST_SUFFIXES = (".huggingface.cloud", ".hf.space", "huggingface.co", ".huggingface.co", ".hf.co")


NO_TOKEN = "persyn-no-hf-token"
"""Given to `AsyncInferenceClient` for other hosts: with no token it falls back to the stored Hub token."""


def trusted_host(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    extra = {h.strip().lower() for h in os.environ.get("PERSYN_HF_TOKEN_HOSTS", "").split(",") if h.strip()}
    return host in extra or any(host == s.lstrip(".") or host.endswith(s) for s in HF_HOST_SUFFIXES)


def token_for(url: str) -> Optional[str]:
    """The standard Hub token (HF_TOKEN / `hf auth login`) for Hugging Face hosts, None for the rest."""
    return get_token() if trusted_host(url) else None


def client_token(url: str) -> str:
    """`token=` for `AsyncInferenceClient`: the Hub token for Hugging Face hosts, a placeholder elsewhere."""
    return token_for(url) or NO_TOKEN


def redact(text: str) -> str:
    """`text` with the Hub token (if any) masked: a server's error body is quoted in logs, row errors and
    one-line messages, and a server that echoes request headers must not leak the token through them."""
    token = get_token()
    return text.replace(token, "hf_***") if token and len(token) >= 8 else text
