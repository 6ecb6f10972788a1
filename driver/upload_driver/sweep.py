"""The checkpoint sweep: for each run of a batch exported at checkpoint-N units, one row per checkpoint
with its training figures (train and eval loss from the checkpoint's ``trainer_state.json``, as the
trainer logged them up to that step) and its export's figures on the validation text (from the gguf
step's manifest: the 16-bit GGUF's perplexity, and each quantized type's mean KL against it). And the
checkpoint the trainer itself found best (``--checkpoints best``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from upload_common.contract import read_manifest
from upload_common.errors import UsageError
from upload_common.trainer_output import checkpoint_step


def tables(done: list[dict], checkpoint_folders: dict[tuple[str, str], Path]) -> dict[str, list[dict]]:
    """{run: rows} for each run with checkpoint-N units (``done``: the batch's units;
    ``checkpoint_folders``: each unit's (run, checkpoint) to its checkpoint-N folder in the trainer output)."""
    out: dict[str, list[dict]] = {}
    for u in done:
        folder = checkpoint_folders.get((u["run"], u["checkpoint"]))
        if folder is not None:
            out.setdefault(u["run"], []).append(row(folder, Path(u["work"])))
    return {run: sorted(rows, key=lambda r: r["step"]) for run, rows in out.items()}


def row(checkpoint: Path, work: Path) -> dict:
    """One checkpoint: step, losses, and the validation figures of its GGUF files (None where absent)."""
    step = int(checkpoint.name.rpartition("-")[2])
    history = _history(checkpoint / "trainer_state.json", step)
    return {
        "step": step,
        "train_loss": _last(history, "loss"),
        "eval_loss": _last(history, "eval_loss"),
        **gguf_figures(work / "artifacts" / "gguf"),
    }


def _history(path: Path, step: int) -> list[dict]:
    """The log entries up to ``step`` (a checkpoint's own file holds no later ones; a shared one may)."""
    return [e for e in _log(_state(path)) if e["step"] <= step]


STATE_LIMIT = 64 << 20  # a trainer_state.json holds a log line per logging step: megabytes at most


def _state(path: Path) -> dict:
    """A trainer_state.json as a dict (untrusted: anything else, no file, a link, a device or pipe, or a
    file beyond ``STATE_LIMIT``, is an empty one)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > STATE_LIMIT:
            return {}
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _log(state: dict) -> list[dict]:
    log = state.get("log_history")
    return [e for e in log if isinstance(e, dict) and isinstance(e.get("step"), int)] if isinstance(log, list) else []


def trainer_best(root: Path, have: list[int], origin: str) -> tuple[int, str]:
    """(step, why) of the checkpoint the trainer found best: its ``best_model_checkpoint`` (what
    ``metric_for_best_model`` chose), else the lowest eval loss logged at a checkpoint's own step, from the
    run's trainer_state.json or the newest checkpoint's."""
    states = [_state(root / "trainer_state.json")]
    states += [_state(root / f"checkpoint-{n}" / "trainer_state.json") for n in sorted(have, reverse=True)]
    for state in states:
        step = checkpoint_step(state.get("best_model_checkpoint"))
        if step in have:
            return step, "the trainer's best_model_checkpoint"
    losses: dict[int, float] = {}
    for state in reversed(states):  # the run's own file, read last, wins
        for e in _log(state):
            loss = e.get("eval_loss")
            if e["step"] in have and _number(loss):
                losses[e["step"]] = float(loss)
    if losses:
        step = min(losses, key=lambda n: (losses[n], n))
        return step, f"the lowest eval loss the trainer logged at a checkpoint ({losses[step]:.4f})"
    raise UsageError(
        f"{origin}: checkpoints best: trainer_state.json names no best checkpoint and logs no eval loss at a "
        f"checkpoint's step: choose steps ({', '.join(map(str, have)) or 'none'}), or measure them all with "
        "--checkpoints all --publish best"
    )


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _last(history: list[dict], key: str) -> float | None:
    values = [e[key] for e in history if isinstance(e.get(key), int | float)]
    return values[-1] if values else None


def gguf_figures(folder: Path) -> dict:
    """The 16-bit GGUF's perplexity on the validation text (the file's figures when it is kept, else the
    reference's record of it) and each other type's mean KL against it."""
    m = read_manifest(folder) or {}
    files = m.get("files") or {}
    intermediate = ((m.get("decisions") or {}).get("reference") or {}).get("intermediate") or {}
    sixteen = intermediate.get("quant") or next((q for q in ("F16", "BF16", "F32") if q in files), None)
    figures = intermediate.get("validation") or (files.get(sixteen) or {}).get("validation") or {}
    kl = {
        q: (info.get("validation") or {}).get("mean_kl")
        for q, info in files.items()
        if q not in (sixteen, "LoRA") and isinstance(info, dict)
    }
    return {"perplexity_16bit": figures.get("perplexity"), "mean_kl": kl}


def lines(run: str, rows: list[dict]) -> list[str]:
    """The run's sweep as text lines: step, train loss, eval loss, 16-bit perplexity, each type's mean KL."""
    quants = sorted({q for r in rows for q in r["mean_kl"]})
    head = ["step", "train loss", "eval loss", "perplexity (16-bit)", *(f"{q} mean KL" for q in quants)]
    body = [
        [
            str(r["step"]),
            _fmt(r["train_loss"], ".4f"),
            _fmt(r["eval_loss"], ".4f"),
            _fmt(r["perplexity_16bit"], ".3f"),
            *(_fmt(r["mean_kl"].get(q), ".5f") for q in quants),
        ]
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    text = [f"checkpoint sweep of {run}:"]
    for cells in (head, *body):
        text.append("  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return text


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
