"""The step contract shared by every tool (documented in docs/contract.md).

A step writes into ``<out>.partial/``, writes ``manifest.json`` last, then renames the folder to
``<out>``: a folder without a manifest is not an output. On a known failure the partial folder is
emptied and keeps only ``error.json``. The manifest records what went in (with hashes), the
parameters, what came out (size, sha256), library versions, timings, warnings and decisions; its
``fingerprint`` (tool + version + inputs + parameters) is what a driver compares to skip a step.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import time
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import __version__
from .errors import InvalidInput, OutputExists, UploadError, from_os_error

SCHEMA = "upload-driver/step-manifest"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ERROR_FILE = "error.json"
PARTIAL_SUFFIX = ".partial"
_CHUNK = 8 << 20
# parameters that say how a step runs, not what it makes: outside its fingerprint
HOW = ("device",)
# set while a tool only computes its fingerprint (--fingerprint): nothing is written then
FINGERPRINT_ONLY: ContextVar[bool] = ContextVar("fingerprint_only", default=False)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def settle(path: Path) -> str:
    """A finished file's sha256, with its data flushed to disk: run it in the background while the
    next output is made, so neither hashing nor the final fsync waits at the end."""
    digest = sha256_file(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest


def canonical_sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def folder_fingerprint(path: Path) -> str:
    """Cheap identity of a folder that has no manifest: names, sizes and mtimes of its files."""
    path = Path(path)
    rows = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            rows.append([p.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    return canonical_sha256(rows)


def describe_input(path: Path, **extra) -> dict:
    """An input entry: a step output is named by its manifest's hash, a file by its sha256,
    any other folder by its fingerprint."""
    path = Path(path)
    entry = {"path": str(path), **extra}
    if (path / MANIFEST).is_file():
        entry["manifest_sha256"] = sha256_file(path / MANIFEST)
    elif path.is_file():
        entry["sha256"] = sha256_file(path)
    elif path.is_dir():
        entry["fingerprint"] = folder_fingerprint(path)
    return entry


def library_versions(*names: str) -> dict:
    found = {"python": platform.python_version(), "upload-driver": __version__}
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def step_fingerprint(tool: str, tool_version: str, inputs: dict, parameters: dict) -> str:
    """The step's identity, the one skip key: tool and version, each input's identity (without its
    path), and the parameters that shape the output (those in ``HOW`` left out)."""

    def identity(entry):
        return {k: v for k, v in entry.items() if k != "path"} if isinstance(entry, dict) else entry

    return canonical_sha256(
        {
            "tool": tool,
            "version": tool_version,
            "parameters": {k: v for k, v in parameters.items() if k not in HOW},
            "inputs": {k: identity(v) for k, v in inputs.items()},
        }
    )


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_manifest(tool: str, *, inputs: dict, parameters: dict) -> dict:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": tool, "version": __version__},
        "fingerprint": step_fingerprint(tool, __version__, inputs, parameters),
        "inputs": inputs,
        "parameters": parameters,
        "outputs": [],
        "versions": {},
        "timings": {"started": now_iso(), "seconds": {}},
        "warnings": [],
        "decisions": {},
    }


def collect_outputs(folder: Path, known: dict[str, str] | None = None) -> list[dict]:
    """Every file under ``folder`` with size and sha256; ``known`` holds hashes computed while
    writing, so large files are not read twice."""
    known = known or {}
    out = []
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, ERROR_FILE):
            rel = p.relative_to(folder).as_posix()
            out.append({"path": rel, "size": p.stat().st_size, "sha256": known.get(rel) or sha256_file(p)})
    return out


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:  # strict JSON: a NaN or Infinity is a bug upstream, never something to publish
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise InvalidInput(
            f"refusing to write {path.name}: it would hold a non-finite number ({exc}): a value "
            "computed upstream is NaN or infinite",
            path=str(path),
        ) from None
    tmp.unlink(missing_ok=True)  # a fresh file, never one planted there (a link is not followed)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def finish_manifest(manifest: dict, folder: Path, known_hashes: dict | None = None, t0: float | None = None) -> dict:
    manifest["outputs"] = collect_outputs(folder, known_hashes)
    manifest["timings"]["finished"] = now_iso()
    if t0 is not None:
        manifest["timings"]["seconds"]["total"] = round(time.monotonic() - t0, 3)
    write_json_atomic(Path(folder) / MANIFEST, manifest)
    return manifest


def read_json_object(path: Path, what: str, missing_hint: str) -> dict:
    """A JSON file that must hold an object; a known error saying what to do otherwise."""
    from .errors import InputNotFound, InvalidInput

    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"no {path.name} in {path.parent}: {missing_hint}", path=str(path.parent))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(
            f"{what} {path} is not valid JSON ({' '.join(str(exc).split())}): fix or replace it", path=str(path)
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{what} {path} does not hold a JSON object: fix or replace it", path=str(path))
    return data


def read_manifest(folder: Path) -> dict | None:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def partial_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


SPACE_MARGIN = 64 << 20  # kept free beyond a step's estimate: manifests, logs, the file system's own needs


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists: where a folder not made yet would be (its disk)."""
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    return probe


