"""What every quantized format shares: it reads a merged 16-bit model (the ``merged_16bit`` set, made
once by its own step and given as ``--model``), quantizes it, and the result is loaded back the way
users load it and compared with the 16-bit model on the validation text (top-1 agreement, KL). A
result below the format's bar fails the step; the figures go into the manifest (``validation``)
beside the format's own summary (``quantization``).

A format module using it plans with :func:`plan` (a ``Plan`` whose ``data`` is a :class:`Quantize`),
defines ``quantize(model_dir, folder, plan) -> summary`` and passes it to :func:`write`. Everything
runs on ``plan.data.device`` (``--device``, and the GPU's free memory)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from upload_common.errors import InvalidInput, Unsupported
from upload_common.eval_reference import hf_reference, tokenize
from upload_common.eval_text import from_file
from upload_common.quality import Agreement, logprobs
from upload_common.st_io import nbytes

from . import calibration
from .device import pick_device
from .job import Job, Plan, Validation, Written

VALIDATE_TOKENS = 1024  # of the validation text, as gguf-tool: both read one reference file
FLOATS = ("BF16", "F16", "F32")


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
            raise Unsupported(
                f"{what} needs {entry.title}: run `merge-tool setup` once (it installs "
                f"{entry.requirement} without its {entry.without} pin)"
            ) from None
        raise Unsupported(
            f"{what} needs {module.replace('_', '-')} ({exc.name} is missing): pip install 'upload-driver[{extra}]'"
        ) from None


@dataclass(frozen=True)
class Quantize:
    """A quantized format's own plan data: the merged model, where it is quantized, the bar its
    validation must clear; an llm-compressor format adds its ``method`` name, ``scheme`` and
    ``calibration`` (:func:`calibration_plan`)."""

    model_dir: Path
    specs: dict
    dtype: str  # the model's float type (BF16, F16 or F32), the compute type of bitsandbytes
    device: str
    min_top1: float
    method: str | None = None
    scheme: dict | str | None = None  # a W4A16 scheme, or the name of an llm-compressor preset
    calibration: dict | None = None
    validation: Validation = Validation()


def device(plan: Plan[Quantize]) -> str:
    """Where the format works: ``--device``, or the GPU when it has room."""
    return plan.data.device


def plan(job: Job, *, min_top1: float, bits: float) -> Plan[Quantize]:
    """What quantizing the model of ``job.model`` needs: where it runs, its 16-bit dtype, room for
    the quantized files."""
    specs = job.model.specs
    floats = Counter(s["dtype"] for s in specs.values() if s["dtype"] in FLOATS)
    if not floats:
        raise InvalidInput(
            f"{job.model.path} holds no 16- or 32-bit float weights: pass a merged 16-bit "
            "model (merge-tool --method merged_16bit)",
            path=str(job.model.path),
        )
    largest = max(nbytes({"dtype": "F32", "shape": s["shape"]}) for s in specs.values())
    on, device_info = pick_device(job.params["device"], largest)
    sixteen = sum(nbytes({"dtype": "BF16", "shape": s["shape"]}) for s in specs.values())
    own = Quantize(Path(job.model.path), specs, floats.most_common(1)[0][0], on, min_top1, validation=job.validation)
    return Plan(job, int(sixteen * bits / 16) + (4 << 20), own, decisions={"device": device_info})


def calibration_plan(job: Job) -> dict:
    """The calibration ``texts``, read (and checked) at plan time, their ``source`` as the manifest
    names it and the ``warning`` the built-in text gets."""
    source = job.params.get("calibration")
    return {
        "texts": calibration.texts(source, _chat_renderer(job.found.get("tokenizer") or {})),
        "source": calibration.describe(source),
        "warning": None
        if source
        else "calibrated on the built-in text: pass --calibration with text like the training data for a better fit",
    }


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
            raise InvalidInput(
                f"a calibration conversation does not fit the model's chat template ({exc}): fix the "
                "roles in the calibration data, or give plain text"
            ) from None

    return render


def write(plan: Plan[Quantize], folder: Path, progress, quantize) -> Written:
    """Quantize the model into ``folder``, then validate it against the model it came from; the
    summary and the figures are the manifest's ``quantization`` and ``validation``."""
    own = plan.data
    summary = quantize(own.model_dir, folder, plan)
    progress(sum(p.stat().st_size for p in folder.iterdir() if p.is_file()))
    figures = validate(own.model_dir, folder, own.device, own.validation)
    for p in folder.rglob("*"):  # some savers create their files private (0600)
        if p.is_file():
            os.chmod(p, 0o644)
    if figures["top1_agreement"] < own.min_top1:
        hint = (
            "try more, or more typical, --calibration text"
            if own.calibration is not None
            else "this model loses too much in this format: try a wider one (merged_8bit, or gguf with Q8_0)"
        )
        raise InvalidInput(
            f"validation failed: the quantized model agrees with the 16-bit merge on "
            f"{figures['top1_agreement']:.3f} of next tokens (needs {own.min_top1}; mean KL "
            f"{figures['mean_kl']:.4f}): {hint}",
            validation=figures,
        )
    return Written(quantization=summary, validation=figures)


def validate(reference_dir: Path, folder: Path, on: str, how: Validation | None = None) -> dict:
    """The quantized model in ``folder`` against the 16-bit one it came from, on the validation text in
    chunks: the reference is the 16-bit merge in fp32 on the CPU, streamed part by part (never the whole
    model in fp32 on a GPU that must also hold the quantized one), read from the reference store when
    gguf-tool or an earlier step already made it; the quantized model as transformers loads it."""
    import gc
    import tempfile

    from transformers import AutoModelForCausalLM

    how = how or Validation()
    tokens = tokenize(reference_dir, from_file(how.eval_text) if how.eval_text else None, VALIDATE_TOKENS)
    with tempfile.TemporaryDirectory(prefix="merge-tool-reference-") as scratch:
        ref, made = hf_reference(reference_dir, tokens, how.store or Path(scratch), how.model_key or str(reference_dir))
        gc.collect()
        model = AutoModelForCausalLM.from_pretrained(folder, device_map=on, trust_remote_code=False).eval()
        agreement = Agreement(("16-bit merge", "quantized"))
        for i, chunk in enumerate(tokens.chunks):  # one chunk at a time: its logits only
            agreement.add(ref.logprobs[i], logprobs(model, list(chunk)), chunk)
    return {
        **agreement.figures(),
        "reference": "the 16-bit merge (fp32 compute)",
        "against": "the 16-bit merge (transformers, fp32 on the CPU)",
        "text": tokens.describe(),
        "reference_method": made["method"],
    }


def load_merged(merged_dir: Path, on: str):
    """The 16-bit model as a transformers model (its own dtype), and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype="auto", device_map=on, trust_remote_code=False)
    return model, AutoTokenizer.from_pretrained(merged_dir, trust_remote_code=False)
