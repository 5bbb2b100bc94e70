"""The stage cache: reuse finished stages, never trust half-written ones, report corrupt ones."""

from __future__ import annotations

import shutil

import pytest
from datasets import Dataset

from persyn_hub.stage_cache import CorruptCacheError, StageCache


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


def test_an_incomplete_stage_is_entered_again(tmp_path):
    cache = StageCache(tmp_path)
    runs = []

    def compute(folder):
        runs.append(1)
        return Dataset.from_dict({"error": ["HTTP 503", None]})

    key = cache.key("gen")
    cache.dataset_stage("gen", key, compute, complete=lambda d: all(e is None for e in d["error"]))
    cache.dataset_stage("gen", key, compute, complete=lambda d: all(e is None for e in d["error"]))
    assert len(runs) == 2, "a stage with failed rows must not be marked finished"


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
