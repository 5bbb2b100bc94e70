"""Loading prompts: any source becomes one `Dataset` with `prompt_id`, `messages` and `prompt`.

Prompts are normalized once, here, so every later stage can rely on the same columns:
`prompt_id` (stable string), `messages` (chat list ending with the user turn), `prompt` (the last
user turn as text, for completion-style teachers and routers) and, when configured, `answer`.
All checks run before any model is loaded, and each error names the column or row and the fix.
"""

from __future__ import annotations

import hashlib
import logging
import string
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset, load_dataset, load_from_disk

from persyn_hub.bundled import bundled_data, bundled_data_file, is_bundled
from persyn_hub.data_files import LOCAL_BUILDERS, check_data_file, load_local_file, row_lines
from persyn_hub.errors import PersynError
from persyn_hub.recipe.config import REASONING_GYM, PromptsConfig

logger = logging.getLogger(__name__)


class PromptDataError(PersynError, ValueError):
    """The prompt source does not have the shape the recipe says; the message names row/column."""


def _read_source(config: PromptsConfig, seed: int) -> Dataset:
    source = config.source
    if source == REASONING_GYM:
        from persyn_hub.procedural import generate_tasks

        return generate_tasks(config.tasks, seed)
    if is_bundled(source):
        return load_dataset("json", data_files=str(bundled_data_file(source)), split="train")
    path = Path(source)
    if path.is_dir() and (path / "dataset_info.json").is_file():
        return load_from_disk(str(path))
    if path.suffix in LOCAL_BUILDERS:
        if not path.is_file():
            raise PromptDataError(f"prompts.source: file {source!r} does not exist.")
        return _read_local_file(path)
    return load_dataset(source, config.subset, split=config.split, revision=config.revision)


def _read_local_file(path: Path) -> Dataset:
    """A local data file through `datasets`; an empty, blank, non-UTF-8 or malformed file is one error naming
    the file and its first bad line instead of a traceback (`data_files.load_local_file`)."""
    return load_local_file(path, "prompts.source", PromptDataError)


def _where(config: PromptsConfig, index: int) -> str:
    """`row 3 of 'x.jsonl' (line 5)`: a source row, with its line when the source is a local .jsonl file
    (a long pool's rows are pivoted, so only their index is named)."""
    return f"row {index} of {config.source!r}{_lines(config, [index])}"


def _lines(config: PromptsConfig, indices: list[int]) -> str:
    long_pool = config.pool is not None and config.pool.format == "long"
    return "" if long_pool else row_lines(config.source, indices)


def local_source_columns(config: PromptsConfig) -> set[str] | None:
    """The columns of a local prompt source, read without loading it (None: not a local source)."""
    path = Path(config.source)
    if path.is_dir() and (path / "dataset_info.json").is_file():
        return set(load_from_disk(str(path)).column_names)
    if path.suffix not in LOCAL_BUILDERS or not path.is_file():
        return None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        check_data_file(path, "prompts.source", PromptDataError)
        return set(pq.read_schema(path).names)
    return set(_read_local_file(path).column_names)


def check_local_source(config: PromptsConfig, pool_teachers: list[str]) -> None:
    """What `persyn validate` can see without loading a model: a local source has the recipe's columns,
    and every teacher that answers from the pool has answers there (`pool_teachers`: their columns, or
    for a long pool their names)."""
    columns = local_source_columns(config)
    if columns is None:
        return
    pool = config.pool
    if pool is not None and pool.format == "long":
        needed = [
            ("prompts.pool.teacher_column", pool.teacher_column),
            ("prompts.pool.response_column", pool.response_column),
        ]
        needed += [("prompts.pool.score_columns", name) for name in pool.score_columns]
        for key, column in needed:
            if column not in columns:
                raise PromptDataError(
                    f"{key}: column {column!r} is not in {config.source!r}; its columns are {sorted(columns)}."
                )
        present = set(map(str, _read_source(config, seed=0)[pool.teacher_column]))
        missing = [name for name in pool_teachers if name not in present]
        if missing:
            raise PromptDataError(
                f"teachers: {missing} answer from the pool, but {config.source!r} has no row with "
                f"{pool.teacher_column} = {missing[0]!r} (teachers there: {sorted(present)[:20]}). Set the "
                "teacher's pool_column to a name the pool has, or give it a model or endpoints."
            )
        columns = columns | set(pool_teachers)
    else:
        missing = [name for name in pool_teachers if name not in columns]
        if missing:
            raise PromptDataError(
                f"teachers: {missing} answer from the pool, but {config.source!r} has no such column (its "
                f"columns are {sorted(columns)}). Set the teacher's pool_column to one of them, or give it a "
                "model or endpoints."
            )
    check_columns(columns, apply_bundled_defaults(config))


