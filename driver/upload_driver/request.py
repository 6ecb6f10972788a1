"""What a run is asked to do: the record ``config.request`` builds (options over a config file over
defaults) and the plan, the preflight checks and the run read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

SECTIONS = ("merge", "gguf", "docs", "publish")


@dataclass(frozen=True)
class Request:
    """The trainer output and the work folder (absolute once ``config.request`` made them), the sets
    asked for, the GGUF types, the publish targets (``hf:ORG/NAME``, ``local:DIR``, ``ollama[:NAME]``),
    the runtime and GPU choices, the model name, and each config table as read (``merge``: base,
    checkpoint, dtype, max_shard_size, calibration, allow_pickle, engine; ``gguf``: imatrix, calibration, eval_text,
    split_max_size, validate_tokens, min_top1 ({type: bar}); ``docs``: license, license_link, base_model,
    datasets, language, system, ollama_quant, repos; ``publish``: private, ollama_push)."""

    trainer_output: Path
    work: Path
    formats: tuple[str, ...] = ()
    quants: tuple[str, ...] = ()
    push: tuple[str, ...] = ()
    runtime: str = "auto"
    gpus: str = "auto"
    name: str | None = None
    merge: Mapping[str, Any] = field(default_factory=dict)
    gguf: Mapping[str, Any] = field(default_factory=dict)
    docs: Mapping[str, Any] = field(default_factory=dict)
    publish: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):  # read-only: paths as Paths, lists as tuples, tables as read-only mappings
        for key in ("trainer_output", "work"):
            object.__setattr__(self, key, Path(getattr(self, key)))
        for key in ("formats", "quants", "push"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        for key in SECTIONS:
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key) or {})))
