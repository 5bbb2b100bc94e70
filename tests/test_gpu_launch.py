"""On a machine with 2+ GPUs and vLLM: the small recipe with a real vLLM teacher under a 2-process launch.

Run: `python -m pytest -m gpu tests/test_gpu_launch.py` (skipped without 2 GPUs and vLLM; see docs/scale.md).
The launch's ranks run `PROBE` instead of `persyn_hub.cli`: it wraps `vllm.LLM` so that every engine asks
its own worker processes (`LLM.collective_rpc`) which GPU they run on, by UUID, and measures its GPUs'
free memory once the engine is shut down. Checked:
- placement: with `tensor_parallel_size: 1` each rank's engine runs on that rank's GPU; with 2, one engine
  in rank 0 runs a worker on each of the two GPUs and rank 1 runs none;
- equality: the 2-process data set equals a 1-process run's, row for row. vLLM's answers depend on how
  requests are batched unless `VLLM_BATCH_INVARIANT=1` (vLLM's batch-invariant mode, NVIDIA compute
  capability 8.0 or newer); every run here sets it, so the tolerance is none;
- release: every engine is shut down at its stage's end and its GPUs are at least 80% free again.

Models: `PERSYN_GPU_TEST_MODEL` (default the bundled SmolLM2-135M-Instruct, converted to safetensors)
answers as teacher 0 with one GPU per engine; `PERSYN_GPU_TEST_TP_MODEL` (default the bundled Gemma-3-270M,
whose 4 attention heads split over 2 GPUs; SmolLM2's 9 do not) answers as teacher 1 with 2 GPUs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TASK_MIX_RECIPE, override_args
from servers import free_port
from test_launch import LAUNCH, rows

ROOT = Path(__file__).parents[1]
FREE_AFTER_RELEASE = 0.8
"""Share of an engine's GPUs' memory free again after it is shut down (vLLM takes 90% while it runs)."""

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        torch.cuda.device_count() < 2 or importlib.util.find_spec("vllm") is None,
        reason="needs 2 GPUs and vLLM (pip install -e .[vllm])",
    ),
]

PROBE = textwrap.dedent(
    """
    import json, os, sys, time
    import vllm

    RANK = os.environ.get("RANK", "0")  # read now: the engine starts without the launcher's variables

    def write(event, **details):
        with open(os.environ["PERSYN_GPU_PROBE"], "a") as handle:
            handle.write(json.dumps({"event": event, "rank": RANK, **details}) + "\\n")

    def where_am_i(worker):  # runs in each of the engine's worker processes
        import os, torch
        index = torch.cuda.current_device()
        return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "uuid": str(torch.cuda.get_device_properties(index).uuid)}

    def free_share(engine_devices):
        import torch
        node = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        indices = [node.index(device) for device in engine_devices.split(",")]
        share = 0.0
        for _ in range(60):  # the workers exit asynchronously
            share = min(free / total for free, total in (torch.cuda.mem_get_info(i) for i in indices))
            if share >= float(os.environ["PERSYN_GPU_FREE"]):
                break
            time.sleep(1)
        return share

    start = vllm.LLM.__init__

    def probed_start(self, *args, **kwargs):
        start(self, *args, **kwargs)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        workers = self.collective_rpc(where_am_i)
        write("engine", visible=visible, tensor_parallel_size=kwargs.get("tensor_parallel_size"), workers=workers)
        shutdown = self.llm_engine.shutdown

        def probed_shutdown():
            shutdown()
            write("shutdown", visible=visible, free=free_share(visible))

        self.llm_engine.shutdown = probed_shutdown

    vllm.LLM.__init__ = probed_start

    if __name__ == "__main__":  # vLLM spawns its processes: they import this file without running it
        from persyn_hub.cli import main

        sys.exit(main(sys.argv[1:]))
    """
)


def node_gpus() -> list[str]:
    """The two GPUs the launch runs on, as the launcher would list them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (listed.split(",") if listed else ["0", "1"])[:2]


