#!/usr/bin/env python
"""Benchmark: merge-tool vs peft merging a LoRA adapter into a synthetic Llama-shaped bf16 base model.

    python bench/merge.py [--work DIR] [--size-gb 2.0] [--repeat N] [--keep] [--skip-peft] [--json]

Generates (or reuses) a base model + r=16 LoRA adapter in --work, measures the disk's write/read speed,
runs each tool cold in its own process (--repeat times, keeping the median run: the disk of a shared
machine is noisy), and prints wall time, peak RSS, bytes moved, the I/O floor and PASS/MISS against
the targets. Progress goes to stderr, the table to stdout. Always exits 0.
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

from synthetic import DIMS, GB, RANK, build_adapter, build_base, ensure, layers_for, log, model_plan, plan_bytes

REPO = Path(__file__).resolve().parent.parent
STAMP_VERSION = 1


def evict(paths) -> None:
    """Flush and drop these files from the page cache so the next read is cold."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_speed(work: Path, nbytes: int = 1 << 30) -> tuple[float, float]:
    """(write GB/s incl. fsync, cold read GB/s) for one 1 GB file in `work`."""
    path, chunk = work / "disk-test.bin", os.urandom(64 << 20)
    try:
        t = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            for _ in range(nbytes // len(chunk)):
                f.write(chunk)
            os.fsync(f.fileno())
        write = nbytes / (time.perf_counter() - t) / GB
        evict([path])
        buf = bytearray(len(chunk))
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        read = nbytes / (time.perf_counter() - t) / GB
    finally:
        path.unlink(missing_ok=True)
    return write, read


def files_in(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file()]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in files_in(folder)) if folder.is_dir() else 0


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run cmd in its own process (output to our stderr): wall seconds, that child's CPU seconds (user +
    system: steadier than the wall time on a busy machine) and peak RSS, exit code."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gb": usage.ru_maxrss * 1024 / GB,
        "exit_code": proc.returncode,
    }


def peft_merge(base: str, adapter: str, out: str) -> None:
    """The reference path (run in a child process via the hidden --_peft flag)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out)


def tensor_from(folder: Path, name: str):
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    fname = json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors"
    with safe_open(str(folder / fname), framework="pt") as f:
        return f.get_tensor(name)


def compare(base: Path, out1: Path, out2: Path, layers: int) -> list[dict]:
    """Max abs / bf16-ulp difference between the two outputs on 3 merged tensors (and vs the base)."""
    import torch

    def ordered(t):  # bf16 bits -> integers whose difference counts ulps
        i = t.contiguous().view(torch.int16).to(torch.int32)
        return torch.where(i < 0, -(i & 0x7FFF), i)

    names = [
        "model.layers.0.self_attn.q_proj.weight",
        f"model.layers.{layers // 2}.self_attn.v_proj.weight",
        f"model.layers.{layers - 1}.mlp.down_proj.weight",
    ]
    rows = []
    for name in names:
        a, b, w = tensor_from(out1, name), tensor_from(out2, name), tensor_from(base, name)
        both_bf16 = a.dtype == b.dtype == torch.bfloat16
        rows.append(
            {
                "tensor": name,
                "dtypes": f"{a.dtype}/{b.dtype}".replace("torch.", ""),
                "max_abs_diff": (a.float() - b.float()).abs().max().item(),
                "max_ulp_diff": (ordered(a) - ordered(b)).abs().max().item() if both_bf16 else None,
                "frac_differ": (a != b).float().mean().item(),
                "max_abs_vs_base": (a.float() - w.float()).abs().max().item(),
            }
        )
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench-work/merge"), help="work folder (default: %(default)s)")
    ap.add_argument("--size-gb", type=float, default=2.0, help="base model size in GB (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the two output folders")
    ap.add_argument("--skip-peft", action="store_true", help="run merge-tool only")
    ap.add_argument("--device", default="auto", help="merge-tool's --device: auto, cpu or cuda (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="cold runs of each tool; the median is kept (default: 1)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ap.add_argument("--_peft", nargs=3, metavar=("BASE", "ADAPTER", "OUT"), help=argparse.SUPPRESS)
    return ap.parse_args()


def commands(base: Path, adapter: Path, out1: Path, out2: Path, skip_peft: bool, device: str = "auto") -> dict:
    """name -> (command, environment, output folder) of the tools measured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "tools"), str(REPO / "driver")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    tools = {
        "merge-tool": (
            [
                sys.executable,
                "-m",
                "merge_tool.cli",
                "--adapter",
                str(adapter),
                "--base",
                str(base),
                "--out",
                str(out1),
                "--method",
                "merged_16bit",
                "--device",
                device,
                "--overwrite",
            ],
            env,
            out1,
        )
    }
    if not skip_peft:
        tools["peft"] = (
            [sys.executable, str(Path(__file__).resolve()), "--_peft", str(base), str(adapter), str(out2)],
            None,
            out2,
        )
    return tools


