"""gguf-tool's step: a Hugging Face model folder in; GGUF files, each validated, out."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from upload_common.cards import looks_like_repo_id
from upload_common.contract import (atomic_output, check_free_space, check_output_free, describe_input, finish_manifest,
                                    library_versions, new_manifest, read_json_object, read_manifest, settle)
from upload_common.errors import InvalidInput, UsageError
from upload_common.remote_code import refuse_code
from upload_common.st_io import model_specs

from . import llama_tree
from . import validate as val
from .convert import convert_model
from .lora import base_gguf, check_inputs, make_lora_gguf
from .quants import BITS, FLOAT_OUTTYPES, get_quant
from .quantize import compute_imatrix, fallbacks, quantize, quantize_with_imatrix

TOOL = "gguf-tool"
DEFAULT_MIN_TOP1 = {"F32": 0.99, "F16": 0.99, "BF16": 0.99, "Q8_0": 0.97, "LoRA": 0.99}


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
        meta["general.base_models"] = [{"name": model, "organization": org, "repo_url": f"https://huggingface.co/{repo}"}]
    kind = ((manifest.get("training") or {}).get("trainer") or {}).get("kind")
    if kind and kind != "unknown":
        meta["general.finetune"] = kind
        meta["general.tags"].append(kind)
    return meta


def _params_count(specs: dict) -> int:
    return sum(math.prod(s["shape"]) for s in specs.values())


def run(model_dir, out, *, quants=("Q8_0", "Q4_K_M"), outtype: str = "auto", imatrix=None, calibration=None,
        split_max_size: str | None = None, lora=None, base=None, validate_tokens: int = 128, validate: bool = True, name: str | None = None,
        min_top1: dict | None = None, overwrite: bool = False, log=lambda m: None) -> dict:
    t0 = time.monotonic()
    model_dir, out = Path(model_dir).absolute(), Path(out)
    wanted = list(dict.fromkeys(get_quant(q)["name"] for q in quants))
    if not wanted:
        raise UsageError("no --quant given: name at least one, e.g. --quant Q4_K_M")
    needy = [q for q in wanted if get_quant(q)["needs_imatrix"]]
    if needy and not (imatrix or calibration):
        raise UsageError(f"{', '.join(needy)} need an importance matrix: pass --imatrix FILE or --calibration TEXTFILE")
    for flag, given in (("--imatrix", imatrix), ("--calibration", calibration)):
        if given and not Path(given).is_file():
            raise UsageError(f"{flag} {given} does not exist")
    if lora and not base:
        raise UsageError("--lora needs --base DIR: the base model folder the adapter was trained on")
    check_output_free(out, overwrite)
    refuse_code(model_dir, TOOL)  # a folder that names code is refused before anything is converted
    if lora:
        check_inputs(Path(base))
    config = read_json_object(model_dir / "config.json", "model config", "pass a Hugging Face model folder")
    specs = model_specs(model_dir)
    thresholds = {**DEFAULT_MIN_TOP1, **(min_top1 or {})}
    name = _name(model_dir, name)
    floats = [q for q in wanted if q in FLOAT_OUTTYPES]
    inter_type = floats[0] if floats else {"auto": None, **{v: k for k, v in FLOAT_OUTTYPES.items()}}.get(outtype)
    if inter_type is None:
        inter_type = "BF16" if str(config.get("dtype") or config.get("torch_dtype")) == "bfloat16" else "F16"
    n_params = _params_count(specs)
    need = n_params * 2 + sum(int(n_params * BITS.get(q, 5) / 8) for q in wanted)
    disk = check_free_space(out, need)
    # the library's C API cannot take an importance matrix: llama.cpp's programs do (built on first need)
    tools = llama_tree.ensure_tools(log) if (imatrix or calibration) else {}

    params = {"quants": wanted, "intermediate": inter_type, "imatrix": bool(imatrix), "calibration": bool(calibration),
              "split_max_size": split_max_size,
              "validate": validate, "validate_tokens": validate_tokens, "min_top1": thresholds, "name": name}
    inputs = {"model": describe_input(model_dir)}
    for key, given in (("imatrix", imatrix), ("calibration", calibration)):
        if given:
            inputs[key] = describe_input(Path(given))
    if lora:
        inputs.update(lora=describe_input(Path(lora)), lora_base=describe_input(Path(base)))
    manifest = new_manifest(TOOL, inputs=inputs, parameters=params)
    warnings, files = manifest["warnings"], {}
    manifest["decisions"]["disk"] = disk
    manifest["files"] = files
    tool_log = _debug_log(log)  # the converter's own log lines, shown with UPLOAD_DRIVER_DEBUG
    with atomic_output(out, overwrite=overwrite) as partial:
        meta_path = partial / "_metadata.json"
        meta_path.write_text(json.dumps(_metadata(model_dir, name)))
        t = time.monotonic()
        inter = partial / f"{name}-{inter_type}.gguf"
        # the converter checks the architecture and the tokenizer (pre-tokenizer included) before it
        # computes any tensor data, so those failures come within seconds, before the long part
        log(f"converting to {inter_type} with llama.cpp's converter")
        convert_model(model_dir, inter, FLOAT_OUTTYPES[inter_type], name=name, metadata=meta_path,
                      split_max_size=split_max_size, log=tool_log)
        meta_path.unlink()
        inter_first = _first_split(partial, name, inter_type)
        template = _chat_template(inter_first)
        if not template:
            warnings.append("the tokenizer has no chat template: chat front-ends will not format prompts correctly")
        manifest["decisions"]["chat_template"] = bool(template)
        manifest["timings"]["seconds"]["convert"] = round(time.monotonic() - t, 3)

        t = time.monotonic()
        imx = Path(imatrix).absolute() if imatrix else None
        if calibration:
            imx = partial / f"{name}.imatrix.gguf"
            log("computing the importance matrix from the calibration text")
            compute_imatrix(tools["llama-imatrix"], inter_first, Path(calibration), imx, nthread=os.cpu_count() or 1)
            manifest["timings"]["seconds"]["imatrix"] = round(time.monotonic() - t, 3)
        todo = [q for q in wanted if q != inter_type]
        workers = max(1, min(len(todo), (os.cpu_count() or 1) // 4))
        nthread = max(1, (os.cpu_count() or 1) // workers)

        def one(q: str) -> Path:
            # with keep_split llama.cpp appends -0000i-of-0000N.gguf to the name it is given
            dst = partial / (f"{name}-{q}" if split_max_size else f"{name}-{q}.gguf")
            log(f"quantizing to {q}")
            if imx:
                quantize_with_imatrix(tools["llama-quantize"], inter_first, dst, get_quant(q), nthread=nthread,
                                      imatrix=imx, keep_split=bool(split_max_size))
            else:
                quantize(inter_first, dst, get_quant(q), nthread=nthread, keep_split=bool(split_max_size))
            settle_files(q)
            return dst

        with ThreadPoolExecutor(1) as finisher:  # hashes and flushes each file while the next is made
            settling = {}

            def settle_files(q: str) -> None:
                for f in _outputs(partial, name, q):
                    settling[f.name] = finisher.submit(settle, f)

            if inter_type in wanted:
                settle_files(inter_type)
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, todo))
            known = {fname: fut.result() for fname, fut in settling.items()}
        manifest["timings"]["seconds"]["quantize"] = round(time.monotonic() - t, 3)
        if inter_type not in wanted:
            for f in _outputs(partial, name, inter_type):
                f.unlink()

        for q in wanted:
            first = _first_split(partial, name, q)
            info = {"quant": q, "files": [p.name for p in _outputs(partial, name, q)]}
            fb = fallbacks(first, get_quant(q))
            if fb:
                info["fallbacks"] = fb
                warnings.append(f"{q}: {len(fb)} tensors have rows not a multiple of 256 and were stored as "
                                f"{', '.join(sorted({f['type'] for f in fb}))} instead")
            files[q] = info

        work = partial / "_work"
        if lora:
            files["LoRA"] = make_lora_gguf(Path(lora), Path(base), partial / f"{name}-LoRA-F16.gguf", work, tool_log)
            files["LoRA"]["files"] = [files["LoRA"].pop("file")]
        if validate:
            t = time.monotonic()
            log(f"validating against the Hugging Face model ({validate_tokens} tokens)")
            ids, ref = val.reference(model_dir, val.VALIDATION_TEXT, validate_tokens)
            checks = [(q, _first_split(partial, name, q), None) for q in wanted]
            if lora:  # the adapter over the base must compute what the merged model computes
                checks.append(("LoRA", base_gguf(Path(base), work, tool_log), partial / files["LoRA"]["files"][0]))
            for q, path, adapter in checks:
                figures = val.validate(path, ids, ref, val.VALIDATION_TEXT, lora=adapter)
                files[q]["validation"] = figures
                log(f"  {q}: top-1 {figures['top1_agreement']:.3f}, mean KL {figures['mean_kl']:.5f}")
            manifest["timings"]["seconds"]["validate"] = round(time.monotonic() - t, 3)
            _judge(files, thresholds)
        shutil.rmtree(work, ignore_errors=True)
        manifest["versions"] = library_versions("llama-cpp-python", "torch", "transformers", "gguf")
        finish_manifest(manifest, partial, known, t0)
    for w in warnings:
        log(f"WARNING: {w}")
    return manifest


def _judge(files: dict, thresholds: dict) -> None:
    bad = []
    for q, info in files.items():
        v = info["validation"]
        if not v["tokenization_matches"]:
            bad.append(f"{q} tokenizes the validation text differently from the HF tokenizer (is tokenizer.model "
                       "missing from the model folder?)")
        elif q in thresholds and v["top1_agreement"] < thresholds[q]:
            bad.append(f"{q} agrees with the HF model on {v['top1_agreement']:.3f} of next tokens "
                       f"(needs {thresholds[q]}; mean KL {v['mean_kl']:.4f})")
    if bad:
        raise InvalidInput("validation failed: " + "; ".join(bad), validation=files)


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

