"""Checking a GGUF against the Hugging Face model it came from: the same text tokenized by both,
then next-token distributions compared position by position (top-1 agreement, mean KL)."""

from __future__ import annotations

import os
from pathlib import Path

VALIDATION_TEXT = (
    "The old lighthouse keeper climbed the stairs every evening at dusk. He trimmed the wick, wound the "
    "clockwork and watched the ships pass far out at sea. One winter night a storm broke the glass, and he "
    "kept the lamp burning with his own hands until morning. When the harbour master asked him why, he "
    "answered that a light is only useful if it never goes out. Numbers help too: 3 ships, 12 sailors, "
    "and 1,024 waves were counted before sunrise."
)


def reference(model_dir: Path, text: str, max_tokens: int):
    """(token ids, log-probabilities [positions, vocab]) from transformers, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text).input_ids[:max_tokens]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return ids, torch.log_softmax(logits, -1).numpy()


def gguf_run(path: Path, ids: list[int], text: str, lora: Path | None = None):
    """(llama.cpp's own tokenization of ``text``, log-probabilities for ``ids``) on CPU."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=max(64, len(ids) + 8), logits_all=True, verbose=False,
                n_threads=os.cpu_count() or 1, n_gpu_layers=0, lora_path=str(lora) if lora else None)
    try:
        tokens = llm.tokenize(text.encode(), add_bos=bool(ids) and ids[0] == llm.token_bos(), special=False)
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()
    m = scores.max(-1, keepdims=True)
    return tokens, scores - m - np.log(np.exp(scores - m).sum(-1, keepdims=True))


def compare(ref, got) -> dict:
    import numpy as np

    p = np.exp(ref)
    kl = (p * (ref - got)).sum(-1)
    return {"positions": int(ref.shape[0]), "top1_agreement": round(float((ref.argmax(-1) == got.argmax(-1)).mean()), 4),
            "mean_kl": round(float(kl.mean()), 6), "max_kl": round(float(kl.max()), 6)}


def validate(path: Path, ref_ids: list[int], ref_logprobs, text: str, lora: Path | None = None) -> dict:
    tokens, got = gguf_run(path, ref_ids, text, lora)
    return {**compare(ref_logprobs, got), "tokenization_matches": list(tokens[: len(ref_ids)]) == list(ref_ids)}
