"""What hf-push-tool is asked to publish: docs-tool's upload manifest, proven to be the one docs-tool
wrote (its sha256 in docs-tool's step manifest), every name and path in it checked before use (a
repo id by the Hub's rules, a path as a relative path inside its folder or repo), and every file
found with the manifest's size; the docs files (cards, Modelfile: small) with its sha256 too. The
gguf set's Ollama model comes as structured fields (upload_common.upload_manifest.OllamaFields),
checked here too."""

from __future__ import annotations

import re
from pathlib import Path

from upload_common.contract import MANIFEST, read_json_object, sha256_file
from upload_common.errors import InputNotFound, InvalidInput, UsageError
from upload_common.safety import check_repo_id, join_inside, relative_path
from upload_common.upload_manifest import (
    HUB_FILE_LIMIT,
    UPLOAD_MANIFEST,
    UPLOAD_SCHEMA,
    UPLOAD_SCHEMA_VERSION,
    OllamaFields,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ORIGINS = ("artifact", "docs")


def _bad(docs: Path, why: str, **fields) -> InvalidInput:
    return InvalidInput(
        f"{docs / UPLOAD_MANIFEST}: {why}: it was edited or made by something else; rerun docs-tool",
        path=str(docs / UPLOAD_MANIFEST),
        **fields,
    )


def check_file_entry(docs: Path, s: str, f) -> dict:
    """One ``files`` row: the fields hf-push-tool uses, with their types and safe values."""
    if not isinstance(f, dict):
        raise _bad(docs, f"a file of the {s} set is not an object")
    where = f"the {s} set's path_in_repo"
    relative_path(f.get("path_in_repo"), where)
    relative_path(f.get("path"), f"the {s} set's file path")
    if f.get("origin") not in _ORIGINS:
        raise _bad(docs, f"{f['path_in_repo']!r} has origin {f.get('origin')!r} (expected artifact or docs)")
    size, sha = f.get("size"), f.get("sha256")
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or size < 0
        or not isinstance(sha, str)
        or not _SHA256.match(sha)
    ):
        raise _bad(docs, f"{f['path_in_repo']!r} has no valid size and sha256")
    return f


def check_entry(docs: Path, s, entry) -> dict:
    """One set: its name, repo id (namespace optional: the local target takes NAME alone), source,
    files (no two with the same path in the repo) and its Ollama model: fields of the right types,
    made from a file of the set."""
    if not isinstance(s, str) or not _SET_NAME.match(s):
        raise _bad(docs, f"set name {s!r} is not a plain name")
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("files"), list)
        or not isinstance(entry.get("source"), dict)
        or not isinstance(entry["source"].get("manifest_sha256"), str)
    ):
        raise _bad(docs, f"the {s} set lacks its files or source", set=s)
    check_repo_id(entry.get("repo_id"), f"the {s} set's repo id in {docs / UPLOAD_MANIFEST}", usage=False)
    files = [check_file_entry(docs, s, f) for f in entry["files"]]
    paths = [f["path_in_repo"] for f in files]
    if len(set(paths)) != len(paths):
        raise _bad(docs, f"the {s} set lists a path_in_repo twice", set=s)
    if entry.get("ollama") is not None:
        try:
            ollama = OllamaFields.from_json(entry["ollama"])
        except ValueError as exc:
            raise _bad(docs, f"the {s} set's Ollama entry is malformed ({exc})", set=s) from None
        if ollama.file not in paths:
            raise _bad(docs, f"the {s} set's Ollama entry names no file of the set", set=s)
    return entry


def check_docs_manifest(docs: Path) -> dict:
    """docs-tool's step manifest, which must list upload_manifest.json with the sha256 it has now;
    returns {path: sha256} of the docs folder's files as docs-tool wrote them."""
    step = read_json_object(
        docs / MANIFEST,
        "docs-tool's step manifest",
        "pass the finished output folder of docs-tool with --docs (a folder without "
        "manifest.json is not a finished output)",
    )
    outputs = {o.get("path"): o.get("sha256") for o in step.get("outputs") or [] if isinstance(o, dict)}
    if UPLOAD_MANIFEST not in outputs:
        raise InvalidInput(
            f"{docs / MANIFEST} does not list {UPLOAD_MANIFEST}: pass the output folder of docs-tool with --docs",
            path=str(docs),
        )
    if sha256_file(docs / UPLOAD_MANIFEST) != outputs[UPLOAD_MANIFEST]:
        raise InvalidInput(
            f"{docs / UPLOAD_MANIFEST} changed since docs-tool wrote it (its sha256 differs from "
            f"{docs / MANIFEST}): rerun docs-tool; nothing was sent",
            path=str(docs / UPLOAD_MANIFEST),
        )
    return outputs


