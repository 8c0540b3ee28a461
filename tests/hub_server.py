"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

It implements the routes that the pinned ``huggingface_hub`` client (and ``timm`` / ``datasets`` through it)
uses to create a repo, upload files (inline and through the LFS batch API with the "basic" transfer),
list files, read repo info and download files. Everything is kept in memory under a lock; LFS objects
are kept in a temporary folder. Every request the server does not know is recorded in
:attr:`HubServer.unknown_routes` (and printed), and answered 501, so a client upgrade that calls a
new route fails clearly instead of silently.

Usage::

    server = HubServer(port=0).start()
    os.environ["HF_ENDPOINT"] = server.url   # before importing huggingface_hub / timm / datasets
    ...
    server.stop()

Write routes (create, preupload, LFS batch, commit) and every route of a private repo need an
``Authorization: Bearer <token>`` header; the token ``"invalid"`` is rejected with 401 like an expired
token on the Hub.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubServer", "StoredFile", "StoredRepo"]

USER_NAME = "tester"
REPO_TYPE_PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}
# the Hub decides LFS by the repo's .gitattributes; these are the default patterns of a new repo
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".parquet", ".arrow",
                ".npy", ".npz", ".pkl", ".zip", ".tar", ".gz", ".msgpack", ".model")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    """One file of a commit: its bytes live inline (regular) or in the LFS store (``lfs_sha256``)."""

    size: int
    blob_id: str
    content: Optional[bytes] = None
    lfs_sha256: Optional[str] = None

    def to_tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs_sha256 is not None:
            entry["lfs"] = {"oid": self.lfs_sha256, "size": self.size,
                            "pointerSize": len(lfs_pointer(self.lfs_sha256, self.size))}
        return entry


@dataclass
class StoredRepo:
    """A repo: commits in order (each a full snapshot path -> StoredFile) and its branch ``main``."""

    repo_type: str
    repo_id: str
    private: bool = False
    commits: List[Tuple[str, Dict[str, StoredFile], str]] = field(default_factory=list)  # (sha, files, title)

    @property
    def head(self) -> str:
        return self.commits[-1][0]

    def snapshot(self, revision: str) -> Optional[Tuple[str, Dict[str, StoredFile]]]:
        """Files at a revision: ``main`` or a (full) commit sha; None when unknown."""
        if revision == "main":
            sha, files, _ = self.commits[-1]
            return sha, files
        for sha, files, _ in self.commits:
            if sha == revision:
                return sha, files
        return None


