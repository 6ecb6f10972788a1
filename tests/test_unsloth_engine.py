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

    def save_merged(adapter_dir, folder, dtype):
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        weights = hashlib.sha256((adapter_dir / "adapter_model.safetensors").read_bytes()).hexdigest()
        asked.append({"dtype": dtype, "base": config["base_model_name_or_path"], "weights": weights})
        assert sorted(p.name for p in adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        for f in merges["fp32"].iterdir():
            if f.suffix == ".safetensors" or f.name in ("config.json", "model.safetensors.index.json"):
                shutil.copy2(f, Path(folder) / f.name)

    monkeypatch.setattr(unsloth_engine, "check_available", lambda: "2026.10.9 (stand-in)")
    monkeypatch.setattr(unsloth_engine, "save_merged", save_merged)
    return asked


def test_float32_from_the_engine_is_converted_to_the_dtype_chosen(
    fake_unsloth, merges, sft_output, llama_base, tmp_path
):
    out = tmp_path / "merged"
    manifest = merge_run(sft_output, out, base=str(llama_base), dtype="bf16", engine="unsloth", max_shard_size="200KB")
    # --dtype reaches the engine, and the adapter it reads names the base merge-tool resolved (not the Hub name
    # the adapter config gives), with the chosen adapter's weights; that view of it is gone afterwards
    chosen = hashlib.sha256((sft_output / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert fake_unsloth == [{"dtype": "BF16", "base": str(llama_base), "weights": chosen}]
    assert not (out / unsloth_engine.VIEW).exists()
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


def test_the_driver_runs_an_unsloth_merge_in_merge_tools_unsloth_image(sft_output, llama_base, tmp_path):
    from upload_common.trainer_output import inspect_trainer_output
    from upload_driver.config import request
    from upload_driver.plan import image, plan

    def steps(engine: str | None) -> dict:
        merge = {"base": str(llama_base), **({"engine": engine} if engine else {})}
        req = request(sft_output, work=str(tmp_path / "w"), settings={"formats": ["gguf"], "merge": merge})
        return {s.name: s for s in plan(req, inspect_trainer_output(req.trainer_output))}

    unsloth, streaming = steps("unsloth"), steps(None)
    merged = unsloth["merged_16bit"]
    assert merged.image == image("merge-tool") + "-unsloth-cuda"
    assert [a for a in merged.args if a in ("--engine", "unsloth")] == ["--engine", "unsloth"]
    assert "--defer-weights" not in merged.args and "base" not in unsloth["gguf"].inputs  # Unsloth writes it whole
    assert streaming["merged_16bit"].image == image("merge-tool") and "--engine" not in streaming["merged_16bit"].args
    assert "--defer-weights" in streaming["merged_16bit"].args  # the default engine defers into the conversion
    assert unsloth["gguf"].image == streaming["gguf"].image == image("gguf-tool")


def test_an_unknown_merge_engine_is_one_line(sft_output, tmp_path):
    from driver_helpers import drive, one_line_error

    config = tmp_path / "run.toml"
    config.write_text('[merge]\nengine = "turbo"\n')
    line = one_line_error(drive("run", sft_output, "--config", config, "--work", tmp_path / "w", "--dry-run"), 2)
    assert "merge.engine 'turbo': choose streaming or unsloth" in line
    assert not (tmp_path / "w").exists()


ROOT = Path(__file__).resolve().parent.parent
# what unsloth 2026.10.9 and unsloth_zoo 2026.10.9 require (their wheels' METADATA), and what the pinned
# transformers 5.17.0 and datasets 4.8.5 require in turn, where constraints.txt's pins fall outside it
REQUIRED = {
    "transformers": "!=4.53.0,!=4.54.0,!=4.55.0,!=4.55.1,!=4.57.0,!=4.57.4,!=4.57.5,!=5.0.0,!=5.1.0,<=5.17.0,>=4.52.4",
    "datasets": "!=4.0.*,!=4.1.0,!=4.4.*,!=4.5.0,<5.0.0,>=3.4.1",
    "trl": "!=0.19.0,<=1.15.0,>=0.18.2",
    "huggingface_hub": "<2.0,>=1.5.0",
    "fsspec": "<=2026.2.0,>=2023.1.0",
    "peft": "!=0.11.0,>=0.18.0",
    "bitsandbytes": "!=0.46.0,!=0.48.0,>=0.45.5",
    "torch": "<2.15.0,>=2.4.0",
}


def _pins(name: str) -> tuple[dict[str, str], set[str]]:
    text = (ROOT / name).read_text()
    pins = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            package, _, version = line.partition("==")
            pins[package.strip().lower().replace("-", "_")] = version.strip()
    overrides = {w.lower() for line in text.splitlines() if line.startswith("# OVERRIDES:") for w in line.split()[2:]}
    return pins, overrides


def test_the_unsloth_constraints_are_the_projects_but_for_what_unsloth_needs():
    from packaging.specifiers import SpecifierSet

    ours, _ = _pins("constraints.txt")
    unsloth, overrides = _pins("constraints-unsloth.txt")
    assert overrides == {"transformers", "huggingface_hub", "datasets", "fsspec", "trl", "unsloth", "unsloth_zoo"}
    same = {p: v for p, v in unsloth.items() if p not in overrides}
    assert same == {p: v for p, v in ours.items() if p not in overrides}  # nothing else drifts
    for package, spec in REQUIRED.items():
        assert unsloth[package] in SpecifierSet(spec), (package, unsloth[package], spec)
    assert unsloth["unsloth"] == unsloth["unsloth_zoo"] == "2026.10.9"
    assert ours["transformers"] not in SpecifierSet(REQUIRED["transformers"])  # why the file exists
