"""A local, write-capable Hub endpoint for tests: the part of the Hub HTTP API that pushes use.

No installable server accepts pushes, so this one speaks the protocol `huggingface_hub` clients send
(repo create, validate-yaml, pre-upload, the git-LFS batch API with basic upload and verify, NDJSON
commits, branches, refs, commits, tree and paths-info listings, repo info, file resolve) and stores
every repo as a real git repository (`<root>/{models,datasets}/<org>/<name>`, LFS objects under
`.git/lfs/objects/aa/bb/<sha256>`), the layout `olah` serves read-only in offline mode. So a test can
push through the real client here and load what was pushed through a real Hub mirror.

It rejects what the Hub rejects: a write without the token, an LFS pointer whose object was never
uploaded, an upload whose bytes do not hash to the announced sha256, a commit to a missing branch
without `create_pr`, a stale `parentCommit`, binary or > 10 MiB files sent as regular files, invalid
card YAML. `fail(...)` makes chosen requests fail, to test interrupted pushes; `limit_commits(n, seconds)`
answers a commit past `n` in any `seconds` with 429 and `Retry-After`, as the Hub's commit rate limit does;
`slow(...)` delays chosen requests. `commit_log` records every commit made (repo, paths, bytes, time).

Start it with `LocalHub(root, token=...).start()`; run clients with `HF_HUB_DISABLE_XET=1` so large
files take the LFS path (the Xet protocol is not implemented).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

ZERO_SHA = "0" * 40
REGULAR_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z",
        "*.arrow",
        "*.bin",
        "*.bz2",
        "*.ckpt",
        "*.gguf",
        "*.gz",
        "*.h5",
        "*.jpg",
        "*.jpeg",
        "*.lz4",
        "*.model",
        "*.msgpack",
        "*.npy",
        "*.npz",
        "*.onnx",
        "*.parquet",
        "*.pb",
        "*.pickle",
        "*.pkl",
        "*.png",
        "*.pt",
        "*.pth",
        "*.safetensors",
        "*.tar",
        "*.tflite",
        "*.wasm",
        "*.xz",
        "*.zip",
        "*.zst",
        "*tfevents*",
    )
)
LFS_POINTER = re.compile(
    r"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n$"
)


class HubError(Exception):
    """An HTTP error answered the way the Hub does (status, `X-Error-Code`, JSON `error`)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: dict | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}
        self.headers = headers or {}


@dataclass
class FailureRule:
    method: str
    path_contains: str
    status: int
    remaining: int


