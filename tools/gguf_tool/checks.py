"""gguf-tool's validation, in two moments: right after the conversion, the 16-bit GGUF is checked against
the Hugging Face model (and fails the step there, before any quantization, when it disagrees); after the
quantization, each quantized file is checked against the 16-bit GGUF's stored log-probabilities, and a
LoRA adapter GGUF over its base against the Hugging Face model. The reference files live in the
reference store (``--reference-cache``, else the step's scratch folder) under content-addressed names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from upload_common.contract import library_versions
from upload_common.errors import InvalidInput
from upload_common.eval_reference import Stored, Tokens, hf_reference, model_key, stored, tokenize
from upload_common.eval_text import from_file

from . import validate as val
from .job import GgufJob, merged_tensors

HF = "Hugging Face"


@dataclass(frozen=True)
class References:
    """The text's tokens, the Hugging Face model's log-probabilities, the 16-bit GGUF's (what the quants are
    compared with), the 16-bit GGUF's own figures, and how all that was computed (decisions.reference)."""

    tokens: Tokens
    hf: Stored
    gguf16: Stored
    gguf16_figures: dict
    how: dict


def references(job: GgufJob, inter_first: Path, store: Path, log) -> References:
    """The two reference files (made, or read from the store) and the 16-bit GGUF's check against the
    Hugging Face model; an InvalidInput when that check fails (the conversion lost the model)."""
    tokens = tokenize(job.model_dir, from_file(job.eval_text) if job.eval_text else None, job.validate_tokens)
    log(
        f"validation reference: {len(tokens.ids)} tokens of the {tokens.text.source} text, "
        f"{len(tokens.chunks)} chunk(s) of {len(tokens.chunks[0])}"
    )
    inputs = job.inputs()
    key = model_key(inputs["model"])
    tensors = None
    if job.merge_adapter:  # a deferred merge: its tensors computed from the base and the adapter
        key = "+".join(model_key(inputs[k]) for k in ("model", "merge_base", "merge_adapter"))
        tensors = merged_tensors(job.model_dir, job.base, job.merge_adapter)
    hf, how = hf_reference(job.model_dir, tokens, store, key, tensors)
    info: dict = {}
    gguf16 = stored(
        store,
        {
            "model": key,
            "by": f"llama.cpp {job.inter_type}",
            "llama_cpp": library_versions("llama-cpp-python").get("llama-cpp-python", "unknown"),
            "chunks": tokens.chunks,
        },
        lambda: val.logprob_chunks(inter_first, tokens, None, info),
        len(tokens.chunks),
    )
    figures = {
        **val.against(hf, gguf16.logprobs, tokens, (HF, f"GGUF ({job.inter_type})")),
        "tokenization_matches": info["tokenization_matches"]
        if "tokenization_matches" in info
        else val.tokenizes_alike(inter_first, tokens),
        "against": f"{HF} (transformers, fp32)",
    }
    log(f"  {job.inter_type}: {_summary(figures)}")
    how = {
        **how,
        "text": tokens.describe(),
        "quants_against": f"the {job.inter_type} GGUF (llama.cpp)",
        "gguf_file": gguf16.path.name,
        "llama_cpp_device": info.get("device", "read from an earlier run's reference file"),
    }
    refs = References(tokens=tokens, hf=hf, gguf16=gguf16, gguf16_figures=figures, how=how)
    judge({job.inter_type: {"validation": figures}}, job.thresholds)
    return refs


def check_outputs(job: GgufJob, refs: References, folder_of, files: dict, lora_base: Path | None, log) -> dict:
    """Each file's figures into files[type]["validation"]: the 16-bit type's from ``references``, each quant
    against the 16-bit GGUF, the LoRA adapter over ``lora_base`` against the Hugging Face model; returns
    decisions.reference (with the 16-bit GGUF's figures when that file is not kept)."""
    how = dict(refs.how)
    devices = set()
    for q in files:
        if q == job.inter_type:
            files[q]["validation"] = refs.gguf16_figures
            continue
        if q == "LoRA":
            figures, info = val.check(lora_base, refs.hf, refs.tokens, (HF, "GGUF (LoRA)"), lora=folder_of(q))
            figures["against"] = f"{HF} (transformers, fp32)"
        else:
            figures, info = val.check(
                folder_of(q), refs.gguf16, refs.tokens, (f"GGUF ({job.inter_type})", f"GGUF ({q})")
            )
            figures["against"] = f"the {job.inter_type} GGUF"
        devices.add(info.get("device"))
        files[q]["validation"] = figures
        log(f"  {q}: {_summary(figures)}")
    if job.inter_type not in files:
        how["intermediate"] = {"quant": job.inter_type, "validation": refs.gguf16_figures}
    if devices - {None}:
        how["llama_cpp_device"] = ", ".join(sorted(devices - {None}))
    return how


def judge(files: dict, thresholds: dict) -> None:
    bad = []
    for q, info in files.items():
        v = info["validation"]
        if not v["tokenization_matches"]:
            bad.append(
                f"{q} tokenizes the validation text differently from the HF tokenizer (is tokenizer.model "
                "missing from the model folder?)"
            )
        elif q in thresholds and v["top1_agreement"] < thresholds[q]:
            bad.append(
                f"{q} agrees with its reference ({v.get('against', HF)}) on {v['top1_agreement']:.3f} of next "
                f"tokens (needs {thresholds[q]}; mean KL {v['mean_kl']:.4f})"
            )
    if bad:
        raise InvalidInput("validation failed: " + "; ".join(bad), validation=files)


def _summary(v: dict) -> str:
    ppl = f", perplexity {v['perplexity']:.3f} (reference {v['perplexity_reference']:.3f})" if "perplexity" in v else ""
    return f"top-1 {v['top1_agreement']:.3f}, mean KL {v['mean_kl']:.5f}, p99 KL {v['p99_kl']:.5f}{ppl}"
