"""``--engine ray``: the steps of many runs as Ray tasks on a cluster, with the steps, runtimes, manifests
and resume exactly as ``upload-driver run`` has them.

Each step is one task. Its resources come from the plan (CPUs, a GPU for a GPU step, the memory the dry
run predicts), its upstream steps' tasks are its dependencies (Ray starts it when they are done), and it
runs on whichever node Ray chooses, through the step's runtime there (a local process, or its container
when that node has the images). A planned step holds read-only mappings and does not travel: the task
re-plans its run from the run's settings (``config.request`` + ``plan.plan``, deterministic) and takes
its step by name. The work folder must be one that every node sees (NFS or another shared file system):
``probe_work`` proves it before any step. The content-addressed state makes a rerun, or a task Ray
retries after losing its node, skip what is done; a ``.partial`` folder is never taken as done.

Ray is an optional extra (``upload-driver[ray]``); without it every entry point here refuses in one
line."""

from __future__ import annotations

import contextlib
import graphlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upload_common.errors import InvalidInput, UploadError, UsageError

EXTRA = "upload-driver[ray]"
CONNECT_TIMEOUT_S = 10
PROBE = ".upload-driver/probe"


@dataclass(frozen=True)
class StepJob:
    """One step of one run for the cluster: ``key`` ("<run>/<checkpoint>/<step>"), ``after`` (the keys of
    the jobs whose outputs it reads), the resources it asks Ray for (``memory`` in bytes, None: not
    asked), ``config`` (the run's settings as ``config.request`` takes them, JSON-able: the task plans
    the run again from them) and ``step`` (its name in that plan)."""

    key: str
    step: str
    config: Mapping[str, Any]
    after: tuple[str, ...] = ()
    num_cpus: float = 1
    num_gpus: float = 0
    memory: int | None = None


@dataclass(frozen=True)
class StepEvent:
    """What ``submit`` tells ``on_event``: ``what`` is started, finished, skipped, failed or retried;
    ``node`` the Ray node id, ``address`` its IP address; ``message`` a failure's one line."""

    key: str
    what: str
    node: str = ""
    address: str = ""
    seconds: float | None = None
    message: str = ""


@dataclass(frozen=True)
class Outcome:
    """What a task returns: how its step ended (finished, skipped or failed), where, how long the step
    ran (``seconds``) and how long the task did (``task_seconds``: also the plan and the skip check)."""

    status: str
    node: str
    address: str
    seconds: float
    message: str = ""
    task_seconds: float = 0.0


def _ray():
    """The ray module, or the one-line refusal naming the extra."""
    try:
        import ray
        import ray.util.queue
        import ray.util.scheduling_strategies
    except ImportError:
        raise UsageError(
            f"--engine ray needs Ray, which is not installed: pip install '{EXTRA}' (or use --engine local)"
        ) from None
    return ray


def connect(address: str | None):
    """Connect to the cluster at ``address`` (None: ``RAY_ADDRESS``); one line when no cluster answers
    there (a head's HOST:PORT is tried first with a timeout: ray.init itself waits for minutes)."""
    ray = _ray()
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("--engine ray: no cluster named: pass --address HOST:PORT or set RAY_ADDRESS")
    if ray.is_initialized():
        return ray
    problem = _unanswered(address)
    if not problem:
        try:
            # the tasks' own lines stay on their nodes: the batch tells each step's events, and each step's
            # tool writes into its log file in the shared work folder
            ray.init(address=address, logging_level="warning", log_to_driver=False)
            return ray
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    raise UsageError(
        f"--engine ray: no Ray cluster answered at {address} ({problem}): start one (ray start --head) "
        "or pass its address"
    )


def _unanswered(address: str) -> str:
    """Why nothing listens at a HOST:PORT address ("" when something does, or for another form of
    address, such as ray://, which ray.init checks itself)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return ""
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""


def _here() -> tuple[str, str]:
    """(node id, node address) of the task or driver that asks."""
    ray = _ray()
    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ray.util.get_node_ip_address()


def _alive_nodes(ray) -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _on_node(ray, fn, node_id: str):
    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return ray.remote(num_cpus=0, max_retries=0)(fn).options(scheduling_strategy=strategy)


def _probe_write(folder: str, token: str) -> tuple[str, str, str]:
    """On one node: write ``<folder>/<node id>`` holding ``token``; (node id, address, problem or "")."""
    node, address = _here()
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / node).write_text(token, encoding="utf-8")
    except OSError as exc:
        return node, address, f"cannot write {folder}: {exc.strerror or exc}"
    return node, address, ""


def _probe_read(folder: str, expected: dict) -> tuple[str, str, str]:
    """On one node: read every node's probe file back; (node id, address, problem or "")."""
    node, address = _here()
    for other, token in expected.items():
        try:
            seen = (Path(folder) / other).read_text(encoding="utf-8")
        except OSError:
            seen = None
        if seen != token:
            return node, address, f"does not see the file node {other[:12]} wrote in {folder}"
    return node, address, ""


