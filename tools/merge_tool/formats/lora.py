"""``lora``: the adapter as it is, in safetensors, with its config and tokenizer. Its tensors were
checked for NaN/infinity when it was read (merge_tool.adapter.read_adapter)."""

from __future__ import annotations

import errno
import json
import shutil

from upload_common.st_io import read_header

from ..job import Job, Plan, Written

NEEDS_BASE = False


def plan(job: Job) -> Plan[None]:
    adapter = job.adapter
    read_header(adapter.weights)  # truncated or corrupt files fail here, before anything is written
    converted = adapter.converted_from
    return Plan(
        job,
        adapter.weights.stat().st_size + (1 << 20),
        None,
        decisions={"weights": f"converted from {converted} (weights_only)" if converted else "copied"},
    )


def write(plan: Plan[None], folder, progress) -> Written:
    adapter = plan.job.adapter
    dst = folder / "adapter_model.safetensors"
    try:
        shutil.copyfile(adapter.weights, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # shutil names the source: the full disk is the copy's
            exc.filename, exc.filename2 = str(dst), None
        raise
    progress(dst.stat().st_size)
    (folder / "adapter_config.json").write_text(json.dumps(adapter.config, indent=2) + "\n")
    return Written()
