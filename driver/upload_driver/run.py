"""``upload-driver run``: check the trainer output, plan, choose the runtime and the GPU, run each step
(or skip it when its output already matches), and summarise."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from upload_common.cli import log as default_log
from upload_common.contract import read_manifest
from upload_common.errors import Unsupported, UsageError
from upload_common.trainer_output import inspect_trainer_output

from . import containers, disk_plan, local, memory_plan, preflight
from . import state as st
from .lock import hold
from .plan import PlannedStep, plan
from .request import Request


def choose_runtime(req: Request, steps: Sequence[PlannedStep], log) -> tuple[str, object, str]:
    """("docker", client, why) or ("local", None, why). auto: Docker when an engine answers and every
    image is there, else local processes."""
    wanted = req.runtime
    if wanted == "local":
        return "local", None, "local processes (--runtime local)"
    try:
        c = containers.client()
        missing = containers.missing_images(c, [s.image for s in steps])
    except containers.DockerUnavailable as exc:
        if wanted == "docker":
            raise UsageError(
                f"--runtime docker: {exc.message}: start Docker (Docker Desktop on Windows), or use --runtime local"
            ) from None
        return "local", None, f"local processes: {exc.message}"
    if missing:
        if wanted == "docker":
            raise UsageError(
                f"--runtime docker: image(s) {', '.join(missing)} not found: build them with "
                "images/build.sh (see images/README.md), or use --runtime local"
            )
        return "local", None, f"local processes: image(s) {', '.join(missing)} not built (images/build.sh)"
    return "docker", c, "Docker containers"


def choose_gpu(req: Request, runtime: str, c, steps: Sequence[PlannedStep], work: Path) -> tuple[bool, str, str]:
    """(GPU steps get the GPU, merge-tool --device, one line saying so)."""
    gpu_steps = [s for s in steps if s.gpu]
    if req.gpus == "none" or not gpu_steps:
        return False, "cpu", "GPU: not used" + (" (--gpus none)" if gpu_steps else "")
    if runtime == "local":
        try:
            import torch
        except ImportError:
            raise Unsupported(
                "--runtime local runs every step on this machine, which needs the tools' libraries: "
                "pip install 'upload-driver[all]' (or build the images: images/build.sh)"
            ) from None
        if torch.cuda.is_available():
            return True, "cuda", f"GPU: {torch.cuda.get_device_name(0)}"
        return False, "cpu", "GPU: none visible to torch here: running on CPU"
    ok, why = containers.gpu_available(c, gpu_steps[0].image, work)
    return ok, "auto" if ok else "cpu", f"GPU: {why}"


def will_run(req: Request, steps: Sequence[PlannedStep], force: set, ask) -> tuple[set, dict]:
    """The steps that will not be skipped (forced, never done, not up to date, or fed by one that runs),
    and the fingerprint each tool gave now for the others (``ask(step)``, see ``state``)."""
    running: set = set()
    fps: dict = {}
    outs = {s.out: s.name for s in steps}
    for step in steps:
        upstream = {outs[p] for p in step.inputs.values() if p in outs}
        ready = all(p.exists() for p in step.inputs.values())
        if step.name in force or upstream & running or not ready or not st.recorded(req.work, step):
            running.add(step.name)
            continue
        fps[step.name] = ask(step)
        if not st.up_to_date(req.work, step, fps[step.name]):
            running.add(step.name)
    return running, fps


def asker(runtime: str, c, work: Path):
    """How this run asks a step's tool for its fingerprint: in its container, or as a local process."""
    if runtime == "docker":
        return lambda step: containers.fingerprint(c, step, work=work)
    return local.fingerprint


@dataclass(frozen=True)
class Prepared:
    """A request checked and planned, nothing written: the trainer folder as inspected, the steps, the
    runtime (and its Docker client), the steps that will run and the fingerprints asked for the others,
    and what the preflight found (``execute`` refuses on those findings, ``--dry-run`` shows them)."""

    req: Request
    found: dict
    steps: tuple[PlannedStep, ...]
    force: frozenset
    runtime: str
    client: object
    why: str
    running: frozenset
    fps: dict
    findings: tuple
    disk: dict


