"""The `persyn` command explains itself, runs every subcommand as the README writes it, and turns bad
input into one clear line (exit status 2, no traceback).

Where the process matters (the installed entry point, delegated commands that get argv verbatim, a
second process on a locked run) a test runs `persyn` as a user does, in a fresh process. Other errors
go through `main(argv)` in this process (the same parsing, handlers and error report, without paying
the ~5 s of torch imports again), or, where no command reaches them cheaply, are raised by the real
function that raises them and handed to `report_errors`, the code `main()` runs every subcommand through.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[1]
DEMO = str(ROOT / "recipes/demo/asdiv-smollm2.yaml")
DEMO_TEACHERS = ["smollm2-135m-instruct", "gemma-3-270m"]
CONSOLE_SCRIPT = Path(sys.executable).parent / "persyn"
"""The entry point pip wrote for `persyn = persyn_hub.cli:main`."""


def persyn(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m persyn_hub.cli ARGS` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def console_script(*args: str) -> subprocess.CompletedProcess:
    """The installed `persyn` executable itself."""
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT}: the package is not installed with its entry point"
    return subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def check_one_line(code: int, stderr: str, *fragments: str) -> str:
    """Exit 2, no traceback, and the error is one `persyn: error:` line that ends stderr."""
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("persyn: error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert stderr.rstrip("\n").splitlines()[-1] == errors[0], "the message continues on more lines"
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    return check_one_line(result.returncode, result.stderr, *fragments)


def main_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """`persyn ARGS` through `main()` in this process; must end in one error line."""
    from persyn_hub.cli import main

    capsys.readouterr()
    code = main(list(args))
    return check_one_line(code, capsys.readouterr().err)


def reported(capsys: pytest.CaptureFixture, call: Callable[[], Any], *fragments: str) -> str:
    """What `main()` makes of the error `call` raises: status 2 and one stderr line."""
    from persyn_hub.cli import report_errors

    capsys.readouterr()
    code = report_errors(call)
    return check_one_line(code, capsys.readouterr().err, *fragments)


# --------------------------------------------------------------------------------------------------
# Help, and every README command


def test_help_lists_the_subcommands(capsys):
    result = console_script("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "route", "prepare", "sft", "evaluate", "compare"):
        assert command in result.stdout
    from persyn_hub.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    run_help = capsys.readouterr().out
    assert "overridden" in run_help and "resumes" in run_help


def test_delegated_commands_show_their_own_help(capsys):
    sft = console_script("sft", "--help")
    assert sft.returncode == 0, sft.stderr[-2000:]
    assert "--dataset_name" in sft.stdout and "--max_steps" in sft.stdout

    from persyn_hub.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--help"])
    assert exit_.value.code == 0 and "--max-gen-toks" in capsys.readouterr().out
    assert main(["compare", "--help"]) == 0
    assert "persyn compare RECIPE" in capsys.readouterr().out


def test_sft_runs_through_the_console_script(tmp_path):
    """`persyn sft --config recipes/demo/sft.yaml` plus overrides: the README's command, made tiny."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} + 1?"},
                {"role": "assistant", "content": str(i + 1)},
            ]
        }
        for i in range(4)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "student"
    result = console_script(
        "sft",
        "--config",
        "recipes/demo/sft.yaml",
        "--dataset_name",
        str(data),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--max_length",
        "64",
        "--output_dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "'train_rows': 4" in result.stdout


def test_evaluate_runs_through_the_cli(tmp_path):
    out = tmp_path / "eval"
    result = persyn(
        "evaluate",
        "--model",
        "bundled:smollm2-135m-instruct",
        "--tasks",
        "persyn_asdiv",
        "--limit",
        "2",
        "--max-gen-toks",
        "8",
        "--output",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert [score["task"] for score in report["scores"]] == ["persyn_asdiv"]
    assert "| persyn_asdiv | exact_match |" in result.stdout


def test_validate_applies_overrides():
    result = persyn("validate", "recipes/demo/asdiv-smollm2.yaml", "--labeling.alpha", "0.25")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["labeling"]["alpha"] == 0.25


# --------------------------------------------------------------------------------------------------
# persyn run / validate: recipe, prompts, models, cache, lock


def test_a_misspelled_key_is_one_clear_error(tmp_path):
    values = yaml.safe_load(Path(DEMO).read_text())
    values["router"]["num_epochs"] = 3
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(values))
    result = persyn("run", str(recipe), "--output.dir", str(tmp_path / "out"))
    one_error_line(result, "router.num_epochs: unknown key. Did you mean 'num_train_epochs'?")  # RecipeError
    assert not (tmp_path / "out").exists(), "nothing is created before the recipe is valid"


def test_invalid_yaml_is_collapsed_to_one_line(capsys, tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("name: demo\nprompts:\n  source: [bundled:asdiv\n  split: train\n")
    line = main_error(capsys, "validate", str(recipe))  # RecipeError around PyYAML's multi-line message
    assert "not valid YAML" in line and "line 4, column" in line


def test_validate_refuses_a_local_prompts_file_that_does_not_exist(capsys, tmp_path):
    missing = persyn("validate", DEMO, "--prompts.source", "data/missing.jsonl")
    one_error_line(missing, "prompts.source: local path 'data/missing.jsonl' does not exist", "fix the path")

    from persyn_hub.cli import main

    capsys.readouterr()
    assert main(["validate", DEMO, "--prompts.source", "some-org/some-prompts"]) == 0  # no network needed
    assert yaml.safe_load(capsys.readouterr().out)["prompts"]["source"] == "some-org/some-prompts"
    line = main_error(
        capsys, "run", DEMO, "--prompts.source", "./prompts", "--output.dir", str(tmp_path / "out")
    )
    assert "prompts.source: local path './prompts' does not exist" in line
    assert not (tmp_path / "out").exists(), "refused before any work"


def test_local_paths_are_told_from_hub_ids(tmp_path):
    from persyn_hub.recipe.config import RecipeError
    from persyn_hub.recipe.name_checks import check_prompts_source

    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    # Hub ids (no network needed), bundled data, an existing file, an existing folder (save_to_disk).
    for fine in ("bundled:asdiv", "openai/gsm8k", "gsm8k", "org/name", str(data), str(tmp_path)):
        check_prompts_source(fine)
    for wrong in (
        str(tmp_path / "nope.parquet"),
        "prompts.csv",
        "./prompts",
        "../prompts",
        str(tmp_path / "nope"),
        "data/sub/prompts",  # two slashes: no Hub id looks like that
        "~/no-such-persyn-prompts",
    ):
        with pytest.raises(RecipeError, match="prompts.source"):
            check_prompts_source(wrong)
    folder = tmp_path / "split.jsonl"  # a data-file name that is a directory
    folder.mkdir()
    with pytest.raises(RecipeError, match="is a directory"):
        check_prompts_source(str(folder))


def test_a_prompt_column_that_does_not_exist_stops_before_any_model_loads(tmp_path):
    result = persyn(
        "run",
        DEMO,
        "--prompts.prompt_template",
        "{passage} {questoin}",
        "--output.dir",
        str(tmp_path / "out"),
    )
    one_error_line(result, "prompts.prompt_template: column 'questoin' is not in")  # PromptDataError
    assert not list((tmp_path / "out" / "stages").glob("label-generate*"))


def test_a_teacher_that_cannot_load_stops_before_generation(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    args = (
        "run",
        DEMO,
        "--teachers.1.model",
        str(tmp_path / "not-a-model"),
        "--output.dir",
        str(tmp_path / "out"),
    )
    result = persyn(*args)
    one_error_line(result, "teachers[1] ('gemma-3-270m').model: cannot load")  # PreflightError
    assert not list((tmp_path / "out" / "stages").glob("label-generate*"))
    stage = list((tmp_path / "out" / "stages").glob("prompts-*"))
    assert stage, "loaded prompts are kept"

    # The same command over a damaged cache: CorruptCacheError names the stage folder and the fix.
    next((stage[0] / "data").rglob("*.arrow")).write_bytes(b"not arrow")
    one_error_line(persyn(*args), f"{stage[0].name} is unreadable", "Delete that folder and run again")


def test_a_model_path_that_does_not_exist_is_refused_when_the_recipe_is_read(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    assert "teachers[1] ('gemma-3-270m').model: local model path" in main_error(
        capsys, "validate", DEMO, "--teachers.1.model", missing
    )
    assert "does not exist" in main_error(
        capsys, "run", DEMO, "--teachers.1.model", missing, "--output.dir", str(tmp_path / "out")
    )
    assert not (tmp_path / "out").exists()


def test_a_base_model_as_chat_teacher_is_refused(tmp_path):
    result = persyn("run", DEMO, "--teachers.1.prompt_format", "chat", "--output.dir", str(tmp_path / "out"))
    one_error_line(result, "has no chat template", "prompt_format: completion")  # PreflightError


def test_a_second_run_on_the_same_output_dir_is_refused(tmp_path):
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / ".persyn.lock")):  # this process is the run in progress
        (out / ".persyn.lock.owner").write_text("persyn run (pid 12345)")
        result = persyn("run", DEMO, "--output.dir", str(out))
    one_error_line(result, "is in use by persyn run (pid 12345)", "--output.dir to another directory")


# --------------------------------------------------------------------------------------------------
# persyn compare: overrides arrive verbatim


def test_compare_gets_its_overrides_and_a_bad_key_is_one_line(tmp_path):
    """`persyn compare` reads its own flags as recipe overrides; a wrong one is a RecipeError line."""
    recipe = tmp_path / "compare.yaml"
    recipe.write_text(
        yaml.safe_dump({"pipeline": "recipes/demo/task-mix-smollm2.yaml", "strategies": ["strong"]})
    )
    result = persyn("compare", str(recipe), "--labels", "somewhere", "--output_dir", str(tmp_path / "cmp"))
    one_error_line(result, "labels: unknown key")
    assert not (tmp_path / "cmp").exists()


def test_a_strategy_the_pool_cannot_support_is_one_line(capsys):
    """BaselineError, raised by the real Family-Strong definition on a pool without the student's family."""
    from datasets import Dataset

    from persyn_hub.compare.baselines import family_strongest

    labels = Dataset.from_dict({"prompt_id": ["p"], "teacher": ["a"], "quality": [1.0]})
    reported(
        capsys,
        lambda: family_strongest(labels, ["a"], {"a": "qwen2"}, "llama"),
        "family_strong: no teacher of the student's family 'llama'",
        "set `family:` on the teachers",
    )


# --------------------------------------------------------------------------------------------------
# persyn route: budgets and routers


@pytest.fixture(scope="module")
def tiny_router(tmp_path_factory) -> Path:
    """A real router for the demo's teachers (tiny random encoder, MiniLM's tokenizer), saved."""
    from conftest import save_tiny_router

    folder = tmp_path_factory.mktemp("router")
    save_tiny_router(folder, DEMO_TEACHERS, max_length=32)
    return folder


def route(tmp_path: Path, router: str, *extra: str) -> list[str]:
    return [
        "route",
        "--router",
        router,
        "--prompts",
        "bundled:asdiv",
        "--output",
        str(tmp_path / "out"),
        *extra,
    ]


def test_bad_budgets_json_names_the_flag(tmp_path):
    """Checked before the router loads: the router path here does not even exist."""
    result = persyn(*route(tmp_path, str(tmp_path / "no-router"), "--budgets", "{gemma-3-270m: 0.3}"))
    one_error_line(result, "--budgets: '{gemma-3-270m: 0.3}' is not valid JSON", "e.g. --budgets '{\"gemma")


def test_a_budget_for_an_unknown_teacher_stops_before_routing(capsys, tmp_path, tiny_router):
    line = main_error(capsys, *route(tmp_path, str(tiny_router), "--budgets", '{"gemma-3-27b": 0.3}'))
    assert "budgets: unknown teacher(s) ['gemma-3-27b']; the router's teachers are" in line  # BudgetError
    assert not (tmp_path / "out").exists()


def test_a_router_for_other_teachers_is_one_line(capsys, tmp_path, tiny_router):
    """RouterMismatchError, named with the flag it came from (`--router`)."""
    line = main_error(capsys, *route(tmp_path, str(tiny_router), "--teachers", "qwen,llama"))
    assert line.startswith("persyn: error: --router: The router") and "Train a router for this pool" in line


def test_a_folder_that_is_not_a_router_is_one_line(capsys, tmp_path, minilm_path):
    line = main_error(capsys, *route(tmp_path, minilm_path))
    assert (
        "--router:" in line
        and "a 'bert' model whose config has no 'persyn' entry is not a PerSyn router" in line
    )


# --------------------------------------------------------------------------------------------------
# Errors no command reaches cheaply: the real function raises, main()'s report turns it into one line


def test_router_mismatch_from_load_router(capsys, tiny_router):
    from persyn_hub.router import load_router

    reported(
        capsys, lambda: load_router(str(tiny_router), expected_teachers=["a", "b"]), "Missing from the router"
    )


def test_router_data_error(capsys):
    from datasets import Dataset

    from persyn_hub.router.labels import pivot_rewards

    pool = Dataset.from_dict({"prompt_id": ["p1"], "prompt": ["hi"]})
    reported(
        capsys, lambda: pivot_rewards(pool, DEMO_TEACHERS), "lacks column(s)", "run the combine stage first"
    )


def test_served_scoring_error(capsys):
    from persyn_hub.scoring.learnability.server_replies import vllm_token_logprobs

    body = {"choices": [{"prompt_logprobs": [None]}]}
    reported(capsys, lambda: vllm_token_logprobs(body, [1, 2]), "the server scored 1 prompt tokens")


def test_reward_model_error(capsys):
    from persyn_hub.recipe.config import QualityConfig
    from persyn_hub.scoring.reward_model import load_reward_model

    quality = QualityConfig(kind="reward_model")
    reported(capsys, lambda: load_reward_model(quality), "quality.reward_model: no model named")


def test_publish_error(capsys, tmp_path):
    from persyn_hub.publish.hub import publish_run
    from persyn_hub.recipe.config import load_recipe

    recipe = load_recipe(DEMO, ["--output.hub.labels_repo", "someone/labels"])
    reported(
        capsys,
        lambda: publish_run(tmp_path, recipe, {}),
        "is missing",
        "Run `persyn run` to completion first",
    )


def test_an_unexpected_exception_keeps_its_traceback():
    """A bug is not dressed up as a user error: report_errors lets it through."""
    from persyn_hub.cli import report_errors

    with pytest.raises(KeyError):
        report_errors(lambda: {}["missing"])


def test_a_long_wrapped_message_keeps_its_start_and_its_fix():
    from persyn_hub.cli import MAX_MESSAGE, one_line

    message = "prompts.source: bad\n" + "detail line\n" * 200 + "Fix: set prompts.source."
    line = one_line(message)
    assert "\n" not in line and len(line) <= MAX_MESSAGE + 3
    assert line.startswith("prompts.source: bad detail") and line.endswith("Fix: set prompts.source.")


@pytest.mark.parametrize(
    ("module", "name", "base"),
    [
        ("persyn_hub.recipe.config", "RecipeError", ValueError),
        ("persyn_hub.data", "PromptDataError", ValueError),
        ("persyn_hub.pipeline.preflight", "PreflightError", RuntimeError),
        ("persyn_hub.pipeline.run", "RunLockedError", RuntimeError),
        ("persyn_hub.pipeline.cache", "CorruptCacheError", RuntimeError),
        ("persyn_hub.router.labels", "RouterDataError", ValueError),
        ("persyn_hub.router.budgets", "BudgetError", ValueError),
        ("persyn_hub.compare.baselines", "BaselineError", ValueError),
        ("persyn_hub.scoring.learnability.server_replies", "ServedScoringError", RuntimeError),
        ("persyn_hub.scoring.reward_model", "RewardModelError", ValueError),
        ("persyn_hub.publish.hub", "PublishError", RuntimeError),
        ("persyn_hub.router.storage", "RouterMismatchError", ValueError),
        ("persyn_hub.compare.evaluation", "EvaluationError", ValueError),
        ("persyn_hub.pipeline.launch", "LaunchError", RuntimeError),
    ],
)
def test_every_package_error_is_a_persyn_error(module, name, base):
    """The CLI catches PersynError only; each class keeps its old base for existing `except` clauses."""
    import importlib

    from persyn_hub.errors import PersynError

    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, PersynError) and issubclass(cls, base)


# --------------------------------------------------------------------------------------------------
# Bad input to every command: one line, exit 2


def test_evaluate_with_a_model_that_does_not_exist_is_one_line(tmp_path):
    result = persyn("evaluate", "--model", str(tmp_path / "nonexistent"), "--tasks", "persyn_asdiv")
    one_error_line(result, "--model: cannot load", "nonexistent", "point --model at a saved model folder")


def test_evaluate_with_a_bad_hub_id_is_one_line(capsys):
    line = main_error(capsys, "evaluate", "--model", "no org/with spaces", "--tasks", "persyn_asdiv")
    assert "--model: cannot load 'no org/with spaces'" in line and "check the Hub id" in line


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "not found"),
        ("model_name_or_path: [unclosed", "is not valid YAML"),
        ("- a list", "YAML mapping"),
    ],
    ids=["missing", "bad-yaml", "not-a-mapping"],
)
def test_sft_with_a_bad_config_file_is_one_line(capsys, tmp_path, content, fragment):
    config = tmp_path / "sft.yaml"
    if content is not None:
        config.write_text(content)
    line = main_error(capsys, "sft", "--config", str(config))
    assert line.startswith("persyn: error: --config:") and fragment in line, line


