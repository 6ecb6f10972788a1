"""The GGUF quantization types gguf-tool offers: each one of llama.cpp's ``llama_ftype`` values (a
test checks every name against the enum of the installed llama.cpp). Plain data, no llama.cpp
import: the driver checks a run's --quant names and estimates its disk use from it before any step,
without gguf-tool's dependencies."""

from __future__ import annotations

from upload_common.errors import UsageError

# name: (llama_ftype constant, family, needs an importance matrix)
_ROWS = [
    ("F32", "LLAMA_FTYPE_ALL_F32", "float", False),
    ("F16", "LLAMA_FTYPE_MOSTLY_F16", "float", False),
    ("BF16", "LLAMA_FTYPE_MOSTLY_BF16", "float", False),
    ("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0", "legacy", False),
    ("Q5_1", "LLAMA_FTYPE_MOSTLY_Q5_1", "legacy", False),
    ("Q5_0", "LLAMA_FTYPE_MOSTLY_Q5_0", "legacy", False),
    ("Q4_1", "LLAMA_FTYPE_MOSTLY_Q4_1", "legacy", False),
    ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", "legacy", False),
    ("Q6_K", "LLAMA_FTYPE_MOSTLY_Q6_K", "k", False),
    ("Q5_K_M", "LLAMA_FTYPE_MOSTLY_Q5_K_M", "k", False),
    ("Q5_K_S", "LLAMA_FTYPE_MOSTLY_Q5_K_S", "k", False),
    ("Q4_K_M", "LLAMA_FTYPE_MOSTLY_Q4_K_M", "k", False),
    ("Q4_K_S", "LLAMA_FTYPE_MOSTLY_Q4_K_S", "k", False),
    ("Q3_K_L", "LLAMA_FTYPE_MOSTLY_Q3_K_L", "k", False),
    ("Q3_K_M", "LLAMA_FTYPE_MOSTLY_Q3_K_M", "k", False),
    ("Q3_K_S", "LLAMA_FTYPE_MOSTLY_Q3_K_S", "k", False),
    ("Q2_K", "LLAMA_FTYPE_MOSTLY_Q2_K", "k", False),
    ("Q2_K_S", "LLAMA_FTYPE_MOSTLY_Q2_K_S", "k", True),
    ("IQ4_XS", "LLAMA_FTYPE_MOSTLY_IQ4_XS", "iq", False),
    ("IQ4_NL", "LLAMA_FTYPE_MOSTLY_IQ4_NL", "iq", False),
    ("IQ3_M", "LLAMA_FTYPE_MOSTLY_IQ3_M", "iq", False),
    ("IQ3_S", "LLAMA_FTYPE_MOSTLY_IQ3_S", "iq", False),
    ("IQ3_XS", "LLAMA_FTYPE_MOSTLY_IQ3_XS", "iq", False),
    ("IQ3_XXS", "LLAMA_FTYPE_MOSTLY_IQ3_XXS", "iq", False),
    ("IQ2_M", "LLAMA_FTYPE_MOSTLY_IQ2_M", "iq", False),
    ("IQ2_S", "LLAMA_FTYPE_MOSTLY_IQ2_S", "iq", True),
    ("IQ2_XS", "LLAMA_FTYPE_MOSTLY_IQ2_XS", "iq", True),
    ("IQ2_XXS", "LLAMA_FTYPE_MOSTLY_IQ2_XXS", "iq", True),
    ("IQ1_M", "LLAMA_FTYPE_MOSTLY_IQ1_M", "iq", True),
    ("IQ1_S", "LLAMA_FTYPE_MOSTLY_IQ1_S", "iq", True),
    ("TQ2_0", "LLAMA_FTYPE_MOSTLY_TQ2_0", "ternary", False),
    ("TQ1_0", "LLAMA_FTYPE_MOSTLY_TQ1_0", "ternary", False),
]
QUANTS = {name: {"name": name, "ftype": ftype, "family": fam, "needs_imatrix": imx} for name, ftype, fam, imx in _ROWS}
FLOAT_OUTTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


def get_quant(name: str) -> dict:
    key = (name or "").strip().upper()
    if key not in QUANTS:
        raise UsageError(f"unknown quantization {name!r}: choose from {', '.join(QUANTS)}", quant=name)
    return QUANTS[key]


# Bits per weight, roughly, for disk estimates (others: 5).
BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_1": 6, "Q5_0": 5.5, "Q4_1": 5, "Q4_0": 4.5}
