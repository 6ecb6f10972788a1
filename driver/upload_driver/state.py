"""Skipping work already done, by content, with one key: the step's fingerprint
(``contract.step_fingerprint``: tool, tool version, the identity of each input without its path, and
the parameters as the tool resolved them, how it runs, such as the device, left out). The tool
computes it and records it in its manifest; to know whether a finished step is still what would be
asked now, the driver asks the tool for it again (``TOOL ... --fingerprint``: arguments checked,
inputs described, nothing written) and compares. A step is skipped when that fingerprint equals the
one in the manifest the state recorded for it, and that manifest and its files are still there
unchanged; never because a folder exists.

A step is recorded as done only after every output file was checked against its manifest (size and
sha256). A rerun checks them again cheaply (size and modification time; the sha256 again only where
the time changed), and for a local publish it checks the published files too, so a deleted or
edited file makes the step run again."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from upload_common.contract import (
    MANIFEST,
    now_iso,
    read_manifest,
    sha256_file,
    write_json_atomic,
)
from upload_common.errors import InvalidInput
from upload_common.upload_manifest import UPLOAD_MANIFEST

from .lock import waiting
from .plan import PlannedStep

STATE = ".upload-driver/state.json"
STATE_LOCK = ".upload-driver/state.lock"


def load(work: Path) -> dict:
    return _json_object(Path(work) / STATE)


def _expected(step: PlannedStep) -> dict[Path, dict]:
    """Every file the step's output should hold, {path: {"size", "sha256"}}: the manifest's outputs,
    and for a local publish the files it laid out in the target."""
    out = step.out
    m = read_manifest(out) or {}
    files = {out / o["path"]: o for o in m.get("outputs") or [] if isinstance(o, dict) and "path" in o}
    if "site" in step.rw:  # a local publish: DIR/<repo id>/<path in repo>, DIR as this machine sees it
        upload = _json_object(step.inputs["docs"] / UPLOAD_MANIFEST)
        site = step.rw["site"]
        for sets in (m.get("published") or {}).values():
            for name, rec in sets.items():
                entry = (upload.get("sets") or {}).get(name) if isinstance(rec, dict) and rec.get("repo_id") else None
                for f in (entry or {}).get("files") or []:
                    files[site / entry["repo_id"] / f["path_in_repo"]] = f
    return files


def _json_object(path: Path) -> dict:
    """A JSON file holding an object; {} when it is missing or unreadable (then nothing counts as done)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _stat(path: Path):
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def verify(step: PlannedStep) -> dict[str, list]:
    """Check every output file against the manifest (size, sha256, in parallel); return what the
    state records of each ({path: [size, mtime_ns]}). InvalidInput when a file differs."""
    files = _expected(step)

    def check(item):
        path, want = item
        st = _stat(path)
        if st is None or st[0] != want["size"]:
            return f"{path} is missing or has the wrong size"
        if sha256_file(path) != want["sha256"]:
            return f"{path} does not have the sha256 its manifest records"
        return None

    with ThreadPoolExecutor(4) as pool:
        bad = [b for b in pool.map(check, files.items()) if b]
    if bad:
        raise InvalidInput(
            f"step {step.name}: its output does not match its manifest ({bad[0]}"
            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): something else wrote to it; "
            f"rerun with --force {step.name}",
            step=step.name,
            mismatches=bad[:20],
        )
    return {str(p): list(_stat(p)) for p in files}


def _still_there(step: PlannedStep, recorded: dict) -> bool:
    """The cheap re-check of a done step: every file still has its recorded size and time, or, where
    the time changed, still the sha256 of the manifest."""
    files = _expected(step)
    if set(map(str, files)) != set(recorded):
        return False
    for path, want in files.items():
        st = _stat(path)
        if st is None or st[0] != want["size"]:
            return False
        if list(st) != recorded[str(path)] and sha256_file(path) != want["sha256"]:
            return False
    return True


def recorded(work: Path, step: PlannedStep) -> bool:
    """The state records the step as done (whether it still is, only ``up_to_date`` says)."""
    return bool(load(work).get(step.name))


def up_to_date(work: Path, step: PlannedStep, fp: str | None) -> bool:
    """The state records the step done with a manifest of fingerprint ``fp`` (the tool's answer now),
    and that manifest and its files are still the ones recorded."""
    rec = load(work).get(step.name)
    manifest = step.out / MANIFEST
    return (
        bool(rec)
        and fp is not None
        and rec.get("fingerprint") == fp
        and manifest.is_file()
        and sha256_file(manifest) == rec.get("manifest")
        and _still_there(step, rec.get("files") or {})
    )


def _locked(work: Path):
    """The state is read, changed and written whole: steps that end together (threads of a batch, tasks
    on other nodes sharing the work folder) take turns (``lock.waiting``)."""
    return waiting(Path(work) / STATE_LOCK)


def record(work: Path, step: PlannedStep, seconds: float) -> None:
    """Mark the step done under its manifest's fingerprint, after checking its files against the manifest."""
    files = verify(step)
    entry = {
        "fingerprint": (read_manifest(step.out) or {}).get("fingerprint"),
        "manifest": sha256_file(step.out / MANIFEST),
        "finished": now_iso(),
        "seconds": round(seconds, 3),
        "files": files,
    }
    with _locked(work):
        state = load(work)
        state[step.name] = entry
        write_json_atomic(Path(work) / STATE, state)


def forget(work: Path, name: str) -> None:
    """Unmark a step before it runs again: a step is never recorded done while its folder changes."""
    with _locked(work):
        state = load(work)
        if state.pop(name, None) is not None:
            write_json_atomic(Path(work) / STATE, state)
