"""A small Hugging Face Hub of our own, speaking the HTTP protocol the real ``huggingface_hub`` client uses.

Standard library only. It serves, on 127.0.0.1 and a port chosen by the OS, what ``huggingface_hub`` 2.x needs to
create model repos, upload (regular files inline in the commit, large/binary files through the git-LFS "basic"
transfer) and read back (repo info, tree, paths-info, resolve):

    GET  /api/whoami-v2
    POST /api/repos/create                       409 + {"error", "url"} when the repo exists
    DELETE /api/repos/delete
    GET  /api/models/{repo}[/revision/{rev}]     ?blobs=true adds size/blobId/lfs to the siblings
    POST /api/validate-yaml
    POST /api/models/{repo}/preupload/{rev}      per file: uploadMode (regular|lfs), shouldIgnore, oid
    POST /{repo}.git/info/lfs/objects/batch      basic transfer; no "actions" for objects the repo already has
    PUT  /lfs-upload/{repo}/{oid}                no auth (like a signed URL); sha256 of the body must equal oid
    POST /api/models/{repo}/commit/{rev}         ndjson: header, file (base64), lfsFile, deletedFile, deletedFolder
    GET  /api/models/{repo}/tree/{rev}[/{path}]  ?recursive=true&expand=true
    POST /api/models/{repo}/paths-info/{rev}
    GET  /api/models/{repo}/commits/{rev}, GET /api/models/{repo}/refs
    HEAD/GET /{repo}/resolve/{rev}/{path}        ETag, X-Repo-Commit, X-Linked-Etag/X-Linked-Size (LFS), Range

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) and ``X-Error-Message`` the way the
client's ``hf_raise_for_status`` expects them. Only model repos exist; dataset/space URLs get 400.

Repos live in memory; LFS objects are stored on disk under ``storage_dir/lfs`` (content-addressed by sha256). A new
repo has no commit (its ``main`` branch is empty) so that ``commits()`` lists only what clients committed.

The routes live in hub_read.py and hub_write.py, the repo data and small helpers in hub_store.py.

Faults (``add_fault``) are matched before normal handling, against the method and, with ``re.search``, the
percent-decoded request path without its query string.

Usage::

    with HubServer(tmp_path, tokens={"hf_w": {"user": "alice", "orgs": ["acme"], "role": "write"}}) as hub:
        api = HfApi(endpoint=hub.url, token="hf_w")   # plus HF_HUB_DISABLE_XET (see client_env)
"""

from __future__ import annotations

import copy
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote

from .http import CHUNK, LocalServer, RequestHandler
from .hub_read import ReadRoutes
from .hub_store import _J, _WRITE_ROLES, _HttpError, _json, _Repo, git_blob_sha1
from .hub_write import WriteRoutes

__all__ = ["HubServer", "client_env", "git_blob_sha1", "LFS_EXTENSIONS"]

# Default .gitattributes of a new Hub repo (the patterns stored through LFS), plus GGUF.
LFS_EXTENSIONS = (
    ".7z",
    ".arrow",
    ".bin",
    ".bz2",
    ".ckpt",
    ".ftz",
    ".gz",
    ".h5",
    ".joblib",
    ".mlmodel",
    ".model",
    ".msgpack",
    ".npy",
    ".npz",
    ".onnx",
    ".ot",
    ".parquet",
    ".pb",
    ".pickle",
    ".pkl",
    ".pt",
    ".pth",
    ".rar",
    ".safetensors",
    ".tar",
    ".tflite",
    ".tgz",
    ".wasm",
    ".xz",
    ".zip",
    ".zst",
    ".gguf",
)


