"""merge-tool's step for the formats made from the merged model (the registry rows that consume
``merged_16bit``: the bitsandbytes and llm-compressor formats): a merged 16-bit model
folder in (``--model``, normally the merged_16bit step's output, named in the manifest by its
manifest's hash like any step output), one quantized format out. The merge is made once, by its own
step, and serves every format.

The folder is read as it is: one that refers to code is refused, nothing from it runs. What the
merged set's manifest says of the adapter, the base and the training is carried over, so each
format's manifest stands alone (docs-tool's cards, licences)."""

from __future__ import annotations

import time
from pathlib import Path

from upload_common.contract import check_output_free, describe_input, read_json_object, read_manifest
from upload_common.errors import UsageError
from upload_common.eval_reference import model_key
from upload_common.eval_text import from_file
from upload_common.remote_code import refuse_code
from upload_common.sets import SETS, get_set
from upload_common.st_io import model_specs
from upload_common.step import Step
from upload_common.trainer_output import chat_template

from .base import TOOL
from .core import copy_model_files, libraries, write_format
from .formats import get_format
from .job import Job, Model, Validation

CARRIED = ("adapter", "base")  # the merged set's decisions a format made from it repeats


def run(
    model_dir,
    out,
    *,
    method: str,
    device: str = "auto",
    calibration=None,
    eval_text=None,
    reference_cache=None,
    overwrite: bool = False,
    log=lambda m: None,
) -> dict:
    """Quantize the merged model in ``model_dir`` into ``out``; returns the step manifest."""
    t0 = time.monotonic()
    fmt, spec = get_format(method), get_set(method)
    if not spec.consumes:
        made = ", ".join(k for k, s in SETS.items() if s.tool == TOOL and s.consumes)
        raise UsageError(f"--model is for the formats made from the merged model ({made}): {method} reads --adapter")
    model_dir, out = Path(model_dir).absolute(), Path(out)
    check_output_free(out, overwrite)
    read_json_object(
        model_dir / "config.json", "model config", "pass merge-tool's merged_16bit output (a model folder) as --model"
    )
    refuse_code(model_dir, TOOL)
    if eval_text:
        from_file(eval_text)  # a missing, empty or non-UTF-8 text is refused before any work
    params = {"method": method, "device": device, "calibration": str(calibration) if calibration else None}
    if eval_text:
        params["eval_text"] = str(eval_text)
    tokenizer = {"dir": str(model_dir), "chat_template": chat_template(model_dir)}
    inputs = {"model": describe_input(model_dir)}
    if calibration and spec.calibration:
        inputs["calibration"] = describe_input(Path(calibration))
    if eval_text:
        inputs["eval_text"] = describe_input(Path(eval_text))
    validation = Validation(
        eval_text=Path(eval_text) if eval_text else None,
        store=Path(reference_cache).absolute() if reference_cache else None,
        model_key=model_key(inputs["model"]),
    )
    source = read_manifest(model_dir) or {}
    decisions = source.get("decisions") or {}
    with Step(
        TOOL, out, inputs=inputs, params=params, overwrite=overwrite, libraries=libraries(fmt), log=log, began=t0
    ) as s:  # the plan's checks first, before anything is written (--fingerprint stops before them)
        plan = fmt.plan(
            Job(
                params=params,
                found={"tokenizer": tokenizer},
                model=Model(model_dir, model_specs(model_dir)),
                validation=validation,
            )
        )
        s.manifest["decisions"] = {**{k: decisions[k] for k in CARRIED if k in decisions}, **plan.decisions}
        s.reserve(plan.estimated_bytes)
        s.manifest["warnings"] = list(plan.warnings)
        if source.get("training"):
            s.manifest["training"] = source["training"]
        write_format(fmt, method, plan, s, lambda folder, warnings: copy_model_files(model_dir, folder, warnings))
    return s.manifest
