"""Skipping work already done, by content: a step's key is the hash of its tool and version, its
arguments (paths replaced by what they point at) and the identity of each input (a step output's
manifest hash, a file's sha256, a folder's names/sizes/mtimes). A step is skipped when its output's
manifest is the one recorded under the same key; never because a folder exists."""

from __future__ import annotations

import json
from pathlib import Path

from upload_common import __version__
from upload_common.contract import MANIFEST, canonical_sha256, describe_input, now_iso, sha256_file, write_json_atomic

from .plan import render

STATE = ".upload-driver/state.json"


def _identity(path: Path) -> dict:
    return {k: v for k, v in describe_input(Path(path)).items() if k != "path"}


def step_key(step: dict) -> str:
    # where it publishes is part of what it does; the device changes how, not what
    args = render(step, inp=lambda k: f"in:{k}", out=lambda: "out", rw=lambda k: f"rw:{step['rw'][k]}", device="")
    return canonical_sha256({"tool": step["tool"], "version": __version__, "args": args,
                             "inputs": {k: _identity(p) for k, p in sorted(step["inputs"].items())}})


def load(work: Path) -> dict:
    try:
        return json.loads((Path(work) / STATE).read_text())
    except (OSError, ValueError):
        return {}


def up_to_date(work: Path, step: dict, key: str) -> bool:
    rec = load(work).get(step["name"])
    manifest = Path(step["out"]) / MANIFEST
    return bool(rec) and rec.get("key") == key and manifest.is_file() and sha256_file(manifest) == rec.get("manifest")


def record(work: Path, step: dict, key: str, seconds: float) -> None:
    path = Path(work) / STATE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = load(work)
    state[step["name"]] = {"key": key, "manifest": sha256_file(Path(step["out"]) / MANIFEST), "finished": now_iso(),
                           "seconds": round(seconds, 3)}
    write_json_atomic(path, state)
