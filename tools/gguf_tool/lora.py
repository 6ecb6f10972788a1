"""A LoRA adapter as GGUF, at the strength peft gives it, checked over the base GGUF in llama.cpp.

llama.cpp scales every adapter by alpha/r; an rsLoRA adapter (alpha/sqrt(r)) is converted from a
copy whose config says ``lora_alpha = alpha * sqrt(r)``, which gives the same strength. llama.cpp
has no per-module alpha or rank, so adapters with patterns are refused rather than mis-scaled.

The converter reads the adapter from a copy holding only its config and weights (never a .py file or
tokenizer beside them) and the base folder as it is, so a base that refers to code is refused in one
line: by ``check_inputs``, for a caller to use before any work, and by convert_lora in any case."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from upload_common.contract import read_json_object
from upload_common.errors import Unsupported
from upload_common.remote_code import refuse_code

from .convert import TOOL, convert_lora, convert_model


def check_inputs(base_dir: Path) -> None:
    """Refuse, in one line, a base model folder that refers to code (auto_map, custom_pipelines):
    llama.cpp reads it as it is. convert_lora checks it too; a caller checks here before any work."""
    refuse_code(base_dir, TOOL, "base model folder")


def adapter_for_llama_cpp(adapter_dir: Path, work: Path) -> tuple[Path, dict]:
    """A copy of the adapter whose config llama.cpp reads correctly; and what was changed."""
    config = read_json_object(
        Path(adapter_dir) / "adapter_config.json", "adapter config", "pass a LoRA adapter folder with --lora"
    )
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise Unsupported(f"--lora takes a LoRA adapter; this one is {config.get('peft_type')}")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise Unsupported(
            "the adapter has per-module rank/alpha patterns, which llama.cpp's LoRA format cannot "
            "express: use the merged model's GGUF instead"
        )
    if config.get("use_dora"):
        raise Unsupported("llama.cpp cannot apply DoRA adapters: use the merged model's GGUF instead")
    change = {}
    if config.get("use_rslora"):
        alpha = config["lora_alpha"] * math.sqrt(config["r"])
        change = {"lora_alpha": alpha, "use_rslora": False, "why": "rsLoRA: llama.cpp applies alpha/r"}
        config = {**config, "lora_alpha": alpha, "use_rslora": False}
    work.mkdir(parents=True, exist_ok=True)
    (work / "adapter_config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(Path(adapter_dir) / "adapter_model.safetensors", work / "adapter_model.safetensors")
    return work, change


def make_lora_gguf(adapter_dir: Path, base_dir: Path, dest: Path, work: Path, log) -> dict:
    copy, change = adapter_for_llama_cpp(adapter_dir, work / "adapter")
    log("converting the LoRA adapter")
    convert_lora(copy, base_dir, dest, "f16", log)
    return {"file": dest.name, "config_change": change}


def base_gguf(base_dir: Path, work: Path, log) -> Path:
    """The base model as F16 GGUF, for loading the adapter over it during validation."""
    dest = work / "base-F16.gguf"
    convert_model(base_dir, dest, "f16", log=log)
    return dest
