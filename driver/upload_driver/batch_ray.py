"""``upload-driver batch --engine ray``: the batch's checked units as Ray tasks on a cluster.

The batch holds WORK's lock, has every node prove it sees WORK (``ray_engine.probe_work``) before any
step, then submits each unit's steps (``ray_engine.unit_jobs``: a unit's request travels as the
JSON-able settings it was made from, ``Unit.kwargs``) and tells the same progress lines, and returns
the same result, as the local engine, with the node each step ran on."""

from __future__ import annotations

import time
from collections.abc import Sequence

from upload_common.cli import log as default_log

from . import disk_plan, memory_plan, ray_engine
from .batch import STATUS, Unit, sweep_tables, unit_result, work_folder
from .lock import hold
from .run import Prepared


def memory(prep: Prepared, gpus: bool) -> dict[str, int]:
    """{step: bytes of RAM} the dry run's memory plan predicts, for the steps it knows (the quantized
    merges; nothing asked for the others)."""
    if not any(s.name in memory_plan.MODELS for s in prep.steps):
        return {}
    sizes: dict = {}
    for step in prep.steps:
        disk_plan.estimate(step, sizes)
    rows = memory_plan.plan(prep.steps, sizes.get("specs"), gpus)
    return {r["step"]: r["ram_bytes"] for r in rows if r["ram_bytes"]}


def jobs(todo: Sequence[Unit], prepared: Sequence[Prepared]) -> list[ray_engine.StepJob]:
    """Every unit's steps as jobs: a GPU step asks for one GPU unless its unit says ``gpus = "none"``."""
    found = []
    for u, prep in zip(todo, prepared, strict=True):
        gpus = u.req.gpus != "none"
        found += ray_engine.unit_jobs(u.label, u.kwargs, gpus=gpus, memory=memory(prep, gpus))
    return found


def execute(todo: Sequence[Unit], prepared: Sequence[Prepared], *, work, address=None, log=default_log) -> dict:
    """Run the checked units on the Ray cluster at ``address`` (None: RAY_ADDRESS), holding WORK's lock."""
    work = work_folder(work)
    t0 = time.monotonic()
    with hold(work, "batch"):
        nodes = ray_engine.probe_work(work, address=address)
        log(f"Ray cluster: {len(nodes)} node(s) see {work}")
        planned = jobs(todo, prepared)
        results = ray_engine.submit(planned, address=address, on_event=lambda e: log(_line(e)))
    done = [_unit(u, prep, results) for u, prep in zip(todo, prepared, strict=True)]
    return {
        "engine": "ray",
        "work": str(work),
        "nodes": nodes,
        "seconds": round(time.monotonic() - t0, 3),
        "units": done,
        "failed": [u["error"] for u in done if u["error"]],
        "sweep": sweep_tables(todo, done),
    }


def _line(e: ray_engine.StepEvent) -> str:
    """The local engine's progress line for a step event, with the node where it started."""
    label, _, step = e.key.rpartition("/")
    if e.what == "finished":
        return f"{label} {step}: finished in {e.seconds:.1f} s"
    if e.what == "failed":
        return f"{label} {step}: failed: {_why(e.key, e.message)}"
    where = f" on {e.address} ({e.node[:12]})" if e.what in ("started", "retried") else ""
    return f"{label} {step}: {e.what}{where}"


def _why(key: str, message: str) -> str:
    return message.removeprefix(f"{key}: ")


def _unit(u: Unit, prep: Prepared, results: dict) -> dict:
    """One unit's rows (step, seconds, status, node) from submit's results; its first failure its error."""
    rows, error = [], None
    for step in prep.steps:
        r = results.get(f"{u.label}/{step.name}") or {"status": "not run", "seconds": None, "node": ""}
        blocked = r["status"] == "failed" and r.get("message", "").startswith("not run:")
        status = "not run" if blocked else STATUS.get(r["status"], r["status"])
        took = None if status in ("skipped", "not run") or r["seconds"] is None else round(r["seconds"], 1)
        rows.append({"step": step.name, "seconds": took, "status": status, "node": r["node"]})
        if status == "failed" and error is None:
            error = f"{u.label} {step.name}: {_why(f'{u.label}/{step.name}', r['message'])}"
    return unit_result(u, rows, error)
