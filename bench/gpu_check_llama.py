"""The GPU check's llama.cpp row (bench/gpu_check.py): llama.cpp, as vendored in the pinned llama-cpp-python
sdist, built with CUDA for this machine's GPU only, then gguf-tool on the sample model with an importance
matrix and validation, llama-cpp-python loading the CUDA libllama (LLAMA_CPP_LIB_PATH) and gguf-tool using
that tree's programs (UPLOAD_DRIVER_LLAMA_CPP_DIR). Passes when gguf-tool's manifest says both ran on the
GPU and its figures met their bars (gguf-tool exits 1 otherwise)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

from gpu_check_run import Failed, Skipped, call

REPO = Path(__file__).resolve().parent.parent
TARGETS = ("llama", "ggml", "llama-imatrix", "llama-quantize")
PROGRAMS = ("llama-imatrix", "llama-quantize")
NEEDS_TEXT = "a CUDA GPU, nvcc, cmake, the llama-cpp-python sdist (in --wheels, or unpacked: --llama-src)"
QUANT = "Q8_0"


def pinned_version() -> str:
    for line in (REPO / "images" / "versions.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "LLAMA_CPP_PYTHON_VERSION":
            return value.strip()
    raise Failed("images/versions.env has no LLAMA_CPP_PYTHON_VERSION")


def _is_source(folder: Path | None) -> bool:
    return bool(folder) and (folder / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file()


def _unpack(sdist: Path, dest: Path) -> Path:
    """The sdist's llama.cpp tree and its Python package, unpacked once into ``dest``."""
    part = dest.with_name(dest.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        keep = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name or "/llama_cpp/" in m.name]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(part, members=keep, **safe)
    inner = next(part.iterdir())
    shutil.rmtree(dest, ignore_errors=True)
    inner.rename(dest)
    shutil.rmtree(part)
    return dest


def source(ctx, version: str) -> Path:
    """An unpacked llama-cpp-python sdist of the pinned version: --llama-src, one unpacked earlier in the
    work folder, or the sdist in --wheels unpacked now."""
    if ctx.llama_src:
        if not _is_source(ctx.llama_src):
            raise Skipped(f"--llama-src {ctx.llama_src} holds no vendor/llama.cpp/CMakeLists.txt")
        return ctx.llama_src
    unpacked = ctx.work / f"llama_cpp_python-{version}"
    if _is_source(unpacked):
        return unpacked
    sdist = ctx.wheels / f"llama_cpp_python-{version}.tar.gz" if ctx.wheels else None
    if not sdist or not sdist.is_file():
        raise Skipped(f"no llama_cpp_python-{version}.tar.gz in --wheels and no unpacked sdist (--llama-src)")
    return _unpack(sdist, unpacked)


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    return found or next((str(p) for p in [Path("/usr/local/cuda/bin/nvcc")] if p.is_file()), None)


def _lib_dir(build: Path) -> Path | None:
    found = sorted(build.rglob("libllama.so"))
    return found[0].parent if found else None


def build(ctx, deadline: float, src: Path, version: str) -> Path:
    """llama.cpp built with CUDA for this GPU's architecture (shared libraries, the needed targets only), once
    per version and architecture; the build folder."""
    nvcc = _nvcc()
    if not nvcc or not shutil.which("cmake"):
        raise Skipped(f"no {'nvcc' if not nvcc else 'cmake'} to build llama.cpp with CUDA")
    out = ctx.work / f"llama.cpp-{version}-cuda-sm{ctx.capability}"
    if _lib_dir(out) and all((out / "bin" / p).is_file() for p in PROGRAMS):
        return out
    shutil.rmtree(out, ignore_errors=True)
    args = [
        "-DGGML_CUDA=on",
        "-DBUILD_SHARED_LIBS=ON",
        f"-DCMAKE_CUDA_ARCHITECTURES={ctx.capability}",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        "-DGGML_NATIVE=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    call(["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(out), *gen, *args], ctx, deadline, "llama-build")
    jobs = str(os.cpu_count() or 1)
    call(["cmake", "--build", str(out), "--target", *TARGETS, "-j", jobs], ctx, deadline, "llama-build")
    return out


