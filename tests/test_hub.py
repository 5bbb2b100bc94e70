"""Publishing a run to a Hub and loading it back the way a user does, all on 127.0.0.1.

Writes go through the real `huggingface_hub` client to `tests/hub_server.py` (git-backed, LFS path with
`HF_HUB_DISABLE_XET=1`); reads go through `datasets.load_dataset` / `from_pretrained` in a subprocess whose
`HF_ENDPOINT` points at `olah` (a real Hub mirror, offline mode) serving the very git repos that were pushed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from datasets import Dataset, load_from_disk

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import LocalHub  # noqa: E402

TOKEN = "hf_test_SECRET123"
ORG = "persyn-org"
TEACHERS = ["smollm2", "gemma"]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    import huggingface_hub.constants

    os.environ["HF_HUB_DISABLE_XET"] = "1"
    huggingface_hub.constants.HF_HUB_DISABLE_XET = True  # read at import time; the LFS path is what we test
    hub = LocalHub(tmp_path_factory.mktemp("hub") / "repos", token=TOKEN).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def olah_url(local_hub, tmp_path_factory):
    """olah in offline mode, serving the git repos the local hub writes."""
    work = tmp_path_factory.mktemp("olah")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (work / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{work / "cache"}"\n'
        f'mirrors-path = ["{local_hub.root}"]\nmetadata-cache-ttl = 0\n[accessibility]\noffline = true\n'
    )
    olah_cli = Path(sys.executable).with_name("olah-cli")
    log = open(work / "olah.log", "w")
    process = subprocess.Popen(
        [str(olah_cli), "-c", str(work / "olah.toml")], cwd=work, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(f"{url}/api/whoami-v2", timeout=1)
            break
        except httpx.HTTPError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"olah did not start: {(work / 'olah.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=10)
    log.close()


def _recipe(run_dir: Path, **hub):
    from persyn_hub.recipe.config import recipe_from_dict

    return recipe_from_dict(
        {
            "name": "hub-test",
            "recipe_version": 2,
            "seed": 7,
            "prompts": {"source": "bundled:asdiv", "num_prompts": 16, "answer_column": "answer"},
            "teachers": [
                {"name": "smollm2", "model": "bundled:smollm2-135m-instruct"},
                {"name": "gemma", "model": "bundled:gemma-3-270m", "prompt_format": "completion"},
            ],
            "labeling": {"num_prompts": 6, "alpha": 0.4},
            "output": {"dir": str(run_dir), "hub": hub},
        }
    )


def _save_tiny_router(folder: Path) -> None:
    """A real router (tiny random encoder, MiniLM's tokenizer) saved the way the pipeline saves it."""
    from conftest import save_tiny_router

    metrics = {"top1_agreement": 0.5, "reward_recovered": 0.75, "num_train_prompts": 4, "num_eval_prompts": 2}
    save_tiny_router(
        folder,
        TEACHERS,
        max_length=64,
        student="bundled:smollm2-135m-instruct",
        alpha=0.5,
        metrics=metrics,
        seed=7,
    )


def _build_run(run_dir: Path, prompts: Dataset, suffix: str = "") -> dict:
    """A finished run directory (contract layout) from real ASDiv prompts with simple generated columns."""
    prompts = prompts.select(range(16))
    labeled = prompts.select(range(6))
    label_parts = []
    for position, teacher in enumerate(TEACHERS):
        label_parts.append(
            labeled.map(
                lambda row, i, teacher=teacher, position=position: {
                    "teacher": teacher,
                    "response": f"{teacher} says {row['answer']}{suffix}",
                    "finish_reason": "stop",
                    "num_tokens": 5 + position,
                    "error": None,
                    "learnability": -1.0 - 0.1 * ((i + position) % 3),
                    "quality": float((i + position) % 2),
                    "reward": float((i + position) % 2) - 0.5,
                    "excluded": None,
                },
                with_indices=True,
            )
        )
    from datasets import concatenate_datasets

    labels = concatenate_datasets(label_parts)
    routing = prompts.map(
        lambda row, i: {"teacher": TEACHERS[i % 3 == 0], "router_scores": [0.1 * (i % 4), -0.1 * (i % 5)]},
        with_indices=True,
    )
    dataset = routing.map(
        lambda row, i: {
            "messages": list(row["messages"])
            + [{"role": "assistant", "content": f"The answer is {row['answer']}{suffix}"}],
            "num_tokens": 6,
            "finish_reason": "stop",
            "labeled": i < 6,
        },
        with_indices=True,
    ).select_columns(
        [
            "messages",
            "prompt_id",
            "teacher",
            "router_scores",
            "num_tokens",
            "finish_reason",
            "labeled",
            "answer",
        ]
    )
    for name, data in (("labels", labels), ("routing", routing), ("dataset", dataset)):
        data.save_to_disk(str(run_dir / "artifacts" / name))
    _save_tiny_router(run_dir / "artifacts" / "router")
    counts = {name: dataset["teacher"].count(name) for name in TEACHERS}
    from persyn_hub.pipeline.summary import package_versions

    return {
        "name": "hub-test",
        "rows": len(dataset),
        "teacher_counts": counts,
        "prompts": 16,
        "labeled_prompts": 6,
        "generations_made": 6 * 2 + 10,
        "generations_generate_then_select": 32,
        "generation_savings": round(1 - 22 / 32, 4),
        "failures": {"generation": 0, "failed_reasons": {}, "label_rows_excluded": 0},
        "router": {"top1_agreement": 0.5, "reward_recovered": 0.75},
        "seed": 7,
        "teachers": TEACHERS,
        "versions": package_versions(),
        "seconds": 12.3,
    }


@pytest.fixture(scope="session")
def run_v1(tmp_path_factory, asdiv_prompts):
    run_dir = tmp_path_factory.mktemp("run_v1")
    return run_dir, _build_run(run_dir, asdiv_prompts)


@pytest.fixture(scope="session")
def run_v2(tmp_path_factory, asdiv_prompts):
    run_dir = tmp_path_factory.mktemp("run_v2")
    return run_dir, _build_run(run_dir, asdiv_prompts, suffix=" (v2)")


@pytest.fixture
def api(local_hub, monkeypatch):
    """The client as the library builds it: endpoint per client, token from HF_TOKEN (a standard source)."""
    from huggingface_hub import HfApi, get_token

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert get_token() == TOKEN
    return HfApi(endpoint=local_hub.url)


def _client(endpoint: str, code: str, *args: str, tmp_path: Path, token: str | None = None) -> dict:
    """Run `code` in a fresh interpreter whose HF_ENDPOINT is `endpoint`; it prints one JSON line last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if token:
        env["HF_TOKEN"] = token
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _commits(api, repo_id: str, repo_type: str, revision: str | None = None) -> list[str]:
    return [c.commit_id for c in api.list_repo_commits(repo_id, repo_type=repo_type, revision=revision)]


def _all_pushed_bytes(hub: LocalHub) -> list[tuple[str, bytes]]:
    """Every git object (blobs, trees, commit messages; all refs and history) and LFS object the hub stores."""
    found = []
    for git_dir in hub.root.glob("*/*/*/.git"):
        objects = subprocess.run(
            ["git", "-C", str(git_dir.parent), "cat-file", "--batch-all-objects", "--batch"],
            capture_output=True,
            check=True,
        ).stdout
        found.append((str(git_dir), objects))
        found += [(str(p), p.read_bytes()) for p in (git_dir / "lfs" / "objects").rglob("*") if p.is_file()]
    assert len(found) > 3
    return found


LOAD_DATA = """
import json, sys
from datasets import load_dataset
final_repo, labels_repo, revision = sys.argv[1:4]
final = load_dataset(final_repo, split="train", revision=revision)
labels = load_dataset(labels_repo, "labels", split="train", revision=revision)
routing = load_dataset(labels_repo, "routing", split="train", revision=revision)
print(json.dumps({
    "final": final.to_list(), "final_columns": final.column_names, "labels_rows": len(labels),
    "labels_columns": labels.column_names, "routing_rows": len(routing),
}))
"""

# olah answers a tree listing of a missing folder with 401 where the Hub answers 404, and transformers'
# tokenizer loading lists `additional_chat_templates/`: the router is loaded from the local hub's read API
# (which also serves load_dataset; TRL's own check says the final set is chat data SFTTrainer takes as is).
LOAD_ROUTER = """
import json, sys
from datasets import load_dataset
from trl.data_utils import is_conversational
from persyn_hub.router import load_router, router_identity, router_info, score_texts
final = load_dataset(sys.argv[3], split="train")
router, tokenizer = load_router(sys.argv[1], expected_teachers=["gemma", "smollm2"], revision=sys.argv[2])
scores = score_texts(["Tom has 3 apples and buys 4 more. How many now?", "What is 12 / 4?"], router, tokenizer)
print(json.dumps({"router_teachers": router_info(router).teachers, "scores_shape": list(scores.shape),
                  "router_label_revision": router_info(router).label_revision, "conversational": is_conversational(final[0]),
                  "final_rows_local_hub": len(final), "router_identity": router_identity(sys.argv[1], revision=sys.argv[2])}))
"""


# ---------------------------------------------------------------------------------------------- tests
def test_dataset_card_renders_without_push(run_v1):
    from huggingface_hub import DatasetCard

    from persyn_hub.publish.cards import render_dataset_card, teacher_distribution_png

    run_dir, summary = run_v1
    recipe = _recipe(run_dir)
    final = load_from_disk(str(run_dir / "artifacts" / "dataset"))
    text = str(render_dataset_card(recipe=recipe, summary=summary, dataset=final))
    card = DatasetCard(text)  # parses the YAML block back
    meta = card.data.to_dict()
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert meta["license"] == "other" and meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"] and "persyn" in meta["tags"]
    body = card.text
    for expected in (
        "bundled:smollm2-135m-instruct",
        "`smollm2`, `gemma`",
        "alpha (weight of learnability) | 0.4",
        "r = (1 - alpha) * quality + alpha * learnability",
        f"| `smollm2` | {summary['teacher_counts']['smollm2']} |",
        "| Teacher generations made | 22 |",
        "Generate-then-Select would need | 32 (31% saved)",
        "Seed | 7",
        f"`datasets=={summary['versions']['datasets']}`",
        final[0]["prompt_id"],
        "labeling:\n  num_prompts: 6",
        "| top1_agreement | 0.5 |",
    ):
        assert expected in body, expected
    assert "12.3" not in body and str(run_dir) not in body.replace(recipe.to_yaml().strip(), "")
    chart = teacher_distribution_png(summary["teacher_counts"])
    assert chart.startswith(b"\x89PNG") and chart == teacher_distribution_png(summary["teacher_counts"])


@pytest.mark.slow
def test_publish_run_then_load_every_artifact(api, local_hub, olah_url, run_v1, tmp_path, caplog, capfd):
    from huggingface_hub import DatasetCard, hf_hub_download

    from persyn_hub.publish.hub import publish_run

    caplog.set_level(logging.DEBUG)
    run_dir, summary = run_v1
    repos = {
        "labels_repo": f"{ORG}/main-labels",
        "dataset_repo": f"{ORG}/main-data",
        "router_repo": f"{ORG}/main-router",
    }
    recipe = _recipe(run_dir, **repos)
    published = publish_run(run_dir, recipe, summary, api=api)

    assert set(published) == {"labels", "routing", "router", "dataset"}
    assert published["routing"]["revision"] == published["labels"]["revision"]
    for artifact, repo_type in (("labels", "dataset"), ("router", "model"), ("dataset", "dataset")):
        info = published[artifact]
        assert _commits(api, info["repo_id"], repo_type)[0] == info["revision"]
    files = set(api.list_repo_files(repos["dataset_repo"], repo_type="dataset"))
    assert {"README.md", "teacher_distribution.png", "data/train-00000-of-00001.parquet"} <= files

    # The final card names the exact labels and router commits it was built from.
    readme = hf_hub_download(
        repos["dataset_repo"],
        "README.md",
        repo_type="dataset",
        endpoint=local_hub.url,
        cache_dir=tmp_path / "cache",
    )
    card = DatasetCard.load(readme)
    assert published["labels"]["revision"] in card.text and published["router"]["revision"] in card.text
    assert "![Rows per teacher](teacher_distribution.png)" in card.text
    assert f"({local_hub.url}/datasets/{repos['labels_repo']})" in card.text

    # Load everything through a real Hub mirror, as a user would.
    loaded = _client(
        olah_url, LOAD_DATA, repos["dataset_repo"], repos["labels_repo"], "main", tmp_path=tmp_path
    )
    loaded.update(
        _client(
            local_hub.url,
            LOAD_ROUTER,
            repos["router_repo"],
            published["router"]["revision"],
            repos["dataset_repo"],
            tmp_path=tmp_path,
            token=TOKEN,
        )
    )
    local = load_from_disk(str(run_dir / "artifacts" / "dataset"))
    assert loaded["final"] == local.to_list() and loaded["final_columns"] == local.column_names
    assert loaded["conversational"] is True and loaded["final_rows_local_hub"] == len(local)
    assert (
        loaded["labels_rows"] == 12 and "reward" in loaded["labels_columns"] and loaded["routing_rows"] == 16
    )
    assert loaded["router_teachers"] == TEACHERS and loaded["scores_shape"] == [2, 2]
    assert loaded["router_label_revision"] == published["labels"]["revision"]
    # a Hub router's cache identity is the commit it resolves to, so a re-push is a new routing
    assert loaded["router_identity"] == f"{repos['router_repo']}@{published['router']['revision']}"

    # The token authenticated the pushes, and appears nowhere: not in a pushed file, not in a log line.
    assert local_hub.tokens_seen == {TOKEN}
    leaks = [name for name, data in _all_pushed_bytes(local_hub) if TOKEN.encode() in data]
    assert leaks == []
    out, err = capfd.readouterr()
    assert TOKEN not in out + err + caplog.text + json.dumps(published)


def test_republish_makes_no_new_commit(api, run_v1):
    from persyn_hub.publish.hub import publish_run

    run_dir, summary = run_v1
    repos = {
        "labels_repo": f"{ORG}/idem-labels",
        "dataset_repo": f"{ORG}/idem-data",
        "router_repo": f"{ORG}/idem-router",
    }
    recipe = _recipe(run_dir, **repos)
    first = publish_run(run_dir, recipe, summary, api=api)
    before = {r: _commits(api, r, "model" if r.endswith("router") else "dataset") for r in repos.values()}
    again = publish_run(run_dir, recipe, {**summary, "seconds": 99.9}, api=api)  # timings differ on a re-run
    after = {r: _commits(api, r, "model" if r.endswith("router") else "dataset") for r in repos.values()}
    assert again == first and after == before
    assert all(len(commits) == 2 for commits in after.values())  # initial commit + one artifact commit


def test_new_revision_keeps_the_old_one_loadable(api, olah_url, run_v1, run_v2, tmp_path):
    from persyn_hub.publish.hub import publish_run

    repos = {
        "labels_repo": f"{ORG}/rev-labels",
        "dataset_repo": f"{ORG}/rev-data",
        "router_repo": f"{ORG}/rev-router",
    }
    old = publish_run(run_v1[0], _recipe(run_v1[0], **repos), run_v1[1], api=api)
    new = publish_run(run_v2[0], _recipe(run_v2[0], **repos), run_v2[1], api=api)
    assert new["dataset"]["revision"] != old["dataset"]["revision"]
    assert new["labels"]["revision"] != old["labels"]["revision"]
    assert new["router"]["revision"] != old["router"]["revision"]  # config names the new labels commit
    code = """
import json, sys
from datasets import load_dataset
old = load_dataset(sys.argv[1], split="train", revision=sys.argv[2])
new = load_dataset(sys.argv[1], split="train")
labels_old = load_dataset(sys.argv[3], "labels", split="train", revision=sys.argv[4])
print(json.dumps([old[0]["messages"][-1]["content"], new[0]["messages"][-1]["content"], labels_old[0]["response"]]))
"""
    old_text, new_text, old_label = _client(
        olah_url,
        code,
        repos["dataset_repo"],
        old["dataset"]["revision"],
        repos["labels_repo"],
        old["labels"]["revision"],
        tmp_path=tmp_path,
    )
    assert not old_text.endswith("(v2)") and new_text.endswith("(v2)") and not old_label.endswith("(v2)")


def test_interrupted_push_is_completed_by_a_rerun(api, local_hub, run_v1):
    from huggingface_hub.errors import HfHubHTTPError

    from persyn_hub.publish.hub import publish_run

    run_dir, summary = run_v1
    repos = {
        "labels_repo": f"{ORG}/cut-labels",
        "dataset_repo": f"{ORG}/cut-data",
        "router_repo": f"{ORG}/cut-router",
    }
    recipe = _recipe(run_dir, **repos)
    # 1. Storage refuses an upload (not retried) during the first artifact: nothing is committed anywhere.
    local_hub.fail("PUT", "/lfs-upload/", status=403)
    with pytest.raises(Exception, match="uploading"):
        publish_run(run_dir, recipe, summary, api=api)
    assert api.list_repo_files(repos["labels_repo"], repo_type="dataset") == [".gitattributes"]
    # 2. Later, the data set's LFS uploads succeed and then its commit request fails: a push cut off midway.
    local_hub.fail("POST", f"/api/datasets/{repos['dataset_repo']}/commit/", status=500)
    with pytest.raises(HfHubHTTPError):
        publish_run(run_dir, recipe, summary, api=api)
    # Nothing half-written: the data set repo is still at its initial commit, the earlier artifacts are whole.
    assert api.list_repo_files(repos["dataset_repo"], repo_type="dataset") == [".gitattributes"]
    labels_commits = _commits(api, repos["labels_repo"], "dataset")
    assert len(labels_commits) == 2

    done = publish_run(run_dir, recipe, summary, api=api)
    assert (
        _commits(api, repos["labels_repo"], "dataset") == labels_commits
    )  # no new commit for finished parts
    assert _commits(api, repos["dataset_repo"], "dataset")[0] == done["dataset"]["revision"]
    assert "data/train-00000-of-00001.parquet" in api.list_repo_files(
        repos["dataset_repo"], repo_type="dataset"
    )


def test_branch_private_and_organisation_settings(api, local_hub, run_v1, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from persyn_hub.publish.hub import publish_run

    run_dir, summary = run_v1
    repos = {"dataset_repo": "other-org/private-data", "router_repo": "other-org/private-router"}
    recipe = _recipe(run_dir, **repos, private=True, revision="persyn-v1")
    published = publish_run(run_dir, recipe, summary, api=api)
    refs = api.list_repo_refs(repos["dataset_repo"], repo_type="dataset")
    heads = {ref.name: ref.target_commit for ref in refs.branches}
    assert heads["persyn-v1"] == published["dataset"]["revision"] and heads["main"] != heads["persyn-v1"]
    assert api.list_repo_files(repos["dataset_repo"], repo_type="dataset") == [
        ".gitattributes"
    ]  # main untouched
    card = api.hf_hub_download(
        repos["dataset_repo"],
        "README.md",
        repo_type="dataset",
        revision="persyn-v1",
        cache_dir=tmp_path / "c",
    )
    assert 'revision="persyn-v1"' in Path(card).read_text()
    anonymous = HfApi(endpoint=local_hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.list_repo_files(repos["dataset_repo"], repo_type="dataset", revision="persyn-v1")


def test_local_hub_rejects_what_the_hub_rejects(api, local_hub):
    import base64

    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    repo = f"{ORG}/strict"
    api.create_repo(repo, repo_type="dataset", exist_ok=True)
    head = _commits(api, repo, "dataset")[0]
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(
            repo,
            [CommitOperationAdd("a.txt", b"a")],
            commit_message="x",
            repo_type="dataset",
            revision="no-such-branch",
        )
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(
            repo,
            [CommitOperationAdd("a.txt", b"a")],
            commit_message="x",
            repo_type="dataset",
            parent_commit="1" * 40,
        )
    assert stale.value.response.status_code == 412
    with pytest.raises(HfHubHTTPError) as unauthorized:
        HfApi(endpoint=local_hub.url, token="hf_wrong").create_commit(
            repo, [CommitOperationAdd("a.txt", b"a")], commit_message="x", repo_type="dataset"
        )
    assert unauthorized.value.response.status_code == 401

    headers = {"Authorization": f"Bearer {TOKEN}"}
    oid = "ab" * 32
    ndjson = "\n".join(
        json.dumps(line)
        for line in (
            {"key": "header", "value": {"summary": "pointer to nothing"}},
            {"key": "lfsFile", "value": {"path": "x.parquet", "algo": "sha256", "oid": oid, "size": 3}},
        )
    )
    missing = httpx.post(f"{local_hub.url}/api/datasets/{repo}/commit/main", content=ndjson, headers=headers)
    assert missing.status_code == 422 and "never uploaded" in missing.text
    binary = "\n".join(
        json.dumps(line)
        for line in (
            {"key": "header", "value": {"summary": "binary as regular"}},
            {
                "key": "file",
                "value": {
                    "path": "x.bin",
                    "encoding": "base64",
                    "content": base64.b64encode(b"\0\1\2").decode(),
                },
            },
        )
    )
    assert (
        httpx.post(
            f"{local_hub.url}/api/datasets/{repo}/commit/main", content=binary, headers=headers
        ).status_code
        == 400
    )

    batch = httpx.post(
        f"{local_hub.url}/datasets/{repo}.git/info/lfs/objects/batch",
        headers=headers,
        json={"operation": "upload", "objects": [{"oid": oid, "size": 3}]},
    ).json()
    href = batch["objects"][0]["actions"]["upload"]["href"]
    assert httpx.put(href, content=b"not the announced bytes").status_code == 400
    assert httpx.put(href.split("?")[0], content=b"abc").status_code == 403  # unsigned upload URL
    assert _commits(api, repo, "dataset") == [head]  # every rejected write left the repo as it was


def test_publish_run_names_a_missing_artifact(api, tmp_path):
    from persyn_hub.publish.hub import PublishError, publish_run

    recipe = _recipe(tmp_path, dataset_repo=f"{ORG}/nothing")
    with pytest.raises(PublishError, match="artifacts/dataset"):
        publish_run(tmp_path, recipe, {}, api=api)


def test_a_pushed_router_names_no_local_path_private_default(tmp_path, minilm_path):
    """A backbone given as a local folder is in the saved router (config, metrics settings, card); what is
    pushed holds none of the absolute path, and the card still renders from the scrubbed config."""
    from conftest import save_tiny_router

    from persyn_hub.publish.hub import _router_files

    folder = tmp_path / "router"
    save_tiny_router(folder, TEACHERS, backbone=minilm_path, metrics={"reward_recovered": 0.5})
    assert minilm_path in (folder / "config.json").read_text()
    files = _router_files(folder, {"repo_id": "org/labels", "revision": "abc123"}, "org/router")
    for name in ("config.json", "README.md", "router_metrics.json"):
        text = files[name].decode() if isinstance(files[name], bytes) else files[name].read_text()
        assert minilm_path not in text and str(tmp_path) not in text, name
    pushed = json.loads(files["config.json"])
    assert pushed["persyn"]["label_revision"] == "abc123" and pushed["id2label"]["0"] == TEACHERS[0]
    assert "org/router" in files["README.md"].decode()
