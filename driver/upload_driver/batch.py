"""``upload-driver batch``: many exports at once on this machine.

Each (run, checkpoint) is a unit with exactly the request ``upload-driver run`` would make for it
(``--checkpoint N`` for a checkpoint) and its own work folder, ``WORK/<run name>/<final|checkpoint-N>/``.
Every unit is prepared and checked before the first step (``run.prepare``: plan, runtime, what is up
to date, preflight); then the local engine runs the units in a pool of ``--max-parallel`` threads, each
unit's steps in their order through ``run.perform`` (its work lock, its content-addressed skipping), with
at most one GPU-marked step per GPU at a time, each pinned to its GPU (``gpu_slots``)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upload_common.cli import log as default_log
from upload_common.errors import UploadError, UsageError, from_os_error
from upload_common.trainer_output import inspect_trainer_output

from . import sweep
from .batch_file import RunSource, read_sources
from .config import layer, request
from .gpu_slots import GpuSlots, visible_gpus
from .lock import hold
from .plan import naming
from .request import Request
from .run import Hooks, Prepared, gpu_chooser, perform, prepare, step_log

DEFAULT_WORK = "batch-work"
STATUS = {"finished": "done"}  # a step's end as the batch's rows say it (the engines and run say "finished")


@dataclass(frozen=True)
class Unit:
    """One (run, checkpoint) of the batch: the run's name, ``final`` or ``checkpoint-N``, its request, and
    the JSON-able keyword arguments ``config.request`` made it from (what a Ray task plans it again from)."""

    run: str
    checkpoint: str
    req: Request
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    stage: str = ""  # "sweep": the quick export that measures a checkpoint for --publish (publish_choice)

    @property
    def label(self) -> str:
        return f"{self.run}/{self.checkpoint}" + (f"/{self.stage}" if self.stage else "")


def work_folder(work) -> Path:
    return Path(os.path.abspath(work or DEFAULT_WORK))


def default_parallel() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


def units(sources: Sequence[str], *, checkpoints: str | None, config, work, log=None, choose=False) -> tuple[Unit, ...]:
    """Every (run, checkpoint) the sources name; each run's name must be its own, and no two units may
    publish to the same place unless (``choose``: ``--publish``) one per run will be chosen, from every
    checkpoint-N when neither the options nor the source say which."""
    work = work_folder(work)
    found: list[Unit] = []
    for source in read_sources(sources):
        found += _run_units(source, checkpoints, config, work, log or _quiet, choose)
    _distinct(found, not choose)
    return tuple(found)


def _run_units(source: RunSource, checkpoints: str | None, config, work: Path, log, choose: bool) -> list[Unit]:
    base = request(config=config, settings=dict(source.settings), work=str(work))
    if not base.trainer_output.is_dir():
        raise UsageError(f"{source.origin}: trainer output {base.trainer_output} does not exist: fix the path")
    name = naming(base)[0]
    try:
        have = inspect_trainer_output(base.trainer_output)["checkpoints"]
    except UploadError as exc:
        raise type(exc)(f"{source.origin}: {exc.message}") from None
    pinned = base.merge.get("checkpoint")
    default = str(pinned) if pinned else "all" if choose and have else "final"
    steps = _checkpoints(checkpoints or source.checkpoints or default, have, source.origin)
    if "best" in steps:
        best, why = sweep.trainer_best(base.trainer_output, have, source.origin)
        steps = [best if s == "best" else s for s in steps]
        log(f"{name}: checkpoint-{best} is the best: {why}")
    out = []
    for step in dict.fromkeys(s or base.merge.get("checkpoint") for s in steps):  # final: what run would pick
        settings = layer(dict(source.settings), {"merge": {"checkpoint": step}} if step else {})
        folder = f"checkpoint-{step}" if step else "final"
        kwargs = {"config": config and os.path.abspath(config), "settings": settings, "work": str(work / name / folder)}
        out.append(Unit(name, folder, request(**kwargs), _jsonable(kwargs)))
    return out


def _jsonable(value):
    """Settings as JSON holds them: paths as text, tables as dicts, lists as lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _checkpoints(spec: str, have: list[int], origin: str) -> list[int | str | None]:
    """``final`` (None: the adapter ``run`` chooses), ``all`` (every checkpoint-N), ``best`` (the one the
    trainer found best, ``sweep.trainer_best``) or steps, comma-separated."""
    chosen: list[int | str | None] = []
    listing = ", ".join(map(str, have)) or "none"
    for token in (t.strip().lower() for t in str(spec).split(",") if t.strip()):
        if token == "final":
            chosen.append(None)
        elif token == "best" and have:
            chosen.append("best")
        elif token == "all" and have:
            chosen += have
        elif token.isdigit() and int(token) in have:
            chosen.append(int(token))
        else:
            raise UsageError(
                f"{origin}: checkpoints {token!r}: choose final, all, best or steps of its checkpoint-N "
                f"folders ({listing})"
            )
    if not chosen:
        raise UsageError(f"{origin}: checkpoints {spec!r}: choose final, all or steps such as 10,20")
    return list(dict.fromkeys(chosen))


