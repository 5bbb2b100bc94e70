"""Start from answers people already have: a Magpie-Zoo-shaped parallel-response pool, wide and long.

The pool is built here from bundled prompts (ASDiv, IFBench) and a bundled model's real answers, in the
exact shape of Magpie-Align/Magpie-100K-Generator-Zoo: one column per model, each cell a dict with the
response `content` and three precomputed reward scores. `persyn run` then labels, trains the router and
publishes the routed set without a single teacher generation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, load_from_disk

ROOT = Path(__file__).parents[1]
SCORES = ("Skywork-Reward-Llama-3.1-8B", "Skywork-Reward-Gemma-2-27B", "ArmoRM-Llama3-8B-v0.1")
ZOO = ("Qwen2.5-3B-Instruct", "gemma-2-2b-it", "Meta-Llama-3-8B-Instruct")
MISSING = {3, 11, 19}  # prompts whose Meta-Llama-3-8B-Instruct cell is missing


@pytest.fixture(scope="module")
def answers(smollm2_path):
    """24 ASDiv prompts, the bundled SmolLM2's greedy answers to them, and the gold answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persyn_hub.data import load_prompts
    from persyn_hub.recipe.config import PromptsConfig

    prompts = load_prompts(
        PromptsConfig(source="bundled:asdiv", num_prompts=24, drop_duplicates=True), seed=3
    )
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q + " End with: The answer is <number>."}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in prompts["prompt"]
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    generated = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return prompts["prompt"], [g.strip() or "I am not sure." for g in generated], prompts["answer"]


def zoo_rows(answers) -> list[dict]:
    """Magpie-Zoo rows: `instruction` + one dict cell per model (`content` and three scores)."""
    from persyn_hub.verifiers.math_answer import check_math_answer

    questions, smol, golds = answers
    rows = []
    for i, (question, own, gold) in enumerate(zip(questions, smol, golds)):
        numbers = gold.split()[0]
        contents = {
            "Qwen2.5-3B-Instruct": f"The answer is {numbers}.",
            "gemma-2-2b-it": own,
            "Meta-Llama-3-8B-Instruct": f"Let me see. {own} So the answer is {numbers}.",
        }
        row = {"uuid": f"zoo-{i}", "instruction": question, "gold": gold}
        for model, content in contents.items():
            right = bool(check_math_answer(content, gold).correct)
            cell = {"content": content}
            for k, key in enumerate(SCORES):  # reward-model-like: right answers score higher, per model
                cell[key] = (4.0 if right else -2.0) + 0.1 * k - 0.01 * len(content) / 10
            row[model] = None if (model == "Meta-Llama-3-8B-Instruct" and i in MISSING) else cell
        rows.append(row)
    return rows


