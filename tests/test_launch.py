"""The whole run under `accelerate launch` with two CPU processes: the same data set as one process, and a
rank killed mid-generation resumes without asking any finished row again.

`accelerate launch --multi_gpu --num_processes 2` starts the two ranks through torch's elastic launcher
(on a CPU machine `--cpu` would start ONE process: accelerate 1.15 only spreads CPU runs over MPI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TASK_MIX_RECIPE, override_args
from datasets import load_from_disk

ROOT = Path(__file__).parents[1]
LAUNCH = {
    **{f"prompts.tasks.{i}.size": 3 for i in range(8)},
    "labeling.num_prompts": 12,
    "teachers.0.generation.max_new_tokens": 16,
    "teachers.1.generation.max_new_tokens": 16,
    "router.num_train_epochs": 2,
    "router.max_length": 48,
}
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from persyn_hub.generation import checkpoint

    write = checkpoint.GenerationCheckpoint.write
    written = []

    def write_then_die(self, records):  # rank 1 dies once it has checkpointed a few rows of its own
        records = list(records)
        write(self, records)
        written.extend(r for r in records if not r.get("error"))
        if os.environ.get("RANK") == "1" and len(written) >= int(os.environ["PERSYN_KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.GenerationCheckpoint.write = write_then_die
    from persyn_hub.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ACCELERATE_USE_CPU": "true",
    }


def persyn_run(
    output_dir: Path, *, processes: int, script: Path | None = None, port: int = 29611
) -> subprocess.CompletedProcess:
    arguments = ["run", TASK_MIX_RECIPE, *override_args({**LAUNCH, "output.dir": str(output_dir)})]
    if processes == 1:
        command = [sys.executable, "-m", "persyn_hub.cli", *arguments]
    else:
        target = [str(script)] if script else ["-m", "persyn_hub.cli"]
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            *target, *arguments,
        ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment(), timeout=1500)


def rows(run_dir: Path, artifact: str) -> list[dict]:
    data = load_from_disk(str(run_dir / "artifacts" / artifact))
    columns = [c for c in ("prompt_id", "messages", "teacher", "selected_by") if c in data.column_names]
    return sorted(
        data.select_columns(columns).to_list(), key=lambda row: (row["prompt_id"], row.get("teacher", ""))
    )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("launch") / "one"
    result = persyn_run(run_dir, processes=1)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_two_processes_give_the_same_data_set_as_one(one_process, tmp_path):
    run_dir = tmp_path / "two"
    result = persyn_run(run_dir, processes=2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (
        result.stdout.count("PerSyn run 'task-mix-smollm2' finished") == 1
    )  # one summary, from the main process
    for artifact in ("dataset", "labels", "routing"):
        assert rows(run_dir, artifact) == rows(one_process, artifact), artifact
    summary = json.loads((run_dir / "summary.json").read_text())
    reference = json.loads((one_process / "summary.json").read_text())
    assert (
        summary["generations_made"] == reference["generations_made"]
    )  # every row generated once, across ranks
    assert summary["teacher_counts"] == reference["teacher_counts"]
    assert (run_dir / "run.log").is_file() and (run_dir / "run.rank-1.log").is_file()
    assert "computes its shard" in (run_dir / "run.rank-1.log").read_text()
    assert not list(run_dir.rglob("shards"))  # the parts were joined and cleaned up
    assert not (run_dir / ".persyn.lock.owner").exists()


@pytest.mark.slow
def test_a_rank_killed_mid_generation_resumes_without_asking_finished_rows_again(one_process, tmp_path):
    run_dir = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    environment_kill = {"PERSYN_KILL_AFTER": "3"}
    os.environ.update(environment_kill)
    try:
        killed = persyn_run(run_dir, processes=2, script=script, port=29612)
    finally:
        os.environ.pop("PERSYN_KILL_AFTER")
    assert killed.returncode != 0  # the launcher stopped the whole launch when rank 1 died
    checkpointed = {
        json.loads(line)["prompt_id"]
        for part in run_dir.glob("stages/rows--smollm2-135m-instruct-*/part-*.jsonl")
        for line in part.read_text().splitlines()
        if line.endswith("}")
    }
    assert len(checkpointed) >= 3

    resumed = persyn_run(run_dir, processes=2, port=29613)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    labeling = {p["phase"]: p for p in summary["generation"]["smollm2-135m-instruct"]}["labeling"]
    assert labeling["reused"] >= len(
        checkpointed & set(rows_ids(run_dir))
    )  # nothing checkpointed was asked again
    assert labeling["requests"] + labeling["reused"] == summary["labeled_prompts"]
    for artifact in ("dataset", "labels", "routing"):
        assert rows(run_dir, artifact) == rows(one_process, artifact), artifact


def rows_ids(run_dir: Path) -> list[str]:
    labels = load_from_disk(str(run_dir / "artifacts" / "labels"))
    return [p for p, t in zip(labels["prompt_id"], labels["teacher"]) if t == "smollm2-135m-instruct"]
