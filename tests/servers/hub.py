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

Faults (``add_fault``) are matched before normal handling, against the method and, with ``re.search``, the
percent-decoded request path without its query string.

Usage::

    with HubServer(tmp_path, tokens={"hf_w": {"user": "alice", "orgs": ["acme"], "role": "write"}}) as hub:
        api = HfApi(endpoint=hub.url, token="hf_w")   # plus HF_HUB_DISABLE_XET (see client_env)
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote

from .http import CHUNK, HttpError, LocalServer, RequestHandler

__all__ = ["HubServer", "git_blob_sha1", "LFS_EXTENSIONS"]

# Default .gitattributes of a new Hub repo (the patterns stored through LFS), plus GGUF.
LFS_EXTENSIONS = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model", ".msgpack",
    ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar", ".safetensors",
    ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst", ".gguf",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_WRITE_ROLES = ("write", "admin")


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as ``oid`` of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _HttpError(HttpError):
    """An error answer with the Hub's ``X-Error-Code`` (``code``), more ``headers`` and ``extra`` JSON fields."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(status, message)
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}


class _Repo:
    def __init__(self, repo_id: str, private: bool):
        self.id = repo_id
        self.namespace = repo_id.split("/")[0]
        self.private = private
        self.created_at = _now()
        self.refs: dict[str, str | None] = {"main": None}   # branch -> head commit oid (None: no commit yet)
        self.prs: dict[int, str] = {}                         # PR number -> head commit oid
        self.commits: dict[str, dict] = {}                    # oid -> commit
        self.order: list[str] = []                            # commit oids in creation order
        self.lfs_oids: set[str] = set()                       # LFS objects uploaded to this repo


class HubServer(LocalServer):
    """In-memory Hub on 127.0.0.1; see the module docstring for the surface it serves."""

    thread_name = "hub-server"

    def __init__(self, storage_dir: str | os.PathLike, tokens: dict[str, dict] | None = None, *,
                 lfs_threshold: int = 1_000_000, lfs_extensions: tuple[str, ...] = LFS_EXTENSIONS,
                 port: int = 0):
        """``tokens``: ``{token: {"user": str, "orgs": [str], "role": "read"|"write"|"admin"}}``.
        Files of ``lfs_threshold`` bytes or more, with an extension in ``lfs_extensions`` or with a NUL byte in
        their first 512 bytes are answered ``uploadMode: "lfs"`` by preupload; others (and empty files) ``regular``.
        """
        super().__init__(_Handler, port)
        self.storage_dir = Path(storage_dir)
        self.tokens = {k: {"user": v["user"], "orgs": list(v.get("orgs", [])), "role": v.get("role", "write")}
                       for k, v in (tokens or {}).items()}
        self.lfs_threshold = lfs_threshold
        self.lfs_extensions = tuple(e.lower() for e in lfs_extensions)
        self._repos: dict[str, _Repo] = {}
        self._pending_sizes: dict[tuple[str, str], int] = {}
        self.reset_stats()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "HubServer":
        (self.storage_dir / "lfs").mkdir(parents=True, exist_ok=True)
        (self.storage_dir / "tmp").mkdir(parents=True, exist_ok=True)
        return super().start()

    def client_env(self, token: str | None = None) -> dict[str, str]:
        """Environment variables that point a ``huggingface_hub`` client process at this server."""
        env = {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    # ------------------------------------------------------------------ faults
    def add_fault(self, method: str | None = None, path: str = ".*", status: int = 500, times: int | None = 1,
                  body: object = None, headers: dict | None = None, action: str = "respond",
                  drop_after: int | None = None, delay: float = 0.0) -> dict:
        """Inject a fault for requests matching ``method`` (None: any) and ``path`` (regex, ``re.search`` on the
        decoded path). ``times``: how many requests it hits (None: forever). ``action``:

        - ``"respond"``: answer ``status`` with ``body`` (dict -> JSON, str/bytes as is; None -> {"error": ...})
          and ``headers``, after reading the whole request body;
        - ``"drop"``: read ``drop_after`` bytes of the body (default: half of it, at most 256 KiB), then reset the
          TCP connection without answering;
        - ``"delay"``: sleep ``delay`` seconds, then handle the request normally.

        Returns the fault record; its ``"hits"`` counts the requests it caught."""
        return self._add_fault(method, path, times, action, ("respond", "drop", "delay"), status=status, body=body,
                               headers=dict(headers or {}), drop_after=drop_after, delay=delay)

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
            return [{k: copy.deepcopy(c[k]) for k in ("oid", "parent", "summary", "description", "files_changed",
                                                       "author", "date", "branch")}
                    for c in (repo.commits[o] for o in repo.order)]

    def repo(self, repo_id: str) -> dict:
        with self._lock:
            repo = self._repos[repo_id]
            return {"id": repo.id, "type": "model", "private": repo.private, "created_at": repo.created_at,
                    "refs": dict(repo.refs), "sha": repo.refs["main"], "lfs_objects": sorted(repo.lfs_oids)}

    def repos(self) -> list[str]:
        with self._lock:
            return sorted(self._repos)

    def lfs_path(self, oid: str) -> Path:
        return self.storage_dir / "lfs" / oid[:2] / oid

    # ------------------------------------------------------------------ helpers (call with the lock held)
    def _read_entry(self, entry: dict) -> bytes:
        return self.lfs_path(entry["sha256"]).read_bytes() if entry["lfs"] else entry["content"]

    def _auth(self, handler: "_Handler") -> dict | None:
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
        return not repo.private or (info is not None and (repo.namespace == info["user"]
                                                          or repo.namespace in info["orgs"]))

    @staticmethod
    def _can_write(info: dict | None, namespace: str) -> bool:
        return (info is not None and info["role"] in _WRITE_ROLES
                and (namespace == info["user"] or namespace in info["orgs"]))

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
        return (size >= self.lfs_threshold or path.lower().endswith(self.lfs_extensions) or b"\0" in sample)

    def _file_json(self, repo: _Repo, path: str, entry: dict, expand: bool) -> dict:
        out = {"type": "file", "oid": entry["blob_id"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": entry["pointer_size"]}
        if expand:
            last = repo.commits[entry["last_commit"]]
            out["lastCommit"] = {"id": last["oid"], "title": last["summary"], "date": last["date"]}
        return out

    def _folder_json(self, repo: _Repo, path: str, files: dict, expand: bool) -> dict:
        prefix = path + "/"
        below = sorted((p, e) for p, e in files.items() if p.startswith(prefix))
        tree_id = hashlib.sha1("\n".join(f"{p} {e['blob_id']}" for p, e in below).encode()).hexdigest()
        out = {"type": "directory", "oid": tree_id, "size": 0, "path": path}
        if expand and below:
            last = max((repo.commits[e["last_commit"]] for _, e in below), key=lambda c: repo.order.index(c["oid"]))
            out["lastCommit"] = {"id": last["oid"], "title": last["summary"], "date": last["date"]}
        return out

    def _record(self, entry: dict) -> None:
        with self._lock:
            self._stats["requests"].append(entry)
            self._stats["bytes_received"] += entry["bytes"]

    # ------------------------------------------------------------------ routes
    def route(self, h: "_Handler", method: str, segs: list[str], query: dict[str, list[str]]) -> None:
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

    def _api(self, h, method, dec, raw, query, body, info) -> None:
        if dec == ["whoami-v2"] and method == "GET":
            if info is None:
                raise _HttpError(401, "Invalid credentials in Authorization header")
            return _J(200, self._whoami(info))
        if dec == ["agent-harnesses"] and method == "GET":
            return _J(200, {"standardEnvVars": [], "harnesses": {}})
        if dec == ["validate-yaml"] and method == "POST":
            return _J(200, self._validate_yaml(body))
        if dec == ["repos", "create"] and method == "POST":
            return self._create_repo(h, _json(body), info)
        if dec == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(h, _json(body), info)
        if dec[:1] in (["datasets"], ["spaces"], ["kernels"]):
            raise _HttpError(400, "Only model repositories are supported by this test Hub")
        if dec[:1] != ["models"] or len(dec) < 3:
            raise _HttpError(404, f"Not found: {h.path}")
        repo_id, rest, raw_rest = f"{dec[1]}/{dec[2]}", dec[3:], raw[3:]
        if not rest and method == "GET":
            return self._model_info(h, self._get_repo(repo_id, info), "main", query)
        if len(rest) == 2 and rest[0] == "revision" and method == "GET":
            return self._model_info(h, self._get_repo(repo_id, info), rest[1], query)
        if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
            return self._preupload(h, self._writable_repo(repo_id, info), rest[1], _json(body))
        if len(rest) == 2 and rest[0] == "commit" and method == "POST":
            with self._lock:
                self._stats["commit_bytes"] += len(body)
            return self._commit(h, self._writable_repo(repo_id, info), rest[1], body, query, info)
        if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
            path = unquote("/".join(raw_rest[2:])).strip("/")
            return self._tree(h, self._get_repo(repo_id, info), rest[1], path, query)
        if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
            return self._paths_info(h, self._get_repo(repo_id, info), rest[1], body, h.headers)
        if len(rest) == 2 and rest[0] == "commits" and method == "GET":
            return self._list_commits(h, self._get_repo(repo_id, info), rest[1])
        if rest == ["refs"] and method == "GET":
            return self._refs(h, self._get_repo(repo_id, info), query)
        if rest and rest[0].startswith("xet-"):
            raise _HttpError(501, "This test Hub does not serve Xet storage: set HF_HUB_DISABLE_XET=1 in the client")
        raise _HttpError(404, f"Not found: {h.path}")

    def _whoami(self, info: dict) -> dict:
        return {"type": "user", "id": hashlib.sha1(info["user"].encode()).hexdigest()[:24], "name": info["user"],
                "fullname": info["user"], "email": f"{info['user']}@example.invalid", "emailVerified": True,
                "isPro": False, "canPay": False, "periodEnd": None,
                "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": info["role"]} for o in info["orgs"]],
                "auth": {"type": "access_token",
                         "accessToken": {"displayName": "test-token", "role": info["role"]}}}

    @staticmethod
    def _validate_yaml(body: bytes) -> dict:
        content = _json(body).get("content", "")
        lines = content.splitlines()
        if lines and lines[0].strip() == "---" and not any(line.strip() == "---" for line in lines[1:]):
            raise _HttpError(400, "Invalid YAML metadata",
                             extra={"errors": [{"message": "YAML front matter is not closed by '---'"}]})
        return {"errors": [], "warnings": []}

    def _create_repo(self, h, payload: dict, info) -> None:
        if info is None:
            raise _HttpError(401, "You must be authenticated to create a repository")
        repo_type = payload.get("type") or "model"
        if repo_type != "model":
            raise _HttpError(400, "Only model repositories are supported by this test Hub")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or info["user"]
        if not _NAME_RE.match(name) or not _NAME_RE.match(namespace) or name.endswith(".git"):
            raise _HttpError(400, f"Invalid repo name {namespace}/{name}")
        if not self._can_write(info, namespace):
            raise _HttpError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        repo_id = f"{namespace}/{name}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self._repos:
            raise _HttpError(409, "You already created this model repo", extra={"url": url})
        visibility = payload.get("visibility")
        private = visibility == "private" if visibility is not None else bool(payload.get("private", False))
        self._repos[repo_id] = _Repo(repo_id, private)
        return _J(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, h, payload: dict, info) -> None:
        if info is None:
            raise _HttpError(401, "You must be authenticated to delete a repository")
        namespace = payload.get("organization") or info["user"]
        repo = self._get_repo(f"{namespace}/{payload.get('name')}", info)
        if not self._can_write(info, repo.namespace):
            raise _HttpError(403, f"You don't have the rights to delete {repo.id}")
        del self._repos[repo.id]
        return _J(200, {})

    def _model_info(self, h, repo: _Repo, revision: str, query) -> None:
        commit = self._resolve_revision(repo, revision)
        files = commit["files"] if commit else {}
        blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        siblings = []
        for path, e in sorted(files.items()):
            s: dict = {"rfilename": path}
            if blobs:
                s.update(size=e["size"], blobId=e["blob_id"])
                if e["lfs"]:
                    s["lfs"] = {"size": e["size"], "sha256": e["sha256"], "pointerSize": e["pointer_size"]}
            siblings.append(s)
        return _J(200, {
            "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24], "id": repo.id, "modelId": repo.id,
            "author": repo.namespace, "sha": commit["oid"] if commit else None,
            "lastModified": commit["date"] if commit else repo.created_at, "createdAt": repo.created_at,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings, "spaces": [],
            "usedStorage": sum(e["size"] for e in files.values())})

    def _preupload(self, h, repo: _Repo, revision: str, payload: dict) -> None:
        commit = self._resolve_revision(repo, revision)
        files = commit["files"] if commit else {}
        out = []
        for f in payload.get("files", []):
            path, size = f["path"], int(f.get("size", 0))
            sample = base64.b64decode(f.get("sample", "") or "")
            existing = files.get(path)
            oid = None if existing is None else (existing["sha256"] if existing["lfs"] else existing["blob_id"])
            out.append({"path": path, "uploadMode": "lfs" if self._is_lfs(path, size, sample) else "regular",
                        "shouldIgnore": False, "oid": oid})
        return _J(200, {"files": out, "commitOid": commit["oid"] if commit else None})

    def _lfs_batch(self, h, repo_id: str, body: bytes, info) -> None:
        repo = self._writable_repo(repo_id, info)
        payload = _json(body)
        if payload.get("operation") != "upload":
            raise _HttpError(400, "Only the upload operation is supported by this test Hub")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise _HttpError(400, "Only the basic transfer is supported by this test Hub")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": oid, "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid object"}})
                continue
            entry: dict = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs_oids:
                self._pending_sizes[(repo.id, oid)] = size
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{repo.id}/{oid}", "expires_in": 3600}}
            objects.append(entry)
        return _J(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                    content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, h: "_Handler", repo_id: str, oid: str) -> None:
        """Stream the body to disk while hashing it; keep it only if its sha256 is ``oid``."""
        tmp_dir = self.storage_dir / "tmp"
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in h.iter_body():
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            with self._lock:
                repo = self._repos.get(repo_id)
                if repo is None:
                    raise _HttpError(404, "Repository not found", "RepoNotFound")
                if digest.hexdigest() != oid:
                    raise _HttpError(400, f"sha256 of the uploaded body is {digest.hexdigest()}, expected {oid}")
                expected = self._pending_sizes.get((repo_id, oid))
                if expected is not None and expected != size:
                    raise _HttpError(400, f"Uploaded {size} bytes, expected {expected}")
                dest = self.lfs_path(oid)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_name, dest)
                repo.lfs_oids.add(oid)
                self._pending_sizes.pop((repo_id, oid), None)
                self._stats["lfs_bytes"] += size
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        return ("bytes", 200, b"", {"ETag": f'"{oid}"'})

    def _commit(self, h, repo: _Repo, revision: str, body: bytes, query, info) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "The first line of a commit payload must be its header")
        header = lines[0]["value"]
        summary = header.get("summary") or ""
        if not summary:
            raise _HttpError(400, "A commit summary is required")
        create_pr = query.get("create_pr", ["0"])[-1] in ("1", "true")
        if revision not in repo.refs:
            self._resolve_revision(repo, revision)  # 404 RevisionNotFound when unknown
            raise _HttpError(400, f"Can only commit to a branch, not to {revision}")
        head = repo.refs[revision]
        parent_commit = header.get("parentCommit")
        if parent_commit:
            if create_pr:
                head = self._resolve_revision(repo, parent_commit)["oid"]
            elif head is None or not head.startswith(parent_commit.lower()):
                raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.commits[head]["files"]) if head else {}
        oid = secrets.token_hex(20)
        changed: list[str] = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = _check_path(value.get("path", ""))
            if key == "file":
                raw = value.get("content", "")
                content = base64.b64decode(raw) if value.get("encoding", "base64") == "base64" else raw.encode()
                files[path] = {"lfs": False, "size": len(content), "blob_id": git_blob_sha1(content),
                               "content": content, "last_commit": oid}
            elif key == "lfsFile":
                sha = str(value.get("oid", ""))
                if value.get("algo", "sha256") != "sha256" or sha not in repo.lfs_oids:
                    raise _HttpError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                          f"does not exist: {path} (oid {sha})")
                size = self.lfs_path(sha).stat().st_size
                pointer = _lfs_pointer(sha, size)
                files[path] = {"lfs": True, "size": size, "sha256": sha, "blob_id": git_blob_sha1(pointer),
                               "pointer_size": len(pointer), "last_commit": oid}
            elif key == "deletedFile":
                if path not in files:
                    raise _HttpError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                if not gone:
                    raise _HttpError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise _HttpError(400, f"Unknown commit operation {key!r}")
            changed.append(path)
        author = info["user"]
        commit = {"oid": oid, "parent": head, "summary": summary, "description": header.get("description") or "",
                  "files_changed": changed, "files": files, "author": author, "date": _now(), "branch": revision}
        repo.commits[oid] = commit
        repo.order.append(oid)
        self._stats["commits"][repo.id] = self._stats["commits"].get(repo.id, 0) + 1
        out = {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo.id}/commit/{oid}",
               "commitMessage": summary, "hookOutput": ""}
        if create_pr:
            number = max(repo.prs, default=0) + 1
            repo.prs[number] = oid
            commit["branch"] = f"refs/pr/{number}"
            out["pullRequestUrl"] = f"{self.url}/{repo.id}/discussions/{number}"
        else:
            repo.refs[revision] = oid
        return _J(200, out)

    def _entries(self, repo: _Repo, files: dict, base: str, recursive: bool, expand: bool) -> list[dict]:
        prefix = base + "/" if base else ""
        out, dirs = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):
                dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append(self._file_json(repo, path, files[path], expand))
        out += [self._folder_json(repo, d, files, expand) for d in sorted(dirs)]
        return sorted(out, key=lambda e: (e["type"] != "directory", e["path"]))

    def _tree(self, h, repo: _Repo, revision: str, path: str, query) -> None:
        commit = self._resolve_revision(repo, revision)
        files = commit["files"] if commit else {}
        flag = lambda name: query.get(name, ["false"])[-1].lower() in ("1", "true")  # noqa: E731
        if path and path in files:
            raise _HttpError(400, f"{path} is a file, not a directory")
        if path and not any(p.startswith(path + "/") for p in files):
            raise _HttpError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        return _J(200, self._entries(repo, files, path, flag("recursive"), flag("expand")))

    def _paths_info(self, h, repo: _Repo, revision: str, body: bytes, headers) -> None:
        if "json" in (headers.get("Content-Type") or ""):
            payload = _json(body)
            paths, expand = payload.get("paths", []), bool(payload.get("expand", False))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[-1].lower() in ("1", "true")
        commit = self._resolve_revision(repo, revision)
        files = commit["files"] if commit else {}
        out = []
        for path in paths if isinstance(paths, list) else [paths]:
            path = path.strip("/")
            if path in files:
                out.append(self._file_json(repo, path, files[path], expand))
            elif any(p.startswith(path + "/") for p in files):
                out.append(self._folder_json(repo, path, files, expand))
        return _J(200, out)

    def _list_commits(self, h, repo: _Repo, revision: str) -> None:
        commit, out = self._resolve_revision(repo, revision), []
        while commit is not None:
            message = commit["summary"] + (f"\n\n{commit['description']}" if commit["description"] else "")
            out.append({"id": commit["oid"], "title": commit["summary"], "message": message,
                        "authors": [{"user": commit["author"]}], "date": commit["date"]})
            commit = repo.commits[commit["parent"]] if commit["parent"] else None
        return _J(200, out)

    def _refs(self, h, repo: _Repo, query) -> None:
        out: dict = {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o}
                                  for b, o in repo.refs.items() if o], "converts": [], "tags": []}
        if query.get("include_prs"):
            out["pullRequests"] = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o}
                                   for n, o in repo.prs.items()]
        return _J(200, out)

    def _resolve(self, h, method: str, repo: _Repo, revision: str, path: str) -> None:
        commit = self._resolve_revision(repo, revision)
        entry = commit["files"].get(path) if commit else None
        if entry is None:
            raise _HttpError(404, f"Entry not found: {path}", "EntryNotFound",
                             headers={"X-Repo-Commit": commit["oid"]} if commit else None)
        etag = entry["sha256"] if entry["lfs"] else entry["blob_id"]
        headers = {"X-Repo-Commit": commit["oid"], "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"'}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry["size"])})
        size, start, end = entry["size"], 0, entry["size"] - 1
        status = 200
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", h.headers.get("Range") or "")
        if m and (m.group(1) or m.group(2)) and size > 0:
            if m.group(1):
                start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
            else:
                start = max(size - int(m.group(2)), 0)
            if start > end:
                raise _HttpError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        source = self.lfs_path(entry["sha256"]) if entry["lfs"] else entry["content"]
        return ("content", status, headers, source, start, length)


def _J(status: int, obj, headers: dict | None = None, content_type: str = "application/json") -> tuple:
    return ("json", status, obj, headers or {}, content_type)


def _json(body: bytes) -> dict:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as e:
        raise _HttpError(400, f"Invalid JSON body: {e}")
    if not isinstance(value, dict):
        raise _HttpError(400, "Expected a JSON object")
    return value


def _check_path(path: str) -> str:
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in path.rstrip("/").split("/")) \
            or path.split("/")[0] == ".git":
        raise _HttpError(400, f"Invalid path in repo: {path!r}")
    return path


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
        self.owner._record({"method": self.command, "path": self.req_path, "query": self.url_parts.query,
                            "headers": {k: v for k, v in self.headers.items()}, "status": status,
                            "bytes": self._body_bytes, "time": time.monotonic()})

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
            self.wfile.write(source[start:start + length])
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
