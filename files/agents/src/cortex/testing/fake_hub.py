"""A local stand-in for the Hugging Face hub, for tests that cannot reach huggingface.co.

It speaks the hub's HTTP protocol for the calls a neuron makes, so the unmodified
``huggingface_hub`` client works against it (``endpoint=hub.url``):

- ``GET /api/models/{repo}[/revision/{rev}]``    model_info / repo_info (``blobs=true``: sizes)
- ``GET /api/models/{repo}/tree/{rev}[/{dir}]``  list_repo_tree / list_repo_files
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``      hf_hub_download
- ``GET /api/agent-harnesses``                   fetched once per process by the client (for its
  user-agent) from the import-time endpoint; answered so a subprocess with HF_ENDPOINT set
  stays on 127.0.0.1

Small text files are plain git blobs: 200 with their git sha1 as ETag. LFS files (weights, or
anything of 10 MiB or more) are answered as the real hub does: a 302 to a second, "CDN" origin
carrying X-Linked-Etag (the sha256), X-Linked-Size and X-Repo-Commit. Because that origin
differs, the client takes the metadata from the 302 itself and drops the token before fetching
the body, exactly as with the real CDN. Errors carry X-Error-Code / X-Error-Message, which is
what the client maps to RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError and
RemoteEntryNotFoundError. Each repo has a single commit, reachable as ``main`` or by its sha.
"""

import hashlib
import io
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache, partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

Source = bytes | Path

# What the hub's default .gitattributes sends through LFS, plus GGUF weights.
LFS_SUFFIXES = frozenset({
    ".gguf", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack",
    ".npy", ".npz", ".pkl", ".pickle", ".model", ".tflite", ".parquet", ".zip", ".tar", ".gz",
})
# The hub refuses plain-git files above 10 MB, so anything that big is LFS whatever its name.
LFS_MIN_SIZE = 10 * 1024 * 1024

_CHUNK = 1024 * 1024
_DATE = "2024-01-01T00:00:00.000Z"
_NO_AGENTS = {"standardEnvVars": [], "harnesses": {}}

# Repo ids are "org/name" (or a legacy bare "name"); revisions arrive percent-encoded as one
# segment; file names keep their slashes. Groups are unquoted after matching.
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_TREE_RE = re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<dir>.+))?")
_INFO_RE = re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?")
_RESOLVE_RE = re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_CDN_RE = re.compile(r"/lfs/(?P<sha256>[0-9a-f]{64})")
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class RecordedRequest:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # percent-decoded, without the query
    query: str
    authorization: str | None  # the Authorization header as received


@dataclass(frozen=True)
class _File:
    source: Source
    size: int
    oid: str  # git blob sha1 (of the LFS pointer for LFS files), as the tree API reports it
    sha256: str | None  # LFS files only
    pointer_size: int | None

    @property
    def etag(self) -> str:
        """What the client names the cached blob after: sha256 for LFS, git sha1 otherwise."""
        return self.sha256 or self.oid


@dataclass(frozen=True)
class _Repo:
    files: dict[str, _File]
    commit: str


def _open(source: Source) -> BinaryIO:
    return source.open("rb") if isinstance(source, Path) else io.BytesIO(source)


def _digest(source: Source, algorithm: str, prefix: bytes = b"") -> str:
    digest = hashlib.new(algorithm, prefix)
    with _open(source) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=64)
def _path_sha256(path: Path, size: int, mtime_ns: int) -> str:
    # Shared by all FakeHub instances (keyed on size and mtime, so an edited file is re-hashed):
    # re-hashing a ~100 MB model for every test would dominate the run.
    return _digest(path, "sha256")


def _describe(name: str, source: Source) -> _File:
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    if Path(name).suffix.lower() not in LFS_SUFFIXES and size < LFS_MIN_SIZE:
        return _File(source, size, _digest(source, "sha1", b"blob %d\0" % size), None, None)
    if isinstance(source, Path):
        sha256 = _path_sha256(source, size, source.stat().st_mtime_ns)
    else:
        sha256 = hashlib.sha256(source).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    pointer_oid = _digest(pointer.encode(), "sha1", b"blob %d\0" % len(pointer))
    return _File(source, size, pointer_oid, sha256, len(pointer))


class _Server(ThreadingHTTPServer):
    # One connection per request and parallel downloads (snapshot_download uses 8 workers):
    # a deeper accept queue than the default 5 avoids dropped SYNs and 1 s client retries.
    request_queue_size = 64