def _hashable(value: Any) -> Any:
    """A cell as a dict key: chat lists and mappings by their JSON text."""
    if isinstance(value, (list, dict)):
        import json

        return json.dumps(value, sort_keys=True, default=str)
    return value


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _prompt_fields(config: PromptsConfig) -> list[str]:
    """The source columns a prompt's text is built from."""
    return _template_fields(config.prompt_template) if config.prompt_template else [config.prompt_column]


def pivot_long_pool(dataset: Dataset, config: PromptsConfig) -> Dataset:
    """A long answer pool (one row per prompt and teacher) -> one row per prompt, one column per teacher
    holding {response_key: answer, score columns...}; a teacher without a row for a prompt gets None."""
    pool = config.pool
    assert pool is not None
    key = config.id_column or config.prompt_column
    needed = [
        c
        for c in (key, pool.teacher_column, pool.response_column, *pool.score_columns)
        if c not in dataset.column_names
    ]
    if needed:
        raise PromptDataError(
            f"prompts.pool: the long pool lacks column(s) {needed} (it has {dataset.column_names}); set "
            "prompts.pool.teacher_column / response_column / score_columns (and prompts.prompt_column)."
        )
    records = dataset.to_list()
    teachers = sorted({str(r[pool.teacher_column]) for r in records if r[pool.teacher_column] is not None})
    answer_columns = (pool.teacher_column, pool.response_column, *pool.score_columns)
    # what a prompt's row says besides its key: the same on every teacher's row of that prompt
    said = [c for c in (*_prompt_fields(config), config.answer_column) if c and c != key]
    rows: dict[Any, dict[str, Any]] = {}
    first_row: dict[Any, int] = {}
    seen: dict[tuple[Any, str], int] = {}
    repeats = 0
    for index, record in enumerate(records):
        prompt, teacher = _hashable(record[key]), str(record[pool.teacher_column])
        if (prompt, teacher) in seen:
            earlier = seen[(prompt, teacher)]
            identical = records[earlier] == record
            if identical and config.drop_duplicates:
                repeats += 1
                continue
            where = (
                f"rows [{earlier}, {index}] of {config.source!r}{row_lines(config.source, [earlier, index])}"
            )
            if identical:
                raise PromptDataError(
                    f"prompts.pool: {where} repeat teacher {teacher!r}'s answer to prompt {_short(record[key])} "
                    "word for word; a long pool holds one row per (prompt, teacher): remove the repeat, or set "
                    "prompts.drop_duplicates: true to drop identical repeats."
                )
            differ = [c for c in record if records[earlier][c] != record[c]]
            raise PromptDataError(
                f"prompts.pool: {where} hold two different answers of teacher {teacher!r} to prompt "
                f"{_short(record[key])} (they differ in {differ}); a long pool holds one row per (prompt, teacher), "
                "and drop_duplicates drops only identical rows: remove the wrong one."
            )
        seen[(prompt, teacher)] = index
        if prompt in first_row:
            earlier = first_row[prompt]
            differ = [c for c in said if records[earlier][c] != record[c]]
            if differ:
                where = f"rows [{earlier}, {index}] of {config.source!r}{row_lines(config.source, [earlier, index])}"
                raise PromptDataError(
                    f"prompts.pool: {where} share {key} {_short(record[key])} but differ in column {differ[0]!r} "
                    f"({_short(records[earlier][differ[0]])} vs {_short(record[differ[0]])}); every teacher's row "
                    f"of a prompt repeats its {differ[0]}: fix the wrong row, or give the prompts distinct ids."
                )
        else:
            first_row[prompt] = index
        row = rows.setdefault(prompt, {c: v for c, v in record.items() if c not in answer_columns})
        row[teacher] = {
            pool.response_key: record[pool.response_column],
            **{c: record[c] for c in pool.score_columns},
        }
    if repeats:
        logger.info("prompts.pool: dropped %d identical repeated row(s) (drop_duplicates: true)", repeats)
    wide = [{**{t: None for t in teachers}, **row} for row in rows.values()]
    logger.info(
        "prompts.pool: pivoted %d long rows into %d prompts x %d teachers",
        len(records),
        len(wide),
        len(teachers),
    )
    return Dataset.from_list(wide)


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


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_columns(columns: set[str], config: PromptsConfig) -> None:
    """The recipe's prompt, id, answer and kept columns are among `columns` (one error per missing one)."""
    needed: list[tuple[str, str]] = []
    if config.prompt_template:
        needed += [("prompts.prompt_template", name) for name in _template_fields(config.prompt_template)]
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


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _row_messages(row: dict[str, Any], config: PromptsConfig, row_index: int) -> list[dict[str, str]]:
    if config.prompt_template:
        for name in _template_fields(config.prompt_template):
            if row[name] is None or isinstance(row[name], (list, dict)):
                raise PromptDataError(
                    f"{_where(config, row_index)}: column {name!r} (prompts.prompt_template) is "
                    f"{row[name]!r}, not text; fix the row or drop it."
                )
        value: Any = config.prompt_template.format(**row)
    else:
        value = row[config.prompt_column]
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = [{"role": str(m.get("role", "")), "content": m.get("content")} for m in value]
        for message in messages:
            if not isinstance(message["content"], str):
                raise PromptDataError(
                    f"{_where(config, row_index)}: a message's content is "
                    f"{type(message['content']).__name__}, not text; fix the row or drop it."
                )
        if messages[-1]["role"] != "user":
            raise PromptDataError(
                f"{_where(config, row_index)}: the chat must end with a user turn to be answered."
            )
    else:
        raise PromptDataError(
            f"{_where(config, row_index)}: prompt {value!r} is {type(value).__name__}; expected text or a chat "
            "list of {role, content} messages. Fix the row, or point prompts.prompt_column at a text column."
        )
    if not messages[-1]["content"].strip():
        raise PromptDataError(
            f"{_where(config, row_index)}: the prompt is empty or whitespace; remove the row."
        )
    if config.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": config.system_prompt}] + messages
    return messages


