"""Find the adapter in a trainer's output folder and say what kind of run produced it.

Read-only: nothing is ever written, and ``training_args.bin`` (a pickle) is never opened. A file in a
folder that is read (the root, the chosen adapter's folder, the one trainer_state.json comes from) that
is a symbolic link leading outside the trainer folder is refused: it would be read and published as
if it were the trainer's (``../secret``, ``/etc/passwd``). Links that stay inside are followed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import InputNotFound, InvalidInput
from .remote_code import scan
from .safety import is_inside
from .st_io import read_header
from .trainer_kind import trainer_kind

ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS = (("adapter_model.safetensors", "safetensors"), ("adapter_model.bin", "pickle"))
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)
_TOKENIZER_CORE = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
FINAL_NAMES = ("final_model", "final", "adapter", "lora_model", "lora_adapter")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Keys any Trainer logs whatever the objective: a log with only these is plain language modelling.


def _read_json(path: Path, what: str, notes: list | None = None):
    """Parsed JSON; on a bad file raise InvalidInput, or (given ``notes``) note it and return None."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        msg = f"{what} {path} is not valid JSON ({' '.join(str(exc).split())})"
        if notes is None:
            raise InvalidInput(f"{msg}: fix or replace the file", path=str(path)) from None
        notes.append(f"{msg}: ignored")
        return None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _find_adapters(root: Path) -> list[dict]:
    found = []
    if (root / ADAPTER_CONFIG).is_file():
        m = _CHECKPOINT.match(root.name)
        found.append({"path": str(root), "source": "root", "step": int(m.group(1)) if m else None})
    for sub in _subdirs(root):
        if (sub / ADAPTER_CONFIG).is_file():
            m = _CHECKPOINT.match(sub.name)
            found.append(
                {"path": str(sub), "source": "checkpoint" if m else "subfolder", "step": int(m.group(1)) if m else None}
            )
    return found


def _no_adapter_message(root: Path) -> str:
    deeper = [
        p.parent.relative_to(root).as_posix()
        for sub in _subdirs(root)
        for p in sub.glob(f"*/{ADAPTER_CONFIG}")
        if not p.parent.name.startswith(".")
    ]
    todo = (
        f"adapters found deeper: {', '.join(sorted(deeper)[:5])}: pass one of those folders"
        if deeper
        else f"pass the folder that holds {ADAPTER_CONFIG} and adapter_model.safetensors"
    )
    return (
        f"no adapter found in {root}: looked for {ADAPTER_CONFIG} at the root, in its subfolders and in "
        f"checkpoint-N folders; {todo}"
    )


def _last_component(value: str) -> str:
    return re.split(r"[\\/]+", value.rstrip("\\/"))[-1]


def checkpoint_step(value) -> int | None:
    """The step of a checkpoint as trainer_state.json names it (``best_model_checkpoint``:
    "outputs/checkpoint-200", Windows separators too); None for anything else."""
    m = _CHECKPOINT.match(_last_component(value)) if isinstance(value, str) else None
    return int(m.group(1)) if m else None


def _choose(root: Path, candidates: list[dict], checkpoint: int | None, best: str | None, notes: list) -> dict:
    ckpts = {c["step"]: c for c in candidates if c["source"] == "checkpoint"}
    listing = ", ".join(str(s) for s in sorted(ckpts)) or "none"
    if checkpoint is not None:
        if checkpoint not in ckpts:
            raise InputNotFound(
                f"checkpoint-{checkpoint} not found in {root} (checkpoints with an adapter: "
                f"{listing}): pass one of those or leave the checkpoint out",
                path=str(root),
                checkpoint=checkpoint,
                available=sorted(ckpts),
            )
        return ckpts[checkpoint] | {"reason": f"checkpoint-{checkpoint} chosen explicitly"}
    if best:
        name, step = _last_component(best), checkpoint_step(best)
        if step in ckpts:
            return ckpts[step] | {
                "reason": f"{name} is the best checkpoint named in trainer_state.json (best_model_checkpoint)"
            }
        notes.append(f"best_model_checkpoint {best!r} has no adapter here: ignored")
    others = f" (checkpoints also present: {listing}; pick one with --checkpoint N)" if ckpts else ""
    for c in candidates:
        if c["source"] == "root":
            return c | {"reason": f"the final adapter at the root of the folder{others}"}
    subs = [c for c in candidates if c["source"] == "subfolder"]
    if subs:
        rank = {n: i for i, n in enumerate(FINAL_NAMES)}
        subs.sort(key=lambda c: (rank.get(Path(c["path"]).name, len(rank)), Path(c["path"]).name))
        names = [Path(c["path"]).name + "/" for c in subs]
        several = f"; other adapter subfolders: {', '.join(names[1:])}" if len(subs) > 1 else ""
        reason = f"no adapter at the root: the final adapter in subfolder {names[0]}{several}{others}"
        return subs[0] | {"reason": reason}
    top = max(ckpts)
    return ckpts[top] | {
        "reason": f"no final adapter: using the latest checkpoint, checkpoint-{top}"
        f"{f' (of {listing})' if len(ckpts) > 1 else ''}"
    }


