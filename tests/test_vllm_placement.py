"""Which GPUs each process's vLLM engine gets under a launch, and that the engine starts seeing only them.

The placement rules are pure functions of the node's GPUs, the local rank and `tensor_parallel_size`;
the engine start is checked end to end in a subprocess that looks like rank 1 of a 2-process launch on a
2-GPU node (`CUDA_VISIBLE_DEVICES="0,1"` fakes the GPUs), through `generate_responses` and the stand-in
`vllm` of `tests/stand_ins`, which records what each engine saw when it started.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from persyn_hub.generation.backends import check_placements, generates_here
from persyn_hub.generation.placement import PlacementError, engine_devices, engine_group, node_devices
from persyn_hub.generation.vllm_backend import engine_environment
from persyn_hub.recipe.config import TeacherConfig

ROOT = Path(__file__).parents[1]
STAND_INS = Path(__file__).parent / "stand_ins"
FIELD = "teachers[0] ('t').tensor_parallel_size"
EIGHT_GPUS = [str(i) for i in range(8)]


def leaders(devices: list[str], processes: int, size: int) -> dict[int, tuple[str, ...]]:
    """Local rank -> GPUs of the engine it leads, for every process of a node that leads one."""
    groups = {rank: engine_group(devices, rank, size, field=FIELD) for rank in range(processes)}
    return {rank: group for rank, group in groups.items() if group is not None}


NODES = [EIGHT_GPUS, ["0", "1"], ["GPU-a1", "GPU-b2", "GPU-c3", "GPU-d4"]]
FITTING = [
    (devices, processes, size)
    for devices in NODES
    for processes in (1, 2, 4, 8)
    for size in (1, 2, 4)
    if size <= len(devices)  # larger engines are the error test's
]


@pytest.mark.parametrize(("devices", "processes", "size"), FITTING)
def test_each_engine_gets_its_own_group_of_the_nodes_gpus(devices, processes, size):
    placed = leaders(devices, processes, size)
    assert all(rank % size == 0 for rank in placed)  # the first process of each group leads it
    assert all(len(group) == size for group in placed.values())
    used = [device for group in placed.values() for device in group]
    assert len(used) == len(set(used))  # no GPU is shared by two engines
    assert set(used) <= set(devices)
    fitting_groups = len(devices) // size
    assert len(placed) == min(
        -(-processes // size), fitting_groups
    )  # every group that has a process and fits
    assert placed[0] == tuple(devices[:size])  # the main process always generates, on the first GPUs


def test_eight_processes_with_two_gpus_per_engine_run_four_engines():
    assert leaders(EIGHT_GPUS, 8, 2) == {0: ("0", "1"), 2: ("2", "3"), 4: ("4", "5"), 6: ("6", "7")}
    assert leaders(EIGHT_GPUS, 8, 4) == {0: ("0", "1", "2", "3"), 4: ("4", "5", "6", "7")}
    assert leaders(["0", "1"], 4, 1) == {0: ("0",), 1: ("1",)}  # ranks 2 and 3 have no GPU left: no engine


def test_without_gpus_every_process_runs_an_unrestricted_engine_of_one_device():
    assert leaders([], 2, 1) == {0: (), 1: ()}


@pytest.mark.parametrize(
    ("devices", "size", "says"),
    [
        (["0", "1"], 4, "this node has 2 (0,1); lower it to at most 2"),
        ([], 2, "no GPU is visible to this process"),
        (["0"], 0, "0 is not a number of GPUs"),
    ],
)
def test_an_engine_that_does_not_fit_the_node_fails_with_one_line_naming_the_field(devices, size, says):
    with pytest.raises(PlacementError) as error:
        engine_group(devices, 0, size, field=FIELD)
    message = str(error.value)
    assert message.startswith(FIELD + ":") and says in message and "\n" not in message


def launched(monkeypatch, *, local_rank: int, processes: int, visible: str | None) -> None:
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_the_nodes_gpus_are_the_launchers_visible_devices_as_written(monkeypatch):
    launched(monkeypatch, local_rank=0, processes=1, visible=" GPU-a1, GPU-b2 ")
    assert node_devices() == ["GPU-a1", "GPU-b2"]
    launched(monkeypatch, local_rank=0, processes=1, visible="3,-1,4")
    assert node_devices() == ["3"]  # CUDA stops at the first invalid entry
    launched(monkeypatch, local_rank=0, processes=1, visible="")
    assert node_devices() == []
    launched(monkeypatch, local_rank=0, processes=1, visible=None)
    import torch

    assert node_devices() == [str(i) for i in range(torch.cuda.device_count())]


def test_a_vllm_teacher_generates_only_where_its_engine_group_is_led(monkeypatch):
    teacher = TeacherConfig(name="big", model="org/big", backend="vllm", tensor_parallel_size=2)
    launched(monkeypatch, local_rank=2, processes=4, visible="4,5,6,7")
    assert generates_here(teacher) and engine_devices(teacher) == ["6", "7"]
    launched(monkeypatch, local_rank=1, processes=4, visible="4,5,6,7")
    assert not generates_here(teacher)
    with pytest.raises(PlacementError, match=r"teachers\[3\] \('big'\)\.tensor_parallel_size: local rank 1"):
        engine_devices(teacher, index=3)


def test_other_teachers_generate_in_every_process(monkeypatch):
    launched(monkeypatch, local_rank=1, processes=2, visible="0,1")
    for teacher in (
        TeacherConfig(name="local", model="org/small"),
        TeacherConfig(name="served", endpoints=["http://127.0.0.1:1"]),
        TeacherConfig(name="key", backend="reference", response_template="{answer}"),
    ):
        assert generates_here(teacher)


def test_more_processes_than_gpus_for_a_transformers_teacher_is_warned(monkeypatch, caplog):
    launched(monkeypatch, local_rank=0, processes=4, visible="0,1")
    with caplog.at_level(logging.WARNING, logger="persyn_hub.generation.placement"):
        assert generates_here(TeacherConfig(name="crowded", model="org/small"))
    assert "4 processes share this node's 2 GPU(s)" in caplog.text


def test_placements_are_checked_for_every_vllm_teacher_before_any_work(monkeypatch):
    launched(monkeypatch, local_rank=0, processes=1, visible="0,1")
    teachers = [
        TeacherConfig(name="small", model="org/small"),
        TeacherConfig(name="big", model="org/big", backend="vllm", tensor_parallel_size=4),
    ]
    with pytest.raises(PlacementError, match=r"^teachers\[1\] \('big'\)\.tensor_parallel_size: 4 GPUs"):
        check_placements(teachers)
    teachers[1].tensor_parallel_size = 2
    check_placements(teachers)


def report_environment(queue) -> None:
    queue.put(
        {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "RANK", "TORCHELASTIC_RUN_ID")}
    )


def test_the_engine_environment_reaches_spawned_processes_and_is_restored(monkeypatch):
    """vLLM's engine core and workers are spawned processes: they see the environment at their start."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch")
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    before = dict(os.environ)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with engine_environment(["1"]):
        assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
        child = context.Process(target=report_environment, args=(queue,))
        child.start()
    seen = queue.get(timeout=60)
    child.join(timeout=60)
    assert seen == {"CUDA_VISIBLE_DEVICES": "1", "RANK": None, "TORCHELASTIC_RUN_ID": None}
    assert dict(os.environ) == before
    with pytest.raises(RuntimeError), engine_environment(None):
        raise RuntimeError("the engine failed to start")
    assert dict(os.environ) == before


