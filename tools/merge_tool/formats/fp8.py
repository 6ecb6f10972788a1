"""``fp8``: the 16-bit merge with FP8 (e4m3) weights, one scale per output channel, and activations
quantized to FP8 per token at run time (llm-compressor's FP8_DYNAMIC scheme, no calibration), saved
as compressed-tensors. vLLM runs it with FP8 kernels on GPUs that have them (compute capability 8.9
and later) and weight-only elsewhere; transformers loads it too. Half the size of the 16-bit model."""

from __future__ import annotations

from .. import quantized
from .gptq import llmcompressor_plan, oneshot

NEEDS_BASE = True
LIBRARIES = ("transformers", "llmcompressor", "compressed-tensors")
MIN_TOP1 = 0.85  # activations are quantized too: a little below int8 weight-only (bf16 compute moves near-ties)
PRESET = {"name": "FP8_DYNAMIC", "bits": 8, "weights": "fp8 e4m3, a scale per output channel",
          "activations": "fp8 e4m3, a scale per token, computed at run time"}


def plan(job: dict) -> dict:
    return llmcompressor_plan(job, "fp8", "FP8", min_top1=MIN_TOP1, calibrate=False, preset=PRESET)


def write(plan: dict, folder, progress) -> dict:
    return quantized.write(plan, folder, progress, lambda src, dst, p: oneshot(src, dst, p, _recipe))


def _recipe(plan: dict):
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(targets="Linear", scheme=plan["scheme"], ignore=["lm_head"])]