def client_env(url: str, token: str | None = None) -> dict[str, str]:
    """Environment variables that point a ``huggingface_hub`` client process at the Hub at ``url``."""
    env = {
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    if token is not None:
        env["HF_TOKEN"] = token
    return env


class HubServer(ReadRoutes, WriteRoutes, LocalServer):
    """In-memory Hub on 127.0.0.1; see the module docstring for the surface it serves."""

    thread_name = "hub-server"

    def __init__(
        self,
        storage_dir: str | os.PathLike,
        tokens: dict[str, dict] | None = None,
        *,
        lfs_threshold: int = 1_000_000,
        lfs_extensions: tuple[str, ...] = LFS_EXTENSIONS,
        port: int = 0,
    ):
        """``tokens``: ``{token: {"user": str, "orgs": [str], "role": "read"|"write"|"admin"}}``.
        Files of ``lfs_threshold`` bytes or more, with an extension in ``lfs_extensions`` or with a NUL byte in
        their first 512 bytes are answered ``uploadMode: "lfs"`` by preupload; others (and empty files) ``regular``.
        """
        super().__init__(_Handler, port)
        self.storage_dir = Path(storage_dir)
        self.tokens = {
            k: {"user": v["user"], "orgs": list(v.get("orgs", [])), "role": v.get("role", "write")}
            for k, v in (tokens or {}).items()
        }
        self.lfs_threshold = lfs_threshold
        self.lfs_extensions = tuple(e.lower() for e in lfs_extensions)
        self._repos: dict[str, _Repo] = {}
        self._pending_sizes: dict[tuple[str, str], int] = {}
        self.reset_stats()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        (self.storage_dir / "lfs").mkdir(parents=True, exist_ok=True)
        (self.storage_dir / "tmp").mkdir(parents=True, exist_ok=True)
        return super().start()

    def client_env(self, token: str | None = None) -> dict[str, str]:
        """Environment variables that point a ``huggingface_hub`` client process at this server."""
        return client_env(self.url, token)

    # ------------------------------------------------------------------ faults
    def add_fault(
        self,
        method: str | None = None,
        path: str = ".*",
        status: int = 500,
        times: int | None = 1,
        body: object = None,
        headers: dict | None = None,
        action: str = "respond",
        drop_after: int | None = None,
        delay: float = 0.0,
    ) -> dict:
        """Inject a fault for requests matching ``method`` (None: any) and ``path`` (regex, ``re.search`` on the
        decoded path). ``times``: how many requests it hits (None: forever). ``action``:

        - ``"respond"``: answer ``status`` with ``body`` (dict -> JSON, str/bytes as is; None -> {"error": ...})
          and ``headers``, after reading the whole request body;
        - ``"drop"``: read ``drop_after`` bytes of the body (default: half of it, at most 256 KiB), then reset the
          TCP connection without answering;
        - ``"delay"``: sleep ``delay`` seconds, then handle the request normally.

        Returns the fault record; its ``"hits"`` counts the requests it caught."""
        return self._add_fault(
            method,
            path,
            times,
            action,
            ("respond", "drop", "delay"),
            status=status,
            body=body,
            headers=dict(headers or {}),
            drop_after=drop_after,
            delay=delay,
        )

    # ------------------------------------------------------------------ inspection
    @property
    def stats(self) -> dict:
        """Snapshot: bytes_received (all request bodies), lfs_bytes (bytes of LFS objects stored by PUTs),
        commit_bytes (commit request bodies), requests (method, path, query, headers, status, bytes, time: when it
        was answered, time.monotonic(); status None for a dropped connection), commits ({repo_id: commits created})."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {"bytes_received": 0, "lfs_bytes": 0, "commit_bytes": 0, "requests": [], "commits": {}}

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            repo = self._repos[repo_id]
            commit = self._resolve_revision(repo, revision)
            entries = dict(commit["files"]) if commit else {}
        return {path: self._read_entry(e) for path, e in sorted(entries.items())}

    def commits(self, repo_id: str) -> list[dict]:
        """Every commit of the repo (all branches and PRs), oldest first."""
        with self._lock:
            repo = self._repos[repo_id]
            return [
                {
                    k: copy.deepcopy(c[k])
                    for k in ("oid", "parent", "summary", "description", "files_changed", "author", "date", "branch")
                }
                for c in (repo.commits[o] for o in repo.order)
            ]

    def repo(self, repo_id: str) -> dict:
        with self._lock:
            repo = self._repos[repo_id]
            return {
                "id": repo.id,
                "type": "model",
                "private": repo.private,
                "created_at": repo.created_at,
                "refs": dict(repo.refs),
                "sha": repo.refs["main"],
                "lfs_objects": sorted(repo.lfs_oids),
            }

    def repos(self) -> list[str]:
        with self._lock:
            return sorted(self._repos)

    def lfs_path(self, oid: str) -> Path:
        return self.storage_dir / "lfs" / oid[:2] / oid

    # ------------------------------------------------------------------ helpers (call with the lock held)
    def _read_entry(self, entry: dict) -> bytes:
        return self.lfs_path(entry["sha256"]).read_bytes() if entry["lfs"] else entry["content"]

    def _auth(self, handler: _Handler) -> dict | None:
        header = handler.headers.get("Authorization")
        if not header:
            return None
        token = header[7:].strip() if header.lower().startswith("bearer ") else header.strip()
        info = self.tokens.get(token)
        if info is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return info

    @staticmethod
    def _can_read(info: dict | None, repo: _Repo) -> bool:
        return not repo.private or (
            info is not None and (repo.namespace == info["user"] or repo.namespace in info["orgs"])
        )

    @staticmethod
    def _can_write(info: dict | None, namespace: str) -> bool:
        return (
            info is not None
            and info["role"] in _WRITE_ROLES
            and (namespace == info["user"] or namespace in info["orgs"])
        )

    def _get_repo(self, repo_id: str, info: dict | None) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None or not self._can_read(info, repo):
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, repo_id: str, info: dict | None) -> _Repo:
        if info is None:
            raise _HttpError(401, "You must be authenticated to write to a repository")
        repo = self._get_repo(repo_id, info)
        if not self._can_write(info, repo.namespace):
            raise _HttpError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def _resolve_revision(repo: _Repo, revision: str) -> dict | None:
        """Commit a revision points at: None for a branch without commits; 404 RevisionNotFound if unknown."""
        if revision in repo.refs:
            head = repo.refs[revision]
            return repo.commits[head] if head else None
        if revision.startswith("refs/heads/") and revision[11:] in repo.refs:
            head = repo.refs[revision[11:]]
            return repo.commits[head] if head else None
        m = re.fullmatch(r"refs/pr/(\d+)", revision)
        if m and int(m.group(1)) in repo.prs:
            return repo.commits[repo.prs[int(m.group(1))]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [o for o in repo.commits if o.startswith(revision)]
            if len(found) == 1:
                return repo.commits[found[0]]
        raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        if size == 0:
            return False
        return size >= self.lfs_threshold or path.lower().endswith(self.lfs_extensions) or b"\0" in sample

    def _record(self, entry: dict) -> None:
        with self._lock:
            self._stats["requests"].append(entry)
            self._stats["bytes_received"] += entry["bytes"]

    # ------------------------------------------------------------------ routes
    def route(self, h: _Handler, method: str, segs: list[str], query: dict[str, list[str]]) -> None:
        dec = [unquote(s) for s in segs]
        if method == "PUT" and len(segs) == 4 and segs[0] == "lfs-upload":
            return h.send(self._lfs_put(h, f"{dec[1]}/{dec[2]}", dec[3]))
        body = h.read_body()
        with self._lock:  # the state is read and changed under the lock; the answer is sent after it
            response = self._route_locked(h, method, dec, segs, query, body)
        h.send(response)

    def _route_locked(self, h, method, dec, segs, query, body) -> tuple:
        info = self._auth(h)
        if dec[:1] == ["api"]:
            return self._api(h, method, dec[1:], segs[1:], query, body, info)
        if len(dec) >= 2 and dec[0] in ("datasets", "spaces", "buckets", "kernels"):
            raise _HttpError(400, "Only model repositories are supported by this test Hub")
        if len(dec) == 6 and dec[1].endswith(".git") and dec[2:] == ["info", "lfs", "objects", "batch"]:
            if method != "POST":
                raise _HttpError(405, "Method not allowed")
            return self._lfs_batch(h, f"{dec[0]}/{dec[1][:-4]}", body, info)
        if len(segs) >= 5 and dec[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self._get_repo(f"{dec[0]}/{dec[1]}", info)
            return self._resolve(h, method, repo, dec[3], unquote("/".join(segs[4:])))
        raise _HttpError(404, f"Not found: {h.path}")

    def _api(self, h, method, dec, raw, query, body, info) -> tuple:
        account = self._api_account(h, method, dec, body, info)
        if account is not None:
            return account
        if dec[:1] in (["datasets"], ["spaces"], ["kernels"]):
            raise _HttpError(400, "Only model repositories are supported by this test Hub")
        if dec[:1] != ["models"] or len(dec) < 3:
            raise _HttpError(404, f"Not found: {h.path}")
        return self._api_model(h, method, f"{dec[1]}/{dec[2]}", dec[3:], raw[3:], query, body, info)

    def _api_account(self, h, method, dec, body, info) -> tuple | None:
        """The routes about the caller and their repos (whoami, YAML check, create, delete); None for others."""
        if (method, dec) == ("GET", ["whoami-v2"]):
            if info is None:
                raise _HttpError(401, "Invalid credentials in Authorization header")
            return _J(200, self._whoami(info))
        if (method, dec) == ("GET", ["agent-harnesses"]):
            return _J(200, {"standardEnvVars": [], "harnesses": {}})
        if (method, dec) == ("POST", ["validate-yaml"]):
            return _J(200, self._validate_yaml(body))
        if (method, dec) == ("POST", ["repos", "create"]):
            return self._create_repo(h, _json(body), info)
        if (method, dec) == ("DELETE", ["repos", "delete"]):
            return self._delete_repo(h, _json(body), info)
        return None

    def _api_model(self, h, method, repo_id, rest, raw_rest, query, body, info) -> tuple:
        """The routes under /api/models/{repo}."""
        if not rest and method == "GET":
            return self._model_info(h, self._get_repo(repo_id, info), "main", query)
        if rest == ["refs"] and method == "GET":
            return self._refs(h, self._get_repo(repo_id, info), query)
        if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
            path = unquote("/".join(raw_rest[2:])).strip("/")
            return self._tree(h, self._get_repo(repo_id, info), rest[1], path, query)
        if rest and rest[0].startswith("xet-"):
            raise _HttpError(501, "This test Hub does not serve Xet storage: set HF_HUB_DISABLE_XET=1 in the client")
        if len(rest) == 2:
            return self._api_model_revision(h, method, repo_id, rest[0], rest[1], query, body, info)
        raise _HttpError(404, f"Not found: {h.path}")

    def _api_model_revision(self, h, method, repo_id, what, revision, query, body, info) -> tuple:
        """The routes under /api/models/{repo}/{what}/{revision}."""
        if (method, what) == ("GET", "revision"):
            return self._model_info(h, self._get_repo(repo_id, info), revision, query)
        if (method, what) == ("POST", "preupload"):
            return self._preupload(h, self._writable_repo(repo_id, info), revision, _json(body))
        if (method, what) == ("POST", "commit"):
            with self._lock:
                self._stats["commit_bytes"] += len(body)
            return self._commit(h, self._writable_repo(repo_id, info), revision, body, query, info)
        if (method, what) == ("POST", "paths-info"):
            return self._paths_info(h, self._get_repo(repo_id, info), revision, body, h.headers)
        if (method, what) == ("GET", "commits"):
            return self._list_commits(h, self._get_repo(repo_id, info), revision)
        raise _HttpError(404, f"Not found: {h.path}")


class _Handler(RequestHandler):
    server_version = "TestHub/1.0"
    label = "hub"

    def route(self) -> None:
        segs = [s for s in self.url_parts.path.split("/") if s != ""]
        self.owner.route(self, self.command, segs, parse_qs(self.url_parts.query, keep_blank_values=True))

    def apply_fault(self, fault: dict) -> bool:
        if fault["action"] == "delay":
            time.sleep(fault["delay"])
            return False
        if fault["action"] == "drop":
            n = fault["drop_after"]
            if n is None:
                length = self.content_length()
                n = min((length if length is not None else 2 * 65536) // 2, 256 * 1024)
            self.drop(after=n)
        self.read_body()
        body = fault["body"]
        if body is None:
            body = {"error": f"Injected fault: HTTP {fault['status']}"}
        if isinstance(body, (dict, list)):
            self.send_json(fault["status"], body, headers=fault["headers"])
        else:
            data = body.encode() if isinstance(body, str) else bytes(body)
            self.send_bytes(fault["status"], data, {"Content-Type": "text/plain", **fault["headers"]})
        return True

    def answer_error(self, e: _HttpError) -> None:
        headers = dict(e.headers)
        if e.code:
            headers["X-Error-Code"] = e.code
        headers["X-Error-Message"] = e.message
        self.send_json(e.status, {"error": e.message, **e.extra}, headers=headers)

    def record(self, status: int | None) -> None:
        self.owner._record(
            {
                "method": self.command,
                "path": self.req_path,
                "query": self.url_parts.query,
                "headers": {k: v for k, v in self.headers.items()},
                "status": status,
                "bytes": self._body_bytes,
                "time": time.monotonic(),
            }
        )

    # --------------------------------------------------------------- responses
    def send(self, response: tuple) -> None:
        kind, rest = response[0], response[1:]
        if kind == "json":
            status, obj, headers, content_type = rest
            self.send_json(status, obj, headers, content_type)
        elif kind == "bytes":
            self.send_bytes(*rest)
        else:
            self.send_content(*rest, head_only=self.command == "HEAD")

    def send_content(self, status: int, headers: dict, source, start: int, length: int, head_only: bool) -> None:
        self.begin_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head_only or length == 0:
            return
        if isinstance(source, bytes):
            self.wfile.write(source[start : start + length])
            return
        with open(source, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
