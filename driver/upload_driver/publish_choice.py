"""``upload-driver batch --publish best|final|N``: measure every checkpoint, then export one in full.

First each (run, checkpoint) of the batch gets the quick export of a checkpoint sweep (``QUICK``: its
adapter merged into one Q8_0 GGUF, validated on the run's text against the 16-bit GGUF; nothing else
made, nothing published) in ``WORK/<run>/sweep/<checkpoint>/``. Then the sweep's figures choose one
checkpoint per run (``best``: the lowest perplexity of the 16-bit GGUF on the validation text, the
model's own score on it; ``final`` or a step: that one), and only that unit runs the run's whole plan
(its formats, types and publish targets) in ``WORK/<run>/<checkpoint>/``, as ``--checkpoints N`` would.
Every unit of both phases is checked before the first step; a rerun skips both."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from upload_common.errors import UsageError

from . import sweep
from .batch import Unit
from .config import layer, request
from .run import Prepared

QUICK = {"formats": ["gguf"], "quants": ["Q8_0"], "push": []}


def sweep_unit(u: Unit, work: Path) -> Unit:
    """The quick export of ``u``'s checkpoint, in its own folder (the full export keeps its own)."""
    kwargs = {
        **u.kwargs,
        "settings": layer(dict(u.kwargs["settings"]), QUICK),
        "work": str(work / u.run / "sweep" / u.checkpoint),
    }
    return Unit(u.run, u.checkpoint, request(**kwargs), kwargs, stage="sweep")


def wanted(spec: str) -> str:
    """``best``, ``final`` or ``checkpoint-N`` from what ``--publish`` was given."""
    text = str(spec).strip().lower()
    if text in ("best", "final"):
        return text
    step = text.removeprefix("checkpoint-")
    if step.isdigit():
        return f"checkpoint-{int(step)}"
    raise UsageError(f"--publish {spec}: choose best, final or a checkpoint's step, e.g. --publish 200")


def sweep_then_publish(
    todo: Sequence[Unit],
    spec: str,
    work: Path,
    *,
    check: Callable[[Sequence[Unit]], list[Prepared]],
    execute: Callable[[Sequence[Unit], Sequence[Prepared]], dict],
    log: Callable[[str], None],
) -> dict:
    """The sweep of every unit, the choice per run, the chosen units' full exports: one batch result
    (both phases' units, the sweep tables, ``chosen``: {run: {checkpoint, why}})."""
    choice = wanted(spec)
    runs: dict[str, list[Unit]] = {}
    for u in todo:
        runs.setdefault(u.run, []).append(u)
    if choice != "best":
        for run, candidates in runs.items():
            if not any(u.checkpoint == choice for u in candidates):
                have = ", ".join(u.checkpoint for u in candidates)
                raise UsageError(f"--publish {spec}: run {run} exports no {choice} ({have}): add it to --checkpoints")
    quick = [sweep_unit(u, work) for u in todo]
    prepared = check([*quick, *todo])  # both phases checked before the first step
    first = execute(quick, prepared[: len(quick)])
    done = {(u["run"], u["checkpoint"]): u for u in first["units"]}
    chosen, failures = {}, []
    for run, candidates in runs.items():
        picked, why = _choose(candidates, done, choice, spec)
        if picked is None:
            failures.append(f"{run}: {why}: nothing exported in full")
            log(f"{run}: {why}: nothing exported in full")
            continue
        chosen[run] = (picked, why)
        log(f"{run}: {picked.checkpoint} chosen for the full export ({why})")
    full = [u for u, _ in chosen.values()]
    later = execute(full, [prepared[len(quick) + todo.index(u)] for u in full]) if full else None
    result = dict(later or first)
    result.update(
        units=first["units"] + (later["units"] if later else []),
        failed=first["failed"] + failures + (later["failed"] if later else []),
        seconds=round(first["seconds"] + (later["seconds"] if later else 0.0), 3),
        sweep=first["sweep"],
        chosen={run: {"checkpoint": u.checkpoint, "why": why} for run, (u, why) in chosen.items()},
    )
    return result


def _choose(candidates: list[Unit], done: dict, choice: str, spec: str) -> tuple[Unit | None, str]:
    """(the unit to export in full, why), or (None, why not)."""
    if choice != "best":
        return next(u for u in candidates if u.checkpoint == choice), f"--publish {spec}"
    scored = []
    for u in candidates:
        measured = done.get((u.run, u.checkpoint)) or {}
        if measured.get("status") == "done":
            figures = sweep.gguf_figures(Path(measured["work"]) / "artifacts" / "gguf")
            if figures["perplexity_16bit"] is not None:
                scored.append((figures["perplexity_16bit"], u))
    if not scored:
        return None, "no checkpoint was measured (every sweep export failed)"
    perplexity, best = min(scored, key=lambda pair: pair[0])
    return best, f"the lowest 16-bit perplexity on the validation text, {perplexity:.3f}, of {len(scored)} measured"
