"""Scoring bars move per model batch: learnability in response tokens, reward-model scoring in rows.

A bar that advanced once per `datasets.map` batch sat at 0/160 for minutes on a real pool; these check
that the bars reach the full total, pass through intermediate counts and show a rate.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from datasets import Dataset
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars, tqdm

from persyn_hub import progress
from persyn_hub.recipe.config import QualityConfig, StudentConfig
from persyn_hub.scoring.learnability.scorer import load_student, score_learnability
from persyn_hub.scoring.quality import score_quality


class EveryUpdate(tqdm):
    """Prints every update (a real run prints at most every 0.1 s), so a test sees each batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "mininterval": 0, "miniters": 1})


@pytest.fixture
def live_bars(monkeypatch):
    """Bars on and printed at every update; datasets' previous bar state restored after."""
    monkeypatch.setattr(progress, "tqdm", EveryUpdate)
    was_disabled = are_progress_bars_disabled()
    enable_progress_bars()
    yield
    if was_disabled:
        disable_progress_bars()


def bar_counts(stderr: str, desc: str, unit: str) -> list[tuple[int, int, str]]:
    """(n, total, rate) of every printed state of the bar named `desc`."""
    rate = rf"([?\d.]+) ?(?:{re.escape(unit)}/s|s/{re.escape(unit)})"
    pattern = re.escape(desc) + r":[^\r\n]*?(\d+)/(\d+) \[[^\]]*?, *" + rate
    return [(int(n), int(total), rate) for n, total, rate in re.findall(pattern, stderr)]


def test_learnability_bar_counts_response_tokens_per_batch(capsys, live_bars, asdiv_prompts):
    rows = []
    for index, row in enumerate(asdiv_prompts.select(range(3))):
        base = {k: row[k] for k in ("prompt_id", "messages")}
        rows.append({**base, "response": f"The answer is {row['answer']}.", "error": None})
        rows.append({**base, "response": "Let me think. " * (index + 4), "error": None})
    rows.append({**rows[0], "response": None, "error": "failed"})  # not scored, not counted
    rows.append(  # a prompt no other row shares: the plain (full-row) path
        {
            "prompt_id": "lone",
            "messages": [{"role": "user", "content": "2+3?"}],
            "response": "5",
            "error": None,
        }
    )
    pool = Dataset.from_list(rows)
    student = StudentConfig(dtype="float32", batch_tokens=96)  # several model batches
    model, tokenizer = load_student(student)
    capsys.readouterr()
    scored = score_learnability(pool, student, model=model, tokenizer=tokenizer, in_process=True)
    err = capsys.readouterr().err
    total = sum(n for n in scored["num_response_tokens"] if n)
    states = bar_counts(err, "Scoring learnability", "tok")
    assert states, err[-2000:]
    assert {t for _, t, _ in states} == {total}
    assert states[-1][0] == total and states[-1][2] != "?"
    assert len({n for n, _, _ in states if 0 < n < total}) >= 2  # it moved batch by batch
    assert not are_progress_bars_disabled()  # datasets' own bars are back


def test_reward_model_bar_counts_rows_per_batch(capsys, live_bars, tmp_path, smollm2_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")  # a tiny untrained reward model
    tokenizer.save_pretrained(tmp_path / "rm")
    messages = [{"role": "user", "content": "What is 2+2?"}]
    rows = [{"messages": messages, "response": f"It is {k}.", "error": None} for k in range(5)]
    rows.insert(2, {"messages": messages, "response": None, "error": "failed"})  # not counted
    quality = QualityConfig(
        kind="reward_model", reward_model=str(tmp_path / "rm"), batch_size=2, dtype="float32"
    )
    capsys.readouterr()
    scored = score_quality(Dataset.from_list(rows), quality)
    err = capsys.readouterr().err
    assert sum(q is not None for q in scored["quality"]) == 5
    states = bar_counts(err, "Scoring with the reward model", "row")
    assert states, err[-2000:]
    assert {t for _, t, _ in states} == {5}
    assert states[-1][0] == 5 and states[-1][2] != "?"
    assert {n for n, _, _ in states if 0 < n < 5} == {2, 3}  # per map batch of 2 rows (one failed)
    assert not are_progress_bars_disabled()
