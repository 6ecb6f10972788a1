#!/usr/bin/env python
"""Benchmark: gguf-tool (validation off) vs llama.cpp's converter and quantizations run directly.

    python bench/gguf.py [--work DIR] [--hidden 1024] [--layers 8] [--quant Q8_0 --quant Q4_K_M ...]

One run: makes (or reuses) a Llama-shaped model with a sentencepiece tokenizer, then times
(a) `gguf-tool --no-validate`, (b) `convert_hf_to_gguf.py` to F16 plus each quantization through the
same C API, each as a fresh process, and (c) the validation alone (from a gguf-tool run with it on).
Prints the figures and the overhead of (a) over (b); target <= 5%. Progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

QUANTIZE = """
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, sys.argv[3]); p.nthread = int(sys.argv[4])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list[str], env=None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def make_model(work: Path, hidden: int, layers: int) -> Path:
    model = work / f"model-h{hidden}-l{layers}"
    if (model / "config.json").is_file():
        return model
    from synthetic import small_llama

    from upload_common.sample import make_tokenizer

    log(f"making a Llama-shaped model: hidden {hidden}, {layers} layers")
    return small_llama(model, hidden, layers, make_tokenizer(work / "tokenizer"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--work", type=Path, default=Path("bench-work/gguf"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--quant", action="append", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    quants = [q.upper() for q in (a.quant or ["Q8_0", "Q4_K_M", "Q6_K"])]
    from gguf_tool.llama_tree import converter
    from gguf_tool.quants import get_quant

    a.work.mkdir(parents=True, exist_ok=True)
    model = make_model(a.work, a.hidden, a.layers)
    gguf_tool = [sys.executable, "-m", "gguf_tool.cli"]

    out = a.work / "tool"
    log("gguf-tool, validation off")
    tool_s = timed(
        gguf_tool
        + [
            "--model",
            str(model),
            "--out",
            str(out),
            "--overwrite",
            "--no-validate",
            *sum((["--quant", q] for q in quants), []),
        ]
    )
    size = sum(p.stat().st_size for p in out.glob("*.gguf"))

    direct = a.work / "direct"
    shutil.rmtree(direct, ignore_errors=True)
    direct.mkdir()
    tree = converter()
    env = {**os.environ, "PYTHONPATH": str(tree / "gguf-py")}
    log("converter + quantizations directly")
    t = time.perf_counter()
    f16 = direct / "m-F16.gguf"
    subprocess.run(
        [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model), "--outfile", str(f16), "--outtype", "f16"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    for q in quants:
        subprocess.run(
            [
                sys.executable,
                "-c",
                QUANTIZE,
                str(f16),
                str(direct / f"m-{q}.gguf"),
                get_quant(q)["ftype"],
                str(os.cpu_count()),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    f16.unlink()
    direct_s = time.perf_counter() - t

    log("gguf-tool with validation (for the validation time)")
    timed(
        gguf_tool
        + [
            "--model",
            str(model),
            "--out",
            str(out),
            "--overwrite",
            "--min-top1",
            "F16=0",
            "--min-top1",
            "BF16=0",
            "--min-top1",
            "Q8_0=0",
            *sum((["--quant", q] for q in quants), []),
        ]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    validate_s = manifest["timings"]["seconds"]["validate"]
    overhead = tool_s / direct_s - 1
    figures = {
        "model_params_bf16_bytes": sum(p.stat().st_size for p in model.glob("*.safetensors")),
        "quants": quants,
        "gguf_bytes": size,
        "gguf_tool_s": round(tool_s, 2),
        "direct_s": round(direct_s, 2),
        "overhead": round(overhead, 4),
        "validation_s": validate_s,
    }
    print(
        f"model {figures['model_params_bf16_bytes'] / 1e6:.0f} MB bf16 -> {', '.join(quants)} "
        f"({size / 1e6:.0f} MB of GGUF)"
    )
    print(f"gguf-tool (no validation) {tool_s:7.2f} s")
    print(f"converter + quantize      {direct_s:7.2f} s")
    verdict = "PASS" if overhead <= 0.05 else "MISS"
    print(f"overhead                  {overhead * 100:+6.1f} %   (target <= 5%: {verdict})")
    print(f"validation alone          {validate_s:7.2f} s")
    if a.json:
        print(json.dumps(figures, indent=2))
    shutil.rmtree(direct, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