class FakeHub:
    """A hub on 127.0.0.1 serving `repos` ({repo_id: {filename: bytes | Path}}).

    Path files are streamed from disk on each request, never held in memory. `gated` repos
    list their files to anyone but serve them only with `token`; `private` repos are invisible
    without it. `requests` records every request to either origin; `downloads` counts file
    bodies sent per (repo_id, filename), ranged resumptions included.
    """

    def __init__(
        self,
        repos: Mapping[str, Mapping[str, Source]] | None = None,
        gated: Iterable[str] = (),
        token: str | None = None,
        private: Iterable[str] = (),
        rate: float | None = None,
    ) -> None:
        self.token = token
        # Bytes a second for file bodies (None: as fast as loopback goes), for tests that
        # watch a download's progress.
        self.rate = rate
        self.gated: set[str] = set(gated)
        self.private: set[str] = set(private)
        self.requests: list[RecordedRequest] = []
        self.downloads: Counter[tuple[str, str]] = Counter()
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        for repo_id, files in (repos or {}).items():
            self.add_repo(repo_id, files)

    def add_repo(
        self, repo_id: str, files: Mapping[str, Source], *, gated: bool = False,
        private: bool = False,
    ) -> None:
        """Create or replace a repo; its commit sha follows from its content."""
        described = {name: _describe(name, source) for name, source in files.items()}
        listing = "\n".join(f"{name} {f.etag}" for name, f in sorted(described.items()))
        commit = hashlib.sha1(f"{repo_id}\n{listing}".encode(), usedforsecurity=False).hexdigest()
        with self._lock:
            self._repos[repo_id] = _Repo(described, commit)
            if gated:
                self.gated.add(repo_id)
            if private:
                self.private.add(repo_id)

    def commit(self, repo_id: str) -> str:
        return self._repos[repo_id].commit

    def etag(self, repo_id: str, filename: str) -> str:
        """The blob name the client caches this file under."""
        return self._repos[repo_id].files[filename].etag

    @property
    def url(self) -> str:
        return self._origin("hub")

    @property
    def cdn_url(self) -> str:
        return self._origin("cdn")

    def _origin(self, role: str) -> str:
        if role not in self._servers:
            raise RuntimeError("FakeHub is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._servers[role].server_address[1]}"

    def start(self) -> "FakeHub":
        if self._servers:
            return self
        for role in ("hub", "cdn"):
            server = _Server(("127.0.0.1", 0), partial(_Handler, self, role))
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True,
                                      name=f"fake-hub-{role}")
            thread.start()
            self._servers[role] = server
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _count_download(self, repo_id: str, filename: str) -> None:
        with self._lock:
            self.downloads[(repo_id, filename)] += 1


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection. A pooled keep-alive connection would outlive
    # stop() and could serve a later FakeHub's requests from this one if its port were reused.
    protocol_version = "HTTP/1.0"

    def __init__(self, hub: FakeHub, role: str, *args: Any) -> None:
        self.hub, self.role = hub, role
        super().__init__(*args)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; `hub.requests` is the log

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.hub._record(RecordedRequest(self.role, self.command, unquote(url.path), url.query,
                                         self.headers.get("Authorization")))
        query = parse_qs(url.query)
        try:
            if self.role == "cdn":
                self._cdn(url.path, query)
            elif url.path == "/api/agent-harnesses":
                self._json(_NO_AGENTS)
            elif m := _TREE_RE.fullmatch(url.path):
                self._tree(unquote(m["repo"]), unquote(m["rev"]), unquote(m["dir"] or ""), query)
            elif m := _INFO_RE.fullmatch(url.path):
                self._model_info(unquote(m["repo"]), unquote(m["rev"] or "main"), query)
            elif m := _RESOLVE_RE.fullmatch(url.path):
                self._resolve(unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]))
            else:
                self._error(404, None, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up mid-body (an aborted download); nobody left to answer

    # --- hub API ---------------------------------------------------------------------------

    def _repo(self, repo_id: str, rev: str, *, download: bool = False) -> _Repo | None:
        """The repo if this request may see it at `rev`; else send the hub's error, return None."""
        hub, auth = self.hub, self.headers.get("Authorization")
        if hub.token and auth and auth != f"Bearer {hub.token}":
            # The client singles out this exact message: a bad token, not a missing repo.
            return self._error(401, None, "Invalid credentials in Authorization header")
        authorized = bool(hub.token) and auth == f"Bearer {hub.token}"
        repo = hub._repos.get(repo_id)
        if repo is None or (repo_id in hub.private and not authorized):
            # Like the hub: anonymous callers get 401, so private repos don't reveal they exist.
            if authorized:
                return self._error(404, "RepoNotFound", "Repository not found")
            return self._error(401, "RepoNotFound", "Invalid username or password.")
        if rev not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if download and repo_id in hub.gated and not authorized:
            return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You "
                               "must have access to it and be authenticated to access it. "
                               "Please log in.")
        return repo

    def _model_info(self, repo_id: str, rev: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        blobs = query.get("blobs", [""])[0].lower() == "true"
        siblings = []
        for name, f in sorted(repo.files.items()):
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:  # files_metadata=True
                sibling |= {"size": f.size, "blobId": f.oid}
                if f.sha256:
                    sibling["lfs"] = {"size": f.size, "sha256": f.sha256,
                                      "pointerSize": f.pointer_size}
            siblings.append(sibling)
        self._json({
            "_id": repo.commit[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": repo.commit, "lastModified": _DATE, "createdAt": _DATE,
            "private": repo_id in self.hub.private,
            "gated": "auto" if repo_id in self.hub.gated else False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings, "usedStorage": sum(f.size for f in repo.files.values()),
        })

    def _tree(self, repo_id: str, rev: str, folder: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        recursive = query.get("recursive", [""])[0].lower() == "true"
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        names = [name for name in sorted(repo.files) if name.startswith(prefix)]
        if prefix and not names:
            return self._error(404, "EntryNotFound", f"{folder} does not exist on \"{rev}\"",
                               commit=repo.commit)
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for name in names:
            parts = name[len(prefix):].split("/")
            if recursive or len(parts) == 1:
                f = repo.files[name]
                entry: dict[str, Any] = {"type": "file", "oid": f.oid, "size": f.size,
                                         "path": name}
                if f.sha256:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size,
                                    "pointerSize": f.pointer_size}
                entries.append(entry)
            deepest = len(parts) - 1 if recursive else min(1, len(parts) - 1)
            folders.update(prefix + "/".join(parts[:i]) for i in range(1, deepest + 1))
        entries += [{"type": "directory", "size": 0, "path": path,
                     "oid": hashlib.sha1(f"{repo.commit}:{path}".encode(),
                                            usedforsecurity=False).hexdigest()}
                    for path in sorted(folders)]
        # Fewer than the hub's page size, so no `Link: <...>; rel="next"` header is needed.
        self._json(entries)

    def _resolve(self, repo_id: str, rev: str, filename: str) -> None:
        repo = self._repo(repo_id, rev, download=True)
        if repo is None:
            return
        f = repo.files.get(filename)
        if f is None:
            # X-Repo-Commit lets the client cache the miss under `.no_exist/<commit>/`.
            return self._error(404, "EntryNotFound", f"{filename} does not exist on \"{rev}\"",
                               commit=repo.commit)
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{f.etag}"'}
        if f.sha256 is None:
            return self._send_file(repo_id, filename, f, headers)
        query = urlencode({"repo": repo_id, "file": filename})
        self._send(302, b"", {**headers, "X-Linked-Etag": f'"{f.sha256}"',
                              "X-Linked-Size": str(f.size),
                              "Location": f"{self.hub.cdn_url}/lfs/{f.sha256}?{query}"})

    # --- "CDN": serves LFS bodies by sha256, no auth (on the hub the URL would be signed) ---

    def _cdn(self, path: str, query: dict[str, list[str]]) -> None:
        m = _CDN_RE.fullmatch(path)
        repo_id, filename = query.get("repo", [""])[0], query.get("file", [""])[0]
        repo = self.hub._repos.get(repo_id)
        f = repo.files.get(filename) if repo else None
        if m is None or f is None or f.sha256 != m["sha256"]:
            return self._error(404, None, "Not Found")
        disposition = f'attachment; filename="{quote(Path(filename).name)}";'
        self._send_file(repo_id, filename, f,
                        {"ETag": f'"{f.sha256}"', "Content-Disposition": disposition})

    # --- responses ---------------------------------------------------------------------------

    def _send_file(self, repo_id: str, filename: str, f: _File, headers: dict[str, str]) -> None:
        """Send the file (or the single `Range` the client asks for when resuming)."""
        status, start, end = 200, 0, f.size - 1
        if requested := self.headers.get("Range"):
            m = _RANGE_RE.fullmatch(requested.strip())
            start = int(m[1]) if m else f.size
            end = min(int(m[2]), end) if m and m[2] else end
            if start > end:
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{f.size}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{f.size}"}
        length = end - start + 1
        self._start(status, {**headers, "Content-Type": "application/octet-stream",
                             "Accept-Ranges": "bytes", "Content-Length": str(length)})
        if self.command != "GET":
            return
        self.hub._count_download(repo_id, filename)
        piece = _CHUNK if not self.hub.rate else max(1024, int(self.hub.rate / 20))
        with _open(f.source) as body:
            body.seek(start)
            while length > 0 and (chunk := body.read(min(piece, length))):
                self.wfile.write(chunk)
                length -= len(chunk)
                if self.hub.rate:  # pace the body: a slow link, not a synchronisation
                    self.wfile.flush()
                    time.sleep(len(chunk) / self.hub.rate)

    def _json(self, payload: object) -> None:
        self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str | None, message: str, commit: str | None = None,
               ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self._start(status, {**headers, "Content-Length": str(len(body))})
        if self.command != "HEAD":
            self.wfile.write(body)

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
