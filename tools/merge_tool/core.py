"""merge-tool's step: trainer output (or adapter folder) in, one format's folder out.

No code from the trainer folder or the base model ever runs or is published: the files copied are
named (never a .py file), and a config that refers to code (auto_map, custom_pipelines) is written
without the reference, with a warning, or refused before any work when the model needs that code
(upload_common.remote_code)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from upload_common.cards import BASE_KEYS, TRAINER_KEYS, front_matter
from upload_common.contract import check_output_free, describe_input
from upload_common.errors import InvalidInput, UsageError
from upload_common.progress import byte_progress
from upload_common.remote_code import CONFIG_FILES, check_sanitizable, python_files, read_config, sanitize, scan
from upload_common.sets import get_set
from upload_common.step import Step
from upload_common.trainer_output import TOKENIZER_FILES, inspect_trainer_output

from .adapter import check_values, pickle_to_safetensors, read_adapter
from .base import TOOL, resolve_base
from .formats import Format, get_format
from .job import Adapter, Base, Job, Plan


def copy_tokenizer(found: dict, base: Base | None, folder: Path, warnings: list) -> dict:
    """The trainer's tokenizer (else the base's), always with a sentencepiece model when the base has
    one: without it llama.cpp falls back to tokenizer.json and tokenizes differently."""
    tok = found["tokenizer"]
    src = Path(tok["dir"]) if tok.get("dir") else None
    if src is None and base:
        src = base.path
        warnings.append("no tokenizer in the trainer output: using the base model's")
    copied = {}
    for name in TOKENIZER_FILES:
        if src and (src / name).is_file():
            _copy_without_code(src / name, folder / name, warnings)
            copied[name] = str(src)
    if base and "tokenizer.model" not in copied and (base.path / "tokenizer.model").is_file():
        shutil.copyfile(base.path / "tokenizer.model", folder / "tokenizer.model")
        copied["tokenizer.model"] = str(base.path)
    if base:
        gen = base.path / "generation_config.json"
        if gen.is_file():
            _copy_without_code(gen, folder / "generation_config.json", warnings)
    return copied


def copy_model_files(model_dir: Path, folder: Path, warnings: list) -> dict:
    """The tokenizer and generation config of a model folder (merge-tool's merged_16bit output, which
    has them from the trainer and the base), into a format made from it."""
    copied = {}
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (model_dir / name).is_file():
            _copy_without_code(model_dir / name, folder / name, warnings)
            copied[name] = str(model_dir)
    return copied


def _copy_without_code(src: Path, dst: Path, warnings: list) -> None:
    """Copy a file; a config file that refers to code is written without the reference."""
    data = read_config(src) if src.name in CONFIG_FILES else None
    clean, warning = sanitize(src.name, data, src.parent, TOOL) if data else (None, None)
    if warning is None:
        shutil.copyfile(src, dst)
        return
    dst.write_text(json.dumps(clean, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if warning not in warnings:
        warnings.append(warning)


def check_no_code(found: dict, base: Base | None = None) -> None:
    """Refuse now, before any slow step, what copy_tokenizer would refuse later (a tokenizer or
    generation config that needs the code it refers to): the trainer's tokenizer, or with ``base``
    the base's files copied into the output."""
    tok_dir = found["tokenizer"].get("dir")
    if base is None:
        if tok_dir:
            check_sanitizable(tok_dir, ["tokenizer_config.json"], TOOL)
        return
    check_sanitizable(base.path, ["generation_config.json"] + ([] if tok_dir else ["tokenizer_config.json"]), TOOL)


def _drop_code(folder: Path, warnings: list) -> None:
    """The last word before the manifest: whatever a format's writer saved (a library's save_pretrained
    may add auto_map and copy .py files), the output carries no code reference and no .py file."""
    for finding in scan(folder):
        _copy_without_code(folder / finding.file, folder / finding.file, warnings)
    for name in python_files(folder):
        (folder / name).unlink()
        warnings.append(f"{name} (Python code) written by the {folder.name} writer: removed, outputs carry no code")


