"""Running a step as a local process: the tool's module with host paths, its progress on our stderr.

The process gets the environment it needs and no more: the Hugging Face token only when the step
publishes (or downloads a base model), third-party progress bars and warnings off unless
UPLOAD_DRIVER_DEBUG is set. It runs in a process group of its own, which is ended with it, so a
converter it started does not outlive it."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from upload_common.cli import debug_enabled
from upload_common.errors import UploadError

from . import plan

TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN")
# third-party output a user of the driver does not need to see (tqdm bars, transformers' warnings)
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore",
}
NO_TOKEN_FILE = os.path.join(tempfile.gettempdir(), "upload-driver-no-token", "token")  # never created


def command(step: plan.PlannedStep, device: str) -> list[str]:
    args = plan.render(
        step, inp=lambda k: str(step.inputs[k]), out=lambda: str(step.out), rw=lambda k: str(step.rw[k]), device=device
    )
    return [sys.executable, "-m", step.module, *args, "--overwrite"]


def describe(step: plan.PlannedStep, device: str) -> str:
    return shlex.join([step.tool, *command(step, device)[3:]])


def environment(step: plan.PlannedStep, base: dict | None = None, gpu_id: str | None = None) -> dict:
    """The step's environment: without any token unless it publishes or downloads; quiet unless debugging;
    with ``gpu_id``, that GPU the only one it sees."""
    env = dict(os.environ if base is None else base)
    if gpu_id is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu_id
    if not step.token:
        for key in TOKEN_ENV:
            env.pop(key, None)
        env["HF_TOKEN_PATH"] = NO_TOKEN_FILE  # huggingface_hub's token file is not read either
    if not debug_enabled():
        env = {**QUIET_ENV, **env}  # what the user set themselves wins
    return env


def _end_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, AttributeError):
        os.killpg(pgid, signal.SIGKILL)


def run(step: plan.PlannedStep, *, device: str, log, gpu_id: str | None = None, output: Path | None = None) -> None:
    """The step's tool as a process of its own; its messages on our stderr, or in the file ``output``."""
    group = sys.platform != "win32"
    env = environment(step, gpu_id=gpu_id)
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(open_output(output)) if output else None
        proc = subprocess.Popen(
            command(step, device), stdout=subprocess.DEVNULL, stderr=stderr, env=env, start_new_session=group
        )
        try:
            code = proc.wait()
        except BaseException:  # Ctrl-C or the driver stopping: the step and what it started end too
            proc.kill()
            proc.wait()
            raise
        finally:
            if group:  # what the step started and left behind (a converter whose parent was killed)
                _end_group(proc.pid)
    if code:
        raise UploadError(failure(step, -code if code < 0 else None, code, output=output), step=step.name, exit=code)


def open_output(path: Path):
    """A step's output file, made afresh for each attempt (its folder made when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")  # noqa: SIM115 - the caller's ExitStack closes it


def fingerprint(step: plan.PlannedStep, *, timeout: float = 600) -> str | None:
    """The fingerprint the step's tool computes for it now (``--fingerprint``: arguments checked, inputs
    described, nothing written); None when the tool cannot say (the step then runs, and tells why)."""
    try:
        proc = subprocess.run(
            [*command(step, "cpu"), "--fingerprint"],
            capture_output=True,
            text=True,
            env=environment(step),
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_fingerprint(proc.returncode, proc.stdout)


def parse_fingerprint(code: int, stdout: str) -> str | None:
    """A tool's answer to --fingerprint: its exit code and the one line it printed."""
    text = stdout.strip()
    return text if code == 0 and len(text) == 64 and all(ch in "0123456789abcdef" for ch in text) else None


def failure(
    step: plan.PlannedStep, signal_number: int | None, code: int, where: str = "", output: Path | None = None
) -> str:
    """One line for a step that failed: killed by a signal (it could say nothing), or failed after
    printing its own one-line error (or traceback) above, or (``output``) into that file, whose last line
    the message quotes."""
    name = f"step {step.name} ({where or step.tool})"
    if output is not None:
        said = last_line(output)
        return (
            f"{name} failed (exit code {code}){f': {said}' if said else ''}; its output: {output}; rerun to "
            "resume, finished steps are kept"
        )
    if signal_number:
        why = " - often the system running out of memory" if signal_number == signal.SIGKILL else ""
        return (
            f"{name} was killed (signal {signal_number}){why}: nothing of it was kept; rerun to resume, "
            "finished steps are kept"
        )
    return f"{name} failed (exit code {code}): see its message above; rerun to resume, finished steps are kept"


def last_line(path: Path, limit: int = 300) -> str:
    """The last line a step wrote to its output file (its one-line error), printable characters only, at most
    ``limit`` of them."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [" ".join(line.split()) for line in tail.replace("\r", "\n").splitlines()]
    said = "".join(ch for ch in next((line for line in reversed(lines) if line), "") if ch.isprintable())
    return said if len(said) <= limit else said[: limit - 1] + "…"  # no terminal control codes, one line
