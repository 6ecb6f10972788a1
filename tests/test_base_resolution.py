"""Base model resolution: local folders, the Hugging Face cache, and bitsandbytes (QLoRA) bases."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from merge_tool.base import resolve_base, unquantized_names
from merge_tool.core import run
from peft_helpers import read_tensors
from upload_common.errors import BaseModelUnavailable
from upload_common.sample import make_lora_adapter


def put_in_cache(cache, repo_id: str, folder) -> None:
    """Lay a model folder out as huggingface_hub's cache does (refs/main -> snapshots/<commit>)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = (repo_id.encode().hex() * 40)[:40]
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def bnb_bases(tmp_path_factory, llama_base):
    """The fixture base quantized by bitsandbytes on CPU (4-bit nf4 with double quantization, and
    8-bit), saved as a QLoRA trainer would find them; and its dequantized weights as reference."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    root = tmp_path_factory.mktemp("bnb")
    made = {}
    for kind, qcfg in {
        "4bit": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        "8bit": BitsAndBytesConfig(load_in_8bit=True),
    }.items():
        model = AutoModelForCausalLM.from_pretrained(llama_base, quantization_config=qcfg, device_map="cpu")
        model.save_pretrained(root / kind)
        for f in llama_base.glob("tokenizer*"):
            shutil.copy(f, root / kind)
        model.dequantize(dtype=torch.float32)
        made[kind] = (root / kind, {k: v.float() for k, v in model.state_dict().items()})
    return made


def test_names_of_unquantized_originals():
    assert unquantized_names("unsloth/llama-3-8b-Instruct-bnb-4bit") == ["unsloth/llama-3-8b-Instruct"]
    assert unquantized_names("unsloth/Qwen2.5-7B-unsloth-bnb-4bit") == ["unsloth/Qwen2.5-7B"]
    assert unquantized_names("meta-llama/Llama-3.1-8B") == []


def test_hub_id_from_cache(hub_cache, llama_base):
    put_in_cache(hub_cache, "acme/tiny", llama_base)
    found = resolve_base(None, {"base_model_name_or_path": "acme/tiny"})
    assert found["source"] == "hub" and found["repo_id"] == "acme/tiny" and not found["quantized"]
    assert (found["path"] / "config.json").is_file()


def test_missing_offline_says_pass_base(hub_cache):
    with pytest.raises(BaseModelUnavailable, match="--base"):
        resolve_base(None, {"base_model_name_or_path": "acme/absent"})
    with pytest.raises(BaseModelUnavailable, match="--base"):
        resolve_base(None, {})
    with pytest.raises(BaseModelUnavailable, match="neither a folder nor a Hub id"):
        resolve_base("./no/such/dir/x/y", {})


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_merge_into_dequantized_bnb_base(kind, bnb_bases, llama_base, tmp_path, hub_cache):
    """No 16-bit original to be had: merge into the dequantized weights, loudly, exactly."""
    folder, dequantized = bnb_bases[kind]
    repo = f"acme/tiny-bnb-{kind[0]}bit"
    put_in_cache(hub_cache, repo, folder)
    adapter = make_lora_adapter(llama_base, tmp_path / "adapter", base_name=repo)
    out = tmp_path / "merged"
    manifest = run(adapter, out, dtype="fp32", device="cpu", log=lambda m: None)
    assert manifest["decisions"]["base"]["quantized"] == f"bnb-{kind}"
    assert any("DEQUANTIZED" in w for w in manifest["warnings"])
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    merged = read_tensors(out)
    assert set(merged) == {k for k in dequantized if k != "lm_head.weight" or "lm_head.weight" in merged}
    a_cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = a_cfg["lora_alpha"] / a_cfg["r"]
    lora = read_tensors(adapter)
    name = "model.layers.1.mlp.down_proj.weight"
    a = lora[f"base_model.model.{name[:-7]}.lora_A.weight"]
    b = lora[f"base_model.model.{name[:-7]}.lora_B.weight"]
    # transformers' own dequantization of 8-bit weights passes through fp16; ours stays in fp32
    tol = 1e-5 if kind == "4bit" else 2e-3
    torch.testing.assert_close(merged[name], dequantized[name] + scale * (b @ a), atol=tol, rtol=1e-5)
    torch.testing.assert_close(merged["model.norm.weight"], dequantized["model.norm.weight"])


def test_prefers_16bit_original(bnb_bases, llama_base, hub_cache, tmp_path):
    folder, _ = bnb_bases["4bit"]
    put_in_cache(hub_cache, "acme/tiny-bnb-4bit", folder)
    put_in_cache(hub_cache, "acme/tiny", llama_base)
    adapter = make_lora_adapter(llama_base, tmp_path / "adapter", base_name="acme/tiny-bnb-4bit")
    manifest = run(adapter, tmp_path / "merged", dtype="fp32", device="cpu")
    base = manifest["decisions"]["base"]
    assert base["repo_id"] == "acme/tiny" and base["replaces"] == "acme/tiny-bnb-4bit" and not base["quantized"]
    assert not any("DEQUANTIZED" in w for w in manifest["warnings"])
    assert manifest["inputs"]["base"]["repo_id"] == "acme/tiny"
