"""upload-driver batch with the local engine against a shell loop of `upload-driver run`: the sample
trainer output's checkpoints (each lora, merged_16bit and docs, as local processes) exported one
`run` after another, then as one batch at --max-parallel 1 and 2, then the batch again (everything
skipped). Prints the wall time of each, the batch's time per step beyond the tools' own (what the
engine adds: threads, the lock, the events; the same process starts as `run`), and the rerun.

    python bench/batch_local.py [--work bench-work/batch-local] [--copies 2] [--json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from measure import print_figures, sample_copies

FORMATS = ("lora", "merged_16bit")


def sequential(trainers: list[Path], work: Path) -> float:
    """Every checkpoint of every trainer output, one `run` after another (as a shell loop would)."""
    from upload_common.trainer_output import inspect_trainer_output
    from upload_driver.config import request
    from upload_driver.run import execute

    t = time.perf_counter()
    for trainer in trainers:
        for step in inspect_trainer_output(trainer)["checkpoints"]:
            req = request(
                trainer,
                work=str(work / trainer.name / f"checkpoint-{step}"),
                formats=",".join(FORMATS),
                runtime="local",
                settings={"merge": {"checkpoint": step}},
            )
            execute(req, log=lambda m: None)
    return time.perf_counter() - t


def batch(trainers: list[Path], work: Path, parallel: int) -> tuple[float, dict]:
    from upload_driver.batch import run_batch

    config = work.parent / "bench-run.toml"
    config.write_text(f"formats = {list(FORMATS)}\nruntime = 'local'\n")
    t = time.perf_counter()
    sources = [str(p) for p in trainers]
    result = run_batch(sources, checkpoints="all", config=config, max_parallel=parallel, work=work, log=lambda m: None)
    return time.perf_counter() - t, result


def tools_time(result: dict) -> float:
    """The tools' own seconds (their manifests' timings) over every step the batch ran."""
    from upload_common.contract import read_manifest

    total = 0.0
    for u in result["units"]:
        for s in u["steps"]:
            if s["status"] == "done":
                m = read_manifest(Path(u["work"]) / "artifacts" / s["step"]) or {}
                total += m.get("timings", {}).get("seconds", {}).get("total") or 0.0
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="bench-work/batch-local")
    ap.add_argument("--copies", type=int, default=2, help="Trainer outputs (copies of the sample), 3 checkpoints each.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(args.work).absolute()
    trainers = sample_copies(root, args.copies)
    figures = {"units": 3 * args.copies, "steps": 3 * 3 * args.copies}
    shutil.rmtree(root / "sequential", ignore_errors=True)
    figures["sequential_runs_s"] = sequential(trainers, root / "sequential")
    for parallel in (1, 2):
        work = root / f"batch-{parallel}"
        shutil.rmtree(work, ignore_errors=True)
        seconds, result = batch(trainers, work, parallel)
        assert not result["failed"], result["failed"]
        figures[f"batch_parallel_{parallel}_s"] = seconds
        beyond = (seconds - tools_time(result)) / figures["steps"]
        figures[f"batch_parallel_{parallel}_beyond_tools_per_step_s"] = beyond
    figures["batch_rerun_s"] = batch(trainers, root / "batch-2", 2)[0]
    print_figures(figures, args.json, 44)
    return 0


if __name__ == "__main__":
    sys.exit(main())
