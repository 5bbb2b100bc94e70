"""A launch's attempts, its run lock and its shared output.dir, on real launches and real locks.

- attempt: `torchrun --max-restarts 1` restarts every rank on the SAME store after a rank died or failed;
  the second attempt must not read the first one's chunk claims, signals or abort, and resumes from
  output.dir like a restart by hand. The ranks run the real `connect()` and `StageRunner` on cheap
  synthetic stages (the full recipe under the same restart is `tests/test_launch.py`).
- a non-main rank that fails while loading a finished stage stops the others at once, not after
  `launch.timeout`.
- stale_lock: `output.dir/.persyn.lock` held by a holder on another host that stopped beating is taken
  over after `launch.timeout`, with a warning naming it; a live run on this host is refused, even with
  `--break-lock`; `persyn run --break-lock` takes a just-crashed holder's lock at once.
- shared_filesystem: a rank whose output.dir is a folder of its own (started in another directory with
  the same relative `--output.dir`, as on a node-local disk) stops every rank with one line naming its
  host and `output.dir`, exit 2, before any stage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk
from launch_driver import driver_in, error_lines, start_ranks
from servers import free_port

from persyn_hub.pipeline.launch import Launch
from persyn_hub.pipeline.run_lock import HOST, OWNER, RunLockedError, run_lock
from persyn_hub.pipeline.shared_dir import TOKEN

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "recipes" / "demo" / "task-mix-smollm2.yaml"
ASDIV_DEMO = ROOT / "recipes" / "demo" / "asdiv-smollm2.yaml"
LOCK_TIMEOUT = 3.0


def squares(run_dir: Path) -> list[int]:
    data = load_from_disk(str(next((run_dir / "stages").glob("square-*")) / "data"))
    assert data["prompt_id"] == [f"p{i:03d}" for i in range(24)]
    return data["y"]


@pytest.mark.parametrize("scenario", ["kill-once", "fail-once"])
def test_a_torchrun_restart_is_a_new_attempt_that_ignores_the_dead_attempts_keys(tmp_path, scenario):
    """Attempt 1: rank 1 is SIGKILLed (or fails, writing the abort) in its first chunk, after rank 0 claimed
    some. torchrun restarts both ranks on the same store: attempt 2 claims every chunk afresh (those on disk
    are reused), never sees attempt 1's abort, and finishes."""
    driver = driver_in(tmp_path)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
        "--monitor-interval", "0.5", "--master_port", str(free_port()), str(driver), scenario,
        str(tmp_path / "run"),
    ]  # fmt: skip
    environment = {**os.environ, "PERSYN_TEST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert (tmp_path / "run.first-attempt-failed").read_text() == "0"  # in torchrun's first attempt
    assert f"rank 1 {scenario} in chunk" in output
    assert "rank 0 attempt 1 of launch" in output and "rank 0 attempt 2 of launch" in output
    launches = {
        line.split()[-1] for line in output.splitlines() if " attempt " in line and "of launch" in line
    }
    assert len(launches) == 1, launches  # one launch, two attempts
    assert "rank 0 finished" in output and "rank 1 finished" in output
    assert squares(tmp_path / "run") == [x**2 for x in range(24)]


def finish_all(processes: list[subprocess.Popen], limit: float) -> list[tuple[int, str]]:
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=limit)
            results.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def test_a_rank_that_fails_loading_a_finished_stage_aborts_the_others_at_once(tmp_path):
    driver = driver_in(tmp_path)
    command = [sys.executable, str(driver), "fail-load", str(tmp_path / "run")]
    started = time.monotonic()
    processes = start_ranks(command, [tmp_path, tmp_path], PERSYN_TEST_TIMEOUT="240")
    (code, output), (other_code, other_output) = finish_all(processes, 200)
    seconds = time.monotonic() - started
    assert code == 2 and other_code != 0, output + other_output
    (line,) = error_lines(output)
    assert "stage slow: rank 1 failed: OSError: input/output error reading stage slow" in line, line
    assert "input/output error" in other_output
    assert seconds < 120  # not the 240 s liveness timeout: rank 1 wrote the abort


# -- the run lock ------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from filelock import FileLock

    run_dir, mode = Path(sys.argv[1]), sys.argv[2]
    lock = FileLock(str(run_dir / ".persyn.lock"))
    lock.acquire()  # a shared filesystem that keeps the lock of a crashed node held
    record = {"host": "node-b", "pid": 4242, "launch": "", "attempt": 1, "beats": 1, "token": "b",
              "heartbeat": time.time() - (3600 if mode == "dead" else 0)}
    (run_dir / ".persyn.lock.owner").write_text(json.dumps(record))
    print("held", flush=True)
    while True:
        time.sleep(0.2)
        if mode == "beating":  # a live run on node-b
            record["heartbeat"], record["beats"] = time.time(), record["beats"] + 1
            (run_dir / ".persyn.lock.owner").write_text(json.dumps(record))
    """
)


def hold(run_dir: Path, mode: str) -> subprocess.Popen:
    """A process holding the lock with an owner file naming host node-b: `dead` (its last beat an hour
    ago), `silent` (a beat just now, then none: it just crashed) or `beating`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir.parent / "holder.py"
    script.write_text(HOLDER)
    process = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), mode], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


