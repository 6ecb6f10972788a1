"""Adapters made by peft itself, and peft's own merge and forward pass as the reference."""

from __future__ import annotations

from pathlib import Path

import torch

INPUT_IDS = torch.tensor([[1, 17, 42, 99, 5, 250, 3, 77, 120, 33]])


def make_peft_adapter(base_dir: Path, out: Path, *, seed: int = 0, **lora_kwargs) -> Path:
    """Train nothing: build the adapter with peft and give every trainable tensor random values."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora_kwargs.setdefault("task_type", "CAUSAL_LM")
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                if "magnitude" in name:
                    p.mul_(1 + 0.3 * torch.rand_like(p))
                else:
                    p.add_(torch.randn_like(p) * 0.1)
    peft_model.save_pretrained(out)
    return Path(out)


def peft_reference(base_dir: Path, adapter_dir: Path):
    """(logits of PeftModel(base, adapter), state dict of merge_and_unload), in fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        logits = model(INPUT_IDS).logits
    merged = model.merge_and_unload()
    return logits, {k: v.detach().clone() for k, v in merged.state_dict().items()}


def model_logits(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(INPUT_IDS).logits


def read_tensors(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out
