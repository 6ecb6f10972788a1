"""``merged_8bit``: the 16-bit merge quantized by bitsandbytes to 8-bit (LLM.int8: int8 weights with
a per-row scale, outliers computed at 16 bit), saved the way transformers saves it. Half the size
of the 16-bit model at nearly its quality. Same checks as ``merged_4bit``."""

from __future__ import annotations

from .. import quantized
from .merged_4bit import check_bitsandbytes, quantize_with

NEEDS_BASE = True
LIBRARIES = ("transformers", "accelerate")
MIN_TOP1 = 0.90  # int8 stays close (mean KL ~1e-3) but computes in fp16, which alone moves near-ties
SETTINGS = {"load_in_8bit": True}


def plan(job: dict) -> dict:
    version = check_bitsandbytes(job, "merged_8bit", probe="int8")
    return quantized.plan(job, min_top1=MIN_TOP1, bits=8.5,
                          decisions={"quantization": {"library": f"bitsandbytes {version}", **SETTINGS}})


def write(plan: dict, folder, progress) -> dict:
    return quantized.write(plan, folder, progress,
                           lambda src, dst, p: quantize_with(src, dst, p, SETTINGS, "bitsandbytes LLM.int8, 8 bit"))