@dataclass(frozen=True)
class Hooks:
    """What a caller running several requests at once puts around each step: ``gate(step)``, a context
    manager held while the step runs (a GPU slot: it gives the id of the GPU the step is pinned to, or
    None), ``event(step, what, seconds)``, told when a step is skipped, started or finished, and
    ``output(step)``, the file the step's tool writes its messages into (None: our stderr)."""

    gate: Callable = lambda step: contextlib.nullcontext()
    event: Callable = lambda step, what, seconds=None: None
    output: Callable = lambda step: None


def step_log(work: Path, step: PlannedStep) -> Path:
    """Where a batch keeps a step's messages (its units run side by side: their tools' output would mix)."""
    return work / "logs" / f"{step.name}.log"


def prepare(req: Request, *, force=(), log=default_log) -> Prepared:
    """Everything ``execute`` does before its first step: inspect, plan, choose the runtime, ask which
    steps are up to date, run the preflight checks."""
    found = inspect_trainer_output(req.trainer_output, checkpoint=req.merge.get("checkpoint"))
    log(f"trainer output: {found['root']} ({found['trainer']['kind']}; adapter: {found['adapter']['reason']})")
    steps = plan(req, found)
    names = [s.name for s in steps]
    force = set(names) if "all" in force else set(force)
    if force - set(names):
        raise UsageError(f"--force {', '.join(sorted(force - set(names)))}: the steps are {', '.join(names)} (or all)")
    runtime, c, why = choose_runtime(req, steps, log)
    running, fps = will_run(req, steps, force, asker(runtime, c, req.work))
    findings, disk = preflight.check(req, found, steps, running)
    return Prepared(
        req, found, steps, frozenset(force), runtime, c, why, frozenset(running), fps, tuple(findings), disk
    )


def gpu_chooser(prep: Prepared, log):
    """``gpu_choice()``: (GPU steps get the GPU, merge-tool --device), probed once, when the first step
    that could use it runs (a rerun that skips all: never); ``decided`` holds the answer once probed."""
    decided: list = []

    def gpu_choice():
        if not decided:
            decided.extend(choose_gpu(prep.req, prep.runtime, prep.client, prep.steps, prep.req.work))
            log(decided[2])
        return decided[0], decided[1]

    return gpu_choice, decided


def execute(req: Request, *, dry_run: bool = False, force=(), log=default_log) -> dict:
    prep = prepare(req, force=force, log=log)
    if not dry_run:
        preflight.refuse(list(prep.findings))  # every mistake that can be found now stops the run before any step
    log(f"runtime: {prep.why}")
    gpu_choice, decided = gpu_chooser(prep, log)
    if dry_run:
        p = prep
        return _dry_run(req, p.steps, p.runtime, *gpu_choice(), p.force, p.running, list(p.findings), p.disk)
    return perform(prep, gpu_choice, decided, log)


def perform(prep: Prepared, gpu_choice, decided: list, log, hooks: Hooks = Hooks()) -> dict:
    """Run a prepared request's steps in its work folder, holding the folder's lock."""
    work = prep.req.work
    with hold(work) as previous:
        if previous.get("pid"):
            log(f"the last run on this folder (pid {previous['pid']}) was interrupted: resuming")
        todo = (prep.running, prep.fps)
        return _steps(prep.req, prep.steps, todo, prep.runtime, prep.client, gpu_choice, decided, log, hooks)


def _steps(req, steps, todo, runtime, c, gpu_choice, decided, log, hooks: Hooks = Hooks()) -> dict:
    """Run the steps in order; ``todo``: what will_run found (a step it found up to date is checked
    again, cheaply, now that the run holds the work folder)."""
    running, fps = todo
    work = req.work
    if c is not None and containers.remove_leftovers(c, work):
        log("removed containers left by an interrupted run")
    rows, t_all = [], time.monotonic()
    needs = disk_plan.step_peaks(steps)
    how = Runtime(runtime, c, gpu_choice, log, hooks)
    for i, step in enumerate(steps, 1):
        fp = None if step.name in running else fps.get(step.name)
        seconds = run_step(req, step, fp, needs[step.name], how, tag=f"[{i}/{len(steps)}] ")
        rows.append(summary(step, seconds))
    return {
        "runtime": runtime,
        "gpu": bool(decided and decided[0]),
        "work": str(work),
        "seconds": round(time.monotonic() - t_all, 3),
        "steps": rows,
    }


