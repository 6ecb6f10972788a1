"""The test Hub's data and small helpers shared by its routes: a repo, the Hub's error answer, JSON bodies,
paths inside a repo."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone

from .http import HttpError

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

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, extra: dict | None = None
    ):
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
        self.refs: dict[str, str | None] = {"main": None}  # branch -> head commit oid (None: no commit yet)
        self.prs: dict[int, str] = {}  # PR number -> head commit oid
        self.commits: dict[str, dict] = {}  # oid -> commit
        self.order: list[str] = []  # commit oids in creation order
        self.lfs_oids: set[str] = set()  # LFS objects uploaded to this repo


def _J(status: int, obj, headers: dict | None = None, content_type: str = "application/json") -> tuple:
    return ("json", status, obj, headers or {}, content_type)


def _json(body: bytes) -> dict:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as e:
        raise _HttpError(400, f"Invalid JSON body: {e}") from e
    if not isinstance(value, dict):
        raise _HttpError(400, "Expected a JSON object")
    return value


def _check_path(path: str) -> str:
    if (
        not path
        or path.startswith("/")
        or any(p in ("", ".", "..") for p in path.rstrip("/").split("/"))
        or path.split("/")[0] == ".git"
    ):
        raise _HttpError(400, f"Invalid path in repo: {path!r}")
    return path
