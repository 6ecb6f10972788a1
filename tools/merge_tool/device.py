"""Where the merge maths runs: CUDA when torch sees a GPU with room for the largest tensors."""

from __future__ import annotations

from upload_common.errors import Unsupported


def pick_device(requested: str, largest_fp32_bytes: int) -> tuple[str, dict]:
    import torch

    info = {"requested": requested, "largest_tensor_fp32_bytes": largest_fp32_bytes}
    if requested == "cpu":
        return "cpu", {**info, "value": "cpu", "why": "--device cpu"}
    need = 4 * largest_fp32_bytes  # base, update, result and a temporary
    if torch.cuda.is_available():  # pragma: no cover - no GPU on the CI machines
        free, total = torch.cuda.mem_get_info()
        info.update(cuda_free_bytes=free, cuda_total_bytes=total, cuda_name=torch.cuda.get_device_name())
        if free >= need:
            return "cuda", {**info, "value": "cuda", "why": f"GPU has {free >> 20} MiB free, needs {need >> 20} MiB"}
        why = f"GPU has only {free >> 20} MiB free, needs {need >> 20} MiB"
    else:
        why = "torch sees no CUDA GPU"
    if requested == "cuda":
        raise Unsupported(f"--device cuda, but {why}: use --device cpu (the merge streams, so CPU is fine)")
    return "cpu", {**info, "value": "cpu", "why": why}
