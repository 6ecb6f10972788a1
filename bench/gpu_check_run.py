"""The GPU check's plumbing (bench/gpu_check.py): its context, the outcomes a check raises, running a child
process under the check's deadline with its output in a log file, the machine line, and installing carried
wheels without the network."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PIP_TIMEOUT_S = 300


class Skipped(Exception):
    """The check cannot run here; the message says why (not a failure)."""


class Failed(Exception):
    """The check ran and did not hold; the message carries the figures."""


@dataclass(frozen=True)
class Ctx:
    work: Path
    out: Path
    env: dict
    smoke: bool
    gpu: bool
    size_gb: float
    capability: str | None  # e.g. "90" for an H200, "86" for an RTX 3090
    wheels: Path | None
    llama_src: Path | None
    only: frozenset


def log(msg: str) -> None:
    print(f"[gpu-check] {msg}", file=sys.stderr, flush=True)


def child_env(repo: Path) -> dict:
    """The children's environment: the tools from the checkout, unbuffered output, no network for Hugging Face."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    paths = [str(repo / "tools"), str(repo / "driver"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _last_line(path: Path) -> str:
    try:
        with open(path, errors="replace") as f:
            tail = deque((line.strip() for line in f if line.strip()), maxlen=1)
    except OSError:
        return "no output"
    return tail[0][:200] if tail else "no output"


def call(
    cmd: list[str],
    ctx,
    deadline: float,
    name: str,
    *,
    check: bool = True,
    stdout: Path | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, its output appended to ``$OUT/<name>.log`` (stdout to
    ``stdout`` when given), killed with its children at ``deadline`` (time.monotonic()); Failed on a
    timeout, or on a non-zero exit when ``check``."""
    import time

    logfile = ctx.out / f"{name}.log"
    left = deadline - time.monotonic()
    if left <= 0:
        raise Failed(f"out of time before `{Path(cmd[0]).name} {' '.join(cmd[1:3])}`")
    with open(logfile, "a") as err, open(stdout or logfile, "a" if not stdout else "w") as out:
        err.write(f"$ {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, env=env or ctx.env, cwd=cwd, start_new_session=True, text=True
        )
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise Failed(f"timed out: `{' '.join(cmd[:4])} ...` still running at the check's limit") from None
    if check and proc.returncode:
        raise Failed(f"`{' '.join(cmd[:4])} ...` exited {proc.returncode}: {_last_line(logfile)}")
    return subprocess.CompletedProcess(cmd, proc.returncode)


def _quick(cmd: list[str], env: dict | None = None) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


PROBE = """import json, torch
ok = torch.cuda.is_available()
cap = torch.cuda.get_device_capability(0) if ok else None
print(json.dumps({"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": ok,
                  "capability": f"{cap[0]}{cap[1]}" if cap else None}))"""


def machine(env: dict) -> dict:
    """GPU name, memory, driver, CUDA (torch's build, nvcc's), torch, cores: the table's first line."""
    info = {"cores": os.cpu_count()}
    try:
        info.update(json.loads(_quick([sys.executable, "-c", PROBE], env).splitlines()[-1]))
    except (ValueError, IndexError):
        info.update(torch=None, cuda_available=False, capability=None)
    smi = _quick(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    if smi:
        name, memory, driver = (s.strip() for s in smi.splitlines()[0].split(","))
        info.update(gpu=name, gpu_memory=memory, driver=driver)
    nvcc = re.search(r"release ([\d.]+)", _quick(["nvcc", "--version"]) if shutil.which("nvcc") else "")
    info["nvcc"] = nvcc.group(1) if nvcc else None
    gpu = f"{info['gpu']} ({info['gpu_memory']}, driver {info['driver']})" if smi else "no NVIDIA GPU"
    info["line"] = (
        f"{gpu}; torch {info.get('torch')} (CUDA {info.get('torch_cuda')}, available: {info['cuda_available']}); "
        f"nvcc {info['nvcc'] or '-'}; {info['cores']} cores"
    )
    return info


def wheel_names(folder: Path) -> list[str]:
    """The distributions of the wheels in ``folder`` (the name before the first dash)."""
    return sorted({w.name.split("-")[0] for w in folder.glob("*.whl")})


def _pip(names: list[str], folder: Path, out: Path) -> int:
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(folder), *names]
    with open(out / "pip.log", "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            return 124


def install_wheels(folder: Path, out: Path) -> str:
    """pip-install every wheel in ``folder`` from that folder alone (no index, each call bounded): all at
    once, else one by one, so one wheel that cannot install here does not keep the others out; one line."""
    names = wheel_names(folder)
    if not names:
        return f"no wheels in {folder}"
    if _pip(names, folder, out) == 0:
        return f"installed {', '.join(names)} from {folder}"
    failed = [n for n in names if _pip([n], folder, out)]
    done = [n for n in names if n not in failed]
    return f"installed {', '.join(done) or 'nothing'}; could not install {', '.join(failed)} (see pip.log)"