def probe_work(work: Path, *, address: str | None = None) -> list[dict]:
    """Have every alive node write a probe file into ``work`` and read the others' back; InvalidInput,
    one line naming the node, when one cannot (``work`` is not shared, or not writable there). Returns
    the nodes that passed ({"node", "address"})."""
    ray = connect(address)
    folder = str(Path(work) / PROBE / uuid.uuid4().hex)
    nodes = [n["NodeID"] for n in _alive_nodes(ray)]
    token = uuid.uuid4().hex
    wrote = ray.get([_on_node(ray, _probe_write, n).remote(folder, f"{token}:{n}") for n in nodes])
    _refuse_probe(work, wrote)
    expected = {n: f"{token}:{n}" for n, _, _ in wrote}
    read = ray.get([_on_node(ray, _probe_read, n).remote(folder, expected) for n in nodes])
    _refuse_probe(work, read)
    with contextlib.suppress(OSError):
        for n in expected:
            (Path(folder) / n).unlink()
        Path(folder).rmdir()
    return [{"node": n, "address": a} for n, a, _ in read]


def _refuse_probe(work: Path, answers: Sequence[tuple[str, str, str]]) -> None:
    for node, address, problem in answers:
        if problem:
            raise InvalidInput(
                f"--work {work} is not shared with every node: node {node[:12]} ({address}) {problem}: "
                "give a folder every node mounts at the same path (NFS or another shared file system)",
                node=node,
                address=address,
            )


def run_job(config: Mapping[str, Any], step_name: str, *, log) -> tuple[str, float]:
    """Run (or skip, when its output is up to date) one step of the run ``config`` describes, on this
    machine, through the run's runtime; record it in the run's state. ("finished" or "skipped", seconds)."""
    from . import disk_plan
    from . import run as driver_run
    from . import state as st

    req, steps = _planned(config)
    step = next((s for s in steps if s.name == step_name), None)
    if step is None:
        raise UsageError(f"step {step_name}: not in the plan of {req.trainer_output}: {[s.name for s in steps]}")
    runtime, client, _ = driver_run.choose_runtime(req, [step], log)
    fp = driver_run.asker(runtime, client, req.work)(step) if st.recorded(req.work, step) else None

    def gpu_choice():
        return driver_run.choose_gpu(req, runtime, client, [step], req.work)[:2]

    pinned = _assigned_gpus()  # the GPU Ray gave the task: its container gets that one, not every GPU
    hooks = driver_run.Hooks(
        gate=lambda _step: contextlib.nullcontext(pinned), output=lambda s: driver_run.step_log(req.work, s)
    )
    how = driver_run.Runtime(runtime, client, gpu_choice, log, hooks)
    seconds = driver_run.run_step(req, step, fp, disk_plan.step_peaks(steps)[step.name], how)
    return ("skipped", 0.0) if seconds is None else ("finished", seconds)


def _assigned_gpus() -> str | None:
    """The GPU ids Ray assigned to this task (``num_gpus``), as CUDA_VISIBLE_DEVICES lists them; None: none."""
    try:
        import ray

        ids = ray.get_runtime_context().get_accelerator_ids().get("GPU") or []
    except (ImportError, AttributeError, RuntimeError):
        return None
    return ",".join(map(str, ids)) or None


def _task(key: str, config_json: str, step_name: str, events, *upstream: Outcome) -> Outcome:
    """The body of a step's Ray task: tell the driver where it started, then run the step (not when an
    upstream step did not end well)."""
    node, address = _here()
    events.put((key, "started", node, address))
    blocked = [u for u in upstream if u.status == "failed"]
    if blocked:
        return Outcome("failed", node, address, 0.0, f"not run: {blocked[0].message}")
    t = time.monotonic()
    try:
        status, seconds = run_job(json.loads(config_json), step_name, log=_task_log(key))
    except UploadError as exc:
        took = time.monotonic() - t
        return Outcome("failed", node, address, took, f"{key}: {exc.message}", took)
    return Outcome(status, node, address, seconds, task_seconds=time.monotonic() - t)


def _task_log(key: str) -> Callable[[str], None]:
    from upload_common.cli import log

    return lambda message: log(f"{key}: {message}")


