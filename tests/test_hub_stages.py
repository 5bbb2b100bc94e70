"""Runs that outlive their machine: every stage on the Hub as it finishes, and a run that continues from there.

Every run here is the real `persyn run` command (the demo recipe shrunk as in tests/test_faults.py: 16 prompts,
8 labeled, both teachers SmolLM2-135M, the chat teacher one row per batch) pushing through the real
`huggingface_hub` client to the local Hub-protocol server (`tests/hub_server.py`). One uninterrupted run is the
reference. A second run publishes its stages and is SIGKILLed inside the routed generation of the chat
teacher, right after one of that stage's rows reached the Hub; its `output.dir` is then deleted and a third
run continues from the Hub alone. A fourth run changes `labeling.alpha` and must reuse the generation and
scoring stages from the Hub and compute `combine` and what follows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from persyn_hub.folders import load_dataset_folder

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import LocalHub  # noqa: E402

ROOT = Path(__file__).parents[1]
TOKEN = "hf_test_StagesToken9Qx"
REPO = "persyn-org/asdiv-stages"
RECIPE = "recipes/demo/asdiv-smollm2.yaml"
CHAT, FEWSHOT = "smollm2-135m-instruct", "smollm2-fewshot"
SMALL = [
    "--prompts.num_prompts", "16",
    "--labeling.num_prompts", "8",
    "--teachers.0.generation.max_new_tokens", "16",
    "--teachers.0.batch_size", "1",  # one row per checkpoint write: the kill lands between rows
    "--teachers.1.name", FEWSHOT,
    "--teachers.1.model", "bundled:smollm2-135m-instruct",
    "--teachers.1.generation.max_new_tokens", "16",
    "--teachers.1.batch_size", "4",
    "--router.num_train_epochs", "2",
    "--router.max_length", "48",
    "--routing.budgets", json.dumps({CHAT: 0.5, FEWSHOT: 0.5}),  # both teachers get routed prompts
    "--output.drop_truncated", "false",
]  # fmt: skip
PUBLISH = ["--output.hub.stages_repo", REPO, "--output.hub.checkpoint_every", "1"]
BEFORE_ROUTED = [
    "prompts",
    f"label-generate/{CHAT}",
    f"label-generate/{FEWSHOT}",
    "learnability",
    "quality",
    "combine",
    "router",
    "route",
]
ROUTED = f"generate/{CHAT}"

# `persyn run`, SIGKILLed (exactly `kill -9`) right after a row of `spec["stage"]` reached the Hub.
KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from persyn_hub.pipeline import runner as stage_runner
    from persyn_hub.publish.mirror import rows as hub_rows

    spec = json.loads(os.environ["PERSYN_HUB_KILL"])
    hub_rows.ROWS_POLL_SECONDS = 0.05
    state = {"inside": False}
    run = stage_runner.StageRunner.run
    push_rows = hub_rows.RowCheckpoints.push_rows

    def patched_run(self, stage):
        if stage.name == spec["stage"]:  # entering the stage, before any of its rows is generated
            state["inside"] = True
        return run(self, stage)

    def patched_push_rows(self, force=False):
        pushed = push_rows(self, force)
        if state["inside"] and set(pushed) & set(spec["ids"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return pushed

    stage_runner.StageRunner.run = patched_run
    hub_rows.RowCheckpoints.push_rows = patched_push_rows
    from persyn_hub.cli import main
    main(sys.argv[1:])
    sys.exit("persyn finished without being killed")
    """
)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = LocalHub(tmp_path_factory.mktemp("stages-hub") / "repos", token=TOKEN).start()
    yield hub
    hub.stop()


