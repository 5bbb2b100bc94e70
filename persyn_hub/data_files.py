"""Local data files the commands read (.jsonl/.json/.csv/.parquet): prompts, answer pools, label sets, SFT
data. A file that cannot give rows is one error naming the file, the line and the fix, never a traceback.

Checked before `datasets` opens the file (which would raise StopIteration on an empty file, or fail
while decoding a later row): an empty file, or one of blank lines only, has no rows; a text file must be
UTF-8 (the first bad line is named); a Parquet file must hold rows. A file `datasets` cannot parse names
its first malformed line. This module imports `datasets` only when it reads a file.
"""

from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path
from typing import Any

from persyn_hub.errors import PersynError

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""Local data-file suffixes and the `datasets` builder that reads each."""

FORMAT_HINTS = {
    ".jsonl": "one JSON object per line",
    ".json": "a JSON list of objects, or one JSON object per line",
    ".csv": "a header line, then one row per line",
    ".parquet": "a Parquet table",
}

EMPTY_AFTER_PARSING = {".csv": "only a header line", ".json": "an empty list"}
"""Why a file with text gives no rows, by format."""


class DataFileError(PersynError, ValueError):
    """A local data file cannot give rows: empty, not UTF-8, malformed; the message names file and line."""


def no_rows(field: str, path: Path, why: str, error: type[Exception] = DataFileError) -> Exception:
    return error(
        f"{field}: {str(path)!r} has no rows ({why}); add rows ({FORMAT_HINTS.get(path.suffix, 'data')}), "
        f"or point {field} at another file."
    )


def check_data_file(path: Path, field: str, error: type[Exception] = DataFileError) -> None:
    """An existing local data file holds rows `datasets` can decode, or one `error` naming `field`, the file
    and (for a text file that is not UTF-8) the line; reads the file once, in chunks."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise no_rows(field, path, "the file is empty", error)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - not Parquet at all: `datasets` names it when it reads the file
            return
        if rows == 0:
            raise no_rows(field, path, "the table has 0 rows", error)
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, text_seen = 1, False
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as bad:
                where = line + bytes(bad.object).count(b"\n", 0, bad.start)
                raise error(
                    f"{field}: {str(path)!r} line {where} is not UTF-8 text (byte "
                    f"{bytes(bad.object)[bad.start : bad.start + 1]!r}); save the file as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`."
                ) from None
            if not chunk:
                break
            line += chunk.count(b"\n")
            text_seen = text_seen or bool(text.replace("\ufeff", "").strip())
    if not text_seen:
        raise no_rows(field, path, "the file holds only blank lines", error)


def read_text(path: Path, field: str, error: type[Exception] = DataFileError) -> str:
    """A small text file (a recipe) as UTF-8, or one `error` naming `field`, the line and the fix."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        raise error(
            f"{field}: line {line} is not UTF-8 text (byte "
            f"{data[bad.start : bad.start + 1]!r}); save the file as UTF-8."
        ) from None


def first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, why) of the first line of a JSON-lines file that is not a JSON object; None: all are."""
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                return number, error.msg
            if not isinstance(value, dict):
                return number, f"a JSON {type(value).__name__}, not an object"
    return None


def _json_problem(path: Path) -> str | None:
    """Where a .json/.jsonl file stops being JSON: a JSON-lines reading first, then the whole document."""
    bad = first_bad_json_line(path)
    if bad is None:
        return None
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            if text.lstrip().startswith("["):
                return f"line {error.lineno} is not JSON ({error.msg})"
        else:
            if isinstance(document, list) and not all(isinstance(row, dict) for row in document):
                index = next(i for i, row in enumerate(document) if not isinstance(row, dict))
                return f"item {index} of its list is a JSON {type(document[index]).__name__}, not an object"
            if isinstance(document, (list, dict)):
                return None
    return f"line {bad[0]} is not JSON ({bad[1]})"


def load_local_file(path: Path, field: str, error: type[Exception] = DataFileError) -> Any:
    """A local data file as a `datasets.Dataset`, or one `error` naming `field`, the file, the line and the
    fix: empty, blank, not UTF-8, malformed (instead of StopIteration or `DatasetGenerationError`)."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError

    path = Path(path)
    check_data_file(path, field, error)
    quiet = logging.getLogger("datasets")  # its builders log the parse error with a traceback first
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        dataset = load_dataset(LOCAL_BUILDERS[path.suffix], data_files=str(path), split="train")
    except DatasetGenerationError as failure:
        where = _json_problem(path) if path.suffix in (".json", ".jsonl") else None
        where = where or f"cannot be read ({failure.__cause__ or failure})"
        raise error(
            f"{field}: {str(path)!r} {where}; fix or remove it ({FORMAT_HINTS[path.suffix]})."
        ) from None
    except (StopIteration, ValueError) as failure:
        if isinstance(failure, StopIteration) or "corresponds to no data" in str(failure):
            raise no_rows(
                field, path, EMPTY_AFTER_PARSING.get(path.suffix, "no line holds a row"), error
            ) from None
        raise
    finally:
        quiet.setLevel(level)
    if len(dataset) == 0:
        raise no_rows(field, path, EMPTY_AFTER_PARSING.get(path.suffix, "no line holds a row"), error)
    return dataset


def jsonl_lines(path: str | Path, indices: list[int]) -> dict[int, int]:
    """Row index -> line number in a local .jsonl file (blank lines hold no row); {} for other sources."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file() or not indices:
        return {}
    wanted, found = set(indices), {}
    row = -1
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                row += 1
                if row in wanted:
                    found[row] = number
                    if len(found) == len(wanted):
                        break
    return found


def row_lines(source: str, indices: list[int]) -> str:
    """` (lines 1, 5)`: where rows (0-based indices) sit in a local .jsonl source; "" for other sources."""
    lines = jsonl_lines(source, sorted(indices))
    if not lines:
        return ""
    numbers = ", ".join(str(lines[i]) for i in sorted(indices) if i in lines)
    return f" (line{'s' if len(lines) > 1 else ''} {numbers})"


__all__ = [
    "DataFileError",
    "LOCAL_BUILDERS",
    "check_data_file",
    "first_bad_json_line",
    "jsonl_lines",
    "load_local_file",
    "read_text",
    "row_lines",
]
