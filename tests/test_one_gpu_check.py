"""The one-GPU check (benchmarks/one_gpu_check.py) on the CPU, so its logic is proven before a GPU is lent.

On the lent GPU it runs SmolLM2 cut to 12 blocks (the carried model); here the same cut, to 2 blocks, and
`--quick` sizes run every check end to end: learnability against CPU float32, the scorer against the naive
loop, a router trained and evaluated, a teacher generating, then the table and its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_quick_check_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "one_gpu_check.py"), "--device", "cpu", "--quick",
        "--layers", "2", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "one_gpu_check.json").read_text())
    checks = [row["check"] for row in report["checks"]]
    assert checks == [
        "(a) learnability = CPU float32",
        "(a) learnability = CPU float32",
        "(b) scorer vs naive loop",
        "(b) scorer vs naive loop",
        "(c) router",
        "(d) teacher generation",
    ]
    assert all(row["device"] == "cpu" and row["passed"] for row in report["checks"])
    float32 = report["checks"][0]
    assert float32["dtype"] == "float32 -> float32"
    assert float32["details"]["scores"] == float32["details"]["cpu_float32"]  # one CPU, one computation
    assert all(score < 0 for score in float32["details"]["scores"])
    assert report["environment"]["model"]["num_hidden_layers"] == 2
    assert report["checks"][-1]["details"]["tokens"] > 0
    assert "| (c) router | cpu | float32 |" in done.stdout