@dataclass(frozen=True)
class Runtime:
    """How a step runs: ``name`` (docker or local) and its Docker ``client``, ``gpu_choice()`` (GPU steps
    get the GPU, merge-tool --device), the log, and the caller's ``hooks``."""

    name: str
    client: object
    gpu_choice: Callable
    log: Callable
    hooks: Hooks = Hooks()


def run_step(req: Request, step: PlannedStep, fp: str | None, need, how: Runtime, *, tag: str = "") -> float | None:
    """One step of a run: skipped (None) when the state records it done under ``fp`` (the fingerprint its
    tool gives now; None: it runs) and its output is still there; else the disk checked for ``need``
    (``disk_plan.step_peaks``), its record forgotten, run through the runtime inside ``how.hooks.gate``,
    and recorded. The step's seconds."""
    work, log, hooks = req.work, how.log, how.hooks
    if fp is not None and st.up_to_date(work, step, fp):
        log(f"{tag}{step.name}: up to date, skipped")
        hooks.event(step, "skipped")
        return None
    disk_plan.check_step(step, need)  # the disk as it is now, before the step starts
    st.forget(work, step.name)
    gpu, device = how.gpu_choice() if step.gpu else (False, "cpu")  # gpu: this step runs on the GPU
    where = "container" if how.name == "docker" else "local process"
    with hooks.gate(step) as pinned:
        gpu_id = pinned if gpu else None  # the one GPU the step may see (None: all, or none)
        on = f", GPU {gpu_id}" if gpu_id is not None else ", GPU" if gpu else ""
        log(f"{tag}{step.name}: {step.tool} ({where}{on})")
        hooks.event(step, "started")
        t = time.monotonic()
        output = hooks.output(step)
        if how.name == "docker":
            containers.run(how.client, step, device=device, gpu=gpu, work=work, log=log, gpu_id=gpu_id, output=output)
        else:
            local.run(step, device=device, log=log, gpu_id=gpu_id, output=output)
        seconds = time.monotonic() - t
    st.record(work, step, seconds)
    log(f"{tag}{step.name}: done in {seconds:.1f} s")
    hooks.event(step, "finished", seconds)
    return seconds


def _dry_run(req, steps, runtime, gpu, device, force, running, findings, disk) -> dict:
    rows, sizes = [], {}
    for step in steps:
        if runtime == "docker":
            cmd = containers.describe(
                containers.spec(
                    step,
                    device=device,
                    gpu=gpu and step.gpu,
                    work=req.work,
                    token_file=Path("TOKEN-FILE") if step.token else None,
                )
            )
        else:
            cmd = local.describe(step, device)
        status = "forced" if step.name in force else ("will run" if step.name in running else "up to date")
        rows.append(
            {
                "step": step.name,
                "status": status,
                "command": cmd,
                "output": str(step.out),
                "expected_bytes": disk_plan.estimate(step, sizes),
            }
        )
    return {
        "dry_run": True,
        "runtime": runtime,
        "gpu": gpu,
        "steps": rows,
        **disk,
        "memory": memory_plan.plan(steps, sizes.get("specs"), gpu),
        "problems": [{"check": f.check, "problem": f.problem, "usage": f.usage} for f in findings],
    }


def summary(step: PlannedStep, seconds: float | None) -> dict:
    m = read_manifest(step.out) or {}
    row = {
        "step": step.name,
        "output": str(step.out),
        "files": len(m.get("outputs", [])),
        "bytes": sum(o["size"] for o in m.get("outputs", [])),
        "seconds": None if seconds is None else round(seconds, 1),
        "skipped": seconds is None,
        "figures": "",
        "published": "",
    }
    if m.get("files"):  # gguf-tool: validation per type
        row["figures"] = ", ".join(
            f"{q} top-1 {v['validation']['top1_agreement']:.3f}" for q, v in m["files"].items() if v.get("validation")
        )
    elif m.get("validation"):  # a quantized merge-tool format
        row["figures"] = f"top-1 {m['validation']['top1_agreement']:.3f}, KL {m['validation']['mean_kl']:.4f}"
    for target, sets in (m.get("published") or {}).items():
        where = [r.get("commit_url") or r.get("path") or r.get("model") for r in sets.values() if isinstance(r, dict)]
        row["published"] = f"{target}: " + ", ".join(w for w in where if w)
    return row
