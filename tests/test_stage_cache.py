"""The stage cache: reuse finished stages, never trust half-written ones, report corrupt ones."""

from __future__ import annotations

import shutil

import pytest
from datasets import Dataset

from persyn_hub.pipeline.cache import CorruptCacheError, StageCache


def test_a_finished_stage_is_reused_and_a_new_key_recomputes(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def compute(folder):
        calls.append(folder)
        return Dataset.from_dict({"x": [1, 2, 3]})

    key = cache.key("double", {"alpha": 0.5})
    first = cache.dataset_stage("double", key, compute)
    again = StageCache(tmp_path).dataset_stage("double", key, compute)
    assert len(calls) == 1 and again["x"] == first["x"] == [1, 2, 3]
    other = cache.key("double", {"alpha": 0.6})
    assert other != key
    cache.dataset_stage("double", other, compute)
    assert len(calls) == 2
    assert [r["cached"] for r in cache.summary()] == [False, False]


def test_failed_rows_are_counted_and_a_forgotten_stage_is_entered_again(tmp_path):
    cache = StageCache(tmp_path)
    runs = []

    def compute(folder):
        runs.append(1)
        return Dataset.from_dict({"error": ["HTTP 503", None, "timeout"]})

    key = cache.key("gen")
    cache.dataset_stage("gen", key, compute)
    assert cache.is_done("gen", key) and cache.failed_rows("gen", key) == 2
    cache.dataset_stage("gen", key, compute)
    assert len(runs) == 1, "a finished stage is reused, failed rows and all (a retry is asked for)"
    cache.forget("gen", key)
    assert not cache.is_done("gen", key)
    cache.dataset_stage("gen", key, compute)
    assert len(runs) == 2, "a forgotten stage must be computed again"
    plain = cache.key("plain")
    cache.dataset_stage("plain", plain, lambda f: Dataset.from_dict({"x": [1]}))
    assert cache.failed_rows("plain", plain) == 0  # no `error` column: nothing failed


def test_a_crash_while_saving_leaves_no_finished_marker(tmp_path):
    cache = StageCache(tmp_path)
    key = cache.key("s")

    def crash(folder):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.dataset_stage("s", key, crash)
    assert not cache.is_done("s", key)


def test_a_corrupt_cache_folder_is_reported_with_the_fix(tmp_path):
    cache = StageCache(tmp_path)
    key = cache.key("s")
    cache.dataset_stage("s", key, lambda f: Dataset.from_dict({"x": [1]}))
    data = cache.folder("s", key) / "data"
    for arrow_file in data.glob("*.arrow"):
        arrow_file.write_bytes(b"garbage")
    shutil.rmtree(data / "dataset_info.json", ignore_errors=True)
    (data / "state.json").write_text("{not json")
    with pytest.raises(CorruptCacheError, match="Delete that folder and run again"):
        StageCache(tmp_path).dataset_stage("s", key, lambda f: Dataset.from_dict({"x": [2]}))


def test_corrupt_checkpoint_lines_are_counted_and_their_rows_generated_again(tmp_path, caplog):
    import json as json_module
    import logging

    from persyn_hub.generation.checkpoint import GenerationCheckpoint

    part = tmp_path / "part-1-1.jsonl"
    good = {
        "prompt_id": "a",
        "response": "x",
        "finish_reason": "stop",
        "num_tokens": 1,
        "num_prompt_tokens": 1,
        "error": None,
    }
    part.write_text(
        json_module.dumps(good) + "\n" + '{"prompt_id": "b", "resp\n' + '["not", "a", "record"]\n'
    )
    with caplog.at_level(logging.WARNING):
        checkpoint = GenerationCheckpoint(tmp_path)
    assert checkpoint.corrupt_lines == 2 and checkpoint.done("a") == good and checkpoint.done("b") is None
    assert "2 corrupt line(s) ignored" in caplog.text
