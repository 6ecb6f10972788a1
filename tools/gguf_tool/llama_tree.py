"""llama.cpp's converter, taken from the very sdist the installed llama-cpp-python was built from,
so the converter, gguf-py and the quantizer are one llama.cpp commit.

``gguf-tool setup`` extracts ``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``, ``conversion/``,
``gguf-py/`` and ``include/llama.h`` from that sdist (downloaded once by pip at set-up time, or
given with ``--sdist``) into a folder beside the installation, and keeps the sdist beside that
folder. ``llama-quantize`` and ``llama-imatrix`` (the library's C API cannot take an importance
matrix) are compiled from the same vendored tree the first time a step needs them, or by
``setup --with-tools``: static, CPU unless CMAKE_ARGS says otherwise, once (under a lock file, so
two processes do not both compile), with cmake's progress every 10%. Nothing is fetched at run
time; the images build the programs when they are built."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import deque
from pathlib import Path

from upload_common.errors import InputNotFound, Unsupported

ENV = "UPLOAD_DRIVER_LLAMA_CPP_DIR"
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "include/llama.h")
TOOLS = ("llama-quantize", "llama-imatrix")
SETUP_HINT = "run `gguf-tool setup --with-tools` once (needs cmake and a C++ compiler), or use the gguf-tool image"


def llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:
        raise Unsupported("llama-cpp-python is not installed: pip install 'upload-driver[gguf]'") from None


def tree_dir() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(sys.prefix) / "share" / "upload-driver" / f"llama.cpp-{llama_cpp_version()}"


def kept_sdist(folder: Path) -> Path:
    """Where set-up keeps the sdist until the programs are built from it: beside the tree."""
    return folder.with_name(folder.name + ".sdist.tar.gz")


def converter() -> Path:
    """The folder holding convert_hf_to_gguf.py, or an error saying how to set it up."""
    folder = tree_dir()
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise InputNotFound(
            f"llama.cpp's converter is not set up in {folder}: run `gguf-tool setup` once "
            f"(or set {ENV} to a llama.cpp tree of the same version)",
            path=str(folder),
        )
    return folder


def _program(folder: Path, name: str) -> Path | None:
    path = folder / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def tool(name: str) -> Path | None:
    """A llama.cpp program built from the tree's sdist, if there is one."""
    return _program(tree_dir(), name)


def _cannot_build(folder: Path) -> str | None:
    """Why the programs cannot be built here (None: they can)."""
    if not kept_sdist(folder).is_file():
        return f"and no llama-cpp-python sdist at {kept_sdist(folder)} to build them from"
    if not shutil.which("cmake"):
        return "and cmake is not installed"
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        return "and no C++ compiler (c++, g++, clang++) is installed"
    if not os.access(folder.parent, os.W_OK) or not os.access(folder, os.W_OK):
        return f"and {folder} is not writable"
    return None


def ensure_tools(log=print, why: str = "for an importance matrix") -> dict[str, Path]:
    """llama-quantize and llama-imatrix: found, or built now (once, under a lock), or a one-line refusal."""
    folder = tree_dir()
    found = {n: tool(n) for n in TOOLS}
    if all(found.values()):
        return found
    blocker = _cannot_build(folder)
    missing = ", ".join(n for n, p in found.items() if not p)
    if blocker:
        raise Unsupported(
            f"llama.cpp's {missing} {'is' if ', ' not in missing else 'are'} not built in {folder}/bin "
            f"({why}), {blocker}: {SETUP_HINT}",
            path=str(folder),
        )
    from filelock import FileLock

    lock = folder.with_name(folder.name + ".lock")
    with FileLock(str(lock)):
        if not all(_program(folder, n) for n in TOOLS):  # another process may have built them meanwhile
            log(f"building {', '.join(TOOLS)} from {folder.name} ({why}), once: several minutes")
            build_tools(kept_sdist(folder), folder, log)
        kept_sdist(folder).unlink(missing_ok=True)
    found = {n: tool(n) for n in TOOLS}
    if not all(found.values()):
        raise Unsupported(
            f"llama.cpp's {', '.join(n for n, p in found.items() if not p)} not found in {folder}/bin "
            f"after the build ({why}): {SETUP_HINT}",
            path=str(folder),
        )
    return found


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")  # Makefiles: "[ 45%] Building CXX object ..."
_STEPS = re.compile(r"^\[(\d+)/(\d+)\]")  # Ninja: "[12/345] ..."


