"""Shared fixtures: real bundled models (converted once per machine) and packaged data."""

from __future__ import annotations

import os

import pytest
import torch

# Tests must never reach the public Hub; model loads are all local paths.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from persyn_hub.bundled import resolve_model

    return resolve_model("bundled:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma_path() -> str:
    from persyn_hub.bundled import resolve_model

    return resolve_model("bundled:gemma-3-270m")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from persyn_hub.bundled import resolve_model

    return resolve_model("bundled:minilm-l6-v2")


@pytest.fixture(scope="session")
def asdiv_prompts():
    """32 real ASDiv prompts, normalized (prompt_id, messages, prompt, answer)."""
    from persyn_hub.config import PromptsConfig
    from persyn_hub.data import load_prompts

    return load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=32, drop_duplicates=True), seed=0)
