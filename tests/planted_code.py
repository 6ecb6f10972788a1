"""Code references planted in model folders, for the hostile-code tests (test_hostile_code.py,
test_hostile_code_converter.py): a tokenizer_config.json whose auto_map names a payload, JSON edits, gguf-tool's
CLI."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from conftest import payload
from gguf_tool.cli import main as gguf_main

TOKEN = "hf_plantedSecretToken"
LOCAL_REF = "tok.EvilTokenizer"


def edit_json(path: Path, **changes) -> dict:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))
    return data


def plant_tokenizer(folder: Path, marker: Path, ref: str = LOCAL_REF, tokenizer_class: str | None = None) -> dict:
    """tokenizer_config.json naming ``ref`` in auto_map (with tok.py beside it); the class kept unless given."""
    (folder / "tok.py").write_text(payload(marker))
    changes = {"auto_map": {"AutoTokenizer": [ref, None]}}
    if tokenizer_class:
        changes["tokenizer_class"] = tokenizer_class
    return edit_json(folder / "tokenizer_config.json", **changes)


def gguf_cli(*args):
    return CliRunner().invoke(gguf_main, [str(a) for a in args])
