"""Shared fixtures: real bundled models (converted once per machine) and packaged data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

# Tests must never reach the public Hub; model loads are all local paths.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
# pytest-xdist runs WORKERS test processes side by side (setup.cfg's addopts): each gets its share of the
# cores, and so do the runs it starts (OpenMP threads spin; oversubscribed, they slow everything down).
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    # vLLM engines (real or stand-in) of two workers' launches must not probe the same ports: each worker's
    # launches get a node base of their own (local rank r then takes base + 100 r, generation/placement.py)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    os.environ.setdefault("VLLM_PORT", str(20000 + 500 * worker))
torch.set_num_threads(THREADS)

SLOWEST_FIRST = (
    "test_readme",
    "test_faults",
    "test_launch",
    "test_compare",
    "test_hub_stages",
    "test_launch_attempts",
    "test_pipeline_e2e",
    "test_labeling_plan",
    "test_launch_vllm",
    "test_hub_resilience",
    "test_launch_liveness",
    "test_served_scoring",
    "test_fail_once",
    "test_labeling_design",
    "test_verified_routing_run",
)
"""Modules with the longest runs, handed out first (`--dist loadfile` keeps a module on one worker, so its
module-scoped fixtures run once), so no worker is left with a long one at the end."""


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most 8 (each holds a few small models in memory)."""
    return max(1, min(8, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.module.__name__.rsplit(".", 1)[-1]
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within and among the other modules is kept


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


def save_tiny_router(folder, teachers: list[str], *, max_length: int = 32, metrics=None, seed=None, **info):
    """A real router (a 1-layer random BERT sequence classifier with MiniLM's tokenizer), saved as the
    pipeline saves one: fast to build, and loadable by transformers alone like a trained router."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from persyn_hub.bundled import resolve_model
    from persyn_hub.router import RouterInfo, save_router

    minilm = resolve_model("bundled:minilm-l6-v2")
    config = AutoConfig.from_pretrained(
        minilm,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(teachers),
        id2label=dict(enumerate(teachers)),
        label2id={name: i for i, name in enumerate(teachers)},
    )
    info.setdefault("backbone", "bundled:minilm-l6-v2")
    config.persyn = RouterInfo(teachers=list(teachers), max_length=max_length, **info).config_entry()
    torch.manual_seed(0)
    router = AutoModelForSequenceClassification.from_config(config)
    save_router(router, AutoTokenizer.from_pretrained(minilm), folder, metrics or {}, seed=seed)
    return router


TRANSFORMERS_ONLY = """
import json, sys
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
path, prompts = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
ranked = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)(prompts)
print(json.dumps({"type": type(model).__name__, "labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
                  "ranked": [[entry["label"] for entry in row] for row in ranked],
                  "persyn_imported": any(name.startswith("persyn_hub") for name in sys.modules)}))
"""


def ranking_with_transformers_alone(path, prompts: list[str]) -> dict:
    """Load a saved router in a process that never imports persyn_hub; its pipeline's ranking per prompt."""
    result = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_ONLY, str(path), json.dumps(prompts)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
