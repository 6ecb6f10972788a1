"""The Ray engine on a two-node cluster on this machine against a loop of `upload-driver run`: N copies
of the sample trainer output (each lora, merged_16bit and docs, as local processes) exported one `run`
after another, then as Ray tasks (ray_engine.submit: a head and a worker node of one CPU each, the worker
with the GPU resource, so the merges queue on it), then again (everything skipped). Prints the wall time
of each, Ray's own cost per dependent task (a chain of empty tasks), what the engine adds inside each
task (the run planned again, the state taken in turn) and the rerun's time per step.

The cluster runs in a network namespace holding only the loopback device (tests/ray_cluster.py): run it
as root on Linux, with upload-driver[ray] installed.

    python bench/batch_ray.py [--work bench-work/batch-ray] [--copies 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from measure import print_figures, sample_copies

FORMATS = ("lora", "merged_16bit")
SCRIPT = """
import json, sys, time
from pathlib import Path
import ray
from upload_driver import ray_engine

address, configs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
figures = {}
ray_engine.connect(address)
chain = ray.remote(num_cpus=1)(lambda *upstream: None)
t, ref = time.perf_counter(), None
for _ in range(20):
    ref = chain.remote(*([ref] if ref else []))
ray.get(ref)
figures["ray_dispatch_per_task_s"] = (time.perf_counter() - t) / 20
jobs = [j for i, c in enumerate(configs) for j in ray_engine.unit_jobs(f"run-{i}/final", c)]
for name in ("ray", "ray_rerun"):
    t = time.perf_counter()
    results = ray_engine.submit(jobs, address=address, on_event=lambda e: None)
    figures[name + "_s"] = time.perf_counter() - t
    assert all(r["status"] in ("finished", "skipped") for r in results.values()), results
    figures[name + "_results"] = list(results.values())
Path(out).write_text(json.dumps(figures))
"""


def sequential(configs: list[dict]) -> float:
    from upload_driver.config import request
    from upload_driver.run import execute

    t = time.perf_counter()
    for config in configs:
        execute(request(**config), log=lambda m: None)
    return time.perf_counter() - t


def on_cluster(configs: list[dict], root: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ray_cluster import run_in_cluster

    out = root / "ray-figures.json"
    run = run_in_cluster(SCRIPT, root / "cluster", args=[json.dumps(configs), out])
    if run.returncode or not out.is_file():
        raise SystemExit(f"the cluster run failed: {run.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="bench-work/batch-ray")
    ap.add_argument("--copies", type=int, default=3, help="Trainer outputs (copies of the sample), one unit each.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(args.work).absolute()
    for old in ("work", "cluster"):
        shutil.rmtree(root / old, ignore_errors=True)
    configs = [
        {"trainer_output": str(t), "work": str(root / "work" / t.name), "formats": list(FORMATS), "runtime": "local"}
        for t in sample_copies(root, args.copies)
    ]
    figures: dict = {"units": args.copies, "steps": 3 * args.copies}
    figures["sequential_runs_s"] = sequential(configs)
    figures["sequential_rerun_s"] = sequential(configs)
    for c in configs:  # the cluster makes everything again
        shutil.rmtree(c["work"])
    found = on_cluster(configs, root)
    first, rerun = found.pop("ray_results"), found.pop("ray_rerun_results")
    figures.update(found)
    figures["engine_in_task_per_step_s"] = statistics.mean(r["task_seconds"] - r["seconds"] for r in first)
    figures["steps_seconds_sum_s"] = sum(r["seconds"] for r in first)
    figures["rerun_task_per_step_s"] = statistics.mean(r["task_seconds"] for r in rerun)
    print_figures(figures, args.json, 36)
    return 0


if __name__ == "__main__":
    sys.exit(main())