class HubState:
    """The server's storage, shared by the handler threads."""

    def __init__(self, lfs_dir: str):
        self.lock = threading.Lock()
        self.repos: Dict[Tuple[str, str], StoredRepo] = {}
        self.lfs_dir = lfs_dir
        self.unknown_routes: List[str] = []
        self.requests: List[str] = []
        self._counter = 0

    def new_sha(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}:{self._counter}:{time.time_ns()}".encode()).hexdigest()

    def lfs_path(self, oid: str) -> str:
        return os.path.join(self.lfs_dir, oid)

    def has_lfs(self, oid: str) -> bool:
        return os.path.exists(self.lfs_path(oid))

    def read(self, stored: StoredFile) -> bytes:
        if stored.content is not None:
            return stored.content
        with open(self.lfs_path(stored.lfs_sha256), "rb") as f:
            return f.read()


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SplLossesTestHub/1.0"

    # ------------------------------------------------------------------ plumbing
    @property
    def state(self) -> HubState:
        return self.server.state  # type: ignore[attr-defined]

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]  # type: ignore[index]
        return f"http://{host}:{port}"

    def log_message(self, format, *args):  # quiet: tests read state.requests instead
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: Optional[dict] = None, head_only: bool = False, length: Optional[int] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[dict] = None, content_type: str = "application/json") -> None:
        self._send(status, json.dumps(obj).encode(), content_type=content_type, headers=headers)

    def _error(self, err: _HubError, head_only: bool = False) -> None:
        headers = dict(err.headers)
        if err.code:
            headers["X-Error-Code"] = err.code
        headers["X-Error-Message"] = err.message
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers=headers, head_only=head_only)

    def _require_auth(self) -> str:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise _HubError(401, "Invalid credentials in Authorization header: a token is required")
        token = auth[7:].strip()
        if token == "invalid":
            raise _HubError(401, "Invalid user token.")
        return token

    def _repo(self, repo_type: str, repo_id: str) -> StoredRepo:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"Repository not found: {repo_type} {repo_id}", code="RepoNotFound")
        if repo.private:  # like the Hub: a private repo does not exist for anonymous requests
            try:
                self._require_auth()
            except _HubError:
                raise _HubError(401, f"Repository not found: {repo_type} {repo_id}", code="RepoNotFound")
        return repo

    def _snapshot(self, repo: StoredRepo, revision: str) -> Tuple[str, Dict[str, StoredFile]]:
        snap = repo.snapshot(revision)
        if snap is None:
            raise _HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return snap

    def _unknown(self, method: str) -> None:
        route = f"{method} {self.path}"
        self.state.unknown_routes.append(route)
        print(f"[hub_server] unknown route: {route}", file=sys.stderr, flush=True)
        self._json(501, {"error": f"hub test server: route not implemented: {route}"})

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.state.requests.append(f"{method} {parts.path}")
        body = self._read_body() if method in ("POST", "PUT") else b""
        head_only = method == "HEAD"
        try:
            with self.state.lock:
                handled = self._route(method, segments, query, body)
            if not handled:
                self._unknown(method)
        except _HubError as err:
            self._error(err, head_only=head_only)

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731

    # ------------------------------------------------------------------ routing
    def _route(self, method: str, seg: List[str], query: Dict[str, str], body: bytes) -> bool:
        if seg[:1] == ["api"]:
            return self._route_api(method, seg[1:], query, body)
        if seg[:1] == ["lfs-objects"] and len(seg) == 2:
            return self._route_lfs_object(method, seg[1], body)
        # resolve: /{ns}/{name}/resolve/{rev}/{path...} and /datasets/{ns}/{name}/resolve/...
        repo_type = "model"
        rest = seg
        if seg[:1] and seg[0] in REPO_TYPE_PLURALS:
            repo_type, rest = REPO_TYPE_PLURALS[seg[0]], seg[1:]
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            self._resolve(method, repo_type, "/".join(rest[:2]), rest[3], "/".join(rest[4:]))
            return True
        # LFS batch: /{ns}/{name}.git/info/lfs/objects/batch
        if (method == "POST" and len(rest) == 6 and rest[1].endswith(".git")
                and rest[2:] == ["info", "lfs", "objects", "batch"]):
            self._lfs_batch(repo_type, rest[0] + "/" + rest[1][:-4], body)
            return True
        return False

    def _route_api(self, method: str, seg: List[str], query: Dict[str, str], body: bytes) -> bool:
        if method == "GET" and seg == ["whoami-v2"]:
            self._require_auth()
            self._json(200, {"type": "user", "id": "0" * 24, "name": USER_NAME, "fullname": "Test User",
                             "orgs": [], "auth": {"type": "access_token",
                                                  "accessToken": {"displayName": "dummy", "role": "write"}}})
            return True
        if method == "POST" and seg == ["repos", "create"]:
            self._create_repo(json.loads(body or b"{}"))
            return True
        if method == "GET" and seg == ["agent-harnesses"]:  # user-agent telemetry registry: an empty one
            self._json(200, {"standardEnvVars": [], "harnesses": {}})
            return True
        if method == "POST" and seg == ["validate-yaml"]:
            self._json(200, {"errors": [], "warnings": []})
            return True
        if len(seg) < 3 or seg[0] not in REPO_TYPE_PLURALS:
            return False
        repo_type, repo_id, rest = REPO_TYPE_PLURALS[seg[0]], seg[1] + "/" + seg[2], seg[3:]
        if method == "GET" and not rest:
            self._repo_info(repo_type, repo_id, "main")
        elif method == "GET" and len(rest) == 2 and rest[0] == "revision":
            self._repo_info(repo_type, repo_id, rest[1])
        elif method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            self._preupload(repo_type, repo_id, rest[1], json.loads(body or b"{}"))
        elif method == "POST" and len(rest) == 2 and rest[0] == "commit":
            self._commit(repo_type, repo_id, rest[1], query, body)
        elif method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), query)
        elif method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            self._paths_info(repo_type, repo_id, rest[1], body)
        elif method == "GET" and rest == ["refs"]:
            repo = self._repo(repo_type, repo_id)
            self._json(200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head}],
                             "converts": [], "tags": []})
        else:
            return False
        return True

    # ------------------------------------------------------------------ endpoints
    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.base_url}/{prefix}{repo_id}"

    def _create_repo(self, payload: dict) -> None:
        self._require_auth()
        repo_type = payload.get("type") or "model"
        name = payload.get("name")
        if not name or repo_type not in REPO_TYPE_PLURALS.values():
            raise _HubError(400, f"invalid create-repo payload: {payload}")
        repo_id = f"{payload.get('organization') or USER_NAME}/{name}"
        url = self._repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.state.repos:
            self._json(409, {"error": "You already created this repo", "url": url})
            return
        repo = StoredRepo(repo_type, repo_id, private=payload.get("visibility") == "private")
        files = {".gitattributes": StoredFile(len(DEFAULT_GITATTRIBUTES), git_blob_sha1(DEFAULT_GITATTRIBUTES),
                                               content=DEFAULT_GITATTRIBUTES)}
        repo.commits.append((self.state.new_sha(repo_id), files, "initial commit"))
        self.state.repos[(repo_type, repo_id)] = repo
        self._json(200, {"url": url, "name": repo_id})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        sha, files = self._snapshot(repo, revision)
        self._json(200, {
            "_id": sha[:24], "id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in sorted(files)],
        })

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> None:
        self._require_auth()
        repo = self._repo(repo_type, repo_id)
        sha, files = self._snapshot(repo, revision)
        out = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD
            existing = files.get(path)
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if existing.lfs_sha256 is not None else existing.blob_id
            out.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": sha})

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes) -> None:
        self._require_auth()
        self._repo(repo_type, repo_id)
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload":
            raise _HubError(400, f"only the upload operation is implemented, got {payload.get('operation')!r}")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise _HubError(400, "only the basic LFS transfer is implemented")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry = {"oid": oid, "size": size, "authenticated": True}
            if not self.state.has_lfs(oid):
                href = f"{self.base_url}/lfs-objects/{oid}"
                entry["actions"] = {"upload": {"href": href, "expires_in": 3600},
                                    "verify": {"href": href + "?verify=1", "expires_in": 3600}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _route_lfs_object(self, method: str, oid: str, body: bytes) -> bool:
        if method == "PUT":
            if hashlib.sha256(body).hexdigest() != oid:
                raise _HubError(400, f"uploaded content does not match LFS oid {oid}")
            with open(self.state.lfs_path(oid), "wb") as f:
                f.write(body)
            self._send(200)
            return True
        if method == "POST":  # verify
            payload = json.loads(body or b"{}")
            if not self.state.has_lfs(oid) or os.path.getsize(self.state.lfs_path(oid)) != payload.get("size"):
                raise _HubError(404, f"LFS object {oid} was not uploaded")
            self._json(200, {})
            return True
        return False

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: Dict[str, str], body: bytes) -> None:
        self._require_auth()
        repo = self._repo(repo_type, repo_id)
        if query.get("create_pr") in ("1", "true"):
            raise _HubError(501, "hub test server: pull requests are not implemented")
        if revision != "main":
            raise _HubError(404, f"hub test server: only the main branch exists, got {revision!r}",
                            code="RevisionNotFound")
        files = dict(repo.commits[-1][1])
        title = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent is not None and not repo.head.startswith(parent):
                    raise _HubError(412, f"parent commit {parent} is not the head of main ({repo.head})")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise _HubError(400, f"unsupported file encoding {value.get('encoding')!r}")
                data = base64.b64decode(value["content"])
                files[value["path"]] = StoredFile(len(data), git_blob_sha1(data), content=data)
            elif key == "lfsFile":
                oid = value["oid"]
                if not self.state.has_lfs(oid):
                    raise _HubError(400, f"LFS object {oid} for {value['path']} was never uploaded")
                size = os.path.getsize(self.state.lfs_path(oid))
                files[value["path"]] = StoredFile(size, git_blob_sha1(lfs_pointer(oid, size)), lfs_sha256=oid)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise _HubError(404, f"A file with this name doesn't exist: {value['path']}",
                                    code="EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            else:
                raise _HubError(400, f"hub test server: unknown commit operation {key!r}")
        sha = self.state.new_sha(repo_id)
        repo.commits.append((sha, files, title))
        self._json(200, {"commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None, "success": True})

    def _entries(self, files: Dict[str, StoredFile], path: str, recursive: bool) -> List[dict]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries, folders = [], set()
        for file_path in sorted(files):
            if not file_path.startswith(prefix):
                continue
            rel = file_path[len(prefix):]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(files[file_path].to_tree_entry(file_path))
        folder_entries = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f}
                          for f in sorted(folders)]
        return folder_entries + entries

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: Dict[str, str]) -> None:
        repo = self._repo(repo_type, repo_id)
        sha, files = self._snapshot(repo, revision)
        path = path.strip("/")
        if path and path in files:
            raise _HubError(400, f"{path} is a file, not a folder")
        if path and not any(p.startswith(path + "/") for p in files):
            raise _HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers={"X-Repo-Commit": sha})
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        self._json(200, self._entries(files, path, recursive))

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        repo = self._repo(repo_type, repo_id)
        _, files = self._snapshot(repo, revision)
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append(files[path].to_tree_entry(path))
            elif any(p.startswith(path + "/") for p in files):
                out.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path})
        self._json(200, out)

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        head_only = method == "HEAD"
        repo = self._repo(repo_type, repo_id)
        sha, files = self._snapshot(repo, revision)
        stored = files.get(path)
        if stored is None:
            raise _HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers={"X-Repo-Commit": sha})
        etag = stored.lfs_sha256 or stored.blob_id
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if stored.lfs_sha256 is not None:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(stored.size)
        data = self.state.read(stored)
        status = 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and data:
            start = int(match.group(1)) if match.group(1) else max(0, len(data) - int(match.group(2)))
            end = int(match.group(2)) if match.group(1) and match.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data):
                self._send(416, headers={"Content-Range": f"bytes */{len(data)}"}, head_only=head_only)
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, data, content_type="application/octet-stream", headers=headers, head_only=head_only)


