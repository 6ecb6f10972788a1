"""What the extras install and what the messages promise: `merge-tool setup` for what pip cannot
resolve (llm-compressor), followed from a fresh venv; llama.cpp's programs built once, on first
need, under a lock, with progress (a stand-in cmake: the real compile takes minutes)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from gguf_tool import llama_tree
from merge_tool import nodeps
from upload_common.errors import Unsupported

ROOT = Path(__file__).resolve().parents[1]


def test_merge_tool_setup_lists_the_pinned_no_deps_packages_per_extra():
    from merge_tool.cli import main

    pins = [e.requirement for e in nodeps.entries()]
    assert "llmcompressor==" + _version("llmcompressor") in pins
    assert CliRunner().invoke(main, ["setup", "--print"]).output.split() == pins
    assert CliRunner().invoke(main, ["setup", "--print", "--extra", "merge,merge-quant"]).output.split() == pins
    assert CliRunner().invoke(main, ["setup", "--print", "--extra", "docs"]).output == ""
    done = CliRunner().invoke(main, ["setup", "--extra", "merge-quant"])  # installed here: nothing to do
    assert done.exit_code == 0 and "already installed" in done.output, done.output


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def test_a_missing_no_deps_package_names_merge_tool_setup_and_its_pin(monkeypatch):
    from merge_tool.quantized import require

    entry = nodeps.entry_for("llmcompressor")
    monkeypatch.setitem(sys.modules, "llmcompressor", None)
    with pytest.raises(Unsupported) as err:
        require("llmcompressor", "merge-quant", "gptq")
    assert err.value.message == (
        f"gptq needs llm-compressor: run `merge-tool setup` once (it installs "
        f"llmcompressor=={entry.version} without its transformers<=5.17 pin)"
    )
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)  # a regular dependency: the extra installs it
    with pytest.raises(Unsupported, match=r"awq needs compressed-tensors .*pip install 'upload-driver\[merge-quant\]'"):
        require("compressed_tensors", "merge-quant", "awq")


def test_pip_failure_in_merge_tool_setup_is_one_line(monkeypatch):
    from merge_tool.cli import main

    entry = nodeps.Entry("merge-quant", "upload-driver-no-such-package==0.0.1", "x<1", "nothing")
    monkeypatch.setattr(nodeps, "entries", lambda extras=None: [entry])  # fault injection: an uninstallable pin
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    result = CliRunner().invoke(main, ["setup"])
    assert result.exit_code == 3, result.output
    assert "error: pip could not install upload-driver-no-such-package==0.0.1 (" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------
# llama.cpp's programs: a stand-in cmake that prints a real build's progress lines

FAKE_CMAKE = """\
#!{python}
import os, sys, time
from pathlib import Path
args = sys.argv[1:]
if "-S" in args:
    Path(args[args.index("-B") + 1]).mkdir(parents=True)
    print("-- Configuring done")
    sys.exit(0)
build = Path(args[args.index("--build") + 1])
with open(os.environ["FAKE_CMAKE_COUNT"], "a") as f:
    f.write("build\\n")
if os.environ.get("FAKE_CMAKE_FAIL"):
    print("src/llama.cpp:1: error: boom")
    sys.exit(2)
for pct in (0, 3, 7, 12, 19, 25, 33, 45, 46, 58, 64, 71, 88, 93, 100):
    print(f"[{{pct:3d}}%] Building CXX object x{{pct}}.o", flush=True)
    time.sleep(float(os.environ.get("FAKE_CMAKE_SLEEP", "0")))
(build / "bin").mkdir()
for name in ("llama-quantize", "llama-imatrix"):
    (build / "bin" / name).write_text("#!/bin/sh\\necho usage\\n")
    (build / "bin" / name).chmod(0o755)
