"""The vLLM engines that a launch starts at the same moment on one node never race for a port.

vLLM probes for the first free port from `VLLM_PORT` up, releases it, and binds it later (its distributed
store): two engines of a node that probe at the same moment find the same port free, and the second to
bind fails with EADDRINUSE. Each local rank's engine therefore gets a `VLLM_PORT` of its own
(`placement.engine_port`). The stand-in `vllm` of `tests/stand_ins` takes its port the same way, and its
start barrier makes the engines probe at the same moment, so a shared port would clash in these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from servers import free_port

from persyn_hub.generation.placement import (
    ENGINE_PORT_BASE,
    ENGINE_PORT_STRIDE,
    PlacementError,
    engine_port,
)
from persyn_hub.generation.vllm_backend import engine_environment

ROOT = Path(__file__).parents[1]
STAND_INS = Path(__file__).parent / "stand_ins"
EPHEMERAL_PORTS = 32768
"""Linux's default ephemeral range starts here (`net.ipv4.ip_local_port_range`)."""


def stand_in_environment(tmp_path: Path, engines: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STAND_INS), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PERSYN_VLLM_RECORD": str(tmp_path / "vllm.jsonl"),
        "PERSYN_VLLM_START_BARRIER": f"{tmp_path / 'barrier'}:{engines}",
        "OMP_NUM_THREADS": "1",
    }


def events(tmp_path: Path, kind: str) -> list[dict]:
    lines = (tmp_path / "vllm.jsonl").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["event"] == kind]


def test_engine_port_ranges_of_a_nodes_local_ranks_do_not_overlap(monkeypatch):
    monkeypatch.delenv("VLLM_PORT", raising=False)
    ports = []
    for local_rank in range(8):
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        ports.append(engine_port())
    assert ports[0] == ENGINE_PORT_BASE and all(b - a == ENGINE_PORT_STRIDE for a, b in zip(ports, ports[1:]))
    assert ports[-1] + ENGINE_PORT_STRIDE <= EPHEMERAL_PORTS  # no outgoing connection holds one by chance

    monkeypatch.setenv("VLLM_PORT", "41000")  # the user's: the node's base, as every rank inherits it
    assert engine_port() == 41000 + 7 * ENGINE_PORT_STRIDE
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert engine_port() == 41000  # one process: the user's port as it is
    with engine_environment(None):
        assert os.environ["VLLM_PORT"] == "41000" and "LOCAL_RANK" not in os.environ
    assert os.environ["VLLM_PORT"] == "41000" and os.environ["LOCAL_RANK"] == "0"
    monkeypatch.setenv("VLLM_PORT", "tcp://10.0.0.1:5000")  # a Kubernetes service variable
    with pytest.raises(PlacementError, match=r"^VLLM_PORT='tcp://10.0.0.1:5000' is not a port number"):
        engine_port()


START_ENGINE = "from vllm import LLM; LLM(model='unused')"


def start_two_engines(tmp_path: Path, ports: list[int]) -> list[subprocess.CompletedProcess]:
    """Two stand-in engines started at the same moment, engine i with `VLLM_PORT=ports[i]`."""
    environment = stand_in_environment(tmp_path, engines=2)
    engines = [
        subprocess.Popen(
            [sys.executable, "-c", START_ENGINE],
            env={**environment, "VLLM_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for port in ports
    ]
    results = []
    for engine in engines:
        stdout, stderr = engine.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(engine.args, engine.returncode, stdout, stderr))
    return results


def test_engine_port_shared_by_two_engines_clashes_and_a_rank_port_each_does_not(tmp_path, monkeypatch):
    """The stand-in fails as vLLM does when two engines start on one port; the ranks' ports never do."""
    base = free_port()
    clashed = start_two_engines(tmp_path / "shared", [base, base])
    assert sorted(result.returncode for result in clashed) == [0, 1]
    assert "EADDRINUSE" in next(r.stderr for r in clashed if r.returncode)
    assert [e["port"] for e in events(tmp_path / "shared", "port-clash")] == [base]

    monkeypatch.setenv("VLLM_PORT", str(base))
    ranks = []
    for local_rank in (0, 1):
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        ranks.append(engine_port())
    apart = start_two_engines(tmp_path / "apart", ranks)
    assert [result.returncode for result in apart] == [0, 0], apart[1].stderr[-2000:]
    assert sorted(e["port"] for e in events(tmp_path / "apart", "engine")) == ranks


GENERATE_AS_A_RANK = textwrap.dedent(
    """
    import sys
    from datasets import Dataset
    from persyn_hub.generation import generate_responses
    from persyn_hub.generation.engines import release_engines
    from persyn_hub.recipe.config import GenerationConfig, TeacherConfig

    teacher = TeacherConfig(
        name="vllm-teacher", model=sys.argv[1], backend="vllm", generation=GenerationConfig(max_new_tokens=8)
    )
    prompts = Dataset.from_dict({"prompt_id": ["p0"], "messages": [[{"role": "user", "content": "Hi?"}]]})
    result, _ = generate_responses(prompts, teacher, checkpoint_dir=sys.argv[2])
    release_engines()
    assert result["error"] == [None], result["error"]
    """
)


@pytest.mark.slow
def test_engine_port_two_process_launch_starts_both_engines_at_once_without_a_clash(smollm2_path, tmp_path):
    """A 2-process `torchrun` on one node (2 GPUs faked by `CUDA_VISIBLE_DEVICES`): each rank starts its
    engine at the same moment (the barrier), with the user's `VLLM_PORT` set job-wide as it would be."""
    base = free_port()
    environment = {
        **stand_in_environment(tmp_path, engines=2),
        "VLLM_PORT": str(base),
        "CUDA_VISIBLE_DEVICES": "0,1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    script = tmp_path / "generate_as_a_rank.py"
    script.write_text(GENERATE_AS_A_RANK)
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    result = subprocess.run(
        [sys.executable, *launcher, str(script), smollm2_path, str(tmp_path / "rows")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert events(tmp_path, "port-clash") == []
    engines = events(tmp_path, "engine")
    placed = {(e["environment"]["CUDA_VISIBLE_DEVICES"], e["port"]) for e in engines}
    assert placed == {("0", base), ("1", base + ENGINE_PORT_STRIDE)}  # each rank's GPU, its own port
    assert {e["environment"]["VLLM_PORT"] for e in engines} == {str(base), str(base + ENGINE_PORT_STRIDE)}
