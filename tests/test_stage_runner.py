"""The stage runner with cheap synthetic stages: reuse, recomputation, content chaining, folders, exports.

Every stage here is a tiny in-memory `datasets.Dataset` (or a folder of two small files); no models.
`calls` counts how often each stage's computation really ran.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk

from persyn_hub.pipeline.cache import StageCache
from persyn_hub.pipeline.runner import Stage, StageContext, StageRunner


@pytest.fixture
def calls() -> Counter:
    return Counter()


def source(
    calls: Counter, values: list[int], *, identity: object = "v1", name: str = "a", **options
) -> Stage:
    """A first stage: the rows `values`, whatever its identity says."""

    def compute(context: StageContext) -> Dataset:
        calls[name] += 1
        return Dataset.from_dict({"x": list(values)})

    return Stage(name, compute, identity=identity, **options)


def plus_one(calls: Counter, name: str, reads: str, *, identity: object = "v1", **options) -> Stage:
    """A stage that adds 1 to its input's `x`."""

    def compute(context: StageContext) -> Dataset:
        calls[name] += 1
        return Dataset.from_dict({"x": [x + 1 for x in context[reads]["x"]]})

    return Stage(name, compute, inputs=(reads,), identity=identity, **options)


def run_all(root: Path, stages: list[Stage], **options) -> StageRunner:
    runner = StageRunner(StageCache(root), **options)
    for stage in stages:
        runner.run(stage)
    return runner


def chain(
    calls: Counter, *, a: object = "v1", b: object = "v1", c: object = "v1", values=(1, 2)
) -> list[Stage]:
    return [
        source(calls, list(values), identity=a),
        plus_one(calls, "b", "a", identity=b),
        plus_one(calls, "c", "b", identity=c),
    ]


def test_a_stage_runs_once_and_a_second_runner_reuses_it(tmp_path, calls):
    first = run_all(tmp_path, chain(calls))
    assert first.outputs["c"]["x"] == [3, 4]
    assert first.cached == {"a": False, "b": False, "c": False}
    assert calls == {"a": 1, "b": 1, "c": 1}

    second = run_all(tmp_path, chain(calls))
    assert second.cached == {"a": True, "b": True, "c": True}
    assert calls == {"a": 1, "b": 1, "c": 1}, "a finished stage must not be computed again"
    assert second.outputs["c"]["x"] == [3, 4]
    assert second.keys == first.keys and second.digests == first.digests
    assert [r["cached"] for r in second.summary()] == [True, True, True]


def test_a_changed_identity_recomputes_the_stage_and_its_dependants(tmp_path, calls):
    run_all(tmp_path, chain(calls))

    def bumped(context: StageContext) -> Dataset:
        calls["b"] += 1
        return Dataset.from_dict({"x": [x + 10 for x in context["a"]["x"]]})

    stages = chain(calls)
    stages[1] = Stage("b", bumped, inputs=("a",), identity="v2")
    runner = run_all(tmp_path, stages)
    assert runner.cached == {"a": True, "b": False, "c": False}
    assert calls == {"a": 1, "b": 2, "c": 2}
    assert runner.outputs["c"]["x"] == [12, 13]


def test_an_upstream_stage_recomputed_to_identical_content_leaves_the_downstream_reused(tmp_path, calls):
    base = run_all(tmp_path, chain(calls))
    runner = run_all(tmp_path, chain(calls, a="v2"))  # new key for `a`, same rows
    assert runner.keys["a"] != base.keys["a"]
    assert runner.digests["a"] == base.digests["a"]
    assert runner.cached == {"a": False, "b": True, "c": True}
    assert calls == {"a": 2, "b": 1, "c": 1}


def test_an_upstream_stage_recomputed_to_different_content_recomputes_the_downstream(tmp_path, calls):
    base = run_all(tmp_path, chain(calls))
    runner = run_all(tmp_path, chain(calls, a="v2", values=(5, 6)))
    assert runner.digests["a"] != base.digests["a"]
    assert runner.cached == {"a": False, "b": False, "c": False}
    assert calls == {"a": 2, "b": 2, "c": 2}
    assert runner.outputs["c"]["x"] == [7, 8]


def test_identical_rows_computed_through_a_differently_parameterised_map_chain_as_identical(tmp_path, calls):
    def mapped(tag: str) -> Stage:
        def compute(context: StageContext) -> Dataset:
            calls["a"] += 1
            # `tag` does not change the rows; it is in the function, as a config object is in real stages
            return Dataset.from_dict({"x": [1, 2]}).map(lambda row: {"x": row["x"] + 0 * len(tag)})

        return Stage("a", compute, identity=tag)

    base = run_all(tmp_path, [mapped("v1"), plus_one(calls, "b", "a")])
    runner = run_all(tmp_path, [mapped("v2"), plus_one(calls, "b", "a")])
    assert runner.outputs["a"]["x"] == base.outputs["a"]["x"]
    assert runner.cached["b"], "the rows of `a` are identical, so `b` must be reused"


