"""End to end: the default recipe (task mix), shrunk, through the real `persyn` command, twice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SMALL_TASK_MIX, TASK_MIX_RECIPE, override_args
from datasets import load_from_disk

ROOT = Path(__file__).parents[1]
TEACHERS = ["smollm2-135m-instruct", "gemma-3-270m", "answer-key", "worked-solution"]
MODEL_TEACHERS = TEACHERS[:2]


def persyn_run(output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    overrides = override_args({**SMALL_TASK_MIX, "output.dir": str(output_dir)})
    return subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", "run", TASK_MIX_RECIPE, *overrides, *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1500,
    )


@pytest.fixture(scope="module")
def finished_run(small_task_mix_run):
    output_dir, _, first, first_summary = small_task_mix_run
    second = persyn_run(output_dir)
    assert second.returncode == 0, second.stderr[-4000:]
    second_summary = json.loads((output_dir / "summary.json").read_text())
    return output_dir, first, first_summary, second_summary


@pytest.mark.slow
def test_the_run_produces_the_dataset_and_the_summary(finished_run):
    output_dir, first, summary, _ = finished_run
    for key in (
        "rows",
        "teacher_counts",
        "generations_made",
        "generations_generate_then_select",
        "stages",
        "labeled_prompts",
        "routed_prompts",
    ):
        assert key in summary
    prompts = summary["prompts"]
    assert summary["labeled_prompts"] == 16 and summary["routed_prompts"] == prompts - 16
    assert summary["generations_generate_then_select"] == prompts * len(MODEL_TEACHERS)  # references are free
    assert summary["rows"] + summary["failures"]["generation"] + summary["truncated"]["dropped"] == prompts
    assert sum(summary["teacher_counts"].values()) == summary["rows"]
    assert set(summary["teacher_counts"]) == set(TEACHERS)
    assert [s["name"] for s in summary["stages"]] == [
        "prompts",
        *[f"label-generate/{t}" for t in TEACHERS],
        "learnability",
        "quality",
        "combine",
        "router",
        "route",
        *[f"generate/{t}" for t in TEACHERS],
        "assemble",
    ]
    assert not any(stage["cached"] for stage in summary["stages"])
    router = summary["router"]
    for key in (
        "top1_agreement",
        "reward_recovered",
        "reward_recovered_best_single",
        "reward_recovered_random",
    ):
        assert isinstance(router[key], float)
    sizes = router["split_sizes"]
    assert sizes["test"] >= 1 and sizes["validation"] >= 1 and router["num_eval_prompts"] == sizes["test"]
    assert set(router["hit_at_k"]) == {"1", "2", "3"} and router["hit_at_k"]["3"] >= router["hit_at_k"]["1"]
    assert (
        set(router["oracle_share"]) == set(TEACHERS) and abs(sum(router["oracle_share"].values()) - 1) < 1e-6
    )
    assert 0.0 <= summary["quality"]["verified_correct_share"] <= 1.0
    assert set(summary["categories"]["published"]) == {
        "addition", "multiplication", "chain_sum", "needle_haystack", "number_format", "letter_counting",
        "spell_backward", "gcd",
    }  # fmt: skip
    assert "generations" in first.stdout and "Generate-then-Select" in first.stdout
    assert "test prompts" in first.stdout and "routing per task" in first.stdout

    final = load_from_disk(str(output_dir / "artifacts" / "dataset"))
    routing = load_from_disk(str(output_dir / "artifacts" / "routing"))
    labels = load_from_disk(str(output_dir / "artifacts" / "labels"))
    assert len(final) == summary["rows"]
    for row in final:
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-1]["content"]
        assert row["messages"][-2]["role"] == "user"
        assert row["teacher"] in summary["teacher_counts"] and len(row["router_scores"]) == len(TEACHERS)
        assert row["selected_by"] == ("labeled_best" if row["labeled"] else "router")
        assert row["quality"] is not None  # every published row is checked again
    # Generations are counted from the data: every model teacher on the labeled prompts, then one per
    # prompt routed to a model teacher (reference teachers write from the data set and cost nothing).
    routed_to_models = sum(
        1 for t, s in zip(routing["teacher"], routing["selected_by"]) if s == "router" and t in MODEL_TEACHERS
    )
    assert summary["generations_made"] == 16 * len(MODEL_TEACHERS) + routed_to_models
    assert len(labels) == 16 * len(TEACHERS)
    # the trained router, ready for `router_repo` or `persyn route`
    from persyn_hub.router import load_router, router_info

    router, _ = load_router(str(output_dir / "artifacts" / "router"), expected_teachers=TEACHERS)
    info = router_info(router)
    assert info.student == "bundled:smollm2-135m-instruct" and info.alpha == 0.4
    assert {"learnability", "quality", "reward", "excluded"} <= set(labels.column_names)


@pytest.mark.slow
def test_labeled_prompts_keep_their_best_labeled_answer(finished_run):
    from persyn_hub.router.selection import select_best

    output_dir = finished_run[0]
    labels = load_from_disk(str(output_dir / "artifacts" / "labels"))
    final = load_from_disk(str(output_dir / "artifacts" / "dataset"))
    best = select_best(labels, "reward", TEACHERS)
    answers = {(p, t): r for p, t, r in zip(labels["prompt_id"], labels["teacher"], labels["response"])}
    labeled = [row for row in final if row["labeled"]]
    assert len(labeled) >= 12
    for row in labeled:
        assert row["teacher"] == best[row["prompt_id"]]
        assert row["messages"][-1]["content"] == answers[(row["prompt_id"], row["teacher"])]
    rewards = {(p, t): r for p, t, r in zip(labels["prompt_id"], labels["teacher"], labels["reward"])}
    for row in labeled:  # the kept answer has the highest combined reward of the prompt
        mine = rewards[(row["prompt_id"], row["teacher"])]
        others = [
            rewards[(row["prompt_id"], t)] for t in TEACHERS if rewards[(row["prompt_id"], t)] is not None
        ]
        if mine is not None:
            assert mine >= max(others) - 1e-12


@pytest.mark.slow
def test_a_second_run_reuses_every_stage_and_gives_the_same_data(finished_run):
    output_dir, _, first, second = finished_run
    assert all(stage["cached"] for stage in second["stages"]), second["stages"]
    assert second["requests_this_run"] == 0
    assert sum(s["seconds"] for s in second["stages"]) < sum(s["seconds"] for s in first["stages"]) / 5
    # a reused stage still says what computing it cost (costs read this, not the reload time)
    computed = {s["name"]: s["seconds"] for s in first["stages"]}
    assert {s["name"]: s["computed_seconds"] for s in second["stages"]} == computed
    for key in ("rows", "teacher_counts", "generations_made", "router"):
        assert second[key] == first[key]


@pytest.mark.slow
def test_a_concurrent_run_on_the_same_directory_is_refused(finished_run):
    from filelock import FileLock

    output_dir = finished_run[0]
    with FileLock(str(output_dir / ".persyn.lock")):
        result = persyn_run(output_dir)
    assert result.returncode == 2
    assert "is in use by" in result.stderr and "--output.dir" in result.stderr


@pytest.mark.slow
def test_a_given_router_routes_and_one_retrained_in_place_routes_again(finished_run, tmp_path):
    from persyn_hub.router import load_router, router_info, save_router

    output_dir = tmp_path / "run"
    shutil.copytree(finished_run[0], output_dir)
    router_dir = tmp_path / "router"
    shutil.copytree(output_dir / "artifacts" / "router", router_dir)

    given = persyn_run(output_dir, "--routing.reuse_router", str(router_dir))
    assert given.returncode == 0, given.stderr[-4000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    cached = {stage["name"]: stage["cached"] for stage in summary["stages"]}
    assert cached["router"] is False and cached["combine"] is True  # the given router is taken, not trained
    assert cached["route"] is True  # the same weights: the routing (keyed by the router's content) is reused
    assert summary["requests_this_run"] == 0 and summary["router"] is None
    assert summary["teacher_counts"] == finished_run[2]["teacher_counts"]

    # Retrained in place: same path, new weights (every routed prompt goes to gemma), so it routes again.
    router, tokenizer = load_router(str(router_dir), expected_teachers=TEACHERS)
    with torch.no_grad():
        head = router.classifier  # MiniLM's BertForSequenceClassification head
        head.bias.copy_(
            torch.tensor([-1e4 if t != "gemma-3-270m" else 1e4 for t in router_info(router).teachers])
        )
    save_router(router, tokenizer, router_dir, {})
    again = persyn_run(output_dir, "--routing.reuse_router", str(router_dir))
    assert again.returncode == 0, again.stderr[-4000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    cached = {stage["name"]: stage["cached"] for stage in summary["stages"]}
    assert cached["route"] is False and cached["combine"] is True
    routing = load_from_disk(str(output_dir / "artifacts" / "routing"))
    assert {t for t, s in zip(routing["teacher"], routing["selected_by"]) if s == "router"} == {
        "gemma-3-270m"
    }
