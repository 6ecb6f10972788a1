"""gguf-tool's step: a Hugging Face model folder in; GGUF files, each validated, out."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from upload_common.cards import looks_like_repo_id
from upload_common.contract import check_output_free, read_json_object, read_manifest, settle
from upload_common.errors import InvalidInput
from upload_common.eval_text import from_file
from upload_common.gguf_size import gguf_bytes, gguf_step_peak
from upload_common.remote_code import refuse_code
from upload_common.st_io import model_specs
from upload_common.step import Step

from . import checks, llama_tree
from .convert import convert_model
from .job import (
    DEFAULT_MIN_TOP1,
    DEFAULT_TOKENS,
    GgufJob,
    deferred_merge,
    intermediate_type,
    merged_tensors,
    wanted_quants,
)
from .lora import base_gguf, check_inputs, make_lora_gguf
from .quantize import compute_imatrix, fallbacks, quantize, quantize_with_imatrix
from .quants import FLOAT_OUTTYPES, get_quant

TOOL = "gguf-tool"


def _name(model_dir: Path, name: str | None) -> str:
    raw = name or Path(model_dir).absolute().name
    return re.sub(r"[^\w.-]+", "-", raw).strip("-") or "model"


def _metadata(model_dir: Path, name: str) -> dict:
    """GGUF general.* metadata a user and the Hub expect; the base model from merge-tool's manifest."""
    meta = {"general.name": name, "general.basename": name, "general.tags": ["upload-driver"]}
    manifest = read_manifest(model_dir) or {}
    base = (manifest.get("decisions") or {}).get("base") or {}
    # only a base that came from the Hub has a Hub id; a local folder's path (which another machine or
    # container cannot even check) is not one
    repo = base.get("repo_id") if base.get("source") == "hub" else None
    if looks_like_repo_id(repo):
        org, _, model = repo.partition("/")
        meta["general.base_models"] = [
            {"name": model, "organization": org, "repo_url": f"https://huggingface.co/{repo}"}
        ]
    kind = ((manifest.get("training") or {}).get("trainer") or {}).get("kind")
    if kind and kind != "unknown":
        meta["general.finetune"] = kind
        meta["general.tags"].append(kind)
    return meta


