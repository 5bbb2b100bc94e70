"""Recipes parse with their own parser; the comparison writes its table and chart; a small real comparison runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from persyn_hub.compare.baselines import STRATEGIES
from persyn_hub.compare.recipe import load_compare_recipe
from persyn_hub.compare.report import comparison_markdown, plot_comparison
from persyn_hub.publish.cards import comparison_card_section
from persyn_hub.recipe.config import RecipeError, load_recipe

ROOT = Path(__file__).parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def kind_of(path: Path) -> str:
    if path.parent.name == "accelerate_configs":
        return "accelerate"
    if path.name.startswith("sft"):
        return "sft"
    if path.name.startswith("compare"):
        return "compare"
    return "pipeline"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_parses_with_its_parser(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    kind = kind_of(path)
    if kind == "accelerate":
        from accelerate.commands.config.config_args import ClusterConfig

        config = ClusterConfig.from_yaml_file(str(path))
        assert config.num_processes >= 1
    elif kind == "sft":
        import torch

        from persyn_hub.compare.sft import make_parser

        # SFTConfig refuses bf16 without a GPU: GPU recipes are parsed here with bf16 switched off.
        cpu = [] if torch.cuda.is_available() else ["--bf16", "false", "--use_cpu", "true"]
        script_args, training_args, model_args = make_parser().parse_args_and_config(
            args=["--config", str(path), *cpu]
        )
        assert script_args.dataset_name and model_args.model_name_or_path and training_args.output_dir
    elif kind == "compare":
        recipe = load_compare_recipe(path)
        overrides = []
        for key, value in recipe.pipeline_overrides.items():
            overrides += [f"--{key}", str(value)]
        assert load_recipe(ROOT / recipe.pipeline, overrides).teachers
    else:
        assert len(load_recipe(path).teachers) >= 2


def test_recipe_kinds_cover_all_files():
    kinds = {kind_of(p) for p in RECIPES}
    assert kinds == {"accelerate", "sft", "compare", "pipeline"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("pipeline: recipes/demo/task-mix-smollm2.yaml\nstrategies: [strong, best_single]\n", "best_single"),
        ("pipeline: x.yaml\nevaluation: {limt: 3}\n", "limt.*limit"),
        ("pipeline: x.yaml\nsft: {seed: 3}\n", "sft.seed"),
        ("strategies: [strong]\n", "pipeline"),
        # the budget is whole epochs over every student's own set: a step cap would leave rows unseen
        ("pipeline: x.yaml\nsft: {max_steps: 20}\n", "sft.max_steps.*num_train_epochs"),
        ("pipeline: x.yaml\nsft: {num_train_epochs: 0.5}\n", "num_train_epochs: must be >= 1"),
        # the old interval method's key names the new one
        ("pipeline: x.yaml\nbootstrap: 1000\n", "bootstrap: removed.*intervals: false"),
    ],
)
def test_compare_recipe_errors_name_the_key(tmp_path, text, message):
    bad = tmp_path / "c.yaml"
    bad.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_compare_recipe(bad)


def cell(mean, low, high, diff=None, per_seed=None):
    out = {"mean": mean, "interval": [low, high], "per_seed": per_seed or [mean - 0.01, mean + 0.01]}
    if diff is not None:
        out["minus_persyn"] = {
            "mean": diff[0],
            "interval": list(diff[1:]),
            "significant": diff[1] > 0 or diff[2] < 0,
            "per_seed": [diff[0] - 0.01, diff[0] + 0.01],
        }
    return out


def test_table_and_chart_from_a_comparison(tmp_path):
    key = "persyn_taskmix exact_match"
    comparison = {
        "name": "t",
        "student": "s",
        "training_prompts": 6,
        "command": "persyn compare recipes/demo/compare-task-mix-smollm2.yaml --seeds '[0, 1]'",
        "seeds": [0, 1],
        "intervals": True,
        "budget": {"epochs": [1.0], "steps": [1], "rows": [6]},
        "evaluation": {"tasks": ["persyn_taskmix"], "max_gen_toks": 8},
        "scores": {key: {"items": 40}},
        "rows": [
            {"strategy": "student (no SFT)", "scores": {key: cell(0.2, 0.1, 0.3, (-0.4, -0.5, -0.3), [0.2])}},
            {"strategy": "random", "rows": 6, "cost": {"generations": 6, "tokens": 60},
             "scores": {key: cell(0.4, 0.3, 0.5, (-0.2, -0.3, -0.1))}},
            {"strategy": "oracle", "rows": 6, "cost": {"generations": 12, "tokens": 120},
             "scores": {key: {**cell(0.62, 0.5, 0.7, (0.02, -0.05, 0.1)),
                              "minus_random": {"mean": 0.22, "interval": [0.1, 0.3], "significant": True,
                                               "per_seed": [0.2, 0.24]}}}},
            {"strategy": "persyn", "rows": 6, "cost": {"generations": 10, "tokens": 90, "labeling_generations": 4,
                                                       "seconds": 12.5, "cached_stages": []},
             "teacher_counts": {"big": 2, "key": 4}, "fallbacks": 1, "extra_answers": 1,
             "defined_by": {"uses_labels": True},
             "answers": {"verified_correct_share": 0.75, "mean_quality": 0.8, "mean_response_tokens": 12.25,
                         "mean_student_logprob": -1.5},
             "scores": {key: cell(0.6, 0.5, 0.7)}},
        ],
    }  # fmt: skip
    comparison["rows"][1].update(
        teacher_counts={"big": 6}, fallbacks=0, extra_answers=0, defined_by={"ties": ["big", "key"]},
        answers={"verified_correct_share": 1.0, "mean_quality": 1.0, "mean_response_tokens": 3.0, "mean_student_logprob": None},
    )  # fmt: skip
    table = comparison_markdown(comparison)
    assert "| random | 6 | 6 | 60 | 0.400 [0.300, 0.500] | -0.200 [-0.300, -0.100] * |" in table
    assert "| oracle | 6 | 12 | 120 | 0.620 [0.500, 0.700] | +0.020 [-0.050, +0.100] |" in table
    assert "| persyn | 6 | 10 | 90 | 0.600 [0.500, 0.700] |  |" in table
    oracle = "Oracle - random on persyn_taskmix exact_match: +0.220 [+0.100, +0.300] *"
    assert f"{oracle} (per seed: +0.200, +0.240)." in table
    # self-contained: the command, the budget and how to read the intervals come with the tables
    assert table.startswith(f"**`{comparison['command']}`**")
    assert "1 epoch(s) over its 6 rows (1 optimizer steps), the same for every strategy and seed" in table
    assert "t with seeds - 1 degrees of freedom" in table
    # per seed: each student's mean and its paired difference to persyn on the same seed
    assert "| strategy | seed 0 | seed 1 | minus persyn, seed 0 | minus persyn, seed 1 |" in table
    assert "| random | 0.390 | 0.410 | -0.210 | -0.190 |" in table
    assert "| student (no SFT) | 0.200 | 0.200 | -0.410 | -0.390 |" in table  # one model in every seed column
    assert "| persyn | 0.590 | 0.610 |  |  |" in table
    # what each student learned from: teacher mix, fallbacks, extra answers, checker-accepted share, length,
    # log-prob, cost
    assert "| persyn | big 33%, key 67% | 1 | 1 | 0.750 | 0.800 | 12.2 | -1.500 | 4 | 12.5 |" in table
    assert "| random | big 100% | 0 | 0 | 1.000 | 1.000 | 3.0 |  |  |  |" in table
    assert "random: big, key tie; the tie rule chose big." in table
    plot_comparison(comparison, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "comparison.md").write_text(table)
    assert comparison_card_section(tmp_path).startswith("## Student comparison")
    assert comparison_card_section(tmp_path / "missing") is None


def test_a_student_is_reused_only_for_the_same_rows_settings_and_seed(tmp_path):
    """The student cache's key changes with anything that changes the student's numbers."""
    from datasets import Dataset

    from persyn_hub.compare.student_cache import StudentCache, StudentKey, training_rows_digest

    rows = [
        {
            "prompt_id": "a",
            "messages": [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}],
        }
    ]
    digest = training_rows_digest(Dataset.from_list(rows))
    changed = [{**rows[0], "messages": [rows[0]["messages"][0], {"role": "assistant", "content": "5"}]}]
    assert training_rows_digest(Dataset.from_list(changed)) != digest
    assert training_rows_digest(Dataset.from_list(rows)) == digest

    cache = StudentCache(tmp_path)
    key = StudentKey("persyn-seed0", digest, "bundled:smollm2", 0, {"learning_rate": 1e-4}, {"limit": 8})
    cache.put(key, {"training": {"epoch": 1.0}, "report": {"items": {}}, "seconds": 1.0})
    assert cache.get(key)["training"] == {"epoch": 1.0}
    for other in (
        StudentKey("persyn-seed0", "other rows", "bundled:smollm2", 0, {"learning_rate": 1e-4}, {"limit": 8}),
        StudentKey("persyn-seed0", digest, "bundled:smollm2", 1, {"learning_rate": 1e-4}, {"limit": 8}),
        StudentKey("persyn-seed0", digest, "bundled:smollm2", 0, {"learning_rate": 2e-4}, {"limit": 8}),
        StudentKey("persyn-seed0", digest, "bundled:smollm2", 0, {"learning_rate": 1e-4}, {"limit": 16}),
        StudentKey("persyn-seed0", digest, "other/student", 0, {"learning_rate": 1e-4}, {"limit": 8}),
    ):
        assert cache.get(other) is None
    assert cache.reused == ["persyn-seed0"]
    next(tmp_path.glob("*.json")).write_text("{not json")  # a damaged entry is trained again, not read
    assert cache.get(key) is None
    assert StudentCache(tmp_path, enabled=False).get(key) is None


def small_compare(recipe: str, overrides: dict, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """`persyn compare RECIPE` through the CLI on the shrunk default run: one seed, two training prompts,
    one SFT step per student, eight evaluation items of eight tokens."""
    return subprocess.run(
        [
            sys.executable, "-m", "persyn_hub.cli", "compare", recipe,
            "--pipeline_overrides", json.dumps(overrides), *flags,
            "--seeds", "[0]", "--max_train_prompts", "2",
            "--sft.num_train_epochs", "1", "--sft.per_device_train_batch_size", "2",
            "--evaluation.limit", "8", "--evaluation.max_gen_toks", "8", "--evaluation.batch_size", "8",
            "--output_dir", str(out),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=1800,
    )  # fmt: skip


@pytest.mark.slow
def test_small_real_comparison_trains_every_strategy_on_the_same_routed_prompts(small_task_mix_run, tmp_path):
    """`persyn compare` through the CLI on the shrunk default run: every strategy, TRL SFT and lm-eval each."""
    from datasets import load_from_disk

    from persyn_hub.eval_tasks.items import is_eval_item

    run_dir, overrides, _, _ = small_task_mix_run
    out = tmp_path / "cmp"
    result = small_compare("recipes/demo/compare-task-mix-smollm2-full.yaml", overrides, out)
    assert result.returncode == 0, result.stderr[-4000:]
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {row["strategy"]: row for row in comparison["rows"]}
    assert set(rows) == {"student (no SFT)", *STRATEGIES}

    routing = load_from_disk(str(run_dir / "artifacts" / "routing"))
    labeled = {p for p, flag in zip(routing["prompt_id"], routing["labeled"]) if flag}
    routed = {p for p, how in zip(routing["prompt_id"], routing["selected_by"]) if how == "router"}
    published = load_from_disk(str(run_dir / "artifacts" / "dataset"))
    persyn_rows = {
        p: m
        for p, m, s in zip(published["prompt_id"], published["messages"], published["selected_by"])
        if s == "router"
    }
    sets = {name: load_from_disk(str(out / "data" / name)) for name in STRATEGIES}
    common = sets["persyn"]["prompt_id"]
    assert len(common) == comparison["training_prompts"] == 2  # max_train_prompts: the first 2, for all
    for name, data in sets.items():
        assert data["prompt_id"] == common, f"{name} trained on other prompts"  # same prompts, same count
        assert rows[name]["rows"] == len(common)
        assert not set(data["prompt_id"]) & labeled  # outside the router's labeled subset
        assert set(data["prompt_id"]) <= routed
        texts = [m[-2]["content"] for m in data["messages"]]
        assert not any(is_eval_item(t) for t in texts)  # and outside every evaluation set
    routed_teacher = dict(zip(published["prompt_id"], published["teacher"]))
    for prompt_id, teacher, messages in zip(common, sets["persyn"]["teacher"], sets["persyn"]["messages"]):
        if prompt_id in persyn_rows and routed_teacher[prompt_id] == teacher:
            assert messages == persyn_rows[prompt_id]  # exactly the routed data set `persyn run` published
    # every strategy reports its seeds, fallbacks and what its student learned from
    for name in STRATEGIES:
        assert rows[name]["seeds"] == [0] and rows[name]["fallbacks"] >= 0
        # one full epoch over all of its own rows: 2 prompts, batch 2, one step (the same for every strategy)
        assert [(run["epochs"], run["rows"], run["steps"]) for run in rows[name]["training"]] == [(1.0, 2, 1)]
        assert set(rows[name]["answers"]) == {
            "verified_correct_share", "mean_quality", "mean_response_tokens", "mean_student_logprob",
        }  # fmt: skip
        assert 0.0 <= rows[name]["answers"]["verified_correct_share"] <= 1.0
        assert "seconds" in rows[name]["cost"]
    # The eval items the students were tested on are held out, so none can be a training prompt.
    from persyn_hub.eval_tasks.task_mix import task_mix_heldout

    assert not set(task_mix_heldout()["question"]) & {m[-2]["content"] for m in sets["oracle"]["messages"]}
    summary = json.loads((run_dir / "summary.json").read_text())
    model_labeling = summary["labeled_prompts"] * 2  # two model teachers; reference answers are free
    assert (
        rows["persyn"]["cost"]["labeling_generations"]
        == model_labeling
        == rows["car"]["cost"]["labeling_generations"]
    )
    assert rows["oracle"]["cost"]["generations"] == 2 * len(common)
    assert rows["strong"]["cost"]["labeling_generations"] == model_labeling  # it read the labels too
    assert rows["random"]["cost"]["labeling_generations"] == 0
    # verified routing trains on at least as many checker-accepted answers, and pays for each extra answer
    verified, plain = rows["persyn_verified"], rows["persyn"]
    assert verified["answers"]["verified_correct_share"] >= plain["answers"]["verified_correct_share"]
    assert (
        verified["extra_answers"] >= verified["fallbacks"]
        and verified["cost"]["generations"] >= plain["cost"]["generations"]
    )
    assert rows["oracle"]["cost"]["labeling_generations"] == 0
    assert rows["persyn"]["cost"]["seconds"] > 0  # labeling, scoring and router training are charged
    assert rows["oracle"]["cost"]["seconds"] > 0  # every teacher's answers on the training prompts, scored
    cells = rows["persyn"]["scores"]["persyn_taskmix exact_match"]
    assert 0.0 <= cells["interval"][0] <= cells["mean"] <= cells["interval"][1] <= 1.0
    assert "minus_persyn" in rows["random"]["scores"]["persyn_taskmix exact_match"]
    report = (out / "comparison.md").read_text()
    assert "| persyn |" in report and (out / "comparison.png").stat().st_size > 1000
    assert report.startswith("**`persyn compare recipes/demo/compare-task-mix-smollm2-full.yaml")
    assert "| strategy | seed 0 | minus persyn, seed 0 |" in report
    assert comparison["budget"] == {"epochs": [1.0], "steps": [1], "rows": [2]}
    assert (run_dir / "comparison.md").is_file()
    card = (run_dir / "artifacts" / "dataset" / "README.md").read_text()
    assert "## Student comparison" in card

    # A second comparison of the same run (another output_dir, two of the strategies) trains nothing: its
    # students and the untrained one are read from the run's student cache, with the same per-item scores.
    again = tmp_path / "cmp-again"
    second = small_compare(
        "recipes/demo/compare-task-mix-smollm2.yaml", overrides, again, "--strategies", "[strong, persyn]"
    )
    assert second.returncode == 0, second.stderr[-4000:]
    reused = json.loads((again / "comparison.json").read_text())
    assert sorted(reused["students"]["reused"]) == ["base", "persyn-seed0", "strong-seed0"]
    assert not (again / "students").exists()  # nothing was trained
    for row in reused["rows"]:
        key = "persyn_taskmix exact_match"
        assert row["scores"][key]["per_seed"] == rows[row["strategy"]]["scores"][key]["per_seed"]
        if row["strategy"] != "student (no SFT)":
            assert [run["reused"] for run in row["training"]] == [True]
    assert "reused with their evaluation from" in (again / "comparison.md").read_text()
