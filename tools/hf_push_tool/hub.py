"""The Hugging Face Hub target, through huggingface_hub: one repo and one commit per artifact set,
unchanged files not sent, every file verified on the Hub afterwards (size and sha256).

The token comes from huggingface_hub itself (HF_TOKEN, else the token file of `hf auth login`); it is
never taken from the command line and never logged."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path

from upload_common.errors import InvalidInput, UploadError
from upload_common.safety import check_repo_id

from .retry import causes, status_of, with_retries


class HubError(UploadError, PermissionError):
    kind = "hub"


def git_blob_sha1(path: Path) -> str:
    """The git object id of a regular (non-LFS) file, as the Hub reports it."""
    h = hashlib.sha1()
    h.update(b"blob %d\0" % Path(path).stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _explain(exc, repo_id: str, what: str) -> UploadError | None:
    """A known HTTP failure as a one-line error that says what to do; None for anything else."""
    code = status_of(exc)
    http = next((e for e in causes(exc) if getattr(e, "response", None) is not None), None)
    url = str(getattr(http.response, "url", "")) if http is not None else ""
    server = " ".join(str(getattr(http, "server_message", "") or "").split())[:300]
    if "validate-yaml" in url or (isinstance(exc, ValueError) and "Invalid metadata in README.md" in str(exc)):
        # the client turns the Hub's verdict into ValueError("Invalid metadata in README.md.\n- <why>")
        why = " ".join(str(exc).split("\n", 1)[-1].split()).lstrip("- ") if isinstance(exc, ValueError) else server
        return InvalidInput(
            f"the Hub rejected the model card of {repo_id}: {why or server or 'invalid metadata'}: fix "
            "the card's metadata (docs-tool options --license, --base-model, --language) and rerun",
            repo_id=repo_id,
            status=code,
        )
    messages = {
        401: "the Hub refused the token (401): set HF_TOKEN to a valid token, or log in with `hf auth login`",
        403: f"the token may not write to {repo_id} (403): use a token with write access to that namespace "
        "(a read-only or fine-grained token without it is refused)",
        404: f"{repo_id} or its namespace was not found (404): check the namespace, and that the token can see it",
        409: f"name conflict for {repo_id} (409): a repo with this name exists that this token cannot use, or "
        "another commit is in progress; choose another name (docs-tool --repo/--name) or rerun",
        412: f"{repo_id} changed during the push (412): rerun to push on top of the new commit",
    }
    if code in messages:
        return HubError(
            f"{what}: {messages[code]}" + (f" (Hub: {server})" if server and code != 401 else ""),
            repo_id=repo_id,
            status=code,
        )
    if code and 400 <= code < 500:
        return HubError(f"{what}: the Hub answered {code}: {server or 'no message'}", repo_id=repo_id, status=code)
    return None


def _call(what: str, repo_id: str, fn, retry: dict):
    return with_retries(what, fn, explain=lambda exc: _explain(exc, repo_id, what), **retry)


def check_token(api, log) -> dict:
    """Who the token belongs to; fails before any hashing or upload when there is none or it is refused."""
    from huggingface_hub import get_token

    if not get_token():
        raise HubError(
            "no Hugging Face token: set HF_TOKEN or log in with `hf auth login` (the token is never read "
            "from the command line)"
        )
    info = _call("checking the token", "-", api.whoami, {"attempts": 3, "wait": 1.0, "log": log})
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubError("the Hugging Face token is read-only: create one with write access and set HF_TOKEN")
    log(f"Hub: {api.endpoint} as {info.get('name')}")
    return {"user": info.get("name"), "orgs": [o.get("name") for o in info.get("orgs") or []]}


def _in_background(fn, items: list) -> list[Future]:
    """``fn`` over ``items`` on daemon threads (one per core): a failure elsewhere can stop the step at
    once, where a pool would wait for a multi-GB file to finish hashing before the process exits."""
    futures = [Future() for _ in items]
    todo = iter(list(zip(futures, items, strict=True)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                nxt = next(todo, None)
            if nxt is None:
                return
            fut, item = nxt
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(item))
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                    fut.set_exception(exc)

    for _ in range(max(1, min(len(items), os.cpu_count() or 1))):
        threading.Thread(target=worker, daemon=True).start()
    return futures


def push_set(api, entry: dict, local: dict[str, Path], *, private: bool, retry: dict, log) -> dict:
    """One artifact set → one repo, one commit; returns what was done, verified. The files are hashed
    (in parallel) while the repo is created."""
    from huggingface_hub import CommitOperationAdd

    repo_id = check_repo_id(
        entry["repo_id"], "repo id (set by docs-tool --namespace and --name)", namespace=True, usage=False
    )

    def operation(f: dict):
        op = CommitOperationAdd(path_in_repo=f["path_in_repo"], path_or_fileobj=str(local[f["path_in_repo"]]))
        # the client hashes lazily and keeps it; hashlib releases the GIL: files hash in parallel
        _ = op.upload_info.sha256
        return op

    log(f"{repo_id}: hashing {len(entry['files'])} files")
    hashing = _in_background(operation, entry["files"])
    try:
        _call(
            f"creating {repo_id}",
            repo_id,
            lambda: api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True),
            retry,
        )
    except BaseException:
        for fut in hashing:
            fut.cancel()
        raise
    ops = [fut.result() for fut in hashing]
    for op, f in zip(ops, entry["files"], strict=True):  # one operation per file
        if op.upload_info.sha256.hex() != f["sha256"] or op.upload_info.size != f["size"]:
            raise InvalidInput(
                f"{local[f['path_in_repo']]} changed since its step wrote it (sha256 differs from "
                "the manifest): rerun that step; nothing was sent",
                path=str(local[f["path_in_repo"]]),
            )
    message = f"Upload {entry['title']} with upload-driver"
    log(f"{repo_id}: committing")
    info = _call(
        f"pushing {repo_id}",
        repo_id,
        lambda: api.create_commit(repo_id, operations=ops, commit_message=message, repo_type="model"),
        retry,
    )
    unchanged = sorted(op.path_in_repo for op in ops if op._remote_oid is not None and op._remote_oid == op._local_oid)
    sent = sorted(op.path_in_repo for op in ops if op.path_in_repo not in unchanged)
    verified = verify(api, entry, local, info.oid, retry)
    return {
        "repo_id": repo_id,
        "url": f"{api.endpoint}/{repo_id}",
        "commit_url": info.commit_url,
        "commit": info.oid,
        "sent": sent,
        "unchanged": unchanged,
        "bytes_sent": sum(f["size"] for f in entry["files"] if f["path_in_repo"] in sent),
        "verified": verified,
    }


def verify(api, entry: dict, local: dict, revision: str, retry: dict) -> int:
    """Every file of the set is on the Hub at ``revision`` with the manifest's size and sha256 (the
    LFS oid), or the git blob id of the local file for regular files."""
    paths = [f["path_in_repo"] for f in entry["files"]]
    found = _call(
        f"verifying {entry['repo_id']}",
        entry["repo_id"],
        lambda: api.get_paths_info(entry["repo_id"], paths, revision=revision, repo_type="model"),
        retry,
    )
    remote = {getattr(r, "path", None): r for r in found}
    bad = []
    for f in entry["files"]:
        r = remote.get(f["path_in_repo"])
        if r is None:
            bad.append(f"{f['path_in_repo']} is missing")
        elif r.lfs is not None:
            if r.lfs.sha256 != f["sha256"] or r.lfs.size != f["size"]:
                bad.append(f"{f['path_in_repo']} has sha256 {r.lfs.sha256} / {r.lfs.size} bytes on the Hub")
        elif r.size != f["size"] or r.blob_id != git_blob_sha1(local[f["path_in_repo"]]):
            bad.append(f"{f['path_in_repo']} differs on the Hub ({r.size} bytes)")
    if bad:
        raise HubError(
            f"after the push, {entry['repo_id']} does not hold what was sent: {'; '.join(bad[:5])}: rerun the push",
            repo_id=entry["repo_id"],
            mismatches=bad,
        )
    return len(paths)