class HubServer:
    """A Hub-compatible HTTP server on 127.0.0.1, run in a background thread.

    Args:
        port: TCP port; 0 picks a free one.
        storage_dir: Folder for LFS objects; a temporary folder (removed on :meth:`stop`) when None.
    """

    def __init__(self, port: int = 0, storage_dir: Optional[str] = None):
        self._own_dir = storage_dir is None
        self.storage_dir = storage_dir or tempfile.mkdtemp(prefix="hub_server_")
        self.state = HubState(self.storage_dir)
        self.port = port
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def unknown_routes(self) -> List[str]:
        return self.state.unknown_routes

    def start(self) -> "HubServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.state = self.state  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop and remove the storage folder (when the server made it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.storage_dir, ignore_errors=True)

    def repo_files(self, repo_id: str, repo_type: str = "model") -> Dict[str, bytes]:
        """The files on ``main`` of a repo, path -> bytes (for assertions)."""
        with self.state.lock:
            repo = self.state.repos[(repo_type, repo_id)]
            return {path: self.state.read(f) for path, f in repo.commits[-1][1].items()}

    def add_repo(self, repo_id: str, files: Dict[str, bytes], repo_type: str = "model") -> None:
        """Create a repo holding ``files`` directly (to set up "a repo with other content")."""
        with self.state.lock:
            stored = {".gitattributes": StoredFile(len(DEFAULT_GITATTRIBUTES), git_blob_sha1(DEFAULT_GITATTRIBUTES),
                                                   content=DEFAULT_GITATTRIBUTES)}
            for path, data in files.items():
                stored[path] = StoredFile(len(data), git_blob_sha1(data), content=data)
            repo = StoredRepo(repo_type, repo_id)
            repo.commits.append((self.state.new_sha(repo_id), stored, "added by test"))
            self.state.repos[(repo_type, repo_id)] = repo