def _normalize_batch(batch: dict[str, list], indices: list[int], config: PromptsConfig) -> dict[str, list]:
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    out: dict[str, list] = {"prompt_id": [], "messages": [], "prompt": []}
    if config.answer_column:
        out["answer"] = []
    for row, index in zip(rows, indices):
        messages = _row_messages(row, config, index)
        text = messages[-1]["content"]
        if config.id_column:
            identifier = row[config.id_column]
            if identifier is None or str(identifier).strip() == "":
                raise PromptDataError(
                    f"{_where(config, index)}: prompts.id_column {config.id_column!r} is empty; give the row "
                    "an id or remove it."
                )
            identifier = str(identifier)
        else:
            identifier = prompt_hash("\x1e".join(m["role"] + "\x1f" + m["content"] for m in messages))
        out["prompt_id"].append(identifier)
        out["messages"].append(messages)
        out["prompt"].append(text)
        if config.answer_column:
            answer = row[config.answer_column]
            out["answer"].append(None if answer is None else str(answer))
    return out


PROVENANCE_COLUMNS = {REASONING_GYM: ("metadata",)}
"""Kept columns that say where a row came from, not what it says: two generated items with the same question
and answer differ only in `metadata` (their index among the generated items), and are repeats."""


def _content_columns(dataset: Dataset, config: PromptsConfig) -> list[str]:
    """What a normalized row says: its chat, gold answer, pool answers and kept columns."""
    skip = {"prompt_id", "prompt", *PROVENANCE_COLUMNS.get(config.source, ())}
    return [c for c in dataset.column_names if c not in skip]


def _column_label(column: str, config: PromptsConfig) -> str:
    if column == "messages":
        return "their prompt text"
    if column == "answer" and config.answer_column:
        return f"their answer (column {config.answer_column!r})"
    return f"column {column!r}"


def _describe_cell(column: str, value: Any) -> str:
    if column == "messages" and isinstance(value, list) and value:
        value = value[-1].get("content")
    return _short(value)