def recipe(tmp_path: Path, source: Path, pool: dict, **extra) -> Path:
    values = {
        "name": "zoo",
        "recipe_version": 2,
        "prompts": {
            "source": str(source),
            "prompt_column": "instruction",
            "id_column": "uuid",
            "pool": pool,
            "shuffle": False,
        },
        "student": {"model": "bundled:smollm2-135m-instruct", "dtype": "float32", "max_length": 256},
        "teachers": [{"name": name} for name in ZOO],
        "quality": {"kind": "column", "column": "Skywork-Reward-Llama-3.1-8B"},
        "labeling": {"num_prompts": 16, "alpha": 0.4},
        "router": {"backbone": "bundled:minilm-l6-v2", "max_length": 64, "num_train_epochs": 3},
        "output": {"dir": str(tmp_path / "run")},
        **extra,
    }
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def persyn_run(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", "run", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )


@pytest.fixture(scope="module")
def wide_run(answers, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("zoo-wide")
    source = tmp_path / "magpie_zoo.parquet"
    Dataset.from_list(zoo_rows(answers)).to_parquet(str(source))
    result = persyn_run(recipe(tmp_path, source, {"format": "wide", "response_key": "content"}))
    assert result.returncode == 0, result.stderr[-4000:]
    return tmp_path / "run", result


@pytest.mark.slow
def test_a_magpie_zoo_pool_is_labeled_routed_and_published_with_no_generation(wide_run):
    run_dir, result = wide_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generations_made"] == 0 and summary["requests_this_run"] == 0
    assert summary["generations_generate_then_select"] == 0  # no teacher here generates at all
    for teacher, phases in summary["generation"].items():
        assert all(phase["requests"] == 0 for phase in phases), teacher
    labels = load_from_disk(str(run_dir / "artifacts" / "labels"))
    assert len(labels) == 16 * 3 and set(labels["teacher"]) == set(ZOO)
    # lean labeled rows: each holds its own answer, not every pool teacher's cell beside it
    assert not set(ZOO) & set(labels.column_names), labels.column_names
    assert all(
        detail.startswith("pool score Skywork-Reward-Llama-3.1-8B") or error
        for detail, error in zip(labels["quality_detail"], labels["error"])
    )
    # a missing cell is an unusable answer with a reason, never a zero
    missing = [
        r
        for r in labels
        if r["teacher"] == "Meta-Llama-3-8B-Instruct" and r["prompt_id"] in {f"zoo-{i}" for i in MISSING}
    ]
    assert missing and all(r["quality"] is None and "pool: missing cell" in r["error"] for r in missing)
    assert all(r["excluded"] == "no usable answer" for r in missing)
    router = summary["router"]
    assert router["split_sizes"]["test"] >= 1 and 0.0 <= router["reward_recovered"] <= 1.0
    final = load_from_disk(str(run_dir / "artifacts" / "dataset"))
    assert summary["routed_prompts"] == 24 - 16
    assert len(final) + summary["failures"]["generation"] == 24  # routed prompts were assembled from the pool
    for row in final:
        assert row["messages"][-1]["content"] and row["teacher"] in ZOO
    from persyn_hub.router import load_router

    load_router(str(run_dir / "artifacts" / "router"), expected_teachers=list(ZOO))


@pytest.mark.slow
def test_the_same_pool_in_long_format_gives_the_same_data_set(answers, wide_run, tmp_path):
    long_rows = []
    for row in zoo_rows(answers):
        for model in ZOO:
            if row[model] is not None:  # a missing cell is simply an absent row in long format
                long_rows.append(
                    {"uuid": row["uuid"], "instruction": row["instruction"], "model": model, "output": row[model]["content"],
                     **{key: row[model][key] for key in SCORES}}
                )  # fmt: skip
    source = tmp_path / "pool.jsonl"
    Dataset.from_list(long_rows).to_json(str(source))
    pool = {
        "format": "long",
        "teacher_column": "model",
        "response_column": "output",
        "score_columns": list(SCORES),
    }
    result = persyn_run(recipe(tmp_path, source, pool))
    assert result.returncode == 0, result.stderr[-4000:]
    long_final = load_from_disk(str(tmp_path / "run" / "artifacts" / "dataset"))
    wide_final = load_from_disk(str(wide_run[0] / "artifacts" / "dataset"))
    columns = ["prompt_id", "messages", "teacher"]
    assert long_final.select_columns(columns).to_list() == wide_final.select_columns(columns).to_list()
    labels = load_from_disk(str(tmp_path / "run" / "artifacts" / "labels"))
    assert sum(1 for e in labels["error"] if e and "missing cell" in e) == len(MISSING & set(range(16)))


@pytest.mark.slow
def test_a_mixed_pool_scores_each_row_with_its_own_checker(tmp_path):
    """ASDiv rows (gold answers) and IFBench rows (instruction checks) in one run, quality chosen per row."""
    from persyn_hub.bundled import bundled_data_file
    from persyn_hub.data import load_prompts
    from persyn_hub.recipe.config import PromptsConfig

    asdiv = load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=6, drop_duplicates=True), seed=1)
    from persyn_hub.eval_tasks.heldout import is_heldout
    from persyn_hub.verifiers.instructions import check_instructions

    ifbench = []
    for line in bundled_data_file("bundled:ifbench").read_text().splitlines():
        row = json.loads(line)
        probe = check_instructions("a probe", row["instruction_id_list"], row["kwargs"], row["prompt"])
        if not probe.skipped and not is_heldout(row["prompt"]):  # checkable here, not an eval item
            ifbench.append(row)
        if len(ifbench) == 6:
            break
    rows = []
    for question, gold in zip(asdiv["prompt"], asdiv["answer"]):
        number = gold.split()[0]
        rows.append({"id": f"m{len(rows)}", "prompt": question, "answer": gold, "instruction_id_list": None, "kwargs": None,
                     "right": {"content": f"The answer is {number}."}, "wrong": {"content": "The answer is 123456."}})  # fmt: skip
    for row in ifbench:
        rows.append({"id": row["key"], "prompt": row["prompt"], "answer": None, "instruction_id_list": row["instruction_id_list"],
                     "kwargs": row["kwargs"], "right": {"content": "Here is my reply. " * 30}, "wrong": {"content": ""}})  # fmt: skip
    source = tmp_path / "mixed.jsonl"
    Dataset.from_list(rows).to_json(str(source))
    path = recipe(
        tmp_path,
        source,
        {"format": "wide"},
        quality={"kind": "auto"},
        teachers=[{"name": "right"}, {"name": "wrong"}],
        labeling={"num_prompts": 12},
        prompts={
            "source": str(source), "id_column": "id", "answer_column": "answer", "pool": {"format": "wide"},
            "keep_columns": ["instruction_id_list", "kwargs"], "shuffle": False,
        },
        router={"backbone": "bundled:minilm-l6-v2", "max_length": 64, "num_train_epochs": 2, "validation_fraction": 0.25, "test_fraction": 0.25},
    )  # fmt: skip
    result = persyn_run(path)
    assert result.returncode == 0, result.stderr[-4000:]
    labels = load_from_disk(str(tmp_path / "run" / "artifacts" / "labels"))
    kinds = {}
    for prompt_id, detail in zip(labels["prompt_id"], labels["quality_detail"]):
        kinds.setdefault(prompt_id, set()).add(
            detail.split("]")[0] + "]" if detail.startswith("[") else detail
        )
    for prompt_id, seen in kinds.items():
        expected = "[math_answer]" if prompt_id.startswith("m") else "[instruction_following]"
        assert seen <= {expected, "no response"} | {d for d in seen if "generation failed" in d}, (
            prompt_id,
            seen,
        )
        assert expected in seen or any("generation failed" in d for d in seen)
    math_rows = [r for r in labels if r["prompt_id"].startswith("m")]
    assert {r["teacher"]: r["quality"] for r in math_rows if r["prompt_id"] == "m0"} == {
        "right": 1.0,
        "wrong": 0.0,
    }
    instruction_rows = [r for r in labels if not r["prompt_id"].startswith("m") and r["teacher"] == "wrong"]
    assert all(
        r["error"] and "empty answer" in r["error"] for r in instruction_rows
    )  # an empty cell is not a zero
