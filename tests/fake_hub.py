"""A Hugging Face hub of our own on 127.0.0.1, speaking the HTTP protocol that
huggingface_hub and transformers use (the subset they need to resolve revisions, list trees
and download files), so the download path is tested for real: the client runs unchanged
with ``HF_ENDPOINT=http://127.0.0.1:PORT``.

Repos are served from plain folders: ``add_model(repo, {branch: folder})`` publishes each
folder's files as one commit. Every request is logged (``requests``); downloads can be
throttled (``bytes_per_second``) and made to fail (``fail``), for prefetch and fault tests.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".pt")  # served as LFS files


@dataclass(frozen=True)
class Pointer:
    """An LFS file known by size and sha256 only: listed like any other, never served. What a
    metadata benchmark publishes for 1,540 Pythia-sized revisions without holding their bytes."""

    size: int
    sha256: str


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes | Pointer]


@dataclass
class Repo:
    kind: str  # "models" or "datasets"
    commits: dict[str, Commit] = field(default_factory=dict)  # sha -> commit
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


def _sha256(data: bytes | Pointer) -> str:
    return data.sha256 if isinstance(data, Pointer) else hashlib.sha256(data).hexdigest()


def _commit_sha(files: dict[str, bytes | Pointer]) -> str:
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + bytes.fromhex(_sha256(files[name])))
    return digest.hexdigest()


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".cache" not in p.parts
    }


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}  # (kind, repo id) -> repo
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.bytes_per_second: float | None = None  # throttle file downloads
        # One link for every download at once (a node's uplink), instead of bytes_per_second
        # for each connection: concurrent downloads share it.
        self.shared_link = False
        self._link_free_at = 0.0
        self.fail: dict[str, int] = {}  # path substring -> HTTP status to answer with
        self.latency_s = 0.0  # added to every request: a hub across the ocean
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ publishing

    def add(self, kind: str, repo: str, revisions: dict[str, dict[str, bytes]]) -> dict:
        """Publish ``{branch: {path: bytes}}``; returns {branch: commit sha}."""
        entry = self.repos.setdefault((kind, repo), Repo(kind))
        shas = {}
        for branch, files in revisions.items():
            sha = _commit_sha(files)
            entry.commits[sha] = Commit(sha, dict(files))
            entry.branches[branch] = sha
            shas[branch] = sha
        return shas

    def add_model(self, repo: str, folders: dict[str, Path]) -> dict:
        return self.add("models", repo, {b: _folder_files(f) for b, f in folders.items()})

    def add_dataset(self, repo: str, files: dict[str, bytes], branch: str = "main") -> dict:
        return self.add("datasets", repo, {branch: files})

    # ------------------------------------------------------------------ serving

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                return None

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

            def do_POST(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def downloads(self, suffix: str = "") -> list[str]:
        """Paths of the files GET-downloaded so far (optionally ending with ``suffix``)."""
        return [
            p for m, p in self.requests if m == "GET" and "/resolve/" in p and p.endswith(suffix)
        ]

    # ------------------------------------------------------------------ protocol

    def _reply(self, handler, status: int, body: bytes = b"", headers: dict | None = None,
               head: bool = False) -> None:  # fmt: skip
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, str(value))
        if "Content-Length" not in (headers or {}):
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head and body:
            if self.bytes_per_second and status == 200 and len(body) > 4096:
                for start in range(0, len(body), 65536):
                    handler.wfile.write(body[start : start + 65536])
                    self._wait_for_link(min(65536, len(body) - start))
            else:
                handler.wfile.write(body)

    def _wait_for_link(self, size: int) -> None:
        """Sleep as long as ``size`` bytes take: on this connection's own link, or on the one
        link all connections share (each chunk is sent after those already queued on it)."""
        seconds = size / self.bytes_per_second
        if not self.shared_link:
            time.sleep(seconds)
            return
        with self.lock:
            end = max(time.monotonic(), self._link_free_at) + seconds
            self._link_free_at = end
        time.sleep(max(0.0, end - time.monotonic()))

    def _json(self, handler, value, head=False, headers=None) -> None:
        body = json.dumps(value).encode()
        self._reply(handler, 200, body, {"Content-Type": "application/json", **(headers or {})},
                    head)  # fmt: skip

    def _error(self, handler, code: str, head: bool) -> None:
        body = json.dumps({"error": code}).encode()
        self._reply(handler, 404, body, {"X-Error-Code": code, "Content-Type": "application/json"},
                    head)  # fmt: skip

    def _handle(self, handler, head: bool) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        with self.lock:
            self.requests.append((handler.command, path))
        if self.latency_s:
            time.sleep(self.latency_s)
        for fragment, status in self.fail.items():
            if fragment in path:
                self._reply(handler, status, b"injected failure", head=head)
                return
        if handler.command == "POST":
            length = int(handler.headers.get("Content-Length") or 0)
            handler.rfile.read(length)
        api = re.fullmatch(
            r"/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree|refs|commits|paths-info)"
            r"(?:/([^/]+)(?:/(.*))?)?)?",
            path,
        )
        if api:
            self._api(handler, api.groups(), parse_qs(parts.query), head)
            return
        resolve = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve:
            kind = "datasets" if resolve.group(1) else "models"
            self._resolve(handler, kind, resolve.group(2), resolve.group(3), resolve.group(4),
                          head)  # fmt: skip
            return
        self._reply(handler, 404, b"not found", head=head)

    def _api(self, handler, groups, query, head) -> None:
        kind, repo_id, verb, revision, rest = groups
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            self._error(handler, "RepoNotFound", head)
            return
        if verb == "refs":
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha}
                for b, sha in repo.branches.items()
            ]
            self._json(handler, {"branches": branches, "tags": [], "converts": []}, head)
            return
        commit = repo.resolve(revision or "main")
        if commit is None:
            self._error(handler, "RevisionNotFound", head)
            return
        if verb in (None, "revision"):
            siblings = [self._sibling(name, data) for name, data in commit.files.items()]
            self._json(
                handler,
                {"id": repo_id, "_id": repo_id, "sha": commit.sha, "siblings": siblings,
                 "private": False, "gated": False, "disabled": False,
                 "lastModified": "2026-01-01T00:00:00.000Z", "tags": [], "downloads": 0,
                 "likes": 0},
                head,
            )  # fmt: skip
            return
        if verb == "tree":
            prefix = (rest or "").strip("/")
            prefix = f"{prefix}/" if prefix else ""
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries, folders = [], set()
            for name, data in sorted(commit.files.items()):
                if not name.startswith(prefix):
                    continue
                inside = name[len(prefix) :]
                if recursive or "/" not in inside:
                    entries.append(self._tree_entry(name, data))
                else:  # the hub lists a folder once, not its files, unless asked to recurse
                    folders.add(prefix + inside.split("/")[0])
            entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0}
                        for f in sorted(folders)]  # fmt: skip
            self._json(handler, entries, head)
            return
        if verb == "commits":
            self._json(
                handler,
                [
                    {
                        "id": commit.sha,
                        "title": "ckptlab test hub",
                        "date": "2026-01-01T00:00:00.000Z",
                        "authors": [],
                    }
                ],
                head,
            )
            return  # fmt: skip
        if verb == "paths-info":
            entries = [self._tree_entry(name, data) for name, data in commit.files.items()]
            self._json(handler, entries, head)
            return
        self._reply(handler, 404, b"not found", head=head)

    @staticmethod
    def _sibling(name: str, data: bytes | Pointer) -> dict:
        size = data.size if isinstance(data, Pointer) else len(data)
        entry = {"rfilename": name, "size": size}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"sha256": _sha256(data), "size": size, "pointerSize": 134}
        return entry

    @staticmethod
    def _tree_entry(name: str, data: bytes | Pointer) -> dict:
        size = data.size if isinstance(data, Pointer) else len(data)
        git_oid = hashlib.sha1(_sha256(data).encode() if isinstance(data, Pointer) else data)
        entry = {"type": "file", "path": name, "size": size, "oid": git_oid.hexdigest()}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": _sha256(data), "size": size, "pointerSize": 134}
        return entry

    def _resolve(self, handler, kind, repo_id, revision, filename, head) -> None:
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            self._error(handler, "RepoNotFound", head)
            return
        commit = repo.resolve(revision)
        if commit is None:
            self._error(handler, "RevisionNotFound", head)
            return
        data = commit.files.get(filename)
        if isinstance(data, Pointer):  # listed, never served: a download here is a test bug
            self._reply(handler, 501, b"a metadata-only file", head=head)
            return
        if data is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit.sha}
            self._reply(handler, 404, b"entry not found", headers, head)
            return
        headers = {"X-Repo-Commit": commit.sha, "Content-Length": len(data),
                   "Content-Type": "application/octet-stream"}  # fmt: skip
        if filename.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = len(data)
            headers["ETag"] = f'"{hashlib.sha256(data).hexdigest()}"'
        else:
            headers["ETag"] = f'"{hashlib.sha1(data).hexdigest()}"'
        self._reply(handler, 200, data, headers, head)