def test_sft_with_an_unknown_key_is_one_line(capsys, tmp_path):
    config = tmp_path / "sft.yaml"
    config.write_text("dataset_name: x\nuse_cpu: true\nbf16: false\nnot_a_setting: 1\n")
    line = main_error(capsys, "sft", "--config", str(config))
    assert line.startswith("persyn: error: --config:") and "not_a_setting" in line, line


def test_route_on_a_prompts_file_with_a_line_that_is_not_json_names_the_line(capsys, tmp_path, tiny_router):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is 2 + 2?"}\n{"prompt": "What is 3 + 3?"}\nthis is not json\n')
    line = main_error(
        capsys,
        *route(tmp_path, str(tiny_router))[:3],
        "--prompts",
        str(prompts),
        "--output",
        str(tmp_path / "o"),
    )
    assert "prompts.source:" in line and "line 3 is not JSON" in line and "fix or remove it" in line, line


def write_local_recipe(tmp_path: Path, rows: list[dict], **prompts: object) -> Path:
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = yaml.safe_load((ROOT / "recipes" / "demo" / "asdiv-smollm2.yaml").read_text())
    recipe["prompts"] = {"source": str(data), "prompt_column": "question", **prompts}
    recipe["quality"] = {"kind": "column", "column": "score"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


WIDE_ROWS = [{"question": f"q{i}", "id": i, "a": {"content": "x", "score": 1.0}, "b": None} for i in range(4)]


@pytest.mark.parametrize(
    ("prompts", "teachers", "fragment"),
    [
        ({"answer_column": "gold"}, None, "prompts.answer_column: column 'gold' is not in"),
        ({"id_column": "uuid"}, None, "prompts.id_column: column 'uuid' is not in"),
        ({"prompt_column": "instruction"}, None, "prompts.prompt_column: column 'instruction' is not in"),
        (
            {"pool": {"format": "wide"}},
            [{"name": "a"}, {"name": "c"}],
            "teachers: ['c'] answer from the pool, but",
        ),
        (
            {"pool": {"format": "long", "teacher_column": "model"}},
            [{"name": "a"}, {"name": "b"}],
            "prompts.pool.teacher_column: column 'model' is not in",
        ),
    ],
    ids=["answer", "id", "prompt", "wide-teacher", "long-teacher-column"],
)
def test_validate_checks_a_local_sources_columns(tmp_path, prompts, teachers, fragment):
    path = write_local_recipe(tmp_path, WIDE_ROWS, **prompts)
    if teachers is not None:
        recipe = yaml.safe_load(path.read_text())
        recipe["teachers"] = teachers
        path.write_text(yaml.safe_dump(recipe))
    one_error_line(persyn("validate", str(path)), fragment)


def test_validate_checks_that_every_long_pool_teacher_has_answers(tmp_path):
    rows = [
        {"question": f"q{i}", "teacher": t, "response": "x", "score": 1.0}
        for i in range(3)
        for t in ("a", "b")
    ]
    path = write_local_recipe(tmp_path, rows, pool={"format": "long", "score_columns": ["score"]})
    recipe = yaml.safe_load(path.read_text())
    recipe["teachers"] = [{"name": "a"}, {"name": "gpt-9"}]
    path.write_text(yaml.safe_dump(recipe))
    one_error_line(
        persyn("validate", str(path)),
        "teachers: ['gpt-9'] answer from the pool",
        "has no row with teacher = 'gpt-9'",
    )
    recipe["teachers"] = [{"name": "a"}, {"name": "b"}]
    path.write_text(yaml.safe_dump(recipe))
    assert persyn("validate", str(path)).returncode == 0
