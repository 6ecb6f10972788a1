"""``gptq``: the 16-bit merge quantized to 4-bit integer weights (16-bit activations, W4A16) by
llm-compressor's GPTQ, calibrated on a small text set, and saved as compressed-tensors: the
checkpoint format vLLM serves natively and transformers loads with ``compressed-tensors``
installed. Symmetric groups of 128 input columns (fewer where a layer is narrower); the output
layer stays at 16 bit. Runs on the GPU when there is one, else on the CPU (slowly on big models)."""

from __future__ import annotations

from dataclasses import replace

from .. import calibration, quantized
from ..job import Job, Plan, Written
from ..quantized import Quantize

NEEDS_BASE = False  # it reads the merged_16bit set (--model), not the adapter and base
CALIBRATION = True
LIBRARIES = ("transformers", "llmcompressor", "compressed-tensors")
MIN_TOP1 = 0.80  # a broken quantization agrees at chance level; a sound 4-bit one at 0.9 and more
GROUP_SIZES = (128, 64, 32)


def plan(job: Job) -> Plan[Quantize]:
    return llmcompressor_plan(job, "gptq", "GPTQ", min_top1=MIN_TOP1)


def write(plan: Plan[Quantize], folder, progress) -> Written:
    return quantized.write(plan, folder, progress, lambda src, dst, p: oneshot(src, dst, p, _recipe))


def _recipe(plan: Plan[Quantize]):
    from llmcompressor.modifiers.quantization import GPTQModifier

    return [GPTQModifier(config_groups={"group_0": plan.data.scheme}, ignore=["lm_head"])]


def preset_write(plan: Plan[Quantize], folder, progress) -> Written:
    """``write`` of a format that applies one of llm-compressor's preset schemes without calibration
    (``plan.data.scheme``, e.g. FP8_DYNAMIC, W8A16) to every Linear layer but the output layer."""
    return quantized.write(plan, folder, progress, lambda src, dst, p: oneshot(src, dst, p, _preset_recipe))


def _preset_recipe(plan: Plan[Quantize]):
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(targets="Linear", scheme=plan.data.scheme, ignore=["lm_head"])]


def llmcompressor_plan(
    job: Job, fmt: str, method: str, *, min_top1: float, calibrate: bool = True, preset: dict | None = None
) -> Plan[Quantize]:
    """Checks and decisions shared by the llm-compressor formats: libraries present, the scheme
    (W4A16 with the group size the layers allow, or a ``preset`` {name, bits, ...}), calibration
    text read."""
    import os

    if not os.environ.get("UPLOAD_DRIVER_DEBUG"):  # llm-compressor logs every layer at INFO otherwise
        os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
    with _stdout_to_stderr():  # llm-compressor's logger writes to what stdout is when it is first imported
        for module in ("transformers", "compressed_tensors", "llmcompressor"):
            quantized.require(module, "merge-quant", fmt)
    from importlib.metadata import version

    plan = quantized.plan(job, min_top1=min_top1, bits=(preset or {}).get("bits", 4) + 0.5)
    library = f"llmcompressor {version('llmcompressor')}"
    if preset:
        chosen = {"library": library, "scheme": preset["name"], **{k: v for k, v in preset.items() if k != "name"}}
        return _with_scheme(plan, method, preset["name"], chosen)
    widths = {
        s["shape"][1]
        for name, s in plan.data.specs.items()
        if name.endswith(".weight") and len(s["shape"]) == 2 and "embed" not in name and name != "lm_head.weight"
    }
    group = next((g for g in GROUP_SIZES if all(w % g == 0 for w in widths)), None)
    if group is None:
        from upload_common.errors import Unsupported

        raise Unsupported(
            f"{fmt}: the model's layer widths ({', '.join(map(str, sorted(widths)))}) are not multiples "
            f"of {GROUP_SIZES[-1]}: use merged_4bit or gguf for this model"
        )
    scheme = {
        "targets": ["Linear"],
        "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group},
    }
    chosen = {"library": library, "scheme": "W4A16", "bits": 4, "group_size": group, "symmetric": True}
    cal = quantized.calibration_plan(job) if calibrate else None
    return _with_scheme(plan, method, scheme, chosen, cal)


def _with_scheme(plan: Plan[Quantize], method: str, scheme, chosen: dict, cal: dict | None = None) -> Plan[Quantize]:
    """``plan`` with the llm-compressor ``scheme``, recorded as the ``quantization`` decision
    (``chosen``, with the calibration source), and the calibration texts with their warning."""
    if cal is not None:
        chosen = {**chosen, "calibration": cal["source"]}
    return replace(
        plan,
        data=replace(plan.data, method=method, scheme=scheme, calibration=cal),
        decisions={**plan.decisions, "quantization": chosen},
        warnings=(*plan.warnings, *([cal["warning"]] if cal is not None and cal["warning"] else [])),
    )


def _stdout_to_stderr():
    """llm-compressor sets up its (loguru) logging when first imported, with a sink on ``sys.stdout``
    as it is then, and logs at once; merge-tool's stdout carries its result, so the first import
    happens with stdout pointing at stderr, where its messages then stay."""
    import contextlib
    import sys

    return contextlib.redirect_stdout(sys.stderr)


def oneshot(merged_dir, folder, plan: Plan[Quantize], recipe) -> dict:
    """llm-compressor's one-shot run of ``recipe(plan)`` on the 16-bit merge, saved compressed;
    returns the summary (the plan's decisions, calibration size, where it ran)."""
    from datasets import Dataset
    from llmcompressor import oneshot as run_oneshot

    on = quantized.device(plan)
    model, tok = quantized.load_merged(merged_dir, on)
    kwargs, summary_cal = {}, {}
    if plan.data.calibration is not None:  # its source is in the decisions already
        samples = calibration.token_samples(tok, plan.data.calibration["texts"])
        kwargs = {
            "dataset": Dataset.from_dict({"input_ids": samples}),
            "num_calibration_samples": len(samples),
            "max_seq_length": calibration.SEQ_LEN,
        }
        summary_cal = {"calibration_samples": len(samples), "calibration_tokens": sum(map(len, samples))}
    run_oneshot(model=model, recipe=recipe(plan), **kwargs)
    model.save_pretrained(folder, save_compressed=True)
    return {
        "method": f"{plan.data.method} (llm-compressor)",
        **plan.decisions["quantization"],
        "format": "compressed-tensors",
        **summary_cal,
        "kept_at_16_bit": "lm_head",
        "quantized_on": on,
    }
