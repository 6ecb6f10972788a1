#!/usr/bin/env python
"""The validation reference's cost: the whole Hugging Face model loaded in fp32 vs the model streamed part by
part (upload_common.reference), on synthetic Llama-shaped bf16 models (bench/synthetic.py).

    python bench/reference.py [--size-gb 0.5 1.0] [--tokens 128] [--work bench-work/reference] [--json]

Each size's model is built once in --work (stamped, reused). Each way runs in its own process on the same
token ids (seeded, in the vocabulary; no tokenizer is needed) with the model's files in the page cache,
and prints wall time and peak RSS (exact, from the kernel), the ratio whole/streamed, the weight bytes each
held at once (fp32) and the largest difference between the two ways' log-probabilities. Progress goes to
stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tools"), str(REPO / "bench")]

from merge import files_in, run_measured  # noqa: E402 - bench/ is on the path only from here
from synthetic import DIMS, GB, build_base, ensure, layers_for, log, model_plan, plan_bytes  # noqa: E402

WAYS = ("whole", "streamed")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, nargs="+", default=[0.5, 1.0], help="model sizes (default: %(default)s)")
    ap.add_argument("--tokens", type=int, default=128, help="positions scored (default: %(default)s)")
    ap.add_argument("--work", type=Path, default=Path("bench-work/reference"), help="work folder")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ap.add_argument("--_run", nargs=4, metavar=("WAY", "MODEL", "TOKENS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--_build", nargs=2, metavar=("FOLDER", "LAYERS"), help=argparse.SUPPRESS)
    return ap.parse_args()


def token_ids(n: int) -> list[int]:
    import random

    rng = random.Random(0)
    return [rng.randrange(3, DIMS["vocab"]) for _ in range(n)]


def child(way: str, model: str, tokens: str, out: str) -> None:
    """One way's reference (run in its own process): log-probs to OUT.npy, its figures to OUT.json."""
    import numpy as np

    from upload_common.reference import run_reference, whole_model

    ids = token_ids(int(tokens))
    ref = run_reference(Path(model), ids) if way == "streamed" else whole_model(Path(model), ids, "")
    np.save(out + ".npy", ref.logprobs)
    Path(out + ".json").write_text(
        json.dumps(
            {
                "streamed": ref.streamed,
                "peak_weight_gb": ref.peak_weight_bytes / GB,
                "model_weight_gb": ref.model_weight_bytes / GB,
            }
        )
    )


def warm(folder: Path) -> None:
    """Read the model's files once, so that neither way pays the first read from disk."""
    for p in files_in(folder):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def build(folder: str, layers: str) -> None:
    """Build (or reuse) the model (run in its own process: a child's peak RSS counts its parent's at the
    moment it starts, so the measuring process never holds torch or a shard)."""
    ensure(Path(folder), {"layers": int(layers), **DIMS}, lambda d: build_base(d, int(layers)))


def measure_size(work: Path, size_gb: float, tokens: int) -> dict:
    layers = layers_for(size_gb)
    folder = work / f"base-{layers}l"
    if run_measured([sys.executable, __file__, "--_build", str(folder), str(layers)])["exit_code"] != 0:
        raise SystemExit(f"could not build the {size_gb} GB model")
    warm(folder)
    row = {"size_gb": plan_bytes(model_plan(layers)) / GB, "layers": layers}
    for way in WAYS:
        out = str(work / f"out-{layers}l-{way}")
        log(f"{row['size_gb']:.2f} GB: {way}")
        r = run_measured([sys.executable, __file__, "--_run", way, str(folder), str(tokens), out])
        if r["exit_code"] != 0:
            row[way] = {"error": f"exit {r['exit_code']}"}
            continue
        row[way] = {
            "wall_s": r["wall_s"],
            "peak_rss_gb": r["peak_rss_gb"],
            **json.loads(Path(out + ".json").read_text()),
        }
    return row


def agreement(work: Path, row: dict) -> None:
    """The largest difference between the two ways' log-probabilities (after every run: numpy stays out of the
    measuring process until then)."""
    import numpy as np

    if all("error" not in row[w] for w in WAYS):
        a, b = (np.load(str(work / f"out-{row['layers']}l-{w}.npy")) for w in WAYS)
        row["max_abs_diff"] = float(np.abs(a - b).max())


def print_table(rows: list[dict], tokens: int) -> None:
    print(f"\nvalidation reference, {tokens} tokens, fp32 on the CPU (files in the page cache)")
    print(f"{'model':>8} {'layers':>6}  {'way':<9} {'wall s':>7} {'peak RSS GB':>11} {'weights held GB':>15}")
    for row in rows:
        for way in WAYS:
            r = row[way]
            if "error" in r:
                print(f"{row['size_gb']:>6.2f}GB {row['layers']:>6}  {way:<9} {r['error']}")
                continue
            print(
                f"{row['size_gb']:>6.2f}GB {row['layers']:>6}  {way:<9} {r['wall_s']:>7.1f} "
                f"{r['peak_rss_gb']:>11.2f} {r['peak_weight_gb']:>15.2f}"
            )
        if "max_abs_diff" in row:
            w, s = row["whole"], row["streamed"]
            print(
                f"{'':>16}  whole/streamed: RSS {w['peak_rss_gb'] / s['peak_rss_gb']:.2f}x, "
                f"wall {w['wall_s'] / s['wall_s']:.2f}x; max |log-prob diff| {row['max_abs_diff']:.3g}"
            )


def main() -> None:
    args = parse_args()
    if args._run:
        return child(*args._run)
    if args._build:
        return build(*args._build)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = [measure_size(work, size, args.tokens) for size in args.size_gb]
    for row in rows:
        agreement(work, row)
    print_table(rows, args.tokens)
    if args.json:
        print(json.dumps({"tokens": args.tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
