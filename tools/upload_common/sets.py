"""The registry of artifact sets: every output a run can make, which tool makes it, what it consumes,
what its tool needs, and how it is published. The driver's plan, merge-tool's formats and docs-tool's
cards all read it; adding a set is one row here (plus, for merge-tool, one format module:
docs/adding-a-format.md).

Imported by the driver and by every tool, so it imports nothing heavy (and no tool).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Publish:
    """How docs-tool and hf-push-tool present a set.

    ``suffix``: appended to the model name to make the repo name; ``relation``: the card's
    ``base_model_relation``; ``library``: its ``library_name``; ``title``: what the card calls the
    set; ``tags``: added to the card; ``requires``: packages users need to load it (named in the
    card's snippet); ``vllm``: vLLM serves it (the card adds a ``vllm serve`` line)."""

    suffix: str
    relation: str
    library: str
    title: str
    tags: tuple[str, ...]
    requires: tuple[str, ...] = ()
    vllm: bool = False

    def as_dict(self) -> dict:
        """The plain form cards and upload manifests are made from: lists for tags and requires;
        ``requires`` and ``vllm`` only when set."""
        out = {
            "suffix": self.suffix,
            "relation": self.relation,
            "library": self.library,
            "title": self.title,
            "tags": list(self.tags),
        }
        if self.requires:
            out["requires"] = list(self.requires)
        if self.vllm:
            out["vllm"] = True
        return out


@dataclass(frozen=True)
class SetSpec:
    """One artifact set.

    ``tool``: the tool whose step makes it (``merge-tool`` or ``gguf-tool``); ``module``: the
    merge-tool format module (None for other tools); ``needs_base``: the base model is resolved
    (and passed as ``--base``); ``calibration``: the step reads calibration text (the driver passes
    its calibration file); ``gpu``: the step may use a GPU; ``extra``: the pyproject extra the
    tool needs to make it; ``consumes``: other sets its step reads (they are made first)."""

    name: str
    tool: str
    summary: str
    publish: Publish
    module: str | None
    needs_base: bool
    calibration: bool
    gpu: bool
    extra: str
    consumes: tuple[str, ...] = ()


def _format(name: str, summary: str, publish: Publish, *, needs_base: bool, calibration: bool, extra: str) -> SetSpec:
    """A merge-tool format: made by ``merge_tool.formats.<name>`` from the adapter (and the base)."""
    return SetSpec(
        name,
        "merge-tool",
        summary,
        publish,
        module=f"merge_tool.formats.{name}",
        needs_base=needs_base,
        calibration=calibration,
        gpu=True,
        extra=extra,
    )


def _quantized(
    name: str, summary: str, publish: Publish, *, calibration: bool = False, extra: str = "merge-quant"
) -> SetSpec:
    """A merge-tool format made from the merged 16-bit set (``--model``): one merge serves them all."""
    return SetSpec(
        name,
        "merge-tool",
        summary,
        publish,
        module=f"merge_tool.formats.{name}",
        needs_base=False,
        calibration=calibration,
        gpu=True,
        extra=extra,
        consumes=("merged_16bit",),
    )


_CT = ("compressed-tensors",)  # what users need to load an llm-compressor checkpoint
_LLMC = ("compressed-tensors", "llm-compressor")

SETS: dict[str, SetSpec] = {
    s.name: s
    for s in (
        _format(
            "lora",
            "the adapter as-is (safetensors), with tokenizer",
            Publish("-lora", "adapter", "peft", "LoRA adapter", ("lora", "peft")),
            needs_base=False,
            calibration=False,
            extra="merge",
        ),
        _format(
            "merged_16bit",
            "the adapter merged into the base, 16-bit safetensors, streamed",
            Publish("", "finetune", "transformers", "merged 16-bit model", ("merged",)),
            needs_base=True,
            calibration=False,
            extra="merge",
        ),
        _quantized(
            "merged_4bit",
            "the merge quantized to 4-bit NF4 by bitsandbytes, loadable by transformers",
            Publish(
                "-bnb-4bit",
                "quantized",
                "transformers",
                "4-bit (bitsandbytes NF4) model",
                ("bitsandbytes", "4-bit", "nf4"),
                requires=("bitsandbytes",),
            ),
        ),
        _quantized(
            "merged_8bit",
            "the merge quantized to 8 bit (LLM.int8) by bitsandbytes, loadable by transformers",
            Publish(
                "-bnb-8bit",
                "quantized",
                "transformers",
                "8-bit (bitsandbytes LLM.int8) model",
                ("bitsandbytes", "8-bit"),
                requires=("bitsandbytes",),
            ),
        ),
        _quantized(
            "gptq",
            "the merge quantized to 4 bit by GPTQ (llm-compressor), compressed-tensors for vLLM/transformers",
            Publish(
                "-GPTQ",
                "quantized",
                "transformers",
                "GPTQ 4-bit model",
                ("gptq", "4-bit", *_LLMC),
                requires=_CT,
                vllm=True,
            ),
            calibration=True,
        ),
        _quantized(
            "awq",
            "the merge quantized to 4 bit after AWQ smoothing (llm-compressor), compressed-tensors",
            Publish(
                "-AWQ",
                "quantized",
                "transformers",
                "AWQ 4-bit model",
                ("awq", "4-bit", *_LLMC),
                requires=_CT,
                vllm=True,
            ),
            calibration=True,
        ),
        _quantized(
            "fp8",
            "the merge with FP8 weights and dynamic FP8 activations (llm-compressor), compressed-tensors",
            Publish("-FP8-Dynamic", "quantized", "transformers", "FP8 model", ("fp8", *_LLMC), requires=_CT, vllm=True),
        ),
        _quantized(
            "w8a16",
            "the merge with 8-bit integer weights and 16-bit activations (llm-compressor), compressed-tensors",
            Publish(
                "-W8A16",
                "quantized",
                "transformers",
                "8-bit (W8A16) model",
                ("w8a16", "8-bit", *_LLMC),
                requires=_CT,
                vllm=True,
            ),
        ),
        SetSpec(
            "gguf",
            "gguf-tool",
            "the merged 16-bit model converted to GGUF by llama.cpp, quantized, validated",
            Publish("-GGUF", "quantized", "gguf", "GGUF files", ("gguf", "llama.cpp")),
            module=None,
            needs_base=False,
            calibration=False,
            gpu=True,
            extra="gguf",
            consumes=("merged_16bit",),
        ),
    )
}


def get_set(name: str) -> SetSpec:
    """The row of ``name`` (case and surrounding spaces ignored); an unknown name lists the valid ones."""
    key = (name or "").strip().lower()
    if key not in SETS:
        raise UsageError(f"unknown set {name!r}: choose one of {', '.join(sorted(SETS))}", set=name)
    return SETS[key]


def sets_of(tool: str) -> dict[str, SetSpec]:
    """The rows a tool makes, in registry order."""
    return {k: s for k, s in SETS.items() if s.tool == tool}