def _ordered(jobs: Iterable[StepJob]) -> list[StepJob]:
    """Jobs with each after the jobs it names; UsageError on an unknown name or a cycle."""
    by_key = {j.key: j for j in jobs}
    for job in by_key.values():
        missing = [a for a in job.after if a not in by_key]
        if missing:
            raise UsageError(f"job {job.key} waits for unknown job(s) {', '.join(missing)}")
    try:
        order = graphlib.TopologicalSorter({k: j.after for k, j in by_key.items()}).static_order()
        return [by_key[k] for k in order]
    except graphlib.CycleError as exc:
        raise UsageError(f"job {exc.args[1][0]} is part of a cycle: {' -> '.join(exc.args[1])}") from None


def submit(
    jobs: Sequence[StepJob],
    *,
    address: str | None,
    on_event: Callable[[StepEvent], None],
    max_retries: int = 2,
) -> dict[str, dict]:
    """Submit one Ray task per job, each after its upstream jobs, retried by Ray on node loss
    (``max_retries``); tell ``on_event`` each step event as it happens; return, per job key, {"node",
    "address", "seconds", "task_seconds", "status", "message"} (status: finished, skipped or failed)."""
    ray = connect(address)
    head = {"node:__internal_head__": 0.001}  # the events' queue lives on the head, which the cluster needs anyway
    events = ray.util.queue.Queue(actor_options={"num_cpus": 0, "resources": head})
    task = ray.remote(_task)
    refs: dict[str, Any] = {}
    for job in _ordered(jobs):
        opts = {"num_cpus": job.num_cpus, "num_gpus": job.num_gpus, "max_retries": max_retries}
        if job.memory:
            opts["memory"] = int(job.memory)
        config = json.dumps(dict(job.config), sort_keys=True)
        refs[job.key] = task.options(**opts).remote(job.key, config, job.step, events, *(refs[a] for a in job.after))
    try:
        return _collect(ray, refs, events, on_event)
    finally:
        with contextlib.suppress(Exception):
            events.shutdown()


def _collect(ray, refs: dict, events, on_event) -> dict[str, dict]:
    """Wait for every task, telling ``on_event`` what each does as its news arrives."""
    keys = {ref: key for key, ref in refs.items()}
    pending, results, started = list(refs.values()), {}, set()
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=0.2)
        _drain(events, started, on_event)  # a task tells its start before it can end
        for ref in done:
            r = results[keys[ref]] = _result(ray, ref, keys[ref])
            on_event(StepEvent(keys[ref], r["status"], r["node"], r["address"], r["seconds"], r["message"]))
    return results


def _drain(events, started: set, on_event) -> None:
    """Tell the start of every task the queue holds; a second start of one is Ray's retry."""
    while not events.empty():
        key, what, node, address = events.get_nowait()
        if key in started:
            on_event(StepEvent(key, "retried", node, address))
        started.add(key)
        on_event(StepEvent(key, what, node, address))


def _result(ray, ref, key: str) -> dict:
    try:
        out: Outcome = ray.get(ref)
    except ray.exceptions.RayError as exc:  # the node was lost more often than max_retries, or Ray failed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        failed = {"status": "failed", "node": "", "address": "", "seconds": None, "task_seconds": None}
        return {**failed, "message": f"{key}: {first}"}
    return {
        "status": out.status,
        "node": out.node,
        "address": out.address,
        "seconds": round(out.seconds, 3),
        "task_seconds": round(out.task_seconds, 3),
        "message": out.message,
    }


def unit_jobs(unit: str, config: Mapping[str, Any], *, gpus: bool = True, memory=None) -> list[StepJob]:
    """The jobs of one run ("<run>/<checkpoint>" = ``unit``) from its plan: each step after the steps
    whose outputs it reads, a GPU step asking for one GPU (unless ``gpus`` is False), ``memory`` a
    {step: bytes} of what the dry run predicts."""
    _, steps = _planned(config)
    outs = {s.out: s.name for s in steps}
    return [
        StepJob(
            key=f"{unit}/{s.name}",
            step=s.name,
            config=dict(config),
            after=tuple(f"{unit}/{outs[p]}" for p in s.inputs.values() if p in outs),
            num_gpus=1 if (s.gpu and gpus) else 0,
            memory=(memory or {}).get(s.name),
        )
        for s in steps
    ]


def _planned(config: Mapping[str, Any]):
    """(request, steps) of the run ``config`` describes, planned as ``upload-driver run`` plans it."""
    from upload_common.trainer_output import inspect_trainer_output

    from . import config as cfg
    from .plan import plan

    req = cfg.request(**config)
    return req, plan(req, inspect_trainer_output(req.trainer_output, checkpoint=req.merge.get("checkpoint")))
