"""Unsloth as an optional merge engine (it needs a CUDA GPU and the unsloth package). The streaming
merge is the default: it needs neither, and it is the one the tests prove exact."""

from __future__ import annotations

from upload_common.errors import Unsupported


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


def write(adapter_dir, folder, dtype: str) -> None:  # pragma: no cover - needs a GPU
    """Unsloth's merged 16-bit save, asked for ``dtype``. It may keep another floating dtype (a float32
    base stays float32): the caller converts what it wrote and reads the dtype back from the files."""
    import torch
    from unsloth import FastLanguageModel

    torch_dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(dtype)
    model, tokenizer = FastLanguageModel.from_pretrained(
        str(adapter_dir), load_in_4bit=False, trust_remote_code=False, dtype=torch_dtype
    )
    model.save_pretrained_merged(str(folder), tokenizer, save_method="merged_16bit")
