"""`recipes/slurm/persyn_run.slurm` as Slurm would run it on 2 nodes, with stand-in `srun`, `scontrol` and
`accelerate` executables on PATH that record what they were given.

The stand-in `srun` runs its command once per node (with that node's `SLURM_PROCID`, `SLURM_NODEID`,
and its `--output` file, `%n` being the node), as Slurm starts one task per node; the stand-in
`accelerate` records its arguments, one JSON list per call. So the test sees the exact command line each
node would run: every override one argument (spaces, JSON, `$`, `*` untouched), the GPU count from the
allocation, the first node as the rendezvous, and each node's output in the job's log folder.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "recipes" / "slurm" / "persyn_run.slurm"
RECIPE = "recipes/gpu/persyn-math-qwen2.5-1.5b.yaml"
OVERRIDES = [
    "--output.dir", "/shared/runs/my run $USER *",
    "--teachers.0.generation", '{"max_new_tokens": 64, "stop": ["\\n\\n", "Q: "]}',
    "--launch.chunk_rows", "64",
]  # fmt: skip

SRUN = """
import json, os, subprocess, sys
with open(os.environ["RECORDED"] + "/srun.json", "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
arguments, options = sys.argv[1:], {}
while arguments[0].startswith("-"):  # srun's own options, all given as --name=value
    name, _, value = arguments.pop(0).partition("=")
    options[name] = value
hosts = ["gpu-node-7", "gpu-node-8"]
tasks = []
for node in range(int(os.environ["SLURM_NNODES"])):
    environment = {**os.environ, "SLURM_PROCID": str(node), "SLURM_NODEID": str(node),
                   "SLURMD_NODENAME": hosts[node]}
    log = open(options["--output"].replace("%n", str(node)), "w") if "--output" in options else None
    tasks.append(subprocess.Popen(arguments, env=environment, stdout=log, stderr=subprocess.STDOUT if log else None))
sys.exit(max(task.wait() for task in tasks))
"""
SCONTROL = """
import json, os, sys
with open(os.environ["RECORDED"] + "/scontrol.json", "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["show", "hostnames"] and sys.argv[3] == "gpu-node-[7-8]":
    sys.stdout.write("gpu-node-7\\ngpu-node-8\\n")  # one write, as scontrol's buffered output
else:
    sys.exit("scontrol stand-in: unexpected arguments " + " ".join(sys.argv[1:]))
"""
ACCELERATE = """
import json, os, sys
line = json.dumps({"argv": sys.argv[1:], "node": os.environ["SLURMD_NODENAME"]}) + "\\n"
descriptor = os.open(os.environ["RECORDED"] + "/accelerate.json", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(descriptor, line.encode())
print("accelerate stand-in on", os.environ["SLURMD_NODENAME"])
"""


def stand_ins(folder: Path) -> Path:
    """`srun`, `scontrol` and `accelerate` executables in `folder/bin`, run by this Python."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    for name, body in {"srun": SRUN, "scontrol": SCONTROL, "accelerate": ACCELERATE}.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def submit(tmp_path: Path, allocation: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    """Run the batch script as Slurm would on the first of 2 nodes, from the submit folder `tmp_path`."""
    bin_dir = stand_ins(tmp_path)
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SLURM_") and name not in ("CUDA_VISIBLE_DEVICES", "GPUS_PER_NODE")
    }
    environment.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        RECORDED=str(recorded),
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="gpu-node-[7-8]",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="persyn-run",
        **allocation,
    )
    return subprocess.run(
        ["bash", str(SCRIPT), *arguments],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def recorded(tmp_path: Path, name: str) -> list:
    return [json.loads(line) for line in (tmp_path / "recorded" / f"{name}.json").read_text().splitlines()]


def node_command(rank: int, processes: int) -> list[str]:
    return [
        "launch",
        "--config_file", "recipes/accelerate_configs/multi_gpu.yaml",
        "--num_machines", "2",
        "--num_processes", str(processes),
        "--machine_rank", str(rank),
        "--main_process_ip", "gpu-node-7",
        "--main_process_port", "6000",
        "-m", "persyn_hub.cli", "run", RECIPE, *OVERRIDES,
    ]  # fmt: skip


def test_each_node_runs_one_accelerate_launch_with_every_override_one_argument(tmp_path):
    result = submit(tmp_path, {"SLURM_GPUS_ON_NODE": "4"}, RECIPE, *OVERRIDES)
    assert result.returncode == 0, result.stderr
    calls = sorted(recorded(tmp_path, "accelerate"), key=lambda call: call["node"])
    assert [call["node"] for call in calls] == ["gpu-node-7", "gpu-node-8"]
    assert [call["argv"] for call in calls] == [node_command(0, 8), node_command(1, 8)]  # 2 nodes x 4 GPUs
    assert recorded(tmp_path, "scontrol") == [["show", "hostnames", "gpu-node-[7-8]"]]
    [srun] = recorded(tmp_path, "srun")
    assert srun[:2] == ["--kill-on-bad-exit=1", "--output=logs/persyn-run-4242/node-%n.out"]
    logs = tmp_path / "logs" / "persyn-run-4242"
    assert sorted(p.name for p in logs.iterdir()) == ["node-0.out", "node-1.out"]
    assert (logs / "node-1.out").read_text() == "accelerate stand-in on gpu-node-8\n"
    assert "logs in logs/persyn-run-4242/" in result.stdout


@pytest.mark.parametrize(
    ("allocation", "processes"),
    [
        ({"SLURM_GPUS_PER_NODE": "h100:2"}, 4),
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 6),
        ({"SLURM_GPUS_ON_NODE": "4", "GPUS_PER_NODE": "1"}, 2),  # the user's word wins
    ],
)
def test_the_gpu_count_comes_from_the_allocation(tmp_path, allocation, processes):
    result = submit(tmp_path, allocation, RECIPE, *OVERRIDES)
    assert result.returncode == 0, result.stderr
    assert {call["argv"][6] for call in recorded(tmp_path, "accelerate")} == {str(processes)}


def test_an_allocation_without_gpus_stops_before_srun_with_one_line(tmp_path):
    result = submit(tmp_path, {}, RECIPE)
    assert result.returncode == 2
    assert result.stderr.startswith("persyn_run.slurm: no GPU count in the allocation")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "recorded" / "srun.json").exists()
