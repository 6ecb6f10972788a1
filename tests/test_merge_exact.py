"""merged_16bit equals peft: tensors against merge_and_unload, logits against PeftModel."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tree_hash
from merge_tool.core import run
from peft_helpers import make_peft_adapter, model_logits, peft_reference, read_tensors
from upload_common.sample import make_base

LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = {
    "llama": ("llama", {}, dict(r=8, lora_alpha=16, target_modules=LLAMA)),
    "llama-rslora-patterns": (
        "llama",
        {},
        dict(
            r=8,
            lora_alpha=16,
            target_modules=LLAMA,
            use_rslora=True,
            rank_pattern={"v_proj": 4, "layers.1.mlp.down_proj": 2},
            alpha_pattern={"q_proj": 3, "gate_proj": 64},
        ),
    ),
    "llama-dora": (
        "llama",
        {},
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True),
    ),
    "qwen2-lora-bias": (
        "qwen2",
        {},
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"], lora_bias=True),
    ),
    "mistral": ("mistral", {}, dict(r=8, lora_alpha=32, target_modules=LLAMA)),
    "gpt2-fan-in-fan-out": (
        "gpt2",
        {},
        dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    ),
    "llama-modules-to-save": (
        "llama",
        {},
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"]),
    ),
    "llama-embedding-lora": ("llama", {}, dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"])),
    "tied-embedding-lora": ("llama", {"tie": True}, dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"])),
    "tied-head-saved": (
        "llama",
        {"tie": True},
        dict(r=4, lora_alpha=8, target_modules=["v_proj"], modules_to_save=["lm_head"]),
    ),
    "tied-untouched": ("qwen2", {"tie": True}, dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"])),
}


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tokenizer_dir):
    made = {}

    def get(family, cfg):
        key = (family, tuple(sorted(cfg.items())))
        if key not in made:
            made[key] = make_base(tmp_path_factory.mktemp(family) / "base", family, tokenizer_dir=tokenizer_dir, **cfg)
        return made[key]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_merge_matches_peft(case, bases, tmp_path, monkeypatch):
    """Merged in row blocks of a few rows, so the blockwise maths is what is checked here."""
    from merge_tool.formats import merged_16bit

    monkeypatch.setattr(merged_16bit, "CHUNK_ELEMENTS", 200)
    family, base_cfg, lora = CASES[case]
    base = bases(family, base_cfg)
    adapter = make_peft_adapter(base, tmp_path / "adapter", **lora)
    before = tree_hash(adapter)
    ref_logits, ref_state = peft_reference(base, adapter)
    out = tmp_path / "merged"
    manifest = run(adapter, out, base=str(base), dtype="fp32", device="cpu")

    assert tree_hash(adapter) == before
    assert (out / "manifest.json").is_file()
    assert manifest["decisions"]["lora_modules"] > 0
    logits = model_logits(out)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    merged = read_tensors(out)
    tied_changed = base_cfg.get("tie") and "untouched" not in case
    for name, tensor in merged.items():
        if name in ref_state and not (tied_changed and name == "lm_head.weight"):
            torch.testing.assert_close(tensor, ref_state[name], atol=1e-5, rtol=0, msg=name)
    if tied_changed:
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
        assert "lm_head.weight" in merged and manifest["warnings"]
    if case == "tied-untouched":
        assert "lm_head.weight" not in merged


def test_resized_vocabulary(bases, tmp_path):
    """A trainer that added tokens saves full embed_tokens/lm_head of the new size."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = bases("llama", {})
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(400)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"])
    )
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        ref = peft_model.eval()(torch.tensor([[1, 390, 5, 399]])).logits
    out = tmp_path / "merged"
    manifest = run(tmp_path / "adapter", out, base=str(base), dtype="fp32", device="cpu")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 400
    assert any("resized" in w for w in manifest["warnings"])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(torch.tensor([[1, 390, 5, 399]])).logits, ref, atol=1e-4, rtol=1e-4)


def test_bf16_base_defaults_to_bf16_and_rounds_once(tmp_path, tokenizer_dir):
    base = make_base(tmp_path / "base", "llama", dtype="bfloat16", tokenizer_dir=tokenizer_dir)
    adapter = make_peft_adapter(base, tmp_path / "adapter", r=8, lora_alpha=16, target_modules=LLAMA)
    out = tmp_path / "merged"
    manifest = run(adapter, out, base=str(base), device="cpu")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and manifest["decisions"]["dtype"]["value"] == "bfloat16"
    merged = read_tensors(out)
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    # exact fp32 merge of the bf16 base, then one rounding: our result is that rounding, bit for bit
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    fp32 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    truth = fp32.merge_and_unload().state_dict()
    for name, t in merged.items():
        assert torch.equal(t, truth[name].to(torch.bfloat16)), name


def test_sharding_and_tokenizer(sft_output, llama_base, tmp_path):
    out = tmp_path / "merged"
    manifest = run(sft_output, out, base=str(llama_base), dtype="bf16", max_shard_size="100KB", device="cpu")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    for name in ("tokenizer.model", "tokenizer_config.json", "config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    listed = {o["path"]: o for o in manifest["outputs"]}
    import hashlib

    for s in shards:
        assert listed[s]["sha256"] == hashlib.sha256((out / s).read_bytes()).hexdigest()
    assert manifest["decisions"]["adapter"]["source"] == "root"
    assert manifest["training"]["trainer"]["kind"] == "sft"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok("hello world").input_ids
