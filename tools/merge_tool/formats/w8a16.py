"""``w8a16``: the 16-bit merge with 8-bit integer weights (symmetric, a scale per group of 128 input
columns, round-to-nearest: no calibration) and 16-bit activations, llm-compressor's W8A16 scheme saved as
compressed-tensors. vLLM serves it with its mixed-precision kernels on any recent GPU (no FP8
hardware needed); transformers loads it with ``compressed-tensors`` installed. Half the size of the
16-bit model at nearly its quality."""

from __future__ import annotations

from ..job import Job, Plan, Written
from .gptq import llmcompressor_plan, preset_write

NEEDS_BASE = False  # it reads the merged_16bit set (--model), not the adapter and base
LIBRARIES = ("transformers", "llmcompressor", "compressed-tensors")
MIN_TOP1 = 0.90  # int8 weights with 16-bit activations stay close to the 16-bit model
PRESET = {
    "name": "W8A16",
    "bits": 8,
    "weights": "int8, symmetric, a scale per group of 128 input columns",
    "activations": "16 bit",
}


def plan(job: Job) -> Plan:
    return llmcompressor_plan(job, "w8a16", "W8A16", min_top1=MIN_TOP1, calibrate=False, preset=PRESET)


def write(plan: Plan, folder, progress) -> Written:
    return preset_write(plan, folder, progress)
