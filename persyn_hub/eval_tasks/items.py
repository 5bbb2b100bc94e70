"""The packaged evaluation tasks' items, as a set of prompt texts: what a run must never train on.

`persyn run` leaves these texts out of its prompts (`prompts.drop_eval_items`), and `persyn compare`
checks its training prompts against them, so `persyn sft` -> `persyn evaluate` never tests a student on
its own training data. Only the items themselves are left out: other texts of a source are kept.
"""

from __future__ import annotations

import functools

from datasets import Dataset

from persyn_hub.errors import require_columns
from persyn_hub.eval_tasks.heldout import asdiv_heldout, ifbench_heldout, normalize
from persyn_hub.eval_tasks.task_mix import task_mix_heldout


@functools.lru_cache(maxsize=1)
def eval_item_texts() -> frozenset[str]:
    """The normalized prompt texts of every packaged evaluation task's items (persyn_asdiv,
    persyn_ifbench, persyn_taskmix): what `persyn run` leaves out of its prompts by default."""

    texts = (
        set(asdiv_heldout()["prompt"])
        | set(ifbench_heldout()["prompt"])
        | set(task_mix_heldout()["question"])
    )
    return frozenset(normalize(text) for text in texts)


def drop_eval_items(dataset: Dataset, text_column: str = "prompt") -> Dataset:
    """Remove rows whose prompt text is an item of a packaged evaluation task (and only those)."""
    require_columns(dataset, (text_column,), reader="drop_eval_items")
    items = eval_item_texts()
    return dataset.filter(
        lambda batch: [normalize(t) not in items for t in batch[text_column]],
        batched=True,
        desc="Leaving out evaluation items",
    )


def is_eval_item(text: str) -> bool:
    return normalize(text) in eval_item_texts()
