"""How close an exported model stays to the model it came from: the same text through both, then
next-token distributions compared position by position (top-1 agreement, KL divergence).
gguf-tool compares llama.cpp with transformers; merge-tool's quantized formats compare the
quantized checkpoint with the 16-bit merge, both through transformers."""

from __future__ import annotations

from pathlib import Path

VALIDATION_TEXT = (
    "The old lighthouse keeper climbed the stairs every evening at dusk. He trimmed the wick, wound the "
    "clockwork and watched the ships pass far out at sea. One winter night a storm broke the glass, and he "
    "kept the lamp burning with his own hands until morning. When the harbour master asked him why, he "
    "answered that a light is only useful if it never goes out. Numbers help too: 3 ships, 12 sailors, "
    "and 1,024 waves were counted before sunrise."
)


def logprobs(model, ids: list[int]):
    """Next-token log-probabilities [positions, vocab] (float64 numpy) of a transformers model."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device)).logits[0].double()
    return torch.log_softmax(logits, -1).cpu().numpy()


def reference(model_dir: Path, text: str, max_tokens: int, device: str = "cpu"):
    """(token ids, log-probabilities) of the Hugging Face model in ``model_dir``, in fp32 on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text).input_ids[:max_tokens]
    placement = {"device_map": device} if device != "cpu" else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **placement).eval()
    return ids, logprobs(model, ids)


def compare(ref, got) -> dict:
    import numpy as np

    p = np.exp(ref)
    kl = (p * (ref - got)).sum(-1)
    return {"positions": int(ref.shape[0]), "top1_agreement": round(float((ref.argmax(-1) == got.argmax(-1)).mean()), 4),
            "mean_kl": round(float(kl.mean()), 6), "max_kl": round(float(kl.max()), 6)}
