"""Recipes parse with their own parser; the comparison writes its table and chart; a small real comparison runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persyn_hub.compare import (
    comparison_card_section,
    comparison_markdown,
    load_compare_recipe,
    plot_comparison,
)
from persyn_hub.config import RecipeError, load_recipe

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

        from persyn_hub.sft import make_parser

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


def test_compare_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("pipeline: recipes/demo/asdiv-smollm2.yaml\nstrategies: [best_single, oracle]\n")
    with pytest.raises(RecipeError, match="oracle"):
        load_compare_recipe(bad)
    bad.write_text("pipeline: x.yaml\nevaluation: {limt: 3}\n")
    with pytest.raises(RecipeError, match="limt.*limit"):
        load_compare_recipe(bad)


def test_table_and_chart_from_a_comparison(tmp_path):
    def scores(v):
        return [
            {"task": "persyn_asdiv", "metric": "exact_match", "filter": "none", "value": v, "stderr": 0.1}
        ]

    comparison = {
        "name": "t",
        "student": "s",
        "pool_rows": 6,
        "evaluation": {"limit": 5, "max_gen_toks": 8},
        "rows": [
            {
                "strategy": "student (no SFT)",
                "rows": 0,
                "total_requests": 0,
                "total_tokens": 0,
                "scores": scores(0.2),
            },
            {
                "strategy": "gts_reward",
                "rows": 3,
                "total_requests": 6,
                "total_tokens": 60,
                "scores": scores(0.4),
            },
            {
                "strategy": "persyn",
                "rows": 3,
                "total_requests": 9,
                "total_tokens": 90,
                "labeling_requests": 6,
                "scores": scores(0.6),
            },
        ],
    }
    table = comparison_markdown(comparison)
    assert "| gts_reward | 3 | 6 | 60 |  | 0.400 |" in table
    assert "| persyn | 3 | 9 | 90 | 6 | 0.600 |" in table
    plot_comparison(comparison, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "comparison.md").write_text(table)
    assert comparison_card_section(tmp_path).startswith("## Student comparison")
    assert comparison_card_section(tmp_path / "missing") is None


@pytest.mark.slow
def test_small_real_comparison(tmp_path, monkeypatch):
    """The demo recipe, shrunk: real pipeline pool, seven strategies, TRL SFT and lm-eval for each."""
    from persyn_hub.compare import run_comparison

    monkeypatch.chdir(ROOT)
    out = tmp_path / "cmp"
    comparison = run_comparison(
        "recipes/demo/compare-asdiv-smollm2.yaml",
        [
            "--pipeline_overrides", json.dumps({
                "prompts.num_prompts": 12, "labeling.num_prompts": 12, "router.num_train_epochs": 2,
                "router.max_length": 64, "teachers.0.generation.max_new_tokens": 24,
                "teachers.1.generation.max_new_tokens": 24, "output.dir": str(tmp_path / "pipeline"),
            }),
            "--sft.max_steps", "1", "--sft.per_device_train_batch_size", "2",
            "--evaluation.limit", "4", "--evaluation.max_gen_toks", "16", "--evaluation.batch_size", "4",
            "--include_base_student", "false", "--output_dir", str(out),
        ],
    )  # fmt: skip
    rows = {row["strategy"]: row for row in comparison["rows"]}
    assert set(rows) == {
        "best_single",
        "random",
        "fixed_mix",
        "gts_quality",
        "gts_learnability",
        "gts_reward",
        "persyn",
    }
    prompts = comparison["pool_rows"] // 2
    assert rows["gts_reward"]["requests"] == 2 * prompts and rows["best_single"]["requests"] == prompts
    assert rows["persyn"]["labeling_requests"] == comparison["labeling_cost"]["requests"] == 24
    for row in rows.values():
        assert row["scores"] and 0.0 <= row["scores"][0]["value"] <= 1.0
    assert "| persyn |" in (out / "comparison.md").read_text()
    assert (out / "comparison.png").stat().st_size > 1000
    assert (tmp_path / "pipeline" / "comparison.md").is_file()
