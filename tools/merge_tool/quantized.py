"""What every quantized format shares: the adapter is merged at 16 bit into a scratch folder inside
the partial output, the format quantizes that, and the result is loaded back the way users load it
and compared with the 16-bit merge on the validation text (top-1 agreement, KL). A result below
the format's bar fails the step; the figures go into the manifest (``validation``) beside the
format's own summary (``quantization``).

A format module using it defines ``quantize(merged_dir, folder, plan) -> summary`` and passes it to
:func:`write`. Everything runs where the 16-bit merge's plan put the merge (``plan["merge"]["device"]``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from upload_common.errors import InvalidInput, Unsupported
from upload_common.quality import VALIDATION_TEXT, compare, logprobs, reference

from . import calibration
from .formats import merged_16bit

SCRATCH = ".merged-16bit"
VALIDATE_TOKENS = 128


def require(module: str, extra: str, what: str):
    """Import ``module`` or refuse before any work, saying what installs it: ``merge-tool setup`` for
    a package of nodeps.txt (pip cannot install it with the project's pins), else the extra."""
    import importlib

    from .nodeps import entry_for

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        entry = entry_for(module)
        if entry and (exc.name or "").partition(".")[0] == module:
            raise Unsupported(f"{what} needs {entry.title}: run `merge-tool setup` once (it installs "
                              f"{entry.requirement} without its {entry.without} pin)") from None
        raise Unsupported(f"{what} needs {module.replace('_', '-')} ({exc.name} is missing): pip install "
                          f"'upload-driver[{extra}]'") from None


def device(plan: dict) -> str:
    """Where the format works: the device the merge's plan chose (``--device``, GPU memory)."""
    return plan["merge"]["device"]


def plan(job: dict, *, min_top1: float, bits: float) -> dict:
    """The 16-bit merge's plan, with room for the scratch copy and the quantized files."""
    merge = merged_16bit.plan(job)
    sixteen = merge["estimated_bytes"]
    return {"job": job, "merge": merge, "min_top1": min_top1, "estimated_bytes": sixteen + int(sixteen * bits / 16),
            "warnings": merge["warnings"], "decisions": dict(merge["decisions"])}


def calibration_plan(job: dict) -> dict:
    """The calibration texts, read (and checked) at plan time."""
    source = job["params"].get("calibration")
    found = calibration.texts(source, _chat_renderer(job["found"].get("tokenizer") or {}))
    return {"texts": found, "source": calibration.describe(source),
            "warning": None if source else "calibrated on the built-in text: pass --calibration with text like the "
                                           "training data for a better fit"}


def _chat_renderer(tokenizer: dict):
    """Chat turns as the model's own tokenizer renders them (transformers' apply_chat_template), the
    tokenizer loaded on first use; None when it has no chat template."""
    if not (tokenizer.get("dir") and tokenizer.get("chat_template")):
        return None
    import functools

    @functools.cache
    def load():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer["dir"], trust_remote_code=False)

    def render(turns: list[dict]) -> str:
        try:
            return load().apply_chat_template(turns, tokenize=False)
        except Exception as exc:  # jinja2 and the template's own raise_exception
            raise InvalidInput(f"a calibration conversation does not fit the model's chat template ({exc}): fix the "
                               "roles in the calibration data, or give plain text") from None

    return render


def write(plan: dict, folder: Path, progress, quantize) -> dict:
    """Merge into ``folder/.merged-16bit``, quantize into ``folder``, validate, drop the scratch copy."""
    from .core import copy_tokenizer

    job = plan["job"]
    scratch = folder / SCRATCH
    scratch.mkdir()
    merged_16bit.write(plan["merge"], scratch, progress)
    copy_tokenizer(job["found"], job["base"], scratch, [])
    summary = quantize(scratch, folder, plan)
    progress(sum(p.stat().st_size for p in folder.iterdir() if p.is_file()))
    figures = validate(scratch, folder, device(plan))
    shutil.rmtree(scratch)
    for p in folder.rglob("*"):  # some savers create their files private (0600)
        if p.is_file():
            os.chmod(p, 0o644)
    plan["report"] = {"quantization": summary, "validation": figures}
    if figures["top1_agreement"] < plan["min_top1"]:
        hint = ("try more, or more typical, --calibration text" if "calibration" in plan else
                "this model loses too much in this format: try a wider one (merged_8bit, or gguf with Q8_0)")
        raise InvalidInput(f"validation failed: the quantized model agrees with the 16-bit merge on "
                           f"{figures['top1_agreement']:.3f} of next tokens (needs {plan['min_top1']}; mean KL "
                           f"{figures['mean_kl']:.4f}): {hint}", validation=figures)
    return {}


def validate(reference_dir: Path, folder: Path, on: str) -> dict:
    """The quantized model in ``folder`` against the 16-bit one, as transformers loads each."""
    import gc

    from transformers import AutoModelForCausalLM

    ids, ref = reference(reference_dir, VALIDATION_TEXT, VALIDATE_TOKENS, device=on)
    gc.collect()  # the reference model is gone before the quantized one loads
    model = AutoModelForCausalLM.from_pretrained(folder, device_map=on, trust_remote_code=False).eval()
    got = logprobs(model, ids)
    return {**compare(ref, got), "reference": "the 16-bit merge (fp32 compute)", "text": "built-in validation text"}


def load_merged(merged_dir: Path, on: str):
    """The 16-bit merge as a transformers model (its own dtype), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype="auto", device_map=on, trust_remote_code=False)
    return model, AutoTokenizer.from_pretrained(merged_dir, trust_remote_code=False)