def persyn(hub: LocalHub | None, run_dir: Path, *extra: str, kill: dict | None = None):
    # HF_HOME stays: the bundled models' safetensors copies are cached there, once per machine
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") or k == "HF_HOME"}
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    if hub is not None:
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN)
    head = [sys.executable, "-c", KILLER] if kill else [sys.executable, "-m", "persyn_hub.cli"]
    if kill:
        env["PERSYN_HUB_KILL"] = json.dumps(kill)
    command = [*head, "run", RECIPE, *SMALL, "--output.dir", str(run_dir), *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def stage_folder(run_dir: Path, stage: str) -> Path:
    pattern = re.compile(re.escape(stage.replace("/", "--")) + r"-[0-9a-f]{16}")
    found = [p for p in (run_dir / "stages").iterdir() if pattern.fullmatch(p.name)]
    assert len(found) == 1, f"{stage}: {found}"
    return found[0]


def rows_of(path: Path) -> list[dict]:
    rows = load_dataset_folder(path).to_list()
    return sorted(rows, key=lambda row: (row["prompt_id"], str(row.get("teacher"))))


def part_records(folder: Path) -> dict[str, list[dict]]:
    """The records of every part file of a row checkpoint folder, by file name."""
    return {
        part.name: [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
        for part in sorted(folder.glob("part-*.jsonl"))
    }


def started(run_dir: Path) -> list[str]:
    return re.findall(r"stage (\S+): started", (run_dir / "run.log").read_text())


@pytest.fixture(scope="module")
def runs(hub, tmp_path_factory):
    """Reference; killed run publishing its stages; the same recipe continued from the Hub on an empty dir."""
    work = tmp_path_factory.mktemp("stages")
    reference = work / "reference"
    result = persyn(None, reference)
    assert result.returncode == 0, result.stderr[-4000:]
    routed_ids = [row["prompt_id"] for row in rows_of(stage_folder(reference, ROUTED) / "data")]
    assert len(routed_ids) >= 2, routed_ids

    machine = work / "lost-machine"
    killed = persyn(hub, machine, *PUBLISH, kill={"stage": ROUTED, "ids": routed_ids})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert started(machine)[-1] == ROUTED
    rows_folder = next((machine / "stages").glob(f"rows--{CHAT}-*"))
    killed_parts = {part.name for part in rows_folder.glob("part-*.jsonl")}
    shutil.rmtree(machine)  # the machine and its scratch disk are gone

    resumed = persyn(hub, machine, "--resume-from-hub", REPO)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return {
        "reference": reference,
        "routed_ids": routed_ids,
        "resumed": machine,
        "rows_folder": machine / "stages" / rows_folder.name,
        "killed_parts": killed_parts,
        "work": work,
    }


@pytest.mark.slow
def test_a_run_killed_mid_generation_continues_from_the_hub_on_an_empty_dir(runs, hub):
    reference, resumed = runs["reference"], runs["resumed"]
    summary = json.loads((resumed / "summary.json").read_text())
    # Every stage finished before the kill is downloaded, not recomputed.
    assert summary["hub"]["stages"]["restored"] == BEFORE_ROUTED
    assert started(resumed) == [ROUTED, f"generate/{FEWSHOT}", "assemble"]
    log = (resumed / "run.log").read_text()
    for stage in BEFORE_ROUTED:
        assert f"stage {stage}: restored from the Hub" in log

    # No finished row is requested again: the part files restored from the Hub (named as the killed run
    # wrote them, holding what it pushed) hold some of the routed rows, and the resumed run's own part
    # file holds exactly the others (counted at the backend).
    parts = part_records(runs["rows_folder"])
    routed = set(runs["routed_ids"])
    restored = {name: records for name, records in parts.items() if name in runs["killed_parts"]}
    assert restored, f"no part file of the killed run came back from the Hub: {sorted(parts)}"
    generated_again = [
        r["prompt_id"]
        for name, records in parts.items()
        if name not in restored
        for r in records
        if r["prompt_id"] in routed
    ]
    done_before = routed & {r["prompt_id"] for records in restored.values() for r in records}
    assert done_before, "the killed run pushed none of the routed rows: the test did not exercise resume"
    assert generated_again, "the killed run had every routed row: the test did not exercise a partial resume"
    assert not done_before & set(generated_again)
    assert set(generated_again) | done_before == routed
    stats = next(s for s in summary["generation"][CHAT] if s["phase"] == "routed")
    assert stats["reused"] == len(done_before) and stats["requests"] == len(routed) - len(done_before)
    assert summary["hub"]["stages"]["rows_restored"] >= len(done_before)

    # The same data set as an uninterrupted run.
    assert rows_of(resumed / "artifacts" / "dataset") == rows_of(reference / "artifacts" / "dataset")
    # ...and every stage of it is on the Hub now, one commit per stage.
    assert set(summary["hub"]["stages"]["stages"]) >= set(BEFORE_ROUTED) | {ROUTED, "assemble"}
    assert summary["hub"]["stages"]["behind"] == []
    # the run's Hub traffic: a commit per stage it pushed (row checkpoints too), each counted with its bytes
    pushed = len(summary["hub"]["stages"]["stages"]) - len(BEFORE_ROUTED)
    assert summary["hub"]["commits"] >= pushed and summary["hub"]["bytes_uploaded"] > 0
    assert summary["hub"]["rate_limited"] == 0
    assert TOKEN not in (resumed / "run.log").read_text() + json.dumps(summary)


@pytest.mark.slow
def test_a_changed_alpha_reuses_generation_and_scoring_and_recomputes_combine(runs, hub):
    run_dir = runs["work"] / "alpha"
    result = persyn(hub, run_dir, *PUBLISH, "--labeling.alpha", "0.2")
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    reused = ["prompts", f"label-generate/{CHAT}", f"label-generate/{FEWSHOT}", "learnability", "quality"]
    assert summary["hub"]["stages"]["restored"][: len(reused)] == reused
    assert started(run_dir)[0] == "combine" and not set(started(run_dir)) & set(reused)
    log = (run_dir / "run.log").read_text()
    assert re.search(
        r"stage combine: the Hub has it under key \w+, not \w+, so it is computed again: .*alpha: 0.4 -> 0.2",
        log,
    ), log[-3000:]
    # no label-phase answer was generated: the labeled answers came from the Hub
    for teacher in (CHAT, FEWSHOT):
        labeling = next(s for s in summary["generation"][teacher] if s["phase"] == "labeling")
        assert labeling["requests_this_run"] == 0


LOAD_STAGES = """
import json, sys
from datasets import load_dataset
from huggingface_hub import DatasetCard, hf_hub_download
repo = sys.argv[1]
card = DatasetCard.load(hf_hub_download(repo, "README.md", repo_type="dataset"))
index = json.load(open(hf_hub_download(repo, "stages.json", repo_type="dataset")))
loaded = {}
for config in card.data.configs:
    name = config["config_name"]
    data = load_dataset(repo, name, split="train")
    loaded[name] = {"rows": len(data), "columns": data.column_names}
print(json.dumps({"loaded": loaded, "text": card.text, "index": index}))
"""


@pytest.mark.slow
def test_every_published_stage_loads_with_load_dataset_and_the_card_lists_the_keys(runs, hub, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_STAGES, REPO], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    index = out["index"]
    # every data set stage with rows is a config (a 0-row stage, a teacher routed no prompt, is listed only)
    dataset_stages = [
        name for name, key in index["latest"].items() if index["stages"][name][key].get("data_files")
    ]
    assert len(dataset_stages) == len(index["stages"]) - 1  # all but the router (a folder)
    assert {name.replace("/", "--") for name in dataset_stages} == set(out["loaded"])
    resumed = runs["resumed"]
    for name in dataset_stages:
        local = load_dataset_folder(stage_folder(resumed, name) / "data")
        assert out["loaded"][name.replace("/", "--")] == {"rows": len(local), "columns": local.column_names}
    assert {"learnability", "num_response_tokens"} <= set(out["loaded"]["learnability"]["columns"])
    for name, keys in index["stages"].items():
        for key in keys:
            assert f"`{key}`" in out["text"], (name, key)
    assert "| `learnability` | the untuned student's mean log-probability" in out["text"]


# ------------------------------------------------------------------------------------------------
# The mirror alone, on two tiny stages (seconds): a failed push, its retry, a restore, a changed field


def _tiny_stages(alpha: float):
    from datasets import Dataset

    from persyn_hub.pipeline.runner import Stage

    first = Stage(
        "label-generate/t",
        lambda context: Dataset.from_dict({"prompt_id": ["p1", "p2"], "response": ["a", "b"]}),
        identity={"teacher": "t"},
    )
    second = Stage(
        "combine",
        lambda context: context["label-generate/t"].map(lambda row: {"reward": alpha * len(row["response"])}),
        inputs=("label-generate/t",),
        identity={"alpha": alpha, "normalization": "zscore"},
    )
    return first, second


def _mirrored_runner(hub: LocalHub, run_dir: Path, repo: str):
    import huggingface_hub.constants

    from persyn_hub.pipeline.cache import StageCache
    from persyn_hub.pipeline.runner import StageRunner
    from persyn_hub.publish.client import HubClient
    from persyn_hub.publish.mirror.stage_mirror import StageMirror

    huggingface_hub.constants.HF_HUB_DISABLE_XET = True  # read at import time; the LFS path is what we test
    api = HubClient(endpoint=hub.url, token=TOKEN)  # the client a run uses (retries 429/5xx)
    mirror = StageMirror(api=api, repo_id=repo, run_dir=run_dir, checkpoint_every=10**9).start()
    return StageRunner(StageCache(run_dir), mirror=mirror), api


def test_a_failed_stage_push_is_retried_at_the_next_stage_and_never_stops_the_run(
    hub, tmp_path, caplog, monkeypatch
):
    import logging

    from persyn_hub.publish import client

    caplog.set_level(logging.INFO, logger="persyn_hub")
    monkeypatch.setattr(client, "BASE_WAIT", 0.01)  # the client's own retries, quickly
    repo = "persyn-org/tiny-stages"
    runner, api = _mirrored_runner(hub, tmp_path / "one", repo)
    first, second = _tiny_stages(0.4)
    # a Hub down for longer than the client's retries (each 500 is retried MAX_ATTEMPTS times)
    hub.fail("POST", f"/api/datasets/{repo}/commit/", status=500, times=client.MAX_ATTEMPTS)
    runner.run(first)  # its push fails: the run goes on
    runner.mirror.wait()  # pushes run in the background
    assert "label-generate/t: the Hub copy" in caplog.text and "is behind" in caplog.text
    assert list(runner.mirror.behind) == ["label-generate/t"]
    runner.run(second)  # retries the first, then pushes the second: one commit per stage
    record = runner.mirror.finish()
    assert record["behind"] == [] and set(record["stages"]) == {"label-generate/t", "combine"}
    messages = [c.title for c in api.list_repo_commits(repo, repo_type="dataset")]
    assert [m for m in messages if "stage" in m] == [
        f"PerSyn persyn: stage combine (key {runner.keys['combine']})",
        f"PerSyn persyn: stage label-generate/t (key {runner.keys['label-generate/t']})",
    ]

    # Another machine: both stages come from the Hub, with the same content digests (so later keys match).
    caplog.clear()
    again, _ = _mirrored_runner(hub, tmp_path / "two", repo)
    for stage in _tiny_stages(0.4):
        again.run(stage)
    assert again.mirror.finish()["restored"] == ["label-generate/t", "combine"]
    assert again.digests == runner.digests and again.cached == {"label-generate/t": True, "combine": True}

    # A changed field: the generation is reused, combine is computed again and the log says why.
    caplog.clear()
    changed, _ = _mirrored_runner(hub, tmp_path / "three", repo)
    for stage in _tiny_stages(0.2):
        changed.run(stage)
    assert changed.mirror.finish()["restored"] == ["label-generate/t"]
    assert "stage combine: the Hub has it under key" in caplog.text and "alpha: 0.4 -> 0.2" in caplog.text
    assert changed.cached["combine"] is False
