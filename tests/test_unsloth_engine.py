"""--engine unsloth tells the truth about its files: what it writes in another floating dtype than the
one chosen (Unsloth keeps a float32 base in float32, whatever it was asked) is converted before the
manifest describes it, and the manifest's dtype is read back from the files, for every engine. The real
Unsloth needs a CUDA GPU (bench/gpu_check.py runs it there); here a stand-in writes what it writes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from merge_tool import unsloth_engine
from merge_tool.core import run as merge_run
from merge_tool.written_dtype import floats_in, read_back
from upload_common.errors import UploadError


def _tensors(folder: Path) -> dict:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118 - safe_open is not a dict
    return out


@pytest.fixture(scope="module")
def merges(sft_output, llama_base, tmp_path_factory) -> dict[str, Path]:
    """The streaming merge in float32 (what Unsloth writes from a float32 base) and in bfloat16."""
    tmp = tmp_path_factory.mktemp("unsloth")
    made = {}
    for dtype in ("fp32", "bf16"):
        made[dtype] = tmp / dtype
        merge_run(sft_output, made[dtype], base=str(llama_base), dtype=dtype, max_shard_size="200KB")
    return made


@pytest.fixture
def fake_unsloth(monkeypatch, merges):
    """Unsloth's save as it behaves on a float32 base: float32 shards, config.json saying float32."""
    asked = []

    def write(adapter_dir, folder, dtype):
        asked.append(dtype)
        for f in merges["fp32"].iterdir():
            if f.suffix == ".safetensors" or f.name in ("config.json", "model.safetensors.index.json"):
                shutil.copy2(f, Path(folder) / f.name)

    monkeypatch.setattr(unsloth_engine, "check_available", lambda: "2026.10.9 (stand-in)")
    monkeypatch.setattr(unsloth_engine, "write", write)
    return asked


def test_float32_from_the_engine_is_converted_to_the_dtype_chosen(
    fake_unsloth, merges, sft_output, llama_base, tmp_path
):
    out = tmp_path / "merged"
    manifest = merge_run(sft_output, out, base=str(llama_base), dtype="bf16", engine="unsloth", max_shard_size="200KB")
    assert fake_unsloth == ["BF16"]  # --dtype reaches the engine
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and floats_in(out) == floats_in(merges["bf16"]) == {"BF16": len(_tensors(out))}
    dtype = manifest["decisions"]["dtype"]
    assert dtype["value"] == "bfloat16" and dtype["files"] == {"bfloat16": len(_tensors(out))}
    assert dtype["converted"] == {"shards": shards, "to": "bfloat16"}
    config = json.loads((out / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "bfloat16"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in _tensors(out).values())
    # float32 rounded once to bfloat16 is exactly what the streaming merge writes in bfloat16
    ours, streaming = _tensors(out), _tensors(merges["bf16"])
    assert ours.keys() == streaming.keys() and all(ours[k].equal(streaming[k]) for k in ours)
    recorded = {f["path"]: f for f in manifest["outputs"]}
    for shard in shards:  # the sizes and hashes described are those of the files on disk
        assert recorded[shard]["size"] == (out / shard).stat().st_size
        assert recorded[shard]["sha256"] == hashlib.sha256((out / shard).read_bytes()).hexdigest()
    assert "merged by unsloth 2026.10.9 (stand-in)" in " ".join(manifest["warnings"])


def test_the_streaming_engine_reads_its_dtype_back_too(merges):
    manifest = json.loads((merges["fp32"] / "manifest.json").read_text())
    n = len(_tensors(merges["fp32"]))
    assert (
        manifest["decisions"]["dtype"]["files"] == {"float32": n} and "converted" not in manifest["decisions"]["dtype"]
    )


def test_files_in_another_dtype_than_recorded_are_refused_in_one_line(merges):
    with pytest.raises(UploadError) as info:
        read_back(merges["fp32"], "BF16", {"value": "bfloat16", "why": "--dtype bf16"})
    message = info.value.message
    assert "float32 tensor(s), not the bfloat16 chosen (--dtype bf16)" in message and "\n" not in message