def read_upload_manifest(docs: Path) -> dict:
    upload = read_json_object(
        docs / UPLOAD_MANIFEST, "upload manifest", "pass the output folder of docs-tool with --docs"
    )
    if upload.get("schema") != UPLOAD_SCHEMA or not isinstance(upload.get("sets"), dict):
        raise InvalidInput(f"{docs / UPLOAD_MANIFEST} is not an upload-driver upload manifest", path=str(docs))
    if upload.get("schema_version") != UPLOAD_SCHEMA_VERSION:
        raise InvalidInput(
            f"{docs / UPLOAD_MANIFEST} has schema version {upload.get('schema_version')!r}, this "
            f"hf-push-tool reads {UPLOAD_SCHEMA_VERSION}: rerun docs-tool of the same version",
            path=str(docs),
        )
    for s, entry in upload["sets"].items():
        check_entry(docs, s, entry)
    return upload


def _artifact_folders(artifacts) -> dict[str, Path]:
    by_hash = {}
    for folder in artifacts:
        folder = Path(folder).absolute()
        if not (folder / MANIFEST).is_file():
            raise InputNotFound(
                f"{folder} has no manifest.json: pass finished output folders with --artifact", path=str(folder)
            )
        by_hash[sha256_file(folder / MANIFEST)] = folder
    return by_hash


def _local_file(f: dict, root: Path) -> Path:
    """The file a row names, inside its folder (symbolic links included), with the manifest's size."""
    p = join_inside(root, f["path"], f"file {f['path']!r}")
    if not p.is_file():
        raise InputNotFound(f"{p} is missing: rerun the step that makes it", path=str(p))
    if p.stat().st_size != f["size"]:
        raise InvalidInput(
            f"{p} has {p.stat().st_size} bytes, the manifest says {f['size']}: it changed since "
            "its step wrote it; rerun that step",
            path=str(p),
        )
    if f["size"] > HUB_FILE_LIMIT:
        raise InvalidInput(
            f"{p} is over the Hub's 50 GB per-file limit: re-run gguf-tool with --split-max-size 48G", path=str(p)
        )
    return p


def load_plan(docs, artifacts, only=()) -> tuple[dict, dict]:
    """(upload manifest limited to ``only``, {set: {path_in_repo: local path}}), every name and path
    checked, every file checked to exist with the manifest's size (docs files: and sha256), and the
    upload manifest proven to be docs-tool's, before anything is sent."""
    docs = Path(docs).absolute()
    upload = read_upload_manifest(docs)
    by_hash = _artifact_folders(artifacts)
    sets = upload["sets"]
    unknown = sorted(set(only) - set(sets))
    if unknown:
        raise UsageError(f"--set {', '.join(unknown)}: the upload manifest holds {', '.join(sets)}")
    chosen = {s: e for s, e in sets.items() if not only or s in only}
    local = {}
    for s, entry in chosen.items():
        folder = by_hash.get(entry["source"]["manifest_sha256"])
        if folder is None:
            raise InputNotFound(
                f"the {s} set's folder was not given (or changed since docs-tool ran): pass the "
                f"output folder of {entry['source'].get('tool')} for it with --artifact, or rerun "
                "docs-tool",
                set=s,
            )
        local[s] = {
            f["path_in_repo"]: _local_file(f, docs if f["origin"] == "docs" else folder) for f in entry["files"]
        }
    check_docs_manifest(docs)
    for s, entry in chosen.items():
        for f in entry["files"]:  # the Modelfile among them: what a local target copies
            if f["origin"] == "docs" and sha256_file(local[s][f["path_in_repo"]]) != f["sha256"]:
                raise InvalidInput(
                    f"{local[s][f['path_in_repo']]} changed since docs-tool wrote it (sha256 differs "
                    "from the upload manifest): rerun docs-tool",
                    path=str(local[s][f["path_in_repo"]]),
                )
    return {**upload, "sets": chosen}, local


def describe_plan(upload: dict, targets: list[dict]) -> list[dict]:
    rows = []
    for t in targets:
        for s, entry in upload["sets"].items():
            if t["kind"] == "ollama" and not entry.get("ollama"):
                continue
            dest = {
                "hf": entry["repo_id"],
                "local": str(Path(t.get("path", ".")) / entry["repo_id"]),
                "ollama": t.get("name") or (entry.get("ollama") or {}).get("ollama_name"),
            }[t["kind"]]
            files = (
                entry["files"]
                if t["kind"] != "ollama"
                else [f for f in entry["files"] if f["path_in_repo"] == entry["ollama"]["file"]]
            )
            rows.append(
                {
                    "target": t["spec"],
                    "set": s,
                    "destination": dest,
                    "files": len(files),
                    "bytes": sum(f["size"] for f in files),
                    "paths": [f["path_in_repo"] for f in files],
                }
            )
    return rows
