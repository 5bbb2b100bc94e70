"""Fault injection over the whole pipeline: kills in every stage, flaky endpoints, bad input, secrets.

Every pipeline run here is the real `persyn run` command on the demo recipe, shrunk (12 prompts, 8
labeled, 16 new tokens, both teachers SmolLM2-135M: one chat, one few-shot completion teacher, so the
gemma tokenizer's 262k-entry stop-string table does not dominate the runtime). One uninterrupted run
is the reference every faulty run must reproduce exactly.

Kills: a run is SIGKILLed inside stage X, the next run resumes X and is killed inside X+1, and so
on through all eleven stages; a last run completes. The kill is armed by the child itself (a timer
thread that sends SIGKILL to its own pid: no handler, no atexit, no flush, exactly `kill -9`),
because most stages last 10-300 ms, too short for an outside watcher to land inside reliably. The
delay is seeded-random within the stage's reference duration (generation stages: after a random
number of checkpointed batches); if the stage's work ends first, the child waits inside the stage,
before its output is saved, for the timer. `run.log` shows which stage each killed run was in.

Run: `pytest -m fault tests/test_faults.py` (3-4 minutes on 2 idle cores; 6-12 with other jobs on them).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from persyn_hub.folders import SUCCESS, load_dataset_folder
from persyn_hub.pipeline.cache import CorruptCacheError, StageCache
from persyn_hub.pipeline.generation_stages import read_stats

sys.path.insert(0, str(Path(__file__).parent))
from servers import FaultProxy, LlamaServer, free_port, llama_cpp_available  # noqa: E402

pytestmark = pytest.mark.fault

ROOT = Path(__file__).parents[1]
RECIPE = "recipes/demo/asdiv-smollm2.yaml"
CHAT, FEWSHOT = "smollm2-135m-instruct", "smollm2-fewshot"
BATCH = 4
SMALL = [
    "--prompts.num_prompts", "12",
    "--labeling.num_prompts", "8",
    "--teachers.0.generation.max_new_tokens", "16",
    "--teachers.0.batch_size", str(BATCH),
    "--teachers.1.name", FEWSHOT,
    "--teachers.1.model", "bundled:smollm2-135m-instruct",
    "--teachers.1.generation.max_new_tokens", "16",
    "--teachers.1.batch_size", str(BATCH),
    "--router.num_train_epochs", "2",
    "--router.max_length", "48",
    "--routing.budgets", json.dumps({CHAT: 0.5, FEWSHOT: 0.5}),  # both teachers get routed prompts
    "--output.drop_truncated", "false",  # 16-token answers are mostly cut; keep them, this suite is about faults
]  # fmt: skip
STAGES = [
    "prompts",
    f"label-generate/{CHAT}",
    f"label-generate/{FEWSHOT}",
    "learnability",
    "quality",
    "combine",
    "router",
    "route",
    f"generate/{CHAT}",
    f"generate/{FEWSHOT}",
    "assemble",
]
SEED = 20250611
MAX_DELAY = 3.0
FAKE_TOKEN = "hf_fakeFaultSuiteTokenQ7x2Lm9Pz4Wd8Rv1"
STARTED = re.compile(r"stage (\S+): started")

# Runs `persyn` with a SIGKILL armed inside one stage ($PERSYN_FAULT_KILL: stage, delay, after_rows).
KILLER = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from persyn_hub.pipeline import cache as stage_cache
    from persyn_hub.generation import checkpoint

    spec = json.loads(os.environ["PERSYN_FAULT_KILL"])
    state = {"armed": False, "inside": False}

    def arm():
        if not state["armed"]:
            state["armed"] = True
            timer = threading.Timer(spec["delay"], os.kill, (os.getpid(), signal.SIGKILL))
            timer.daemon = True
            timer.start()

    def hold():  # the stage's work ended first: wait inside it, output unsaved, for the kill
        arm()
        time.sleep(600)

    def inside(compute):
        def wrapped(*args):
            state["inside"] = True
            if not spec["after_rows"]:
                arm()
            compute(*args)
            hold()
        return wrapped

    dataset_stage = stage_cache.StageCache.dataset_stage
    folder_stage = stage_cache.StageCache.folder_stage
    write = checkpoint.GenerationCheckpoint.write

    def patched_dataset_stage(self, name, key, compute, **kwargs):
        return dataset_stage(self, name, key, inside(compute) if name == spec["stage"] else compute, **kwargs)

    def patched_folder_stage(self, name, key, compute):
        return folder_stage(self, name, key, inside(compute) if name == spec["stage"] else compute)

    def patched_write(self, records):
        write(self, records)
        ids = spec["stage_ids"]
        done = sum(1 for pid, r in self.records.items() if pid in ids and not r.get("error"))
        if state["inside"] and spec["after_rows"] and done >= spec["after_rows"]:
            arm()

    stage_cache.StageCache.dataset_stage = patched_dataset_stage
    stage_cache.StageCache.folder_stage = patched_folder_stage
    checkpoint.GenerationCheckpoint.write = patched_write
    from persyn_hub.cli import main
    main(sys.argv[1:])
    sys.exit("persyn finished without being killed")
    """
)


