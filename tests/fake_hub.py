"""A small, real HTTP server on 127.0.0.1 that speaks the part of the Hub API huggingface_hub 2.4 uses to publish
and download a model repository.

Written against the client code of huggingface_hub 2.4 (hf_api.py, _commit_api.py, _upload_pipeline.py,
file_download.py, _snapshot_download.py, utils/_http.py); what each answer must contain is noted where the client
depends on it. Every file is answered as a "regular" (in-git) upload, so no LFS/Xet storage is involved.

Routes (repo ids are "namespace/name", revisions are URL-quoted as the client sends them):

- POST /api/repos/create
- POST /api/validate-yaml
- GET  /api/agent-harnesses                        empty registry (the client's best-effort agent detection)
- GET  /api/models/{repo}                          repo info ("sha", "siblings")
- GET  /api/models/{repo}/revision/{rev}           repo info at a revision
- GET  /api/models/{repo}/tree/{rev}[/{path}]      file listing (`recursive` query honoured)
- POST /api/models/{repo}/preupload/{rev}          every file -> uploadMode "regular"
- POST /api/models/{repo}/commit/{rev}             NDJSON: header line + "file" lines with base64 content
- POST /api/models/{repo}/branch/{branch}
- POST /api/models/{repo}/discussions              pull requests only (create_pr)
- GET  /api/models/{repo}/discussions/{num}
- HEAD/GET /{repo}/resolve/{rev}/{path}            ETag, X-Repo-Commit, Content-Length; Range on GET

Failure modes, chosen per server: ``FakeHub(fail="unauthorized")`` answers 401 to everything,
``FakeHub(fail="create_not_found")`` answers 404 to repo creation, ``FakeHub(drop_commits=n)`` reads part of the
body of the first `n` commit requests and then closes the connection without answering (``n=None``: every one).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_BRANCH = "main"
# Bounds that keep a misbehaving client from tying the server up.
MAX_BODY_BYTES = 256 * 1024 * 1024
SOCKET_TIMEOUT_S = 15.0

# What the Hub puts in a new repository's first commit.
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
# The values the Hub documents for `base_model_relation` (https://huggingface.co/docs/hub/model-cards).
_BASE_MODEL_RELATIONS = {"adapter", "merge", "quantized", "finetune"}
_INVALID_TOKEN = "Invalid credentials in Authorization header"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file, which the Hub uses as ETag and tree oid of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    message: str
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    pull_requests: dict[int, dict[str, Any]] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        return self.commits.get(revision)


class _Drop(Exception):
    """Raised inside a handler to close the connection without answering."""


class FakeHub:
    """The fake Hub: start it (or use it as a context manager), point the client at `endpoint`, stop it.

    Args:
        token: The only token accepted for writes and private reads.
        fail: None, "unauthorized" (401 on every request) or "create_not_found" (404 on POST /api/repos/create).
        drop_commits: Drop the connection during this many commit requests (None: all of them; 0: none).
    """

    def __init__(self, *, token: str = "fake-token", fail: str | None = None, drop_commits: int | None = 0) -> None:
        if fail not in (None, "unauthorized", "create_not_found"):
            raise ValueError(f"Unknown failure mode {fail!r}.")
        self.token = token
        self.fail = fail
        self.drop_commits = drop_commits
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.unhandled: list[tuple[str, str]] = []  # requests no route matched: gaps in this fake
        self.commit_attempts = 0
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # ---- lifecycle --------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            fake = hub

        # Port 0: the OS picks a free port; only the loopback interface is bound.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        # Keep-alive connections would otherwise hold handler threads until their socket timeout.
        with self.lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- helpers for tests ------------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = DEFAULT_BRANCH) -> dict[str, bytes]:
        """The files of `repo_id` at `revision`, as stored by the server."""
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            return dict(commit.files) if commit else {}

    def count(self, method: str, path_part: str) -> int:
        """How many requests with this method had `path_part` in their path."""
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and path_part in p)

    # ---- state changes (called with the lock held) ------------------------------------------------------------
    def _new_commit(self, repo: Repo, files: dict[str, bytes], message: str, parent: str | None) -> Commit:
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_id}\0{parent}\0{message}\0{time.time_ns()}\0{len(repo.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_oid(files[path])}\0".encode())
        commit = Commit(oid=digest.hexdigest(), files=files, message=message, parent=parent)
        repo.commits[commit.oid] = commit
        return commit


class _HubHandler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every answer carries a Content-Length
    timeout = SOCKET_TIMEOUT_S
    server_version = "FakeHub/1.0"

    # ---- plumbing ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        with self.fake.lock:
            self.fake._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.fake.lock:
                self.fake._connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        pass  # keep test output clean; `fake.requests` records the traffic

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.raw_path = url.path
        self.query = parse_qs(url.query)
        with self.fake.lock:
            self.fake.requests.append((self.command, url.path))
        try:
            if self.fake.fail == "unauthorized":
                self._read_body()
                self._error(401, _INVALID_TOKEN, headers={"X-Error-Message": _INVALID_TOKEN})
                return
            self._route()
        except _Drop:
            # No answer at all: the client sees the connection close mid-request.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _route(self) -> None:
        parts = self.raw_path.strip("/").split("/")
        method = self.command
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo()
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml()
        if method == "GET" and parts == ["api", "agent-harnesses"]:
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, rest = f"{unquote(parts[2])}/{unquote(parts[3])}", parts[4:]
            if method == "GET" and not rest:
                return self._repo_info(repo_id, None)
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._repo_info(repo_id, unquote(rest[1]))
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_id, unquote(rest[1]), "/".join(unquote(p) for p in rest[2:]))
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_id, unquote(rest[1]))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo_id, unquote(rest[1]))
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                return self._create_branch(repo_id, unquote(rest[1]))
            if method == "POST" and rest == ["discussions"]:
                return self._create_pull_request(repo_id)
            if method == "GET" and len(rest) == 2 and rest[0] == "discussions" and rest[1].isdigit():
                return self._pull_request(repo_id, int(rest[1]))
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            return self._resolve(repo_id, unquote(parts[3]), "/".join(unquote(p) for p in parts[4:]))
        with self.fake.lock:
            self.fake.unhandled.append((method, self.raw_path))
        self._read_body()
        self._error(404, f"FakeHub has no route for {method} {self.raw_path}")

    def _read_body(self, *, limit: int | None = None) -> bytes:
        """Read the request body (Content-Length only); with `limit`, read at most that many bytes."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._error(411, "FakeHub needs a Content-Length")
            raise _Drop
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._error(413, f"Body of {length} bytes is over FakeHub's limit of {MAX_BODY_BYTES}")
            raise _Drop
        return self.rfile.read(length if limit is None else min(length, limit))

    def _json_body(self) -> Any:
        body = self._read_body()
        return json.loads(body) if body else {}

    def _send(self, status: int, body: bytes, *, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", formatdate(usegmt=True))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, *, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), content_type="application/json", headers=headers)

    def _error(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        # The Hub answers errors as JSON {"error": ...}; the client both parses it and needs it to be JSON
        # (HfApi._validate_yaml calls response.json() before checking the status).
        self._json(status, {"error": message}, headers=headers)

    # ---- auth and lookups -------------------------------------------------------------------------------------
    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.fake.token}"

    def _require_write(self) -> bool:
        if self._authorized():
            return True
        self._read_body()
        self._error(401, _INVALID_TOKEN, headers={"X-Error-Message": _INVALID_TOKEN})
        return False

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            # The client maps X-Error-Code to RepositoryNotFoundError (transformers relies on the type).
            self._error(404, "Repository not found", headers={"X-Error-Code": "RepoNotFound"})
            return None
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, f"Invalid rev id: {revision}", headers={"X-Error-Code": "RevisionNotFound"})
        return commit

    # ---- routes -----------------------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        if not self._require_write():
            return
        payload = self._json_body()
        if self.fake.fail == "create_not_found":
            self._error(404, "Not Found")
            return
        name, organization = payload.get("name"), payload.get("organization")
        if not name or not organization:
            self._error(400, "FakeHub needs repo ids of the form namespace/name")
            return
        repo_id = f"{organization}/{name}"
        url = f"{self.fake.endpoint}/{repo_id}"
        with self.fake.lock:
            if repo_id in self.fake.repos:
                # HfApi.create_repo(exist_ok=True) reads "url" from this 409 body.
                self._json(409, {"error": "You already created this model repo", "url": url})
                return
            repo = Repo(
                repo_id=repo_id,
                private=payload.get("visibility") == "private" or bool(payload.get("private")),
                created_at=_now_iso(),
            )
            first = self.fake._new_commit(repo, {".gitattributes": _GITATTRIBUTES}, "initial commit", None)
            repo.refs[DEFAULT_BRANCH] = first.oid
            self.fake.repos[repo_id] = repo
        self._json(200, {"url": url, "name": repo_id, "id": f"fake-{len(self.fake.repos)}"})

    def _validate_yaml(self) -> None:
        payload = self._json_body()
        errors = []
        content = payload.get("content", "")
        relation = _yaml_scalar(content, "base_model_relation")
        if relation is not None and relation not in _BASE_MODEL_RELATIONS:
            errors.append({"message": f'"base_model_relation" must be one of {sorted(_BASE_MODEL_RELATIONS)}'})
        if errors:
            self._json(400, {"errors": errors, "warnings": []})
        else:
            self._json(200, {"errors": [], "warnings": []})

    def _repo_info(self, repo_id: str, revision: str | None) -> None:
        with self.fake.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = self._commit_at(repo, revision or DEFAULT_BRANCH)
            if commit is None:
                return
            info = {
                "_id": f"fake-{repo_id}",
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,  # snapshot_download asserts it is present
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": repo.created_at,
                "lastModified": _now_iso(),
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            }
        self._json(200, info)

    def _tree(self, repo_id: str, revision: str, path_in_repo: str) -> None:
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.fake.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = self._commit_at(repo, revision)
            if commit is None:
                return
            prefix = f"{path_in_repo.strip('/')}/" if path_in_repo.strip("/") else ""
            entries: dict[str, dict[str, Any]] = {}
            for path, data in sorted(commit.files.items()):
                if not path.startswith(prefix):
                    continue
                relative = path[len(prefix) :].split("/")
                # Folders on the way to the file, as {"type": "directory"} entries (the client builds RepoFolder).
                for depth in range(1, len(relative)):
                    if depth > 1 and not recursive:
                        break
                    folder = prefix + "/".join(relative[:depth])
                    oid = hashlib.sha1(folder.encode()).hexdigest()
                    entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
                if len(relative) == 1 or recursive:
                    entries[path] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
        if not entries and prefix:
            self._error(404, f"Entry not found: {path_in_repo}", headers={"X-Error-Code": "EntryNotFound"})
            return
        self._json(200, list(entries.values()))

    def _preupload(self, repo_id: str, revision: str) -> None:
        if not self._require_write():
            return
        payload = self._json_body()
        with self.fake.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            base = repo.resolve(revision) or (repo.resolve(DEFAULT_BRANCH) if "create_pr" in self.query else None)
            if base is None:
                self._commit_at(repo, revision)
                return
            files = []
            for item in payload.get("files", []):
                answer = {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False}
                if item["path"] in base.files:
                    # With the remote oid the client skips files that did not change (no empty commits).
                    answer["oid"] = git_blob_oid(base.files[item["path"]])
                files.append(answer)
        self._json(200, {"files": files, "commitOid": base.oid})

    def _commit(self, repo_id: str, revision: str) -> None:
        if not self._require_write():
            return
        with self.fake.lock:
            self.fake.commit_attempts += 1
            drop = self.fake.drop_commits is None or self.fake.commit_attempts <= self.fake.drop_commits
        if drop:
            # Take part of the upload, then vanish: what a proxy timeout or a network cut looks like to the client.
            self._read_body(limit=max(int(self.headers.get("Content-Length") or 0) // 2, 1))
            raise _Drop
        lines = [json.loads(line) for line in self._read_body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            self._error(400, "The first NDJSON line of a commit must be the header")
            return
        header = lines[0]["value"]
        with self.fake.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            parent = self._commit_at(repo, revision)
            if parent is None:
                return
            if header.get("parentCommit") and header["parentCommit"] != parent.oid:
                self._error(412, "A commit has happened since. Please refresh and try again.")
                return
            files = dict(parent.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        self._error(400, f"Unsupported encoding {value.get('encoding')!r}")
                        return
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {path: data for path, data in files.items() if not path.startswith(folder)}
                else:
                    # "lfsFile" would need an LFS/Xet store; preupload never asks for one.
                    self._error(400, f"FakeHub does not support commit lines of type {key!r}")
                    return
            commit = self.fake._new_commit(repo, files, header.get("summary", ""), parent.oid)
            repo.refs[revision] = commit.oid
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.fake.endpoint}/{repo_id}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _create_branch(self, repo_id: str, branch: str) -> None:
        if not self._require_write():
            return
        payload = self._json_body()
        with self.fake.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if branch in repo.refs:
                self._error(409, f"Reference already exists: refs/heads/{branch}")
                return
            start = self._commit_at(repo, payload.get("startingPoint") or DEFAULT_BRANCH)
            if start is None:
                return
            repo.refs[branch] = start.oid
        self._json(200, {})

    def _create_pull_request(self, repo_id: str) -> None:
        if not self._require_write():
            return
        payload = self._json_body()
        if not payload.get("pullRequest"):
            self._error(400, "FakeHub only supports pull requests, not plain discussions")
            return
        with self.fake.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            num = len(repo.pull_requests) + 1
            repo.refs[f"refs/pr/{num}"] = repo.refs[DEFAULT_BRANCH]
            repo.pull_requests[num] = {"title": payload.get("title", ""), "createdAt": _now_iso()}
        self._json(200, {"num": num, "url": f"{self.fake.endpoint}/{repo_id}/discussions/{num}"})

    def _pull_request(self, repo_id: str, num: int) -> None:
        with self.fake.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            pr = repo.pull_requests.get(num)
            if pr is None:
                self._error(404, "Discussion not found")
                return
            details = {
                "num": num,
                "title": pr["title"],
                "status": "draft",
                "isPullRequest": True,
                "createdAt": pr["createdAt"],
                "author": {"name": "fake-user"},
                "repo": {"name": repo_id, "type": "model"},
                "events": [],
                "changes": {"base": f"refs/heads/{DEFAULT_BRANCH}"},
                "filesWithConflicts": [],
                "diff": "",
            }
        self._json(200, details)

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        with self.fake.lock:
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = self._commit_at(repo, revision)
            if commit is None:
                return
            data = commit.files.get(path)
        if data is None:
            # X-Repo-Commit on a 404 lets the client cache "this file does not exist at this commit".
            self._error(404, "Entry not found", headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit.oid})
            return
        # hf_hub_download requires X-Repo-Commit and an ETag, and checks the downloaded size against Content-Length.
        headers = {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        status, body = 200, data
        range_header = self.headers.get("Range", "")
        if self.command == "GET" and range_header.startswith("bytes="):
            start_text, _, end_text = range_header[len("bytes=") :].partition("-")
            start = int(start_text or 0)
            end = min(int(end_text), len(data) - 1) if end_text else len(data) - 1
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, body, content_type="application/octet-stream", headers=headers)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _yaml_scalar(markdown: str, key: str) -> str | None:
    """The value of a top-level scalar `key` in a card's YAML front matter (enough for the checks made here)."""
    if not markdown.startswith("---"):
        return None
    front = markdown.split("---", 2)[1] if markdown.count("---") >= 2 else ""
    for line in front.splitlines():
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip().strip("'\"") or None
    return None
