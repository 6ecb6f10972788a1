"""merge-tool's output formats: the rows of ``upload_common.sets`` whose tool is merge-tool. Adding
one = one module in this package plus one row there (docs/adding-a-format.md). Modules are
imported only when their format is used.

A format module defines (the types are the frozen records of ``merge_tool.job``):
- ``NEEDS_BASE``: whether the base model must be resolved first (equal to its row's ``needs_base``);
  the ``Job`` then has the ``base`` beside the ``adapter`` (a format made from the merge gets the
  merged ``model`` instead);
- ``plan(job: Job) -> Plan``: every check that can fail, before anything is written; the ``Plan``
  holds ``estimated_bytes``, ``decisions`` and ``warnings`` for the manifest and, in ``data``, what
  ``write`` needs (the format's own frozen record);
- ``write(plan: Plan, folder, progress) -> Written``: writes the model files into ``folder``, calls
  ``progress(nbytes)``, and returns the sha256 of what it hashed while writing (``hashes``, by
  relative path) and, for a quantized format, the ``quantization`` and ``validation`` reports the
  manifest records (``merge_tool.quantized`` makes them);
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

from ..job import Job, Plan, Written


@runtime_checkable
class Format(Protocol):
    """What merge-tool needs of a format module (above); ``CALIBRATION`` and ``LIBRARIES`` are optional."""

    NEEDS_BASE: bool

    def plan(self, job: Job) -> Plan: ...

    def write(self, plan: Plan, folder: Path, progress: Callable[[int], None]) -> Written: ...


FORMATS = {
    name: {"module": s.module, "summary": s.summary, "publish": s.publish.as_dict()}
    for name, s in sets_of("merge-tool").items()
}


def get_format(name: str) -> Format:
    key = (name or "").strip().lower()
    if key not in FORMATS:
        raise UsageError(f"unknown format {name!r}: choose one of {', '.join(sorted(FORMATS))}", format=name)
    return importlib.import_module(FORMATS[key]["module"])
