"""One step, in the contract's order (docs/contract.md), for every tool.

A tool's core checks its arguments, describes its inputs, then::

    with Step(TOOL, out, inputs=inputs, params=params, overwrite=overwrite, libraries=(...), log=log) as s:
        s.reserve(estimated_bytes)        # the disk check, before anything is written
        ... write into s.folder ...       # the partial folder, made on first use
        s.outputs(hashes)                 # sha256 computed while writing, so files are not read twice
    return s.manifest

The Step refuses an existing output (unless ``overwrite``), starts the manifest, checks free space
for the estimate the tool gives, works in ``<out>.partial/``, records library versions, timings and
warnings, writes the manifest last and renames the folder. A failure after the partial folder was
made leaves only ``error.json`` there; a failure before leaves nothing at all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .contract import (
    FINGERPRINT_ONLY,
    atomic_output,
    check_free_space,
    check_output_free,
    finish_manifest,
    library_versions,
    new_manifest,
    step_fingerprint,
)


class Fingerprinted(Exception):  # not an error: how a step ends when only its key is asked for
    """The step stopped where its Step began because only its fingerprint was asked for
    (``only_fingerprint``): it has checked its arguments and described its inputs, and written nothing."""

    def __init__(self, fingerprint: str):
        super().__init__(fingerprint)
        self.fingerprint = fingerprint


@contextlib.contextmanager
def only_fingerprint(on: bool = True) -> Iterator[None]:
    """Within the block, entering a Step raises Fingerprinted with the step's fingerprint instead of
    doing the step: how a driver asks a tool for the key it compares with a done step's manifest."""
    token = FINGERPRINT_ONLY.set(on)
    try:
        yield
    finally:
        FINGERPRINT_ONLY.reset(token)


@dataclass(frozen=True)
class OutputFile:
    """One file of a finished step, as its manifest lists it."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Produced:
    """What a finished step left: its folder, the files its manifest lists, and its warnings."""

    out: Path
    files: tuple[OutputFile, ...]
    warnings: tuple[str, ...] = field(default=())


class Step:
    """The step sequence as one context manager (see the module's docstring)."""

    def __init__(
        self,
        tool: str,
        out,
        *,
        inputs: dict,
        params: dict,
        overwrite: bool = False,
        libraries: Iterable[str] = (),
        log: Callable[[str], None] = lambda m: None,
        began: float | None = None,
    ):
        """``libraries``: whose versions the manifest records; ``began``: ``time.monotonic()`` when the
        tool started, if before the Step (its total time then counts the argument checks and hashing)."""
        self.tool, self.out, self.overwrite = tool, Path(out), overwrite
        self._inputs, self._params, self._libraries, self._log = inputs, params, tuple(libraries), log
        self._began = time.monotonic() if began is None else began
        self._stack = contextlib.ExitStack()
        self._folder: Path | None = None
        self._hashes: dict[str, str] = {}
        self.manifest: dict = {}
        self.produced: Produced | None = None

    def __enter__(self) -> Step:
        if FINGERPRINT_ONLY.get():
            raise Fingerprinted(step_fingerprint(self.tool, __version__, self._inputs, self._params))
        check_output_free(self.out, self.overwrite)
        self.manifest = new_manifest(self.tool, inputs=self._inputs, parameters=self._params)
        return self

    @property
    def warnings(self) -> list[str]:
        """The manifest's warnings (a list a tool's helpers may append to)."""
        return self.manifest["warnings"]

    def reserve(self, need: int) -> dict:
        """Refuse now when the output's disk lacks ``need`` bytes; the figures go in decisions.disk."""
        if self._folder is not None:
            raise RuntimeError("Step.reserve comes before anything is written")
        disk = check_free_space(self.out, need)
        self.manifest["decisions"]["disk"] = disk
        return disk

    @property
    def folder(self) -> Path:
        """The partial folder to write into, made on first use (after the disk check)."""
        if self._folder is None:
            self._folder = self._stack.enter_context(atomic_output(self.out, overwrite=self.overwrite))
        return self._folder

    def begin(self) -> Path:
        """Make the partial folder now (a step that writes nothing but its manifest, so that its failure
        leaves error.json)."""
        return self.folder

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Seconds spent in the block, recorded under timings.seconds[key] when it succeeds."""
        t = time.monotonic()
        yield
        self.manifest["timings"]["seconds"][key] = round(time.monotonic() - t, 3)

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def outputs(self, hashes: Mapping[str, str]) -> None:
        """sha256 of files (path relative to the folder) computed while they were written."""
        self._hashes.update(hashes)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:  # the partial folder (if made) keeps only error.json
            return bool(self._stack.__exit__(exc_type, exc, tb))
        with self._stack:
            self.manifest["versions"] = library_versions(*self._libraries)
            finish_manifest(self.manifest, self.folder, self._hashes, self._began)
        self.produced = Produced(
            self.out,
            tuple(OutputFile(o["path"], o["size"], o["sha256"]) for o in self.manifest["outputs"]),
            tuple(self.warnings),
        )
        for w in self.warnings:
            self._log(f"WARNING: {w}")
        return False
