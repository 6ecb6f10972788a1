"""Running a step as a local process: the tool's module with host paths, its progress on our stderr."""

from __future__ import annotations

import shlex
import subprocess
import sys

from upload_common.errors import UploadError

from . import plan


def command(step: dict, device: str) -> list[str]:
    args = plan.render(step, inp=lambda k: str(step["inputs"][k]), out=lambda: str(step["out"]),
                       rw=lambda k: str(step["rw"][k]), device=device)
    return [sys.executable, "-m", step["module"], *args, "--overwrite"]


def describe(step: dict, device: str) -> str:
    return shlex.join([step["tool"], *command(step, device)[3:]])


def run(step: dict, *, device: str, log) -> None:
    proc = subprocess.run(command(step, device), stdout=subprocess.DEVNULL)
    if proc.returncode:
        how = f"was killed (signal {-proc.returncode})" if proc.returncode < 0 else f"failed (exit code {proc.returncode})"
        raise UploadError(f"step {step['name']} ({step['tool']}) {how}: see its message above; rerun to resume, "
                          "finished steps are kept", step=step["name"], exit=proc.returncode)
