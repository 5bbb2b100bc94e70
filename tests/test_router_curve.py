"""The router's learning curve: real MiniLM routers trained on nested shares of the train prompts.

The labeled pool is synthetic but learnable from the prompt text: "tutor" wins arithmetic questions,
"solver" wins writing requests, "steady" sits in between. Every curve point is measured on the same test
prompts as the run's router, with bootstrap intervals; the full share is that router itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset

from persyn_hub.recipe.config import RouterSettings
from persyn_hub.router import RouterTask, train_router
from persyn_hub.router.curve import CURVE_FILE, check_fractions, subset_indices

TEACHERS = ["tutor", "solver", "steady"]
SETTINGS = RouterSettings(
    num_train_epochs=2,
    max_length=32,
    learning_rate=1e-4,
    per_device_train_batch_size=8,
    early_stopping_patience=2,
    validation_fraction=0.2,
    test_fraction=0.25,
)


def synthetic_pool(num_prompts: int = 40, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_prompts):
        math = index % 2 == 0
        prompt = (
            f"What is {rng.integers(2, 99)} plus {rng.integers(2, 99)}?"
            if math
            else f"Write a short poem about the number {rng.integers(2, 99)} in the rain."
        )
        best = "tutor" if math else "solver"
        for teacher in TEACHERS:
            base = 0.0 if teacher == "steady" else (1.0 if teacher == best else -1.0)
            rows.append(
                {
                    "prompt_id": f"p{index}",
                    "prompt": prompt,
                    "teacher": teacher,
                    "reward": float(base + rng.normal(0, 0.1)),
                    "excluded": None,
                }
            )
    return Dataset.from_list(rows)


def test_curve_subsets_are_nested_and_seeded():
    quarter, half, full = (subset_indices(20, f, seed=3) for f in (0.25, 0.5, 1.0))
    assert (len(quarter), len(half), len(full)) == (5, 10, 20)
    assert set(quarter) <= set(half) <= set(full) == set(range(20))
    assert list(subset_indices(20, 0.25, seed=3)) == list(quarter)
    assert len(subset_indices(3, 0.01, seed=0)) == 1, "a share never trains on zero prompts"
    assert check_fractions([1.0, 0.25, 0.5, 0.25]) == [0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="learning_curve"):
        check_fractions([0.0, 1.0])


def test_learning_curve_lists_each_share_with_intervals_in_metrics_card_and_plot(minilm_path, tmp_path):
    result = train_router(
        synthetic_pool(),
        SETTINGS,
        RouterTask(TEACHERS, student="bundled:smollm2-135m-instruct", alpha=0.4, seed=0),
        output_dir=str(tmp_path / "router"),
        learning_curve=[0.25, 0.5, 1.0],
    )
    metrics = result.metrics
    curve = metrics["learning_curve"]
    assert [point["fraction"] for point in curve] == [0.25, 0.5, 1.0]
    sizes = [point["train_prompts"] for point in curve]
    assert sizes == [round(0.25 * sizes[-1]), round(0.5 * sizes[-1]), metrics["num_train_prompts"]]
    validation = metrics["split_sizes"]["validation"]
    for point in curve:
        low, high = point["interval"]
        assert low <= point["reward_recovered"] <= high
        assert point["best_single_teacher"] in TEACHERS
        # the curve in generations spent: every teacher answered each train and validation prompt
        assert point["labeled_answers"] == len(TEACHERS) * (point["train_prompts"] + validation)
    assert metrics["labeling"]["design"] == "full" and "evaluated_among" not in metrics
    # the full share is the router this call returns, measured once on the same test prompts
    assert curve[-1]["reward_recovered"] == metrics["reward_recovered"]
    assert curve[-1]["interval"] == metrics["intervals"]["reward_recovered"]

    folder = tmp_path / "router"
    saved = json.loads((folder / "router_metrics.json").read_text())["metrics"]
    assert saved["learning_curve"] == json.loads(json.dumps(curve))
    png = (folder / CURVE_FILE).read_bytes()
    assert png.startswith(b"\x89PNG")
    card = (folder / "README.md").read_text()
    assert "## Learning curve" in card and f"]({CURVE_FILE})" in card
    assert f"| {sizes[0]} (25%) |" in card
    assert not (folder / "checkpoints").exists(), "the curve's trainings leave no checkpoints behind"


def test_no_learning_curve_by_default_in_the_library_call(minilm_path, tmp_path):
    """`train_router` alone trains one router (compare and library users pay nothing extra); the
    recipe's `router.learning_curve` is what `persyn run` passes."""
    result = train_router(
        synthetic_pool(16),
        SETTINGS,
        RouterTask(TEACHERS, student="bundled:smollm2-135m-instruct", alpha=0.4, seed=0),
        output_dir=str(tmp_path / "router"),
    )
    assert "learning_curve" not in result.metrics
    assert not (tmp_path / "router" / CURVE_FILE).exists()
    assert "## Learning curve" not in (tmp_path / "router" / "README.md").read_text()
