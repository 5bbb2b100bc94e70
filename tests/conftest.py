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
    from persyn_hub.data import load_prompts
    from persyn_hub.recipe.config import PromptsConfig

    return load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=32, drop_duplicates=True), seed=0)


TASK_MIX_RECIPE = "recipes/demo/task-mix-smollm2.yaml"
SMALL_TASK_MIX = {
    **{f"prompts.tasks.{i}.size": 4 for i in range(8)},
    "labeling.num_prompts": 16,
    "teachers.0.generation.max_new_tokens": 24,
    "teachers.1.generation.max_new_tokens": 24,
    "router.num_train_epochs": 4,
    "router.max_length": 64,
}
"""The default recipe, shrunk: 8 task types x 4 prompts (less the held-out ones), 16 labeled."""


def override_args(overrides: dict) -> list[str]:
    return [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]


@pytest.fixture(scope="session")
def small_task_mix_run(tmp_path_factory):
    """One real `persyn run` of the shrunk default recipe: (run dir, the overrides that made it, the
    finished process, its summary as written then). The e2e and compare tests share it (a later run
    reuses every stage and rewrites summary.json)."""
    import subprocess
    import sys
    from pathlib import Path

    run_dir = tmp_path_factory.mktemp("task-mix") / "run"
    overrides = {**SMALL_TASK_MIX, "output.dir": str(run_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", "run", TASK_MIX_RECIPE, *override_args(overrides)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    import json

    return run_dir, overrides, result, json.loads((run_dir / "summary.json").read_text())