def run(
    adapter_path,
    out,
    *,
    base: str | None = None,
    method: str = "merged_16bit",
    dtype: str = "auto",
    max_shard_size: str = "5GB",
    checkpoint: int | None = None,
    device: str = "auto",
    engine: str = "streaming",
    overwrite: bool = False,
    allow_pickle: bool = False,
    calibration=None,
    defer_weights: bool = False,
    log=lambda m: None,
) -> dict:
    """Export or merge; returns the step manifest written beside the output files. ``defer_weights``
    (merged_16bit only): the merge's recipe instead of its weights, for gguf-tool."""
    t0 = time.monotonic()
    fmt = get_format(method)
    if get_set(method).consumes:
        raise UsageError(
            f"{method} is made from the merged 16-bit model: make that once (merge-tool --method "
            f"merged_16bit) and pass its folder as --model (upload-driver run does both)",
            method=method,
        )
    if defer_weights and method != "merged_16bit":
        raise UsageError(f"--defer-weights is for --method merged_16bit (the merge gguf-tool converts), not {method}")
    out = Path(out)
    if dtype not in ("auto", "bf16", "fp16", "fp32"):
        raise UsageError(f"unknown dtype {dtype!r}: choose auto, bf16, fp16 or fp32")
    check_output_free(out, overwrite)
    found = inspect_trainer_output(adapter_path, checkpoint=checkpoint)
    check_no_code(found)
    log(f"adapter: {found['adapter']['path']} ({found['adapter']['reason']})")
    adapter_dir = Path(found["adapter"]["path"])
    params = {
        "method": method,
        "dtype": dtype,
        "max_shard_size": max_shard_size,
        "device": device,
        "engine": engine,
        "checkpoint": checkpoint,
        "base": base,
        "calibration": str(calibration) if calibration else None,
        **({"defer_weights": True} if defer_weights else {}),  # absent when not asked: fingerprints unchanged
    }
    with tempfile.TemporaryDirectory(prefix="merge-tool-") as tmp:
        if (adapter_dir / "adapter_model.bin").is_file() and not (adapter_dir / "adapter_model.safetensors").is_file():
            adapter = _read_pickled(adapter_dir, Path(tmp), allow_pickle)
        else:
            adapter = read_adapter(adapter_dir)
        resolved = Base.from_resolved(resolve_base(base, adapter.config, log=log)) if fmt.NEEDS_BASE else None
        if resolved:
            check_no_code(found, resolved)
        inputs = {"adapter": describe_input(adapter.weights, folder=str(adapter_dir))}
        # what else is read from the trainer output (its state, README, arguments, tokenizer) shapes the
        # manifest and the cards: the folder's files by name, size and time are part of the step's identity
        inputs["trainer_output"] = describe_input(Path(found["root"]))
        if resolved:
            inputs["base"] = describe_input(resolved.path, repo_id=resolved.repo_id, revision=resolved.revision)
        if calibration and getattr(fmt, "CALIBRATION", False):
            inputs["calibration"] = describe_input(Path(calibration))
        with Step(
            TOOL, out, inputs=inputs, params=params, overwrite=overwrite, libraries=libraries(fmt), log=log, began=t0
        ) as s:
            # the adapter's values and the plan are checked first, before anything is written; --fingerprint
            # stops where the Step begins, so it reads no tensor and imports no torch
            check_values(adapter)
            plan = fmt.plan(Job(params=params, found=found, adapter=adapter, base=resolved))
            manifest = s.manifest
            manifest["decisions"] = {"adapter": found["adapter"] | {"config": None}, **plan.decisions}
            if resolved:
                manifest["decisions"]["base"] = resolved.decision()
                card = front_matter(resolved.path, BASE_KEYS)
                if "license" not in card and isinstance(resolved.config.get("license"), str):
                    card["license"] = resolved.config["license"]  # some configs name it where the card does not
                manifest["decisions"]["base"]["card"] = card
            s.reserve(plan.estimated_bytes)
            manifest["warnings"] = [*(resolved.warnings if resolved else ()), *plan.warnings]
            manifest["training"] = {
                "trainer": found["trainer"],
                "summary": found["training"],
                "card": front_matter(adapter_dir, TRAINER_KEYS) or front_matter(found["root"], TRAINER_KEYS),
                "adapter": _adapter_summary(adapter.config),
            }
            write_format(
                fmt, method, plan, s, lambda folder, warnings: copy_tokenizer(found, resolved, folder, warnings)
            )
    return s.manifest


def libraries(fmt: Format) -> tuple[str, ...]:
    return ("torch", "safetensors", "huggingface_hub", "bitsandbytes", *getattr(fmt, "LIBRARIES", ()))


def write_format(fmt: Format, method: str, plan: Plan, s: Step, tokenizer) -> None:
    """The format's files written into the step's folder, then ``tokenizer(folder, warnings)`` (the
    tokenizer files copied in, returning what came from where), no code left, and what a quantized
    format measured while writing recorded."""
    with s.timed("write"):
        with byte_progress(f"{method} -> {s.out.name}", plan.estimated_bytes) as advance:
            written = fmt.write(plan, s.folder, advance)
            s.outputs(written.hashes)
        s.manifest["decisions"].update(written.decisions or {})
        s.manifest["decisions"]["tokenizer"] = tokenizer(s.folder, s.warnings)
        _drop_code(s.folder, s.warnings)
    if written.quantization is not None:
        s.manifest["quantization"] = written.quantization
    if written.validation is not None:
        s.manifest["validation"] = written.validation


def _adapter_summary(config: dict) -> dict:
    """What a model card says about the adapter."""
    keys = (
        "peft_type",
        "r",
        "lora_alpha",
        "target_modules",
        "use_rslora",
        "use_dora",
        "lora_dropout",
        "base_model_name_or_path",
        "modules_to_save",
    )
    return {k: config.get(k) for k in keys if config.get(k) not in (None, [], {})}


def _read_pickled(adapter_dir: Path, tmp: Path, allow_pickle: bool) -> Adapter:
    if not allow_pickle:
        raise InvalidInput(
            f"{adapter_dir} holds only a pickle adapter (adapter_model.bin): pass --allow-pickle to "
            "convert it safely (torch.load with weights_only=True)",
            path=str(adapter_dir),
        )
    shutil.copyfile(adapter_dir / "adapter_config.json", tmp / "adapter_config.json")
    pickle_to_safetensors(adapter_dir / "adapter_model.bin", tmp / "adapter_model.safetensors")
    return dataclasses.replace(read_adapter(tmp), converted_from=str(adapter_dir / "adapter_model.bin"))
