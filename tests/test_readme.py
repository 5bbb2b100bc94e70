"""Every `persyn` command in the README runs as written, through the installed `persyn` entry point.

The commands run in a scratch working directory that sees the repository's `recipes/` (the README's paths
are relative), in the README's order: the default run, then SFT on its data set, then the evaluation of
that student. `persyn compare` is the one command run with overrides: as written it trains and evaluates
ten students (about half an hour on a CPU); `tests/test_compare.py` runs the same CLI path on a shrunk run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PERSYN = str(Path(sys.executable).parent / "persyn")


def readme_commands() -> list[str]:
    """`persyn ...` lines of the README's bash blocks, comments stripped."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("persyn "):
                commands.append(line)
    return commands


RUN = "persyn run recipes/demo/task-mix-smollm2.yaml"
SFT = "persyn sft --config recipes/demo/sft.yaml"
EVALUATE = (
    "persyn evaluate --model runs/task-mix-smollm2/student-sft --tasks persyn_taskmix --limit 40 "
    "--output runs/task-mix-smollm2/eval"
)
COMPARE = "persyn compare recipes/demo/compare-task-mix-smollm2.yaml"
COMPARE_FULL = "persyn compare recipes/demo/compare-task-mix-smollm2-full.yaml"
HUB_STAGES = [  # need a real Hub account: the same CLI path runs against the local Hub in test_hub_stages.py
    f"{RUN} --output.hub.stages_repo your-org/mix-stages",
    f"{RUN} --resume-from-hub your-org/mix-stages",
    f"{RUN} --resume-from-hub your-org/mix-stages@3f2c1ab",
]


def test_the_readme_names_exactly_the_commands_tested_here():
    """The ones run here; the Hub commands in tests/test_hub_stages.py; the full compare (the same CLI
    path on more strategies) in tests/test_compare.py."""
    assert readme_commands() == [RUN, *HUB_STAGES, SFT, EVALUATE, COMPARE, COMPARE_FULL]


def persyn(command: str, cwd: Path) -> subprocess.CompletedProcess:
    arguments = shlex.split(command)
    assert arguments[0] == "persyn"
    return subprocess.run([PERSYN, *arguments[1:]], capture_output=True, text=True, cwd=cwd, timeout=1800)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    (folder / "recipes").symlink_to(ROOT / "recipes")
    return folder


@pytest.mark.slow
def test_the_quick_start_runs_the_default_recipe_as_written(workdir):
    result = persyn(RUN, workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((workdir / "runs/task-mix-smollm2/summary.json").read_text())
    router = summary["router"]
    assert summary["rows"] > 300 and summary["labeled_prompts"] == 160
    assert all(share <= 0.8 for share in router["oracle_share"].values())  # the best teacher varies
    assert (
        router["reward_recovered"]
        > router["reward_recovered_best_single"]
        > router["reward_recovered_random"]
    )
    assert summary["quality"]["verified_correct_share"] > 0.5
    assert "finished in" in result.stdout and "test prompts" in result.stdout


@pytest.mark.slow
def test_sft_then_evaluate_as_written(workdir):
    if not (workdir / "runs/task-mix-smollm2/artifacts/dataset").is_dir():
        pytest.skip("needs the quick-start run of the test above")
    trained = persyn(SFT, workdir)
    assert trained.returncode == 0, trained.stderr[-4000:]
    assert (workdir / "runs/task-mix-smollm2/student-sft/model.safetensors").is_file()
    evaluated = persyn(EVALUATE, workdir)
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    report = json.loads((workdir / "runs/task-mix-smollm2/eval/results.json").read_text())
    assert report["scores"][0]["task"] == "persyn_taskmix" and 0.0 <= report["scores"][0]["value"] <= 1.0
    assert "| persyn_taskmix | exact_match |" in evaluated.stdout
