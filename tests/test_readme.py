"""Every `persyn` command in the README and the docs runs as written, through the installed `persyn` entry
point, and every relative link in them resolves.

The commands run in a scratch working directory that sees the repository's `recipes/` (the paths are
relative), in the quick start's order: the default run, then SFT on its data set (docs/comparison.md),
then the evaluation of that student. `persyn compare` is the one command run with overrides: as written it
trains and evaluates ten students (about half an hour on a CPU); `tests/test_compare.py` runs the same CLI
path on a shrunk run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ranking_with_transformers_alone
from test_labeling_plan import LEVELS_PLAN, LEVELS_RUN

ROOT = Path(__file__).parents[1]
PERSYN = str(Path(sys.executable).parent / "persyn")
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def bash_commands(path: Path) -> list[str]:
    """`persyn ...` lines of a Markdown file's bash blocks, comments stripped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("persyn "):
                commands.append(line)
    return commands


def readme_commands() -> list[str]:
    """`persyn ...` lines of the README's bash blocks, comments stripped."""
    return bash_commands(README)


RUN = "persyn run recipes/demo/task-mix-smollm2.yaml"
SFT = "persyn sft --config recipes/demo/sft.yaml"
EVALUATE = (
    "persyn evaluate --model runs/task-mix-smollm2/student-sft --tasks persyn_taskmix --limit 40 "
    "--output runs/task-mix-smollm2/eval"
)
COMPARE = "persyn compare recipes/demo/compare-task-mix-smollm2.yaml"
COMPARE_FULL = "persyn compare recipes/demo/compare-task-mix-smollm2-full.yaml"
LEVELS = [LEVELS_RUN, LEVELS_PLAN]  # run as written, shrunk by appended overrides, in test_labeling_plan.py
HUB_STAGES = [  # need a real Hub account: the same CLI path runs against the local Hub in test_hub_stages.py
    f"{RUN} --output.hub.stages_repo your-org/mix-stages",
    f"{RUN} --resume-from-hub your-org/mix-stages",
    f"{RUN} --resume-from-hub your-org/mix-stages@3f2c1ab",
]


def test_the_readme_with_its_docs_names_exactly_the_commands_tested_here():
    """The ones run here; the Hub commands in tests/test_hub_stages.py; the full compare (the same CLI
    path on more strategies) in tests/test_compare.py; the levels recipe's run and plan in
    tests/test_labeling_plan.py. A `persyn` line in a bash block of the README or
    of any docs/*.md page that is not one of them is documented but untested."""
    tested = {RUN, *HUB_STAGES, SFT, EVALUATE, COMPARE, COMPARE_FULL, *LEVELS}
    found = {str(path.relative_to(ROOT)): bash_commands(path) for path in DOCUMENTS}
    untested = {name: sorted(set(lines) - tested) for name, lines in found.items() if set(lines) - tested}
    assert not untested, f"documented but not tested: {untested}"
    documented = {line for lines in found.values() for line in lines}
    assert documented == tested, f"tested but no longer documented: {sorted(tested - documented)}"
    assert readme_commands()[:1] == [RUN]  # the quick start's command, as .ci/run and the tests run it


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a Markdown text's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated anchor numbered (-1, -2, ...)."""
    anchors: set[str] = set()
    for heading in re.findall(r"(?m)^#{1,6}[ \t]+(.+?)[ \t#]*$", text):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


def without_code(text: str) -> str:
    """The text outside fenced blocks and inline code (neither holds links or headings)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"(?ms)^```.*?^```", "", text))


def test_every_relative_link_in_the_readme_and_docs_resolves():
    """Links and images to files of this repository exist; `#anchor`s name a heading of their page."""
    broken = []
    for path in DOCUMENTS:
        for target in re.findall(
            r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code(path.read_text())
        ):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}: {target}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and (
                linked.suffix != ".md" or anchor not in heading_anchors(without_code(linked.read_text()))
            ):
                broken.append(f"{where} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)
    assert (ROOT / "docs" / "hub.md").read_text().count("<!-- router-head-measurement -->") == 1


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
def test_the_default_runs_router_loads_with_transformers_alone_and_ranks_as_persyn_route(workdir):
    """The router a user shares: no persyn_hub in the loading process, the four teachers as labels, and the
    pipeline's ranking (best first) is the order of `persyn route`'s scores on the same prompts."""
    router = workdir / "runs/task-mix-smollm2/artifacts/router"
    if not router.is_dir():
        pytest.skip("needs the quick-start run of the test above")
    prompts = [
        "What is 48 + 27?",
        "Spell the word 'teacher' backward.",
        "What is the greatest common divisor of 84 and 36?",
        "How many times does the letter r appear in 'strawberry'?",
        "Which is smaller: 0.31 or 0.4?",
    ]
    source = workdir / "route-prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    routed_dir = workdir / "routed"
    result = persyn(f"persyn route --router {router} --prompts {source} --output {routed_dir}", workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    from datasets import load_from_disk

    routed = load_from_disk(str(routed_dir))
    alone = ranking_with_transformers_alone(router, list(routed["prompt"]))
    assert not alone["persyn_imported"] and alone["type"] == "BertForSequenceClassification"
    from persyn_hub.recipe.config import load_recipe

    teachers = load_recipe(str(ROOT / RUN.split()[-1])).teacher_names()
    assert sorted(alone["labels"]) == sorted(teachers) and len(teachers) == 4
    for ranked, scores, teacher in zip(alone["ranked"], routed["router_scores"], routed["teacher"]):
        assert ranked == [alone["labels"][i] for i in sorted(range(4), key=lambda i: -scores[i])]
        assert ranked[0] == teacher


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