def folder_stage(calls: Counter, weights: bytes, *, identity: object = "v1") -> Stage:
    def compute(context: StageContext) -> None:
        calls["model"] += 1
        (context.folder / "weights.bin").write_bytes(weights)
        (context.folder / "config.json").write_text(json.dumps({"size": len(weights)}))

    return Stage("model", compute, identity=identity, folder=True, export="model")


def reads_folder(calls: Counter) -> Stage:
    def compute(context: StageContext) -> Dataset:
        calls["use"] += 1
        folder = Path(context["model"])
        return Dataset.from_dict({"weights": [(folder / "weights.bin").read_bytes().hex()]})

    return Stage("use", compute, inputs=("model",))


def test_a_folder_stage_is_reused_and_chains_by_its_files(tmp_path, calls):
    first = run_all(tmp_path, [folder_stage(calls, b"\x01\x02"), reads_folder(calls)])
    output = first.outputs["model"]
    assert isinstance(output, Path) and (output / "weights.bin").read_bytes() == b"\x01\x02"
    assert first.outputs["use"]["weights"] == ["0102"]
    assert not list(output.parent.glob("*.partial")), "the staging folder must be swapped in"

    again = run_all(tmp_path, [folder_stage(calls, b"\x01\x02"), reads_folder(calls)])
    assert again.cached == {"model": True, "use": True} and calls == {"model": 1, "use": 1}

    same_files = run_all(tmp_path, [folder_stage(calls, b"\x01\x02", identity="v2"), reads_folder(calls)])
    assert same_files.cached == {"model": False, "use": True}, "identical files: the reader is reused"
    assert same_files.digests["model"] == first.digests["model"]

    other_files = run_all(tmp_path, [folder_stage(calls, b"\x01\x03", identity="v3"), reads_folder(calls)])
    assert other_files.cached == {"model": False, "use": False}
    assert other_files.outputs["use"]["weights"] == ["0103"]
    assert calls == {"model": 3, "use": 2}


def test_export_copies_the_output_to_artifacts(tmp_path, calls):
    stages = [source(calls, [1, 2], export="labels"), folder_stage(calls, b"\x07")]
    run_all(tmp_path, stages)
    artifacts = tmp_path / "artifacts"
    assert load_from_disk(str(artifacts / "labels"))["x"] == [1, 2]
    assert (artifacts / "model" / "weights.bin").read_bytes() == b"\x07"
    assert not list(artifacts.glob("*.partial"))

    shutil.rmtree(artifacts)
    cached = run_all(tmp_path, stages)
    assert cached.cached == {"a": True, "model": True}
    assert load_from_disk(str(artifacts / "labels"))["x"] == [1, 2], "a cached run exports too"
    assert (artifacts / "model" / "weights.bin").read_bytes() == b"\x07"

    run_all(tmp_path, [source(calls, [9], identity="v2", export="labels")])
    assert load_from_disk(str(artifacts / "labels"))["x"] == [9], "the artifact follows the current output"


def test_check_runs_on_cached_and_uncached_runs(tmp_path, calls):
    seen: list[list[int]] = []

    def check(context: StageContext) -> None:
        seen.append(list(context["a"]["x"]))

    stages = [source(calls, [1]), plus_one(calls, "b", "a", check=check)]
    run_all(tmp_path, stages)
    assert run_all(tmp_path, stages).cached == {"a": True, "b": True}
    assert calls == {"a": 1, "b": 1}
    assert seen == [[1], [1]], "check must run whether the stage was cached or not"

    def refuse(context: StageContext) -> None:
        raise ValueError("preflight failed")

    with pytest.raises(ValueError, match="preflight failed"):
        run_all(tmp_path, [source(calls, [1], check=refuse)])


def failing_rows(calls: Counter, name: str, errors: list[str | None]) -> Stage:
    def compute(context: StageContext) -> Dataset:
        calls[name] += 1
        return Dataset.from_dict({"x": list(range(len(errors))), "error": list(errors)})

    return Stage(name, compute, rerun_failed=True)


def test_retry_failed_recomputes_a_finished_stage_with_failed_rows_only(tmp_path, calls):
    stages = [
        failing_rows(calls, "broken", [None, "HTTP 503"]),
        failing_rows(calls, "fine", [None, None]),
    ]
    run_all(tmp_path, stages)
    assert calls == {"broken": 1, "fine": 1}

    plain = run_all(tmp_path, stages)
    assert plain.cached == {"broken": True, "fine": True}, "without retry_failed a failed row is kept"
    assert calls == {"broken": 1, "fine": 1}

    retry = run_all(tmp_path, stages, retry_failed=True)
    assert retry.cached == {"broken": False, "fine": True}
    assert calls == {"broken": 2, "fine": 1}

    not_generation = Stage("broken", stages[0].compute)  # same name and key, rerun_failed=False
    assert run_all(tmp_path, [not_generation], retry_failed=True).cached == {"broken": True}
    assert calls == {"broken": 2, "fine": 1}


