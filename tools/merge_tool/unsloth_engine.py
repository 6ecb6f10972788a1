"""Unsloth as an optional merge engine (it needs a CUDA GPU and the unsloth package). The streaming
merge is the default: it needs neither, and it is the one the tests prove exact.

Unsloth merges the adapter into the base its config names. So that it merges into the base merge-tool
resolved, and the manifest records (``--base``, or the 16-bit original of a bitsandbytes name), it is
given a view of the adapter whose config names that base's folder: the config rewritten, the weights
linked, inside the output folder and removed once it has saved."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from upload_common.errors import Unsupported

VIEW = ".unsloth-adapter"  # the adapter as Unsloth reads it, inside the output folder while it saves


def check_available() -> str:
    try:
        import unsloth
    except ImportError:
        raise Unsupported(
            "--engine unsloth needs the unsloth package and a CUDA GPU: pip install unsloth, or use "
            "the default --engine streaming, which needs neither"
        ) from None
    except Exception as exc:  # unsloth raises at import time when it finds no accelerator
        raise Unsupported(
            f"unsloth cannot run here ({' '.join(str(exc).split())[:120]}): use the default --engine streaming"
        ) from None
    return getattr(unsloth, "__version__", "unknown")  # pragma: no cover - needs a GPU


def adapter_view(config: dict, weights: Path, base: Path, into: Path) -> Path:
    """The adapter with its config naming ``base`` (a folder), its weights file linked (copied where links
    are not possible); nothing else of the trainer's folder."""
    into.mkdir(parents=True)
    (into / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}, indent=2))
    target = into / weights.name
    try:
        os.link(weights, target)
    except OSError:
        shutil.copyfile(weights, target)
    return into


def write(config: dict, weights: Path, base: Path, folder: Path, dtype: str) -> None:
    """Unsloth's merged 16-bit save of the adapter over ``base`` into ``folder``, asked for ``dtype``. It may
    keep another floating dtype (a float32 base stays float32): the caller converts what it wrote and
    reads the dtype back from the files."""
    view = adapter_view(config, Path(weights), Path(base), Path(folder) / VIEW)
    try:
        save_merged(view, Path(folder), dtype)
    finally:
        shutil.rmtree(view, ignore_errors=True)


def save_merged(adapter_dir: Path, folder: Path, dtype: str) -> None:  # pragma: no cover - needs a GPU
    import torch
    from unsloth import FastLanguageModel

    torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(dtype)
    model, tokenizer = FastLanguageModel.from_pretrained(
        str(adapter_dir), load_in_4bit=False, trust_remote_code=False, dtype=torch_dtype
    )
    model.save_pretrained_merged(str(folder), tokenizer, save_method="merged_16bit")