GENERATE_AS_A_RANK = textwrap.dedent(
    """
    import json, os, sys
    from datasets import Dataset
    from persyn_hub.recipe.config import GenerationConfig, TeacherConfig
    from persyn_hub.generation.engines import release_engines
    from persyn_hub.generation import generate_responses

    model, size, checkpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    teacher = TeacherConfig(
        name="vllm-teacher", model=model, backend="vllm", tensor_parallel_size=size,
        generation=GenerationConfig(max_new_tokens=8),
    )
    questions = ["What is 2 + 3?", "Spell cat backward.", "What is 7 * 6?", "Who likes tennis?"]
    prompts = Dataset.from_dict(
        {"prompt_id": [f"p{i}" for i in range(4)], "messages": [[{"role": "user", "content": q}] for q in questions]}
    )
    before = dict(os.environ)
    answers, errors = [], []
    for chunk in (prompts.select(range(2)), prompts.select(range(2, 4))):  # two chunks of one stage
        result, _ = generate_responses(chunk, teacher, checkpoint_dir=checkpoint)
        answers += result["response"]
        errors += result["error"]
    changed = sorted(name for name in set(before) | set(os.environ) if before.get(name) != os.environ.get(name))
    release_engines()  # the runner does this when the stage ends
    print(json.dumps({"answers": answers, "errors": errors, "changed": changed}))
    """
)


@pytest.mark.parametrize(("local_rank", "size", "expected"), [(1, 1, "1"), (0, 2, "0,1")])
def test_an_engine_starts_seeing_only_its_gpus_and_the_rank_keeps_its_environment(
    smollm2_path, tmp_path, local_rank, size, expected
):
    record = tmp_path / "vllm.jsonl"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STAND_INS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PERSYN_VLLM_RECORD": str(record),
        "CUDA_VISIBLE_DEVICES": "0,1",
        "RANK": str(local_rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29655",
        "TORCHELASTIC_RUN_ID": "test-launch",
        "VLLM_WORKER_MULTIPROC_METHOD": "fork",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", GENERATE_AS_A_RANK, smollm2_path, str(size), str(tmp_path / "checkpoint")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    events = [json.loads(line) for line in record.read_text().splitlines()]

    engines = [e for e in events if e["event"] == "engine"]
    assert len(engines) == 1  # one engine for both chunks of the stage
    seen = engines[0]["environment"]
    assert seen["CUDA_VISIBLE_DEVICES"] == expected and engines[0]["tensor_parallel_size"] == size
    assert seen["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn" and seen["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    assert all(seen[name] is None for name in (*launcher, "TORCHELASTIC_RUN_ID"))

    calls = [e for e in events if e["event"] == "chat"]
    assert [len(call["prompts"]) for call in calls] == [2, 2]
    assert {(call["rank"], call["cuda_visible_devices"]) for call in calls} == {(str(local_rank), "0,1")}
    assert output["changed"] == []  # the rank's own environment is back once the engine has started
    assert output["errors"] == [None] * 4 and all(a.startswith("The answer is") for a in output["answers"])
    assert [e["event"] for e in events][-1] == "shutdown"  # released at the stage's end, not per chunk
    assert sum(e["event"] == "shutdown" for e in events) == 1


def test_a_process_that_leads_no_engine_refuses_to_start_one(monkeypatch):
    launched(monkeypatch, local_rank=1, processes=2, visible="0,1")
    teacher = TeacherConfig(name="pair", model="org/big", backend="vllm", tensor_parallel_size=2)
    with pytest.raises(PlacementError, match="local rank 1 leads no engine"):
        engine_devices(teacher)
