"""``fp8``: the 16-bit merge with FP8 (e4m3) weights, one scale per output channel, and activations
quantized to FP8 per token at run time (llm-compressor's FP8_DYNAMIC scheme, no calibration), saved
as compressed-tensors. vLLM runs it with FP8 kernels on GPUs that have them (compute capability 8.9
and later) and weight-only elsewhere; transformers loads it too. Half the size of the 16-bit model."""

from __future__ import annotations

from ..job import Job, Plan, Written
from .gptq import llmcompressor_plan, preset_write

NEEDS_BASE = False  # it reads the merged_16bit set (--model), not the adapter and base
LIBRARIES = ("transformers", "llmcompressor", "compressed-tensors")
MIN_TOP1 = 0.85  # activations are quantized too: a little below int8 weight-only (bf16 compute moves near-ties)
PRESET = {
    "name": "FP8_DYNAMIC",
    "bits": 8,
    "weights": "fp8 e4m3, a scale per output channel",
    "activations": "fp8 e4m3, a scale per token, computed at run time",
}


def plan(job: Job) -> Plan:
    return llmcompressor_plan(job, "fp8", "FP8", min_top1=MIN_TOP1, calibrate=False, preset=PRESET)


def write(plan: Plan, folder, progress) -> Written:
    return preset_write(plan, folder, progress)