def _check_weights(folder: Path) -> tuple[str, str]:
    for name, fmt in WEIGHTS:
        if (folder / name).is_file():
            if fmt == "safetensors":
                read_header(folder / name)  # an empty or truncated file fails here
            return name, fmt
    raise InvalidInput(
        f"config without weights: {folder} has {ADAPTER_CONFIG} but neither adapter_model.safetensors "
        "nor adapter_model.bin: the save was probably interrupted; pick another checkpoint or re-save",
        path=str(folder),
    )


def _template_of(value):
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict) and entry.get("name") == "default":
                return entry.get("template")
    return None


def _tokenizer(adapter_dir: Path, root: Path, notes: list) -> dict:
    folder = next((d for d in (adapter_dir, root) if any((d / f).is_file() for f in _TOKENIZER_CORE)), None)
    if folder is None:
        return {"dir": None, "files": [], "chat_template": None}
    files = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    template = None
    if "chat_template.jinja" in files:
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        if template is None and name in files:
            data = _read_json(folder / name, name, notes)
            template = _template_of(data.get("chat_template")) if isinstance(data, dict) else None
    return {"dir": str(folder), "files": files, "chat_template": template}


def chat_template(folder) -> str | None:
    """The chat template a model or adapter folder carries (chat_template.jinja, .json, or
    tokenizer_config.json), as transformers would find it."""
    return _tokenizer(Path(folder), Path(folder), [])["chat_template"]


def _summary(state: dict, source: Path) -> dict:
    log = [e for e in state.get("log_history") or [] if isinstance(e, dict)]
    losses = [[e.get("step"), e["loss"]] for e in log if isinstance(e.get("loss"), (int, float))]
    evals = [[e.get("step"), e["eval_loss"]] for e in log if isinstance(e.get("eval_loss"), (int, float))]
    runtime = [e["train_runtime"] for e in log if "train_runtime" in e]
    lrs = [e["learning_rate"] for e in log if "learning_rate" in e]
    keys = (
        "global_step",
        "max_steps",
        "epoch",
        "num_train_epochs",
        "train_batch_size",
        "best_metric",
        "best_model_checkpoint",
    )
    return {
        "source": str(source),
        **{k: state.get(k) for k in keys},
        "loss_history": losses,
        "eval_loss_history": evals,
        "final_loss": losses[-1][1] if losses else None,
        "train_runtime": runtime[-1] if runtime else None,
        "learning_rate_final": lrs[-1] if lrs else None,
    }


def _check_links(root: Path, folders) -> None:
    """Refuse a folder, or a file in one, that is a symbolic link leading outside ``root``."""
    for folder in folders:
        entries = [folder] + sorted(p for p in folder.iterdir() if p.is_symlink() and not p.is_dir())
        for entry in entries:
            if not is_inside(entry, root):
                rel = entry.relative_to(root).as_posix() if entry != root else entry.name
                raise InvalidInput(
                    f"{rel} in {root} is a symbolic link to {os.path.realpath(entry)}, outside the "
                    f"trainer folder: it would be read and published as the trainer's; replace the "
                    f"link with the file itself (or remove it) and rerun",
                    path=str(entry),
                )


def _code_notes(tokenizer: dict) -> list[str]:
    if not tokenizer["dir"]:
        return []
    return [
        f"{f.file} refers to custom {f.what} code ({f.describe()}): never run; merge-tool removes the reference"
        + (f", or refuses, as {', '.join(f.needs_code)} is defined only by that code" if f.needs_code else "")
        for f in scan(tokenizer["dir"])
        if f.file == "tokenizer_config.json"
    ]


