"""The packaged lm-eval tasks run through lm-eval's own scoring path on real held-out data."""

from __future__ import annotations

import json

import pytest
from datasets import load_dataset
from lm_eval.api.model import LM

from persyn_hub.bundled import bundled_data_file
from persyn_hub.compare.evaluation import evaluate_model, task_manager
from persyn_hub.eval_tasks.heldout import asdiv_heldout, ifbench_heldout, is_heldout
from persyn_hub.eval_tasks.items import drop_eval_items
from persyn_hub.verifiers.math_answer import gold_number


class ScriptedLM(LM):
    """An lm-eval model whose generations come from a function of the document (no network, no weights)."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.seen: list[dict] = []

    def generate_until(self, requests):
        self.seen.extend(r.doc for r in requests)
        return [self.answer(r.doc) for r in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def score(report, task, metric):
    (row,) = [r for r in report["scores"] if r["task"] == task and r["metric"] == metric]
    return row["value"]


def test_heldout_split_is_deterministic_and_disjoint_from_training_filter():
    data = asdiv_heldout()
    assert 150 < len(data) < 300 and all(is_heldout(t) for t in data["prompt"])
    assert all(gold_number(a) is not None for a in data["answer"])
    raw = load_dataset("json", data_files=str(bundled_data_file("bundled:asdiv")), split="train")
    raw = raw.map(lambda row: {"prompt": f"{row['passage']} {row['question']}"})
    kept = drop_eval_items(raw)
    held = set(data["prompt"])
    assert held and not held & set(kept["prompt"])
    assert len(kept) == len(raw) - sum(p in held for p in raw["prompt"])  # only the items are left out
    assert len(ifbench_heldout()) >= 10
    assert {"persyn_asdiv", "persyn_ifbench"} <= set(task_manager(include_defaults=False).all_tasks)


def test_asdiv_task_scores_right_and_empty_answers_apart(tmp_path):
    right = ScriptedLM(lambda doc: f"Let me think. The answer is {gold_number(doc['answer'])}.")
    wrong = ScriptedLM(lambda doc: f"The answer is {float(gold_number(doc['answer'])) + 7}.")
    empty = ScriptedLM(lambda doc: "")
    good = evaluate_model(right, ["persyn_asdiv"], limit=12, apply_chat_template=False, output_dir=tmp_path)
    assert len(right.seen) == 12 and all(is_heldout(d["prompt"]) for d in right.seen)
    assert score(good, "persyn_asdiv", "exact_match") == 1.0
    for model in (wrong, empty):
        bad = evaluate_model(model, ["persyn_asdiv"], limit=12, apply_chat_template=False)
        assert score(bad, "persyn_asdiv", "exact_match") == 0.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["scores"][0]["value"] == 1.0
    assert "| persyn_asdiv | exact_match |" in (tmp_path / "results.md").read_text()


def test_ifbench_task_runs_the_instruction_checkers():
    empty = evaluate_model(ScriptedLM(lambda doc: ""), ["persyn_ifbench"], limit=6, apply_chat_template=False)
    assert score(empty, "persyn_ifbench", "prompt_level_strict_acc") == 0.0
    assert score(empty, "persyn_ifbench", "inst_level_strict_acc") == 0.0
    echo = evaluate_model(
        ScriptedLM(lambda doc: doc["prompt"]), ["persyn_ifbench"], limit=6, apply_chat_template=False
    )
    assert 0.0 <= score(echo, "persyn_ifbench", "inst_level_strict_acc") <= 1.0


@pytest.mark.slow
def test_real_student_through_hf_backend(smollm2_path, tmp_path):
    report = evaluate_model(
        smollm2_path,
        ["persyn_asdiv"],
        limit=4,
        max_gen_toks=48,
        batch_size=4,
        device="cpu",
        system_instruction="Solve the math word problem. Think briefly, then end with: The answer is <number>.",
        output_dir=tmp_path,
    )
    value = score(report, "persyn_asdiv", "exact_match")
    assert 0.0 <= value <= 1.0 and report["n_samples"]["persyn_asdiv"]["effective"] == 4


def test_taskmix_task_scores_with_each_tasks_own_checker_and_keeps_every_type(tmp_path):
    from persyn_hub.eval_tasks.task_mix import task_mix_heldout

    items = task_mix_heldout()
    assert len(items) == 200 and all(is_heldout(q) for q in items["question"])
    assert len(set(items["task"][:8])) == 8  # interleaved: a `limit` keeps every task type
    right = ScriptedLM(lambda doc: f"So the answer is {doc['answer']}.")
    report = evaluate_model(right, ["persyn_taskmix"], limit=16, apply_chat_template=False, per_item=True)
    assert score(report, "persyn_taskmix", "exact_match") == 1.0
    assert report["items"]["persyn_taskmix"]["exact_match"] == [1.0] * 16  # per item, for the bootstrap
    assert {d["task"] for d in right.seen} == set(items["task"])
    wrong = evaluate_model(
        ScriptedLM(lambda doc: "The answer is 123456789."),
        ["persyn_taskmix"],
        limit=16,
        apply_chat_template=False,
    )
    assert score(wrong, "persyn_taskmix", "exact_match") == 0.0


def test_the_default_recipe_generates_the_task_mix_the_eval_task_holds_out():
    from persyn_hub.eval_tasks.task_mix import TASK_MIX
    from persyn_hub.recipe.config import load_recipe

    recipe = load_recipe("recipes/demo/task-mix-smollm2.yaml")
    assert recipe.prompts.tasks == TASK_MIX and recipe.prompts.drop_eval_items
