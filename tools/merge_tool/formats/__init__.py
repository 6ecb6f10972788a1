"""merge-tool's output formats: the rows of ``upload_common.sets`` whose tool is merge-tool. Adding
one = one module in this package plus one row there (docs/adding-a-format.md). Modules are
imported only when their format is used.

A format module defines:
- ``NEEDS_BASE``: whether the base model must be resolved first (equal to its row's ``needs_base``);
- ``plan(job) -> dict``: every check that can fail, before anything is written; returns at least
  ``estimated_bytes``, ``decisions`` and ``warnings``;
- ``write(plan, folder, progress) -> dict``: writes the model files into ``folder`` and returns
  ``{relative path: sha256}`` for what it hashed while writing; it may leave ``plan["report"]``
  with ``quantization`` and ``validation`` entries for the manifest (``merge_tool.quantized`` does);
- optionally ``CALIBRATION = True`` (equal to its row's ``calibration``: the driver then passes its
  calibration source as ``--calibration``) and ``LIBRARIES`` (package names whose versions the
  manifest records).

``FORMATS`` gives each format's row as a dict: ``module``, ``summary`` and ``publish`` (how
docs-tool and hf-push-tool present the format; ``upload_common.sets.Publish``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from upload_common.errors import UsageError
from upload_common.sets import sets_of


@runtime_checkable
class Format(Protocol):
    """What merge-tool needs of a format module (above); ``CALIBRATION`` and ``LIBRARIES`` are optional."""

    NEEDS_BASE: bool

    def plan(self, job: dict) -> dict: ...

    def write(self, plan: dict, folder: Path, progress: Callable[[int], None]) -> dict: ...


FORMATS = {
    name: {"module": s.module, "summary": s.summary, "publish": s.publish.as_dict()}
    for name, s in sets_of("merge-tool").items()
}


def get_format(name: str) -> Format:
    key = (name or "").strip().lower()
    if key not in FORMATS:
        raise UsageError(f"unknown format {name!r}: choose one of {', '.join(sorted(FORMATS))}", format=name)
    return importlib.import_module(FORMATS[key]["module"])