"""


@pytest.fixture()
def fake_llama(tmp_path, monkeypatch):
    """A llama-cpp-python-shaped sdist, a stand-in cmake and c++ first on PATH, the tree in tmp_path."""
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, body in {
            "convert_hf_to_gguf.py": b"print()",
            "gguf-py/gguf/__init__.py": b"",
            "include/llama.h": b"",
            "CMakeLists.txt": b"project(llama)",
        }.items():
            info = tarfile.TarInfo(f"llama_cpp_python-9.9.9/vendor/llama.cpp/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "cmake").write_text(FAKE_CMAKE.format(python=sys.executable))
    (bindir / "c++").write_text("#!/bin/sh\nexit 0\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CMAKE_COUNT", str(tmp_path / "builds.txt"))
    monkeypatch.setenv(llama_tree.ENV, str(tmp_path / "tree"))
    return sdist, tmp_path / "tree", tmp_path / "builds.txt"


def builds(count: Path) -> int:
    return len(count.read_text().splitlines()) if count.exists() else 0


def test_cmake_progress_is_read_from_make_and_ninja_lines():
    assert llama_tree.percent("[ 45%] Building CXX object ggml/src/ggml.c.o") == 45
    assert llama_tree.percent("[100%] Built target llama-imatrix") == 100
    assert llama_tree.percent("[12/48] Building CXX object x.o") == 25
    assert llama_tree.percent("-- Configuring done") is None


def test_setup_keeps_the_sdist_and_the_first_need_builds_once_with_progress(fake_llama):
    sdist, tree, count = fake_llama
    assert llama_tree.setup(sdist) == tree
    assert llama_tree.kept_sdist(tree).is_file() and llama_tree.tool("llama-quantize") is None and builds(count) == 0
    lines = []
    found = llama_tree.ensure_tools(lines.append)
    assert found == {n: tree / "bin" / n for n in llama_tree.TOOLS} and builds(count) == 1
    progress = [re.search(r"building llama-quantize, llama-imatrix: (\d+)%$", line) for line in lines]
    shown = [int(m.group(1)) for m in progress if m]
    # one line per 10% passed, not one per compiled file
    assert shown == [12, 25, 33, 45, 58, 64, 71, 88, 93, 100], lines
    assert not llama_tree.kept_sdist(tree).exists()  # built: the sdist is not needed any more
    assert llama_tree.ensure_tools(lines.append) == found and builds(count) == 1
    llama_tree.setup(sdist)  # set-up again (a venv rebuilt): the programs built from this version stay
    assert llama_tree.tool("llama-imatrix") and not llama_tree.kept_sdist(tree).exists() and builds(count) == 1


def test_two_processes_needing_the_programs_build_them_once(fake_llama):
    sdist, tree, count = fake_llama
    llama_tree.setup(sdist)
    env = {**os.environ, "FAKE_CMAKE_SLEEP": "0.1"}
    code = "from gguf_tool.llama_tree import ensure_tools; print(sorted(ensure_tools(lambda m: None)))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and all("llama-imatrix" in o for o in outs)
    assert builds(count) == 1


def test_a_failed_build_is_one_line_and_can_be_retried(fake_llama, monkeypatch):
    sdist, tree, count = fake_llama
    llama_tree.setup(sdist)
    monkeypatch.setenv("FAKE_CMAKE_FAIL", "1")
    with pytest.raises(Unsupported, match=r"llama-imatrix failed \(src/llama.cpp:1: error: boom\)"):
        llama_tree.ensure_tools(lambda m: None)
    assert not (tree / "bin").exists() and llama_tree.kept_sdist(tree).is_file()
    monkeypatch.delenv("FAKE_CMAKE_FAIL")
    assert llama_tree.ensure_tools(lambda m: None) and builds(count) == 2


def test_gguf_tool_refuses_in_one_line_when_it_cannot_build(fake_llama, llama_base, tmp_path, monkeypatch):
    from gguf_tool.cli import main

    sdist, tree, count = fake_llama
    llama_tree.setup(sdist)
    monkeypatch.setenv("PATH", "/nonexistent")  # no cmake
    cal = tmp_path / "cal.txt"
    cal.write_text("some text")
    result = CliRunner().invoke(
        main, ["--model", str(llama_base), "--out", str(tmp_path / "o"), "--quant", "IQ2_XS", "--calibration", str(cal)]
    )
    assert result.exit_code == 1, result.output
    assert re.search(
        r"error: llama.cpp's llama-quantize, llama-imatrix are not built in .* \(for an importance "
        r"matrix\), and cmake is not installed: run `gguf-tool setup --with-tools` once",
        result.output,
    )
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists() and builds(count) == 0


def test_gguf_tool_setup_with_tools_builds_with_progress_on_stderr(fake_llama):
    from gguf_tool.cli import main

    sdist, tree, count = fake_llama
    result = CliRunner().invoke(main, ["setup", "--sdist", str(sdist), "--with-tools"])
    assert result.exit_code == 0, result.output
    assert "building llama-quantize, llama-imatrix: 100%" in result.output and builds(count) == 1
    assert llama_tree.tool("llama-quantize") == tree / "bin" / "llama-quantize"


# ---------------------------------------------------------------------------------------------------
# From a fresh venv: `pip install '.[merge-quant]'`, then what merge-tool's message says


def _run(cmd, timeout: int, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.mark.slow
def test_a_fresh_merge_quant_install_follows_its_message_to_a_working_gptq(tmp_path):
    from upload_common.sample import make_base, make_tokenizer, make_trainer_output

    pin = nodeps.entry_for("llmcompressor").requirement
    probe = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp_path / "probe", pin], 180)
    if probe.returncode:
        pytest.skip(f"pip cannot fetch {pin} from its index: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    src = tmp_path / "src"  # the project as an sdist would hold it (no build litter in the checkout)
    src.mkdir()
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("tools", "driver"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv], 120).returncode == 0
    py, env = venv / "bin" / "python", {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for args in (["torch"], [f"{src}[merge-quant]"]):  # as the Makefile: torch first, then the project
        # --no-compile: modules are byte-compiled when first imported instead of all of torch's at install
        step = _run(
            [py, "-m", "pip", "install", "-q", "--no-compile", "-c", src / "constraints.txt", *args], 480, env=env
        )
        assert step.returncode == 0, step.stderr[-3000:]

    tok = make_tokenizer(tmp_path / "tok")
    # one layer: a random model's near-tied logits keep 4-bit top-1 agreement near the bar with two
    base = make_base(tmp_path / "base", "llama", hidden=256, intermediate=512, layers=1, tokenizer_dir=tok)
    run = make_trainer_output(tmp_path / "run", base, tokenizer_dir=tok)
    merged = tmp_path / "merged"  # the formats are made from the merged model, which needs no llm-compressor
    merge = [venv / "bin" / "merge-tool", "--adapter", run, "--base", base, "--out", merged, "--device", "cpu"]
    assert _run(merge, 300, env=env).returncode == 0
    gptq = [
        venv / "bin" / "merge-tool",
        "--model",
        merged,
        "--method",
        "gptq",
        "--device",
        "cpu",
        "--out",
        tmp_path / "gptq",
    ]
    refused = _run(gptq, 300, env=env)
    assert refused.returncode == 1 and not (tmp_path / "gptq").exists()
    message = next((line for line in refused.stderr.splitlines() if line.startswith("error:")), refused.stderr)
    assert message == (
        f"error: gptq needs llm-compressor: run `merge-tool setup` once (it installs {pin} without its "
        "transformers<=5.17 pin)"
    ), refused.stderr
    named = re.search(r"run `([^`]+)`", message).group(1).split()
    setup = _run([venv / "bin" / named[0], *named[1:]], 300, env=env)
    assert setup.returncode == 0 and f"{pin}: installed" in setup.stdout, setup.stderr
    done = _run(gptq, 600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    manifest = json.loads((tmp_path / "gptq" / "manifest.json").read_text())
    assert manifest["quantization"]["library"] == f"llmcompressor {pin.partition('==')[2]}"
    assert manifest["validation"]["top1_agreement"] >= 0.8
    check = _run([py, "-m", "pip", "check"], 120, env=env)  # only llm-compressor's own declared pins differ
    assert all(line.startswith("llmcompressor ") for line in check.stdout.strip().splitlines()), check.stdout
