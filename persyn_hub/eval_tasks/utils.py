"""lm-eval hooks for the persyn tasks: data loaders (`custom_dataset`) and scoring (`process_results`).

Scoring reuses the pipeline's verifiers, so "correct" means the same thing when labeling teachers
and when evaluating students: math-verify for final answers, if-verifiable for instructions.
"""

from __future__ import annotations

from typing import Any

from persyn_hub.eval_tasks.heldout import as_test_split, asdiv_heldout, ifbench_heldout
from persyn_hub.eval_tasks.task_mix import task_mix_heldout
from persyn_hub.procedural import score_procedural
from persyn_hub.verifiers.instructions import check_instructions
from persyn_hub.verifiers.math_answer import check_math_answer


def load_asdiv(**kwargs: Any):
    return as_test_split(asdiv_heldout())


def load_ifbench(**kwargs: Any):
    return as_test_split(ifbench_heldout())


def load_taskmix(**kwargs: Any):
    return as_test_split(task_mix_heldout())


def process_taskmix(doc: dict, results: list[str]) -> dict[str, float]:

    score, _ = score_procedural(results[0], doc["question"], doc["answer"], doc["metadata"])
    return {"exact_match": 1.0 if score is not None and score >= 1.0 else 0.0}


def process_asdiv(doc: dict, results: list[str]) -> dict[str, float]:

    verdict = check_math_answer(results[0], doc["answer"])
    return {"exact_match": 1.0 if verdict.correct else 0.0}


def process_ifbench(doc: dict, results: list[str]) -> dict[str, Any]:

    verdict = check_instructions(results[0], doc["instruction_id_list"], doc["kwargs"], doc["prompt"])
    checked = [True] * len(verdict.passed) + [False] * len(verdict.failed)
    return {
        "prompt_level_strict_acc": float(bool(checked) and all(checked)),
        "inst_level_strict_acc": checked,
    }


def agg_inst_level_acc(items: list[list[bool]]) -> float:
    flat = [item for sublist in items for item in sublist]
    return sum(flat) / len(flat) if flat else 0.0
