#!/usr/bin/env python
"""The GPU check: what the CUDA path of the tools must do, in one command on a CUDA machine, from a plain
checkout (``PYTHONPATH=tools:driver`` is set for the children; nothing is installed unless ``--wheels``).

    python bench/gpu_check.py [--size-gb 3] [--wheels DIR] [--llama-src DIR] [--work DIR] [--only NAME,...]
    python bench/gpu_check.py --list          # the checks and what each needs; runs nothing
    python bench/gpu_check.py --cpu-smoke     # the merge check on the CPU at a tiny size, the others skipped

A machine line first (GPU, memory, driver, CUDA, torch, cores), then each check in its own processes with
its own time limit: merge-tool ``--device cuda`` against ``--device cpu`` (same bytes), bench/formats.py
``--device cuda``, ``--engine unsloth`` against the streaming merge, and llama.cpp built with CUDA running
gguf-tool's imatrix and validation (bench/gpu_check_llama.py). The llama.cpp build, which keeps the CPU
busy while the others keep the GPU busy, runs beside them. Prints one table (rich) and writes it as JSON
to ``$OUT/gpu_check.json`` (default ./gpu-check-out), with each check's log beside it. Exits 0 when no
check failed (a skipped check is not a failure), 1 otherwise. Nothing here reaches the network.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tools"), str(REPO / "driver"), str(REPO / "bench")]

from gpu_check_run import Ctx, Failed, Skipped, call, child_env, install_wheels, log, machine  # noqa: E402

FAULT_ENV = "UPLOAD_DRIVER_GPU_CHECK_FAULT"  # "merge": corrupt one byte of the second merge before comparing
SMOKE_DIMS = dict(hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=1024)


@dataclass(frozen=True)
class Check:
    name: str
    needs: str
    timeout_s: int
    run: object  # Callable[[Ctx, float], str]: the detail line; raises Skipped or Failed
    gpu_only: bool = True
    beside: bool = False  # runs beside the others (CPU-bound while they use the GPU)


@dataclass(frozen=True)
class Row:
    name: str
    status: str  # passed | failed | skipped
    seconds: float
    detail: str


# 1. merge-tool on the GPU against the CPU ----------------------------------------------------------------


def _synthetic(ctx: Ctx) -> tuple[Path, Path, int]:
    import synthetic

    if ctx.smoke:
        synthetic.DIMS.update(SMOKE_DIMS)
    layers = synthetic.layers_for(ctx.size_gb)
    folder = ctx.work / f"synthetic-{ctx.size_gb:g}gb"
    params = {"layers": layers, "dims": synthetic.DIMS}
    base, adapter = folder / "base", folder / "adapter"
    synthetic.ensure(base, params, lambda f: synthetic.build_base(f, layers))
    synthetic.ensure(adapter, params, lambda f: synthetic.build_adapter(f, base, layers))
    return base, adapter, layers


def _shard_sums(folder: Path) -> dict[str, str]:
    sums = {}
    for shard in sorted(folder.glob("*.safetensors")):
        h = hashlib.sha256()
        with open(shard, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        sums[shard.name] = h.hexdigest()
    return sums


def _corrupt(folder: Path) -> None:
    """Fault injection for the check's own test: flip the last byte of the first shard."""
    shard = sorted(folder.glob("*.safetensors"))[0]
    with open(shard, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))


def merge_tool(ctx: Ctx, deadline: float, out: Path, *args: str) -> float:
    t = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    call([sys.executable, "-m", "merge_tool.cli", "--out", str(out), *args], ctx, deadline, "merge")
    return time.perf_counter() - t


