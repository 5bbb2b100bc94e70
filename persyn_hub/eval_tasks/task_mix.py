"""The default recipe's task mix, and its held-out evaluation items (the `persyn_taskmix` lm-eval task).

Eval items come from the same reasoning-gym generators as the recipe's prompts, with another seed, and
only items whose text is held out by `heldout.is_heldout` are kept. `persyn run` drops held-out texts
from its prompts (`prompts.drop_eval_items`), so no evaluation item can ever be a training prompt, in
this recipe or in any other recipe generating the same tasks.
"""

from __future__ import annotations

import functools

from datasets import Dataset

from persyn_hub.eval_tasks.heldout import is_heldout
from persyn_hub.procedural import generate_tasks
from persyn_hub.recipe.config import ProceduralTask

TASK_MIX = [
    ProceduralTask(
        "basic_arithmetic",
        50,
        {
            "min_terms": 2,
            "max_terms": 2,
            "min_digits": 1,
            "max_digits": 2,
            "operators": ["+", "-"],
            "allow_parentheses": False,
            "allow_negation": False,
        },
        label="addition",
    ),
    ProceduralTask("products", 50, {"min_digits": 1, "max_digits": 2}, label="multiplication"),
    ProceduralTask("chain_sum", 50, {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 2}),
    ProceduralTask("needle_haystack", 50, {"min_num_statements": 2, "max_num_statements": 3}),
    ProceduralTask(
        "number_format",
        50,
        {"min_num_candidates": 2, "max_num_candidates": 2, "min_n": 10, "max_n": 99, "max_delta": 50},
    ),
    ProceduralTask("letter_counting", 50, {"min_words": 2, "max_words": 4}),
    ProceduralTask("spell_backward", 50, {"min_word_len": 3, "max_word_len": 5}),
    ProceduralTask("gcd", 50, {"min_value": 1, "max_value": 30}),
]
"""Mirrors `recipes/demo/task-mix-smollm2.yaml` (a test checks they agree)."""

EVAL_SEED = 20261202
ITEMS_PER_TASK = 25


@functools.lru_cache(maxsize=4)
def task_mix_heldout(
    items_per_task: int = ITEMS_PER_TASK, tasks: tuple[ProceduralTask, ...] | None = None
) -> Dataset:
    """`question`, `answer`, `metadata`, `task`: `items_per_task` held-out items of each task type,
    interleaved (task 1, task 2, ..., task 1, ...) so lm-eval's `limit` keeps every type; generated in
    growing batches until each task has enough held-out texts."""

    parts: dict[str, list] = {"question": [], "answer": [], "metadata": [], "task": []}
    for index, task in enumerate(tasks or TASK_MIX):
        kept: list[int] = []
        size = items_per_task * 12
        for attempt in range(6):
            generated = generate_tasks(
                [ProceduralTask(task.name, size, task.config, task.label)], EVAL_SEED + 97 * index + attempt
            )
            seen = {q for group in parts["question"] for q in group}
            kept = [i for i, q in enumerate(generated["question"]) if is_heldout(q) and q not in seen]
            if len(kept) >= items_per_task:
                break
            size *= 2
        rows = generated.select(kept[:items_per_task])
        for column in parts:
            parts[column].append(rows[column])
    interleaved = {column: [v for group in zip(*lists) for v in group] for column, lists in parts.items()}
    return Dataset.from_dict(interleaved)
