"""A wrong setting fails once, not once per row.

Gemma-2's chat template refuses a system turn, a server may not have the model a recipe names: every row
would fail alike. Here, with real parts (the bundled SmolLM2 under a Gemma-2-like template, a real HTTP
server on 127.0.0.1): a template or server that refuses a system turn gets it folded into the first user
turn (and the summary and card say so); anything else stops the run in preflight, naming the teacher, the
server's message and the fix; a teacher that starts failing alike mid-stage is stopped after
`stop_after_failures` requests, and `--retry-failed` asks its rows again.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from persyn_hub.data import load_prompts
from persyn_hub.generation import generate_responses
from persyn_hub.pipeline.preflight import PreflightError, check_before_work
from persyn_hub.recipe.config import PromptsConfig, TeacherConfig, recipe_from_dict

sys.path.insert(0, str(Path(__file__).parent))
from servers import ScriptedChatServer  # noqa: E402

SYSTEM = "Solve the math word problem. End with: The answer is <number>."
REFUSES_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
)
"""What Gemma-2's template does with a system turn, put before SmolLM2's own template."""
ROWS = 40


@pytest.fixture(scope="module")
def prompts() -> Dataset:
    """ASDiv prompts whose messages start with a system turn (`prompts.system_prompt`, as the math recipes)."""
    config = PromptsConfig(
        source="bundled:asdiv",
        prompt_template="{passage} {question}",
        answer_column="answer",
        num_prompts=ROWS,
        drop_duplicates=True,
        system_prompt=SYSTEM,
    )
    return load_prompts(config, seed=0)


def model_with_template(smollm2_path: str, folder: Path, template: str) -> Path:
    """The bundled SmolLM2 (weights symlinked) under another chat template."""
    folder.mkdir(parents=True)
    for file in Path(smollm2_path).iterdir():
        if file.name != "chat_template.jinja":
            (folder / file.name).symlink_to(file)
    (folder / "chat_template.jinja").write_text(template)
    return folder


@pytest.fixture(scope="module")
def gemma_like(smollm2_path, tmp_path_factory) -> Path:
    own = (Path(smollm2_path) / "chat_template.jinja").read_text()
    return model_with_template(
        smollm2_path, tmp_path_factory.mktemp("m") / "gemma-like", REFUSES_SYSTEM + own
    )


def recipe_values(teachers: list[dict], output: Path) -> dict:
    return {
        "name": "fail-once",
        "recipe_version": 2,
        "seed": 0,
        "prompts": {
            "source": "bundled:asdiv",
            "prompt_template": "{passage} {question}",
            "answer_column": "answer",
            "num_prompts": 10,
            "drop_duplicates": True,
            "system_prompt": SYSTEM,
        },
        "student": {"model": "bundled:smollm2-135m-instruct", "dtype": "float32", "max_length": 256},
        "teachers": teachers,
        "quality": {"kind": "math_answer"},
        "labeling": {"num_prompts": 8},
        "router": {"num_train_epochs": 2, "max_length": 64},
        "output": {"dir": str(output)},
    }


ANSWER_KEY = {"name": "answer-key", "backend": "reference", "response_template": "The answer is {answer}."}
"""A second teacher that costs nothing: a recipe needs two."""


def recipe_with(*teachers: dict, output: Path = Path("unused")):
    return recipe_from_dict(recipe_values([*teachers, ANSWER_KEY], output))


def local(model: Path, name: str = "gemma-like") -> dict:
    return {
        "name": name,
        "model": str(model),
        "dtype": "float32",
        "batch_size": 4,
        "generation": {"max_new_tokens": 8},
    }


def served(url: str, name: str = "served", **settings) -> dict:
    values = {
        "name": name,
        "endpoints": [url],
        "max_concurrency": 2,
        "timeout": 10.0,
        "max_retries": 0,
        "retry_backoff": 0.01,
        "generation": {"max_new_tokens": 8},
    }
    return {**values, **settings}


def teacher(values: dict) -> TeacherConfig:
    return recipe_with(values).teachers[0]


# ----------------------------------------------------------------------------------------------------
# A local teacher whose chat template refuses a system turn


def test_a_template_that_refuses_a_system_turn_is_folded_not_failed_per_row(
    gemma_like, smollm2_path, prompts, tmp_path, caplog
):
    from transformers import AutoTokenizer

    from persyn_hub.generation.local import render_prompt
    from persyn_hub.pipeline.summary import teacher_notes
    from persyn_hub.publish.cards import render_dataset_card

    recipe = recipe_with(local(gemma_like))
    rows = prompts.select(range(4))
    with caplog.at_level(logging.WARNING, logger="persyn_hub"):
        check_before_work(recipe, rows)  # renders the first prompt as generation will: folded, no stop
    assert "gemma-like" in caplog.text and "folded into the first user turn" in caplog.text

    result, stats = generate_responses(rows, recipe.teachers[0], checkpoint_dir=tmp_path / "rows")
    assert result["error"] == [None] * 4 and all(result["response"])
    assert (stats.failures, stats.folded_rows) == (0, 4)
    assert "System role not supported" in stats.system_folded

    # The text generated from is SmolLM2's own rendering of one user turn: system text, blank line, prompt.
    tokenizer = AutoTokenizer.from_pretrained(gemma_like)
    messages = rows[0]["messages"]
    folded = [{"role": "user", "content": f"{SYSTEM}\n\n{messages[1]['content']}"}]
    expected = AutoTokenizer.from_pretrained(smollm2_path).apply_chat_template(
        folded, add_generation_prompt=True, tokenize=False
    )
    assert render_prompt(recipe.teachers[0], tokenizer, messages) == expected

    # The summary and the data set card name the teacher, the rows and why.
    generation = {"gemma-like": [{"phase": "labeling", **stats.to_dict()}]}
    folded_notes, stopped_notes = teacher_notes(generation)
    assert folded_notes == {"gemma-like": {"rows": 4, "reason": stats.system_folded}} and stopped_notes == {}
    summary = {
        "generation": generation,
        "system_prompt_folded": folded_notes,
        "stopped_teachers": stopped_notes,
    }
    card = str(render_dataset_card(recipe=recipe, summary=summary))
    assert "## System prompt folded" in card and "| `gemma-like` | 4 |" in card
    assert "System role not supported" in card and "## Stopped teachers" not in card


def test_a_template_that_raises_on_every_render_stops_before_the_stage(smollm2_path, prompts, tmp_path):
    broken = model_with_template(
        smollm2_path, tmp_path / "broken", "{{ raise_exception('Template is broken') }}"
    )
    recipe = recipe_with(local(broken, name="broken-template"))
    with pytest.raises(PreflightError) as error:
        check_before_work(recipe, prompts.select(range(2)))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "teachers[0] ('broken-template'): its chat template cannot render the first prompt"
    )
    assert "Template is broken" in message and "Fix the model's chat template" in message


# ----------------------------------------------------------------------------------------------------
# An endpoint teacher whose server refuses the request


def test_a_server_that_refuses_every_request_stops_the_run_in_preflight(prompts):
    with ScriptedChatServer("refuse", message="System role not supported") as server:
        with pytest.raises(PreflightError) as error:
            check_before_work(recipe_with(served(server.url)), prompts.select(range(4)))
        # one probe as it is, one with the system turn folded in: both refused, and nothing else sent
        assert (server.requests, server.probes) == (2, 2)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"teachers[0] ('served'): {server.url} refused the first prompt")
    assert "(HTTP 400: System role not supported)" in message
    assert "Remove the system prompt" in message and "Nothing was generated" in message


def test_a_model_the_server_does_not_have_is_named_with_the_fix(prompts, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fail_once_secret_token")
    unknown = "The model `qwen-72b` does not exist."
    with ScriptedChatServer("refuse", status=404, message=unknown) as server:
        with pytest.raises(PreflightError) as error:
            check_before_work(recipe_with(served(server.url, served_model_name="qwen-72b")), prompts)
    message = str(error.value)
    assert unknown in message and "HTTP 404" in message
    assert "Set served_model_name to a model the server serves (it serves ['scripted'])" in message
    assert "hf_fail_once_secret_token" not in message


def test_a_server_that_refuses_system_turns_gets_them_folded(prompts, tmp_path):
    rows = prompts.select(range(6))
    with ScriptedChatServer("refuse_system") as server:
        values = served(server.url, name="gemma-2-served")
        recipe = recipe_with(values)
        check_before_work(recipe, rows)  # the probe is refused, the folded probe answered: fold
        result, stats = generate_responses(rows, recipe.teachers[0], checkpoint_dir=tmp_path / "rows")
        sent = server.bodies[server.probes :]
    assert result["error"] == [None] * 6
    assert (stats.requests, stats.folded_rows, stats.failures) == (6, 6, 0)
    assert stats.system_folded == "the server refuses a system turn (HTTP 400: System role not supported)"
    users = {messages[1]["content"] for messages in rows["messages"]}
    assert all(len(body["messages"]) == 1 and body["messages"][0]["role"] == "user" for body in sent)
    assert {body["messages"][0]["content"] for body in sent} == {f"{SYSTEM}\n\n{text}" for text in users}


def test_without_preflight_generation_probes_once_itself_and_folds(prompts, tmp_path):
    """A library call (or a command whose process ran no preflight) decides the fold the same way."""
    rows = prompts.select(range(6))
    with ScriptedChatServer("refuse_system") as server:
        result, stats = generate_responses(
            rows, teacher(served(server.url, name="library-call")), checkpoint_dir=tmp_path / "rows"
        )
        assert (server.probes, server.requests) == (2, 8)  # as it is (refused), folded (answered); 6 rows
    assert result["error"] == [None] * 6 and stats.folded_rows == 6


def test_a_teacher_failing_alike_is_stopped_and_retry_failed_asks_the_rest(prompts, tmp_path, caplog):
    limit, concurrency = 5, 4
    with ScriptedChatServer("refuse", message="model 'x' is not loaded") as server:
        server.answer_first = 1  # the probe passes: the server breaks after preflight
        recipe = recipe_with(served(server.url, max_concurrency=concurrency, stop_after_failures=limit))
        check_before_work(recipe, prompts)
        assert (server.requests, server.probes) == (1, 1)
        with caplog.at_level(logging.ERROR, logger="persyn_hub"):
            result, stats = generate_responses(prompts, recipe.teachers[0], checkpoint_dir=tmp_path / "rows")
        sent = server.requests - server.probes
        assert limit <= sent <= limit + concurrency, f"{sent} requests for {ROWS} rows"
        assert stats.requests == sent

        errors = result["error"]
        assert all(errors), "every row failed: some refused, the rest not sent"
        refused = [e for e in errors if e.startswith("HTTP 400")]
        not_sent = [e for e in errors if e.startswith("teacher stopped")]
        assert len(refused) == sent and len(not_sent) == ROWS - sent == stats.stopped_rows
        assert stats.stopped == "HTTP 400: model 'x' is not loaded"
        assert "model 'x' is not loaded" in not_sent[0] and "--retry-failed" in not_sent[0]
        assert stats.failure_reasons == {"HTTP 400": sent, "teacher stopped": ROWS - sent}
        stops = [r for r in caplog.records if r.levelno >= logging.ERROR and "stopped" in r.getMessage()]
        assert len(stops) == 1 and "model 'x' is not loaded" in stops[0].getMessage()

        # The stop holds in this process (a later stage, e.g. the routed prompts, sends nothing) ...
        later, stats_later = generate_responses(
            prompts, recipe.teachers[0], checkpoint_dir=tmp_path / "later"
        )
        assert server.requests - server.probes == sent and stats_later.stopped_rows == ROWS
        assert all(error.startswith("teacher stopped") for error in later["error"])

        # ... until it is fixed: a re-run's preflight probe is answered, and the stage (what --retry-failed
        # does) asks every failed row again.
        server.mode = "answer"
        check_before_work(recipe, prompts)
        again, stats_again = generate_responses(prompts, recipe.teachers[0], checkpoint_dir=tmp_path / "rows")
    assert again["error"] == [None] * ROWS
    assert (stats_again.requests, stats_again.stopped, stats_again.failures) == (ROWS, None, 0)


def test_retryable_failures_and_a_disabled_guard_never_stop_a_teacher(prompts, tmp_path):
    rows = prompts.select(range(12))
    with ScriptedChatServer("unavailable") as server:  # 503 to every request: retried, never "the same 4xx"
        _, stats = generate_responses(
            rows, teacher(served(server.url, stop_after_failures=2)), checkpoint_dir=tmp_path / "a"
        )
        assert (stats.stopped, stats.failures, server.requests - server.probes) == (None, 12, 12)
        server.mode = "refuse"
        _, stats = generate_responses(
            rows, teacher(served(server.url, stop_after_failures=0)), checkpoint_dir=tmp_path / "b"
        )
        assert (stats.stopped, stats.failures, server.requests - server.probes) == (None, 12, 24)


# ----------------------------------------------------------------------------------------------------
# Through `persyn run`: the summary and the card say what was folded and what was stopped


def persyn(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", "run", str(recipe), *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=1200,
    )


@pytest.mark.slow
def test_persyn_run_records_folds_and_stops_and_retry_failed_recovers(gemma_like, tmp_path):
    run_dir = tmp_path / "run"
    with (
        ScriptedChatServer("refuse_system") as folding,
        ScriptedChatServer("refuse", message="model 'breaking' is not loaded") as breaking,
    ):
        breaking.answer_first = 1
        teachers = [
            local(gemma_like),
            served(folding.url, name="gemma-2-served"),
            served(breaking.url, name="breaking", max_concurrency=1, stop_after_failures=2),
        ]
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(recipe_values(teachers, run_dir)))
        first = persyn(recipe)
        assert first.returncode == 0, first.stderr[-4000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert set(summary["system_prompt_folded"]) == {"gemma-like", "gemma-2-served"}
        assert "System role not supported" in summary["system_prompt_folded"]["gemma-like"]["reason"]
        stopped = summary["stopped_teachers"]["breaking"]
        assert (
            stopped["reason"] == "HTTP 400: model 'breaking' is not loaded" and stopped["rows_not_sent"] > 0
        )
        assert "STOPPED breaking" in first.stdout
        card = (run_dir / "artifacts" / "dataset" / "README.md").read_text()
        assert "## System prompt folded" in card and "## Stopped teachers" in card and "`breaking`" in card
        # 2 refused (stop_after_failures), at most 1 more in flight; the rest, routed prompts included, not sent
        assert breaking.requests - breaking.probes <= 2 + 1

        breaking.mode = "answer"
        second = persyn(recipe, "--retry-failed")
        assert second.returncode == 0, second.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_teachers"] == {}
    assert not {"HTTP 400", "teacher stopped"} & set(summary["failures"]["failed_reasons"])
    assert set(summary["system_prompt_folded"]) == {"gemma-like", "gemma-2-served"}
