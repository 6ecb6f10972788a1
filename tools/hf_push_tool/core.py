"""hf-push-tool's step: docs-tool's folder (upload manifest and cards) and the artifact folders in;
each artifact set published to each target; a step manifest recording where, with commit URLs.

Targets: ``hf`` (the repos named in the upload manifest), ``local:DIR`` (the same layout in a
folder), ``ollama`` or ``ollama:NAME`` (the GGUF set, created in an Ollama server). Artifact folders
are matched to sets by their manifest's sha256, never by path, so the same command works wherever
the folders are mounted."""

from __future__ import annotations

import time
from pathlib import Path

from upload_common.contract import describe_input
from upload_common.errors import InvalidInput, UsageError
from upload_common.safety import check_repo_id
from upload_common.step import Step

from . import net
from .upload_plan import describe_plan, load_plan

__all__ = ["run", "parse_target", "load_plan", "describe_plan"]

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


def run(
    docs,
    artifacts,
    out,
    *,
    targets=("hf",),
    only=(),
    private: bool = False,
    ollama_push: bool = False,
    dry_run: bool = False,
    retries: int = 5,
    retry_wait: float = 2.0,
    overwrite: bool = False,
    timeout: float | None = None,
    retry_budget: float | None = None,
    log=lambda m: None,
) -> dict:
    """Publish; ``timeout``: seconds without progress before a request fails (else
    UPLOAD_DRIVER_NET_TIMEOUT, else 60); ``retry_budget``: seconds an operation may spend on failed
    attempts and waits (else UPLOAD_DRIVER_RETRY_BUDGET, else five timeouts)."""
    t0 = time.monotonic()
    parsed = [parse_target(t) for t in targets or ("hf",)]
    net.configure(net.limits_from(timeout, retry_budget))
    upload, local = load_plan(docs, artifacts, only)
    if any(t["kind"] == "hf" for t in parsed):
        for s, e in upload["sets"].items():
            check_repo_id(
                e["repo_id"], f"the {s} set's repo id (docs-tool --namespace and --name)", namespace=True, usage=False
            )
    plan = describe_plan(upload, parsed)
    if any(t["kind"] == "ollama" for t in parsed) and not any(r["target"].startswith("ollama") for r in plan):
        raise InvalidInput("ollama target: no set with a Modelfile (pass the gguf-tool output and its docs)")
    for r in plan:
        if r["target"].startswith("ollama") and ollama_push and "/" not in r["destination"].split(":")[0]:
            raise UsageError(
                f"--ollama-push needs a model name with a namespace (a registry account), not "
                f"{r['destination']!r}: use --to ollama:USER/NAME"
            )
    if dry_run:
        return {"dry_run": True, "plan": plan}
    if out is None:
        raise UsageError("--out is required (the step manifest recording what was published), unless --dry-run")
    out = Path(out)
    sources = {f"artifact_{s}": {"manifest_sha256": e["source"]["manifest_sha256"]} for s, e in upload["sets"].items()}
    inputs = {"docs": describe_input(Path(docs)), **sources}
    params = {
        "targets": [t["spec"] for t in parsed],
        "sets": sorted(upload["sets"]),
        "private": private,
        "ollama_push": ollama_push,
    }
    retry = {"attempts": max(1, retries), "wait": retry_wait, "log": log}
    with Step(
        TOOL,
        out,
        inputs=inputs,
        params=params,
        overwrite=overwrite,
        libraries=("huggingface_hub", "ollama"),
        log=log,
        began=t0,
    ) as s:
        published = s.manifest["published"] = {}
        s.begin()  # from here a failed publish leaves error.json
        for t in parsed:
            with s.timed(t["spec"]):
                published[t["spec"]] = _publish(
                    t, upload, local, private=private, ollama_push=ollama_push, retry=retry, log=log
                )
    return s.manifest


def _publish(target: dict, upload: dict, local: dict, *, private, ollama_push, retry, log) -> dict:
    if target["kind"] == "local":
        from .local import push_set

        return {s: push_set(Path(target["path"]), e, local[s], log) for s, e in upload["sets"].items()}
    if target["kind"] == "ollama":
        from .to_ollama import push_model

        s, entry = next((s, e) for s, e in upload["sets"].items() if e.get("ollama"))
        return {s: push_model(entry, local[s], name=target["name"], push=ollama_push, retry=retry, log=log)}
    from huggingface_hub import HfApi

    from .hub import check_token, push_set

    with net.hub_client():  # every request with the timeout, huggingface_hub's own retries within the budget
        api = HfApi()
        who = check_token(api, log)
        done = {s: push_set(api, e, local[s], private=private, retry=retry, log=log) for s, e in upload["sets"].items()}
    return {"user": who["user"], **done}
