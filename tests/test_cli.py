"""The `persyn` command explains itself and turns bad input into one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]


def persyn(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_lists_the_subcommands():
    result = persyn("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "route", "prepare", "sft", "evaluate", "compare"):
        assert command in result.stdout
    run_help = persyn("run", "--help")
    assert "overridden" in run_help.stdout and "resumes" in run_help.stdout


def test_validate_applies_overrides():
    result = persyn("validate", "recipes/demo/asdiv-smollm2.yaml", "--labeling.alpha", "0.25")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["labeling"]["alpha"] == 0.25


def test_a_misspelled_key_is_one_clear_error(tmp_path):
    values = yaml.safe_load((ROOT / "recipes/demo/asdiv-smollm2.yaml").read_text())
    values["router"]["num_epochs"] = 3
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(values))
    result = persyn("run", str(recipe), "--output.dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "router.num_epochs: unknown key. Did you mean 'num_train_epochs'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is created before the recipe is valid"


def test_a_prompt_column_that_does_not_exist_stops_before_any_model_loads(tmp_path):
    result = persyn(
        "run",
        "recipes/demo/asdiv-smollm2.yaml",
        "--prompts.prompt_template",
        "{passage} {questoin}",
        "--output.dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert "prompts.prompt_template: column 'questoin' is not in" in result.stderr
    assert not list((tmp_path / "out" / "stages").glob("label-generate*"))


def test_a_teacher_that_cannot_load_stops_before_generation(tmp_path):
    result = persyn(
        "run",
        "recipes/demo/asdiv-smollm2.yaml",
        "--teachers.1.model",
        str(tmp_path / "no-such-model"),
        "--output.dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2, result.stderr
    assert "teachers[1] ('gemma-3-270m').model: cannot load" in result.stderr
    assert not list((tmp_path / "out" / "stages").glob("label-generate*"))
    assert list((tmp_path / "out" / "stages").glob("prompts-*")), "loaded prompts are kept"


def test_a_base_model_as_chat_teacher_is_refused(tmp_path):
    result = persyn(
        "run",
        "recipes/demo/asdiv-smollm2.yaml",
        "--teachers.1.prompt_format",
        "chat",
        "--output.dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert "has no chat template" in result.stderr and "prompt_format: completion" in result.stderr