def percent(line: str) -> int | None:
    """How far a cmake build is, from one line of its output."""
    m = _PERCENT.match(line)
    if m:
        return int(m.group(1))
    m = _STEPS.match(line)
    return int(100 * int(m.group(1)) / int(m.group(2))) if m and int(m.group(2)) else None


def run_with_progress(cmd: list[str], what: str, log, every: int = 10) -> None:
    """Run ``cmd``, logging ``what: N%`` each time the build passes another ``every`` percent; a
    failure is one line with the last line of the output."""
    tail: deque[str] = deque(maxlen=40)
    shown = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for line in proc.stdout:
            tail.append(line.rstrip())
            pct = percent(line)
            if pct is not None and pct >= shown + every:
                shown = pct - pct % every
                log(f"{what}: {pct}%")
    if proc.returncode:
        last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        raise Unsupported(
            f"{what} failed ({last[:200]}): set up a working cmake and C++ compiler, or use the gguf-tool image",
            log_tail=list(tail),
        )


def build_tools(sdist: Path, dest: Path, log=print) -> None:
    """Compile llama-quantize and llama-imatrix from the sdist's llama.cpp into ``dest/bin`` (each
    program appears complete or not at all)."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(sdist) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        log("unpacking llama.cpp's sources")
        tar.extractall(tmp, members=[m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name], **safe)
        src = next(Path(tmp).glob("*/vendor/llama.cpp"))
        build = Path(tmp) / "build"
        args = [
            "-DGGML_NATIVE=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
            *shlex.split(os.environ.get("CMAKE_ARGS", "")),
        ]
        log("configuring llama.cpp (cmake)")
        run_with_progress(["cmake", "-S", str(src), "-B", str(build), *args], "configuring llama.cpp", lambda m: None)
        run_with_progress(
            ["cmake", "--build", str(build), "--target", *TOOLS, "-j", str(os.cpu_count() or 1)],
            f"building {', '.join(TOOLS)}",
            log,
        )
        (dest / "bin").mkdir(parents=True, exist_ok=True)
        for name in TOOLS:
            part = dest / "bin" / f".{name}.partial"
            shutil.copy2(build / "bin" / name, part)
            os.replace(part, dest / "bin" / name)
    log(f"built {', '.join(TOOLS)} into {dest / 'bin'}")


def extract(sdist: Path, dest: Path) -> Path:
    """Copy the converter files out of a llama-cpp-python sdist into ``dest`` (atomically; programs
    already built in ``dest/bin`` are kept: the tree is named by the library's version)."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and (m.isfile() and any(parts[1] == w or parts[1].startswith(w) for w in WANTED)):
                m.name = parts[1]
                members.append(m)
        if not any(m.name == "convert_hf_to_gguf.py" for m in members):
            raise InputNotFound(
                f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py: pass a llama-cpp-python sdist"
            )
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python < 3.11.4 lacks filters
        tar.extractall(tmp, members=members, **safe)
    if (dest / "bin").is_dir():
        (dest / "bin").rename(tmp / "bin")
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def keep_sdist(sdist: Path, dest: Path) -> None:
    """Keep the sdist beside the tree (atomically) until the programs are built from it."""
    target = kept_sdist(dest)
    if all(_program(dest, n) for n in TOOLS) or (target.exists() and target.samefile(sdist)):
        return
    part = target.with_name(target.name + ".partial")
    shutil.copyfile(sdist, part)
    os.replace(part, target)


def setup(sdist: Path | None = None, with_tools: bool = False, log=print) -> Path:
    version = llama_cpp_version()
    dest = tree_dir()
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            log(f"downloading the llama-cpp-python {version} sdist (pip download)")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"llama-cpp-python=={version}",
                    "-d",
                    tmp,
                    "-q",
                ],
                check=True,
            )
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        extract(Path(sdist), dest)
        keep_sdist(Path(sdist), dest)
    if with_tools:
        ensure_tools(log, why="--with-tools")
    return dest
