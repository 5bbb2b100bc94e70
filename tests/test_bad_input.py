"""Bad input files, to every command that reads one: one line (exit 2, no traceback) naming the file and the
row, line or id, and the fix.

Empty files of every format (prompts, answer pools, SFT data), files of blank lines, a header without rows, a
malformed line, a file that is not UTF-8, a prompt column empty in every row, and rows that contradict each
other (one id, two texts or two answers), which `prompts.drop_duplicates` does not drop: it drops only
identical rows. Each runs the command in this process (`cli.main`); `persyn run` reads prompts the way
`persyn validate` does, and is run once for the acceptance case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from persyn_hub.cli import main

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "recipes" / "demo" / "asdiv-smollm2.yaml"
DEMO_TEACHERS = ["smollm2-135m-instruct", "gemma-3-270m"]


def run_main(capsys, *args: str) -> str:
    """`persyn ARGS` in this process: exit 2, no traceback, one `persyn: error:` line ending stderr."""
    capsys.readouterr()
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("persyn: error: ")]
    assert len(errors) == 1 and err.rstrip("\n").splitlines()[-1] == errors[0], err[-3000:]
    return errors[0]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def recipe(tmp_path: Path, **prompts: object) -> Path:
    """The demo recipe reading prompts as given (instruction-following quality: no gold answer needed)."""
    values = yaml.safe_load(DEMO.read_text())
    values["prompts"] = {"drop_eval_items": False, **prompts}
    values["quality"] = {"kind": "instruction_following"}
    values["output"] = {"dir": str(tmp_path / "run")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def empty_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    return path


# --------------------------------------------------------------------------------------------------
# Files that give no rows, or cannot be read: persyn validate / persyn run's prompt loader


EMPTY_FILES = {
    "empty.jsonl": (b"", "has no rows (the file is empty)"),
    "empty.json": (b"", "has no rows (the file is empty)"),
    "empty.csv": (b"", "has no rows (the file is empty)"),
    "blank.jsonl": (b"\n  \n\n", "has no rows (the file holds only blank lines)"),
    "header.csv": (b"prompt\n", "has no rows (only a header line)"),
    "list.json": (b"[]", "has no rows (an empty list)"),
    "empty.parquet": (None, "has no rows (the table has 0 rows)"),
}


@pytest.mark.parametrize("name", list(EMPTY_FILES))
def test_a_prompts_file_without_rows_is_one_line(capsys, tmp_path, name):
    content, fragment = EMPTY_FILES[name]
    source = tmp_path / name
    if content is None:
        empty_parquet(source)
    else:
        source.write_bytes(content)
    line = run_main(capsys, "validate", str(recipe(tmp_path, source=str(source))))
    assert f"prompts.source: {str(source)!r} {fragment}" in line and "add rows" in line, line


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b'{"prompt": "a"}\n{"prompt": "b"\n{"prompt": "c"}\n', ["line 2 is not JSON", "fix or remove it"]),
        (b'{"prompt": "a"}\n[1, 2]\n', ["line 2 is not JSON (a JSON list, not an object)"]),
        (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', ["line 2 is not UTF-8 text", "save the file as UTF-8"]),
        (
            b'{"prompt": ""}\n{"prompt": "  "}\n',
            ["prompts.prompt_column: column 'prompt'", "is empty in all 2 rows"],
        ),
        (
            b'{"prompt": "a"}\n\n{"prompt": " "}\n',
            ["row 1 of", "(line 3): the prompt is empty or whitespace"],
        ),
    ],
    ids=["malformed-line", "not-an-object", "not-utf8", "prompt-column-all-empty", "one-empty-prompt"],
)
def test_a_prompts_file_with_a_bad_line_names_it(capsys, tmp_path, content, fragments):
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(content)
    line = run_main(capsys, "validate", str(recipe(tmp_path, source=str(source))))
    assert str(source) in line, line
    for fragment in fragments:
        assert fragment in line, line


def test_a_csv_that_is_not_utf8_names_its_line(capsys, tmp_path):
    source = tmp_path / "prompts.csv"
    source.write_bytes(b"prompt\nfine\ncaf\xe9\n")
    line = run_main(capsys, "validate", str(recipe(tmp_path, source=str(source))))
    assert f"{str(source)!r} line 3 is not UTF-8 text" in line, line


# --------------------------------------------------------------------------------------------------
# Rows that contradict each other: refused even under drop_duplicates, which drops identical rows only

SIX_ROWS = [{"prompt_id": "p1", "prompt": f"What is {i} + {i}?"} for i in range(6)]


def test_six_rows_sharing_one_id_with_different_texts_are_refused(capsys, tmp_path):
    """The acceptance case: `persyn run` stops in one line naming the file, the id and the rows."""
    source = jsonl(tmp_path / "prompts.jsonl", SIX_ROWS)
    path = recipe(tmp_path, source=str(source), id_column="prompt_id", drop_duplicates=True)
    line = run_main(capsys, "run", str(path))
    for fragment in (
        "rows [0, 1, 2, 3, 4, 5] share id 'p1' (column 'prompt_id')",
        str(source),
        "(lines 1, 2, 3, 4, 5, 6)",
        "differ in their prompt text",
        "drop_duplicates drops only identical rows",
        "give each prompt its own id",
    ):
        assert fragment in line, line
    assert run_main(capsys, "validate", str(path)) == line  # validate reads the prompts the same way


def test_an_empty_prompts_file_stops_persyn_run(capsys, tmp_path):
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(b"")
    line = run_main(capsys, "run", str(recipe(tmp_path, source=str(source))))
    assert f"prompts.source: {str(source)!r} has no rows" in line, line


def test_one_text_with_two_answers_is_refused(capsys, tmp_path):
    rows = [{"q": "2 + 2?", "gold": "4"}, {"q": "3 + 3?", "gold": "6"}, {"q": "2 + 2?", "gold": "5"}]
    source = jsonl(tmp_path / "prompts.jsonl", rows)
    path = recipe(tmp_path, source=str(source), prompt_column="q", answer_column="gold", drop_duplicates=True)
    line = run_main(capsys, "validate", str(path))
    assert "rows [0, 2] share the same prompt text" in line and "(lines 1, 3)" in line, line
    assert "differ in their answer (column 'gold'): row 0 has '4', row 2 '5'" in line, line


def test_identical_rows_are_dropped_only_when_asked(capsys, tmp_path):
    rows = [{"id": "a", "q": "2 + 2?"}, {"id": "b", "q": "3 + 3?"}, {"id": "a", "q": "2 + 2?"}]
    source = jsonl(tmp_path / "prompts.jsonl", rows)
    line = run_main(
        capsys, "validate", str(recipe(tmp_path, source=str(source), prompt_column="q", id_column="id"))
    )
    assert "rows [0, 2] share id 'a'" in line and "set prompts.drop_duplicates: true" in line, line
    path = recipe(tmp_path, source=str(source), prompt_column="q", id_column="id", drop_duplicates=True)
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def pool_recipe(tmp_path: Path, rows: list[dict], pool: dict, **prompts: object) -> Path:
    source = jsonl(tmp_path / "pool.jsonl", rows)
    path = recipe(tmp_path, source=str(source), prompt_column="q", id_column="id", pool=pool, **prompts)
    values = yaml.safe_load(path.read_text())
    values["teachers"] = [{"name": "a"}, {"name": "b"}]
    values["quality"] = {"kind": "column", "column": "score"}
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_wide_pool_with_two_answers_under_one_id_is_refused(capsys, tmp_path):
    rows = [
        {
            "id": "1",
            "q": "Hi?",
            "a": {"content": "Hello", "score": 1.0},
            "b": {"content": "Hey", "score": 0.5},
        },
        {"id": "1", "q": "Hi?", "a": {"content": "Bye", "score": 0.0}, "b": {"content": "Hey", "score": 0.5}},
    ]
    path = pool_recipe(tmp_path, rows, {"format": "wide"}, drop_duplicates=True)
    line = run_main(capsys, "validate", str(path))
    assert "rows [0, 1] share id '1' (column 'id')" in line and "differ in column 'a'" in line, line
    assert "pool.jsonl' (lines 1, 2)" in line, line


LONG = {
    "format": "long",
    "teacher_column": "teacher",
    "response_column": "response",
    "score_columns": ["score"],
}


def long_rows(*changes: dict) -> list[dict]:
    rows = [
        {"id": "1", "q": "Hi?", "teacher": "a", "response": "Hello", "score": 1.0},
        {"id": "1", "q": "Hi?", "teacher": "b", "response": "Hey", "score": 0.5},
    ]
    return rows + list(changes)


@pytest.mark.parametrize(
    ("extra", "drop", "fragments"),
    [
        (
            {"id": "1", "q": "Hi?", "teacher": "a", "response": "Bye", "score": 0.0},
            True,
            [
                "rows [0, 2] of",
                "(lines 1, 3)",
                "two different answers of teacher 'a'",
                "differ in ['response', 'score']",
            ],
        ),
        (
            {"id": "1", "q": "Hi?", "teacher": "a", "response": "Hello", "score": 1.0},
            False,
            ["rows [0, 2] of", "word for word", "prompts.drop_duplicates: true"],
        ),
        (
            {"id": "1", "q": "Hello?", "teacher": "c", "response": "Hi", "score": 1.0},
            True,
            ["rows [0, 2] of", "share id '1' but differ in column 'q'", "fix the wrong row"],
        ),
    ],
    ids=["two-answers", "identical-repeat", "two-texts"],
)
def test_a_long_pool_that_contradicts_itself_is_refused(capsys, tmp_path, extra, drop, fragments):
    path = pool_recipe(tmp_path, long_rows(extra), LONG, drop_duplicates=drop)
    line = run_main(capsys, "validate", str(path))
    assert "prompts.pool:" in line and "pool.jsonl" in line, line
    for fragment in fragments:
        assert fragment in line, line


def test_a_long_pools_identical_repeat_is_dropped_on_request(capsys, tmp_path):
    repeat = {"id": "1", "q": "Hi?", "teacher": "a", "response": "Hello", "score": 1.0}
    path = pool_recipe(tmp_path, long_rows(repeat), LONG, drop_duplicates=True)
    capsys.readouterr()
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# persyn route


@pytest.fixture(scope="module")
def tiny_router(tmp_path_factory) -> Path:
    from conftest import save_tiny_router

    folder = tmp_path_factory.mktemp("router")
    save_tiny_router(folder, DEMO_TEACHERS, max_length=32)
    return folder


def test_route_refuses_an_empty_prompts_file(capsys, tmp_path, tiny_router):
    source = tmp_path / "prompts.jsonl"
    source.write_bytes(b"\n\n")
    out = tmp_path / "out"
    line = run_main(
        capsys, "route", "--router", str(tiny_router), "--prompts", str(source), "--output", str(out)
    )
    assert f"{str(source)!r} has no rows" in line and not out.exists(), line


def test_route_refuses_one_id_with_six_texts(capsys, tmp_path, tiny_router):
    source = jsonl(tmp_path / "prompts.jsonl", SIX_ROWS)
    args = [
        "route",
        "--router",
        str(tiny_router),
        "--prompts",
        str(source),
        "--output",
        str(tmp_path / "out"),
    ]
    line = run_main(capsys, *args, "--id_column", "prompt_id", "--drop_duplicates", "true")
    assert "share id 'p1'" in line and str(source) in line and "differ in their prompt text" in line, line


# --------------------------------------------------------------------------------------------------
# persyn sft: its data file


def sft_config(tmp_path: Path, dataset: Path) -> Path:
    path = tmp_path / "sft.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "dataset_name": str(dataset),
                "model_name_or_path": "bundled:smollm2-135m-instruct",
                "output_dir": str(tmp_path / "student"),
                "use_cpu": True,
                "bf16": False,
                "report_to": "none",
                "max_steps": 1,
            }
        )
    )
    return path


CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"", ["dataset_name:", "has no rows (the file is empty)"]),
        (b"\n \n", ["dataset_name:", "has no rows (the file holds only blank lines)"]),
        (b'{"messages": []}\n{"messages": [1\n', ["dataset_name:", "line 2 is not JSON"]),
        (b'{"messages": "caf\xe9"}\n', ["dataset_name:", "line 1 is not UTF-8 text"]),
        (
            (json.dumps({"messages": CHAT}) + "\n\n" + json.dumps({"messages": CHAT[:1]}) + "\n").encode(),
            ["row 1 of", "(line 3): 'messages' must end with a non-empty assistant turn"],
        ),
    ],
    ids=["empty", "blank", "malformed-line", "not-utf8", "no-answer"],
)
def test_sft_refuses_bad_data_before_the_student_loads(capsys, tmp_path, content, fragments):
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    line = run_main(capsys, "sft", "--config", str(sft_config(tmp_path, data)))
    assert str(data) in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "student").exists()


# --------------------------------------------------------------------------------------------------
# persyn evaluate: its evaluation items


def test_evaluate_refuses_a_limit_that_leaves_no_items(capsys):
    line = run_main(capsys, "evaluate", "--model", "bundled:smollm2-135m-instruct", "--limit", "0")
    assert "--limit: 0 leaves no evaluation items" in line, line


def test_evaluate_names_a_misspelled_packaged_task(capsys):
    line = run_main(
        capsys, "evaluate", "--model", "bundled:smollm2-135m-instruct", "--tasks", "persyn_asdivv"
    )
    assert (
        "--tasks: 'persyn_asdivv' is not a packaged task" in line and "Did you mean 'persyn_asdiv'?" in line
    )
