"""The registry of output formats. Adding one = one module in this package plus one row here
(docs/adding-a-format.md). Modules are imported only when their format is used.

A format module defines:
- ``NEEDS_BASE``: whether the base model must be resolved first;
- ``plan(job) -> dict``: every check that can fail, before anything is written; returns at least
  ``estimated_bytes``, ``decisions`` and ``warnings``;
- ``write(plan, folder, progress) -> dict``: writes the model files into ``folder`` and returns
  ``{relative path: sha256}`` for what it hashed while writing; it may leave ``plan["report"]``
  with ``quantization`` and ``validation`` entries for the manifest (``merge_tool.quantized`` does);
- optionally ``CALIBRATION = True`` (the driver then passes its calibration source as
  ``--calibration``) and ``LIBRARIES`` (package names whose versions the manifest records).

A row's ``publish`` entry is how docs-tool and hf-push-tool present the format: the repo name
suffix, the card's ``base_model_relation`` and ``library_name``, a title and tags; optionally
``requires`` (packages users need to load it, named in the card) and ``vllm`` (vLLM serves it).
"""

from __future__ import annotations

import importlib

from upload_common.errors import UsageError

FORMATS = {
    "lora": {"module": "merge_tool.formats.lora", "summary": "the adapter as-is (safetensors), with tokenizer",
             "publish": {"suffix": "-lora", "relation": "adapter", "library": "peft", "title": "LoRA adapter",
                         "tags": ["lora", "peft"]}},
    "merged_16bit": {"module": "merge_tool.formats.merged_16bit",
                     "summary": "the adapter merged into the base, 16-bit safetensors, streamed",
                     "publish": {"suffix": "", "relation": "finetune", "library": "transformers",
                                 "title": "merged 16-bit model", "tags": ["merged"]}},
    "merged_4bit": {"module": "merge_tool.formats.merged_4bit",
                    "summary": "the merge quantized to 4-bit NF4 by bitsandbytes, loadable by transformers",
                    "publish": {"suffix": "-bnb-4bit", "relation": "quantized", "library": "transformers",
                                "title": "4-bit (bitsandbytes NF4) model", "tags": ["bitsandbytes", "4-bit", "nf4"],
                                "requires": ["bitsandbytes"]}},
    "merged_8bit": {"module": "merge_tool.formats.merged_8bit",
                    "summary": "the merge quantized to 8 bit (LLM.int8) by bitsandbytes, loadable by transformers",
                    "publish": {"suffix": "-bnb-8bit", "relation": "quantized", "library": "transformers",
                                "title": "8-bit (bitsandbytes LLM.int8) model", "tags": ["bitsandbytes", "8-bit"],
                                "requires": ["bitsandbytes"]}},
    "gptq": {"module": "merge_tool.formats.gptq",
             "summary": "the merge quantized to 4 bit by GPTQ (llm-compressor), compressed-tensors for vLLM/transformers",
             "publish": {"suffix": "-GPTQ", "relation": "quantized", "library": "transformers", "title": "GPTQ 4-bit model",
                         "tags": ["gptq", "4-bit", "compressed-tensors", "llm-compressor"],
                         "requires": ["compressed-tensors"], "vllm": True}},
    "awq": {"module": "merge_tool.formats.awq",
            "summary": "the merge quantized to 4 bit after AWQ smoothing (llm-compressor), compressed-tensors",
            "publish": {"suffix": "-AWQ", "relation": "quantized", "library": "transformers", "title": "AWQ 4-bit model",
                        "tags": ["awq", "4-bit", "compressed-tensors", "llm-compressor"],
                        "requires": ["compressed-tensors"], "vllm": True}},
    "fp8": {"module": "merge_tool.formats.fp8",
            "summary": "the merge with FP8 weights and dynamic FP8 activations (llm-compressor), compressed-tensors",
            "publish": {"suffix": "-FP8-Dynamic", "relation": "quantized", "library": "transformers",
                        "title": "FP8 model", "tags": ["fp8", "compressed-tensors", "llm-compressor"],
                        "requires": ["compressed-tensors"], "vllm": True}},
}


def get_format(name: str):
    key = (name or "").strip().lower()
    if key not in FORMATS:
        raise UsageError(f"unknown format {name!r}: choose one of {', '.join(sorted(FORMATS))}", format=name)
    return importlib.import_module(FORMATS[key]["module"])
