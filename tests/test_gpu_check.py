"""bench/gpu_check.py's plumbing on a machine without a GPU: --list, and --cpu-smoke (the merge check on the
CPU at a tiny size, every GPU check skipped with its reason), including a merge made to differ on purpose.
The script runs as a subprocess: bench/ is never put on this process's sys.path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"
GPU_ONLY = ("formats --device cuda", "unsloth vs streaming", "llama.cpp CUDA: gguf-tool")


def run(*args: str, out: Path | None = None, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "UPLOAD_DRIVER_GPU_CHECK_FAULT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tools"), str(REPO / "driver")])
    env["COLUMNS"] = "200"
    if out:
        env["OUT"] = str(out)
    if fault:
        env["UPLOAD_DRIVER_GPU_CHECK_FAULT"] = fault
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


def test_list_names_every_check_and_runs_nothing(tmp_path):
    proc = run("--list", out=tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and [line.split("  ")[0].strip() for line in lines] == ["merge cuda vs cpu", *GPU_ONLY]
    assert all("needs:" in line for line in lines)
    assert "nvcc" in lines[3] and "sdist" in lines[3] and "unsloth" in lines[2]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One --cpu-smoke run and one with the second merge corrupted, sharing the synthetic model."""
    root = tmp_path_factory.mktemp("gpu-check")
    work = ["--cpu-smoke", "--work", str(root / "work")]
    good = run(*work, out=root / "good")
    bad = run(*work, out=root / "bad", fault="merge")
    return (good, json.loads((root / "good" / "gpu_check.json").read_text())), (
        bad,
        json.loads((root / "bad" / "gpu_check.json").read_text()),
    )


def test_cpu_smoke_passes_the_merge_and_skips_the_gpu_checks(smoke):
    (proc, report), _ = smoke
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["merge cuda vs cpu", *GPU_ONLY] and report["failed"] == 0
    merge = rows["merge cuda vs cpu"]
    assert merge["status"] == "passed" and "sha256 equal" in merge["detail"] and merge["seconds"] > 0
    for name in GPU_ONLY:
        assert rows[name]["status"] == "skipped" and "needs a CUDA GPU" in rows[name]["detail"]
    assert "cores" in report["machine"]["line"] and report["machine"]["cores"] == os.cpu_count()
    for word in ("merge cuda vs cpu", "passed", "skipped", "sha256 equal", report["machine"]["line"][:20]):
        assert word in proc.stdout  # the table on stdout


def test_a_merge_that_differs_fails_the_check(smoke):
    _, (proc, report) = smoke
    assert proc.returncode == 1
    merge = report["rows"][0]
    assert merge["status"] == "failed" and report["failed"] == 1
    assert "merges differ in model.safetensors" in merge["detail"]
    assert "failed" in proc.stdout and all(r["status"] == "skipped" for r in report["rows"][1:])
