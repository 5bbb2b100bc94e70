"""`persyn validate` checks every recipe the repo ships with the parser of its kind (pipeline, comparison,
SFT config), says which kind in its first line, and turns a broken recipe of each kind into one line (exit 2)
naming the field. In-process through `cli.main` (no model, no run, no training); one subprocess shows that an
SFT config or a comparison is checked without importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from persyn_hub.cli import main

ROOT = Path(__file__).parents[1]
ACCELERATE_KEYS = ("compute_environment", "distributed_type")


def is_accelerate_config(path: Path) -> bool:
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    return isinstance(values, dict) and any(key in values for key in ACCELERATE_KEYS)


ALL_YAML = sorted((ROOT / "recipes").rglob("*.yaml"))
RECIPES = [p for p in ALL_YAML if not is_accelerate_config(p)]
ACCELERATE = [p for p in ALL_YAML if is_accelerate_config(p)]
KIND_LINES = ("# pipeline recipe: ", "# comparison recipe: ", "# SFT config: ")


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name their pipeline recipe relative to the repository root


def validate(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["validate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(capsys, *args: str) -> str:
    code, out, err = validate(capsys, *args)
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("persyn: error: ")]
    assert len(errors) == 1 and err.rstrip("\n").splitlines()[-1] == errors[0], err[-3000:]
    return errors[0]


def test_the_repo_ships_every_kind():
    kinds = {"sft" if "dataset_name:" in p.read_text() else p.name.split("-")[0] for p in RECIPES}
    assert {"sft", "compare"} <= kinds and len(RECIPES) >= 13 and len(ACCELERATE) == 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_validates(capsys, path):
    code, out, err = validate(capsys, str(path.relative_to(ROOT)))
    assert code == 0, err[-3000:]
    first = out.splitlines()[0]
    assert first.startswith(KIND_LINES) and str(path.relative_to(ROOT)) in first, first
    values = yaml.safe_load(path.read_text())
    if "pipeline" in values:
        assert first.startswith("# comparison recipe: ")
        documents = list(yaml.safe_load_all(out))
        assert documents[0]["pipeline"] == values["pipeline"] and documents[1]["teachers"]
        assert f"# pipeline recipe: {values['pipeline']}" in out
    elif "dataset_name" in values:
        assert first.startswith("# SFT config: ")
        assert yaml.safe_load(out) == values  # every key printed, grouped by dataclass
    else:
        assert first.startswith("# pipeline recipe: ") and yaml.safe_load(out)["teachers"]


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_an_accelerate_config_is_named_as_such(capsys, path):
    line = one_line_error(capsys, str(path))
    assert "an accelerate config" in line and "accelerate launch --config_file" in line


def test_overrides_reach_every_kind(capsys):
    code, out, _ = validate(capsys, "recipes/demo/asdiv-smollm2.yaml", "--labeling.alpha", "0.25")
    assert code == 0 and yaml.safe_load(out)["labeling"]["alpha"] == 0.25
    code, out, _ = validate(capsys, "recipes/demo/sft.yaml", "--max_steps", "3", "--save_strategy", "no")
    assert code == 0 and yaml.safe_load(out)["max_steps"] == "3"
    code, out, _ = validate(capsys, "recipes/demo/compare-task-mix-smollm2.yaml", "--seeds", "[0]")
    assert code == 0 and next(yaml.safe_load_all(out))["seeds"] == [0]


def test_kind_can_be_forced(capsys):
    line = one_line_error(capsys, "recipes/demo/sft.yaml", "--kind", "pipeline")
    assert "dataset_name: unknown key" in line


def write(tmp_path: Path, source: str, change: dict) -> Path:
    """The shipped recipe `source` with top-level or dotted keys changed (None removes a key)."""
    values = yaml.safe_load((ROOT / source).read_text())
    for dotted, value in change.items():
        node = values
        *parents, last = dotted.split("/")
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    path = tmp_path / Path(source).name
    path.write_text(yaml.safe_dump(values))
    return path


PIPELINE = "recipes/demo/asdiv-smollm2.yaml"
COMPARISON = "recipes/demo/compare-task-mix-smollm2.yaml"
SFT = "recipes/demo/sft.yaml"


@pytest.mark.parametrize(
    ("source", "change", "fragments"),
    [
        (PIPELINE, {"router/num_epochs": 3}, ["router.num_epochs: unknown key", "'num_train_epochs'"]),
        (PIPELINE, {"labeling/num_prompts": "many"}, ["labeling.num_prompts: expected int, got 'many'"]),
        (COMPARISON, {"intervalz": True}, ["intervalz: unknown key", "'intervals'"]),
        (COMPARISON, {"seeds": "zero"}, ["seeds: expected a list"]),
        (COMPARISON, {"sft/max_stepz": 3}, ["sft.max_stepz: unknown key", "'max_steps'"]),
        (COMPARISON, {"sft/max_steps": "ten"}, ["sft.max_steps: expected int, got 'ten'"]),
        (
            COMPARISON,
            {"pipeline": "recipes/demo/missing.yaml"},
            ["pipeline: pipeline recipe 'recipes/demo/missing.yaml' not found", "fix the path"],
        ),
        (
            COMPARISON,
            {"pipeline_overrides": {"labeling.alhpa": 0.1}},
            ["pipeline_overrides.labeling.alhpa: unknown key", "'alpha'"],
        ),
        (COMPARISON, {"strong_teacher": "gpt-9"}, ["strong_teacher: 'gpt-9' is not a teacher of"]),
        (SFT, {"max_stepz": 3}, ["max_stepz: unknown key", "SFTConfig", "'max_steps'"]),
        (SFT, {"max_steps": "ten"}, ["max_steps: expected int, got 'ten'"]),
        (SFT, {"save_strategy": False}, ["save_strategy: expected one of", "quote it ('no')"]),
        (SFT, {"model_name_or_path": None}, ["model_name_or_path: not set"]),
        (
            SFT,
            {"model_name_or_path": "bundled:smollm3"},
            ["model_name_or_path: 'bundled:smollm3' is not a bundled"],
        ),
    ],
    ids=[
        "pipeline-unknown-key",
        "pipeline-wrong-type",
        "comparison-unknown-key",
        "comparison-wrong-type",
        "comparison-sft-unknown-key",
        "comparison-sft-wrong-type",
        "comparison-missing-pipeline",
        "comparison-bad-override",
        "comparison-unknown-teacher",
        "sft-unknown-key",
        "sft-wrong-type",
        "sft-unquoted-no",
        "sft-no-student",
        "sft-bad-bundled-name",
    ],
)
def test_a_broken_recipe_of_each_kind_is_one_line(capsys, tmp_path, source, change, fragments):
    path = write(tmp_path, source, change)
    line = one_line_error(capsys, str(path))
    assert str(path) in line, line
    for fragment in fragments:
        assert fragment in line, line


def test_a_recipe_that_is_not_utf8_names_its_line(capsys, tmp_path):
    for source in (PIPELINE, COMPARISON, SFT):
        path = tmp_path / Path(source).name
        path.write_bytes((ROOT / source).read_bytes() + b"# caf\xe9\n")
        lines = len((ROOT / source).read_bytes().splitlines()) + 1
        line = one_line_error(capsys, str(path))
        assert f"line {lines} is not UTF-8 text" in line and str(path) in line, line


def test_sft_and_comparison_recipes_are_checked_without_torch():
    """TRL's fields are read from their cache (written by the tests above, or here): no torch import."""
    from persyn_hub.compare.sft_config import trl_fields

    assert trl_fields()["SFTConfig"]["max_steps"]["types"] == ["int"]  # the cache exists from here on
    code = (
        "import sys\n"
        "from persyn_hub.cli import main\n"
        f"codes = [main(['validate', {SFT!r}]), main(['validate', 'recipes/gpu/compare-instruct-qwen2.5-0.5b.yaml'])]\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)\n"
        "print('RESULT', codes, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "RESULT [0, 0] []", result.stdout[-2000:]
