"""The whole run under a launch, in bf16: N processes give the 1-process data set, labels, routing and router,
row for row; a launch SIGKILLed whole mid-stage resumes with another process count without losing, repeating or
changing a row; and a launch that torchrun restarts after a rank died (a second attempt on the same store)
finishes to the same run.

Every run here is bf16 (student and both LLM teachers): bf16 greedy decoding and scoring follow batch
shapes, so equality holds only because the sharded stages are computed in chunks that do not depend on the
process count (see `pipeline/runner.py`). On a CPU without native bf16 it is slower, with the same numerics.
The 2-process launch uses the repository's own `recipes/accelerate_configs/multi_gpu.yaml`, whose
`mixed_precision: bf16` reaches the processes as ACCELERATE_MIXED_PRECISION: the router must not train
under it. `accelerate launch` starts the ranks through torch's elastic launcher, on CPUs too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TASK_MIX_RECIPE, override_args
from datasets import load_from_disk
from servers import free_port

ROOT = Path(__file__).parents[1]
MULTI_GPU_CONFIG = ROOT / "recipes" / "accelerate_configs" / "multi_gpu.yaml"
LAUNCH = {
    **{f"prompts.tasks.{i}.size": 3 for i in range(8)},
    "labeling.num_prompts": 12,
    "student.dtype": "bfloat16",
    "teachers.0.dtype": "bfloat16",
    "teachers.1.dtype": "bfloat16",
    "teachers.0.generation.max_new_tokens": 16,
    "teachers.1.generation.max_new_tokens": 16,
    "router.num_train_epochs": 2,
    "router.max_length": 48,
    "launch.chunk_rows": 2,  # several chunks per stage, so every process gets some
    "launch.timeout": 120,
}
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import psutil
    from persyn_hub.generation import checkpoint

    write = checkpoint.GenerationCheckpoint.write
    once = os.environ.get("PERSYN_TEST_KILL_ONCE")  # a marker file: kill in the first attempt only

    def write_then_die(self, records):  # rank 1 dies mid-chunk, its first answers checkpointed
        write(self, records)
        if os.environ.get("RANK") != "1" or (once and os.path.exists(once)):
            return
        if once:
            open(once, "w").close()
        if os.environ.get("PERSYN_TEST_KILL_LAUNCH"):  # the whole launch at once: its launcher, every rank
            launcher = psutil.Process().parent()
            for process in [launcher, *launcher.children(recursive=True)]:
                if process.pid != os.getpid():
                    process.kill()
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.GenerationCheckpoint.write = write_then_die
    from persyn_hub.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)
COMPARED = (
    "prompt_id",
    "teacher",
    "messages",
    "response",
    "learnability",
    "quality",
    "reward",
    "selected_by",
)


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ACCELERATE_USE_CPU": "true",
    }


def persyn_run(
    output_dir: Path, *, processes: int, script: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    arguments = ["run", TASK_MIX_RECIPE, *override_args({**LAUNCH, "output.dir": str(output_dir)})]
    if processes == 1:
        command = [sys.executable, "-m", "persyn_hub.cli", *arguments]
    else:
        target = [str(script)] if script else ["-m", "persyn_hub.cli"]
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTI_GPU_CONFIG),
            "--num_processes", str(processes), "--main_process_port", str(free_port()), *target, *arguments,
        ]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env={**environment(), **env}, timeout=1500
    )


def rows(run_dir: Path, artifact: str) -> list[dict]:
    data = load_from_disk(str(run_dir / "artifacts" / artifact))
    columns = [c for c in (*COMPARED, "router_scores") if c in data.column_names]
    return sorted(
        data.select_columns(columns).to_list(), key=lambda row: (row["prompt_id"], row.get("teacher") or "")
    )


def assert_same_run(run_dir: Path, reference: Path) -> None:
    for artifact in ("labels", "routing", "dataset"):
        assert rows(run_dir, artifact) == rows(reference, artifact), artifact
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert summary["teacher_counts"] == expected["teacher_counts"]
    assert summary["router"]["reward_recovered"] == expected["router"]["reward_recovered"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("launch") / "one"
    result = persyn_run(run_dir, processes=1)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_two_processes_under_the_multi_gpu_config_give_the_one_process_run_in_bf16(one_process, tmp_path):
    run_dir = tmp_path / "two"
    result = persyn_run(run_dir, processes=2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("PerSyn run 'task-mix-smollm2' finished") == 1  # one summary, from rank 0
    assert_same_run(run_dir, one_process)  # answers, learnability, quality, reward, router scores: exact
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["generations_made"]
        == json.loads((one_process / "summary.json").read_text())["generations_made"]
    )
    rank_log = (run_dir / "run.rank-1.log").read_text()
    assert "rank 1 computes chunk" in rank_log  # the work was shared
    router_card = (run_dir / "artifacts" / "router" / "README.md").read_text()
    assert "float32 (no mixed precision)" in router_card  # not the launch config's bf16
    assert not list(run_dir.rglob("chunks"))  # the chunks were joined and cleaned up
    assert not (run_dir / ".persyn.lock.owner").exists()


@pytest.mark.slow
def test_a_four_process_launch_killed_mid_stage_resumes_with_two_and_with_one_process(one_process, tmp_path):
    killed_dir = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    killed = persyn_run(killed_dir, processes=4, script=script, PERSYN_TEST_KILL_LAUNCH="1")
    assert killed.returncode == -signal.SIGKILL  # the whole launch, launcher and ranks, SIGKILLed at once
    assert (killed_dir / ".persyn.lock.owner").is_file()  # the dead run's lock: no file is removed by hand
    checkpointed = checkpointed_rows(killed_dir)
    assert checkpointed, "rank 1 died before checkpointing a row"
    finished_chunks = list(killed_dir.glob("stages/*/chunks/*.done"))
    assert all(json.loads(m.read_text())["processes"] == 4 for m in finished_chunks)

    for processes in (2, 1):
        run_dir = tmp_path / f"resumed-{processes}"
        shutil.copytree(killed_dir, run_dir)
        resumed = persyn_run(run_dir, processes=processes)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
        assert "taking over the run lock of persyn run (pid" in resumed.stderr
        assert "its process is gone" in resumed.stderr
        assert_same_run(run_dir, one_process)
        summary = json.loads((run_dir / "summary.json").read_text())
        for teacher in ("smollm2-135m-instruct", "gemma-3-270m"):
            labeling = {p["phase"]: p for p in summary["generation"][teacher]}["labeling"]
            # every labeled row once over both launches: asked then or now, or reused from a checkpoint
            assert labeling["requests"] + labeling["reused"] == summary["labeled_prompts"], (
                teacher,
                labeling,
            )
        generated_now = checkpointed_rows(run_dir, skip_parts=parts(killed_dir))
        assert generated_now, "the resume had rows left to generate"
        asked_again = checkpointed & generated_now
        assert not asked_again, f"rows answered before the kill were generated again: {asked_again}"


@pytest.mark.slow
def test_a_torchrun_restart_attempt_resumes_to_the_one_process_run(one_process, tmp_path):
    """`torchrun --max-restarts 1`: rank 1 is SIGKILLed once, mid label generation, and torchrun restarts
    both ranks on the same store. The second attempt reads none of the first one's chunk claims, abort or
    signals, takes over its run lock, and finishes from what output.dir holds, as a restart by hand does."""
    run_dir = tmp_path / "restarted"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    marker = tmp_path / "killed-once"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
        "--monitor-interval", "0.5", "--master_port", str(free_port()), str(script), "run", TASK_MIX_RECIPE,
        *override_args({**LAUNCH, "output.dir": str(run_dir)}),
    ]  # fmt: skip
    environment_once = {**environment(), "PERSYN_TEST_KILL_ONCE": str(marker)}
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=environment_once, timeout=1500
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert marker.exists()  # rank 1 was killed in the first attempt
    assert "attempt 2 on this rendezvous store" in output
    assert "taking over the run lock" in output and "attempt 1 of this same launch" in output
    assert_same_run(run_dir, one_process)
    assert not (run_dir / ".persyn.lock.owner").exists()


def parts(run_dir: Path) -> set[str]:
    return {part.name for part in run_dir.glob("stages/rows--*/part-*.jsonl")}


def checkpointed_rows(run_dir: Path, skip_parts: set[str] = frozenset()) -> set[tuple[str, str]]:
    """(teacher's checkpoint folder, prompt id) of every answered row in the row checkpoints' part files
    (each process of each launch appends to a part file of its own), less the parts in `skip_parts`."""
    rows = set()
    for part in run_dir.glob("stages/rows--*/part-*.jsonl"):
        if part.name in skip_parts:
            continue
        for line in part.read_text().splitlines():
            record = json.loads(line) if line.endswith("}") else None
            if record and not record.get("error"):
                rows.add((part.parent.name, record["prompt_id"]))
    return rows