def check_merge(ctx: Ctx, deadline: float) -> str:
    if not (ctx.smoke or ctx.gpu):
        raise Skipped("no CUDA GPU (torch.cuda.is_available() is false)")
    base, adapter, layers = _synthetic(ctx)
    first = "cpu" if ctx.smoke else "cuda"
    src = ["--adapter", str(adapter), "--base", str(base), "--method", "merged_16bit"]
    outs = {d: ctx.work / f"merge-{d}" for d in (first + "-1", "cpu-2")}
    secs = {d: merge_tool(ctx, deadline, out, *src, "--device", d.split("-")[0]) for d, out in outs.items()}
    if os.environ.get(FAULT_ENV) == "merge":
        _corrupt(outs["cpu-2"])
    a, b = (_shard_sums(o) for o in outs.values())
    size = sum(p.stat().st_size for p in outs["cpu-2"].glob("*.safetensors")) / 1e9
    timing = ", ".join(f"{d.split('-')[0]} {s:.1f} s" for d, s in secs.items())
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
    if not a or a != b:
        differ = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
        raise Failed(f"{first} and cpu merges differ in {', '.join(differ) or 'nothing written'} ({timing})")
    return f"{len(a)} shards, {size:.2f} GB, {layers} layers: sha256 equal ({timing})"


# 2. bench/formats.py on the GPU ---------------------------------------------------------------------------

NEEDS = {"bitsandbytes": "bitsandbytes", "compressed-tensors": "llmcompressor"}  # registry requires -> module


def _format_plan() -> tuple[list[str], dict[str, str], dict[str, float]]:
    from merge_tool.formats import FORMATS

    runnable, missing, bars = [], {}, {}
    for name, row in FORMATS.items():
        publish = row.get("publish", {})
        if publish.get("relation") != "quantized":
            continue
        mods = [NEEDS.get(r, r.replace("-", "_")) for r in publish.get("requires", [])]
        absent = [m for m in mods if importlib.util.find_spec(m) is None]
        if absent:
            missing[name] = absent[0]
            continue
        runnable.append(name)
        bars[name] = getattr(importlib.import_module(row["module"]), "MIN_TOP1", None)
    return runnable, missing, bars


