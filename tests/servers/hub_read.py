"""The test Hub's read routes: whoami, the YAML check, model info, tree, paths-info, commits, refs, resolve."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qs

from .hub_store import _J, _HttpError, _json, _Repo


class ReadRoutes:
    """Part of ``HubServer`` (call with its lock held)."""

    def _whoami(self, info: dict) -> dict:
        return {
            "type": "user",
            "id": hashlib.sha1(info["user"].encode()).hexdigest()[:24],
            "name": info["user"],
            "fullname": info["user"],
            "email": f"{info['user']}@example.invalid",
            "emailVerified": True,
            "isPro": False,
            "canPay": False,
            "periodEnd": None,
            "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": info["role"]} for o in info["orgs"]],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test-token", "role": info["role"]}},
        }

    @staticmethod
    def _validate_yaml(body: bytes) -> dict:
        content = _json(body).get("content", "")
        lines = content.splitlines()
        if lines and lines[0].strip() == "---" and not any(line.strip() == "---" for line in lines[1:]):
            raise _HttpError(
                400,
                "Invalid YAML metadata",
                extra={"errors": [{"message": "YAML front matter is not closed by '---'"}]},
            )
        return {"errors": [], "warnings": []}

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
        return _J(
            200,
            {
                "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
                "id": repo.id,
                "modelId": repo.id,
                "author": repo.namespace,
                "sha": commit["oid"] if commit else None,
                "lastModified": commit["date"] if commit else repo.created_at,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "spaces": [],
                "usedStorage": sum(e["size"] for e in files.values()),
            },
        )

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

    def _entries(self, repo: _Repo, files: dict, base: str, recursive: bool, expand: bool) -> list[dict]:
        prefix = base + "/" if base else ""
        out, dirs = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
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
            out.append(
                {
                    "id": commit["oid"],
                    "title": commit["summary"],
                    "message": message,
                    "authors": [{"user": commit["author"]}],
                    "date": commit["date"],
                }
            )
            commit = repo.commits[commit["parent"]] if commit["parent"] else None
        return _J(200, out)

    def _refs(self, h, repo: _Repo, query) -> None:
        out: dict = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.refs.items() if o],
            "converts": [],
            "tags": [],
        }
        if query.get("include_prs"):
            out["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o} for n, o in repo.prs.items()
            ]
        return _J(200, out)

    def _resolve(self, h, method: str, repo: _Repo, revision: str, path: str) -> None:
        commit = self._resolve_revision(repo, revision)
        entry = commit["files"].get(path) if commit else None
        if entry is None:
            raise _HttpError(
                404,
                f"Entry not found: {path}",
                "EntryNotFound",
                headers={"X-Repo-Commit": commit["oid"]} if commit else None,
            )
        etag = entry["sha256"] if entry["lfs"] else entry["blob_id"]
        headers = {
            "X-Repo-Commit": commit["oid"],
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
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
