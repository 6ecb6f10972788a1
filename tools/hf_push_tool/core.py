"""hf-push-tool's step: docs-tool's folder (upload manifest and cards) and the artifact folders in;
each artifact set published to each target; a step manifest recording where, with commit URLs.

Targets: ``hf`` (the repos named in the upload manifest), ``local:DIR`` (the same layout in a
folder), ``ollama`` or ``ollama:NAME`` (the GGUF set, created in an Ollama server). Artifact folders
are matched to sets by their manifest's sha256, never by path, so the same command works wherever
the folders are mounted."""

from __future__ import annotations

import time
from pathlib import Path

from upload_common.contract import (MANIFEST, atomic_output, describe_input, finish_manifest, library_versions,
                                    new_manifest, read_json_object, sha256_file)
from docs_tool.core import HUB_FILE_LIMIT, UPLOAD_MANIFEST, UPLOAD_SCHEMA
from upload_common.errors import InputNotFound, InvalidInput, UsageError

TOOL = "hf-push-tool"


def parse_target(text: str) -> dict:
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind == "hf" and not arg:
        return {"kind": "hf", "spec": "hf"}
    if kind == "local" and arg:
        return {"kind": "local", "path": arg, "spec": text}
    if kind == "ollama":
        return {"kind": "ollama", "name": arg or None, "spec": text}
    raise UsageError(f"unknown target {text!r}: use hf, local:DIR or ollama[:NAME]")


def load_plan(docs, artifacts, only=()) -> tuple[dict, dict]:
    """(upload manifest limited to ``only``, {set: {path_in_repo: local path}}), every file checked to
    exist with the manifest's size, before anything is sent."""
    docs = Path(docs).absolute()
    upload = read_json_object(docs / UPLOAD_MANIFEST, "upload manifest",
                              "pass the output folder of docs-tool with --docs")
    if upload.get("schema") != UPLOAD_SCHEMA:
        raise InvalidInput(f"{docs / UPLOAD_MANIFEST} is not an upload-driver upload manifest", path=str(docs))
    by_hash = {}
    for folder in artifacts:
        folder = Path(folder).absolute()
        if not (folder / MANIFEST).is_file():
            raise InputNotFound(f"{folder} has no manifest.json: pass finished output folders with --artifact",
                                path=str(folder))
        by_hash[sha256_file(folder / MANIFEST)] = folder
    sets = upload["sets"]
    unknown = sorted(set(only) - set(sets))
    if unknown:
        raise UsageError(f"--set {', '.join(unknown)}: the upload manifest holds {', '.join(sets)}")
    chosen = {s: e for s, e in sets.items() if not only or s in only}
    local = {}
    for s, entry in chosen.items():
        folder = by_hash.get(entry["source"]["manifest_sha256"])
        if folder is None:
            raise InputNotFound(f"the {s} set's folder was not given (or changed since docs-tool ran): pass the "
                                f"output folder of {entry['source']['tool']} for it with --artifact, or rerun docs-tool",
                                set=s)
        paths = {}
        for f in entry["files"]:
            p = (docs if f["origin"] == "docs" else folder) / f["path"]
            if not p.is_file():
                raise InputNotFound(f"{p} is missing: rerun the step that makes it", path=str(p))
            if p.stat().st_size != f["size"]:
                raise InvalidInput(f"{p} has {p.stat().st_size} bytes, the manifest says {f['size']}: it changed since "
                                   "its step wrote it; rerun that step", path=str(p))
            if f["size"] > HUB_FILE_LIMIT:
                raise InvalidInput(f"{p} is over the Hub's 50 GB per-file limit: re-run gguf-tool with "
                                   "--split-max-size 48G", path=str(p))
            paths[f["path_in_repo"]] = p
        local[s] = paths
    return {**upload, "sets": chosen}, local


