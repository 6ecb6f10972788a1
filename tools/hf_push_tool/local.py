"""The local target: each artifact set laid out in ``DIR/<repo id>/`` as it would appear on the Hub.
Files are copied through a temporary name and hashed while copied (the copy is the verification);
files already there with the right content are left alone."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from upload_common.contract import sha256_file, write_json_atomic
from upload_common.errors import InvalidInput

_CHUNK = 8 << 20


def _copy_hashed(src: Path, dst: Path) -> tuple[str, Path]:
    """(sha256 of what was copied, the temporary file holding it beside ``dst``)."""
    tmp = dst.with_name(f".{dst.name}.partial")
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest(), tmp


def push_set(root: Path, entry: dict, local: dict[str, Path], log) -> dict:
    repo_dir = Path(root).absolute() / entry["repo_id"]
    repo_dir.mkdir(parents=True, exist_ok=True)
    sent, unchanged = [], []
    for f in entry["files"]:
        dst = repo_dir / f["path_in_repo"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_file() and dst.stat().st_size == f["size"] and sha256_file(dst) == f["sha256"]:
            unchanged.append(f["path_in_repo"])
            continue
        digest, tmp = _copy_hashed(local[f["path_in_repo"]], dst)
        if digest != f["sha256"]:
            tmp.unlink(missing_ok=True)
            raise InvalidInput(f"{local[f['path_in_repo']]} changed since its step wrote it (sha256 differs from the "
                               "manifest): rerun that step", path=str(local[f["path_in_repo"]]))
        os.replace(tmp, dst)
        sent.append(f["path_in_repo"])
    log(f"{repo_dir}: {len(sent)} files written, {len(unchanged)} unchanged")
    record = {"repo_id": entry["repo_id"], "content_sha256": entry["content_sha256"],
              "files": {f["path_in_repo"]: f["sha256"] for f in entry["files"]}}
    write_json_atomic(repo_dir / ".upload-driver.json", record)
    return {"repo_id": entry["repo_id"], "url": repo_dir.as_uri(), "path": str(repo_dir), "sent": sent,
            "unchanged": unchanged, "bytes_sent": sum(f["size"] for f in entry["files"] if f["path_in_repo"] in sent),
            "verified": len(entry["files"])}
