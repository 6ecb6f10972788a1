"""``awq``: the 16-bit merge quantized to 4-bit integer weights (W4A16) after llm-compressor's AWQ
smoothing (per-channel scales searched on calibration activations), saved as compressed-tensors
like ``gptq`` (AutoAWQ is archived; llm-compressor is where AWQ is maintained). Symmetric groups,
so transformers 5.23 loads the result (it cannot load asymmetric compressed-tensors checkpoints).

llm-compressor 0.14 pins the cached calibration activations in page-locked memory unconditionally,
which fails without an accelerator; on the CPU that step is skipped (it only speeds up copies to a
GPU). The workaround is tied to the pinned version and checked in ``plan``."""

from __future__ import annotations

import contextlib

from .. import quantized
from ..job import Job, Plan, Written
from ..quantized import Quantize
from .gptq import llmcompressor_plan, oneshot

NEEDS_BASE = False  # it reads the merged_16bit set (--model), not the adapter and base
CALIBRATION = True
LIBRARIES = ("transformers", "llmcompressor", "compressed-tensors")
MIN_TOP1 = 0.80


def plan(job: Job) -> Plan[Quantize]:
    plan = llmcompressor_plan(job, "awq", "AWQ", min_top1=MIN_TOP1)
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not callable(getattr(IntermediatesCache, "pin_memory", None)):  # pragma: no cover - another llm-compressor
        from upload_common.errors import Unsupported

        raise Unsupported(
            "awq: this llm-compressor has no IntermediatesCache.pin_memory; install the pinned "
            "version (constraints.txt)"
        )
    return plan


def write(plan: Plan[Quantize], folder, progress) -> Written:
    with _no_pinning_without_gpu(quantized.device(plan) == "cuda"):
        return quantized.write(plan, folder, progress, lambda src, dst, p: oneshot(src, dst, p, _recipe))


def _recipe(plan: Plan[Quantize]):
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    return [AWQModifier(), QuantizationModifier(config_groups={"group_0": plan.data.scheme}, ignore=["lm_head"])]


@contextlib.contextmanager
def _no_pinning_without_gpu(cuda: bool):
    if cuda:
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original
