"""``merged_4bit``: the 16-bit merge quantized by bitsandbytes to 4-bit NF4 with double
quantization (QLoRA's format), saved the way transformers saves it, so ``from_pretrained`` loads
it as it is. The output layer stays at 16 bit. bitsandbytes quantizes on the GPU, or on the CPU
where its build supports it; where it does not, the step is refused before any work."""

from __future__ import annotations

from dataclasses import replace

from .. import quantized
from ..job import Job, Plan, Written
from ..quantized import Quantize

NEEDS_BASE = False  # it reads the merged_16bit set (--model), not the adapter and base
LIBRARIES = ("transformers", "accelerate")
MIN_TOP1 = 0.80  # a broken quantization agrees at chance level; a sound 4-bit one at 0.9 and more
SETTINGS = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


def plan(job: Job) -> Plan[Quantize]:
    return bnb_plan(job, "merged_4bit", "quantize_4bit", SETTINGS, min_top1=MIN_TOP1, bits=4.5)


def write(plan: Plan[Quantize], folder, progress) -> Written:
    return bnb_write(plan, folder, progress, SETTINGS, "bitsandbytes NF4, 4 bit")


def bnb_plan(job: Job, fmt: str, probe: str, settings: dict, *, min_top1: float, bits: float) -> Plan[Quantize]:
    for module in ("transformers", "accelerate"):
        quantized.require(module, "merge-quant", fmt)
    plan = quantized.plan(job, min_top1=min_top1, bits=bits)
    version = check_bitsandbytes(quantized.device(plan), fmt, probe)
    return replace(
        plan, decisions={**plan.decisions, "quantization": {"library": f"bitsandbytes {version}", **settings}}
    )


def bnb_write(plan: Plan[Quantize], folder, progress, settings: dict, method: str) -> Written:
    return quantized.write(plan, folder, progress, lambda src, dst, p: quantize_with(src, dst, p, settings, method))


def check_bitsandbytes(on: str, fmt: str, probe: str) -> str:
    """bitsandbytes' version, once it has quantized a small matrix on ``on`` (else a refusal)."""
    import torch

    bnb = quantized.require("bitsandbytes", "merge-quant", fmt)
    cuda = on == "cuda"
    try:
        import bitsandbytes.functional as F

        x = torch.ones(64, 64, device=on, dtype=torch.float16 if cuda else torch.float32)
        F.quantize_4bit(x) if probe == "quantize_4bit" else F.int8_vectorwise_quant(x)
    except Exception as exc:  # bitsandbytes builds without a CPU backend raise various errors here
        from upload_common.errors import Unsupported

        where = "on this GPU" if cuda else "on the CPU"
        raise Unsupported(
            f"{fmt} needs a CUDA GPU here: bitsandbytes {bnb.__version__} cannot quantize {where} "
            f"({type(exc).__name__}); run on a machine with a GPU (upload-driver --gpus all)"
        ) from None
    return bnb.__version__


def quantize_with(merged_dir, folder, plan: Plan[Quantize], settings: dict, method: str) -> dict:
    """Load the 16-bit merge quantized by bitsandbytes and save it; returns the summary."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from upload_common.st_io import CODES

    on = quantized.device(plan)
    compute = CODES[plan.data.dtype]
    extra = {"bnb_4bit_compute_dtype": getattr(torch, compute)} if settings.get("load_in_4bit") else {}
    model = AutoModelForCausalLM.from_pretrained(
        merged_dir,
        dtype=getattr(torch, compute),
        trust_remote_code=False,
        quantization_config=BitsAndBytesConfig(**settings, **extra),
        device_map=on,
    )
    model.save_pretrained(folder)
    return {
        "method": method,
        "library": plan.decisions["quantization"]["library"],
        **{k: v for k, v in settings.items() if not k.startswith("load_in")},
        **({"compute_dtype": compute} if extra else {}),
        "kept_at_16_bit": "lm_head",
        "quantized_on": on,
    }
