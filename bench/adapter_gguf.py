#!/usr/bin/env python
"""Benchmark: the bytes a GGUF-only export writes, with the merge written vs deferred into gguf-tool.

    python bench/adapter_gguf.py [--work DIR] [--hidden 1024] [--layers 12] [--quant Q4_K_M ...] [--validate]

Makes (or reuses) a Llama-shaped bf16 model and an r=16 LoRA adapter on all its linear layers, then
exports GGUF twice, each tool as a process of its own:
(a) written: `merge-tool --method merged_16bit`, then `gguf-tool --model MERGED`;
(b) deferred: `merge-tool --method merged_16bit --defer-weights`, then `gguf-tool --model RECIPE
--adapter ADAPTER --base BASE` (the merge computed while llama.cpp's converter reads it).
For each it prints the bytes written (the kernel's write_bytes of the tool's process tree, read in a
wrapper process after the tool has been reaped, and the files' sizes), wall time and peak RSS, against
the minimum: the GGUF outputs plus the one 16-bit GGUF intermediate K-quants are made from (as gguf-tool
records it in its manifest). Target for (b): <= 1.1x the minimum. Also checks that both runs made
byte-identical GGUF files. Validation is off unless --validate (it writes nothing but costs time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

WRAP = """
import json, resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": code, "write_bytes": int(io["write_bytes"]), "peak_rss": peak}))
"""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def measured(cmd: list[str]) -> dict:
    """Run ``cmd`` in a wrapper process: its exit code, the bytes its process tree wrote, its largest RSS."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAP, *cmd], check=True, capture_output=True, text=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    if figures["code"]:
        raise SystemExit(f"{cmd[:3]} failed (exit {figures['code']}): rerun it by hand to see why")
    return {**figures, "seconds": time.perf_counter() - t}


def make_inputs(work: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    from synthetic import small_llama

    from upload_common.sample import make_lora_adapter, make_tokenizer

    base, adapter = work / f"base-h{hidden}-l{layers}", work / f"adapter-h{hidden}-l{layers}"
    if not (base / "config.json").is_file():
        log(f"making a Llama-shaped bf16 model: hidden {hidden}, {layers} layers")
        small_llama(base, hidden, layers, make_tokenizer(work / "tokenizer"))
    if not (adapter / "adapter_config.json").is_file():
        make_lora_adapter(base, adapter, r=16, alpha=32, base_name=str(base))
        for f in base.iterdir():
            if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
                shutil.copy2(f, adapter / f.name)
    return base, adapter


def files_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def export(kind: str, work: Path, base: Path, adapter: Path, quants: list[str], validate: bool) -> dict:
    merged, gguf = work / f"{kind}-merged", work / f"{kind}-gguf"
    for folder in (merged, gguf):
        shutil.rmtree(folder, ignore_errors=True)
    merge = [sys.executable, "-m", "merge_tool.cli", "--adapter", str(adapter), "--base", str(base)]
    merge += ["--out", str(merged), "--method", "merged_16bit", "--device", "cpu"]
    convert = [sys.executable, "-m", "gguf_tool.cli", "--model", str(merged), "--out", str(gguf), "--name", "bench"]
    convert += [a for q in quants for a in ("--quant", q)] + ([] if validate else ["--no-validate"])
    if kind == "deferred":
        merge.append("--defer-weights")
        convert += ["--adapter", str(adapter), "--base", str(base)]
    log(f"{kind}: merge-tool")
    steps = {"merge-tool": measured(merge)}
    log(f"{kind}: gguf-tool")
    steps["gguf-tool"] = measured(convert)
    manifest = json.loads((gguf / "manifest.json").read_text())
    outputs = files_bytes(gguf)
    return {
        "steps": steps,
        "write_bytes": sum(s["write_bytes"] for s in steps.values()),
        "files_bytes": files_bytes(merged) + outputs + manifest["decisions"]["disk"]["intermediate_bytes"],
        "minimum": outputs + manifest["decisions"]["disk"]["intermediate_bytes"],
        "gguf": {p.name: p.read_bytes() for p in sorted(gguf.glob("*.gguf"))},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("bench-work/adapter_gguf"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--quant", action="append", default=None)
    ap.add_argument("--validate", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base, adapter = make_inputs(args.work, args.hidden, args.layers)
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    quants = args.quant or ["Q4_K_M"]
    runs = {kind: export(kind, args.work, base, adapter, quants, args.validate) for kind in ("written", "deferred")}
    print(f"model {size / 1e9:.2f} GB (bf16), GGUF {', '.join(quants)}, validation {'on' if args.validate else 'off'}")
    for kind, r in runs.items():
        ratio = r["write_bytes"] / r["minimum"]
        steps = "; ".join(
            f"{tool} {s['write_bytes'] / 1e9:.3f} GB written, {s['seconds']:.1f} s, "
            f"peak RSS {s['peak_rss'] / 1e9:.2f} GB"
            for tool, s in r["steps"].items()
        )
        print(
            f"{kind:9s} written {r['write_bytes'] / 1e9:.3f} GB (files {r['files_bytes'] / 1e9:.3f} GB), minimum "
            f"{r['minimum'] / 1e9:.3f} GB: {ratio:.2f}x  [{steps}]"
        )
    ratio = runs["deferred"]["write_bytes"] / runs["deferred"]["minimum"]
    print(f"deferred <= 1.1x the minimum: {'PASS' if ratio <= 1.1 else 'MISS'} ({ratio:.2f}x)")
    same = runs["written"]["gguf"] == runs["deferred"]["gguf"]
    print(f"GGUF files identical between the two: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
