"""The local target: each artifact set laid out in ``DIR/<repo id>/`` as it would appear on the Hub.
Files are copied through a temporary name and hashed while copied (the copy is the verification);
files already there with the right content are left alone. Every path written is proven inside
``DIR`` (symbolic links resolved), temporary files are created fresh (never through a link) and
removed on failure, and an OS refusal (full disk, read-only, permission) is a one-line error."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from upload_common.contract import sha256_file, write_json_atomic
from upload_common.errors import InvalidInput, from_os_error
from upload_common.safety import join_inside

_CHUNK = 8 << 20
RECORD = ".upload-driver.json"


def _fresh(path: Path):
    """A new file at ``path`` opened for writing: whatever was there (a stale temporary file, a
    planted symbolic link) is removed, never written through."""
    path.unlink(missing_ok=True)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644), "wb")


def _copy_hashed(src: Path, dst: Path) -> tuple[str, Path]:
    """(sha256 of what was copied, the temporary file holding it beside ``dst``)."""
    tmp = dst.with_name(f".{dst.name}.partial")
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, _fresh(tmp) as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest(), tmp


def _write_record(repo_dir: Path, record: dict) -> None:
    # write_json_atomic makes its temporary file afresh (a planted link is not written through)
    write_json_atomic(join_inside(repo_dir, RECORD, "the publish record"), record)


def _copy_file(repo_dir: Path, f: dict, src: Path) -> bool:
    """Copy one file into the repo folder; False when it was there already with the right content."""
    dst = join_inside(repo_dir, f["path_in_repo"], "path_in_repo")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst = join_inside(repo_dir, f["path_in_repo"], "path_in_repo")  # again, now that its folders exist
    if not dst.is_symlink() and dst.is_file() and dst.stat().st_size == f["size"] and sha256_file(dst) == f["sha256"]:
        return False
    digest, tmp = _copy_hashed(src, dst)
    if digest != f["sha256"]:
        tmp.unlink(missing_ok=True)
        raise InvalidInput(
            f"{src} changed since its step wrote it (sha256 differs from the manifest): rerun that step", path=str(src)
        )
    os.replace(tmp, dst)
    return True


def push_set(root: Path, entry: dict, local: dict[str, Path], log) -> dict:
    root = Path(root).absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
        repo_dir = join_inside(root, entry["repo_id"], "repo id")
        repo_dir.mkdir(parents=True, exist_ok=True)
        repo_dir = join_inside(root, entry["repo_id"], "repo id")
        sent, unchanged = [], []
        for f in entry["files"]:
            (sent if _copy_file(repo_dir, f, local[f["path_in_repo"]]) else unchanged).append(f["path_in_repo"])
        log(f"{repo_dir}: {len(sent)} files written, {len(unchanged)} unchanged")
        _write_record(
            repo_dir,
            {
                "repo_id": entry["repo_id"],
                "content_sha256": entry["content_sha256"],
                "files": {f["path_in_repo"]: f["sha256"] for f in entry["files"]},
            },
        )
    except OSError as exc:
        known = from_os_error(exc, f"publishing {entry['repo_id']} to {root}")
        if known is None:
            raise
        raise known from None
    return {
        "repo_id": entry["repo_id"],
        "url": repo_dir.as_uri(),
        "path": str(repo_dir),
        "sent": sent,
        "unchanged": unchanged,
        "bytes_sent": sum(f["size"] for f in entry["files"] if f["path_in_repo"] in sent),
        "verified": len(entry["files"]),
    }
