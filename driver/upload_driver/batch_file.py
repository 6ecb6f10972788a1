"""A batch's sources: trainer output folders given on the command line, and TOML batch files.

A batch file holds shared defaults at its top (the keys of ``run``'s config, without ``trainer_output``
and ``work``, plus ``checkpoints``) and one ``[[run]]`` table per run, whose keys (``trainer_output``,
``name``, ``formats``, ``quants``, ``push``, ``checkpoints``, the ``[run.merge]``… tables) override the
defaults; paths are relative to the file's folder, as in a config file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from upload_common.errors import UsageError

from .config import KEYS, config_table, layer, local_path, read_toml

TOP_KEYS = frozenset((KEYS - {"trainer_output", "work"}) | {"checkpoints", "run"})
RUN_KEYS = frozenset((KEYS - {"work"}) | {"checkpoints"})


@dataclass(frozen=True)
class RunSource:
    """One run of a batch: where it was given (``origin``: the folder, or ``FILE [[run]] N``), its settings
    (config keys over the batch file's defaults, paths absolute) and its checkpoints as written (None:
    not said)."""

    origin: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    checkpoints: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


def read_sources(sources) -> tuple[RunSource, ...]:
    """Every run the sources name, in order; a source that is neither a folder nor a TOML file is refused."""
    runs: list[RunSource] = []
    for source in sources:
        path = local_path(source)
        if path.is_dir():
            runs.append(RunSource(str(path), {"trainer_output": Path(os.path.abspath(path))}))
        elif path.is_file() and path.suffix.lower() == ".toml":
            runs += batch_file(path)
        else:
            what = "is not a folder or a .toml batch file" if path.exists() else "does not exist"
            raise UsageError(f"{source} {what}: pass trainer output folders or TOML batch files", path=str(path))
    if not runs:
        raise UsageError("no runs: pass trainer output folders or TOML batch files with [[run]] tables")
    return tuple(runs)


def batch_file(path: Path) -> list[RunSource]:
    """The runs of one batch file, each table's keys checked and its paths made relative to the file."""
    data = read_toml(path)
    tables = data.pop("run", [])
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"batch file {path}: list the runs as [[run]] tables, each with trainer_output")
    defaults = config_table(data, path, keys=TOP_KEYS)
    runs = []
    for i, table in enumerate(tables, 1):
        where = f" [[run]] {i}"
        settings = config_table(table, path, keys=RUN_KEYS, where=where)
        if not settings.get("trainer_output"):
            raise UsageError(f"batch file {path}{where}: no trainer_output: name the run's trainer output folder")
        merged = layer(defaults, settings)
        checkpoints = merged.pop("checkpoints", None)
        runs.append(RunSource(f"{path}{where}", merged, None if checkpoints is None else _spec(checkpoints)))
    return runs


def _spec(value) -> str:
    """``checkpoints`` as written in a file: "all", "final", 30, or a list of those."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