@pytest.mark.parametrize("mode", ["dead", "silent"])
def test_a_stale_lock_of_another_host_is_taken_over_naming_the_old_holder(tmp_path, caplog, mode):
    run_dir = tmp_path / "run"
    holder = hold(run_dir, mode)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="persyn_hub"):
            with run_lock(run_dir, Launch(timeout=LOCK_TIMEOUT)):
                seconds = time.monotonic() - started
                owner = json.loads((run_dir / OWNER).read_text())
    finally:
        holder.kill()
        holder.communicate()
    assert owner["host"] == HOST and owner["pid"] == os.getpid() and owner["heartbeat"] > 0
    (line,) = warnings_of(caplog)
    assert "taking over the run lock of persyn run (pid 4242 on host node-b" in line, line
    if mode == "dead":
        assert re.search(r"it has not beaten for 36\d\d s \(launch.timeout 3 s\)", line), line
        assert seconds < LOCK_TIMEOUT  # at once
    else:
        assert "it has not beaten for launch.timeout (3 s)" in line, line
        assert LOCK_TIMEOUT - 1.0 <= seconds < 3 * LOCK_TIMEOUT + 10  # after launch.timeout, not before
    assert not (run_dir / OWNER).exists()  # released


def test_a_stale_lock_check_refuses_a_live_run_on_this_host_even_with_break_lock(tmp_path, caplog):
    """The holder is a real `run_lock` in another process, beating; once it is SIGKILLed, the lock it left
    (its owner file names a pid that is gone) is taken over."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = (
        "import sys, time; from pathlib import Path; from persyn_hub.pipeline.launch import Launch\n"
        "from persyn_hub.pipeline.run_lock import run_lock\n"
        "with run_lock(Path(sys.argv[1]), Launch(timeout=1.0)):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    live = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "held"
        time.sleep(2.0)  # past its launch.timeout: a live run is refused whatever the clock says
        for break_lock in (False, True):
            with pytest.raises(RunLockedError) as refused:
                with run_lock(run_dir, Launch(timeout=1.0), break_lock=break_lock):
                    pass
            message = str(refused.value)
            assert f"is in use by persyn run (pid {live.pid} on host {HOST}" in message, message
            assert (
                ", which is alive on this host. Wait" in message
                and "--output.dir to another directory" in message
            )
    finally:
        live.send_signal(signal.SIGKILL)
        live.communicate()
    with caplog.at_level(logging.WARNING, logger="persyn_hub"), run_lock(run_dir, Launch(timeout=1.0)):
        pass
    (line,) = warnings_of(caplog)
    assert f"(pid {live.pid} on host {HOST}" in line and "its process is gone" in line, line


def test_a_stale_lock_check_refuses_a_holder_on_another_host_that_still_beats(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold(run_dir, "beating")
    try:
        started = time.monotonic()
        with pytest.raises(RunLockedError) as refused:
            with run_lock(run_dir, Launch(timeout=LOCK_TIMEOUT)):
                pass
        seconds = time.monotonic() - started
    finally:
        holder.kill()
        holder.communicate()
    message = str(refused.value)
    assert "is in use by persyn run (pid 4242 on host node-b" in message and "--break-lock" in message
    assert seconds < 3 * LOCK_TIMEOUT  # refused at its first beat seen


def test_stale_lock_persyn_run_break_lock_takes_a_just_crashed_holders_lock_at_once(tmp_path):
    """A node crashed a moment ago (its last beat is fresh): without --break-lock a new run would wait
    launch.timeout (600 s) for the beat to go stale; with it, it takes the lock over with a warning and
    runs (here into a prompts file without rows, one stage past the lock)."""
    run_dir = tmp_path / "run"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("")
    values = yaml.safe_load(ASDIV_DEMO.read_text())
    values["prompts"] = {"source": str(prompts), "drop_eval_items": False}
    values["quality"] = {"kind": "instruction_following"}
    values["output"] = {"dir": str(run_dir)}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    holder = hold(run_dir, "silent")
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "persyn_hub.cli", "run", str(recipe), "--break-lock"],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
        )  # fmt: skip
        seconds = time.monotonic() - started
    finally:
        holder.kill()
        holder.communicate()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "taking over the run lock of persyn run (pid 4242 on host node-b" in result.stderr
    assert "--break-lock" in result.stderr
    (line,) = error_lines(result.stderr)
    assert f"prompts.source: {str(prompts)!r} has no rows" in line, line  # it ran past the lock
    assert seconds < 200  # not launch.timeout (600 s)
    assert not (run_dir / OWNER).exists()


# -- the shared output.dir ---------------------------------------------------------------------------


def test_shared_filesystem_a_rank_that_does_not_see_output_dir_stops_every_rank_naming_its_host(tmp_path):
    """shared_filesystem: each node runs the same command, `--output.dir run`, from a directory of its own:
    rank 1's `run` is not rank 0's. Rank 1 names its host and output.dir; every rank exits 2 at once."""
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir()
    node1.mkdir()
    command = [
        sys.executable, "-m", "persyn_hub.cli", "run", str(DEMO), "--output.dir", "run",
        "--launch.timeout", "20",
    ]  # fmt: skip
    started = time.monotonic()
    results = finish_all(start_ranks(command, [node0, node1]), 240)
    seconds = time.monotonic() - started
    expected = (
        f"launch: rank 1 on host {HOST} does not see rank 0's output.dir 'run' (rank 0 on host {HOST} "
        f"wrote {TOKEN} there; here, after 20 s, there is no such folder): output.dir must be on a "
        "filesystem every node sees"
    )
    for code, output in results:
        assert code == 2, output[-3000:]
        (line,) = error_lines(output)
        assert line.startswith(f"persyn: error: {expected}"), line
        assert "Traceback" not in output
    assert seconds < 150  # the 20 s grace and two start-ups, no stage, no model load
    assert (node0 / "run" / TOKEN).is_file() and not (node1 / "run").exists()
    assert not (node0 / "run" / OWNER).exists() and not list((node0 / "run").glob("stages"))
