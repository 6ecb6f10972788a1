"""Checking GGUF files: the 16-bit file against the Hugging Face model (transformers, fp32), then each
quantized file against the 16-bit file inside llama.cpp (the method of llama-perplexity
--kl-divergence: the 16-bit file's log-probabilities are computed once, kept in a content-addressed
file, and every quant is compared with them chunk by chunk). Figures per file: top-1 agreement, mean,
p99 and largest KL, the perplexity of reference and file, and whether llama.cpp tokenizes the text as
the Hugging Face tokenizer does. Either side computing NaN or infinity fails the check with one line
(upload_common.quality.Agreement). llama.cpp runs on the GPU when its build and the machine have one,
on the CPU otherwise, or when the GPU load fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from upload_common.eval_reference import Stored, Tokens
from upload_common.quality import Agreement

ROWS = 64


def gpu_offload() -> bool:
    """Whether this llama.cpp build can put layers on a GPU (a CUDA, Metal or Vulkan build)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _open(path: Path, n_ctx: int, lora: Path | None, info: dict):
    """A llama.cpp model for scoring: every layer on the GPU where offload is possible, else (or when that
    load fails) on the CPU; ``info["device"]`` says which."""
    from llama_cpp import Llama

    tries = [("GPU", -1), ("CPU", 0)] if gpu_offload() else [("CPU", 0)]
    for device, layers in tries:
        try:
            llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                logits_all=True,
                verbose=False,
                n_threads=os.cpu_count() or 1,
                n_gpu_layers=layers,
                lora_path=str(lora) if lora else None,
            )
        except (ValueError, RuntimeError) as exc:
            if layers == 0:
                raise
            info["gpu_failed"] = str(exc)[:200]
            continue
        info["device"] = device
        return llm
    raise AssertionError("unreachable")


def logprob_chunks(path: Path, tokens: Tokens, lora: Path | None, info: dict) -> Iterator:
    """llama.cpp's log-probabilities [positions, vocab] (float32) for each chunk, each in a fresh context."""
    import numpy as np

    llm = _open(path, len(tokens.chunks[0]), lora, info)
    try:
        info["tokenization_matches"] = _same_tokens(llm, tokens)
        for chunk in tokens.chunks:
            llm.reset()
            llm.eval(list(chunk))
            scores = llm.scores[: len(chunk)]
            out = np.empty(scores.shape, dtype=np.float32)
            for lo in range(0, len(chunk), ROWS):
                s = scores[lo : lo + ROWS].astype(np.float64)
                m = s.max(-1, keepdims=True)
                out[lo : lo + ROWS] = s - m - np.log(np.exp(s - m).sum(-1, keepdims=True))
            yield out
    finally:
        llm.close()


def tokenizes_alike(path: Path, tokens: Tokens) -> bool:
    """Whether llama.cpp's tokenizer (the file's vocabulary only) gives the Hugging Face tokens for the text."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return _same_tokens(llm, tokens)
    finally:
        llm.close()


def _same_tokens(llm, tokens: Tokens) -> bool:
    bos = bool(tokens.ids) and tokens.ids[0] == llm.token_bos()
    got = llm.tokenize(tokens.text.text.encode(), add_bos=bos, special=True)
    return list(got[: len(tokens.ids)]) == list(tokens.ids)


def against(reference: Stored, got_chunks, tokens: Tokens, names: tuple[str, str]) -> dict:
    """The figures of ``got_chunks`` (one [positions, vocab] array per chunk) against the stored reference."""
    agreement = Agreement(names)
    for i, got in enumerate(got_chunks):
        agreement.add(reference.logprobs[i], got, tokens.chunks[i])
    return agreement.figures()


def check(path: Path, reference: Stored, tokens: Tokens, names: tuple[str, str], lora: Path | None = None):
    """One GGUF file (with ``lora``: the adapter applied over it) against the reference: its figures, with
    ``tokenization_matches``, and the device llama.cpp ran on."""
    info: dict = {}
    figures = against(reference, logprob_chunks(path, tokens, lora, info), tokens, names)
    return {**figures, "tokenization_matches": info["tokenization_matches"]}, info
