"""Checking a GGUF against the Hugging Face model it came from: the same text tokenized by both,
then next-token distributions compared position by position (top-1 agreement, mean KL). Either
side computing NaN or infinity fails the check with one line (upload_common.quality.compare)."""

from __future__ import annotations

import os
from pathlib import Path

from upload_common.quality import VALIDATION_TEXT, compare, described_reference  # noqa: F401 (used as val.*)


def gguf_run(path: Path, ids: list[int], text: str, lora: Path | None = None):
    """(llama.cpp's own tokenization of ``text``, log-probabilities for ``ids``) on CPU."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=max(64, len(ids) + 8),
        logits_all=True,
        verbose=False,
        n_threads=os.cpu_count() or 1,
        n_gpu_layers=0,
        lora_path=str(lora) if lora else None,
    )
    try:
        tokens = llm.tokenize(text.encode(), add_bos=bool(ids) and ids[0] == llm.token_bos(), special=False)
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()
    m = scores.max(-1, keepdims=True)
    return tokens, scores - m - np.log(np.exp(scores - m).sum(-1, keepdims=True))


def validate(path: Path, ref_ids: list[int], ref_logprobs, text: str, lora: Path | None = None) -> dict:
    tokens, got = gguf_run(path, ref_ids, text, lora)
    figures = compare(ref_logprobs, got, names=("Hugging Face", f"GGUF ({Path(path).name})"))
    return {**figures, "tokenization_matches": list(tokens[: len(ref_ids)]) == list(ref_ids)}
