"""Artifact sets: what each step output is and how it is published (repo name, card metadata).

Every set is a row of ``upload_common.sets`` (its ``publish`` facts). A step output is recognised
by its manifest's tool name and method, so a set added to the registry is picked up with no change
here."""

from __future__ import annotations

from pathlib import Path

from upload_common.contract import read_manifest
from upload_common.errors import InvalidInput, UsageError
from upload_common.merge_stream import is_deferred
from upload_common.safety import check_repo_id
from upload_common.sets import SETS

# Default file the Ollama Modelfile and the snippets point at, in order of preference.
PREFERRED_QUANTS = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "F16", "BF16")
MAX_NAME = 96  # the Hub's limit on a repo name (the part after the namespace)


def set_specs() -> dict:
    """Every publishable set, in registry order (merge-tool's formats, then GGUF): its tool and
    publish facts as a dict."""
    return {k: {"tool": s.tool, **s.publish.as_dict()} for k, s in SETS.items()}


def identify(folder) -> tuple[str, dict, dict]:
    """(set name, spec, manifest) of a step output folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest:
        raise InvalidInput(
            f"{folder} has no manifest.json: pass a finished output folder of merge-tool or gguf-tool "
            "(a folder without a manifest is not an output)",
            path=str(folder),
        )
    tool = (manifest.get("tool") or {}).get("name")
    name = "gguf" if tool == "gguf-tool" else (manifest.get("parameters") or {}).get("method")
    specs = set_specs()
    if name not in specs or specs[name]["tool"] != tool:
        raise InvalidInput(
            f"{folder} is an output of {tool or 'an unknown tool'}"
            f"{f' ({name})' if name else ''}, which docs-tool cannot present: pass outputs of "
            f"{', '.join(sorted(specs))}",
            path=str(folder),
        )
    if is_deferred(manifest):
        raise InvalidInput(
            f"{folder} is a merge whose weights were left to gguf-tool (merge-tool --defer-weights): it holds no "
            "model to publish; make merged_16bit without --defer-weights to publish the merged model",
            path=str(folder),
        )
    return name, specs[name], manifest


def check_overrides(overrides: dict | None) -> dict:
    """``--repo SET=REPO_ID`` as given: each a known set and a valid Hub repo id, checked before any
    work (a repo id becomes a folder under the local publish target and a URL path on the Hub)."""
    specs, overrides = set_specs(), dict(overrides or {})
    unknown = sorted(set(overrides) - set(specs))
    if unknown:
        raise UsageError(f"--repo names unknown set(s) {', '.join(unknown)}: choose among {', '.join(sorted(specs))}")
    for s, repo in overrides.items():
        check_repo_id(repo, f"--repo {s}")
    return overrides


def repo_ids(name: str, namespace: str | None, sets, overrides: dict | None = None) -> dict:
    """``<namespace>/<name><suffix>`` for each set, unless ``overrides`` names it; every one a valid Hub
    repo id, and no two sets in the same repo (the Hub compares names without case)."""
    specs, overrides = set_specs(), check_overrides(overrides)
    prefix = f"{namespace}/" if namespace else ""
    repos: dict[str, str] = {}
    for s in sets:
        repo = overrides.get(s)
        if not repo:
            suffix = specs[s]["suffix"]
            if len(name) + len(suffix) > MAX_NAME:
                raise UsageError(
                    f"the {s} repo name (the name and {suffix!r}) would be {len(name) + len(suffix)} "
                    f"characters, over the Hub's {MAX_NAME}: pass a --name of at most "
                    f"{MAX_NAME - len(suffix)} characters, or --repo {s}=NAMESPACE/NAME",
                    set=s,
                    length=len(name) + len(suffix),
                )
            repo = f"{prefix}{name}{suffix}"
        repos[s] = check_repo_id(repo, f"the {s} set's repo id")
    seen: dict[str, str] = {}
    for s, repo in repos.items():
        first = seen.setdefault(repo.casefold(), s)
        if first != s:
            raise UsageError(
                f"the {first} and {s} sets would both be published to {repo}: give one of them another "
                f"repo with --repo {s}=NAMESPACE/NAME",
                repo_id=repo,
            )
    return repos
