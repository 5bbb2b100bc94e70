"""The whole run under a 2-process launch with a vLLM teacher, on a faked 2-GPU node: each engine sees only
its own GPU(s), a `tensor_parallel_size: 2` teacher runs one engine over both GPUs in rank 0, and the data
set equals a 1-process run's.

vLLM cannot run here: the stand-in `vllm` of `tests/stand_ins` answers from the prompt text (the teacher's
model stays the bundled SmolLM2, whose tokenizer renders the chat prompts) and records what every engine
saw when it started. `CUDA_VISIBLE_DEVICES="0,1"` is the node's GPU list the launcher would set; torch's
CPU build ignores it, so everything else runs on the CPU as in `test_launch.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import TASK_MIX_RECIPE, override_args
from servers import free_port
from test_launch import LAUNCH, rows

ROOT = Path(__file__).parents[1]
STAND_INS = Path(__file__).parent / "stand_ins"
VLLM_TEACHER = "smollm2-135m-instruct"
CHUNK_ROWS = 2
"""Small chunks, so both processes claim some of the 12 labeled prompts."""


def persyn_run_with_vllm(
    run_dir: Path, record: Path, *, processes: int, size: int
) -> subprocess.CompletedProcess:
    """`persyn run` of the shrunk demo recipe with teacher 0 on vLLM (`tensor_parallel_size: size`)."""
    overrides = {
        **LAUNCH,
        "output.dir": str(run_dir),
        "launch.chunk_rows": CHUNK_ROWS,
        "teachers.0.backend": "vllm",
        "teachers.0.tensor_parallel_size": size,
    }
    arguments = ["-m", "persyn_hub.cli", "run", TASK_MIX_RECIPE, *override_args(overrides)]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        arguments = [*launcher, "--master_port", str(free_port()), *arguments]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STAND_INS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PERSYN_VLLM_RECORD": str(record),
        "PERSYN_VLLM_DELAY": "1.0" if processes > 1 else "0",  # only processes that share need it
        "CUDA_VISIBLE_DEVICES": "0,1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, cwd=ROOT, env=environment, timeout=1800
    )


def events(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def engine_ranks(recorded: list[dict]) -> dict[str, str]:
    """Engine id -> the rank that used it (the engine itself saw no rank: those variables are hidden)."""
    return {e["engine"]: e["rank"] for e in recorded if e["event"] in ("chat", "generate")}


def asked(run_dir: Path) -> int:
    """Rows the vLLM teacher was asked for, over all phases and processes, from the run's summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return sum(phase["requests"] for phase in summary["generation"][VLLM_TEACHER])


def check_every_row_asked_once(run_dir: Path, recorded: list[dict]) -> None:
    prompts = Counter(p for e in recorded if e["event"] == "chat" for p in e["prompts"])
    assert prompts and max(prompts.values()) == 1  # no prompt was asked twice, by either process
    assert sum(prompts.values()) == asked(run_dir)


def check_engines_released(recorded: list[dict]) -> None:
    started = [e["engine"] for e in recorded if e["event"] == "engine"]
    shut = [e["engine"] for e in recorded if e["event"] == "shutdown"]
    assert sorted(started) == sorted(shut)  # every engine was shut down (at its stage's end), once


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("vllm-launch") / "one"
    record = run_dir.parent / "one.jsonl"
    result = persyn_run_with_vllm(run_dir, record, processes=1, size=1)
    assert result.returncode == 0, result.stderr[-4000:]
    recorded = events(record)
    assert {e["environment"]["CUDA_VISIBLE_DEVICES"] for e in recorded if e["event"] == "engine"} == {"0"}
    check_every_row_asked_once(run_dir, recorded)
    return run_dir


@pytest.mark.slow
def test_each_process_runs_its_engine_on_its_own_gpu(one_process, tmp_path):
    record = tmp_path / "vllm.jsonl"
    result = persyn_run_with_vllm(tmp_path / "run", record, processes=2, size=1)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    recorded = events(record)
    ranks = engine_ranks(recorded)
    engines = [e for e in recorded if e["event"] == "engine"]
    placed = {(ranks.get(e["engine"]), e["environment"]["CUDA_VISIBLE_DEVICES"]) for e in engines}
    assert placed == {("0", "0"), ("1", "1")}  # both processes generated, each on its own GPU
    assert all(e["tensor_parallel_size"] == 1 for e in engines)
    check_every_row_asked_once(tmp_path / "run", recorded)
    check_engines_released(recorded)
    for artifact in ("dataset", "labels", "routing"):
        assert rows(tmp_path / "run", artifact) == rows(one_process, artifact), artifact


@pytest.mark.slow
def test_a_two_gpu_engine_runs_once_in_rank_0_over_both_gpus(one_process, tmp_path):
    record = tmp_path / "vllm.jsonl"
    result = persyn_run_with_vllm(tmp_path / "run", record, processes=2, size=2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    recorded = events(record)
    engines = [e for e in recorded if e["event"] == "engine"]
    assert {e["environment"]["CUDA_VISIBLE_DEVICES"] for e in engines} == {"0,1"}
    assert {e["tensor_parallel_size"] for e in engines} == {2}
    assert set(engine_ranks(recorded).values()) == {"0"}  # rank 1 leads no engine and asked nothing
    assert len({e["pid"] for e in engines}) == 1
    check_every_row_asked_once(tmp_path / "run", recorded)
    check_engines_released(recorded)
    for artifact in ("dataset", "labels", "routing"):
        assert rows(tmp_path / "run", artifact) == rows(one_process, artifact), artifact
