"""Partial labeling (`labeling.teachers_per_prompt: m`): each labeled prompt is answered by m teachers,
every pair of teachers compared about equally often; only those answers are generated, the router trains
on the pairs that exist, and the summary and the router card say which design was used and what it cost.

The run test is a real `persyn run` of the default recipe, shrunk as `tests/conftest.py` shrinks it, with
m = 2: two real models generate only the answers the design gives them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_TASK_MIX, TASK_MIX_RECIPE, override_args
from datasets import load_from_disk

from persyn_hub.labeling.design import balanced_design, make_design, pair_counts
from persyn_hub.router.labels import RewardTable

ROOT = Path(__file__).parents[1]
PERSYN = [sys.executable, "-m", "persyn_hub.cli"]
TEACHERS = ["smollm2-135m-instruct", "gemma-3-270m", "answer-key", "worked-solution"]
MODEL_TEACHERS = TEACHERS[:2]


@pytest.mark.parametrize(("num_teachers", "per_prompt"), [(3, 2), (4, 2), (4, 3), (7, 3), (19, 5)])
def test_partial_labeling_design_balances_the_pairs_and_is_seeded(num_teachers, per_prompt):
    teachers = [f"t{i}" for i in range(num_teachers)]
    prompts = [f"p{i}" for i in range(160)]
    design = balanced_design(prompts, teachers, per_prompt, seed=42)
    assert list(design) == prompts
    assert all(len(set(asked)) == per_prompt and set(asked) <= set(teachers) for asked in design.values())
    counts = list(pair_counts(design, teachers).values())
    assert len(counts) == num_teachers * (num_teachers - 1) // 2
    assert max(counts) - min(counts) <= (1 if per_prompt == 2 else 5), counts
    per_teacher = Counter(t for asked in design.values() for t in asked)
    assert max(per_teacher.values()) - min(per_teacher.values()) <= 3, per_teacher
    assert balanced_design(prompts, teachers, per_prompt, seed=42) == design, "seeded: the same design again"
    assert balanced_design(prompts, teachers, per_prompt, seed=7) != design
    assert make_design(prompts, teachers, num_teachers, seed=42) == {p: tuple(teachers) for p in prompts}


def test_partial_labeling_keeps_unasked_teachers_out_of_the_pairs():
    """A failed answer ranks below every usable one; a teacher not asked gives no pair at all."""
    rewards = np.array([[1.0, np.nan, np.nan], [0.5, -0.5, np.nan]])
    asked = np.array([[True, True, False], [True, True, True]])
    table = RewardTable(["a", "b"], ["x", "y"], rewards, ["t0", "t1", "t2"], asked)
    training = table.training_rewards()
    assert training[0, 1] == 0.0 and np.isnan(training[0, 2]), "asked and failed: worst - 1; not asked: NaN"
    assert training[1, 2] == -1.5
    assert table.answers() == 5 and table.asked_per_prompt() == {"a": ["t0", "t1"], "b": ["t0", "t1", "t2"]}
    assert not table.fully_observed and table.subset(np.array([1])).fully_observed


@pytest.mark.parametrize("value", ["1", "5"])
def test_partial_labeling_out_of_range_is_one_line_naming_the_field_value_and_fix(value):
    result = subprocess.run(
        [*PERSYN, "validate", TASK_MIX_RECIPE, "--labeling.teachers_per_prompt", value],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "labeling.teachers_per_prompt" in message and f": {value} " in message and "set 2 to 4" in message


def test_partial_labeling_validate_passes_on_the_default_recipe():
    result = subprocess.run(
        [*PERSYN, "validate", TASK_MIX_RECIPE, "--labeling.teachers_per_prompt", "2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "teachers_per_prompt: 2" in result.stdout


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("partial") / "run"
    overrides = {
        **SMALL_TASK_MIX,
        "labeling.teachers_per_prompt": 2,
        "prompts.num_prompts": 20,  # 16 labeled, 4 routed: the labeling is what is tested here
        "router.learning_curve": "[0.5, 1.0]",
        "output.dir": str(run_dir),
    }
    result = subprocess.run(
        [*PERSYN, "run", TASK_MIX_RECIPE, *override_args(overrides)],
        capture_output=True, text=True, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir, result, json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_partial_labeling_run_generates_only_the_designed_answers(partial_run):
    run_dir, result, summary = partial_run
    routing = load_from_disk(str(run_dir / "artifacts" / "routing"))
    labeled = [p for p, flag in zip(routing["prompt_id"], routing["labeled"]) if flag]  # the prompts' order
    design = make_design(labeled, TEACHERS, 2, seed=42)  # the recipe's seed
    labels = load_from_disk(str(run_dir / "artifacts" / "labels"))
    answered = {(p, t) for p, t in zip(labels["prompt_id"], labels["teacher"])}
    assert answered == {(p, t) for p, asked in design.items() for t in asked}, "exactly the designed answers"
    labeling = summary["labeling"]
    assert labeling["design"] == "balanced_pairs" and labeling["teachers_per_prompt"] == 2
    assert labeling["labeled_answers"] == 2 * len(labeled) == len(labels)
    assert labeling["full_labeling_answers"] == 4 * len(labeled)
    low, high = labeling["pair_count_range"]
    assert high - low <= 1 and sum(labeling["pair_counts"].values()) == len(labeled)
    # the model teachers generated their designed cells and nothing more
    designed = {t: sum(1 for asked in design.values() if t in asked) for t in TEACHERS}
    for teacher in MODEL_TEACHERS:
        phase = next(p for p in summary["generation"][teacher] if p["phase"] == "labeling")
        assert phase["requests"] + phase["reused"] == designed[teacher], (teacher, phase)
    assert labeling["labeling_generations"] == designed[MODEL_TEACHERS[0]] + designed[MODEL_TEACHERS[1]]
    assert labeling["labeling_generations"] < 2 * len(labeled), "fewer than full labeling's"
    # labeled prompts keep their best OBSERVED answer
    final = load_from_disk(str(run_dir / "artifacts" / "dataset"))
    for prompt_id, teacher in zip(final["prompt_id"], final["teacher"]):
        if prompt_id in design:
            assert teacher in design[prompt_id], (prompt_id, teacher)
    assert "2 teachers per prompt, pairs balanced" in result.stdout


@pytest.mark.slow
def test_partial_labeling_router_trains_on_the_pairs_and_its_card_says_the_design(partial_run):
    run_dir, _, summary = partial_run
    router = summary["router"]
    assert router["labeling"]["design"] == "balanced_pairs" and router["labeling"]["teachers_per_prompt"] == 2
    assert router["labeling"]["labeled_answers"] == 2 * router["labeling"]["labeled_prompts"]
    assert "partial labeling" in router["evaluated_among"]
    assert 0.0 <= router["reward_recovered"] <= 1.0 and router["epochs_trained"] > 0
    curve = router["learning_curve"]
    answers = [point["labeled_answers"] for point in curve]
    assert answers == sorted(answers) and answers[-1] == 2 * (
        router["split_sizes"]["train"] + router["split_sizes"]["validation"]
    )
    card = (run_dir / "artifacts" / "router" / "README.md").read_text()
    assert "partial, balanced pairs: 2 of the 4 teachers" in card
    assert f"{router['labeling']['labeled_answers']} labeled answers" in card
    assert "Labeled answers (train + validation)" in card
