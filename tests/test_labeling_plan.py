"""`persyn plan-labeling`: labeling designs compared at equal spend on a pool whose answers exist, with no
generation.

The pool is built from real ASDiv word problems in the wide Magpie-Zoo shape (one column per teacher):
an answer key (always right, terse), an explainer (worked answers, right on "how many" questions only) and a
guesser (one number for every problem). Quality is math-verify against the gold answer, learnability the
bundled SmolLM2's own log-probabilities; the command labels through the run's stages (no teacher generates:
every answer is a pool cell), then trains a real MiniLM router per (design, spend).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from persyn_hub.data import load_prompts
from persyn_hub.recipe.config import PromptsConfig

ROOT = Path(__file__).parents[1]
PERSYN = [sys.executable, "-m", "persyn_hub.cli"]
TEACHERS = ["answer-key", "explainer", "guesser"]


def asdiv_pool(path: Path, num_prompts: int = 40) -> None:
    prompts = load_prompts(
        PromptsConfig(source="bundled:asdiv", num_prompts=num_prompts, drop_duplicates=True), seed=5
    )
    rows = []
    for prompt_id, question, gold in zip(prompts["prompt_id"], prompts["prompt"], prompts["answer"]):
        number = gold.split()[0]
        counting = "how many" in question.lower()
        rows.append(
            {
                "id": prompt_id,
                "question": question,
                "answer": gold,
                "answer-key": f"The answer is {number}.",
                "explainer": "Let me read the problem and work it out one step at a time. "
                + (f"Putting the numbers together gives {number}. The answer is {number}." if counting else
                   "Putting the numbers together gives 1000. The answer is 1000."),
                "guesser": "The answer is 7.",
            }
        )  # fmt: skip
    Dataset.from_list(rows).to_parquet(str(path))


def plan_recipe(tmp_path: Path) -> Path:
    source = tmp_path / "asdiv_pool.parquet"
    asdiv_pool(source)
    values = {
        "name": "plan",
        "recipe_version": 2,
        "prompts": {
            "source": str(source), "prompt_column": "question", "id_column": "id", "answer_column": "answer",
            "pool": {"format": "wide"}, "shuffle": False,
        },
        "student": {"model": "bundled:smollm2-135m-instruct", "dtype": "float32", "max_length": 256},
        "teachers": [{"name": name} for name in TEACHERS],
        "quality": {"kind": "math_answer"},
        "labeling": {"num_prompts": 40, "alpha": 0.4},
        "router": {"backbone": "bundled:minilm-l6-v2", "max_length": 64, "num_train_epochs": 3,
                   "validation_fraction": 0.2, "test_fraction": 0.25, "learning_curve": []},
        "output": {"dir": str(tmp_path / "run")},
    }  # fmt: skip
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_labeling_plan_on_a_pool_compares_designs_at_equal_spend_and_generates_nothing(tmp_path):
    output = tmp_path / "plan"
    result = subprocess.run(
        [*PERSYN, "plan-labeling", str(plan_recipe(tmp_path)), "--output", str(output), "--bootstrap", "500"],
        capture_output=True, text=True, cwd=ROOT, timeout=1500,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    plan = json.loads((output / "plan.json").read_text())
    assert plan["generations"] == 0 and plan["teachers"] == TEACHERS
    assert plan["designs"] == [2, 3] and len(plan["spends"]) >= 3
    assert plan["test_prompts"] == 10 and plan["pool_prompts"] == 30  # 40 labeled, a quarter held out
    cells = {(p["spend"], p["teachers_per_prompt"]): p for p in plan["points"]}
    assert {design for _, design in cells} == {2, 3}
    for design in (2, 3):
        assert len([spend for spend, m in cells if m == design]) >= 3, f"design {design}: three spends"
    for (spend, design), point in cells.items():
        assert spend - design < point["labeled_answers"] <= spend, "equal spend: each design buys what it can"
        assert point["labeled_answers"] == design * point["labeled_prompts"]
        low, high = point["interval"]
        assert low <= point["reward_recovered"] <= high
    assert (
        cells[(plan["spends"][-1], 2)]["labeled_prompts"] > cells[(plan["spends"][-1], 3)]["labeled_prompts"]
    )
    assert len(plan["differences"]) == len(plan["spends"])  # m=2 minus full at every spend, paired
    assert all(d["interval"][0] <= d["minus_full"] <= d["interval"][1] for d in plan["differences"])
    # nothing was generated: every labeled answer is a pool cell, read by the run's own stages
    stats = sorted((tmp_path / "run" / "stages").glob("label-generate--*/stats*.json"))
    assert len(stats) == len(TEACHERS)
    assert all(json.loads(file.read_text())["requests"] == 0 for file in stats)
    table = (output / "plan.md").read_text()
    assert (
        "| Labeled answers | m=2 | full |" in table and "Generation requests made by this plan: 0." in table
    )
    assert (output / "plan.png").read_bytes().startswith(b"\x89PNG")
    assert table.strip() in result.stdout


def test_labeling_plan_refuses_a_teacher_that_would_generate(tmp_path):
    """The default recipe's model teachers have no finished labeling here: one line, and no model asked."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [*PERSYN, "plan-labeling", "recipes/demo/task-mix-smollm2.yaml", "--output.dir", str(run_dir),
         *[arg for i in range(8) for arg in (f"--prompts.tasks.{i}.size", "4")], "--labeling.num_prompts", "16"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "persyn: error: plan-labeling: teacher 'smollm2-135m-instruct' would have to generate"
    )
    assert "persyn run" in message
    assert not list((run_dir / "stages").glob("label-generate--*")), "no labeling stage started"


LEVELS_RUN = "persyn run recipes/demo/reading-levels-smollm2.yaml"
LEVELS_PLAN = (
    "persyn plan-labeling recipes/demo/reading-levels-smollm2.yaml --designs 2,full --spends 120,240,360"
)
"""docs/router.md's two commands for a pool where difficulty within a type decides (measured there, unshrunk)."""


@pytest.mark.slow
def test_labeling_plan_after_the_reading_levels_run_as_the_docs_write_them(tmp_path):
    """docs/router.md's levels commands as written, shrunk by appended overrides (a few prompts per task, a
    short router training, smaller spends): the run labels with every teacher, then the plan reuses its
    stages and compares m=2 and full labeling at three spends, generating nothing."""
    shrink = [
        *[arg for i in range(3) for arg in (f"--prompts.tasks.{i}.size", "10")],
        "--labeling.num_prompts", "20", "--router.num_train_epochs", "2", "--router.learning_curve", "[]",
        "--output.dir", str(tmp_path / "run"),
    ]  # fmt: skip
    run = subprocess.run(
        [*PERSYN, *LEVELS_RUN.split()[1:], *shrink], capture_output=True, text=True, cwd=ROOT, timeout=1500
    )
    assert run.returncode == 0, run.stderr[-4000:]
    plan_command = [*PERSYN, *LEVELS_PLAN.split()[1:], *shrink, "--spends", "12,18,24"]
    result = subprocess.run(plan_command, capture_output=True, text=True, cwd=ROOT, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    plan = json.loads((tmp_path / "run" / "labeling-plan" / "plan.json").read_text())
    assert plan["generations"] == 0 and plan["designs"] == [2, 3] and plan["spends"] == [12, 18, 24]
    designs = {(p["spend"], p["teachers_per_prompt"]) for p in plan["points"]}
    assert {m for _, m in designs} == {2, 3}  # full labeling is m = K = 3
    assert "| Labeled answers | m=2 | full |" in (tmp_path / "run" / "labeling-plan" / "plan.md").read_text()
