"""``lora``: the adapter as it is, in safetensors, with its config and tokenizer. Its tensors were
checked for NaN/infinity when it was read (merge_tool.adapter.read_adapter)."""

from __future__ import annotations

import errno
import json
import shutil

from upload_common.st_io import read_header

NEEDS_BASE = False


def plan(job: dict) -> dict:
    adapter = job["adapter"]
    read_header(adapter["weights"])  # truncated or corrupt files fail here, before anything is written
    converted = adapter.get("converted_from")
    return {
        "job": job,
        "estimated_bytes": adapter["weights"].stat().st_size + (1 << 20),
        "warnings": [],
        "decisions": {"weights": f"converted from {converted} (weights_only)" if converted else "copied"},
    }


def write(plan: dict, folder, progress) -> dict:
    adapter = plan["job"]["adapter"]
    dst = folder / "adapter_model.safetensors"
    try:
        shutil.copyfile(adapter["weights"], dst)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # shutil names the source: the full disk is the copy's
            exc.filename, exc.filename2 = str(dst), None
        raise
    progress(dst.stat().st_size)
    (folder / "adapter_config.json").write_text(json.dumps(adapter["config"], indent=2) + "\n")
    return {}
