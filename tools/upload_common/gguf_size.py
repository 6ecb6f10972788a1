"""The size of a GGUF file before it is made, from the model's tensor shapes: the type llama.cpp gives
each tensor for a quantization (its mixes for the output and the attention-value / feed-forward-down
matrices of the _M types, its fallbacks for rows that do not fill a block), at that type's block size.

Written by hand because llama.cpp's choice (llama_tensor_get_type in llama-quant.cpp) lives in C and is
not exposed: the common types are followed, the others are counted at their base type. ``BLOCKS``
mirrors gguf-py's GGML_QUANT_SIZES (a test keeps the two equal); nothing here needs gguf or torch, so
the driver can predict a run's disk before any tool is installed."""

from __future__ import annotations

import math
import re

# ggml type: (weights per block, bytes per block)
BLOCKS = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q8_0": (32, 34),
    "Q5_1": (32, 24),
    "Q5_0": (32, 22),
    "Q4_1": (32, 20),
    "Q4_0": (32, 18),
    "IQ4_NL": (32, 18),
    "Q6_K": (256, 210),
    "Q5_K": (256, 176),
    "Q4_K": (256, 144),
    "Q3_K": (256, 110),
    "Q2_K": (256, 84),
    "IQ4_XS": (256, 136),
}
# a quantization's base type (a type not named here is counted at its own name, or Q4_K if unknown)
BASE = {"Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "Q2_K_S": "Q2_K"}
BASE.update({f"Q3_K_{s}": "Q3_K" for s in "SML"})
MORE_BITS = {"Q4_K_M", "Q5_K_M"}  # half the attn_v / ffn_down matrices in Q6_K
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q3_K": "IQ4_NL", "Q2_K": "IQ4_NL", "IQ4_XS": "IQ4_NL"}
ALIGN = 32  # GGUF's default tensor data alignment
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _role(name: str, tied: bool) -> str:
    if name.startswith("lm_head") or (tied and "embed_tokens" in name):
        return "output"
    return "attn_v" if "v_proj" in name else ("ffn_down" if "down_proj" in name else "")


def tensor_type(name: str, shape: list[int], quant: str, *, n_layers: int, tied: bool) -> str:
    """The ggml type llama.cpp stores tensor ``name`` (a Hugging Face name and shape) in for ``quant``."""
    if len(shape) < 2:
        return "F32"  # norms and biases stay in F32 in every GGUF the converter and llama.cpp make
    if quant in ("F32", "F16", "BF16"):
        return quant
    kind = BASE.get(quant, quant if quant in BLOCKS else "Q4_K")
    role = _role(name, tied)
    layer = _LAYER.search(name)
    if role == "output" and kind != "Q8_0":
        kind = "Q6_K"
    elif role in ("attn_v", "ffn_down") and quant in MORE_BITS and layer:
        kind = "Q6_K" if _use_more_bits(int(layer.group(1)), n_layers) else kind
    row = shape[-1]
    if row % BLOCKS[kind][0]:
        kind = FALLBACK.get(kind, "F16")
        kind = kind if row % BLOCKS[kind][0] == 0 else "F16"
    return kind


def gguf_bytes(specs: dict, quant: str, vocab: int = 0) -> int:
    """Bytes of the GGUF of a model (``specs``: Hugging Face tensor name -> {"shape": [...]}) in ``quant``:
    tensor data at each type's block size, aligned, plus the header and the vocabulary."""
    n_layers = 1 + max((int(m.group(1)) for n in specs if (m := _LAYER.search(n))), default=0)
    tied = not any(n.startswith("lm_head") for n in specs)
    total = vocab * 24  # the vocabulary in the metadata: each token's text, score and type
    for name, spec in specs.items():
        kind = tensor_type(name, spec["shape"], quant, n_layers=n_layers, tied=tied)
        per, size = BLOCKS[kind]
        data = math.prod(spec["shape"]) // per * size
        total += -(-data // ALIGN) * ALIGN + len(name) + 48  # aligned data; its name, shape, type, offset
    return total


def gguf_step_peak(specs: dict, wanted, inter_type: str, vocab: int = 0) -> dict:
    """gguf-tool's disk: every wanted file, plus the float intermediate while the quants are made (it is
    deleted after the last one unless wanted). {"outputs_bytes", "intermediate_bytes", "peak_bytes"}."""
    outputs = sum(gguf_bytes(specs, q, vocab) for q in wanted)
    inter = 0 if inter_type in wanted else gguf_bytes(specs, inter_type, vocab)
    return {"outputs_bytes": outputs, "intermediate_bytes": inter, "peak_bytes": outputs + inter}