def _distinct(found: Sequence[Unit], one_each: bool = True) -> None:
    """Runs never share a step folder (one name per run, one unit per checkpoint) nor (``one_each``: every
    unit is run, none chosen) a publish target."""
    roots: dict[str, Path] = {}
    labels: set[str] = set()
    targets: dict[tuple, str] = {}
    for u in found:
        root = roots.setdefault(u.run, u.req.trainer_output)
        if root != u.req.trainer_output or u.label in labels:  # another folder, or the same run twice
            raise UsageError(
                f"two runs are named {u.run} ({root} and {u.req.trainer_output}): "
                "give each its own name (name = ... in a batch file)"
            )
        labels.add(u.label)
        for target in u.req.push if one_each else ():
            other = targets.setdefault((target, u.run), u.label)
            if other != u.label:
                raise UsageError(
                    f"{other} and {u.label} would both publish to {target}: publish one checkpoint per run "
                    "(--checkpoints N), or give the runs their own names"
                )


def check(todo: Sequence[Unit], *, max_parallel: int) -> list[Prepared]:
    """Every unit prepared and checked, nothing written; one line naming each unit that cannot start."""

    def one(u: Unit):
        try:
            return prepare(u.req, log=_quiet)
        except UploadError as exc:
            return exc

    with ThreadPoolExecutor(max_parallel) as pool:
        prepared = list(pool.map(one, todo))
    problems = []  # (unit, why, a usage error)
    for u, p in zip(todo, prepared, strict=True):
        if isinstance(p, UploadError):
            problems.append((u.label, p.message, isinstance(p, UsageError)))
        else:
            problems += [(u.label, f.problem, f.usage) for f in p.findings]
    if problems:
        cls = UsageError if any(usage for *_, usage in problems) else UploadError
        text = "; ".join(f"{label}: {why}" for label, why, _ in problems)
        raise cls(f"cannot start the batch, nothing was run: {text}", problems=[f"{a}: {b}" for a, b, _ in problems])
    return prepared


def _quiet(message: str) -> None:
    """A unit's own driver lines (its plan, its runtime): the batch says one line per step event instead."""


class _GpuChoices:
    """The GPU probed once per (runtime, --gpus) for the whole batch, whichever unit needs it first."""

    def __init__(self, log):
        self.lock, self.known, self.log = threading.Lock(), {}, log

    def for_unit(self, prep: Prepared):
        decided: list = []

        def choice():
            with self.lock:
                key = (prep.runtime, prep.req.gpus)
                if key not in self.known:
                    probe, answer = gpu_chooser(prep, self.log)
                    probe()
                    self.known[key] = tuple(answer)
                if not decided:
                    decided.extend(self.known[key])
            return decided[0], decided[1]

        return choice, decided


def execute(todo: Sequence[Unit], prepared: Sequence[Prepared], *, work, max_parallel: int, log=default_log) -> dict:
    """Run the checked units on this machine, ``max_parallel`` at once; the batch holds WORK's lock."""
    work = work_folder(work)
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            log(line)

    for why in dict.fromkeys(p.why for p in prepared):
        say(f"runtime: {why}")
    gpus, slots = _GpuChoices(say), GpuSlots(visible_gpus())
    t0 = time.monotonic()
    with hold(work, "batch"), ThreadPoolExecutor(max_parallel) as pool:
        done = list(pool.map(lambda up: _unit(*up, gpus, slots, say), zip(todo, prepared, strict=True)))
    return {
        "engine": "local",
        "work": str(work),
        "max_parallel": max_parallel,
        "gpu_slots": slots.count,
        "seconds": round(time.monotonic() - t0, 3),
        "units": done,
        "failed": [u["error"] for u in done if u["error"]],
        "sweep": sweep_tables(todo, done),
    }


def sweep_tables(todo: Sequence[Unit], done: list[dict]) -> dict:
    """The checkpoint sweep of the units run at their checkpoint-N folders (``sweep.tables``)."""
    checkpoints = {(u.run, u.checkpoint): u.req.trainer_output / u.checkpoint for u in todo if u.checkpoint != "final"}
    return sweep.tables(done, checkpoints)