def check_formats(ctx: Ctx, deadline: float) -> str:
    if not ctx.gpu:
        raise Skipped("needs a CUDA GPU")
    runnable, missing, bars = _format_plan()
    skipped = [f"{f} skipped: no {m}" for f, m in missing.items()]
    if not runnable:
        raise Skipped("; ".join(skipped))
    report = ctx.out / "formats.json"
    cmd = [sys.executable, str(REPO / "bench" / "formats.py"), "--device", "cuda", "--json"]
    cmd += ["--formats", ",".join(runnable), "--work", str(ctx.work / "formats")]
    proc = call(cmd, ctx, deadline, "formats", check=False, stdout=report)
    try:
        rows = json.loads(report.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        raise Failed(f"bench/formats.py exited {proc.returncode} without its JSON (see formats.log)") from None
    parts, bad = [], []
    for r in rows[1:]:
        if r["rc"] or not all(isinstance(r.get(k), int | float) for k in ("top1", "mean_kl")):
            bad.append(r["format"])
            parts.append(f"{r['format']} FAILED (exit {r['rc']}{'' if r['rc'] else ', no validation figures'})")
            continue
        parts.append(
            f"{r['format']} top-1 {r['top1']:.3f} (bar {bars.get(r['format'])}) KL {r['mean_kl']:.4f} "
            f"on {r['quantized_on']} {r['seconds']} s"
        )
    detail = "; ".join(parts + skipped)
    if bad or rows[0]["rc"] or proc.returncode:
        raise Failed(detail if bad else f"merged_16bit exit {rows[0]['rc']}; {detail}")
    return detail


# 3. --engine unsloth against the streaming merge ------------------------------------------------------------


def _fp32_sample(ctx: Ctx) -> tuple[Path, Path]:
    """A float32 base with a real tokenizer (Unsloth loads one) and an SFT trainer output on it."""
    from upload_common import sample

    folder = ctx.work / "unsloth-sample"
    base, trainer = folder / "base", folder / "sft_output"
    if not (trainer / "adapter_config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        tok = sample.make_tokenizer(folder / "tok")
        sample.make_base(
            base, "llama", dtype="float32", tokenizer_dir=tok, hidden=256, intermediate=512, layers=2, heads=4
        )
        sample.make_trainer_output(trainer, base, tokenizer_dir=tok)
    return base, trainer


def _bf16_ulp(x: float) -> float:
    return 2.0 ** (math.floor(math.log2(x)) - 7) if x > 0 else 0.0


def _within_rounding(a, b) -> bool:
    """bf16 rounding: the largest difference at most the bf16 ulp of the largest |value|, or allclose with
    rtol 2**-7 tensor by tensor."""
    import torch

    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return diff <= _bf16_ulp(float(b.abs().max()) if b.numel() else 0.0) or torch.allclose(a, b, rtol=2**-7, atol=0)


def _compare_bf16(got: Path, want: Path) -> tuple[int, float]:
    """Tensors compared and the largest difference; Failed when one is beyond bf16 rounding or not BF16."""
    from upload_common.st_io import file_specs, load_tensor

    ref = {n: s for s in sorted(want.glob("*.safetensors")) for n in file_specs(s)}
    n, worst = 0, 0.0
    for shard in sorted(got.glob("*.safetensors")):
        specs = file_specs(shard)
        not_bf16 = {k: s["dtype"] for k, s in specs.items() if s["dtype"] != "BF16"}
        if not_bf16:
            raise Failed(f"{shard.name} holds {len(not_bf16)} tensor(s) not BF16, e.g. {next(iter(not_bf16.items()))}")
        for k in specs:
            if k not in ref:
                raise Failed(f"unsloth wrote {k}, which the streaming merge has not")
            a, b = load_tensor(shard, k).float(), load_tensor(ref[k], k).float()
            if not _within_rounding(a, b):
                raise Failed(f"{k} differs beyond bf16 rounding: max |diff| {float((a - b).abs().max()):.3g}")
            worst, n = max(worst, float((a - b).abs().max()) if a.numel() else 0.0), n + 1
    if n != len(ref):
        raise Failed(f"unsloth wrote {n} tensors, the streaming merge {len(ref)}")
    return n, worst


def check_unsloth(ctx: Ctx, deadline: float) -> str:
    if not ctx.gpu:
        raise Skipped("needs a CUDA GPU")
    if importlib.util.find_spec("unsloth") is None:
        raise Skipped("no unsloth (carry its wheels with --wheels)")
    base, trainer = _fp32_sample(ctx)
    args = ["--adapter", str(trainer), "--base", str(base), "--method", "merged_16bit", "--dtype", "bf16"]
    outs = {e: ctx.work / f"engine-{e}" for e in ("unsloth", "streaming")}
    secs = {e: merge_tool(ctx, deadline, o, *args, "--engine", e, "--device", "cuda") for e, o in outs.items()}
    dtype = json.loads((outs["unsloth"] / "manifest.json").read_text())["decisions"]["dtype"]
    n, worst = _compare_bf16(outs["unsloth"], outs["streaming"])
    if dtype.get("value") != "bfloat16" or dtype.get("files") != {"bfloat16": n}:
        raise Failed(f"manifest decisions.dtype {dtype.get('value')}, files {dtype.get('files')} ({n} BF16 tensors)")
    converted = "converted after Unsloth saved" if dtype.get("converted") else "written as bf16 by Unsloth"
    return (
        f"{n} tensors BF16 ({converted}), max |diff| {worst:.3g} within bf16 rounding; "
        f"unsloth {secs['unsloth']:.1f} s, streaming {secs['streaming']:.1f} s"
    )


# the table ------------------------------------------------------------------------------------------------


def checks() -> list[Check]:
    from gpu_check_llama import NEEDS_TEXT, check_llama

    return [
        Check("merge cuda vs cpu", "a CUDA GPU (--cpu-smoke: none), torch, safetensors", 240, check_merge, False),
        Check(
            "formats --device cuda",
            "a CUDA GPU; bitsandbytes (merged_4bit/8bit), llmcompressor (gptq, awq, fp8, w8a16)",
            300,
            check_formats,
        ),
        Check("unsloth vs streaming", "a CUDA GPU and unsloth (its own wheels)", 240, check_unsloth),
        Check("llama.cpp CUDA: gguf-tool", NEEDS_TEXT, 420, check_llama, beside=True),
    ]


def run_one(check: Check, ctx: Ctx) -> Row:
    t = time.perf_counter()
    if ctx.only and check.name.split()[0] not in ctx.only:
        return Row(check.name, "skipped", 0.0, "not in --only")
    if ctx.smoke and check.gpu_only:
        return Row(check.name, "skipped", 0.0, "--cpu-smoke: needs a CUDA GPU")
    log(f"{check.name}: started (limit {check.timeout_s} s)")
    try:
        status, detail = "passed", check.run(ctx, time.monotonic() + check.timeout_s)
    except Skipped as exc:
        status, detail = "skipped", str(exc)
    except Failed as exc:
        status, detail = "failed", str(exc)
    except Exception as exc:  # a check's own bug is one failed row, not the end of the others
        status, detail = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    row = Row(check.name, status, round(time.perf_counter() - t, 1), detail)
    log(f"{check.name}: {status} in {row.seconds} s: {detail}")
    return row


def show(machine_line: str, rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=machine_line, title_justify="left")
    for col, kw in (("check", {}), ("result", {}), ("s", {"justify": "right"}), ("detail", {"overflow": "fold"})):
        table.add_column(col, **kw)
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for r in rows:
        table.add_row(r.name, f"[{style[r.status]}]{r.status}[/]", f"{r.seconds:.1f}", r.detail)
    Console(width=200).print(table)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the checks and what each needs; run nothing")
    ap.add_argument("--cpu-smoke", action="store_true", help="the merge check on the CPU at a tiny size")
    ap.add_argument("--size-gb", type=float, default=3.0, help="the synthetic model of the merge check")
    ap.add_argument("--wheels", type=Path, help="pip-install the wheels in this folder first (--no-index)")
    ap.add_argument("--llama-src", type=Path, help="an unpacked llama-cpp-python sdist (else its sdist in --wheels)")
    ap.add_argument("--work", type=Path, default=REPO / "bench-work" / "gpu-check")
    ap.add_argument("--only", default="", help="comma-separated first words of check names, e.g. merge,llama.cpp")
    return ap.parse_args()


def main() -> int:
    a = parse()
    if a.list:
        for c in checks():
            print(f"{c.name:<28} {c.timeout_s:>4} s max  needs: {c.needs}")
        return 0
    out = Path(os.environ.get("OUT") or "gpu-check-out").absolute()
    out.mkdir(parents=True, exist_ok=True)
    env = child_env(REPO)
    installed = install_wheels(a.wheels, out) if a.wheels else None
    importlib.invalidate_caches()
    info = {**machine(env), "wheels": installed}
    ctx = Ctx(
        work=a.work.absolute(),
        out=out,
        env=env,
        smoke=a.cpu_smoke,
        gpu=bool(info.get("cuda_available")) and not a.cpu_smoke,
        size_gb=0.01 if a.cpu_smoke else a.size_gb,
        capability=info.get("capability"),
        wheels=a.wheels.absolute() if a.wheels else None,
        llama_src=a.llama_src.absolute() if a.llama_src else None,
        only=frozenset(w for w in a.only.split(",") if w),
    )
    ctx.work.mkdir(parents=True, exist_ok=True)
    log(info["line"])
    if installed:
        log(installed)
    todo = checks()
    with ThreadPoolExecutor(1) as beside:
        later = {c.name: beside.submit(run_one, c, ctx) for c in todo if c.beside}
        done = {c.name: run_one(c, ctx) for c in todo if not c.beside}
        done.update({n: f.result() for n, f in later.items()})
    rows = [done[c.name] for c in todo]
    show(info["line"], rows)
    report = {"machine": info, "rows": [asdict(r) for r in rows], "failed": sum(r.status == "failed" for r in rows)}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
