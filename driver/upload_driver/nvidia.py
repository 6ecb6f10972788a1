"""The NVIDIA driver of this machine as ``nvidia-smi`` reports it, and whether the CUDA builds in the
tool images can run on it. The facts about the images are written here, not read from images/ (an
installed wheel has no such folder); a test holds them equal to images/versions.env."""

from __future__ import annotations

import csv
import os
import platform
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

QUERY = ("--query-gpu=driver_version,name,memory.total", "--format=csv,noheader")
CALL_SECONDS = 5
WSL_LIB = Path("/usr/lib/wsl/lib")  # where WSL2 puts nvidia-smi, often not on PATH
_VERSION = re.compile(r"\d+(?:\.\d+)+")


@dataclass(frozen=True)
class Gpu:
    name: str
    memory: str  # as nvidia-smi prints it, e.g. "24576 MiB"


@dataclass(frozen=True)
class Driver:
    """What nvidia-smi says: the driver's version, the highest CUDA it supports ('' when it did not say),
    the GPUs."""

    version: str
    cuda: str
    gpus: tuple[Gpu, ...]

    def supports(self, floor: str) -> bool:
        return _numbers(self.version) >= _numbers(floor)


def _numbers(version: str) -> tuple[int, ...]:
    """NVIDIA's driver versions are dotted integers ("580.65.06"), compared part by part."""
    return tuple(int(part) for part in version.split("."))


def parse(query: str, table: str) -> Driver | None:
    """From the outputs of ``nvidia-smi --query-gpu=driver_version,name,memory.total --format=csv,noheader``
    and of plain ``nvidia-smi`` (its header says "CUDA Version: X.Y"); None when neither names a driver
    version (no driver, an error message, garbled or empty output)."""
    rows = [
        [cell.strip() for cell in row]
        for row in csv.reader(query.splitlines(), skipinitialspace=True)
        if len(row) == 3 and _VERSION.fullmatch(row[0].strip())
    ]
    header = re.search(r"Driver Version:\s*(\d+(?:\.\d+)+)", table)
    version = rows[0][0] if rows else header.group(1) if header else ""
    if not version:
        return None
    cuda = re.search(r"CUDA Version:\s*(\d+\.\d+)", table)
    return Driver(version, cuda.group(1) if cuda else "", tuple(Gpu(name, memory) for _, name, memory in rows))


def describe(driver: Driver, wsl: bool) -> str:
    """'560.94, CUDA 12.6 (WSL2): 1x NVIDIA GeForce RTX 3090 (24576 MiB)'."""
    says = driver.version + (f", CUDA {driver.cuda}" if driver.cuda else "") + (" (WSL2)" if wsl else "")
    gpus = ", ".join(f"{n}x {g.name} ({g.memory})" for g, n in Counter(driver.gpus).items())
    return f"{says}: {gpus}" if gpus else says


@dataclass(frozen=True)
class Floor:
    """A minimum driver version on Linux and on Windows (under WSL2 nvidia-smi reports the Windows driver)."""

    linux: str
    windows: str

    def on(self, wsl: bool) -> str:
        return self.windows if wsl else self.linux


@dataclass(frozen=True)
class CudaRelease:
    """From NVIDIA's CUDA toolkit release notes ("CUDA Toolkit and Corresponding Driver Versions") and its
    compatibility guide: ``toolkit`` is the driver this release needs for every feature; ``family`` the
    lowest driver of its major release, on which a build runs with minor-version compatibility (kernels
    compiled for the GPU run; PTX JIT and the newest APIs do not)."""

    cuda: str
    toolkit: Floor
    family: Floor


CUDA_RELEASES = {
    # CUDA 12.4 Update 1 (the images' base, 12.4.1); every 12.x runs on 525.60.13 / 528.33 and up
    "12.4": CudaRelease("12.4", toolkit=Floor("550.54.15", "551.78"), family=Floor("525.60.13", "528.33")),
    # CUDA 13.0 GA; every 13.x runs on the 580 drivers and up
    "13.0": CudaRelease("13.0", toolkit=Floor("580.65.06", "580.88"), family=Floor("580", "580")),
}

# images/versions.env, as the images are built by default (a test holds these equal to that file)
BASE_CUDA = "12.4"  # CUDA_VERSION=12.4.1: the CUDA bases, llama.cpp in gguf-tool is compiled against it
TORCH_VERSION = "2.13.0"  # TORCH_VERSION, TORCH_INDEX_URL empty: the package index's build, for CUDA 13
# PyTorch's own index for its oldest CUDA 12 build (2.10 and later are built for CUDA 12.6, 12.8 and 13.0): it runs on
# the CUDA 12 drivers (525 and up, with minor-version compatibility), as the base's llama.cpp does
TORCH_INDEX = "https://download.pytorch.org/whl/cu126"


