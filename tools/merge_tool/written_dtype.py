"""What a merge's files hold, read back from their safetensors headers, so the manifest describes the
files and not the plan: each floating dtype and how many tensors hold it, and every shard's size. An
engine that wrote its floats in another dtype than the one chosen (Unsloth saves float32 from a float32
base whatever it was asked) has its files converted, tensor by tensor, before they are described."""

from __future__ import annotations

import json
import os
from pathlib import Path

from upload_common.errors import UploadError
from upload_common.st_io import CODES, INDEX_NAME, file_specs, load_tensor, nbytes, write_stream

FLOATS = ("BF16", "F16", "F32", "F64")


def _shards(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def floats_in(folder: Path) -> dict[str, int]:
    """{safetensors dtype code: tensors} of the floating tensors in the folder's safetensors files."""
    found: dict[str, int] = {}
    for shard in _shards(folder):
        for spec in file_specs(shard).values():
            if spec["dtype"] in FLOATS:
                found[spec["dtype"]] = found.get(spec["dtype"], 0) + 1
    return dict(sorted(found.items()))


def conform(folder: Path, code: str) -> list[str]:
    """Rewrite each shard whose floating tensors are not all ``code`` in ``code`` (one tensor in memory at a
    time), with the shard index's total size and config.json's dtype to match; the shards rewritten."""
    import torch

    target = getattr(torch, CODES[code])
    rewritten, sizes = [], {}
    for shard in _shards(folder):
        specs = file_specs(shard)
        out = {n: {**s, "dtype": code if s["dtype"] in FLOATS else s["dtype"]} for n, s in specs.items()}
        sizes.update({n: nbytes(s) for n, s in out.items()})
        if out == specs:
            continue
        part = shard.with_name(shard.name + ".partial")

        write_stream(part, list(specs), out, lambda name, shard=shard, specs=specs: _cast(shard, name, specs, target))
        os.replace(part, shard)
        rewritten.append(shard.name)
    if rewritten:
        _set_total_size(Path(folder) / INDEX_NAME, sum(sizes.values()))
        _set_config_dtype(Path(folder) / "config.json", CODES[code])
    return rewritten


def _cast(shard: Path, name: str, specs: dict, target):
    tensor = load_tensor(shard, name)
    return tensor.to(target) if specs[name]["dtype"] in FLOATS else tensor


def _set_total_size(index: Path, total: int) -> None:
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2) + "\n")


def _set_config_dtype(config: Path, name: str) -> None:
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        for key in [k for k in ("dtype", "torch_dtype") if k in data] or ["dtype"]:
            data[key] = name
        config.write_text(json.dumps(data, indent=2) + "\n")


def read_back(folder: Path, code: str, decision: dict, converted: list[str] = ()) -> dict:
    """The manifest's ``decisions.dtype``: the planned ``decision`` with the tensors the files hold
    (``files``) and the shards converted after the engine wrote them; files that hold another floating
    dtype than ``code`` are refused rather than described wrongly."""
    found = floats_in(folder)
    other = {c: n for c, n in found.items() if c != code}
    if other:
        held = ", ".join(f"{n} {CODES[c]}" for c, n in other.items())
        raise UploadError(
            f"the merge's files hold {held} tensor(s), not the {CODES[code]} chosen ({decision.get('why')}): "
            "rerun with the default --engine streaming",
            files=found,
        )
    out = {**decision, "files": {CODES[c]: n for c, n in found.items()}}
    if converted:
        out["converted"] = {"shards": list(converted), "to": CODES[code]}
    return out