def measure(tools: dict, inputs: list[Path], disk: tuple[float, float], repeat: int = 1) -> tuple[dict, dict]:
    """Each tool run on a cold page cache, ``repeat`` times: (the figures of its median run by name, why
    a tool has none by name). The I/O floor is that of the disk speed measured before the runs."""
    results, status = {}, {}
    for name, tool in tools.items():
        if name == "merge-tool" and not (REPO / "tools/merge_tool/cli.py").is_file():
            status[name] = "not run: tools/merge_tool/cli.py not found"
            log(f"merge-tool {status[name]}")
            continue
        runs = []
        for _ in range(max(1, repeat)):
            r = cold_run(name, tool, inputs, disk)
            if "failed" in r:
                status[name] = r["failed"]
                break
            runs.append(r)
        if runs and name not in status:
            results[name] = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            results[name]["walls_s"] = [r["wall_s"] for r in runs]
    return results, status


def cold_run(name: str, tool: tuple, inputs: list[Path], disk: tuple[float, float]) -> dict:
    cmd, cmd_env, out = tool
    write_gbs, read_gbs = disk
    bytes_read = sum(p.stat().st_size for p in inputs)
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    evict(inputs)
    log(f"running {name} (cold cache)")
    r = run_measured(cmd, cmd_env)
    if r["exit_code"]:
        failed = f"FAILED with exit code {r['exit_code']} after {r['wall_s']:.1f}s"
        log(f"{name} {failed} (its output is above); no figures for it")
        return {"failed": failed}
    r.update(bytes_read=bytes_read, bytes_written=folder_bytes(out))
    r["io_floor_s"] = bytes_read / (read_gbs * GB) + r["bytes_written"] / (write_gbs * GB)
    log(f"{name}: {r['wall_s']:.1f}s, peak RSS {r['peak_rss_gb']:.2f} GB")
    return r


def targets(m: dict | None, p: dict | None) -> dict:
    ratios = {  # label -> (ratio, target, strict)
        "merge-tool peak RSS <= 25% of peft's": (m["peak_rss_gb"] / p["peak_rss_gb"], 0.25, False) if m and p else None,
        "merge-tool wall <= 1.5x its I/O floor": (m["wall_s"] / m["io_floor_s"], 1.5, False) if m else None,
        "merge-tool wall < peft's wall": (m["wall_s"] / p["wall_s"], 1.0, True) if m and p else None,
    }
    return {
        k: None if c is None else {"ratio": c[0], "target": c[1], "pass": c[0] < c[1] if c[2] else c[0] <= c[1]}
        for k, c in ratios.items()
    }


