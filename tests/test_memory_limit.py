"""The whole pipeline (lora, merged_16bit, GGUF Q4_K_M + Q8_0 validated, docs, a local publish) runs with
its whole process tree inside a memory limit that validating against the whole Hugging Face model in fp32
(what gguf-tool did before the reference was streamed) exceeds: the limit is proved by that load being
killed under it. A cgroup v1 memory group holds the tree (its children inherit it); skipped, with the
reason, where none can be made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from driver_helpers import NO_DOCKER


def _bench_module(name: str):
    """A module of bench/ loaded by its path (bench/ is not put on sys.path: its gguf.py would shadow gguf-py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


MemoryGroup = _bench_module("measure").MemoryGroup  # the benchmarks' cgroup helper

GB = 1 << 30
LIMIT = int(2.0 * GB)
# 0.99 GB of bf16 weights (495M parameters): the whole-model fp32 reference needs ~2.4 GB, the pipeline ~1.7 GB
DIMS = dict(hidden=2048, intermediate=5632, layers=11, heads=16, kv_heads=4)

pytestmark = pytest.mark.skipif(bool(MemoryGroup.why_not()), reason=MemoryGroup.why_not() or "")


def in_group(name: str, cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, int]:
    """``cmd`` run with its whole tree in a memory group limited to ``LIMIT``; its result and the OOM kills."""
    with MemoryGroup(f"{name}-{os.getpid()}", LIMIT) as group:
        done = subprocess.run(cmd, preexec_fn=group.enter, capture_output=True, text=True, timeout=1200, **kwargs)
        return done, group.report()["oom_kills"]


@pytest.fixture(scope="module")
def big_trainer(tmp_path_factory, tokenizer_dir) -> Path:
    from upload_common.sample import make_base, make_trainer_output

    root = tmp_path_factory.mktemp("mem")
    base = make_base(root / "base", "llama", dtype="bfloat16", tokenizer_dir=tokenizer_dir, **DIMS)
    return make_trainer_output(root / "sft_output", base, kind="sft", tokenizer_dir=tokenizer_dir, steps=(10,))


def test_the_pipeline_fits_where_the_whole_model_reference_does_not(big_trainer, tmp_path):
    work, site = tmp_path / "work", tmp_path / "site"
    config = tmp_path / "upload.toml"
    # an untrained model: near-ties flip its top-1, so the bars are lowered; the figures are still computed
    config.write_text("[gguf.min_top1]\nQ8_0 = 0.0\nBF16 = 0.0\nQ4_K_M = 0.0\n")
    cmd = [
        sys.executable,
        "-m",
        "upload_driver.cli",
        "run",
        str(big_trainer),
        "--work",
        str(work),
        "--config",
        str(config),
    ]
    cmd += ["--formats", "lora,merged_16bit,gguf", "--push", f"local:{site}", "--runtime", "local", "--json"]
    done, kills = in_group("pipeline", cmd, env={**os.environ, **NO_DOCKER})
    assert done.returncode == 0 and kills == 0, done.stderr[-3000:]
    steps = {s["step"]: s for s in json.loads(done.stdout)["steps"]}
    assert {"lora", "merged_16bit", "gguf"} <= set(steps)
    gguf = json.loads((work / "artifacts" / "gguf" / "manifest.json").read_text())
    assert gguf["decisions"]["reference"]["method"] == "fp32 on the CPU, streamed part by part"
    assert {q for q, f in gguf["files"].items() if f["validation"]["positions"] >= 1024} == {"Q4_K_M", "Q8_0"}
    assert len(list(site.rglob("*.gguf"))) == 2

    merged = work / "artifacts" / "merged_16bit"
    whole = (
        "from upload_common.reference import whole_model; import sys; whole_model(sys.argv[1], list(range(3, 300)), '')"
    )
    killed, kills = in_group("whole", [sys.executable, "-c", whole, str(merged)])
    assert killed.returncode != 0 and kills >= 1, killed.stderr[-2000:]
