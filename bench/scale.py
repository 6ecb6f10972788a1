#!/usr/bin/env python
"""How each step of `upload-driver run` grows with the model: wall time, peak memory, peak disk and bytes moved,
measured at several model sizes, and a least-squares line through each figure against the size.

    python bench/scale.py [--size 0.5 --size 1.5 --size 3] [--memory-limit GB] [--work DIR] [--keep-models] [--json]

Each size is a Llama-shaped bf16 model with Llama 3 8B's layer shapes (hidden 4096, intermediate 14336, 32 heads,
8 KV heads; fewer layers make it smaller) and the sample's sentencepiece tokenizer (vocabulary 384), written by
bench/synthetic.py, with an SFT trainer output beside it (final adapter r=8 on every linear layer, checkpoints,
trainer_state.json). Then `upload-driver run` as a user types it: lora, merged_16bit, GGUF Q4_K_M + Q8_0
validated, docs, a local publish, local runtime, the base's files evicted from the page cache first. The driver's
process tree is sampled every 50 ms (bench/measure.py); `--memory-limit GB` runs it in a cgroup v1 memory group
with that limit and says whether it completed. The run folder is deleted after each size, the models too unless
`--keep-models`. Progress on stderr, the tables on stdout (`--json`: the figures as JSON instead).
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
from unittest import mock

import synthetic
from measure import IO_KEYS, MemoryGroup, TreeSampler, fit
from merge import evict, files_in

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO / "tools"))  # after PYTHONPATH: a checkout named there wins
VOCAB = 384  # upload_common.sample.make_tokenizer's default
LLAMA3_8B = dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=VOCAB)
EMBED_STD, TARGET_LOGIT = 16.0, 20.0
DISK_FACTOR, DISK_MARGIN = 4.8, 0.5e9  # base, merge, GGUF (16-bit intermediate + quants), published copies
QUANTS = ("Q4_K_M", "Q8_0")
FIGURES = (  # key, column title, scale (bytes -> GB)
    ("wall_s", "wall s", 1),
    ("peak_rss", "peak RSS GB", 1e9),
    ("peak_anon", "anon GB", 1e9),
    ("peak_disk", "disk GB", 1e9),
    ("read_bytes", "read GB", 1e9),
    ("write_bytes", "written GB", 1e9),
    ("rchar", "rchar GB", 1e9),
    ("wchar", "wchar GB", 1e9),
)
TOTAL = "(whole run)"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, action="append", help="model size in GB of bf16 weights (repeatable; "
                    "default 0.5, 1.5 and 3)")  # fmt: skip
    ap.add_argument("--memory-limit", type=float, metavar="GB", help="run each pipeline in a cgroup with this limit")
    ap.add_argument("--work", type=Path, default=Path("bench-work/scale"), help="work folder (default: %(default)s)")
    ap.add_argument("--keep-models", action="store_true", help="keep the built models for the next run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    args = ap.parse_args()
    args.size = sorted(set(args.size or [0.5, 1.5, 3.0]))
    if any(s <= 0 for s in args.size) or (args.memory_limit is not None and args.memory_limit <= 0):
        ap.error("--size and --memory-limit must be positive")
    return args


def layer_plan(layers: int) -> list:
    with mock.patch.dict(synthetic.DIMS, LLAMA3_8B):
        return synthetic.model_plan(layers)


def layers_for(size_gb: float) -> int:
    """The layer count whose model is nearest to ``size_gb``."""
    per_layer = synthetic.plan_bytes(layer_plan(1)) - synthetic.plan_bytes(layer_plan(0))
    return max(1, round((size_gb * synthetic.GB - synthetic.plan_bytes(layer_plan(0))) / per_layer))


def peak_logits(folder: Path) -> None:
    """Give the random model one clear prediction per position (its input token), so that the validation's
    top-1 agreement is meaningful: the embedding is N(0, 16) (the layers' random outputs stay small beside it)
    and lm_head is the embedding scaled so that the input token's logit is about 20. Written in place: the two
    tensors' bytes in their safetensors files (shapes and dtypes unchanged)."""
    import torch

    embed = torch.randn((VOCAB, LLAMA3_8B["hidden"]), generator=torch.Generator().manual_seed(2)) * EMBED_STD
    head = embed * (TARGET_LOGIT / (LLAMA3_8B["hidden"] * EMBED_STD))
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    for name, value in (("model.embed_tokens.weight", embed), ("lm_head.weight", head)):
        with open(folder / index[name], "r+b") as f:
            n = int.from_bytes(f.read(8), "little")
            begin, end = json.loads(f.read(n))[name]["data_offsets"]
            data = value.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
            assert len(data) == end - begin, name
            f.seek(8 + n + begin)
            f.write(data)


def build_base(folder: Path, layers: int, tokenizer: Path) -> None:
    with mock.patch.dict(synthetic.DIMS, LLAMA3_8B):
        synthetic.build_base(folder, layers)
    peak_logits(folder)
    for f in tokenizer.iterdir():
        shutil.copy2(f, folder / f.name)


def build_models(models: Path, layers: int) -> tuple[Path, Path]:
    """(base folder, trainer output) for ``layers`` layers, built unless already there with the same recipe."""
    from upload_common.sample import make_tokenizer, make_trainer_output

    tokenizer = models / "tokenizer"
    if not (tokenizer / "tokenizer.model").is_file():
        make_tokenizer(tokenizer, VOCAB)
    params = {"layers": layers, **LLAMA3_8B, "embed_std": EMBED_STD, "target_logit": TARGET_LOGIT}
    base, run = models / f"base-{layers}l", models / f"sft-{layers}l"
    synthetic.ensure(base, params, lambda d: build_base(d, layers, tokenizer))
    synthetic.ensure(
        run,
        {**params, "base": str(base)},
        lambda d: make_trainer_output(
            d, base, kind="sft", tokenizer_dir=tokenizer, base_name=str(base), lora_scale=0.02
        ),
    )
    return base, run


def check_disk(work: Path, size_bytes: int, built: bool) -> None:
    need = DISK_FACTOR * size_bytes + DISK_MARGIN - (size_bytes if built else 0)
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(
            f"error: a {size_bytes / 1e9:.2f} GB model needs about {need / 1e9:.1f} GB of free disk in {work} "
            f"(base, merge, GGUF files, published copies), {free / 1e9:.1f} GB is free: give a smaller --size or "
            "another --work"
        )


def driver_command(trainer_output: Path, run_dir: Path) -> list[str]:
    quants = [a for q in QUANTS for a in ("--quant", q)]
    return [
        *(sys.executable, "-m", "upload_driver.cli", "run", str(trainer_output), "--work", str(run_dir)),
        *("--name", "scale-llama", "--formats", "lora,merged_16bit,gguf", *quants),
        *("--push", f"local:{run_dir / 'published'}", "--runtime", "local", "--json"),
    ]


def environment() -> dict:
    """Offline; the repository's tools and driver importable after whatever PYTHONPATH already names."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    paths = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(REPO / "tools"), str(REPO / "driver")])
    return env


def run_pipeline(trainer_output: Path, run_dir: Path, group: MemoryGroup | None) -> dict:
    """`upload-driver run` in its own process, sampled: its exit code, wall time, windows, summary, cgroup."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out = run_dir.with_name(run_dir.name + "-summary.json")
    t = time.monotonic()
    with open(out, "w") as stdout:
        proc = subprocess.Popen(
            driver_command(trainer_output, run_dir),
            stdout=stdout,
            env=environment(),
            preexec_fn=group.enter if group else None,  # the child moves itself into the group before exec
        )
        sampler = TreeSampler(proc.pid, run_dir)
        sampler.start()
        code = proc.wait()
    wall = time.monotonic() - t
    windows = sampler.finish()
    steps = [w.figures() for w in windows]
    total = {"step": TOTAL, "wall_s": wall, "peak_rss": sampler.peak_rss, "peak_anon": sampler.peak_anon}
    total["peak_disk"] = sampler.peak_disk
    total.update({k: sum(s[k] for s in steps) for k in IO_KEYS})
    summary = json.loads(out.read_text() or "{}") if code == 0 else {}
    out.unlink()
    return {
        "exit_code": code,
        "samples": sampler.samples,
        "steps": steps + [total],
        "driver_seconds": {s["step"]: s["seconds"] for s in summary.get("steps", [])},
        "phases": phases(run_dir / "artifacts"),
    }


def phases(artifacts: Path) -> dict:
    """step -> the seconds per phase its tool recorded in its manifest (timings.seconds)."""
    out = {}
    for manifest in sorted(artifacts.glob("*/manifest.json")):
        seconds = json.loads(manifest.read_text()).get("timings", {}).get("seconds", {})
        out[manifest.parent.name] = {k: v for k, v in seconds.items() if isinstance(v, (int, float))}
    return out


def measure_size(args, size_gb: float) -> dict:
    layers = layers_for(size_gb)
    size_bytes = synthetic.plan_bytes(layer_plan(layers))
    models = args.work / "models"
    check_disk(args.work, size_bytes, (models / f"base-{layers}l" / synthetic.STAMP).is_file())
    synthetic.log(f"{size_bytes / 1e9:.2f} GB ({layers} layers): building the model and the trainer output")
    base, trainer_output = build_models(models, layers)
    evict(files_in(base) + files_in(trainer_output))
    synthetic.log(f"{size_bytes / 1e9:.2f} GB: upload-driver run")
    group = (
        MemoryGroup(f"upload-driver-scale-{os.getpid()}", int(args.memory_limit * 1e9)) if args.memory_limit else None
    )
    try:
        if group:
            with group:
                row = run_pipeline(trainer_output, args.work / f"run-{layers}l", group)
                row["memory_group"] = group.report()
        else:
            row = run_pipeline(trainer_output, args.work / f"run-{layers}l", None)
    finally:
        shutil.rmtree(args.work / f"run-{layers}l", ignore_errors=True)
        if not args.keep_models:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(trainer_output, ignore_errors=True)
    return {"size_gb": size_bytes / 1e9, "layers": layers, **row}


def fits(rows: list[dict]) -> dict:
    """step -> figure -> (intercept, slope per GB), for the steps measured at every size."""
    labels = [s["step"] for s in rows[0]["steps"]]
    out = {}
    for label in labels:
        per = [next((s for s in r["steps"] if s["step"] == label), None) for r in rows]
        if all(per):
            sizes = [r["size_gb"] for r in rows]
            out[label] = {k: fit(sizes, [s[k] / scale for s in per]) for k, _, scale in FIGURES}
    return out


def print_size(row: dict, limit_gb: float | None) -> None:
    state = "completed" if row["exit_code"] == 0 else f"FAILED (exit code {row['exit_code']})"
    print(f"\nmodel {row['size_gb']:.2f} GB bf16 ({row['layers']} layers): {state}, {row['samples']} samples")
    if limit_gb:
        g = row["memory_group"]
        print(
            f"  memory limit {limit_gb:g} GB (cgroup v1): {'within it' if row['exit_code'] == 0 else 'not within it'}"
            f"; the group's peak {g['max_usage'] / 1e9:.2f} GB (page cache included), {g['oom_kills']} OOM kill(s)"
        )
    print(f"  {'step':<26}" + "".join(f"{title:>12}" for _, title, _ in FIGURES) + f"{'driver s':>10}")
    for s in row["steps"]:
        own = row["driver_seconds"].get(s["step"])
        cells = "".join(f"{s[k] / scale:>12.2f}" for k, _, scale in FIGURES)
        print(f"  {s['step'][:26]:<26}{cells}{'' if own is None else f'{own:>10.1f}'}")
    for step, secs in row["phases"].items():
        print(f"  {step}'s own phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in secs.items()))


def print_fits(table: dict) -> None:
    print("\nleast-squares fit against the model size: figure = intercept + slope x GB of bf16 weights")
    print(f"  {'step':<26}" + "".join(f"{title:>16}" for _, title, _ in FIGURES))
    for label, figs in table.items():
        cells = "".join(
            f"{'n/a' if figs[k] is None else f'{figs[k][0]:.2f}{figs[k][1]:+.2f}/GB':>16}" for k, _, _ in FIGURES
        )
        print(f"  {label[:26]:<26}{cells}")


def print_notes() -> None:
    print(
        "\npeak RSS: sampled every 50 ms, summed over the step's process tree (anon: its anonymous part; RSS also "
        "counts mapped file pages). disk: the run folder (artifacts + published copy), sampled. read/written: "
        "/proc/<pid>/io read_bytes/write_bytes summed over the tree (real disk I/O only: page-cache hits are not "
        "reads, and writes may still be in the cache when the step ends); rchar/wchar: every byte through read/"
        "write calls. A step's window runs from its start to the next step's start (the driver's check of its "
        "files included); 'driver s' is the driver's own time for the step."
    )


def main() -> int:
    args = parse_args()
    if args.memory_limit and MemoryGroup.why_not():
        raise SystemExit(f"error: --memory-limit needs a cgroup: {MemoryGroup.why_not()}")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    rows = [measure_size(args, size) for size in args.size]
    table = fits(rows) if len(rows) > 1 else {}
    if args.json:
        print(json.dumps({"model": LLAMA3_8B, "quants": QUANTS, "rows": rows, "fits": table}, indent=2))
        return 0
    print(
        f"upload-driver run (lora, merged_16bit, GGUF {' + '.join(QUANTS)} validated, docs, local publish), local "
        f"runtime; Llama 3 8B layer shapes, vocabulary {VOCAB}; {time.monotonic() - t:.0f} s in all"
    )
    for row in rows:
        print_size(row, args.memory_limit)
    if table:
        print_fits(table)
    print_notes()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