def run(
    model_dir,
    out,
    *,
    quants=("Q8_0", "Q4_K_M"),
    outtype: str = "auto",
    imatrix=None,
    calibration=None,
    split_max_size: str | None = None,
    lora=None,
    base=None,
    adapter=None,
    validate_tokens: int = DEFAULT_TOKENS,
    eval_text=None,
    reference_cache=None,
    validate: bool = True,
    name: str | None = None,
    min_top1: dict | None = None,
    overwrite: bool = False,
    log=lambda m: None,
) -> dict:
    t0 = time.monotonic()
    model_dir, out = Path(model_dir).absolute(), Path(out)
    wanted = wanted_quants(quants, imatrix, calibration, lora, base)
    check_output_free(out, overwrite)
    refuse_code(model_dir, TOOL)  # a folder that names code is refused before anything is converted
    if eval_text and validate:
        from_file(eval_text)  # a missing, empty or non-UTF-8 text is refused before anything is converted
    if lora:
        check_inputs(Path(base))
    merge_adapter = deferred_merge(model_dir, adapter, base)  # a merge computed while converting
    config = read_json_object(model_dir / "config.json", "model config", "pass a Hugging Face model folder")
    specs = merged_tensors(model_dir, base, merge_adapter).specs if merge_adapter else model_specs(model_dir)
    job = GgufJob(
        model_dir=model_dir,
        name=_name(model_dir, name),
        wanted=wanted,
        inter_type=intermediate_type(wanted, outtype, config),
        thresholds={**DEFAULT_MIN_TOP1, **(min_top1 or {})},
        imatrix=Path(imatrix) if imatrix else None,
        calibration=Path(calibration) if calibration else None,
        split_max_size=split_max_size,
        lora=Path(lora) if lora else None,
        base=Path(base) if base else None,
        merge_adapter=merge_adapter,
        validate=validate,
        validate_tokens=validate_tokens,
        eval_text=Path(eval_text) if eval_text else None,
        reference_cache=Path(reference_cache).absolute() if reference_cache else None,
    )
    with Step(
        TOOL,
        out,
        inputs=job.inputs(),
        params=job.params(),
        overwrite=overwrite,
        libraries=("llama-cpp-python", "torch", "transformers", "gguf"),
        log=log,
        began=t0,
    ) as s:
        _reserve(job, s, specs, config)
        # llama.cpp's programs (for an importance matrix) are built on first need, before anything is written
        tools = llama_tree.ensure_tools(log) if job.needs_tools else {}
        files = s.manifest["files"] = {}
        tool_log = _debug_log(log)  # the converter's own log lines, shown with UPLOAD_DRIVER_DEBUG
        inter_first = _convert(job, s, log, tool_log)
        work = s.folder / "_work"
        refs = None
        if job.validate:  # the 16-bit file is checked against the HF model before anything is quantized
            with s.timed("reference"):
                log(f"validating the {job.inter_type} GGUF against the Hugging Face model")
                refs = checks.references(job, inter_first, job.reference_cache or work / "reference", log)
        with s.timed("quantize"):
            imx = _importance_matrix(job, s, tools, inter_first, log)
            s.outputs(_quantize_all(job, s.folder, inter_first, imx, tools.get("llama-quantize"), log))
        if job.inter_type not in job.wanted:  # no later part reads it: the quants are checked against its log-probs
            for f in _outputs(s.folder, job.name, job.inter_type):
                f.unlink()
        files.update(_describe_files(job, s.folder, s.warn))
        lora_base = None
        if job.lora:
            files["LoRA"] = make_lora_gguf(job.lora, job.base, s.folder / f"{job.name}-LoRA-F16.gguf", work, tool_log)
            files["LoRA"]["files"] = [files["LoRA"].pop("file")]
            lora_base = base_gguf(job.base, work, tool_log) if refs else None
        if refs:
            with s.timed("validate"):
                log("validating each file against its reference")

                def folder_of(q: str) -> Path:
                    return s.folder / files[q]["files"][0]

                s.manifest["decisions"]["reference"] = checks.check_outputs(job, refs, folder_of, files, lora_base, log)
            checks.judge(files, job.thresholds)
        shutil.rmtree(work, ignore_errors=True)
    return s.manifest


def _reserve(job: GgufJob, s: Step, specs: dict, config: dict) -> None:
    """The disk check for the step's peak: every wanted file plus the float intermediate, which lives
    until the last quantization is made (or, with a LoRA adapter, the base's GGUF made to check it)."""
    plan = gguf_step_peak(specs, job.wanted, job.inter_type, int(config.get("vocab_size") or 0))
    if job.lora:
        adapter = sum(f.stat().st_size for f in job.lora.glob("adapter_model.*"))
        plan["intermediate_bytes"] = max(plan["intermediate_bytes"], gguf_bytes(specs, "F16"))
        plan["outputs_bytes"] += adapter
        plan["peak_bytes"] = plan["outputs_bytes"] + plan["intermediate_bytes"]
    s.reserve(plan["peak_bytes"])
    s.manifest["decisions"]["disk"].update(plan)


def _convert(job: GgufJob, s: Step, log, tool_log) -> Path:
    """The model in the intermediate float type (its first file, if split); whether it has a chat template."""
    with s.timed("convert"):
        meta_path = s.folder / "_metadata.json"
        meta_path.write_text(json.dumps(_metadata(job.model_dir, job.name)))
        inter = s.folder / f"{job.name}-{job.inter_type}.gguf"
        # the converter checks the architecture and the tokenizer (pre-tokenizer included) before it
        # computes any tensor data, so those failures come within seconds, before the long part
        log(f"converting to {job.inter_type} with llama.cpp's converter")
        convert_model(
            job.model_dir,
            inter,
            FLOAT_OUTTYPES[job.inter_type],
            name=job.name,
            metadata=meta_path,
            split_max_size=job.split_max_size,
            merge=(job.base, job.merge_adapter) if job.merge_adapter else None,
            log=tool_log,
        )
        meta_path.unlink()
        inter_first = _first_split(s.folder, job.name, job.inter_type)
        template = _chat_template(inter_first)
        if not template:
            s.warn("the tokenizer has no chat template: chat front-ends will not format prompts correctly")
        s.manifest["decisions"]["chat_template"] = bool(template)
    return inter_first


