"""Artifact sets: what each step output is and how it is published (repo name, card metadata).

merge-tool's formats say it in their registry row (``publish``); gguf-tool's set is the one row
here. A step output is recognised by its manifest's tool name and method, so a format added to
the registry is picked up with no change here."""

from __future__ import annotations

from pathlib import Path

from upload_common.contract import read_manifest
from upload_common.errors import InvalidInput

GGUF = {"suffix": "-GGUF", "relation": "quantized", "library": "gguf", "title": "GGUF files",
        "tags": ["gguf", "llama.cpp"]}
# Default file the Ollama Modelfile and the snippets point at, in order of preference.
PREFERRED_QUANTS = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "F16", "BF16")


def set_specs() -> dict:
    """Every publishable set: merge-tool's formats, then GGUF."""
    from merge_tool.formats import FORMATS

    return {**{k: {"tool": "merge-tool", **row["publish"]} for k, row in FORMATS.items() if "publish" in row},
            "gguf": {"tool": "gguf-tool", **GGUF}}


def identify(folder) -> tuple[str, dict, dict]:
    """(set name, spec, manifest) of a step output folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest:
        raise InvalidInput(f"{folder} has no manifest.json: pass a finished output folder of merge-tool or gguf-tool "
                           "(a folder without a manifest is not an output)", path=str(folder))
    tool = (manifest.get("tool") or {}).get("name")
    name = "gguf" if tool == "gguf-tool" else (manifest.get("parameters") or {}).get("method")
    specs = set_specs()
    if name not in specs or specs[name]["tool"] != tool:
        raise InvalidInput(f"{folder} is an output of {tool or 'an unknown tool'}"
                           f"{f' ({name})' if name else ''}, which docs-tool cannot present: pass outputs of "
                           f"{', '.join(sorted(specs))}", path=str(folder))
    return name, specs[name], manifest


def repo_ids(name: str, namespace: str | None, sets, overrides: dict | None = None) -> dict:
    """``<namespace>/<name><suffix>`` for each set, unless ``overrides`` names it."""
    specs, overrides = set_specs(), overrides or {}
    unknown = sorted(set(overrides) - set(specs))
    if unknown:
        raise InvalidInput(f"--repo names unknown set(s) {', '.join(unknown)}: choose among {', '.join(sorted(specs))}")
    prefix = f"{namespace}/" if namespace else ""
    return {s: overrides.get(s) or f"{prefix}{name}{specs[s]['suffix']}" for s in sets}
