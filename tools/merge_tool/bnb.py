"""Dequantizing a bitsandbytes checkpoint tensor by tensor, on CPU, with bitsandbytes itself.

4-bit (nf4/fp4, with or without double quantization) goes through
``bitsandbytes.functional.dequantize_4bit`` and the saved quant state; 8-bit (LLM.int8) weights
are ``int8 * SCB / 127`` per output row."""

from __future__ import annotations

import json

from upload_common.errors import InvalidInput, Unsupported
from upload_common.st_io import DTYPES, load_tensor

_4BIT_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


def _quant_state_key(specs: dict, name: str) -> str | None:
    return next((k for k in specs if k.startswith(name + ".quant_state.bitsandbytes__")), None)


def logical_specs(specs: dict[str, dict]) -> dict[str, dict]:
    """The tensors the unquantized model has: packed weights get their real shape and dtype plus a
    ``bnb`` entry naming their auxiliary tensors; the auxiliary tensors disappear."""
    out, aux = {}, set()
    for name, spec in specs.items():
        qs_key = _quant_state_key(specs, name)
        if qs_key:
            qs = json.loads(bytes(load_tensor(spec["file"], qs_key).tolist()).decode())
            parts = {p: f"{name}.{p}" for p in _4BIT_PARTS if f"{name}.{p}" in specs}
            parts["quant_state"] = qs_key
            aux.update(parts.values())
            dtype = DTYPES.get(str(qs.get("dtype", "bfloat16")).removeprefix("torch."), "BF16")
            out[name] = {**spec, "dtype": dtype, "shape": list(qs["shape"]), "bnb": {"kind": "4bit", "parts": parts}}
        elif spec["dtype"] == "I8" and name.endswith(".weight") and name[: -len("weight")] + "SCB" in specs:
            scb = name[: -len("weight")] + "SCB"
            aux.update({scb, name[: -len("weight")] + "weight_format"})
            out[name] = {**spec, "dtype": "BF16", "bnb": {"kind": "8bit", "parts": {"SCB": scb}}}
        else:
            out[name] = spec
    return {k: v for k, v in out.items() if k not in aux}


def dequantize(name: str, spec: dict):
    """The float tensor that a bitsandbytes weight stands for."""
    import torch

    info = spec["bnb"]
    packed = load_tensor(spec["file"], name)
    parts = {p: load_tensor(spec["file"], key) for p, key in info["parts"].items()}
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise Unsupported(
            "dequantizing a bitsandbytes base needs bitsandbytes: pip install "
            "'upload-driver[merge-bnb]', or pass the 16-bit original with --base"
        ) from None
    if info["kind"] == "8bit":
        return bnbf.int8_vectorwise_dequant(packed, parts["SCB"].float())
    qs_dict = {
        ("quant_state." + info["parts"]["quant_state"].split(".quant_state.")[1] if p == "quant_state" else p): t
        for p, t in parts.items()
    }
    try:
        state = bnbf.QuantState.from_dict(qs_dict, device=torch.device("cpu"))
        return bnbf.dequantize_4bit(packed, state).reshape(spec["shape"])
    except Exception as exc:  # bitsandbytes raises bare exceptions for malformed states
        raise InvalidInput(
            f"cannot dequantize {name} ({exc}): the 4-bit base is corrupt; pass the 16-bit original with --base",
            tensor=name,
        ) from None