def test_retry_failed_reaches_the_stages_that_read_the_retried_rows(tmp_path, calls):
    answers = iter([["HTTP 503", None], [None, None]])

    def generate(context: StageContext) -> Dataset:
        calls["gen"] += 1
        errors = next(answers)
        return Dataset.from_dict({"x": [1, 2], "error": errors})

    def count(context: StageContext) -> Dataset:
        calls["count"] += 1
        return Dataset.from_dict({"ok": [sum(e is None for e in context["gen"]["error"])]})

    stages = [Stage("gen", generate, rerun_failed=True), Stage("count", count, inputs=("gen",))]
    assert run_all(tmp_path, stages).outputs["count"]["ok"] == [1]
    retried = run_all(tmp_path, stages, retry_failed=True)
    assert retried.cached == {"gen": False, "count": False}
    assert retried.outputs["count"]["ok"] == [2]
    assert run_all(tmp_path, stages, retry_failed=True).cached == {"gen": True, "count": True}


def test_a_stage_reading_an_input_that_has_not_run_raises(tmp_path, calls):
    runner = StageRunner(StageCache(tmp_path))
    with pytest.raises(RuntimeError, match=r"'b' reads \['a'\]"):
        runner.run(plus_one(calls, "b", "a"))
    assert calls == {}
    assert not list((tmp_path / "stages").iterdir()), "nothing may be written for a stage that cannot run"


def test_the_context_holds_only_the_declared_inputs(tmp_path, calls):
    seen: dict[str, list[str]] = {}

    def look(context: StageContext) -> Dataset:
        seen["inputs"] = sorted(context.outputs)
        return Dataset.from_dict({"y": [0]})

    run_all(tmp_path, [source(calls, [1]), source(calls, [2], name="other"), Stage("z", look, inputs=("a",))])
    assert seen["inputs"] == ["a"]


def test_a_stage_says_how_long_it_took_including_its_chunks_and_a_reused_one_keeps_that_time(tmp_path):
    """Costs read these seconds: a chunked stage's chunks are its work, and a reload is not the cost."""
    import time

    def rows(context: StageContext) -> Dataset:
        return Dataset.from_dict({"prompt_id": [f"p{i}" for i in range(6)], "x": list(range(6))})

    def slow_square(context: StageContext) -> Dataset:
        time.sleep(0.15)
        return context.rows.map(lambda row: {"y": row["x"] ** 2})

    stages = [
        source(Counter(), [1], name="first"),
        Stage("square", slow_square, inputs=("first",), identity=1, parallel="chunks", rows=rows),
    ]
    runner = StageRunner(StageCache(tmp_path), chunk_rows=2)  # 3 chunks of 0.15 s
    for stage in stages:
        runner.run(stage)
    computed = {record["name"]: record for record in runner.summary()}["square"]
    assert computed["seconds"] >= 0.45 and computed["computed_seconds"] == computed["seconds"]
    assert not computed["cached"]

    again = StageRunner(StageCache(tmp_path), chunk_rows=2)
    for stage in stages:
        again.run(stage)
    reused = {record["name"]: record for record in again.summary()}["square"]
    assert reused["cached"] and reused["seconds"] < 0.45
    assert reused["computed_seconds"] == computed["seconds"]


def test_a_stage_reading_a_column_its_input_lacks_fails_before_computing_naming_both(tmp_path, calls):
    from persyn_hub.errors import ColumnError

    runner = StageRunner(StageCache(tmp_path))
    runner.run(source(calls, [1, 2], name="prompts"))
    reader = replace(plus_one(calls, "score", "prompts"), reads={"prompts": ("x", "answer")})
    with pytest.raises(ColumnError) as raised:
        runner.run(reader)
    message = str(raised.value)
    assert "\n" not in message
    assert "stage score" in message and "stage prompts" in message and "['answer']" in message
    assert calls["score"] == 0  # nothing was computed
    # what it declares it reads and adds is there: it runs
    runner.run(replace(plus_one(calls, "score", "prompts"), reads={"prompts": ("x",)}, adds=("x",)))
    assert calls["score"] == 1
    with pytest.raises(ColumnError, match=r"stage late: its own output lacks column\(s\) \['y'\]"):
        runner.run(replace(plus_one(calls, "late", "prompts"), adds=("x", "y")))


def test_the_pipeline_stages_declare_what_they_read_and_add():
    """The scoring stages' declared columns are the ones the scoring functions read and write."""
    from persyn_hub.pipeline.stages import persyn_stages
    from persyn_hub.recipe.config import load_recipe
    from persyn_hub.scoring.combine import COMBINE_COLUMNS
    from persyn_hub.scoring.learnability.tokens import LEARNABILITY_COLUMNS

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "demo" / "task-mix-smollm2.yaml")
    stages = {s.name: s for s in persyn_stages(recipe, StageRunner(StageCache(Path("/nonexistent"))))}
    assert tuple(stages["learnability"].adds) == LEARNABILITY_COLUMNS
    assert set(stages["learnability"].reads) == set(stages["learnability"].inputs)
    assert tuple(stages["combine"].adds) == COMBINE_COLUMNS
    assert set(stages["combine"].reads["quality"]) >= {"quality", "learnability"}
    assert "reward" in stages["router"].reads["combine"]