@dataclass(frozen=True)
class ImageCuda:
    """A CUDA build in a tool image; ``rebuild``: the build.sh line that makes it for the base's CUDA."""

    tool: str
    cuda: str
    what: str
    rebuild: str = ""


IMAGES = (
    ImageCuda(
        "merge-tool",
        "13.0",
        f"torch {TORCH_VERSION}",
        f"TORCH_INDEX_URL={TORCH_INDEX} images/build.sh --cuda merge-tool",
    ),
    ImageCuda("gguf-tool", BASE_CUDA, "llama.cpp"),
)


@dataclass(frozen=True)
class Verdict:
    """ok: True (runs), None (runs less well, or its GPU steps fall back to the CPU), as doctor reports."""

    tool: str
    ok: bool | None
    detail: str
    remedy: str = ""


def assess(driver: Driver, wsl: bool) -> tuple[Verdict, ...]:
    return tuple(_verdict(image, driver, wsl) for image in IMAGES)


def _verdict(image: ImageCuda, driver: Driver, wsl: bool) -> Verdict:
    release = CUDA_RELEASES[image.cuda]
    full, family = release.toolkit.on(wsl), release.family.on(wsl)
    what = f"the {image.tool} image's {image.what} (CUDA {image.cuda})"
    if driver.supports(full):
        return Verdict(image.tool, True, f"{what} runs on driver {driver.version}")
    has = f"driver {driver.version}" + (f" supports CUDA {driver.cuda}" if driver.cuda else "")
    if driver.supports(family):
        return Verdict(
            image.tool,
            None,
            f"{has}: {what} runs with minor-version compatibility (its kernels run, PTX JIT does not)",
            f"update the driver to >= {full} for every CUDA {image.cuda} feature",
        )
    return Verdict(
        image.tool,
        None,
        f"{has}: {what} needs driver >= {family}: its GPU steps run on the CPU",
        _remedy(image, driver, wsl, full),
    )


def _remedy(image: ImageCuda, driver: Driver, wsl: bool, full: str) -> str:
    if image.rebuild and driver.supports(CUDA_RELEASES[BASE_CUDA].family.on(wsl)):
        return f"update the driver, or build {image.tool} with {image.rebuild}"
    return f"update the driver to >= {full}, or use the CPU image (images/build.sh --cpu {image.tool})"


@dataclass(frozen=True)
class Probe:
    """nvidia-smi as found here: ``tool`` (None: there is none), its two outputs, and ``said``: the first
    line of what it printed instead (an error, or that it did not answer)."""

    tool: str | None
    query: str = ""
    table: str = ""
    said: str = ""


def locate(wsl_lib: Path = WSL_LIB) -> str | None:
    found = shutil.which("nvidia-smi")
    if found:
        return found
    candidate = wsl_lib / "nvidia-smi"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def probe(wsl_lib: Path = WSL_LIB) -> Probe:
    tool = locate(wsl_lib)
    if tool is None:
        return Probe(None)
    query, said = _call(tool, *QUERY)
    table, said_too = _call(tool)
    return Probe(tool, query, table, said or said_too)


def indexes(wsl_lib: Path = WSL_LIB) -> str:
    """The GPUs' indexes, one per line ('' when there is no nvidia-smi, or it does not answer)."""
    tool = locate(wsl_lib)
    return _call(tool, "--query-gpu=index", "--format=csv,noheader")[0] if tool else ""


def _call(tool: str, *args: str) -> tuple[str, str]:
    """(stdout when it succeeded, else '', the first line it printed otherwise), bounded in time."""
    try:
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=CALL_SECONDS)
    except subprocess.TimeoutExpired:
        return "", f"no answer within {CALL_SECONDS} s"
    except OSError as exc:
        return "", f"{type(exc).__name__}: {exc.strerror}"
    if done.returncode == 0:
        return done.stdout, ""
    printed = (done.stdout + done.stderr).strip().splitlines()
    return "", printed[0] if printed else f"exit code {done.returncode}, no output"


def on_wsl(tool: str | None = None) -> bool:
    """WSL2 (or Windows itself): nvidia-smi reports the Windows driver, whose versions differ."""
    if sys.platform == "win32" or "WSL_DISTRO_NAME" in os.environ:
        return True
    return "microsoft" in platform.uname().release.lower() or bool(tool and Path(tool).parent == WSL_LIB)
