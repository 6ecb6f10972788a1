"""The test Hub's write routes: repos created and deleted, preupload, the LFS batch and upload, commits."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import tempfile

from .hub_store import _J, _NAME_RE, _check_path, _HttpError, _json, _lfs_pointer, _now, _Repo, git_blob_sha1


class WriteRoutes:
    """Part of ``HubServer`` (call with its lock held, except ``_lfs_put`` which takes it)."""

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

    def _preupload(self, h, repo: _Repo, revision: str, payload: dict) -> None:
        commit = self._resolve_revision(repo, revision)
        files = commit["files"] if commit else {}
        out = []
        for f in payload.get("files", []):
            path, size = f["path"], int(f.get("size", 0))
            sample = base64.b64decode(f.get("sample", "") or "")
            existing = files.get(path)
            oid = None if existing is None else (existing["sha256"] if existing["lfs"] else existing["blob_id"])
            out.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if self._is_lfs(path, size, sample) else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
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
                objects.append(
                    {
                        "oid": oid,
                        "size": size if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "Invalid object"},
                    }
                )
                continue
            entry: dict = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs_oids:
                self._pending_sizes[(repo.id, oid)] = size
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{repo.id}/{oid}", "expires_in": 3600}}
            objects.append(entry)
        return _J(
            200,
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, h, repo_id: str, oid: str) -> None:
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

    def _commit(self, h, repo: _Repo, revision: str, body: bytes, query, info) -> tuple:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "The first line of a commit payload must be its header")
        header = lines[0]["value"]
        summary = header.get("summary") or ""
        if not summary:
            raise _HttpError(400, "A commit summary is required")
        create_pr = query.get("create_pr", ["0"])[-1] in ("1", "true")
        head = self._commit_parent(repo, revision, header.get("parentCommit"), create_pr)
        files = dict(repo.commits[head]["files"]) if head else {}
        oid = secrets.token_hex(20)
        changed = [self._apply_operation(repo, files, line, oid) for line in lines[1:]]
        commit = {
            "oid": oid,
            "parent": head,
            "summary": summary,
            "description": header.get("description") or "",
            "files_changed": changed,
            "files": files,
            "author": info["user"],
            "date": _now(),
            "branch": revision,
        }
        return self._record_commit(repo, revision, commit, create_pr)

    def _commit_parent(self, repo: _Repo, revision: str, parent_commit: str | None, create_pr: bool) -> str | None:
        """The commit a new one follows: the branch's head, or ``parentCommit`` for a pull request."""
        if revision not in repo.refs:
            self._resolve_revision(repo, revision)  # 404 RevisionNotFound when unknown
            raise _HttpError(400, f"Can only commit to a branch, not to {revision}")
        head = repo.refs[revision]
        if parent_commit:
            if create_pr:
                head = self._resolve_revision(repo, parent_commit)["oid"]
            elif head is None or not head.startswith(parent_commit.lower()):
                raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
        return head

    def _apply_operation(self, repo: _Repo, files: dict, line: dict, oid: str) -> str:
        """One line of a commit payload applied to ``files``; returns the path it changed."""
        key, value = line.get("key"), line.get("value") or {}
        path = _check_path(value.get("path", ""))
        if key == "file":
            raw = value.get("content", "")
            content = base64.b64decode(raw) if value.get("encoding", "base64") == "base64" else raw.encode()
            files[path] = {
                "lfs": False,
                "size": len(content),
                "blob_id": git_blob_sha1(content),
                "content": content,
                "last_commit": oid,
            }
        elif key == "lfsFile":
            files[path] = self._lfs_entry(repo, path, value, oid)
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
        return path

    def _lfs_entry(self, repo: _Repo, path: str, value: dict, oid: str) -> dict:
        sha = str(value.get("oid", ""))
        if value.get("algo", "sha256") != "sha256" or sha not in repo.lfs_oids:
            raise _HttpError(
                422,
                f"Your push was rejected because an LFS pointer pointed to a file that "
                f"does not exist: {path} (oid {sha})",
            )
        size = self.lfs_path(sha).stat().st_size
        pointer = _lfs_pointer(sha, size)
        return {
            "lfs": True,
            "size": size,
            "sha256": sha,
            "blob_id": git_blob_sha1(pointer),
            "pointer_size": len(pointer),
            "last_commit": oid,
        }

    def _record_commit(self, repo: _Repo, revision: str, commit: dict, create_pr: bool) -> tuple:
        oid, summary = commit["oid"], commit["summary"]
        repo.commits[oid] = commit
        repo.order.append(oid)
        self._stats["commits"][repo.id] = self._stats["commits"].get(repo.id, 0) + 1
        out = {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.url}/{repo.id}/commit/{oid}",
            "commitMessage": summary,
            "hookOutput": "",
        }
        if create_pr:
            number = max(repo.prs, default=0) + 1
            repo.prs[number] = oid
            commit["branch"] = f"refs/pr/{number}"
            out["pullRequestUrl"] = f"{self.url}/{repo.id}/discussions/{number}"
        else:
            repo.refs[revision] = oid
        return _J(200, out)
