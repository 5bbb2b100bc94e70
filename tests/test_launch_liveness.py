"""Liveness of a launch: a rank that dies, is frozen or fails ends the others within `launch.timeout`, and a
rank whose main thread blocks while it lives ends them within `launch.stall_timeout`, with one line naming
the stage and the rank; a long main-process stage that makes progress does not.

Each test starts the ranks of a launch itself, as `srun` starts one task per node: every process gets
`RANK`, `WORLD_SIZE`, `LOCAL_RANK` and the rendezvous address, and no launcher agent watches them, so
nothing but the processes' own coordination (the rendezvous store, heartbeats) can notice a dead or
frozen peer. The ranks run the real `StageRunner` and `connect()` on cheap synthetic stages (a
main-process stage, then a chunked one), so a test takes seconds, not a model load. One test repeats
the hang under torch's elastic launcher (`torchrun`, what `accelerate launch` uses), whose agent hosts
the store.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from datasets import load_from_disk
from launch_driver import driver_in, error_lines, start_ranks
from servers import free_port

TIMEOUT = 6.0
STALL = 5.0


def start_launch(tmp_path: Path, scenario: str, count: int = 2, **env: str) -> list[subprocess.Popen]:
    """`count` processes of one launch, started the way `srun` starts them (no agent watching)."""
    command = [sys.executable, str(driver_in(tmp_path)), scenario, str(tmp_path / "run")]
    return start_ranks(command, [tmp_path] * count, **{"PERSYN_TEST_TIMEOUT": str(TIMEOUT), **env})


def finish(process: subprocess.Popen, limit: float) -> tuple[int, str, float]:
    started = time.monotonic()
    output, _ = process.communicate(timeout=limit)
    return process.returncode, output, time.monotonic() - started


def kill_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.communicate()


@pytest.mark.parametrize("scenario", ["kill", "stop"])
def test_a_dead_or_hung_rank_ends_the_launch_within_the_timeout_naming_it_and_the_stage(tmp_path, scenario):
    processes = start_launch(tmp_path, scenario)
    try:
        code, output, seconds = finish(processes[0], TIMEOUT + 60)
    finally:
        kill_all(processes)
    assert code == 2, output
    (line,) = error_lines(output)
    assert "stage square" in line and "rank 1 did not arrive" in line, line
    assert "launch.timeout" in line and "run the same command again" in line
    assert seconds < TIMEOUT + 30
    assert "Traceback" not in output
    # every chunk rank 0 claimed is on disk, kept for the resume
    assert list((tmp_path / "run" / "stages").glob("square-*/chunks/*.done"))


def test_a_rank_that_fails_stops_the_others_at_once_with_its_message(tmp_path):
    processes = start_launch(tmp_path, "fail", PERSYN_TEST_TIMEOUT="120")
    try:
        code, output, seconds = finish(processes[0], 60)
        other_code, other_output, _ = finish(processes[1], 30)
    finally:
        kill_all(processes)
    assert code == 2 and other_code != 0, output + other_output
    (line,) = error_lines(output)
    assert "stage square: rank 1 failed: ValueError: row p" in line and "is malformed" in line, line
    assert seconds < 60  # not the 120 s liveness timeout: the failure was announced


def test_the_main_process_dying_ends_the_others_within_the_timeout(tmp_path):
    processes = start_launch(tmp_path, "die-main", PERSYN_TEST_VICTIM="0")
    try:
        code, output, seconds = finish(processes[1], TIMEOUT + 60)
    finally:
        kill_all(processes)
    assert code == 2, output
    (line,) = error_lines(output)
    assert "stage slow" in line and "rank 0" in line, line
    assert seconds < TIMEOUT + 30


def test_a_main_process_stage_with_progress_outlasts_the_timeout_and_stall_timeout(tmp_path):
    """The main process works 15 s, 3 x `launch.stall_timeout`, advancing a progress bar; the other waits."""
    slow = str(2.5 * TIMEOUT)
    processes = start_launch(tmp_path, "slow", PERSYN_TEST_SLOW=slow, PERSYN_TEST_STALL=str(STALL))
    try:
        results = [finish(process, 120) for process in processes]
    finally:
        kill_all(processes)
    for code, output, _ in results:
        assert code == 0, output
    # it did wait, longer than both timeouts, seeing rank 0's progress through the store, and went on
    assert re.search(r"waits for rank\(s\) \[0\] \(rank 0 in stage slow \(\d+ done\)\)", results[1][1])
    data = load_from_disk(str(next((tmp_path / "run" / "stages").glob("square-*")) / "data"))
    assert data["y"] == [x**2 for x in range(24)]


@pytest.mark.parametrize(("victim", "stage"), [("1", "square"), ("0", "slow")])
def test_a_stalled_rank_ends_the_launch_naming_its_stage_and_frame(tmp_path, victim, stage):
    """The victim's main thread blocks in a read that never returns (the GIL released, as in a stuck CUDA
    sync or a hung mount): its heartbeat beats on, yet within `stall_timeout` every rank exits 2 with one
    line naming it, its stage and the frame, and the victim's log shows the blocked stack. Rank 1 stalls
    in a chunk while rank 0 waits for it; rank 0 (which hosts the store) stalls in a main-process stage."""
    started = time.monotonic()
    processes = start_launch(tmp_path, "stall", PERSYN_TEST_VICTIM=victim, PERSYN_TEST_STALL=str(STALL))
    try:
        results = [finish(process, STALL + 60) for process in processes]
        seconds = time.monotonic() - started  # both ranks have exited (start-up included)
    finally:
        kill_all(processes)
    for code, output, _ in results:
        assert code == 2, output
        (line,) = error_lines(output)
        assert f"stage {stage}: rank {victim} made no progress for" in line, line
        assert "launch.stall_timeout 5 s" in line and "read_a_hung_mount (driver.py:" in line, line
        assert "`os.read(hung, 1)`" in line and "run the same command again" in line, line
        assert "Traceback" not in output
    assert seconds < STALL + 60, seconds
    stalled = results[int(victim)][1]
    assert "The main thread of rank" in stalled and "os.read(hung, 1)" in stalled.split("blocked here")[1]


def test_four_ranks_share_the_chunks_and_give_the_one_process_result(tmp_path):
    processes = start_launch(tmp_path, "plain", count=4)
    try:
        results = [finish(process, 120) for process in processes]
    finally:
        kill_all(processes)
    for code, output, _ in results:
        assert code == 0, output
    data = load_from_disk(str(next((tmp_path / "run" / "stages").glob("square-*")) / "data"))
    assert data["prompt_id"] == [f"p{i:03d}" for i in range(24)]
    assert data["y"] == [x**2 for x in range(24)]


@pytest.mark.slow
def test_a_hung_rank_under_torchrun_ends_the_launch_with_a_line_naming_it(tmp_path):
    """torchrun's agent cannot see a hang; rank 0 names it. Once it has, the frozen rank is thawed so the
    agent's SIGTERM ends it at once (the agent would otherwise wait 30 s before its SIGKILL)."""
    driver = driver_in(tmp_path)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
        str(free_port()), str(driver), "stop", str(tmp_path / "run"),
    ]  # fmt: skip
    environment = {**os.environ, "PERSYN_TEST_TIMEOUT": str(TIMEOUT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
        start_new_session=True,
    )  # fmt: skip
    started = time.monotonic()
    lines: list[str] = []
    named = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("persyn: error:") and "rank 1 did not arrive" in line:
                named.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert named.wait(TIMEOUT + 60), "".join(lines)[-3000:]
        seconds = time.monotonic() - started
        subprocess.run(["pkill", "-CONT", "-f", str(driver)], check=False)
        code = process.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-CONT", "-f", str(driver)], check=False)
        subprocess.run(["pkill", "-KILL", "-f", str(driver)], check=False)
    assert code != 0
    named_lines = [line for line in error_lines("".join(lines)) if "rank 1 did not arrive" in line]
    assert named_lines and all("stage square" in line for line in named_lines), named_lines
    assert seconds < TIMEOUT + 30
