"""Running a step as a local process: the tool's module with host paths, its progress on our stderr."""

from __future__ import annotations

import shlex
import subprocess
import sys

from upload_common.errors import UploadError


def render(step: dict, device: str) -> list[str]:
    out = []
    for a in step["args"]:
        if isinstance(a, str):
            out.append(a)
        elif a[0] == "in":
            out.append(str(step["inputs"][a[1]]))
        elif a[0] == "out":
            out.append(str(step["out"]))
        elif a[0] == "rw":
            out.append(f"{a[2]}{step['rw'][a[1]]}")
        elif a[0] == "device":
            out.append(device)
    return out


def command(step: dict, device: str) -> list[str]:
    return [sys.executable, "-m", step["module"], *render(step, device), "--overwrite"]


def describe(step: dict, device: str) -> str:
    return shlex.join([step["tool"], *command(step, device)[3:]])


def run(step: dict, *, device: str, log) -> None:
    proc = subprocess.run(command(step, device), stdout=subprocess.DEVNULL)
    if proc.returncode:
        how = f"was killed (signal {-proc.returncode})" if proc.returncode < 0 else f"failed (exit code {proc.returncode})"
        raise UploadError(f"step {step['name']} ({step['tool']}) {how}: see its message above; rerun to resume, "
                          "finished steps are kept", step=step["name"], exit=proc.returncode)
