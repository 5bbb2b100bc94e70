"""The stages repo under real Hub conditions: a resume source that cannot be read, private repos and scrubbed
files, the Hub's commit rate, Parquet stages, two runs sharing a repo, pushes that leave the run computing.

Every push goes through the real `huggingface_hub` client (`publish.client.HubClient`) to the local
Hub-protocol server (`tests/hub_server.py`, git-backed); `persyn run` / `persyn publish` run in-process
through `persyn_hub.cli.main`, and `load_dataset` runs in a fresh interpreter pointed at the server.
The stages are tiny real `Stage`s on a real `StageRunner` (seconds, no model).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import LocalHub  # noqa: E402

ROOT = Path(__file__).parents[1]
RECIPE = str(ROOT / "recipes" / "demo" / "asdiv-smollm2.yaml")
TOKEN = "hf_test_ResilienceToken7Kq"
ORG = "persyn-org"


def _point_at(monkeypatch, url: str) -> None:
    """`HF_ENDPOINT=url` as if set before `huggingface_hub` was imported (HfApi() and downloads use it)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fresh local Hub per test (rate limits and injected failures stay in their test)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = LocalHub(tmp_path / "repos", token=TOKEN).start()
    _point_at(monkeypatch, hub.url)
    yield hub
    hub.stop()


def _client(hub: LocalHub):
    from persyn_hub.publish.client import HubClient, HubTraffic

    return HubClient(endpoint=hub.url, token=TOKEN, traffic=HubTraffic())


def _mirror(hub: LocalHub, run_dir: Path, repo: str, api=None, **settings):
    from persyn_hub.publish.mirror.stage_mirror import StageMirror

    return StageMirror(api=api or _client(hub), repo_id=repo, run_dir=run_dir, **settings).start()


def _runner(mirror, run_dir: Path):
    from persyn_hub.pipeline.cache import StageCache
    from persyn_hub.pipeline.runner import StageRunner

    return StageRunner(StageCache(run_dir), mirror=mirror)


def _stages(teacher: str = "t", alpha: float = 0.4, identity: dict | None = None, rows: int = 3):
    """A generation-like stage and a combine stage reading it (real `Stage`s, real data sets)."""
    from datasets import Dataset

    from persyn_hub.pipeline.runner import Stage

    def generate(context):
        return Dataset.from_dict(
            {
                "prompt_id": [f"p{i}" for i in range(rows)],
                "response": [f"answer {i} " * (i + 1) for i in range(rows)],
                "num_tokens": list(range(rows)),
                "error": [None] * rows,
            }
        )

    first = Stage(f"label-generate/{teacher}", generate, identity={"teacher": teacher, **(identity or {})})
    second = Stage(
        "combine",
        lambda context: context[first.name].map(lambda row: {"reward": alpha * len(row["response"])}),
        inputs=(first.name,),
        identity={"alpha": alpha, "normalization": "zscore"},
    )
    return first, second


def _files(hub: LocalHub, repo: str, revision: str = "main") -> list[str]:
    return sorted(_client(hub).list_repo_files(repo, repo_type="dataset", revision=revision))


def _read(hub: LocalHub, repo: str, path: str) -> bytes:
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(
        repo,
        path,
        repo_type="dataset",
        endpoint=hub.url,
        token=TOKEN,
        cache_dir=hub.root.parent / "downloads",
    )
    return Path(local).read_bytes()


LOAD_CONFIGS = """
import json, sys
from datasets import load_dataset
from huggingface_hub import DatasetCard, hf_hub_download
repo = sys.argv[1]
card = DatasetCard.load(hf_hub_download(repo, "README.md", repo_type="dataset"))
loaded = {}
for config in card.data.configs:
    data = load_dataset(repo, config["config_name"], split="train")
    loaded[config["config_name"]] = {"rows": data.to_list(), "files": [d["path"] for d in config["data_files"]]}
print(json.dumps(loaded))
"""