def _importance_matrix(job: GgufJob, s: Step, tools: dict, inter_first: Path, log) -> Path | None:
    """The importance matrix given, or one computed from the calibration text (kept in the output)."""
    if not job.calibration:
        return job.imatrix.absolute() if job.imatrix else None
    with s.timed("imatrix"):
        imx = s.folder / f"{job.name}.imatrix.gguf"
        log("computing the importance matrix from the calibration text")
        on = compute_imatrix(tools["llama-imatrix"], inter_first, job.calibration, imx, nthread=os.cpu_count() or 1)
        s.manifest["decisions"]["imatrix_device"] = on
    return imx


def _quantize_all(job: GgufJob, folder: Path, inter_first: Path, imx: Path | None, quantize_tool, log) -> dict:
    """Every wanted type from the intermediate, a few at a time; returns each file's sha256 (hashed and
    flushed in the background while the next file is made)."""
    todo = [q for q in job.wanted if q != job.inter_type]
    workers = max(1, min(len(todo), (os.cpu_count() or 1) // 4))
    nthread = max(1, (os.cpu_count() or 1) // workers)
    with ThreadPoolExecutor(1) as finisher:
        settling = {}

        def settle_files(q: str) -> None:
            for f in _outputs(folder, job.name, q):
                settling[f.name] = finisher.submit(settle, f)

        def one(q: str) -> None:
            # with keep_split llama.cpp appends -0000i-of-0000N.gguf to the name it is given
            dst = folder / (f"{job.name}-{q}" if job.split_max_size else f"{job.name}-{q}.gguf")
            log(f"quantizing to {q}")
            split = bool(job.split_max_size)
            if imx:
                quantize_with_imatrix(
                    quantize_tool, inter_first, dst, get_quant(q), nthread=nthread, imatrix=imx, keep_split=split
                )
            else:
                quantize(inter_first, dst, get_quant(q), nthread=nthread, keep_split=split)
            settle_files(q)

        if job.inter_type in job.wanted:
            settle_files(job.inter_type)
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, todo))
        return {fname: fut.result() for fname, fut in settling.items()}


def _describe_files(job: GgufJob, folder: Path, warn) -> dict:
    """Each type's files, and the tensors llama.cpp stored in another type than asked (with a warning)."""
    files = {}
    for q in job.wanted:
        first = _first_split(folder, job.name, q)
        info = {"quant": q, "files": [p.name for p in _outputs(folder, job.name, q)]}
        fb = fallbacks(first, get_quant(q))
        if fb:
            info["fallbacks"] = fb
            warn(
                f"{q}: {len(fb)} tensors have rows not a multiple of 256 and were stored as "
                f"{', '.join(sorted({f['type'] for f in fb}))} instead"
            )
        files[q] = info
    return files


def _outputs(folder: Path, name: str, q: str) -> list[Path]:
    """The file of one type, or its splits (-0000i-of-0000N) in order."""
    return sorted(folder.glob(f"{name}-{q}*.gguf"))


def _first_split(folder: Path, name: str, q: str) -> Path:
    files = _outputs(folder, name, q)
    if not files:
        raise InvalidInput(f"llama.cpp wrote no {name}-{q} file")
    return files[0]


def _chat_template(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode() if field else None


def _debug_log(log):
    from upload_common.cli import debug_enabled

    return log if debug_enabled() else (lambda line: None)
