"""``merged_8bit``: the 16-bit merge quantized by bitsandbytes to 8-bit (LLM.int8: int8 weights with
a per-row scale, outliers computed at 16 bit), saved the way transformers saves it. Half the size
of the 16-bit model at nearly its quality. Same checks as ``merged_4bit``."""

from __future__ import annotations

from ..job import Job, Plan, Written
from .merged_4bit import bnb_plan, bnb_write

NEEDS_BASE = False  # it reads the merged_16bit set (--model), not the adapter and base
LIBRARIES = ("transformers", "accelerate")
MIN_TOP1 = 0.90  # int8 stays close (mean KL ~1e-3) but computes in fp16, which alone moves near-ties
SETTINGS = {"load_in_8bit": True}


def plan(job: Job) -> Plan:
    return bnb_plan(job, "merged_8bit", "int8", SETTINGS, min_top1=MIN_TOP1, bits=8.5)


def write(plan: Plan, folder, progress) -> Written:
    return bnb_write(plan, folder, progress, SETTINGS, "bitsandbytes LLM.int8, 8 bit")
