"""llama.cpp's converter, taken from the very sdist the installed llama-cpp-python was built from,
so the converter, gguf-py and the quantizer are one llama.cpp commit.

``gguf-tool setup`` extracts ``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``, ``conversion/``,
``gguf-py/`` and ``include/llama.h`` from that sdist (downloaded once by pip at set-up time, or
given with ``--sdist``) into a folder beside the installation. ``--with-tools`` also builds
``llama-quantize`` and ``llama-imatrix`` from the same vendored tree (static, CPU unless CMAKE_ARGS
says otherwise): the library's C API cannot take an importance matrix. Nothing is fetched at run
time."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from upload_common.errors import InputNotFound, Unsupported

ENV = "UPLOAD_DRIVER_LLAMA_CPP_DIR"
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "include/llama.h")


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


def converter() -> Path:
    """The folder holding convert_hf_to_gguf.py, or an error saying how to set it up."""
    folder = tree_dir()
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise InputNotFound(f"llama.cpp's converter is not set up in {folder}: run `gguf-tool setup` once "
                            f"(or set {ENV} to a llama.cpp tree of the same version)", path=str(folder))
    return folder


TOOLS = ("llama-quantize", "llama-imatrix")


def tool(name: str) -> Path | None:
    """A llama.cpp program built by ``gguf-tool setup --with-tools``, if there is one."""
    path = tree_dir() / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def build_tools(sdist: Path, dest: Path, log=print) -> None:
    """Compile llama-quantize and llama-imatrix from the sdist's llama.cpp into ``dest/bin``."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(sdist) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp, members=[m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name], **safe)
        src = next(Path(tmp).glob("*/vendor/llama.cpp"))
        build = Path(tmp) / "build"
        args = ["-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DCMAKE_BUILD_TYPE=Release",
                *shlex.split(os.environ.get("CMAKE_ARGS", ""))]
        log(f"building {', '.join(TOOLS)} from llama.cpp (a few minutes)")
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), *args], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "--target", *TOOLS, "-j", str(os.cpu_count() or 1)],
                       check=True, stdout=subprocess.DEVNULL)
        (dest / "bin").mkdir(parents=True, exist_ok=True)
        for name in TOOLS:
            shutil.copy2(build / "bin" / name, dest / "bin" / name)


def extract(sdist: Path, dest: Path) -> Path:
    """Copy the converter files out of a llama-cpp-python sdist into ``dest`` (atomically)."""
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
            raise InputNotFound(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py: pass a llama-cpp-python sdist")
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python < 3.11.4 lacks filters
        tar.extractall(tmp, members=members, **safe)
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    return dest


def setup(sdist: Path | None = None, with_tools: bool = False, log=print) -> Path:
    version = llama_cpp_version()
    dest = tree_dir()
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", tmp, "-q"], check=True)
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        extract(Path(sdist), dest)
        if with_tools:
            build_tools(Path(sdist), dest, log)
        return dest