@pytest.fixture(scope="module")
def gpu_uuids() -> list[str]:
    """UUIDs of `node_gpus()` in order, read in a fresh process (this one keeps no CUDA context)."""
    script = "import json, torch; print(json.dumps([str(torch.cuda.get_device_properties(i).uuid) for i in range(2)]))"
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(node_gpus())}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_with_vllm(
    run_dir: Path, teacher_overrides: dict, *, processes: int
) -> tuple[subprocess.CompletedProcess, list]:
    from persyn_hub.bundled import resolve_model

    models = {
        "teachers.0.model": os.environ.get(
            "PERSYN_GPU_TEST_MODEL", resolve_model("bundled:smollm2-135m-instruct")
        ),
        "teachers.1.model": os.environ.get("PERSYN_GPU_TEST_TP_MODEL", resolve_model("bundled:gemma-3-270m")),
    }
    overrides = {**LAUNCH, **models, **teacher_overrides, "output.dir": str(run_dir), "launch.chunk_rows": 2}
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    probe, record = run_dir.parent / f"{run_dir.name}-probe.py", run_dir.parent / f"{run_dir.name}.jsonl"
    probe.write_text(PROBE)
    launcher = [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(free_port()),
    ]
    command = [sys.executable, *launcher, str(probe), "run", TASK_MIX_RECIPE, *override_args(overrides)]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": ",".join(node_gpus()),
        "VLLM_BATCH_INVARIANT": "1",
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",  # lets `collective_rpc` take the probe's function
        "PERSYN_GPU_PROBE": str(record),
        "PERSYN_GPU_FREE": str(FREE_AFTER_RELEASE),
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, timeout=3000)
    events = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return result, events


def check_released(events: list[dict]) -> None:
    started = sorted(e["visible"] for e in events if e["event"] == "engine")
    shut = [e for e in events if e["event"] == "shutdown"]
    assert sorted(e["visible"] for e in shut) == started  # every engine was shut down once
    assert all(e["free"] >= FREE_AFTER_RELEASE for e in shut), shut


VLLM_TEACHER_0 = {"teachers.0.backend": "vllm", "teachers.0.tensor_parallel_size": 1}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("gpu") / "two"
    result, events = run_with_vllm(run_dir, VLLM_TEACHER_0, processes=2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return run_dir, events


def test_each_rank_runs_its_engine_on_its_own_gpu(two_processes, gpu_uuids):
    _, events = two_processes
    engines = [e for e in events if e["event"] == "engine"]
    assert {e["rank"] for e in engines} == {"0", "1"}  # both ranks generated
    for engine in engines:
        rank = int(engine["rank"])
        assert engine["visible"] == node_gpus()[rank] and engine["tensor_parallel_size"] == 1
        assert [worker["uuid"] for worker in engine["workers"]] == [gpu_uuids[rank]]
    check_released(events)


def test_two_processes_give_the_data_set_of_one(two_processes, tmp_path):
    run_dir, _ = two_processes
    result, events = run_with_vllm(tmp_path / "one", VLLM_TEACHER_0, processes=1)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    assert {e["visible"] for e in events if e["event"] == "engine"} == {node_gpus()[0]}
    for artifact in ("dataset", "labels", "routing"):
        assert rows(run_dir, artifact) == rows(tmp_path / "one", artifact), artifact
    assert answers(run_dir) == answers(tmp_path / "one")  # the vLLM teacher's own text, row for row


def test_a_two_gpu_engine_runs_once_in_rank_0_with_a_worker_on_each_gpu(tmp_path, gpu_uuids):
    tensor_parallel = {"teachers.1.backend": "vllm", "teachers.1.tensor_parallel_size": 2}
    result, events = run_with_vllm(tmp_path / "tp", tensor_parallel, processes=2)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    engines = [e for e in events if e["event"] == "engine"]
    assert engines and {e["rank"] for e in engines} == {"0"}
    for engine in engines:
        assert engine["visible"] == ",".join(node_gpus()) and engine["tensor_parallel_size"] == 2
        assert sorted(worker["uuid"] for worker in engine["workers"]) == sorted(gpu_uuids)
    check_released(events)
    summary = json.loads((tmp_path / "tp" / "summary.json").read_text())
    assert not summary["failures"]["generation"]


def answers(run_dir: Path) -> list[tuple[str, str, str]]:
    """(prompt, teacher, answer) of every labeled row."""
    from datasets import load_from_disk

    labels = load_from_disk(str(run_dir / "artifacts" / "labels"))
    data = labels.select_columns(["prompt_id", "teacher", "response"]).to_list()
    return sorted((row["prompt_id"], row["teacher"], row["response"]) for row in data)