def _unit(u: Unit, prep: Prepared, gpus: _GpuChoices, slots: GpuSlots, say) -> dict:
    """One unit's steps through ``run.perform``, each event one line; a failure ends the unit, not the batch."""
    rows = {s.name: {"step": s.name, "seconds": None, "status": "not run"} for s in prep.steps}
    current: dict = {}

    def event(step, what, seconds=None):
        current["since"] = time.monotonic()
        rows[step.name].update(status=STATUS.get(what, what), seconds=seconds and round(seconds, 1))
        say(f"{u.label} {step.name}: {f'finished in {seconds:.1f} s' if what == 'finished' else what}")

    def gate(step):
        return slots.take() if step.gpu else contextlib.nullcontext()

    choice, decided = gpus.for_unit(prep)
    error = None
    try:
        hooks = Hooks(gate=gate, event=event, output=lambda step: step_log(prep.req.work, step))
        perform(prep, choice, decided, _quiet, hooks)
    except (UploadError, OSError) as exc:
        known = exc if isinstance(exc, UploadError) else from_os_error(exc)
        if known is None:
            raise
        name = next((r["step"] for r in rows.values() if r["status"] in ("started", "not run")), "-")
        if name in rows:  # the step that was running, or the one that was about to
            took = time.monotonic() - current["since"] if rows[name]["status"] == "started" else None
            rows[name].update(status="failed", seconds=took and round(took, 1))
        error = f"{u.label} {name}: {known.message}"
        say(f"{u.label} {name}: failed: {known.message}")
    return unit_result(u, list(rows.values()), error)


def unit_result(u: Unit, rows: list[dict], error: str | None) -> dict:
    """A unit's part of the batch's result: its rows, and its first failure's line (None: done)."""
    return {
        "run": u.run,
        "checkpoint": u.checkpoint,
        "stage": u.stage or "export",
        "work": str(u.req.work),
        "logs": str(u.req.work / "logs"),  # each step's messages, <step>.log
        "status": "failed" if error else "done",
        "error": error,
        "steps": rows,
    }


def run_batch(
    sources,
    *,
    checkpoints=None,
    publish=None,
    config=None,
    max_parallel=None,
    work=None,
    engine="local",
    address=None,
    log=default_log,
) -> dict:
    """``upload-driver batch``: the units, all checked, then run on this machine or (``engine`` ray) on
    the Ray cluster at ``address``; with ``publish`` (best, final or a step), each run's checkpoints
    measured first and only the chosen one exported in full (``publish_choice``)."""
    parallel = max_parallel or default_parallel()
    if engine == "ray":
        from . import ray_engine

        ray_engine.connect(address)  # Ray installed, a cluster answering: before the units are checked
    todo = units(sources, checkpoints=checkpoints, config=config, work=work, log=log, choose=publish is not None)

    def execute_on(chosen: Sequence[Unit], prepared: Sequence[Prepared]) -> dict:
        if engine == "ray":
            from . import batch_ray

            return batch_ray.execute(chosen, prepared, work=work, address=address, log=log)
        return execute(chosen, prepared, work=work, max_parallel=parallel, log=log)

    if publish is not None:
        from .publish_choice import sweep_then_publish

        return sweep_then_publish(
            todo,
            publish,
            work_folder(work),
            check=lambda u: check(u, max_parallel=parallel),
            execute=execute_on,
            log=log,
        )
    return execute_on(todo, check(todo, max_parallel=parallel))


def print_summary(result: dict) -> None:
    """The table on stdout: one row per step of each unit (run, checkpoint, step, seconds, status)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    failed = len(result["failed"])
    table = Table(
        title=f"upload-driver batch: {len(result['units'])} unit(s), {failed} failed, "
        f"{result['seconds']:.1f} s, in {result['work']}"
    )
    nodes = result["engine"] == "ray"  # where each step ran
    for col in ("run", "checkpoint", "step", *(("node",) if nodes else ()), "seconds", "status"):
        table.add_column(col, overflow="fold")
    for u in result["units"]:
        checkpoint = u["checkpoint"] + (f" ({u['stage']})" if u["stage"] != "export" else "")
        for r in u["steps"]:
            took = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            node = (r["node"][:12],) if nodes else ()
            table.add_row(u["run"], checkpoint, r["step"], *node, took, r["status"])
    Console(file=sys.stdout, soft_wrap=False).print(table)
    for run, rows in result["sweep"].items():
        print("\n".join(sweep.lines(run, rows)), file=sys.stdout)
    for run, chosen in result.get("chosen", {}).items():
        print(f"{run}: {chosen['checkpoint']} exported in full ({chosen['why']})", file=sys.stdout)
