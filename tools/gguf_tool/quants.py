"""gguf-tool's view of the quantization types: the registry (upload_common.quants) and the value
of each type's ``llama_ftype`` constant in the installed llama.cpp."""

from __future__ import annotations

from upload_common.quants import BITS, FLOAT_OUTTYPES, QUANTS, get_quant

__all__ = ["BITS", "FLOAT_OUTTYPES", "QUANTS", "get_quant", "ftype_value"]


def ftype_value(quant: dict) -> int:
    import llama_cpp

    return getattr(llama_cpp, quant["ftype"])
