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

The routes live in hub_read.py and hub_write.py, their dispatch in hub_routes.py, the request handler in
hub_handler.py, the repo data and small helpers in hub_store.py.

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
from pathlib import Path

from .http import LocalServer
from .hub_handler import _Handler
from .hub_read import ReadRoutes
from .hub_routes import DispatchRoutes
from .hub_store import _WRITE_ROLES, _HttpError, _Repo, git_blob_sha1
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


class HubServer(DispatchRoutes, ReadRoutes, WriteRoutes, LocalServer):
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
