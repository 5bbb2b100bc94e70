"""One table of generation backends (`generation/backends.py`): every call site asks it, none compares names."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

import persyn_hub
from persyn_hub.generation.backends import BACKEND_NAMES, BACKENDS, backend_for, backend_of, generates_here
from persyn_hub.recipe.sections import TeacherConfig

PACKAGE = Path(persyn_hub.__file__).parent
TABLE = PACKAGE / "generation" / "backends.py"
NOT_A_TEACHER_BACKEND = {
    ("scoring/learnability/served.py", "api"),
    ("scoring/learnability/served.py", "self.api"),
}
"""Comparisons with a backend's name that are about something else: a scoring server's API kind."""


def strings(node: ast.AST) -> set[str]:
    """The string constants `node` is, or holds as a literal tuple, list or set."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {value for element in node.elts for value in strings(element)}
    return set()


def test_no_module_but_the_table_compares_backend_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == TABLE:
            continue
        where = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            if not any(strings(operand) & set(BACKENDS) for operand in operands):
                continue
            others = {ast.unparse(operand) for operand in operands if not strings(operand)}
            if not all((where, other) in NOT_A_TEACHER_BACKEND for other in others):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "ask generation/backends.py's table instead:\n" + "\n".join(found)


def teacher_of(name: str) -> TeacherConfig:
    """A teacher the recipe would accept with `backend: name`."""
    extra = {
        "endpoint": {"endpoints": ["http://127.0.0.1:1"]},
        "reference": {"response_template": "{answer}"},
        "pool": {"pool_column": "t"},
    }.get(name, {"model": "org/model"})
    return TeacherConfig(name="t", backend=name, **extra)


def test_the_recipes_backend_values_are_the_tables():
    literal = typing.get_type_hints(TeacherConfig)["backend"]
    assert set(typing.get_args(literal)) == set(BACKEND_NAMES)


@pytest.mark.parametrize(
    ("teacher", "expected"),
    [
        (TeacherConfig(name="t", model="org/m"), "transformers"),
        (TeacherConfig(name="t", model="org/m", endpoints=["http://x"]), "endpoint"),
        (TeacherConfig(name="t", pool_column="t"), "pool"),
        (TeacherConfig(name="t", model="org/m", pool_column="t"), "transformers"),
        (TeacherConfig(name="t"), "transformers"),
        *[(teacher_of(name), name) for name in BACKENDS],
    ],
)
def test_auto_resolves_to_a_backend_of_the_table(teacher, expected):
    assert backend_of(teacher) is BACKENDS[expected]
    assert backend_for(teacher) == expected


def test_a_name_that_is_no_backend_is_refused():
    with pytest.raises(ValueError, match=r"teachers\.t\.backend: unknown backend 'llama'"):
        backend_of(TeacherConfig(name="t", model="org/m", backend="llama"))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_backends_entry_drives_its_stages(name, monkeypatch):
    from persyn_hub.pipeline.generation_stages import generation_parallelism
    from persyn_hub.pipeline.identity import teacher_identity
    from persyn_hub.pipeline.preflight import TEACHER_CHECKS

    backend, teacher = BACKENDS[name], teacher_of(name)
    assert generation_parallelism(teacher) == ("main" if teacher.pool_column else backend.parallelism)
    assert generation_parallelism(dataclasses.replace(teacher, pool_column="t")) == "main"
    assert backend.preflight in TEACHER_CHECKS
    assert backend.answers_from_data == (backend.generate is None or not backend.checkpoints)
    if not backend.uses_local_gpus:
        assert generates_here(teacher)
    if "weights" not in backend.identity:  # (a model's identity reads its files)
        identity = teacher_identity(teacher)
        assert identity["backend"] == name
        assert ("response_template" in identity) == ("response_template" in backend.identity)
        assert ("generation" in identity) == ("prompt" in backend.identity)
        assert ("served_model_name" in identity) == ("served_model" in backend.identity)
    # the stage's parallelism follows the table's entry, not the backend's name
    other = "main" if backend.parallelism == "chunks" else "chunks"
    monkeypatch.setitem(BACKENDS, name, dataclasses.replace(backend, parallelism=other))
    if not teacher.pool_column:
        assert generation_parallelism(teacher) == other


def test_generation_calls_the_tables_generator(monkeypatch, tmp_path):
    from datasets import Dataset

    from persyn_hub.generation import generate_responses

    calls = []

    def generate(dataset, teacher, *, checkpoint, stats, seed):
        calls.append((teacher.name, checkpoint is not None, seed))
        return dataset.map(
            lambda row: {
                "teacher": teacher.name,
                "response": "42",
                "finish_reason": "stop",
                "num_tokens": 1,
                "num_prompt_tokens": 1,
                "error": None,
            }
        )

    rows = Dataset.from_dict({"prompt_id": ["a"], "messages": [[{"role": "user", "content": "6*7?"}]]})
    for name in ("endpoint", "reference"):
        backend = BACKENDS[name]
        monkeypatch.setitem(BACKENDS, name, dataclasses.replace(backend, generate=generate))
        result, _ = generate_responses(rows, teacher_of(name), checkpoint_dir=tmp_path / name, seed=7)
        assert result["response"] == ["42"]
        assert calls[-1] == ("t", backend.checkpoints, 7)