def check_free_space(out: Path, need: int) -> dict:
    """Refuse before writing anything when the disk holding ``out`` lacks ``need`` bytes."""
    from .errors import NotEnoughSpace

    probe = nearest_existing(Path(out).absolute().parent)
    free = shutil.disk_usage(probe).free
    if free < need + SPACE_MARGIN:
        raise NotEnoughSpace(
            f"{_size(need)} needed in {probe} (plus a {_size(SPACE_MARGIN)} margin) but only "
            f"{_size(free)} free: free some space or choose another --out",
            need=need,
            free=free,
            margin=SPACE_MARGIN,
        )
    return {"needed_bytes": need, "free_bytes": free}


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**8 else f"{n / 1e6:.0f} MB"


def check_output_free(out: Path, overwrite: bool) -> None:
    out = Path(out)
    if out.exists() and not overwrite and not FINGERPRINT_ONLY.get():  # a fingerprint writes nothing
        raise OutputExists(
            f"output {out} already exists: pass --overwrite to replace it, or choose another --out", path=str(out)
        )


def _fsync_tree(folder: Path) -> None:
    for p in [*Path(folder).rglob("*"), Path(folder)]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(out: Path, *, overwrite: bool = False):
    """Yield a fresh partial folder; on success it replaces ``out`` (the caller wrote the manifest
    into it). On failure the partial folder keeps only error.json (for known errors)."""
    out = Path(out).absolute()
    check_output_free(out, overwrite)
    partial = partial_path(out)
    _fresh_folder(partial)
    try:
        yield partial
    except BaseException as exc:
        known = _record_failure(partial, out, exc)
        if known is not None and known is not exc:
            raise known from None
        raise
    if not (partial / MANIFEST).is_file():  # pragma: no cover - programming error in a tool
        raise RuntimeError(f"step finished without writing {MANIFEST}")
    _fsync_tree(partial)  # the data is on disk before the folder takes its final name
    _replace_folder(partial, out)


def _fresh_folder(partial: Path) -> None:
    """An empty partial folder (whatever an earlier attempt left there is removed)."""
    try:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    except OSError as exc:
        known = from_os_error(exc, f"cannot create {partial}")
        if known is None:
            raise
        raise known from None


def _record_failure(partial: Path, out: Path, exc: BaseException) -> UploadError | None:
    """Empty the partial folder and, for a known error (an OSError the user can act on becomes one),
    leave error.json there; return that known error, or None."""
    shutil.rmtree(partial, ignore_errors=True)
    known = exc if isinstance(exc, UploadError) else from_os_error(exc, f"writing {out.name}")
    if known is not None:
        try:  # the partial folder was just emptied, so even a full disk has room for this
            partial.mkdir(parents=True, exist_ok=True)
            write_json_atomic(partial / ERROR_FILE, {"error": known.to_dict(), "time": now_iso()})
        except OSError:
            pass
    return known


def _replace_folder(partial: Path, out: Path) -> None:
    """``partial`` takes the name ``out``; an earlier output there is moved aside first, then removed."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, out)