class LocalHub:
    """A threaded HTTP server on 127.0.0.1 holding git-backed Hub repos under `root`."""

    def __init__(
        self, root: str | os.PathLike, token: str | None = "hf_local_hub_token", user: str = "tester"
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        self.requests: list[tuple[str, str, int]] = []
        self.tokens_seen: set[str] = set()
        self._failures: list[FailureRule] = []
        self._delays: list[tuple[str, str, float]] = []
        self.commit_limit: tuple[int, float] | None = None
        self.commit_log: list[dict[str, Any]] = []
        """Every commit made: repo, paths, bytes of the files' contents, monotonic time."""
        self.rate_limited = 0
        """Commits answered 429 (past `limit_commits`)."""
        self._admitted: list[float] = []
        self._locks: dict[Path, threading.Lock] = {}
        self._global_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._secret = os.urandom(16).hex()

    # ------------------------------------------------------------------ lifecycle and test controls
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fail(self, method: str, path_contains: str, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` requests matching (method, path substring) with `status`."""
        self._failures.append(FailureRule(method.upper(), path_contains, status, times))

    def limit_commits(self, commits: int | None, per_seconds: float = 60.0) -> None:
        """Answer a commit past `commits` in any `per_seconds` window with 429 and `Retry-After` (None: off)."""
        with self._global_lock:
            self.commit_limit = (commits, per_seconds) if commits else None
            self._admitted = []

    def slow(self, method: str, path_contains: str, seconds: float) -> None:
        """Delay every request matching (method, path substring) by `seconds` (a slow Hub)."""
        self._delays.append((method.upper(), path_contains, seconds))

    def _admit_commit(self) -> None:
        """Count a commit against `limit_commits`; past it, a 429 that says when to try again."""
        with self._global_lock:
            if self.commit_limit is None:
                return
            limit, window = self.commit_limit
            now = time.monotonic()
            self._admitted = [t for t in self._admitted if now - t < window]
            if len(self._admitted) >= limit:
                self.rate_limited += 1
                wait = max(1, math.ceil(self._admitted[0] + window - now))
                raise HubError(
                    429,
                    "You have exceeded our commit rate limit. Retry later.",
                    headers={"Retry-After": str(wait)},
                )
            self._admitted.append(now)

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def git(self, repo_type: str, repo_id: str, *args: str) -> str:
        return _git(self.repo_dir(repo_type, repo_id), *args)

    # ------------------------------------------------------------------ helpers used by the handler
    def _sign(self, repo_type: str, repo_id: str, oid: str) -> str:
        return hashlib.sha256(f"{self._secret}:{repo_type}:{repo_id}:{oid}".encode()).hexdigest()[:32]

    def _lock(self, path: Path) -> threading.Lock:
        with self._global_lock:
            return self._locks.setdefault(path, threading.Lock())

    def _take_failure(self, method: str, path: str) -> int | None:
        with self._global_lock:
            for rule in self._failures:
                if rule.remaining > 0 and rule.method == method and rule.path_contains in path:
                    rule.remaining -= 1
                    return rule.status
        return None


def _git(repo: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> str:
    full_env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "local-hub",
        "GIT_AUTHOR_EMAIL": "hub@127.0.0.1",
        "GIT_COMMITTER_NAME": "local-hub",
        "GIT_COMMITTER_EMAIL": "hub@127.0.0.1",
        **(env or {}),
    }
    result = subprocess.run(
        ["git", "-C", str(repo), *args], input=input, capture_output=True, env=full_env, check=False
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
    return result.stdout.decode()


def _iso(timestamp: int) -> str:
    """The Hub's date format (`%Y-%m-%dT%H:%M:%S.%fZ`, UTC)."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _git_try(repo: Path, *args: str) -> str | None:
    try:
        return _git(repo, *args).strip()
    except subprocess.CalledProcessError:
        return None


class _Repo:
    """One git-backed repo: refs, trees, blobs and LFS objects, plus the plumbing commit."""

    def __init__(self, hub: LocalHub, repo_type: str, repo_id: str) -> None:
        self.hub, self.type, self.id = hub, repo_type, repo_id
        self.path = hub.repo_dir(repo_type, repo_id)

    @property
    def exists(self) -> bool:
        return (self.path / ".git").is_dir()

    @property
    def private(self) -> bool:
        return _git_try(self.path, "config", "--get", "hub.private") == "true"

    @property
    def lfs_dir(self) -> Path:
        return self.path / ".git" / "lfs" / "objects"

    def lfs_path(self, oid: str) -> Path:
        return self.lfs_dir / oid[:2] / oid[2:4] / oid

    def resolve(self, revision: str) -> str:
        """Branch, tag, `refs/...` or full sha -> commit sha (404 RevisionNotFound otherwise)."""
        candidates = [f"refs/heads/{revision}", f"refs/tags/{revision}", revision]
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            candidates = [revision]
        for candidate in candidates:
            sha = _git_try(self.path, "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}")
            if sha:
                return sha
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def branch_head(self, branch: str) -> str | None:
        return _git_try(self.path, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}")

    def entries(self, sha: str, path: str = "", recursive: bool = True) -> list[dict[str, Any]]:
        """`git ls-tree` as Hub tree entries (files with `lfs` info for pointers, folders)."""
        args = ["ls-tree", "-l", "-z"]
        if recursive:
            args += ["-r", "-t"]
        spec = f"{sha}:{path}" if path else sha
        try:
            out = _git(self.path, *args, spec)
        except subprocess.CalledProcessError:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound") from None
        items = []
        for record in filter(None, out.split("\0")):
            meta, name = record.split("\t", 1)
            _mode, kind, oid, size = meta.split()
            full = f"{path}/{name}" if path else name
            if kind == "tree":
                items.append({"type": "directory", "oid": oid, "size": 0, "path": full})
                continue
            entry: dict[str, Any] = {"type": "file", "oid": oid, "size": int(size), "path": full}
            lfs = self.pointer(oid) if int(size) < 200 else None
            if lfs:
                entry["lfs"] = {"oid": lfs[0], "size": lfs[1], "pointerSize": int(size)}
                entry["size"] = lfs[1]
            items.append(entry)
        return items

    def pointer(self, blob: str) -> tuple[str, int] | None:
        match = LFS_POINTER.match(_git(self.path, "cat-file", "blob", blob))
        return (match.group(1), int(match.group(2))) if match else None

    def file_entry(self, sha: str, path: str) -> dict[str, Any] | None:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        try:
            listing = self.entries(sha, parent, recursive=False)
        except HubError:
            return None
        return next((item for item in listing if item["path"] == path), None)

    def read(self, sha: str, path: str) -> tuple[bytes, dict[str, Any]]:
        entry = self.file_entry(sha, path)
        if entry is None or entry["type"] != "file":
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        if "lfs" in entry:
            data = self.lfs_path(entry["lfs"]["oid"]).read_bytes()
        else:
            data = subprocess.run(
                ["git", "-C", str(self.path), "cat-file", "blob", entry["oid"]],
                capture_output=True,
                check=True,
            ).stdout
        return data, entry

    def lfs_patterns(self, sha: str | None) -> list[str]:
        text = DEFAULT_GITATTRIBUTES
        if sha:
            try:
                text = self.read(sha, ".gitattributes")[0].decode()
            except HubError:
                pass
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]

    def create(self, private: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _git(self.path, "init", "-q", "-b", "main")
        _git(self.path, "config", "hub.private", "true" if private else "false")
        self.commit(
            "main", [("file", ".gitattributes", DEFAULT_GITATTRIBUTES.encode())], "initial commit", None
        )

    def commit(
        self,
        branch: str,
        operations: list[tuple[str, str, Any]],
        message: str,
        parent: str | None,
        ref: str | None = None,
    ) -> str:
        """Apply (kind, path, payload) operations on top of `parent` and move the ref atomically."""
        ref = ref or f"refs/heads/{branch}"
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            if parent:
                _git(self.path, "read-tree", parent, env=env)
            lines = []
            for kind, path, payload in operations:
                if kind == "file":
                    blob = _git(self.path, "hash-object", "-w", "--stdin", input=payload).strip()
                    lines.append(f"100644 {blob}\t{path}")
                elif kind == "deletedFile":
                    lines.append(f"0 {ZERO_SHA}\t{path}")
                elif kind == "deletedFolder":
                    listed = _git(self.path, "ls-files", "-z", "--", path.rstrip("/") + "/", env=env)
                    lines += [f"0 {ZERO_SHA}\t{name}" for name in filter(None, listed.split("\0"))]
            if lines:
                _git(
                    self.path,
                    "update-index",
                    "--index-info",
                    input=("\n".join(lines) + "\n").encode(),
                    env=env,
                )
            tree = _git(self.path, "write-tree", env=env).strip()
        args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
        sha = _git(self.path, *args).strip()
        _git(self.path, "update-ref", ref, sha, parent or ZERO_SHA)
        return sha


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # requests are recorded in hub.requests; nothing is printed

    # ------------------------------------------------------------------ plumbing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any = b"", headers: dict[str, str] | None = None) -> None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        else:
            data = body
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        raw_parts = [part for part in split.path.split("/") if part]
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        body = self._body() if method in ("POST", "PUT") else b""
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        if token:
            self.hub.tokens_seen.add(token)
        status = self.hub._take_failure(method, split.path)
        for rule_method, contains, seconds in list(self.hub._delays):
            if rule_method == method and contains in split.path:
                time.sleep(seconds)
        try:
            if status is not None:
                raise HubError(status, "Injected failure (test)")
            status = 200
            self._route(method, raw_parts, query, body, token)
        except HubError as error:
            status = error.status
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._send(error.status, {"error": error.message, **error.extra}, headers)
        except Exception as error:  # a server bug must answer, not hang the client
            status = 500
            self._send(500, {"error": f"{type(error).__name__}: {error}"})
        self.hub.requests.append((method, split.path, status))

    def _need_write(self, token: str | None) -> None:
        if self.hub.token is not None and token != self.hub.token:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str, token: str | None, write: bool = False) -> _Repo:
        if write:
            self._need_write(token)
        repo = _Repo(self.hub, repo_type, repo_id)
        readable = repo.exists and (not repo.private or token == self.hub.token)
        if not readable:
            raise HubError(404, f"Repository not found: {repo_type}s/{repo_id}", "RepoNotFound")
        return repo

    # ------------------------------------------------------------------ routes
    def _route(
        self, method: str, parts: list[str], query: dict[str, str], body: bytes, token: str | None
    ) -> None:
        hub = self.hub
        if parts[:2] == ["api", "whoami-v2"]:
            self._need_write(token)
            return self._send(
                200, {"type": "user", "name": hub.user, "orgs": [], "auth": {"type": "access_token"}}
            )
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"), token)
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if parts and parts[0] == "lfs-upload" and method == "PUT":
            return self._lfs_upload(parts[1], "/".join(parts[2:4]), parts[4], body, query.get("sig"))
        if parts and parts[0] == "lfs-verify" and method == "POST":
            return self._lfs_verify(parts[1], "/".join(parts[2:4]), json.loads(body), token)
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in ("models", "datasets"):
            return self._api(
                method,
                parts[1][:-1],
                unquote(parts[2]) + "/" + unquote(parts[3]),
                parts[4:],
                query,
                body,
                token,
            )
        # git-LFS batch and file resolve: /{datasets/}org/name.git/info/lfs/objects/batch, .../resolve/rev/path
        repo_type = "model"
        rest = parts
        if parts and parts[0] in ("datasets", "models"):
            repo_type, rest = parts[0][:-1], parts[1:]
        if len(rest) >= 2 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{rest[0]}/{rest[1][:-4]}", json.loads(body), token)
        if len(rest) >= 5 and rest[2] == "resolve":
            repo = self._repo(repo_type, f"{rest[0]}/{rest[1]}", token)
            return self._resolve(repo, unquote(rest[3]), "/".join(unquote(p) for p in rest[4:]))
        raise HubError(404, f"No route for {method} {self.path}")

    def _api(
        self,
        method: str,
        repo_type: str,
        repo_id: str,
        rest: list[str],
        query: dict[str, str],
        body: bytes,
        token: str | None,
    ) -> None:
        action = rest[0] if rest else ""
        revision = unquote(rest[1]) if len(rest) > 1 else "main"
        write = method == "POST" and action in ("preupload", "commit", "branch")
        repo = self._repo(repo_type, repo_id, token, write=write)
        if method == "GET" and action in ("", "revision"):
            return self._repo_info(repo, revision)
        if method == "GET" and action == "refs":
            return self._refs(repo, query)
        if method == "GET" and action == "commits":
            return self._commits(repo, revision)
        if method == "GET" and action == "tree":
            sha = repo.resolve(revision)
            path = "/".join(unquote(p) for p in rest[2:])
            recursive = query.get("recursive", "false").lower() in ("1", "true")
            return self._send(200, repo.entries(sha, path, recursive=recursive))
        if method == "POST" and action == "paths-info":
            sha = repo.resolve(revision)
            form = parse_qs(body.decode())
            paths = form.get("paths", [])
            found = [e for e in (repo.file_entry(sha, p.strip("/")) for p in paths) if e]
            return self._send(200, found)
        if method == "POST" and action == "preupload":
            return self._preupload(repo, revision, json.loads(body), query)
        if method == "POST" and action == "commit":
            return self._commit(repo, revision, body, query)
        if method == "POST" and action == "branch":
            return self._create_branch(repo, revision, json.loads(body or b"{}"))
        raise HubError(404, f"No route for {method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    def _create_repo(self, payload: dict[str, Any], token: str | None) -> None:
        self._need_write(token)
        repo_type = payload.get("type") or "model"
        name, org = payload.get("name"), payload.get("organization") or self.hub.user
        if repo_type not in ("model", "dataset") or not name or not re.fullmatch(r"[\w.-]+", name):
            raise HubError(400, f"Invalid repo name or type: {name!r} ({repo_type})")
        repo = _Repo(self.hub, repo_type, f"{org}/{name}")
        prefix = "" if repo_type == "model" else "datasets/"
        url = f"{self.hub.url}/{prefix}{repo.id}"
        with self.hub._lock(repo.path):
            if repo.exists:
                raise HubError(409, "You already created this repo", None, {"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo.create(private)
        self._send(200, {"url": url, "name": repo.id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        if match:
            try:
                metadata = yaml.safe_load(match.group(1))
            except yaml.YAMLError as error:
                return self._send(400, {"errors": [{"message": f"Invalid YAML: {error}"}]})
            if metadata is not None and not isinstance(metadata, dict):
                return self._send(400, {"errors": [{"message": "Card metadata must be a mapping"}]})
        self._send(200, {"warnings": []})

    def _repo_info(self, repo: _Repo, revision: str) -> None:
        sha = repo.resolve(revision)
        date = _iso(int(_git(repo.path, "log", "-1", "--format=%ct", sha).strip()))
        files = [e["path"] for e in repo.entries(sha) if e["type"] == "file"]
        self._send(
            200,
            {
                "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
                "id": repo.id,
                "author": repo.id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "lastModified": date,
                "createdAt": date,
                "siblings": [{"rfilename": f} for f in files],
            },
        )

    def _refs(self, repo: _Repo, query: dict[str, str]) -> None:
        out = _git(repo.path, "for-each-ref", "--format=%(refname) %(objectname)")
        groups = {"refs/heads/": "branches", "refs/tags/": "tags", "refs/convert/": "converts"}
        if query.get("include_prs"):
            groups["refs/pr/"] = "pullRequests"
        result: dict[str, list] = {group: [] for group in groups.values()}
        for line in out.splitlines():
            ref, sha = line.split()
            for prefix, group in groups.items():
                if ref.startswith(prefix):
                    result[group].append({"name": ref[len(prefix) :], "ref": ref, "targetCommit": sha})
        self._send(200, result)

    def _commits(self, repo: _Repo, revision: str) -> None:
        sha = repo.resolve(revision)
        out = _git(repo.path, "log", "--format=%H%x00%s%x00%B%x00%at%x1e", sha)
        commits = []
        for record in filter(None, (r.strip("\n") for r in out.split("\x1e"))):
            oid, title, message, date = record.split("\x00")
            commits.append(
                {
                    "id": oid,
                    "title": title,
                    "message": message.strip(),
                    "date": _iso(int(date)),
                    "authors": [{"user": self.hub.user}],
                }
            )
        self._send(200, commits)

    def _create_branch(self, repo: _Repo, branch: str, payload: dict[str, Any]) -> None:
        with self.hub._lock(repo.path):
            if repo.branch_head(branch):
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = repo.resolve(payload.get("startingPoint") or "main")
            _git(repo.path, "update-ref", f"refs/heads/{branch}", start, ZERO_SHA)
        self._send(200, {})

    def _upload_mode(self, repo: _Repo, patterns: list[str], path: str, size: int, sample: bytes) -> str:
        name = path.rsplit("/", 1)[-1]
        if size >= REGULAR_MAX_BYTES or b"\0" in sample:
            return "lfs"
        if any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns):
            return "lfs"
        return "regular"

    def _preupload(self, repo: _Repo, revision: str, payload: dict[str, Any], query: dict[str, str]) -> None:
        head = repo.branch_head(revision)
        if head is None and not query.get("create_pr"):
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        base = head or repo.resolve("main")
        patterns = repo.lfs_patterns(base)
        files = []
        for item in payload.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            mode = self._upload_mode(repo, patterns, item["path"], int(item["size"]), sample)
            existing = repo.file_entry(base, item["path"])
            oid = None
            if existing:
                oid = existing["lfs"]["oid"] if "lfs" in existing else existing["oid"]
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": files, "commitOid": base})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict[str, Any], token: str | None) -> None:
        repo = self._repo(repo_type, repo_id, token, write=payload.get("operation") == "upload")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            path = repo.lfs_path(oid)
            if payload.get("operation") != "upload":
                if not path.is_file():
                    entry["error"] = {"code": 404, "message": "Object does not exist"}
                objects.append(entry)
                continue
            if not path.is_file():
                sig = self.hub._sign(repo_type, repo_id, oid)
                entry["actions"] = {
                    "upload": {
                        "href": f"{self.hub.url}/lfs-upload/{repo_type}/{repo_id}/{oid}?sig={sig}",
                        "header": {},
                    },
                    "verify": {"href": f"{self.hub.url}/lfs-verify/{repo_type}/{repo_id}", "header": {}},
                }
            objects.append(entry)
        self._send(
            200,
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_upload(self, repo_type: str, repo_id: str, oid: str, body: bytes, sig: str | None) -> None:
        # Like a presigned storage URL: no token is sent, the signature in the URL is the permission.
        if sig != self.hub._sign(repo_type, repo_id, oid):
            raise HubError(403, "Invalid or missing upload signature")
        repo = _Repo(self.hub, repo_type, repo_id)
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match its sha256 {oid}")
        target = repo.lfs_path(oid)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".part-{threading.get_ident()}")
        partial.write_bytes(body)
        partial.replace(target)  # an object appears whole or not at all
        self._send(200, b"")

    def _lfs_verify(self, repo_type: str, repo_id: str, payload: dict[str, Any], token: str | None) -> None:
        repo = self._repo(repo_type, repo_id, token, write=True)
        path = repo.lfs_path(payload["oid"])
        if not path.is_file() or path.stat().st_size != int(payload["size"]):
            raise HubError(404, f"LFS object {payload['oid']} was not uploaded")
        self._send(200, {})

    def _commit(self, repo: _Repo, revision: str, body: bytes, query: dict[str, str]) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        create_pr = bool(query.get("create_pr"))
        self.hub._admit_commit()
        with self.hub._lock(repo.path):
            head = repo.branch_head(revision)
            if head is None:
                if re.fullmatch(r"[0-9a-f]{40}", revision) or not create_pr:
                    raise HubError(
                        404 if not create_pr else 400, f"Invalid rev id: {revision}", "RevisionNotFound"
                    )
            parent = head or repo.resolve("main")
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, "A commit has happened since the parent commit. Please pull and retry.")
            patterns = repo.lfs_patterns(parent)
            operations: list[tuple[str, str, Any]] = []
            readme = None
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                path = value["path"]
                if path.startswith("/") or ".." in path.split("/") or path.startswith(".git/"):
                    raise HubError(400, f"Invalid path: {path}")
                if key == "file":
                    content = base64.b64decode(value["content"])
                    if len(content) >= REGULAR_MAX_BYTES or b"\0" in content[:1024]:
                        raise HubError(400, f"Your push was rejected: {path} is binary or > 10 MiB; use LFS")
                    if (
                        self._upload_mode(repo, patterns, path, len(content), content[:512]) == "lfs"
                        and content
                    ):
                        raise HubError(400, f"Your push was rejected: {path} must be stored with LFS")
                    operations.append(("file", path, content))
                    if path == "README.md":
                        readme = content.decode()
                elif key == "lfsFile":
                    oid = value["oid"]
                    stored = repo.lfs_path(oid)
                    if not stored.is_file() or (
                        "size" in value and stored.stat().st_size != int(value["size"])
                    ):
                        raise HubError(
                            422, f"Your push was rejected: LFS object {oid} for {path} was never uploaded"
                        )
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {stored.stat().st_size}\n"
                    operations.append(("file", path, pointer.encode()))
                elif key == "deletedFile":
                    if repo.file_entry(parent, path) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    operations.append(("deletedFile", path, None))
                elif key == "deletedFolder":
                    operations.append(("deletedFolder", path, None))
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            if readme is not None:
                match = re.match(r"^---\s*\n(.*?)\n---\s*\n", readme, re.DOTALL)
                if match:
                    try:
                        yaml.safe_load(match.group(1))
                    except yaml.YAMLError as error:
                        raise HubError(400, f"Invalid card metadata: {error}") from None
            message = header.get("summary") or ""
            if not message:
                raise HubError(400, "Commit summary must not be empty")
            if header.get("description"):
                message += "\n\n" + header["description"]
            pr_url = None
            if create_pr:
                number = 1 + len(_git(repo.path, "for-each-ref", "refs/pr/").splitlines())
                sha = repo.commit("", operations, message, parent, ref=f"refs/pr/{number}")
                prefix = "" if repo.type == "model" else "datasets/"
                pr_url = f"{self.hub.url}/{prefix}{repo.id}/discussions/{number}"
            else:
                sha = repo.commit(revision, operations, message, parent)
            self.hub.commit_log.append(
                {
                    "repo": repo.id,
                    "paths": [path for _, path, _ in operations],
                    "bytes": sum(len(p) for kind, _, p in operations if kind == "file" and p),
                    "time": time.monotonic(),
                }
            )
        prefix = "" if repo.type == "model" else "datasets/"
        self._send(
            200,
            {
                "commitOid": sha,
                "commitUrl": f"{self.hub.url}/{prefix}{repo.id}/commit/{sha}",
                "pullRequestUrl": pr_url,
                "success": True,
            },
        )

    def _resolve(self, repo: _Repo, revision: str, path: str) -> None:
        sha = repo.resolve(revision)
        data, entry = repo.read(sha, path)
        headers = {"X-Repo-Commit": sha, "Content-Type": "application/octet-stream"}
        if "lfs" in entry:
            headers.update(
                {
                    "ETag": f'"{entry["lfs"]["oid"]}"',
                    "X-Linked-Etag": f'"{entry["lfs"]["oid"]}"',
                    "X-Linked-Size": str(len(data)),
                }
            )
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        byte_range = self.headers.get("Range")
        if byte_range and self.command == "GET":
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", byte_range.strip())
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._send(206, data[start : end + 1], headers)
        if self.command == "HEAD":
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return None
        self._send(200, data, headers)