def persyn(
    output_dir: Path, *extra: str, kill: dict | None = None, verbose: bool = False
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "TOKENIZERS_PARALLELISM": "false"}
    head = [sys.executable, "-c", KILLER] if kill else [sys.executable, "-m", "persyn_hub.cli"]
    if kill:
        env["PERSYN_FAULT_KILL"] = json.dumps(kill)
    command = [*head, *(["-v"] if verbose else []), "run", RECIPE, *SMALL, "--output.dir", str(output_dir)]
    return subprocess.run([*command, *extra], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def stage_folder(run_dir: Path, stage: str) -> Path:
    pattern = re.compile(re.escape(stage.replace("/", "--")) + r"-[0-9a-f]{16}")
    found = [p for p in (run_dir / "stages").iterdir() if pattern.fullmatch(p.name)]
    assert len(found) == 1, f"{stage}: {found}"
    return found[0]


def rows_of(path: Path) -> list[dict]:
    """A saved data set's rows, sorted by prompt (and teacher): what 'same rows, same values' compares."""
    rows = load_dataset_folder(path).to_list()
    return sorted(rows, key=lambda row: (row["prompt_id"], str(row.get("teacher"))))


def checkpoint_records(run_dir: Path, teacher: str) -> dict[str, list[dict]]:
    """Every record of a teacher's row checkpoint, by part file (one part per run that generated)."""
    (folder,) = (run_dir / "stages").glob(f"rows--{teacher}-*")
    parts = {}
    for part in sorted(folder.glob("part-*.jsonl")):
        parts[part.name] = [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    return parts


def log_tail(run_dir: Path, offset: int) -> str:
    log = run_dir / "run.log"
    return log.read_text()[offset:] if log.is_file() else ""


def log_size(run_dir: Path) -> int:
    log = run_dir / "run.log"
    return len(log.read_text()) if log.is_file() else 0


@dataclass
class Reference:
    dir: Path
    summary: dict
    outputs: list[subprocess.CompletedProcess]
    seconds: dict[str, float] = field(default_factory=dict)
    stage_ids: dict[str, list[str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """One uninterrupted run: what every faulty run must reproduce."""
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    result = persyn(run_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rows"] == 12 and summary["failures"]["generation"] == 0
    assert summary["failures"]["label_rows_excluded"] == 0
    assert [stage["name"] for stage in summary["stages"]] == STAGES
    reference = Reference(run_dir, summary, [result])
    reference.seconds = {stage["name"]: stage["seconds"] for stage in summary["stages"]}
    for stage in STAGES:
        if "generate/" in stage:
            ids = rows_of(stage_folder(run_dir, stage) / "data")
            reference.stage_ids[stage] = [row["prompt_id"] for row in ids]
            assert ids, f"{stage} has no rows: the kill test would not exercise it"
    return reference


# ------------------------------------------------------------------------------------------------
# Kills in every stage


@dataclass
class Kill:
    spec: dict
    returncode: int
    started: list[str]
    finished_at_kill: bool
    checkpointed_at_kill: int


def kill_spec(stage: str, reference: Reference, rng: random.Random) -> dict:
    """Where to kill: a seeded-random delay within the stage's reference duration (capped, so a slow
    reference on a busy machine does not turn into long waits)."""
    seconds = min(reference.seconds[stage], MAX_DELAY)
    ids = reference.stage_ids.get(stage, [])
    if ids:  # generation: after a random number of checkpointed batches, a random point of the next one
        batches = math.ceil(len(ids) / BATCH)
        after_rows = min(len(ids), BATCH * rng.randint(1, batches))
        return {
            "stage": stage,
            "delay": rng.uniform(0, seconds / batches),
            "after_rows": after_rows,
            "stage_ids": ids,
        }
    return {"stage": stage, "delay": rng.uniform(0, seconds), "after_rows": 0, "stage_ids": []}


def successes(records: list[dict], ids: list[str]) -> list[str]:
    return [r["prompt_id"] for r in records if r["prompt_id"] in ids and not r.get("error")]


@pytest.fixture(scope="module")
def killed_everywhere(reference, tmp_path_factory):
    """Kill in stage 1, resume and kill in stage 2, ..., kill in assemble, then run to the end."""
    run_dir = tmp_path_factory.mktemp("faults") / "killed"
    rng = random.Random(SEED)
    kills: dict[str, Kill] = {}
    outputs = []
    for stage in STAGES:
        spec = kill_spec(stage, reference, rng)
        offset = log_size(run_dir)
        result = persyn(run_dir, kill=spec)
        outputs.append(result)
        started = STARTED.findall(log_tail(run_dir, offset))
        if stage == "assemble":
            finished = (run_dir / "summary.json").exists()
        else:
            finished = (stage_folder(run_dir, stage) / SUCCESS).exists()
        checkpointed = 0
        if spec["stage_ids"]:
            teacher = stage.split("/", 1)[1]
            records = [r for part in checkpoint_records(run_dir, teacher).values() for r in part]
            checkpointed = len(successes(records, spec["stage_ids"]))
        kills[stage] = Kill(spec, result.returncode, started, finished, checkpointed)
        assert result.returncode == -signal.SIGKILL, (stage, result.returncode, result.stderr[-3000:])
    offset = log_size(run_dir)
    final = persyn(run_dir)
    outputs.append(final)
    assert final.returncode == 0, final.stderr[-4000:]
    return run_dir, kills, outputs, log_tail(run_dir, offset)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_kill_inside_a_stage_resumes_to_the_reference_output(stage, killed_everywhere, reference):
    run_dir, kills, _, _ = killed_everywhere
    kill = kills[stage]
    assert kill.returncode == -signal.SIGKILL
    assert kill.started and kill.started[-1] == stage, f"the kill landed outside {stage}: {kill.started}"
    assert not kill.finished_at_kill, f"{stage} had already finished when it was killed"

    if stage == "assemble":
        assert rows_of(run_dir / "artifacts/dataset") == rows_of(reference.dir / "artifacts/dataset")
        return
    folder, expected = stage_folder(run_dir, stage), stage_folder(reference.dir, stage)
    assert folder.name == expected.name, "same recipe, same stage key"
    assert (folder / SUCCESS).is_file()
    if stage == "router":
        from safetensors.torch import load_file

        ours, theirs = (
            load_file(folder / "output/model.safetensors"),
            load_file(expected / "output/model.safetensors"),
        )
        assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
        metrics = json.loads((folder / "output/router_metrics.json").read_text())
        assert metrics == json.loads((expected / "output/router_metrics.json").read_text())
        return
    assert rows_of(folder / "data") == rows_of(expected / "data")

    if kill.spec["stage_ids"]:  # no row generated twice once it had succeeded, none lost
        ids = kill.spec["stage_ids"]
        teacher = stage.split("/", 1)[1]
        parts = checkpoint_records(run_dir, teacher)
        done = [successes(records, ids) for records in parts.values()]
        every = [pid for part in done for pid in part]
        assert sorted(every) == sorted(ids), f"each row succeeds exactly once: {done}"
        assert 0 < kill.checkpointed_at_kill, "the kill left checkpointed rows to reuse"
        stats = read_stats(folder)  # its chunks' accounting, whichever run finished each chunk
        assert stats["requests"] + stats["reused"] == len(ids)
        # the checkpointed rows came back row by row (a chunk computed again), or inside a chunk the
        # killed run had finished before the kill (reused whole, nothing asked): never asked again
        assert stats["reused"] in (0, kill.checkpointed_at_kill)


@pytest.mark.slow
def test_after_a_kill_in_every_stage_the_data_set_is_the_reference(killed_everywhere, reference):
    run_dir, kills, outputs, final_log = killed_everywhere
    assert set(kills) == set(STAGES)
    for artifact in ("dataset", "labels", "routing"):
        assert rows_of(run_dir / "artifacts" / artifact) == rows_of(reference.dir / "artifacts" / artifact)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("rows", "teacher_counts", "generations_made", "failures", "router"):
        assert summary[key] == reference.summary[key], key
    # the last kill was in assemble: the final run reused every stage before it and ran assemble again
    assert [s["name"] for s in summary["stages"] if not s["cached"]] == ["assemble"], summary["stages"]
    assert STARTED.findall(final_log) == ["assemble"]
    assert not list(run_dir.rglob("*.partial")), "no half-written folder is left behind"
    # Every generation ever made, by the 12 killed or finished runs: one per row and teacher needed.
    made = 0
    for teacher in (CHAT, FEWSHOT):
        records = [r for part in checkpoint_records(run_dir, teacher).values() for r in part]
        ok = [r["prompt_id"] for r in records if not r.get("error")]
        assert len(ok) == len(set(ok)), f"{teacher}: a row was generated twice"
        made += len(ok)
    assert made == reference.summary["generations_made"] == 8 * 2 + (12 - 8)


@pytest.mark.slow
def test_tokens_are_never_printed_or_written(killed_everywhere, reference):
    """HF_TOKEN was set for every run above: it must not appear in any output, log or file."""
    run_dir, _, outputs, _ = killed_everywhere
    for result in [*outputs, *reference.outputs]:
        assert FAKE_TOKEN not in result.stdout and FAKE_TOKEN not in result.stderr
    needle = FAKE_TOKEN.encode()
    for directory in (run_dir, reference.dir):
        files = [p for p in directory.rglob("*") if p.is_file()]
        assert any(p.name == "run.log" for p in files) and any(p.name == "summary.json" for p in files)
        leaked = [str(p) for p in files if needle in p.read_bytes()]
        assert not leaked, leaked


# ------------------------------------------------------------------------------------------------
# A served teacher behind a faulty proxy


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.skipif(
    not llama_cpp_available(), reason="needs llama-cpp-python[server]: `bash scripts/install-llama-server.sh`"
)
def test_endpoint_faults_through_the_pipeline_leave_the_data_unchanged(reference, tmp_path):
    from persyn_hub.bundled import bundled_gguf_path

    prompts = load_dataset_folder(stage_folder(reference.dir, "prompts") / "data")
    texts = [messages[-1]["content"] for messages in prompts["messages"]]
    labeled = texts[:8]
    faults = ["429", "500", "503", "hang", "drop", "malformed", "empty"]
    with (
        LlamaServer(bundled_gguf_path("bundled:smollm2-135m-instruct")) as server,
        FaultProxy(server.url, retry_after=0.2, hang_seconds=20.0) as proxy,
    ):
        served = [
            "--teachers.0.endpoints", json.dumps([proxy.url]),
            "--teachers.0.timeout", "8",
            "--teachers.0.retry_backoff", "0.05",
            "--teachers.0.max_concurrency", "1",
        ]  # fmt: skip
        clean = persyn(tmp_path / "clean", *served)
        assert clean.returncode == 0, clean.stderr[-4000:]
        assert sorted(proxy.successes.values()) == [1] * 10, "8 labeled + 2 routed to the served teacher"

        proxy.reset()
        # The "empty" fault goes to a prompt the served model answers (a greedy answer can itself be
        # blank, which --retry-failed would then rightly reproduce instead of recovering).
        clean_labels = load_dataset_folder(tmp_path / "clean" / "artifacts" / "labels")
        answered = {
            m[-1]["content"]
            for m, t, e in zip(clean_labels["messages"], clean_labels["teacher"], clean_labels["error"])
            if t == CHAT and e is None
        }
        labeled = sorted(
            labeled, key=lambda text: text in answered
        )  # answered prompts last: "empty" gets one
        assert labeled[len(faults) - 1] in answered
        proxy.plan = {text: [fault] for text, fault in zip(labeled, faults)}
        proxy.default = ["503"]  # every other prompt, routed ones included, fails once
        first = persyn(tmp_path / "faulty", *served, verbose=True)
        assert first.returncode == 0, first.stderr[-4000:]
        summary = json.loads((tmp_path / "faulty/summary.json").read_text())
        # An empty greedy answer is not retried (it would repeat): that labeled row is excluded, named,
        # and so is the other teacher's row on that prompt (nothing to compare it with).
        assert summary["failures"]["label_excluded_reasons"] == {
            "no usable answer": 1,
            "fewer than 2 usable teachers for this prompt": 1,
        }

        # The failed row is recorded and its stage finished: a plain re-run reuses it, --retry-failed asks again.
        again = persyn(tmp_path / "faulty", *served)
        assert again.returncode == 0, again.stderr[-4000:]
        summary = json.loads((tmp_path / "faulty/summary.json").read_text())
        assert summary["requests_this_run"] == 0 and all(stage["cached"] for stage in summary["stages"])
        second = persyn(tmp_path / "faulty", *served, "--retry-failed", verbose=True)  # only the failed row
        assert second.returncode == 0, second.stderr[-4000:]
        summary = json.loads((tmp_path / "faulty/summary.json").read_text())
        cached = {stage["name"]: stage["cached"] for stage in summary["stages"]}
        assert cached["prompts"] and cached[f"label-generate/{FEWSHOT}"]
        assert not cached[f"label-generate/{CHAT}"], "the stage with a failed row is entered again"
        assert not cached["learnability"], "scores, router and routing are redone with the row now answered"
        chat_stats = {s["phase"]: s for s in summary["generation"][CHAT]}
        assert chat_stats["labeling"]["requests_this_run"] == 1
        assert chat_stats["labeling"]["reused"] == 7
        # Each planned fault once; the default 503 once for every other prompt the teacher was sent
        # (the first run, short of one label row, may have routed other prompts to it than the second).
        unplanned = set(proxy.requests) - set(labeled[: len(faults)])
        assert dict(proxy.injected) == {**dict.fromkeys(faults, 1), "503": 1 + len(unplanned)}

    for artifact in ("dataset", "labels", "routing"):
        assert rows_of(tmp_path / "faulty/artifacts" / artifact) == rows_of(
            tmp_path / "clean/artifacts" / artifact
        )
    # Each prompt reached the server once; "malformed" answered and was cut (sent again), and the
    # empty answer was asked again by the re-run: those two twice, nothing else.
    twice = {labeled[faults.index("malformed")], labeled[faults.index("empty")]}
    assert {text: n for text, n in proxy.successes.items() if n != 1} == dict.fromkeys(twice, 2)
    assert set(proxy.successes) <= set(texts)
    final = load_dataset_folder(tmp_path / "faulty/artifacts/dataset")
    served_rows = {m[-2]["content"] for m, t in zip(final["messages"], final["teacher"]) if t == CHAT}
    assert served_rows | set(labeled) <= set(proxy.successes), "no row lost"
    for result in (clean, first, second):
        assert FAKE_TOKEN not in result.stdout + result.stderr
    assert FAKE_TOKEN.encode() not in (tmp_path / "faulty/run.log").read_bytes()


# ------------------------------------------------------------------------------------------------
# Bad input, damaged caches, security


@pytest.mark.slow
def test_a_damaged_stage_is_reported_by_name_and_nothing_else_is_lost(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir, run_dir)
    combine = stage_folder(run_dir, "combine")
    (arrow,) = (combine / "data").glob("data-*.arrow")
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\x00garble\x00"  # loads fine: only checksums see it
    arrow.write_bytes(bytes(data))
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))

    result = persyn(run_dir)
    assert result.returncode == 2
    assert f"The cached stage {combine} is unreadable" in result.stderr
    assert (
        "data-00000-of-00001.arrow" in result.stderr and "Delete that folder and run again" in result.stderr
    )
    assert "Traceback" not in result.stderr
    after = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.name != "run.log")
    assert after == [p for p in before if not p.endswith("run.log")], "nothing is deleted or rewritten"

    shutil.rmtree(combine)  # the fix the message gives
    again = persyn(run_dir)
    assert again.returncode == 0, again.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"] if not s["cached"]] == ["combine"]
    assert rows_of(run_dir / "artifacts/dataset") == rows_of(reference.dir / "artifacts/dataset")


@pytest.mark.slow
def test_truncated_files_a_garbled_marker_and_damaged_router_weights_are_refused(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference.dir / "stages", run_dir / "stages")

    def key(stage: str) -> str:
        return stage_folder(run_dir, stage).name.rsplit("-", 1)[1]

    def never(_folder):
        raise AssertionError("a damaged stage must be reported, not silently recomputed")

    learn = stage_folder(run_dir, "learnability")
    (arrow,) = (learn / "data").glob("data-*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:-100])
    with pytest.raises(CorruptCacheError, match=re.escape(str(learn))):
        StageCache(run_dir).dataset_stage("learnability", key("learnability"), never)

    quality = stage_folder(run_dir, "quality")
    (quality / SUCCESS).write_text('{"key": ')
    with pytest.raises(CorruptCacheError, match=rf"{re.escape(str(quality))} is unreadable \({SUCCESS}"):
        StageCache(run_dir).dataset_stage("quality", key("quality"), never)

    router = stage_folder(run_dir, "router")
    weights = router / "output/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:] = bytes(64)  # zeroed weights still load: only the checksum notices
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match=r"\['model.safetensors'\]"):
        StageCache(run_dir).folder_stage("router", key("router"), never)

    # The stages nobody damaged still load.
    assert len(StageCache(run_dir).dataset_stage("combine", key("combine"), never)) == 16


@pytest.mark.slow
def test_a_router_for_other_teachers_is_refused_before_any_generation(reference, tmp_path):
    router = stage_folder(reference.dir, "router") / "output"
    result = persyn(
        tmp_path / "run",
        "--routing.reuse_router", str(router),
        "--teachers.1.name", "qwen-teacher",
        "--routing.budgets", "{}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "routing.reuse_router: The router" in result.stderr
    assert f"scores teachers ['{CHAT}', '{FEWSHOT}']" in result.stderr and "qwen-teacher" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "run/stages").glob("label-generate*")), "refused before any generation"


@pytest.mark.slow
def test_a_router_is_loaded_from_safetensors_only_never_from_a_pickle(reference, tmp_path):
    import pickle

    import torch
    from safetensors.torch import load_file

    from persyn_hub.router import load_router, router_info

    source = stage_folder(reference.dir, "router") / "output"
    pickled = tmp_path / "pickled-router"
    shutil.copytree(source, pickled)
    state = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")  # a valid checkpoint, but a pickle
    with pytest.raises(OSError, match="safetensors"):
        load_router(str(pickled))

    class Payload:  # what a malicious pytorch_model.bin does when unpickled
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(OSError):
        load_router(str(pickled))
    assert not (tmp_path / "pwned").exists()

    router, _ = load_router(str(source), expected_teachers=[FEWSHOT, CHAT])  # the real one still loads
    assert router_info(router).teachers == [CHAT, FEWSHOT]


def test_an_unreachable_endpoint_teacher_is_refused_before_any_generation(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = persyn(tmp_path / "run", "--teachers.0.endpoints", json.dumps([dead]))
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"teachers[0] ('{CHAT}').endpoints: no endpoint answers: {dead}" in result.stderr
    assert "Start the server or fix the URL" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "run/stages").glob("label-generate*"))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize(
    ("rows", "config", "message"),
    [
        (
            [{"p": "Ann has 3 pens.", "q": "How many?"}, {"p": "Bo has 2.", "q": None}],
            {"prompt_template": "{p} {q}"},
            r"row 1 of .*: column 'q' \(prompts\.prompt_template\) is None, not text",
        ),
        (
            [{"p": "Ann has 3 pens.", "q": ["How", "many?"]}],
            {"prompt_template": "{p} {q}"},
            r"row 0 of .*: column 'q' \(prompts\.prompt_template\) is \['How', 'many\?'\], not text",
        ),
        (
            [{"chat": [{"role": "user", "content": 12}]}],
            {"prompt_column": "chat"},
            r"row 0 of .*: a message's content is int, not text",
        ),
        (
            [{"chat": [{"role": "user", "content": "Hi"}]}, {"chat": [{"role": "user", "content": " \n\t"}]}],
            {"prompt_column": "chat"},
            r"row 1 of .*: the prompt is empty or whitespace",
        ),
        (
            [{"chat": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}],
            {"prompt_column": "chat"},
            r"row 0 of .*: the chat must end with a user turn",
        ),
        ([{"q": None}], {"prompt_column": "q"}, r"row 0 of .*: prompt None is NoneType"),
    ],
)
def test_prompt_values_that_are_not_text_are_named_by_row_and_column(tmp_path, rows, config, message):
    from persyn_hub.data import PromptDataError, load_prompts
    from persyn_hub.recipe.config import PromptsConfig

    source = write_jsonl(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(PromptDataError, match=message):
        load_prompts(PromptsConfig(source=source, shuffle=False, **config))


def test_trust_remote_code_is_off_unless_a_recipe_turns_it_on_for_a_named_model(monkeypatch):
    import transformers

    from persyn_hub.generation.local import load_teacher
    from persyn_hub.recipe.config import QualityConfig, StudentConfig, TeacherConfig, load_recipe
    from persyn_hub.scoring.learnability.scorer import load_student
    from persyn_hub.scoring.reward_model import load_reward_model

    recipe = load_recipe(ROOT / RECIPE)
    assert not recipe.student.trust_remote_code and not recipe.quality.trust_remote_code
    assert not any(teacher.trust_remote_code for teacher in recipe.teachers)
    assert not TeacherConfig(name="t").trust_remote_code
    assert not StudentConfig().trust_remote_code and not QualityConfig().trust_remote_code
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        assert "trust_remote_code: true" not in path.read_text().lower(), path

    seen = []

    class Stop(Exception):
        pass

    def record(cls, name, *args, **kwargs):
        seen.append((name, kwargs.get("trust_remote_code")))
        raise Stop

    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM, transformers.AutoConfig):
        monkeypatch.setattr(auto, "from_pretrained", classmethod(record))
    for load, config in (
        (load_teacher, TeacherConfig(name="t", model="org/model")),
        (load_student, StudentConfig(model="org/model")),
        (load_reward_model, QualityConfig(kind="reward_model", reward_model="org/model")),
        (load_teacher, TeacherConfig(name="t", model="org/custom", trust_remote_code=True)),
    ):
        with pytest.raises(Stop):
            load(config)
    assert seen == [("org/model", False)] * 3 + [("org/custom", True)]