def _load_configs(hub: LocalHub, repo: str, tmp_path: Path) -> dict:
    """Every config of the repo's card, loaded with `load_dataset` in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_CONFIGS, repo], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("persyn_hub") and r.levelno == logging.WARNING
    ]


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    from persyn_hub.cli import main

    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# 1. A resume source that cannot be read stops the run before any stage


@pytest.mark.parametrize("case", ["missing repo", "bad revision", "401", "403"])
def test_resume_fails_before_any_stage_for_a_repo_or_revision_that_cannot_be_read(
    hub, tmp_path, capsys, case
):
    repo = f"{ORG}/resume-source"
    _client(hub).create_repo(repo, repo_type="dataset", private=True)
    source = {"missing repo": f"{ORG}/no-such-stages", "bad revision": f"{repo}@no-such-branch"}.get(
        case, repo
    )
    if case in ("401", "403"):
        hub.fail("GET", f"/api/datasets/{repo}", status=int(case), times=10)
    run_dir = tmp_path / "run"
    code, err = _run_cli(capsys, "run", RECIPE, "--output.dir", str(run_dir), "--resume-from-hub", source)
    lines = [line for line in err.splitlines() if line.startswith("persyn: error:")]
    assert code == 2 and len(lines) == 1, err[-3000:]
    line = lines[0]
    name, _, revision = source.partition("@")
    assert f"output.hub.resume_from (--resume-from-hub): cannot read dataset repo {name!r}" in line
    assert f"at revision {revision or 'main'!r}" in line and "Fix:" in line
    reason = {
        "missing repo": "does not exist, or it is private",
        "bad revision": "has no revision 'no-such-branch'",
        "401": "refused the token (401)",
        "403": "may not read the repo (403)",
    }[case]
    assert reason in line, line
    assert TOKEN not in err
    # before any stage: nothing was started, nothing computed
    assert "started" not in (run_dir / "run.log").read_text()
    assert not (run_dir / "stages").exists() or not any((run_dir / "stages").iterdir())


def test_resume_fails_within_a_minute_when_the_endpoint_is_unreachable(hub, tmp_path, capsys, monkeypatch):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    refused.close()  # nothing listens: connections are refused
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)  # accepts connections (the kernel's backlog) and never answers
    try:
        for port in (refused_port, hanging.getsockname()[1]):
            url = f"http://alice:s3cret@127.0.0.1:{port}"
            _point_at(monkeypatch, url)
            run_dir = tmp_path / f"run-{port}"
            started = time.monotonic()
            code, err = _run_cli(
                capsys, "run", RECIPE, "--output.dir", str(run_dir), "--resume-from-hub", f"{ORG}/stages"
            )
            seconds = time.monotonic() - started
            lines = [line for line in err.splitlines() if line.startswith("persyn: error:")]
            assert code == 2 and len(lines) == 1, err[-3000:]
            assert seconds < 60, seconds
            assert f"cannot read dataset repo '{ORG}/stages' at revision 'main'" in lines[0]
            assert f"the Hub endpoint http://***@127.0.0.1:{port} did not answer" in lines[0], lines[0]
            assert "check HF_ENDPOINT and the network" in lines[0]
            assert "s3cret" not in err and "s3cret" not in (run_dir / "run.log").read_text()
            assert "started" not in (run_dir / "run.log").read_text()
    finally:
        hanging.close()


def test_resume_fails_to_reuse_anything_warns_once_naming_what_differs(hub, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="persyn_hub")
    repo = f"{ORG}/resume-differs"
    runner = _runner(_mirror(hub, tmp_path / "one", repo), tmp_path / "one")
    for stage in _stages(identity={"dtype": "float32", "versions": {"vllm": "0.9.0"}}):
        runner.run(stage)
    runner.mirror.finish()

    caplog.clear()
    mirror = _mirror(hub, tmp_path / "two", repo, resume=True)
    again = _runner(mirror, tmp_path / "two")
    for stage in _stages(identity={"dtype": "bfloat16", "versions": {"vllm": "0.10.1"}}, rows=4):
        again.run(stage)
    assert mirror.finish()["restored"] == []
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        f"Hub resume: nothing reused from {repo}@main so far: stage label-generate/t"
    )
    assert (
        'dtype: "float32" -> "bfloat16"' in warnings[0]
        and 'versions.vllm: "0.9.0" -> "0.10.1"' in warnings[0]
    )

    # a repo that has no stages at all: said once at the start, before anything is computed
    caplog.clear()
    _client(hub).create_repo(f"{ORG}/empty-stages", repo_type="dataset", private=True)
    empty = _mirror(hub, tmp_path / "three", f"{ORG}/empty-stages", resume=True)
    assert _warnings(caplog) == [
        f"Hub resume: {ORG}/empty-stages@main holds no published stage (no stages.json): nothing to reuse; "
        "every stage is computed here. Check the repo id and revision (the stages repo of the run to resume)."
    ]
    runner = _runner(empty, tmp_path / "three")
    for stage in _stages():
        runner.run(stage)
    empty.finish()
    assert len(_warnings(caplog)) == 1


# ------------------------------------------------------------------------------------------------
# 2. Private by default; nothing local or secret in a pushed file or a card


def test_private_default_stages_repo_is_private_and_a_public_one_is_warned_about_once(hub, tmp_path, caplog):
    from persyn_hub.recipe.sections import HubConfig

    assert HubConfig().stages_private is True and HubConfig().private is False
    caplog.set_level(logging.INFO, logger="persyn_hub")
    api = _client(hub)
    runner = _runner(_mirror(hub, tmp_path / "new", f"{ORG}/new-stages"), tmp_path / "new")
    for stage in _stages():
        runner.run(stage)
    runner.mirror.finish()
    assert api.repo_info(f"{ORG}/new-stages", repo_type="dataset").private is True
    assert "is public" not in caplog.text

    api.create_repo(f"{ORG}/public-stages", repo_type="dataset", private=False)
    runner = _runner(_mirror(hub, tmp_path / "public", f"{ORG}/public-stages"), tmp_path / "public")
    for stage in _stages(alpha=0.1):
        runner.run(stage)
    assert runner.mirror.finish()["behind"] == []
    public = [r.getMessage() for r in caplog.records if "is public" in r.getMessage()]
    assert len(public) == 1 and public[0].startswith(f"Hub stages: {ORG}/public-stages is public")
    assert "stages_private: false" in public[0]


def test_private_default_no_pushed_file_or_card_holds_a_local_path_credential_or_token(hub, tmp_path):
    from datasets import Dataset

    from persyn_hub.pipeline.runner import Stage
    from persyn_hub.publish.cards import render_dataset_card, render_labels_card
    from persyn_hub.recipe.config import load_recipe

    secret_url = "http://alice:s3cret-pass@10.1.2.3:8000/v1?api_key=sk-LEAKED42&model=x"
    local_dir = str(tmp_path / "private-user-folder" / "run")
    repo = f"{ORG}/scrubbed-stages"
    mirror = _mirror(hub, tmp_path / "run", repo, checkpoint_minutes=0.0)
    runner = _runner(mirror, tmp_path / "run")

    def generate(context):
        stats = {"stopped": f"the server at {secret_url} refused", "prompts": f"{local_dir}/prompts.jsonl"}
        (context.folder / "stats.json").write_text(json.dumps(stats))  # a side file, as generation writes
        return Dataset.from_dict(
            {"prompt_id": ["p1"], "response": [None], "error": [f"ConnectError: {secret_url} {TOKEN}"]}
        )

    failed = Stage(
        "label-generate/served",
        generate,
        identity={"endpoints": [secret_url], "source": f"{local_dir}/prompts.jsonl", "token": TOKEN},
    )
    rows = tmp_path / "run" / "stages" / "rows--served-0123456789abcdef"
    rows.mkdir(parents=True)
    (rows / "part-1-2.jsonl").write_text(
        json.dumps({"prompt_id": "p1", "error": f"{secret_url} {TOKEN}"}) + "\n"
    )
    assert mirror.rows.push_rows(force=True) == ["p1"]
    runner.run(failed)
    assert mirror.finish()["behind"] == []

    recipe = load_recipe(
        RECIPE,
        [
            "--output.dir", local_dir,
            "--output.hub.dataset_repo", f"{ORG}/final",
            "--env", json.dumps({"SERVICE_URL": secret_url, "PLAIN": "kept"}),  # secret keys are refused
            "--teachers.0.endpoints", json.dumps([secret_url]),
        ],
    )  # fmt: skip
    final = Dataset.from_dict({"prompt_id": ["p1"], "messages": [[{"role": "user", "content": "hi"}]]})
    summary = {"rows": 1, "teachers": recipe.teacher_names()}
    cards = [
        str(render_dataset_card(recipe=recipe, summary=summary, dataset=final, hub_url=secret_url)),
        str(render_labels_card(recipe=recipe, summary=summary, labels=final, hub_url=secret_url)),
    ]
    assert "PLAIN: kept" in cards[0] and "dir: <local>/run" in cards[0]
    pushed = [_read(hub, repo, path) for path in _files(hub, repo)]
    assert any(path.startswith("rows/rows--served") for path in _files(hub, repo))
    assert any(path.endswith("/stats.json") for path in _files(hub, repo))
    for text in [*cards, *(data.decode("utf-8", "replace") for data in pushed)]:
        for leak in ("s3cret-pass", "sk-LEAKED42", TOKEN, str(tmp_path), "private-user-folder/run"):
            assert leak not in text, (leak, text[:2000])
    import pyarrow.parquet as pq

    parquet = [p for p in _files(hub, repo) if p.endswith(".parquet")]
    local = Path(hub.root / "x.parquet")
    local.write_bytes(_read(hub, repo, parquet[0]))
    assert "http://***@10.1.2.3" in pq.read_table(local).to_pylist()[0]["error"]


# ------------------------------------------------------------------------------------------------
# 3. The Hub's commit rate: row checkpoints on a timer, each row uploaded once; 429 and 5xx retried


def test_commit_budget_long_generation_stays_under_the_rate_and_uploads_each_row_once(
    hub, tmp_path, monkeypatch
):
    from persyn_hub.generation.checkpoint import GenerationCheckpoint
    from persyn_hub.publish.mirror import rows as hub_rows
    from persyn_hub.recipe.sections import HubConfig

    assert HubConfig().checkpoint_every is None  # the timer only, by default
    monkeypatch.setattr(hub_rows, "ROWS_POLL_SECONDS", 0.05)
    hub.limit_commits(3, per_seconds=2.0)  # the Hub's commit rate, scaled down: 3 commits per 2 s
    repo = f"{ORG}/long-generation"
    # a generation writing 400 rows a second for 5 s; rows pushed every 0.75 s (`checkpoint_minutes`)
    mirror = _mirror(hub, tmp_path, repo, checkpoint_minutes=0.75 / 60)
    folder = tmp_path / "stages" / "rows--t-0123456789abcdef"
    written = 0
    with GenerationCheckpoint(folder) as checkpoint:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            checkpoint.write(
                {"prompt_id": f"p{written + i}", "response": "x" * 40, "error": None} for i in range(20)
            )
            written += 20
            time.sleep(0.05)
    waited = time.monotonic() + 10
    while mirror.rows.rows_pushed < written and time.monotonic() < waited:
        time.sleep(0.1)  # the last rows go with the next tick of the timer
    record = mirror.finish()

    assert hub.rate_limited == 0, "a push met the commit rate limit"
    times = [c["time"] for c in hub.commit_log if c["repo"] == repo]
    assert 4 <= len(times) <= 12, len(times)  # about one commit per 0.75 s, not one per 256 rows
    part = next(folder.glob("part-*.jsonl")).read_bytes()
    pieces = sorted(p for p in _files(hub, repo) if p.startswith("rows/"))
    assert all(
        re.fullmatch(r"rows/rows--t-0123456789abcdef/part-[\d-]+\.lines-\d{9}-\d{9}\.jsonl", p)
        for p in pieces
    )
    assert b"".join(_read(hub, repo, p) for p in pieces) == part  # every row, once, in order
    # each commit sent only its new rows: bytes uploaded == the rows (plus the repo's first commit: none)
    assert mirror.api.traffic.bytes_uploaded == len(part)
    assert mirror.api.traffic.commits == len(times) and record["rows_pushed"] == written
    ids = [json.loads(line)["prompt_id"] for line in part.splitlines()]
    assert len(ids) == len(set(ids)) == written


def test_rate_limit_429_is_retried_after_retry_after_and_5xx_with_backoff(hub, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="persyn_hub")
    repo = f"{ORG}/rate-limited"
    mirror = _mirror(hub, tmp_path, repo)
    runner = _runner(mirror, tmp_path)
    first, second = _stages()
    hub.limit_commits(1, per_seconds=3.0)  # the second stage's commit comes too soon: 429, Retry-After ~3
    started = time.monotonic()
    runner.run(first)
    runner.run(second)
    mirror.wait()
    seconds = time.monotonic() - started
    assert hub.rate_limited >= 1
    retry_after = [
        r.getMessage() for r in caplog.records if "as the Hub asked (Retry-After)" in r.getMessage()
    ]
    assert retry_after and "429" in retry_after[0]
    assert seconds >= 2.0, seconds  # it waited as told instead of failing
    hub.limit_commits(None)
    hub.fail("POST", f"/api/datasets/{repo}/commit/", status=503, times=2)  # a Hub hiccup: backoff
    third = _stages(teacher="u")[0]
    runner.run(third)
    record = mirror.finish()
    assert record["behind"] == [] and set(record["stages"]) == {first.name, second.name, third.name}
    traffic = mirror.api.traffic.as_dict()
    assert traffic["rate_limited"] >= 1 and traffic["retries"] >= 3 and traffic["commits"] == 3
    assert [(m, p, s) for m, p, s in hub.requests if s == 503 and "/commit/" in p].__len__() == 2


# ------------------------------------------------------------------------------------------------
# 4. Stage data as Parquet: one config per stage, restored into the stage folder with the same keys


def test_parquet_stages_load_with_load_dataset_and_restore_with_the_same_keys(hub, tmp_path):
    from persyn_hub.folders import SUCCESS, load_dataset_folder

    repo = f"{ORG}/parquet-stages"
    runner = _runner(_mirror(hub, tmp_path / "one", repo), tmp_path / "one")
    first, second = _stages(rows=5)
    for stage in (first, second):
        runner.run(stage)
    runner.mirror.finish()
    files = _files(hub, repo)
    for name in (first.name, second.name):
        prefix = f"{name.replace('/', '--')}/{runner.keys[name]}"
        assert f"{prefix}/data/train-00000-of-00001.parquet" in files
        assert f"{prefix}/_SUCCESS" in files and f"{prefix}/persyn-stage.json" in files
        assert not [f for f in files if f.startswith(f"{prefix}/") and f.endswith(".arrow")]

    loaded = _load_configs(hub, repo, tmp_path)
    assert set(loaded) == {"label-generate--t", "combine"}
    for name, config in (("label-generate/t", "label-generate--t"), ("combine", "combine")):
        local = runner.cache.load_finished(name, runner.keys[name]).to_list()
        assert loaded[config]["rows"] == local
        assert loaded[config]["files"] == [f"{config}/{runner.keys[name]}/data/train-*.parquet"]

    # another machine: both stages rebuilt from Parquet, the digests later keys chain on unchanged
    again = _runner(_mirror(hub, tmp_path / "two", repo), tmp_path / "two")
    for stage in _stages(rows=5):
        again.run(stage)
    assert again.mirror.finish()["restored"] == [first.name, second.name]
    assert again.digests == runner.digests and again.keys == runner.keys
    assert again.cached == {first.name: True, second.name: True}
    folder = again.cache.folder(second.name, again.keys[second.name])
    marker = json.loads((folder / SUCCESS).read_text())
    assert (
        marker["digest_files"]
        == json.loads((runner.cache.folder(second.name, runner.keys[second.name]) / SUCCESS).read_text())[
            "files"
        ]
    )
    assert load_dataset_folder(folder / "data").to_list() == runner.outputs[second.name].to_list()


# ------------------------------------------------------------------------------------------------
# 5. Two runs pushing to one stages repo at once


def test_concurrent_runs_sharing_a_stages_repo_keep_every_stage_loadable(hub, tmp_path):
    repo = f"{ORG}/shared-stages"
    _client(hub).create_repo(repo, repo_type="dataset", private=True)
    hub.slow("POST", "/preupload/", 0.3)  # commits take a while: the two runs' commits overlap
    barrier = threading.Barrier(2)
    runners, errors = {}, []

    def run(name: str, teacher: str, alpha: float) -> None:
        try:
            mirror = _mirror(hub, tmp_path / name, repo)
            runner = runners[name] = _runner(mirror, tmp_path / name)
            for stage in (*_stages(teacher=teacher, alpha=alpha), _stages(teacher=f"{teacher}-x")[0]):
                barrier.wait(timeout=60)  # both runs finish each stage together
                runner.run(stage)
            mirror.finish()
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=run, args=args) for args in (("a", "a", 0.4), ("b", "b", 0.2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    conflicts = sum(r.mirror.conflicts if r.mirror else 0 for r in runners.values())
    index = json.loads(_read(hub, repo, "stages.json"))
    for runner in runners.values():
        for name, key in runner.keys.items():
            assert key in index["stages"][name], (name, key, index["stages"].get(name))
    assert len(index["stages"]["combine"]) == 2
    loaded = _load_configs(hub, repo, tmp_path)
    assert set(loaded) == {
        "label-generate--a",
        "label-generate--a-x",
        "label-generate--b",
        "label-generate--b-x",
        "combine",
    }
    assert all(config["rows"] for config in loaded.values())
    assert conflicts >= 1, "the two runs never committed over each other: the race was not exercised"


# ------------------------------------------------------------------------------------------------
# 6. Pushes in the background; the run's end waits for them; `persyn publish` on its own


def test_background_push_leaves_the_run_computing_and_finish_reports_failures(hub, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="persyn_hub")
    repo = f"{ORG}/background"
    mirror = _mirror(hub, tmp_path / "slow", repo)
    runner = _runner(mirror, tmp_path / "slow")
    hub.slow("POST", f"/api/datasets/{repo}/commit/", 3.0)  # a slow Hub
    first, second = _stages()
    started = time.monotonic()
    runner.run(first)
    runner.run(second)
    computing = time.monotonic() - started
    assert computing < 3.0, computing  # the run went on computing while the first push was under way
    assert mirror.published == {}  # both still pushing
    record = mirror.finish()  # the run's end waits for the pushes
    assert record["behind"] == [] and set(record["stages"]) == {first.name, second.name}
    assert time.monotonic() - started >= 5.5

    # pushes that fail: the run still completes; its end names what is behind, and the summary lists it
    caplog.clear()
    failing = _mirror(hub, tmp_path / "denied", f"{ORG}/denied")
    hub.fail("POST", f"/api/datasets/{ORG}/denied/commit/", status=403, times=100)
    runner = _runner(failing, tmp_path / "denied")
    for stage in _stages():
        runner.run(stage)
    record = failing.finish()
    assert record["behind"] == sorted([first.name, second.name]) and record["stages"] == {}
    assert (
        f"Hub stages: {ORG}/denied@main is behind this run by ['combine', 'label-generate/t']" in caplog.text
    )


def test_background_push_persyn_publish_publishes_a_finished_run_again(hub, tmp_path, capsys):
    from datasets import Dataset

    from persyn_hub.recipe.config import load_recipe

    run_dir = tmp_path / "finished"
    recipe = load_recipe(RECIPE, ["--output.dir", str(run_dir), "--output.hub.dataset_repo", f"{ORG}/again"])
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    Dataset.from_dict(
        {
            "prompt_id": ["p1", "p2"],
            "messages": [[{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]] * 2,
            "teacher": recipe.teacher_names()[:2],
        }
    ).save_to_disk(str(run_dir / "artifacts" / "dataset"))
    teachers = recipe.teacher_names()
    summary = {
        "rows": 2,
        "teachers": teachers,
        "teacher_counts": {teachers[0]: 1, teachers[1]: 1},
        "hub": {"commits": 3},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))

    hub.fail("POST", f"/api/datasets/{ORG}/again/commit/", status=403, times=1)  # the run's publish failed
    code, err = _run_cli(capsys, "publish", str(run_dir))
    assert code == 2 and err.count("persyn: error:") == 1
    assert f"run `persyn publish {run_dir}` to publish it again" in err
    assert json.loads((run_dir / "summary.json").read_text()) == summary  # left as it was

    code, err = _run_cli(capsys, "publish", str(run_dir))
    assert code == 0, err
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["hub"]["dataset"]["repo_id"] == f"{ORG}/again"
    assert written["hub"]["commits"] == 4 and written["hub"]["bytes_uploaded"] > 0
    api = _client(hub)
    assert "data/train-00000-of-00001.parquet" in api.list_repo_files(f"{ORG}/again", repo_type="dataset")

    code, err = _run_cli(capsys, "publish", str(tmp_path / "nothing"))
    assert code == 2 and "recipe.yaml is missing" in err and "persyn run RECIPE" in err
