"""The recipe parser: YAML -> dataclasses, overrides, and the error messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from persyn_hub.recipe.config import PersynRecipe, RecipeError, load_recipe, parse_overrides

DEMO = Path(__file__).parents[1] / "recipes" / "demo" / "asdiv-smollm2.yaml"


def write(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def demo_values() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_demo_recipe_parses_into_typed_dataclasses():
    recipe = load_recipe(DEMO)
    assert isinstance(recipe, PersynRecipe)
    assert recipe.teacher_names() == ["smollm2-135m-instruct", "gemma-3-270m"]
    gemma = recipe.teachers[1]
    assert gemma.prompt_format == "completion"
    assert gemma.few_shot[0].response.endswith("The answer is 12.")
    assert gemma.generation.stop == ["\nQuestion:"]
    assert recipe.recipe_version == 2
    assert recipe.labeling.alpha == 0.4 and recipe.labeling.num_prompts == 64
    assert recipe.router.learning_rate == pytest.approx(5e-4)
    assert (recipe.router.validation_fraction, recipe.router.test_fraction) == (0.2, 0.2)


def test_overrides_take_precedence_over_yaml():
    recipe = load_recipe(
        DEMO,
        [
            "--labeling.alpha",
            "0.8",
            "--teachers.1.generation.max_new_tokens=12",
            "--output.dir",
            "runs/x",
            "--routing.budgets",
            "{gemma-3-270m: 0.5}",
        ],
    )
    assert recipe.labeling.alpha == 0.8
    assert recipe.teachers[1].generation.max_new_tokens == 12
    assert recipe.output.dir == "runs/x"
    assert recipe.routing.budgets == {"gemma-3-270m": 0.5}


def test_recipe_round_trips_through_yaml(tmp_path):
    recipe = load_recipe(DEMO)
    again = load_recipe(write(tmp_path, yaml.safe_load(recipe.to_yaml())))
    assert again == recipe


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda v: v["labeling"].update(alpah=0.3), r"labeling\.alpah: unknown key\. Did you mean 'alpha'\?"),
        (lambda v: v["teachers"][1].update(promt_format="chat"), r"teachers\[1\]\.promt_format: unknown key"),
        (lambda v: v.update(teacher=[]), r"teacher: unknown key\. Did you mean 'teachers'\?"),
        (lambda v: v["labeling"].update(alpha="high"), r"labeling\.alpha: expected float, got 'high'"),
        (lambda v: v["labeling"].update(alpha=1.5), r"labeling\.alpha: 1\.5 is outside \[0, 1\]"),
        (
            lambda v: v["teachers"][0].update(prompt_format="instruct"),
            r"teachers\[0\]\.prompt_format: 'instruct' is not one of",
        ),
        (lambda v: v["teachers"].pop(), r"teachers: the pool has 1 teacher"),
        (lambda v: v["teachers"][1].update(name="smollm2-135m-instruct"), r"is used twice"),
        (lambda v: v["teachers"][0].pop("name"), r"teachers\[0\]\.name: required key is missing"),
        (lambda v: v["teachers"][0].pop("model"), r"set `model` \(local\) or `endpoints`"),
        (
            lambda v: v["routing"].update(budgets={"gpt": 0.2}),
            r"routing\.budgets: unknown teacher\(s\) \['gpt'\]",
        ),
        (lambda v: v["prompts"].pop("answer_column"), r"prompts\.answer_column: the math_answer verifier"),
        (lambda v: v["quality"].update(kind="reward_model"), r"quality\.reward_model: .*no model is named"),
        (lambda v: v["teachers"][1].update(completion_template="Q: x"), r"completion_template: must contain"),
        (lambda v: v["labeling"].update(num_prompts=1000), r"prompts\.num_prompts \(256\) is smaller"),
        (
            lambda v: (
                v["routing"].update(reuse_router="org/router"),
                v["output"].update(hub={"router_repo": "org/r"}),
            ),
            r"output\.hub\.router_repo: this recipe routes with a given router \(routing\.reuse_router\)",
        ),
        # renamed keys are refused with their new name and the migration command
        (
            lambda v: v["router"].update(eval_fraction=0.25),
            r"router\.eval_fraction: renamed; use router\.validation_fraction .*router\.test_fraction.*persyn migrate",
        ),
        (
            lambda v: v["routing"].update(router="org/router"),
            r"routing\.router: renamed; use routing\.reuse_router .*persyn migrate",
        ),
        # a recipe without recipe_version that sets alpha meant the quality weight: refused, not flipped
        (
            lambda v: v.pop("recipe_version"),
            r"labeling\.alpha: .*LEARNABILITY.*persyn migrate.*alpha becomes 0\.6",
        ),
        (lambda v: v.update(recipe_version=3), r"recipe_version: 3 is newer"),
        (lambda v: v["router"].update(test_fraction=0.0), r"router\.test_fraction: 0\.0 must be in \(0, 1\)"),
        (
            lambda v: v["router"].update(validation_fraction=1.0),
            r"router\.validation_fraction: 1\.0 must be in",
        ),
        (
            lambda v: v["router"].update(validation_fraction=0.5, test_fraction=0.45),
            r"router\.validation_fraction \+ router\.test_fraction = 0\.95 leaves under 10%",
        ),
        (
            lambda v: v.setdefault("launch", {}).update(stall_timeout=0),
            r"launch\.stall_timeout: 0\.0 must be a positive number of seconds \(longer than the slowest model load",
        ),
    ],
)
def test_bad_recipes_name_the_key_and_the_fix(tmp_path, mutate, message):
    values = demo_values()
    mutate(values)
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path, values))


def test_a_recipe_without_version_loads_when_it_leaves_alpha_at_the_default(tmp_path):
    values = demo_values()
    values.pop("recipe_version")
    values["labeling"].pop("alpha")
    recipe = load_recipe(write(tmp_path, values))
    assert recipe.labeling.alpha == 0.4 and recipe.recipe_version == 2


def test_override_errors_are_clear():
    with pytest.raises(RecipeError, match=r"--teachers\.5\.name: .*no item '5'"):
        load_recipe(DEMO, ["--teachers.5.name", "x"])
    with pytest.raises(RecipeError, match="missing a value"):
        parse_overrides(["--alpha"])
    with pytest.raises(RecipeError, match="unknown key"):
        load_recipe(DEMO, ["--labeling.alhpa", "0.1"])


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)


def test_every_pipeline_recipe_parses():
    root = Path(__file__).parents[1] / "recipes"
    pipeline_recipes = [p for p in root.rglob("*.yaml") if "teachers:" in p.read_text()]
    assert DEMO in pipeline_recipes
    for path in pipeline_recipes:
        load_recipe(path)


def test_secrets_in_the_recipe_env_are_refused(tmp_path):
    values = demo_values()
    values["env"] = {"HF_TOKEN": "hf_abc"}
    with pytest.raises(RecipeError, match=r"env\.HF_TOKEN: secrets do not belong in a recipe") as error:
        load_recipe(write(tmp_path, values))
    assert "hf_abc" not in str(error.value)