def print_table(tools: dict, results: dict, status: dict, checks: dict) -> None:
    print(
        f"{'tool':<11} {'wall s':>8} {'CPU s':>7} {'peak RSS GB':>12} {'read GB':>8} {'written GB':>11} "
        f"{'I/O floor s':>12} {'wall/floor':>11}"
    )
    for name in tools:
        r = results.get(name)
        if not r:
            print(f"{name:<11} {status[name]}")
            continue
        print(
            f"{name:<11} {r['wall_s']:>8.1f} {r['cpu_s']:>7.1f} {r['peak_rss_gb']:>12.2f} {r['bytes_read'] / GB:>8.2f} "
            f"{r['bytes_written'] / GB:>11.2f} {r['io_floor_s']:>12.1f} {r['wall_s'] / r['io_floor_s']:>11.2f}"
        )
        if len(r["walls_s"]) > 1:
            print(f"{'':<11} median of {len(r['walls_s'])} runs: " + ", ".join(f"{w:.1f}s" for w in r["walls_s"]))
    print("\ntargets:")
    for label, c in checks.items():
        verdict = "n/a " if c is None else ("PASS" if c["pass"] else "MISS")
        print(f"  {verdict}  {label}" + ("" if c is None else f"  (ratio {c['ratio']:.2f}, target {c['target']:g})"))


def print_agreement(agree: list[dict]) -> None:
    if not agree:
        return
    print("\noutputs agree? (merge-tool vs peft, 3 merged tensors)")
    for a in agree:
        if "error" in a:
            print(f"  could not compare: {a['error']}")
            continue
        ulp = "" if a["max_ulp_diff"] is None else f", max {a['max_ulp_diff']} ulp"
        print(
            f"  {a['tensor']:<42} {a['dtypes']}: max |diff| {a['max_abs_diff']:.3g}{ulp}, "
            f"{a['frac_differ']:.2%} differ (merge changed base by up to {a['max_abs_vs_base']:.3g})"
        )


def main() -> None:
    args = parse_args()
    if args._peft:
        return peft_merge(*args._peft)

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    layers = layers_for(args.size_gb)
    params = {"v": STAMP_VERSION, "layers": layers, **DIMS, "rank": RANK}
    base, adapter = work / "base", work / "adapter"
    out1, out2 = work / "out-merge-tool", work / "out-peft"
    log(f"base model: {layers} layers, {plan_bytes(model_plan(layers)) / GB:.2f} GB bf16")
    ensure(base, params, lambda d: build_base(d, layers))
    ensure(adapter, {**params, "base": str(base)}, lambda d: build_adapter(d, base, layers))

    log("measuring disk (1 GB, fsync, cold read)")
    write_gbs, read_gbs = disk_speed(work)
    inputs = [p for p in files_in(base) if p.suffix == ".safetensors"] + [adapter / "adapter_model.safetensors"]
    tools = commands(base, adapter, out1, out2, args.skip_peft, args.device)
    results, status = measure(tools, inputs, (write_gbs, read_gbs), args.repeat)

    m, p = results.get("merge-tool"), results.get("peft")
    checks = targets(m, p)
    agree = []
    if m and p:
        try:
            agree = compare(base, out1, out2, layers)
        except Exception as e:  # e.g. a tensor missing from one output
            agree = [{"error": f"{type(e).__name__}: {e}"}]

    print(
        f"\nbase {plan_bytes(model_plan(layers)) / GB:.2f} GB ({layers} layers), adapter r={RANK} on all linears; "
        f"disk: write {write_gbs:.2f} GB/s (fsync), cold read {read_gbs:.2f} GB/s"
    )
    print_table(tools, results, status, checks)
    print_agreement(agree)
    if args.json:
        print(
            json.dumps(
                {
                    "size_gb": plan_bytes(model_plan(layers)) / GB,
                    "layers": layers,
                    "write_gbs": write_gbs,
                    "read_gbs": read_gbs,
                    "results": results,
                    "not_run_or_failed": status,
                    "agree": agree,
                    "targets": checks,
                },
                indent=2,
            )
        )
    if not args.keep:
        for out in (out1, out2):
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
