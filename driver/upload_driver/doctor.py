"""``upload-driver doctor``: what this machine can run, each finding with what to do about it."""

from __future__ import annotations

import shutil
from pathlib import Path

from upload_common import __version__
from upload_common.contract import nearest_existing

TOOLS = ("merge-tool", "gguf-tool", "docs-tool", "hf-push-tool")


def _finding(check: str, ok: bool | None, detail: str, remedy: str = "") -> dict:
    """ok: True (fine), False (a problem), None (a warning: works, but less well)."""
    return {
        "check": check,
        "status": {True: "ok", False: "problem", None: "warning"}[ok],
        "detail": detail,
        "remedy": "" if ok else remedy,
    }


def checks(work: Path) -> list[dict]:
    from . import containers
    from .plan import image

    out = []
    try:
        c = containers.client()
        info = c.version()
        out.append(_finding("docker engine", True, f"Docker {info.get('Version')} answers"))
        runtimes = c.info().get("Runtimes") or {}
        out.append(
            _finding(
                "GPU runtime",
                True if "nvidia" in runtimes else None,
                "nvidia runtime present"
                if "nvidia" in runtimes
                else f"no nvidia runtime (runtimes: {', '.join(runtimes) or 'none'}): GPU steps run on CPU",
                "install nvidia-container-toolkit and restart Docker (on Windows: Docker Desktop with the "
                "WSL2 backend and a current NVIDIA driver)",
            )
        )
        for tool in TOOLS:
            name = image(tool)
            try:
                labels = c.images.get(name).labels or {}
                out.append(
                    _finding(
                        f"image {tool}",
                        True,
                        f"{name} (revision {labels.get('org.opencontainers.image.revision', '?')[:12]})",
                    )
                )
            except Exception:  # noqa: BLE001 - ImageNotFound or a broken engine: same advice
                out.append(
                    _finding(
                        f"image {tool}",
                        None,
                        f"{name} not built: this step runs as a local process",
                        f"images/build.sh {tool}  (CPU: images/build.sh --cpu {tool})",
                    )
                )
    except containers.DockerUnavailable as exc:
        out.append(
            _finding(
                "docker engine",
                None,
                f"{exc.message}: the steps run as local processes",
                "install Docker (Docker Desktop on Windows, with WSL2) and start it",
            )
        )
    out.extend(_nvidia())
    out.append(_gpu_local())
    out.append(_converter())
    probe = nearest_existing(work)
    free = shutil.disk_usage(probe).free
    out.append(
        _finding(
            "disk",
            free > 20e9 or None,
            f"{free / 1e9:.1f} GB free in {probe}",
            "a 7B model needs ~15 GB merged plus ~5-8 GB per GGUF type: free space or choose --work",
        )
    )
    out.append(_token())
    return out


def _nvidia() -> list[dict]:
    """The NVIDIA driver (nvidia-smi) and whether each image's CUDA build runs on it."""
    from . import nvidia

    found = nvidia.probe()
    if found.tool is None:
        return [
            _finding(
                "NVIDIA driver",
                None,
                "no nvidia-smi here: no NVIDIA GPU to use, GPU steps run on the CPU",
                "on a GPU machine: install the NVIDIA driver (WSL2: the Windows driver, which brings "
                f"{nvidia.WSL_LIB}/nvidia-smi)",
            )
        ]
    driver = nvidia.parse(found.query, found.table)
    if driver is None:
        said = found.said or next(iter((found.query + found.table).strip().splitlines()), "no output")
        return [
            _finding(
                "NVIDIA driver",
                None,
                f"{found.tool} names no driver version ({said}): GPU steps run on the CPU",
                "run nvidia-smi to see why; reinstall the NVIDIA driver or reboot after a driver update",
            )
        ]
    wsl = nvidia.on_wsl(found.tool)
    verdicts = [_finding(f"CUDA build {v.tool}", v.ok, v.detail, v.remedy) for v in nvidia.assess(driver, wsl)]
    return [_finding("NVIDIA driver", True, nvidia.describe(driver, wsl)), *verdicts]


def _gpu_local() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            return _finding(
                "GPU (local)", True, f"{torch.cuda.get_device_name(0)} visible to torch {torch.__version__}"
            )
        return _finding(
            "GPU (local)",
            None,
            f"torch {torch.__version__} sees no CUDA GPU: local steps run on CPU",
            "install a CUDA build of torch and the NVIDIA driver, or use the images",
        )
    except ImportError:
        return _finding("GPU (local)", None, "torch is not installed here", "pip install 'upload-driver[all]'")


def _converter() -> dict:
    """Asked of gguf-tool itself, as a process (the driver imports no tool)."""
    import subprocess
    import sys

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gguf_tool.cli", "status"], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _finding(
            "llama.cpp (local)",
            None,
            f"gguf-tool did not answer ({type(exc).__name__})",
            "pip install 'upload-driver[gguf]' && gguf-tool setup (or use the gguf-tool image)",
        )
    if proc.returncode == 0:
        return _finding("llama.cpp (local)", True, proc.stdout.strip())
    said = next(
        (line[len("error: ") :] for line in proc.stderr.splitlines() if line.startswith("error: ")),
        "gguf-tool is not installed here",
    )
    return _finding("llama.cpp (local)", None, said.split(":")[0], "gguf-tool setup (or use the gguf-tool image)")


def _token() -> dict:
    import os

    from huggingface_hub import get_token

    if not get_token():
        return _finding(
            "Hugging Face token",
            None,
            "none: publishing to the Hub is not possible (local and Ollama targets work)",
            "set HF_TOKEN, or run `hf auth login`",
        )
    where = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "the token file"
    return _finding("Hugging Face token", True, f"present (from {where}; not shown)")


def version_line() -> str:
    return f"upload-driver {__version__}"
