"""The disk a run will use, before it starts: each step's outputs and its temporary peak (gguf-tool's
float intermediate), from the base model's tensor shapes: read from the safetensors headers of a local
base, or from the Hub's metadata for a Hub base (file sizes and safetensors headers through
huggingface_hub; no weights are downloaded). The run's peak is the largest, over its steps, of what the
finished steps left plus what the running one holds at its own peak."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .plan import PlannedStep

MANIFEST = 8 << 10  # a step's manifest.json
REFERENCE_TOKENS = 1024  # gguf-tool's default --validate-tokens (a test checks)
_EXTRA = ("tokenizer", "special_tokens_map", "chat_template", "added_tokens", "vocab", "merges")
_BYTES = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "BOOL": 1, "U8": 1, "I8": 1}


def _extras(folder: Path) -> int:
    """The tokenizer and template files a model set carries beside its weights."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file() and f.name.startswith(_EXTRA))


def arg(step: PlannedStep, flag: str) -> str | None:
    args = list(step.args)
    return next((str(v) for k, v in zip(args, args[1:], strict=False) if k == flag and isinstance(v, str)), None)


def hub_specs(repo_id: str) -> dict:
    """Tensor name -> {"shape", "dtype"} of a Hub model, from its safetensors headers (range requests)."""
    from huggingface_hub import constants

    return _hub_specs((os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/"), repo_id)


@functools.lru_cache(maxsize=8)
def _hub_specs(endpoint: str, repo_id: str) -> dict:
    from huggingface_hub import HfApi

    from .preflight import _bounded

    api = HfApi(endpoint=endpoint)
    meta = _bounded(f"reading {repo_id}'s tensor list", endpoint, lambda: api.get_safetensors_metadata(repo_id))
    return {
        name: {"shape": list(t.shape), "dtype": t.dtype}
        for fm in meta.files_metadata.values()
        for name, t in fm.tensors.items()
    }


def base_specs(step: PlannedStep) -> dict | None:
    """The base's tensors (local folder or Hub id), or None when the step names no base."""
    if "base" in step.inputs:
        from upload_common.st_io import model_specs

        return model_specs(step.inputs["base"])
    repo = arg(step, "--base")
    try:
        return hub_specs(repo) if repo else None
    except Exception:  # noqa: BLE001 - unreachable, gated, not safetensors: size unknown; the merge says why
        return None


def merged_bytes(specs: dict, dtype: str | None) -> int:
    """The merged safetensors: every tensor in the 16-bit type (fp32 when asked), and the header."""
    width = 4 if dtype == "fp32" else 2
    return sum(math.prod(s["shape"]) * width + len(n) + 64 for n, s in specs.items())


def _gguf(step: PlannedStep, sizes: dict) -> int | None:
    from upload_common.gguf_size import gguf_step_peak
    from upload_common.quants import FLOAT_OUTTYPES, QUANTS

    specs = sizes.get("specs")
    if not specs:
        return None
    quants = [q.upper() for q in _all(step, "--quant") if q.upper() in QUANTS]  # preflight reports the others
    floats = [q for q in quants if q in FLOAT_OUTTYPES]
    vocab = _vocab(specs)
    plan = gguf_step_peak(specs, quants, floats[0] if floats else "BF16", vocab)
    sizes.setdefault("temporary", {})[step.name] = plan["intermediate_bytes"]
    kept = sizes.setdefault("kept", {})[step.name] = _references(step, vocab, sizes, own=1)
    return plan["outputs_bytes"] + MANIFEST + kept


def _vocab(specs: dict) -> int:
    return max((s["shape"][0] for n, s in specs.items() if "embed_tokens" in n), default=0)


def _references(step: PlannedStep, vocab: int, sizes: dict, own: int) -> int:
    """The validation's reference files the run keeps for a rerun (its cache/reference folder): the Hugging
    Face model's next-token log-probabilities once per run (gguf-tool and the quantized formats share that
    file), and ``own`` files of the step's own (gguf-tool: the 16-bit GGUF's); float32 per position and
    vocabulary entry, in .npy files (a chunk's leading token, a header)."""
    if "--no-validate" in step.args:
        return 0
    tokens = int(arg(step, "--validate-tokens") or REFERENCE_TOKENS)
    first = not sizes.get("hf_reference")
    sizes["hf_reference"] = True
    return (own + first) * ((tokens + 2) * vocab * 4 + 128)


def _all(step: PlannedStep, flag: str) -> list[str]:
    args = list(step.args)
    return [str(v) for k, v in zip(args, args[1:], strict=False) if k == flag]


def _merge(step: PlannedStep, sizes: dict) -> int | None:
    if "model" in step.inputs:  # a format made from the merge: its weights at the format's bits (else the merge's size)
        from .memory_plan import quantized_bytes

        weights = quantized_bytes(step.name, sizes.get("specs"), sizes.get("width", 2))
        if weights is None:
            return sizes.get("merged")
        kept = sizes.setdefault("kept", {})[step.name] = _references(step, _vocab(sizes["specs"]), sizes, own=0)
        return weights + sizes["extras"] + kept
    adapter = Path(step.inputs["adapter"])
    if step.name == "lora":
        weights = next(iter(adapter.glob("adapter_model.*")), None)
        return weights.stat().st_size + _extras(adapter) + MANIFEST if weights else None
    specs = base_specs(step)
    if not specs:
        return None
    sizes.update(specs=specs, width=4 if arg(step, "--dtype") == "fp32" else 2, extras=_extras(adapter) + MANIFEST)
    sizes["merged"] = merged_bytes(specs, arg(step, "--dtype")) + sizes["extras"]
    if "--defer-weights" in step.args:  # the config, tokenizer and recipe: gguf-tool computes the weights
        return sizes["extras"] + MANIFEST
    return sizes["merged"]


def estimate(step: PlannedStep, sizes: dict) -> int | None:
    """Bytes a step leaves (None when they cannot be known); its temporary peak in sizes["temporary"], what
    it keeps beside its output folder in sizes["kept"] (not published)."""
    if step.tool == "merge-tool":
        out = _merge(step, sizes)
    elif step.tool == "gguf-tool":
        out = _gguf(step, sizes)
    elif step.name == "docs":
        out = 64 << 10
    else:  # a local publish copies the sets and the cards; the others write a manifest
        made = sizes.setdefault("made", {})
        out = sum(made.get(k) or 0 for k in step.inputs) if "site" in step.rw else MANIFEST
    sizes.setdefault("made", {})[step.name] = out and out - sizes.get("kept", {}).get(step.name, 0)
    return out


def peak(steps: Sequence[PlannedStep], will_run: set, sizes: dict) -> tuple[int, list]:
    """(the run's peak bytes on disk, [(step, bytes it leaves)]) for the steps in ``will_run``."""
    rows = [(s.name, estimate(s, sizes)) for s in steps]
    held = top = 0
    for name, out in rows:
        if name not in will_run or not out:
            continue
        top = max(top, held + out + sizes.get("temporary", {}).get(name, 0))
        held += out
    return top, rows


def step_peaks(steps: Sequence[PlannedStep]) -> dict[str, int | None]:
    """Step name -> the bytes it holds on disk at its own peak: what it leaves plus its temporary files
    (None when they cannot be known)."""
    sizes: dict = {}
    rows = [(s.name, estimate(s, sizes)) for s in steps]
    return {name: out and out + sizes.get("temporary", {}).get(name, 0) for name, out in rows}


def check_step(step: PlannedStep, need: int | None) -> None:
    """Refuse to start ``step`` when the file system it writes to (a local publish: the target's) has
    less free than its predicted peak and the margin; an unknown prediction is not checked here (the
    tool checks its own estimate)."""
    import shutil

    from upload_common.contract import SPACE_MARGIN, _size, nearest_existing
    from upload_common.errors import NotEnoughSpace

    if not need:
        return
    probe = nearest_existing(step.rw.get("site", step.out))
    free = shutil.disk_usage(probe).free
    if free < need + SPACE_MARGIN:
        fix = "publish to another local: folder" if "site" in step.rw else "pass --work on another disk"
        raise NotEnoughSpace(
            f"step {step.name} needs ~{_size(need)} at its peak (plus a {_size(SPACE_MARGIN)} margin) in {probe} "
            f"but only {_size(free)} is free now: free some space, or {fix}, and run again "
            "(finished steps are kept)",
            step=step.name,
            need=need,
            free=free,
            margin=SPACE_MARGIN,
        )