def inspect_trainer_output(path, checkpoint: int | None = None) -> dict:
    """Describe an adapter folder or a whole trainer output folder (see the module docstring)."""
    root = _root_folder(path)
    notes: list[str] = []
    candidates = _find_adapters(root)
    if not candidates:
        raise InputNotFound(_no_adapter_message(root), path=str(root))
    steps = sorted(c["step"] for c in candidates if c["source"] == "checkpoint")
    states = _States(notes)
    latest = root / f"checkpoint-{steps[-1]}" if steps else None
    best_from = states.of(root) or states.of(latest)
    chosen = _choose(
        root, candidates, checkpoint, best_from[0].get("best_model_checkpoint") if best_from else None, notes
    )
    adapter_dir = Path(chosen["path"])
    _check_links(root, dict.fromkeys((root, adapter_dir, latest or root)))
    found = states.of(root) or states.of(adapter_dir) or states.of(latest)
    if found and found[1].parent != root:
        notes.append(f"trainer_state.json taken from {found[1].parent.name}/ (none at the root)")
    state, state_file = found if found else (None, None)
    config = _adapter_config(adapter_dir)
    weights, fmt = _check_weights(adapter_dir)
    notes += _file_notes(root, chosen, candidates, weights, fmt)
    tokenizer = _tokenizer(adapter_dir, root, notes)
    notes += _code_notes(tokenizer)
    trainer = trainer_kind(root, adapter_dir, state, lambda path, what: _read_json(path, what, notes))
    return {
        "root": str(root),
        "adapter": {**chosen, "weights": weights, "weights_format": fmt, "config": config},
        "candidates": candidates,
        "checkpoints": steps,
        "base_model": config.get("base_model_name_or_path"),
        "tokenizer": tokenizer,
        "trainer": trainer,
        "training": _summary(state, state_file) if state is not None else None,
        "notes": notes,
    }


def _root_folder(path) -> Path:
    root = Path(os.path.abspath(path))
    if not root.exists():
        raise InputNotFound(
            f"{root} does not exist: pass the trainer output folder or the adapter folder", path=str(root)
        )
    if not root.is_dir():
        raise InvalidInput(f"{root} is a file: pass the folder that holds {ADAPTER_CONFIG}", path=str(root))
    return root


class _States:
    """A folder's trainer_state.json as (data, file), read once; None when absent or not an object (a
    file that is not JSON noted in ``notes`` when first read)."""

    def __init__(self, notes: list[str]) -> None:
        self.notes, self.read = notes, {}

    def of(self, folder: Path | None) -> tuple[dict, Path] | None:
        if folder is None:
            return None
        if folder not in self.read:
            f = folder / "trainer_state.json"
            data = _read_json(f, "trainer_state.json", self.notes) if f.is_file() else None
            self.read[folder] = (data, f) if isinstance(data, dict) else None
        return self.read[folder]


def _adapter_config(adapter_dir: Path) -> dict:
    config = _read_json(adapter_dir / ADAPTER_CONFIG, ADAPTER_CONFIG)
    if not isinstance(config, dict):
        raise InvalidInput(
            f"{adapter_dir / ADAPTER_CONFIG} holds a {type(config).__name__}, not an object: fix or replace the file",
            path=str(adapter_dir),
        )
    return config


def _file_notes(root: Path, chosen: dict, candidates: list[dict], weights: str, fmt: str) -> list[str]:
    """What the user may expect to be used and is not: pickled weights, other adapters without weights,
    training_args.bin."""
    adapter_dir, notes = Path(chosen["path"]), []
    if fmt == "pickle":
        notes.append(f"the adapter weights are a pickle ({weights}): not read here")
    for c in candidates:
        if c["path"] != chosen["path"] and not any((Path(c["path"]) / n).is_file() for n, _ in WEIGHTS):
            notes.append(f"{Path(c['path']).name}/ has {ADAPTER_CONFIG} but no weights")
    for folder in dict.fromkeys((root, adapter_dir)):
        if (folder / "training_args.bin").is_file():
            notes.append(f"training_args.bin present in {folder.name}/: not read (pickle)")
    return notes
