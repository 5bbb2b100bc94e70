"""Endpoint generation against a REAL llama.cpp server on 127.0.0.1 (bundled GGUFs), with a fault proxy.

Run: `pytest -m server tests/test_generation_endpoint.py` (needs `bash scripts/install-llama-server.sh`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from datasets import Dataset

from persyn_hub.bundled import bundled_gguf_path
from persyn_hub.generation.checkpoint import GenerationCheckpoint
from persyn_hub.generation.endpoint.generate import generate_with_endpoints
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.recipe.config import FewShotExample, GenerationConfig, TeacherConfig

sys.path.insert(0, str(Path(__file__).parent))
from servers import FaultProxy, LlamaServer, free_port, llama_cpp_available  # noqa: E402

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not llama_cpp_available(),
        reason="llama_cpp is not importable: `bash scripts/install-llama-server.sh` to run the real-server tests",
    ),
]

ROWS = 8
MAX_TOKENS = 16


@pytest.fixture(scope="session")
def smollm_server():
    with LlamaServer(bundled_gguf_path("bundled:smollm2-135m-instruct")) as server:
        yield server


@pytest.fixture(scope="session")
def gemma_server():
    with LlamaServer(bundled_gguf_path("bundled:gemma-3-270m")) as server:
        yield server


@pytest.fixture(scope="session")
def session_proxy(smollm_server):
    with FaultProxy(smollm_server.url, retry_after=1.0, hang_seconds=20.0) as proxy:
        yield proxy


@pytest.fixture
def proxy(session_proxy):
    session_proxy.reset()
    yield session_proxy
    session_proxy.reset()


@pytest.fixture(scope="session")
def prompts(asdiv_prompts) -> Dataset:
    return asdiv_prompts.select(range(ROWS))


def teacher_for(*endpoints: str, **overrides) -> TeacherConfig:
    values = {
        "name": "served",
        "endpoints": list(endpoints),
        "generation": GenerationConfig(max_new_tokens=MAX_TOKENS),
        "max_concurrency": 2,
        "timeout": 60.0,
        "max_retries": 3,
        "retry_backoff": 0.05,
    }
    values.update(overrides)
    return TeacherConfig(**values)


def generate(dataset: Dataset, teacher: TeacherConfig, directory: Path) -> tuple[Dataset, GenerationStats]:
    stats = GenerationStats(teacher=teacher.name)
    with GenerationCheckpoint(directory) as checkpoint:
        result = generate_with_endpoints(dataset, teacher, checkpoint=checkpoint, stats=stats)
    return result, stats


@pytest.fixture(scope="session")
def reference(smollm_server, prompts, tmp_path_factory) -> Dataset:
    """An uninterrupted run straight against the server: what every faulty run must end up equal to."""
    result, _ = generate(prompts, teacher_for(smollm_server.url), tmp_path_factory.mktemp("reference"))
    return result


def responses(dataset: Dataset) -> dict[str, str]:
    return dict(zip(dataset["prompt_id"], dataset["response"]))


def test_chat_teacher_answers_every_row_in_order_and_resumes(smollm_server, prompts, tmp_path, capfd):
    from datasets.utils import are_progress_bars_disabled
    from huggingface_hub import InferenceClient

    teacher = teacher_for(smollm_server.url + "/v1/")  # both URL forms are accepted
    result, stats = generate(prompts, teacher, tmp_path)
    # one live bar counting rows (not datasets' per-map-batch bar), and datasets' bars are back on after
    bar = [line for line in capfd.readouterr().err.split("\r") if line.startswith("Generating with served")]
    assert bar and f"{ROWS}/{ROWS}" in bar[-1] and ("row/s" in bar[-1] or "s/row" in bar[-1])
    assert not any("examples/s" in line for line in bar) and not are_progress_bars_disabled()

    assert result["prompt_id"] == prompts["prompt_id"]
    assert result["messages"] == prompts["messages"]
    assert set(result["teacher"]) == {"served"}
    assert result["error"] == [None] * ROWS
    assert all(text and text.strip() == text for text in result["response"])
    assert all(0 < n <= MAX_TOKENS for n in result["num_tokens"])
    assert all(n > 10 for n in result["num_prompt_tokens"])
    assert set(result["finish_reason"]) <= {"stop", "length"}
    assert (stats.requests, stats.retries, stats.reused, stats.failures) == (ROWS, 0, 0, 0)
    assert stats.completion_tokens == sum(result["num_tokens"])
    assert stats.prompt_tokens == sum(result["num_prompt_tokens"])

    # The stage's text is the server's greedy answer, as a plain client gets it.
    direct = InferenceClient(base_url=smollm_server.url + "/v1").chat_completion(
        messages=prompts[0]["messages"], max_tokens=MAX_TOKENS, temperature=0.0
    )
    assert result[0]["response"] == direct.choices[0].message.content.strip()

    again, stats_again = generate(prompts, teacher, tmp_path)
    assert (stats_again.requests, stats_again.reused) == (0, ROWS)
    assert again.to_dict() == result.to_dict()


def test_completion_teacher_uses_v1_completions_on_a_base_model(gemma_server, prompts, tmp_path):
    teacher = teacher_for(
        gemma_server.url,
        prompt_format="completion",
        few_shot=[FewShotExample(prompt="Tom has 2 apples and buys 3 more. How many apples?", response="5")],
        generation=GenerationConfig(max_new_tokens=8),
    )
    subset = prompts.select(range(3))
    result, stats = generate(subset, teacher, tmp_path)
    assert result["error"] == [None] * 3, result["error"]
    assert all(result["response"])
    assert all("\n\n" not in text for text in result["response"])  # cut at the few-shot separator
    assert all(0 < n <= 8 for n in result["num_tokens"])
    assert stats.requests == 3 and stats.prompt_tokens > 3 * 20  # the few-shot prompt was sent


def test_rows_are_spread_over_several_endpoints(smollm_server, proxy, prompts, reference, tmp_path):
    teacher = teacher_for(smollm_server.url, proxy.url, max_concurrency=1)
    result, stats = generate(prompts, teacher, tmp_path)
    assert responses(result) == responses(reference)
    through_proxy = sum(proxy.requests.values())
    assert 0 < through_proxy < ROWS, f"{through_proxy} of {ROWS} rows went through the second endpoint"
    assert stats.requests == ROWS


def test_a_dead_endpoint_among_live_ones_costs_retries_not_rows(smollm_server, prompts, reference, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    teacher = teacher_for(dead, smollm_server.url, max_retries=4, retry_backoff=0.2)
    result, stats = generate(prompts, teacher, tmp_path)
    assert result["error"] == [None] * ROWS
    assert responses(result) == responses(reference)
    assert stats.retries > 0


def test_transient_faults_are_retried_and_retry_after_honoured(proxy, prompts, reference, tmp_path):
    texts = [messages[-1]["content"] for messages in prompts["messages"]]
    faults = ["429", "500", "503", "drop", "malformed", "hang"]
    proxy.plan = {text: [fault] for text, fault in zip(texts, faults)}
    started = time.monotonic()
    result, stats = generate(prompts, teacher_for(proxy.url, timeout=4.0), tmp_path)

    assert result["error"] == [None] * ROWS
    assert responses(result) == responses(reference)
    assert stats.retries == len(faults) and stats.requests == ROWS
    assert dict(proxy.injected) == {fault: 1 for fault in faults}
    # "malformed" forwards, then cuts the answer: that prompt reached the server twice, the others once
    assert [proxy.successes[text] for text in texts] == [1, 1, 1, 1, 2, 1, 1, 1]
    for text in texts[:3:2]:  # 429 and 503 said Retry-After: 1
        first, second = proxy.request_times[text][:2]
        assert second - first >= 0.95
    assert time.monotonic() - started < 20  # the hang was cut by the 4 s timeout, not the 20 s hang


def test_persistent_faults_become_row_errors_and_a_rerun_retries_only_them(
    proxy, prompts, reference, tmp_path
):
    texts = [messages[-1]["content"] for messages in prompts["messages"]]
    proxy.plan = {texts[0]: ["500"] * 10, texts[1]: ["malformed"] * 10, texts[2]: ["empty"]}
    teacher = teacher_for(proxy.url, max_retries=2)
    result, stats = generate(prompts, teacher, tmp_path)

    errors = result["error"]
    assert errors[0].startswith(f"HTTP 500: {proxy.url}") and "after 3 attempts" in errors[0]
    assert "injected" in errors[0]  # the raw server output is kept
    assert errors[1].startswith("malformed response") and "raw output: '{" in errors[1]
    assert errors[2].startswith("empty completion")
    assert errors[3:] == [None] * (ROWS - 3)
    assert result["response"][:3] == [None] * 3
    assert proxy.requests[texts[0]] == 3 and proxy.requests[texts[1]] == 3
    assert proxy.requests[texts[2]] == 1  # an empty greedy answer is not retried: it would repeat
    assert stats.failures == 3
    assert stats.failure_reasons["HTTP 500"] == 1  # reasons are grouped by their tag

    proxy.reset()
    rerun, rerun_stats = generate(prompts, teacher, tmp_path)
    assert set(proxy.requests) == set(texts[:3])
    assert (rerun_stats.requests, rerun_stats.reused) == (3, ROWS - 3)
    assert rerun["error"] == [None] * ROWS
    assert responses(rerun) == responses(reference)


def test_malformed_prompts_fail_per_row_while_the_others_are_generated(smollm_server, tmp_path):
    good = [{"role": "user", "content": "What is the capital of France?"}]
    rows = {
        "prompt_id": ["empty-list", "ends-with-assistant", "blank", "too-long", "good"],
        "messages": [
            [],
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            [{"role": "user", "content": "   "}],
            [{"role": "user", "content": "apple " * 4000}],
            good,
        ],
    }
    result, stats = generate(Dataset.from_dict(rows), teacher_for(smollm_server.url), tmp_path)
    errors = dict(zip(result["prompt_id"], result["error"]))
    assert errors["empty-list"].startswith("malformed prompt: row 'empty-list': messages is empty")
    assert "must end with a user turn" in errors["ends-with-assistant"]
    assert "last user turn is empty" in errors["blank"]
    assert errors["too-long"].startswith("HTTP 400") and "context" in errors["too-long"].lower()
    assert errors["good"] is None and result["response"][-1]
    assert stats.failures == 4 and stats.requests == 2  # malformed prompts are never sent


def test_missing_columns_and_bad_urls_are_refused_before_any_request(tmp_path):
    with pytest.raises(ValueError, match=r"needs columns \['messages'\]"):
        generate(Dataset.from_dict({"prompt_id": ["a"]}), teacher_for("http://127.0.0.1:1"), tmp_path)
    with pytest.raises(ValueError, match="not an http"):
        generate(
            Dataset.from_dict({"prompt_id": ["a"], "messages": [[]]}), teacher_for("127.0.0.1:1"), tmp_path
        )


@pytest.mark.slow
def test_server_killed_mid_stage_then_resume_generates_each_row_once(prompts, reference, tmp_path):
    with (
        LlamaServer(bundled_gguf_path("bundled:smollm2-135m-instruct")) as server,
        FaultProxy(server.url) as proxy,
    ):
        teacher = teacher_for(proxy.url, max_retries=1, max_concurrency=1)
        holder: dict = {}
        thread = threading.Thread(
            target=lambda: holder.update(zip(("result", "stats"), generate(prompts, teacher, tmp_path)))
        )
        thread.start()
        while sum(proxy.successes.values()) < 3 and thread.is_alive():
            time.sleep(0.02)
        server.stop()  # the server dies in the middle of the stage
        thread.join(120)
        first = holder["result"]
        failed = [pid for pid, error in zip(first["prompt_id"], first["error"]) if error]
        assert 0 < len(failed) < ROWS
        assert all("HTTP 502" in error or "connection" in error for error in first["error"] if error)

        server.start()  # same port; a re-run picks up only the failed rows
        rerun, stats = generate(prompts, teacher, tmp_path)
        assert (stats.requests, stats.reused) == (len(failed), ROWS - len(failed))
        assert rerun["error"] == [None] * ROWS
        assert responses(rerun) == responses(reference)
        texts = [messages[-1]["content"] for messages in prompts["messages"]]
        assert [proxy.successes[text] for text in texts] == [1] * ROWS  # every row generated exactly once


CLIENT = textwrap.dedent(
    """
    import sys
    from datasets import load_from_disk
    from persyn_hub.recipe.config import GenerationConfig, TeacherConfig
    from persyn_hub.generation.checkpoint import GenerationCheckpoint
    from persyn_hub.generation.endpoint.generate import generate_with_endpoints
    from persyn_hub.generation.stats import GenerationStats
    teacher = TeacherConfig(name="served", endpoints=[sys.argv[1]], max_concurrency=1,
                            generation=GenerationConfig(max_new_tokens={max_tokens}))
    with GenerationCheckpoint(sys.argv[2]) as checkpoint:
        generate_with_endpoints(load_from_disk(sys.argv[3]), teacher, checkpoint=checkpoint,
                                stats=GenerationStats("served"))
    """
)


@pytest.mark.slow
def test_client_killed_mid_stage_resumes_without_duplicates(proxy, prompts, reference, tmp_path):
    prompts.save_to_disk(str(tmp_path / "prompts"))
    script = tmp_path / "client.py"
    script.write_text(CLIENT.format(max_tokens=MAX_TOKENS))
    checkpoint_dir = tmp_path / "checkpoint"
    child = subprocess.Popen(
        [sys.executable, str(script), proxy.url, str(checkpoint_dir), str(tmp_path / "prompts")],
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        deadline = time.monotonic() + 120
        while sum(proxy.successes.values()) < 3 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, "the client finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)  # no cleanup, no flush: a crash
    finally:
        child.wait(30)
    with GenerationCheckpoint(checkpoint_dir) as checkpoint:
        done = sum(checkpoint.done(pid) is not None for pid in prompts["prompt_id"])
    assert 0 < done < ROWS

    proxy.reset()
    result, stats = generate(prompts, teacher_for(proxy.url), checkpoint_dir)
    assert (stats.requests, stats.reused) == (ROWS - done, done)
    assert sum(proxy.requests.values()) == ROWS - done
    assert len(set(result["prompt_id"])) == ROWS and result["prompt_id"] == prompts["prompt_id"]
    assert responses(result) == responses(reference)


def test_the_hub_token_goes_to_hugging_face_hosts_only(monkeypatch):
    from persyn_hub.generation.auth import token_for

    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_tests")
    monkeypatch.delenv("PERSYN_HF_TOKEN_HOSTS", raising=False)
    assert token_for("https://abc123.us-east-1.aws.endpoints.huggingface.cloud") == "hf_secret_for_tests"
    assert token_for("https://router.huggingface.co/v1") == "hf_secret_for_tests"
    for url in ("http://127.0.0.1:8080", "https://tgi.some-lab.org", "https://huggingface.co.evil.com"):
        assert token_for(url) is None, url
    monkeypatch.setenv("PERSYN_HF_TOKEN_HOSTS", "tgi.some-lab.org")
    assert token_for("https://tgi.some-lab.org") == "hf_secret_for_tests"


def test_a_non_hugging_face_endpoint_never_receives_the_hub_token(proxy, prompts, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_tests")
    monkeypatch.delenv("PERSYN_HF_TOKEN_HOSTS", raising=False)
    for prompt_format in ("chat", "completion"):
        teacher = teacher_for(proxy.url, prompt_format=prompt_format)
        result, _ = generate(prompts.select(range(2)), teacher, tmp_path / prompt_format)
        assert result["error"] == [None, None]
    assert proxy.authorizations and not any("hf_secret_for_tests" in a for a in proxy.authorizations)