def _check_unique_ids(dataset: Dataset, config: PromptsConfig) -> Dataset:
    """Rows sharing a prompt id: identical repeats are dropped under `drop_duplicates` (else refused); rows
    that say different things under one id (another text, another answer) are refused either way."""
    ids = dataset.data.column("prompt_id")
    counts = pc.value_counts(ids)
    repeated = {item["values"].as_py() for item in counts if item["counts"].as_py() > 1}
    if not repeated:
        return dataset
    id_list = ids.to_pylist()
    groups: dict[str, list[int]] = {}
    for index, value in enumerate(id_list):
        if value in repeated:
            groups.setdefault(value, []).append(index)
    columns = _content_columns(dataset, config)
    involved = sorted(i for rows in groups.values() for i in rows)
    content = dict(zip(involved, dataset.select(involved).select_columns(columns).to_list()))
    what = f"id {{}} (column {config.id_column!r})" if config.id_column else "the same prompt text"
    conflicts = []
    for value, rows in groups.items():
        for other in rows[1:]:
            differ = [c for c in columns if content[rows[0]][c] != content[other][c]]
            if differ:
                conflicts.append((value, rows, other, differ[0]))
                break
    if conflicts:
        value, rows, other, column = conflicts[0]
        shown = rows[:8]
        fix = (
            "give each prompt its own id, or remove the wrong rows"
            if config.id_column
            else "remove the wrong rows, or fix their answers"
        )
        raise PromptDataError(
            f"prompts: rows {shown}{' and more' if len(rows) > 8 else ''} share "
            f"{what.format(repr(value))} in {config.source!r}{_lines(config, shown)} but differ in "
            f"{_column_label(column, config)}: row {rows[0]} has {_describe_cell(column, content[rows[0]][column])}, "
            f"row {other} {_describe_cell(column, content[other][column])}. {len(conflicts)} id(s) conflict; "
            f"prompts.drop_duplicates drops only identical rows: {fix}."
        )
    if config.drop_duplicates:
        first_rows = sorted({value: i for i, value in reversed(list(enumerate(id_list)))}.values())
        logger.info(
            "prompts: dropped %d identical repeated row(s) (drop_duplicates: true)",
            len(dataset) - len(first_rows),
        )
        return dataset.select(first_rows)
    first = next(iter(groups))
    rows = groups[first][:5]
    raise PromptDataError(
        f"prompts: rows {rows} share {what.format(repr(first))} in {config.source!r}"
        f"{_lines(config, rows)}; {len(repeated)} id(s) repeat. Deduplicate the source, "
        "or set prompts.drop_duplicates: true to keep the first of each"
        + ("." if config.id_column else ", or set prompts.id_column to a unique id column.")
    )


def _check_prompt_column_has_text(dataset: Dataset, config: PromptsConfig) -> None:
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


def load_prompts(config: PromptsConfig, seed: int = 42, report: dict[str, Any] | None = None) -> Dataset:
    """Load, check and normalize the prompt source; shuffle with `seed`; keep `num_prompts` rows.

    Adds: `prompt_id`, `messages`, `prompt`, and `answer` when `answer_column` is set. Held-out
    evaluation items are left out unless `drop_eval_items` is false; `report` (when given) receives the
    counts: `source_rows`, `duplicates_dropped`, `eval_items_dropped`.
    Example: `load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=8))`.
    """
    report = {} if report is None else report
    config = apply_bundled_defaults(config)
    dataset = _read_source(config, seed)
    if config.pool is not None and config.pool.format == "long":
        dataset = pivot_long_pool(dataset, config)
    if len(dataset) == 0:
        raise PromptDataError(
            f"prompts.source: {config.source!r} has no rows; point prompts.source at a data set with prompts."
        )
    check_columns(set(dataset.column_names), config)
    _check_prompt_column_has_text(dataset, config)
    keep = set(config.keep_columns)
    remove = [c for c in dataset.column_names if c not in keep]
    dataset = dataset.map(
        _normalize_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"config": config},
        remove_columns=remove,
        desc="Normalizing prompts",
    )
    report["source_rows"] = len(dataset)
    dataset = _check_unique_ids(dataset, config)
    report["duplicates_dropped"] = report["source_rows"] - len(dataset)
    if config.drop_eval_items:
        from persyn_hub.eval_tasks.items import drop_eval_items

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
