"""Verified routing through the real `persyn run`: the shrunk default recipe with one fallback round.

Budgets keep the router's first choice on the two small LLMs (usually wrong on these tasks), so the
checker rejects routed answers; each goes to the router's second choice, and the summary counts the
extra answers and the extra model generations they cost.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TASK_MIX_RECIPE, override_args
from datasets import load_from_disk

from persyn_hub.pipeline.fallback import router_teachers

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_a_rejected_routed_answer_gets_the_routers_second_choice_and_is_counted(small_task_mix_run, tmp_path):
    run_dir, overrides, _, _ = small_task_mix_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)  # reuse its labeling and router; leave the shared run as it was
    overrides = {
        **overrides,
        "output.dir": str(copy),
        "routing.fallback_on_incorrect": 1,
        "routing.budgets": "{answer-key: 0.0, worked-solution: 0.0}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", "run", TASK_MIX_RECIPE, *override_args(overrides)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((copy / "summary.json").read_text())
    verified = summary["verified_routing"]
    assert verified["fallback_on_incorrect"] == 1
    (round_one,) = verified["rounds"]
    assert round_one["rejected"] == verified["routed_answers_rejected"] > 0
    assert verified["extra_answers"] == round_one["sent"] == round_one["rejected"]  # 3 teachers left each
    fallback_phases = [
        p for parts in summary["generation"].values() for p in parts if p["phase"] == "fallback-1"
    ]
    assert len(fallback_phases) == len(summary["teachers"])
    paid = sum(int(p.get("requests", 0)) + int(p.get("reused", 0)) for p in fallback_phases)
    assert verified["extra_generations"] == paid
    assert summary["generations_made"] == sum(
        int(p.get("requests", 0)) + int(p.get("reused", 0))
        for parts in summary["generation"].values()
        for p in parts
    )
    assert "verified routing:" in result.stdout

    order = router_teachers(copy / "artifacts" / "router")  # the router's score order (id2label)
    final = load_from_disk(str(copy / "artifacts" / "dataset"))
    recovered = 0
    with_fallback = 0
    for row in final:
        tried = row["fallback_teachers"]
        if row["selected_by"] != "router" or len(tried) < 2:
            continue
        with_fallback += 1
        ranked = [order[k] for k in np.argsort(-np.asarray(row["router_scores"]), kind="stable")]
        # budgets bind the first choice only: the fallback is the router's best teacher not asked yet
        assert tried[1] == next(t for t in ranked if t != tried[0]), "the router's next choice"
        assert tried[0] in ("smollm2-135m-instruct", "gemma-3-270m"), "budgets keep the references out first"
        if row["teacher"] == tried[1] and row["quality"] >= 1.0 - 1e-9:
            recovered += 1
        if row["teacher"] == tried[0]:
            assert row["quality"] < 1.0, "a verified fallback answer is published over a rejected one"
    assert with_fallback > 0 and recovered == verified["recovered"]


@pytest.mark.slow
def test_the_default_run_reports_the_routers_learning_curve(small_task_mix_run):
    run_dir, _, result, summary = small_task_mix_run
    curve = summary["router"]["learning_curve"]
    assert [point["fraction"] for point in curve] == [0.25, 0.5, 1.0]
    assert curve[-1]["train_prompts"] == summary["router"]["split_sizes"]["train"]
    assert all(len(point["interval"]) == 2 for point in curve)
    assert (run_dir / "artifacts" / "router" / "learning_curve.png").is_file()
    assert "learning_curve.png" in (run_dir / "artifacts" / "router" / "README.md").read_text()
    assert "learning curve (train prompts -> reward recovered" in result.stdout
