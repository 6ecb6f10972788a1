#!/usr/bin/env python
"""Benchmark and GPU check of merge-tool's quantized formats on a briefly trained Llama-shaped sample.

    python bench/formats.py [--device cpu|cuda] [--hidden 512] [--layers 4] [--formats merged_4bit,gptq,...]
                            [--work bench-work/formats] [--json]

Builds (or reuses) a sample in --work: a sentencepiece tokenizer, a base model trained for a few
hundred steps (so top-1 agreement means something) and an SFT-shaped trainer output with a LoRA
adapter. Then runs merge-tool for merged_16bit once and every quantized format of the registry from
that merge (``--model``), each in its own process with ``--device``, and prints wall time, peak RSS
(exact, from the kernel), peak GPU memory in use (nvidia-smi, sampled, when there is a GPU), output
size and the format's own validation against the 16-bit merge (top-1 agreement, mean KL), plus where
it quantized, and the merge time saved: before quantization became its own step, each quantized
format re-ran the 16-bit merge in a scratch folder, so N formats cost N extra merges. On a GPU
machine, ``--device cuda`` is the check that the formats run there (exit 1 if one fails); progress
goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tools"), str(REPO / "driver"), str(REPO / "bench")]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sample(work: Path, hidden: int, layers: int, steps: int) -> tuple[Path, Path]:
    """The sample, built in a child process: a child's peak RSS counts its parent's at fork (Linux keeps
    the high-water mark across exec), so this process stays small for the measured children's sake."""
    stamp = work / "sample.json"
    want = {"hidden": hidden, "layers": layers, "steps": steps}
    base, trainer = work / "base", work / "sft_output"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return base, trainer
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log(f"building the sample: hidden {hidden}, {layers} layers, {steps} training steps")
    subprocess.run([sys.executable, __file__, "--_sample", str(work), str(hidden), str(layers), str(steps)], check=True)
    stamp.write_text(json.dumps(want))
    return base, trainer


def build_sample(work: Path, hidden: int, layers: int, steps: int) -> None:
    from upload_common import sample as s

    base, trainer = work / "base", work / "sft_output"
    tok = s.make_tokenizer(work / "tok")
    s.make_base(base, hidden=hidden, intermediate=hidden * 2, layers=layers, heads=8, kv_heads=4, tokenizer_dir=tok)
    s.train_briefly(base, steps=steps)
    s.make_trainer_output(trainer, base, tokenizer_dir=tok, lora_scale=0.02)


def _gpu_used() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split()
        return int(out[0]) if out else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def measure(cmd: list[str]) -> dict:
    """Run ``cmd`` (bench/merge.py's runner: wall time, the child's exact peak RSS), sampling the GPU
    memory in use meanwhile when there is a GPU."""
    from merge import run_measured

    gpu0, peak, stop = _gpu_used(), {"gpu": None}, threading.Event()

    def sample_gpu():
        while not stop.wait(0.2):
            used = _gpu_used()
            if used is not None:
                peak["gpu"] = max(peak["gpu"] or 0, used - gpu0)

    sampler = threading.Thread(target=sample_gpu, daemon=True)
    if gpu0 is not None:
        sampler.start()
    r = run_measured(cmd)
    stop.set()
    return {
        "seconds": round(r["wall_s"], 1),
        "peak_rss_mb": round(r["peak_rss_gb"] * 1e9 / 2**20),
        "peak_gpu_mb": peak["gpu"],
        "rc": r["exit_code"],
    }


def main() -> int:
    from merge_tool.formats import FORMATS

    quantized = [k for k, row in FORMATS.items() if row.get("publish", {}).get("relation") == "quantized"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--formats", default=",".join(quantized))
    ap.add_argument("--work", type=Path, default=REPO / "bench-work" / "formats")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    base, trainer = sample(a.work, a.hidden, a.layers, a.steps)
    rows = []
    for fmt in ["merged_16bit", *[f for f in a.formats.split(",") if f and f != "merged_16bit"]]:
        out = a.work / "out" / fmt
        shutil.rmtree(out, ignore_errors=True)
        log(f"{fmt} on {a.device}")
        source = (
            ["--adapter", str(trainer), "--base", str(base)]
            if fmt == "merged_16bit"
            else ["--model", str(a.work / "out" / "merged_16bit")]
        )
        row = {
            "format": fmt,
            **measure(
                [
                    sys.executable,
                    "-m",
                    "merge_tool.cli",
                    *source,
                    "--out",
                    str(out),
                    "--method",
                    fmt,
                    "--device",
                    a.device,
                ]
            ),
        }
        if row["rc"] == 0:
            m = json.loads((out / "manifest.json").read_text())
            v, q = m.get("validation") or {}, m.get("quantization") or {}
            row.update(
                size_mb=round(sum(o["size"] for o in m["outputs"]) / 1e6, 1),
                top1=v.get("top1_agreement"),
                write_s=m["timings"]["seconds"].get("write"),
                mean_kl=v.get("mean_kl"),
                quantized_on=q.get("quantized_on", "-"),
            )
        rows.append(row)
    made_from_merge = [r for r in rows if r["format"] != "merged_16bit" and not r["rc"]]
    merge_s = rows[0].get("write_s")  # the merge itself, as each format's scratch merge used to repeat it
    saved = round(merge_s * len(made_from_merge), 1) if merge_s is not None else None
    if a.json:
        print(
            json.dumps(
                {
                    "device": a.device,
                    "hidden": a.hidden,
                    "layers": a.layers,
                    "rows": rows,
                    "merge_seconds_saved": saved,
                },
                indent=2,
            )
        )
    else:
        print(f"device {a.device}, sample hidden {a.hidden}, {a.layers} layers")
        print(f"{'format':<13}{'s':>7}{'RSS MB':>8}{'GPU MB':>8}{'size MB':>9}{'top-1':>8}{'mean KL':>10}  on")
        for r in rows:
            if r["rc"]:
                print(f"{r['format']:<13} FAILED (exit {r['rc']}; its error is on stderr above)")
                continue
            top1 = f"{r['top1']:.3f}" if r.get("top1") is not None else "-"
            kl = f"{r['mean_kl']:.5f}" if r.get("mean_kl") is not None else "-"
            print(
                f"{r['format']:<13}{r['seconds']:>7}{r['peak_rss_mb']:>8}{r['peak_gpu_mb'] or '-':>8}"
                f"{r['size_mb']:>9}{top1:>8}{kl:>10}  {r['quantized_on']}"
            )
        if saved is not None:
            print(
                f"one merge served {len(made_from_merge)} formats: {saved} s of merging saved "
                f"({len(made_from_merge)} x the {merge_s} s merge, which each format "
                "used to repeat in a scratch folder)"
            )
    return 1 if any(r["rc"] for r in rows) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--_sample"]:
        build_sample(Path(sys.argv[2]), *map(int, sys.argv[3:6]))
        sys.exit(0)
    sys.exit(main())
