"""Quantization by llama.cpp itself, through the C API of the installed llama-cpp-python, and the
report of k-quant fallbacks (tensors whose rows are not a multiple of the 256-wide blocks)."""

from __future__ import annotations

import ctypes
from pathlib import Path

from upload_common.errors import InvalidInput

from .quants import ftype_value

BLOCK = 256


def quantize(src: Path, dst: Path, quant: dict, *, nthread: int, keep_split: bool = False) -> None:
    import llama_cpp
    from llama_cpp import _logger

    from upload_common.cli import debug_enabled

    # llama.cpp logs every tensor and the whole model header on stderr; the library's own switch (what
    # Llama(verbose=...) sets) keeps errors only, unless UPLOAD_DRIVER_DEBUG asks for everything
    # (k-quant fallbacks are read back from the file and reported by gguf-tool itself)
    _logger.set_verbose(debug_enabled())
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_value(quant)
    params.nthread = nthread
    params.keep_split = keep_split
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise InvalidInput(
            f"llama.cpp could not quantize to {quant['name']} (code {rc}): set UPLOAD_DRIVER_DEBUG=1 for its log",
            quant=quant["name"],
        )


def run_tool(cmd: list, what: str) -> None:
    import subprocess

    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        last = next((line for line in reversed(proc.stdout.splitlines()) if line.strip()), "no output")
        raise InvalidInput(f"llama.cpp's {what} failed ({last.strip()[:200]})", log_tail=proc.stdout.splitlines()[-30:])


def quantize_with_imatrix(
    tool: Path, src: Path, dst: Path, quant: dict, *, nthread: int, imatrix: Path, keep_split: bool = False
) -> None:
    """llama-quantize with an importance matrix (the C API cannot take one)."""
    run_tool(
        [tool, "--imatrix", imatrix, *(["--keep-split"] if keep_split else []), src, dst, quant["name"], nthread],
        f"llama-quantize to {quant['name']}",
    )


GPU_DEVICES = ("/dev/nvidia0", "/dev/dxg")  # a CUDA GPU on Linux, or under WSL2


def compute_imatrix(tool: Path, model: Path, text: Path, dst: Path, *, nthread: int, ctx: int = 128) -> str:
    """An importance matrix from a calibration text, by llama-imatrix: every layer on the GPU when the
    machine shows one (a build without GPU support ignores that), else, or when that run fails, on the
    CPU. Returns where it ran."""
    base = [tool, "-m", model, "-f", text, "-o", dst, "-c", ctx, "-t", nthread, "-ngl"]
    if any(Path(d).exists() for d in GPU_DEVICES):
        try:
            run_tool([*base, 999], "llama-imatrix")
            return "GPU"
        except InvalidInput:
            Path(dst).unlink(missing_ok=True)
    run_tool([*base, 0], "llama-imatrix")
    return "CPU"


def tensor_types(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (GGML type name, shape as llama.cpp sees it: ne0 first)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, [int(d) for d in t.shape]) for t in reader.tensors}


def fallbacks(quantized: Path, quant: dict) -> list[dict]:
    """Weight matrices that a block-256 quantization could not use and what llama.cpp chose instead;
    llama.cpp only logs these, and the file's metadata still names the requested type."""
    if quant["family"] not in ("k", "iq"):
        return []
    found = []
    for name, (ttype, shape) in tensor_types(quantized).items():
        if len(shape) >= 2 and shape[0] % BLOCK and not ttype.startswith(("F", "BF")):
            found.append({"tensor": name, "row": shape[0], "type": ttype})
    return found