def describe_plan(upload: dict, targets: list[dict]) -> list[dict]:
    rows = []
    for t in targets:
        for s, entry in upload["sets"].items():
            if t["kind"] == "ollama" and not entry.get("ollama"):
                continue
            dest = {"hf": entry["repo_id"], "local": str(Path(t.get("path", ".")) / entry["repo_id"]),
                    "ollama": t.get("name") or (entry.get("ollama") or {}).get("ollama_name")}[t["kind"]]
            files = entry["files"] if t["kind"] != "ollama" else [f for f in entry["files"]
                                                                    if f["path_in_repo"] == entry["ollama"]["file"]]
            rows.append({"target": t["spec"], "set": s, "destination": dest, "files": len(files),
                         "bytes": sum(f["size"] for f in files), "paths": [f["path_in_repo"] for f in files]})
    return rows


def run(docs, artifacts, out, *, targets=("hf",), only=(), private: bool = False, ollama_push: bool = False,
        dry_run: bool = False, retries: int = 5, retry_wait: float = 2.0, overwrite: bool = False,
        log=lambda m: None) -> dict:
    t0 = time.monotonic()
    parsed = [parse_target(t) for t in targets or ("hf",)]
    upload, local = load_plan(docs, artifacts, only)
    plan = describe_plan(upload, parsed)
    if any(t["kind"] == "ollama" for t in parsed) and not any(r["target"].startswith("ollama") for r in plan):
        raise InvalidInput("ollama target: no set with a Modelfile (pass the gguf-tool output and its docs)")
    for r in plan:
        if r["target"].startswith("ollama") and ollama_push and "/" not in r["destination"].split(":")[0]:
            raise UsageError(f"--ollama-push needs a model name with a namespace (a registry account), not "
                             f"{r['destination']!r}: use --to ollama:USER/NAME")
    if dry_run:
        return {"dry_run": True, "plan": plan}
    if out is None:
        raise UsageError("--out is required (the step manifest recording what was published), unless --dry-run")
    out = Path(out)
    inputs = {"docs": describe_input(Path(docs)), **{f"artifact_{s}": {"manifest_sha256": e["source"]["manifest_sha256"]}
                                                     for s, e in upload["sets"].items()}}
    params = {"targets": [t["spec"] for t in parsed], "sets": sorted(upload["sets"]), "private": private,
              "ollama_push": ollama_push}
    manifest = new_manifest(TOOL, inputs=inputs, parameters=params)
    retry = {"attempts": max(1, retries), "wait": retry_wait, "log": log}
    published: dict = {}
    manifest["published"] = published
    with atomic_output(out, overwrite=overwrite) as partial:
        for t in parsed:
            t1 = time.monotonic()
            published[t["spec"]] = _publish(t, upload, local, Path(docs).absolute(), private=private,
                                            ollama_push=ollama_push, retry=retry, log=log)
            manifest["timings"]["seconds"][t["spec"]] = round(time.monotonic() - t1, 3)
        manifest["versions"] = library_versions("huggingface_hub", "ollama")
        finish_manifest(manifest, partial, None, t0)
    return manifest


def _publish(target: dict, upload: dict, local: dict, docs: Path, *, private, ollama_push, retry, log) -> dict:
    if target["kind"] == "local":
        from .local import push_set

        return {s: push_set(Path(target["path"]), e, local[s], log) for s, e in upload["sets"].items()}
    if target["kind"] == "ollama":
        from .to_ollama import push_model

        s, entry = next((s, e) for s, e in upload["sets"].items() if e.get("ollama"))
        return {s: push_model(entry, local[s], docs / s / "Modelfile", name=target["name"], push=ollama_push,
                              retry=retry, log=log)}
    from huggingface_hub import HfApi

    from .hub import check_token, push_set

    api = HfApi()
    who = check_token(api, log)
    done = {s: push_set(api, e, local[s], private=private, retry=retry, log=log) for s, e in upload["sets"].items()}
    return {"user": who["user"], **done}
