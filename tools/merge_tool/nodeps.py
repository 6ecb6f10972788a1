"""Packages merge-tool's extras need but pip cannot resolve with the project's pins (llm-compressor
pins an older transformers): listed in ``nodeps.txt`` beside this module, installed by
``merge-tool setup`` with ``pip install --no-deps``, exactly pinned. This module is the one reader
of that file: the Makefile, the images and the wheelhouse script ask ``merge-tool setup --print``."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from upload_common.errors import RetryableError

FILE = Path(__file__).with_name("nodeps.txt")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Entry:
    extra: str
    requirement: str  # name==version
    without: str  # the declared requirement it is installed without, e.g. transformers<=5.17
    title: str  # the project's name as people say it

    @property
    def name(self) -> str:
        return self.requirement.partition("==")[0]

    @property
    def version(self) -> str:
        return self.requirement.partition("==")[2]

    def installed(self) -> bool:
        try:
            return version(self.name) == self.version
        except PackageNotFoundError:
            return False


def entries(extras: list[str] | None = None) -> list[Entry]:
    """The file's entries, for the extras named (comma-separated names allowed), else all of them."""
    found = []
    for n, line in enumerate(FILE.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            fields = line.split()
            if len(fields) != 4 or not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", fields[1]):
                raise ValueError(f"{FILE}:{n}: want '<extra> <name>==<version> <requirement> <title>', got {line!r}")
            found.append(Entry(*fields))
    if extras is None:
        return found
    wanted = {_norm(e) for item in extras for e in item.split(",") if e.strip()}
    return [e for e in found if _norm(e.extra) in wanted]


def entry_for(module: str) -> Entry | None:
    """The entry that installs the importable ``module`` (its distribution has the module's name)."""
    return next((e for e in entries() if _norm(e.name) == _norm(module)), None)


def install(todo: list[Entry], log) -> None:
    """``pip install --no-deps`` the entries into this interpreter's environment."""
    if not todo:
        return
    reqs = [e.requirement for e in todo]
    for e in todo:
        log(
            f"installing {e.requirement} without its dependencies (it declares {e.without}; what it uses is in "
            f"upload-driver[{e.extra}])"
        )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q", *reqs],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode:
        last = next((line.strip() for line in reversed(proc.stdout.splitlines()) if line.strip()), "no output")
        raise RetryableError(
            f"pip could not install {' '.join(reqs)} ({last[:300]}): check that pip reaches its "
            "package index (`pip config list`), then run `merge-tool setup` again",
            pip_output=proc.stdout.splitlines()[-30:],
        )