def _env(ctx, src: Path, lib: Path) -> dict:
    """gguf-tool's environment: this tree's programs and converter, llama-cpp-python's Python code from the
    same sdist loading the CUDA libllama."""
    tree = src / "vendor" / "llama.cpp"
    (tree / "bin").mkdir(exist_ok=True)
    for p in PROGRAMS:
        (tree / "bin" / p).unlink(missing_ok=True)
        (tree / "bin" / p).symlink_to(lib.parent / "bin" / p if (lib.parent / "bin" / p).is_file() else lib / p)
    paths = [str(src), str(tree / "gguf-py"), ctx.env["PYTHONPATH"]]
    return {
        **ctx.env,
        "PYTHONPATH": os.pathsep.join(paths),
        "LLAMA_CPP_LIB_PATH": str(lib),
        "UPLOAD_DRIVER_LLAMA_CPP_DIR": str(tree),
    }


PROBE = "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 3)"


def _sample(ctx) -> tuple[Path, Path]:
    """The sample's trained model (hidden 256, cached in the work folder) and a calibration text."""
    from upload_common import sample

    folder = ctx.work / "gguf-sample"
    model, text = folder / "Tiny-Llama", folder / "calibration.txt"
    if not (model / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        tok = sample.make_tokenizer(folder / "tok")
        sample.make_trained_base(model, tok, cache=ctx.work / "sample-cache")
        text.write_text("\n".join(sample.sample_text(600, seed=5)))
    return model, text


def _where(manifest: dict) -> tuple[str | None, str | None]:
    decisions = manifest.get("decisions", {})
    return decisions.get("imatrix_device"), (decisions.get("reference") or {}).get("llama_cpp_device")


def check_llama(ctx, deadline: float) -> str:
    if not ctx.gpu:
        raise Skipped("needs a CUDA GPU")
    version = pinned_version()
    src = source(ctx, version)
    lib = _lib_dir(build(ctx, deadline, src, version))
    if not lib:
        raise Failed("the llama.cpp build left no libllama.so (see llama-build.log)")
    env = _env(ctx, src, lib)
    probe = call([sys.executable, "-c", PROBE], ctx, deadline, "llama-gguf", check=False, env=env)
    if probe.returncode:
        why = "no GPU offload" if probe.returncode == 3 else "import failed"
        raise Failed(f"llama-cpp-python on the CUDA libllama: {why} (see llama-gguf.log)")
    model, text = _sample(ctx)
    dest = ctx.work / "gguf-out"
    shutil.rmtree(dest, ignore_errors=True)
    cmd = [sys.executable, "-m", "gguf_tool.cli", "--model", str(model), "--out", str(dest), "--quant", QUANT]
    call([*cmd, "--calibration", str(text)], ctx, deadline, "llama-gguf", env=env)
    manifest = json.loads((dest / "manifest.json").read_text())
    imatrix_on, validated_on = _where(manifest)
    inter = (manifest["decisions"].get("reference") or {}).get("intermediate")
    validated = {q: f["validation"] for q, f in manifest["files"].items()}
    if inter:
        validated = {inter["quant"]: inter["validation"], **validated}
    figures = ", ".join(f"{q} top-1 {v['top1_agreement']:.3f} KL {v['mean_kl']:.4f}" for q, v in validated.items())
    seconds = manifest["timings"]["seconds"]
    detail = (
        f"sm{ctx.capability} build; imatrix on {imatrix_on} ({seconds.get('imatrix', 0):.1f} s), "
        f"validation on {validated_on}; {figures}"
    )
    if imatrix_on != "GPU" or validated_on != "GPU":
        raise Failed(detail)
    return detail
