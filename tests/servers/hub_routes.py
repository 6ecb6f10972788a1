"""The test Hub's request dispatch: a request's method and path to the read or write route that answers it."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from .hub_store import _J, _HttpError, _json

if TYPE_CHECKING:
    from .hub_handler import _Handler


class DispatchRoutes:
    """Part of ``HubServer``: ``route`` takes its lock, the rest is called with it held."""

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
