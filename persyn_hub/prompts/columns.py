"""The recipe's prompt columns: bundled data sets' own columns, the fields of a prompt template, and the checks
that the source holds every column the recipe names.
"""

from __future__ import annotations

import string

import pyarrow.compute as pc
from datasets import Dataset

from persyn_hub.bundled import bundled_data, is_bundled
from persyn_hub.errors import PromptDataError
from persyn_hub.recipe.config import PromptsConfig


def apply_bundled_defaults(config: PromptsConfig) -> PromptsConfig:
    """Bundled data sets know their own columns; fill them in when the recipe left the defaults."""
    if not is_bundled(config.source):
        return config
    data = bundled_data(config.source)
    defaults = PromptsConfig()
    if config.prompt_column == defaults.prompt_column and config.prompt_template is None:
        if data.name == "asdiv":
            config.prompt_template = "{passage} {question}"
        else:
            config.prompt_column = data.prompt_column
    if config.answer_column is None and data.answer_column:
        config.answer_column = data.answer_column
    if config.id_column is None and data.id_column:
        config.id_column = data.id_column
    return config


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_columns(columns: set[str], config: PromptsConfig) -> None:
    """The recipe's prompt, id, answer and kept columns are among `columns` (one error per missing one)."""
    needed: list[tuple[str, str]] = []
    if config.prompt_template:
        needed += [("prompts.prompt_template", name) for name in template_fields(config.prompt_template)]
    else:
        needed.append(("prompts.prompt_column", config.prompt_column))
    if config.id_column:
        needed.append(("prompts.id_column", config.id_column))
    if config.answer_column:
        needed.append(("prompts.answer_column", config.answer_column))
    needed += [("prompts.keep_columns", name) for name in config.keep_columns]
    for key, column in needed:
        if column not in columns:
            raise PromptDataError(
                f"{key}: column {column!r} is not in {config.source!r}; its columns are "
                f"{sorted(columns)}. Set {key} to one of them."
            )


def prompt_fields(config: PromptsConfig) -> list[str]:
    """The source columns a prompt's text is built from."""
    return template_fields(config.prompt_template) if config.prompt_template else [config.prompt_column]


def check_prompt_column_has_text(dataset: Dataset, config: PromptsConfig) -> None:
    """A text prompt column that is empty in every row is the wrong column (or an empty export), named as such
    rather than as row 0's problem."""
    if config.prompt_template:
        return
    import pyarrow as pa

    column = dataset.with_format("arrow")[config.prompt_column]
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return  # not text (or null in every row): the first row names its value
    blank = pc.equal(pc.utf8_trim_whitespace(column), "")
    if (pc.sum(pc.or_kleene(pc.is_null(column), blank)).as_py() or 0) == len(dataset):
        raise PromptDataError(
            f"prompts.prompt_column: column {config.prompt_column!r} of {config.source!r} is empty in all "
            f"{len(dataset)} rows; point prompts.prompt_column at the column that holds the prompts (the "
            f"columns are {dataset.column_names}), or fill it."
        )
