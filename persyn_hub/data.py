"""Loading prompts: any source becomes one `Dataset` with `prompt_id`, `messages` and `prompt`.

Prompts are normalized once, here, so every later stage can rely on the same columns:
`prompt_id` (stable string), `messages` (chat list ending with the user turn), `prompt` (the last
user turn as text, for completion-style teachers and routers) and, when configured, `answer`.
All checks run before any model is loaded, and each error names the column or row and the fix.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset

from persyn_hub.errors import PromptDataError
from persyn_hub.eval_tasks.items import drop_eval_items
from persyn_hub.prompts.columns import apply_bundled_defaults, check_columns, check_prompt_column_has_text
from persyn_hub.prompts.duplicates import check_unique_ids
from persyn_hub.prompts.normalization import normalize_batch
from persyn_hub.prompts.pool import pivot_long_pool
from persyn_hub.prompts.source import read_source
from persyn_hub.recipe.config import PromptsConfig

logger = logging.getLogger(__name__)


def load_prompts(config: PromptsConfig, seed: int = 42, report: dict[str, Any] | None = None) -> Dataset:
    """Load, check and normalize the prompt source; shuffle with `seed`; keep `num_prompts` rows.

    Adds: `prompt_id`, `messages`, `prompt`, and `answer` when `answer_column` is set. Held-out
    evaluation items are left out unless `drop_eval_items` is false; `report` (when given) receives the
    counts: `source_rows`, `duplicates_dropped`, `eval_items_dropped`.
    Example: `load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=8))`.
    """
    report = {} if report is None else report
    config = apply_bundled_defaults(config)
    dataset = read_source(config, seed)
    if config.pool is not None and config.pool.format == "long":
        dataset = pivot_long_pool(dataset, config)
    if len(dataset) == 0:
        raise PromptDataError(
            f"prompts.source: {config.source!r} has no rows; point prompts.source at a data set with prompts."
        )
    check_columns(set(dataset.column_names), config)
    check_prompt_column_has_text(dataset, config)
    keep = set(config.keep_columns)
    remove = [c for c in dataset.column_names if c not in keep]
    dataset = dataset.map(
        normalize_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"config": config},
        remove_columns=remove,
        desc="Normalizing prompts",
    )
    report["source_rows"] = len(dataset)
    dataset = check_unique_ids(dataset, config)
    report["duplicates_dropped"] = report["source_rows"] - len(dataset)
    if config.drop_eval_items:
        before = len(dataset)
        dataset = drop_eval_items(dataset, "prompt")
        report["eval_items_dropped"] = before - len(dataset)
        if report["eval_items_dropped"]:
            logger.info(
                "prompts: left out %d held-out evaluation item(s) (prompts.drop_eval_items)",
                report["eval_items_dropped"],
            )
    if config.shuffle:
        dataset = dataset.shuffle(seed=seed)
    if config.num_prompts is not None:
        if config.num_prompts > len(dataset):
            raise PromptDataError(
                f"prompts.num_prompts: {config.num_prompts} asked, but the source has {len(dataset)} rows."
            )
        dataset = dataset.select(range(config.num_prompts))
    return dataset.flatten_indices()


__all__ = ["PromptDataError", "load_prompts"]
