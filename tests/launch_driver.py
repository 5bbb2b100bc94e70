"""One rank of a two-stage launch, for the launch tests (test_launch_liveness.py, test_launch_attempts.py).

Run as a script (`python driver.py SCENARIO RUN_DIR`, copied into the test's folder so a test can find
its own processes by path): the real `connect()` and `StageRunner` on cheap synthetic stages, a
main-process stage `slow` then a chunked stage `square` (24 rows, 3 per chunk), with a fault per
scenario on the victim rank (`PERSYN_TEST_VICTIM`, default 1):

- kill / stop / fail: SIGKILL, SIGSTOP or a ValueError in its first `square` chunk;
- kill-once / fail-once: the same, in the first attempt only (a marker file beside RUN_DIR), for restarts;
- die-main: SIGKILL inside `slow` while the others wait; stall: a read that never returns (the GIL
  released) in the victim's stage; fail-load: reading a finished stage fails on the victim;
- slow: `slow` works PERSYN_TEST_SLOW seconds advancing a progress bar; plain: no fault.

As a module: `start_ranks` starts the processes of one launch the way `srun` starts them, and
`error_lines` reads the one-line errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def driver_in(folder: Path) -> Path:
    """A copy of this script in `folder` (a path no other test's processes have)."""
    copy = folder / "driver.py"
    shutil.copy(__file__, copy)
    return copy


def start_ranks(command: list[str], cwds: list[Path], **env: str) -> list[subprocess.Popen]:
    """One process per entry of `cwds`, started the way `srun` starts a launch: no agent watching, each
    with its own RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; output merged into stdout."""
    from servers import free_port  # tests/ is on the path of the tests, not of the copied script

    port, count = free_port(), len(cwds)
    return [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env={
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": str(count),
                "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(count),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(ROOT),
                **env,
            },  # fmt: skip
        )
        for rank, cwd in enumerate(cwds)
    ]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("persyn: error:")]


def main(scenario: str, root: str) -> None:
    import logging
    import signal
    import time

    from datasets import Dataset

    from persyn_hub.errors import PersynError
    from persyn_hub.pipeline.cache import StageCache
    from persyn_hub.pipeline.launch import connect
    from persyn_hub.pipeline.runner import Stage, StageRunner
    from persyn_hub.progress import progress_bar

    logging.basicConfig(level=logging.INFO)
    rank = int(os.environ["RANK"])
    victim = rank == int(os.environ.get("PERSYN_TEST_VICTIM", "1"))
    once = Path(root + ".first-attempt-failed")

    def read_a_hung_mount() -> None:
        hung, _ = os.pipe()  # nothing is ever written: the read blocks in the kernel with the GIL released
        os.read(hung, 1)

    def rows(context):
        return Dataset.from_dict({"prompt_id": [f"p{i:03d}" for i in range(24)], "x": list(range(24))})

    def slow(context):
        if scenario == "die-main" and victim:
            time.sleep(2)  # the others are waiting for this stage by now
            os.kill(os.getpid(), signal.SIGKILL)
        if scenario == "stall" and victim:
            read_a_hung_mount()
        steps = int(float(os.environ.get("PERSYN_TEST_SLOW", "0")) / 0.5)
        with progress_bar(steps, "slow", "step") as bar:  # a long main-process stage that makes progress
            for _ in range(steps):
                time.sleep(0.5)
                bar.update(1)
        return Dataset.from_dict({"z": [1]})

    def square(context):
        first_attempt = scenario in ("kill-once", "fail-once") and not once.exists()
        if victim and (scenario in ("kill", "stop", "fail") or first_attempt):
            if first_attempt:
                once.write_text(os.environ.get("TORCHELASTIC_RESTART_COUNT", ""))
            print(f"rank {rank} {scenario} in chunk {context.chunk.index}", flush=True)
            if scenario.startswith("kill"):
                os.kill(os.getpid(), signal.SIGKILL)
            if scenario == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            raise ValueError(f"row {context.rows['prompt_id'][0]} is malformed")
        if victim and scenario == "stall":
            read_a_hung_mount()
        time.sleep(0.2)
        return context.rows.map(lambda row: {"y": row["x"] ** 2})

    if scenario == "fail-load" and victim:  # this rank's filesystem fails to read a finished stage

        def unreadable(self, name, key, **kwargs):
            raise OSError(f"input/output error reading stage {name}")

        StageCache.load_finished = unreadable

    stages = [
        Stage("slow", slow, identity=1),
        Stage("square", square, inputs=("slow",), identity=1, parallel="chunks", rows=rows),
    ]
    try:
        timeout, stall = os.environ["PERSYN_TEST_TIMEOUT"], os.environ.get("PERSYN_TEST_STALL", "1800")
        launch = connect(float(timeout), float(stall))
        print(f"rank {rank} attempt {launch.attempt} of launch {launch.id}", flush=True)
        runner = StageRunner(StageCache(root), launch=launch, chunk_rows=3)
        for stage in stages:
            runner.run(stage)
        launch.finish()
    except PersynError as error:
        print(f"persyn: error: {error}", flush=True)
        sys.exit(2)
    print(f"rank {rank} finished", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
