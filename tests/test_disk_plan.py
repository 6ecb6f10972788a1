"""Disk predicted and minimal: GGUF sizes from tensor shapes, gguf-tool's float intermediate gone once
the quants are made (its peak recorded), the dry run's peak against a real run's measured peak."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from upload_common.gguf_size import BLOCKS

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
SMALL = dict(hidden=256, intermediate=512, layers=2)  # rows of 256: the k-quants without fallbacks


@pytest.fixture(scope="module")
def small(tmp_path_factory, tokenizer_dir) -> dict:
    from upload_common.sample import make_base, make_trainer_output

    root = tmp_path_factory.mktemp("disk")
    base = make_base(root / "base", "llama", dtype="bfloat16", tokenizer_dir=tokenizer_dir, **SMALL)
    return {"base": base, "sft": make_trainer_output(root / "sft", base, kind="sft", tokenizer_dir=tokenizer_dir)}


def test_block_sizes_are_ggml_s():
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    for name, sizes in BLOCKS.items():
        assert GGML_QUANT_SIZES[GGMLQuantizationType[name]] == sizes, name


def test_gguf_tool_drops_the_intermediate_and_records_its_peak(small, tmp_path):
    from gguf_tool.core import run

    m = run(small["base"], tmp_path / "q", quants=("Q8_0", "Q4_K_M"), validate=False, name="m")
    disk = m["decisions"]["disk"]
    made = {p.name: p.stat().st_size for p in (tmp_path / "q").glob("*.gguf")}
    assert set(made) == {"m-Q8_0.gguf", "m-Q4_K_M.gguf"}  # the BF16 intermediate is gone
    assert disk["needed_bytes"] == disk["peak_bytes"] == disk["outputs_bytes"] + disk["intermediate_bytes"]
    assert abs(disk["outputs_bytes"] - sum(made.values())) < 0.05 * sum(made.values())
    kept = run(small["base"], tmp_path / "f", quants=("F16", "Q8_0"), validate=False, name="m")
    assert (tmp_path / "f" / "m-F16.gguf").is_file() and kept["decisions"]["disk"]["intermediate_bytes"] == 0
    f16 = (tmp_path / "f" / "m-F16.gguf").stat().st_size
    assert abs(disk["intermediate_bytes"] - f16) < 0.05 * f16  # BF16 and F16: the same size


def test_the_reference_budget_is_gguf_tools():
    from gguf_tool.job import DEFAULT_TOKENS
    from upload_driver.disk_plan import REFERENCE_TOKENS

    assert DEFAULT_TOKENS == REFERENCE_TOKENS


def _tree_bytes(*folders: Path) -> int:
    total = 0
    for folder in folders:
        for p, _, files in os.walk(folder):
            for f in files:
                with contextlib.suppress(OSError):  # renamed or removed while counted
                    total += os.lstat(os.path.join(p, f)).st_size
    return total


def _run_args(trainer: Path, work: Path, site: Path) -> list[str]:
    """lora, gguf Q4_K_M, a local publish; the 16-bit GGUF's bar lowered for this untrained model, whose
    near-tied logits flip between fp32 and bf16 (the disk is what these tests are about)."""
    config = work.parent / "upload.toml"
    config.write_text("[gguf.min_top1]\nBF16 = 0.9\n")
    args = ["run", trainer, "--work", work, "--formats", "lora,gguf", "--quant", "Q4_K_M", "--config", config]
    return [str(a) for a in [*args, "--push", f"local:{site}", "--runtime", "local", "--json"]]


def _measured_peak(args: list[str], *folders: Path) -> int:
    """The run's peak bytes under ``folders``, sampled while it runs (it must succeed); the intermediate
    must have been seen and be gone at the end."""
    from upload_driver.cli import main

    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_bytes(*folders))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = CliRunner().invoke(main, args, env=NO_DOCKER)
    finally:
        done.set()
        watcher.join()
    assert result.exit_code == 0, result.output
    assert peak[0] > _tree_bytes(*folders)  # the intermediate was there, and is gone
    return peak[0]


def _predicted(args: list[str]) -> int:
    from upload_driver.cli import main

    dry = CliRunner().invoke(main, [*args, "--dry-run"], env=NO_DOCKER)
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert all(r["expected_bytes"] for r in plan["steps"]), plan["steps"]  # no step's size unknown
    return plan["expected_bytes"]


def test_dry_run_predicts_the_measured_peak(small, tmp_path):
    work, site = tmp_path / "work", tmp_path / "site"
    args = _run_args(small["sft"], work, site)
    predicted = _predicted(args)
    peak = _measured_peak(args, work, site)
    assert abs(predicted - peak) <= 0.10 * peak, (predicted, peak)


def test_dry_run_predicts_the_peak_of_a_hub_base(small, hub, tmp_path, tokenizer_dir, monkeypatch):
    """A base the adapter names by its Hub id: the dry run reads its tensor list from the Hub's metadata
    (range requests of the safetensors header), and the real run downloads it and makes the same peak."""
    from huggingface_hub import HfApi

    from upload_common.sample import make_trainer_output

    api = HfApi(endpoint=hub.url, token=os.environ["HF_TOKEN"])
    api.create_repo("acme/tiny-base")
    api.upload_folder(repo_id="acme/tiny-base", folder_path=small["base"])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # where the merge step downloads the base
    sft = make_trainer_output(tmp_path / "sft", small["base"], tokenizer_dir=tokenizer_dir, base_name="acme/tiny-base")
    work, site = tmp_path / "work", tmp_path / "site"
    args = _run_args(sft, work, site)
    predicted = _predicted(args)
    assert not (tmp_path / "hf-home").exists()  # nothing downloaded to plan
    peak = _measured_peak(args, work, site)
    assert abs(predicted - peak) <= 0.10 * peak, (predicted, peak)


def test_a_step_short_of_disk_is_refused_before_it_starts(tmp_path, monkeypatch):
    import shutil

    from upload_common.errors import NotEnoughSpace
    from upload_driver.disk_plan import check_step
    from upload_driver.plan import PlannedStep

    step = PlannedStep("gguf", "gguf-tool", "gguf_tool.cli", tmp_path / "work" / "artifacts" / "gguf")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=(64 << 20) + (3 << 30)))
    check_step(step, 3 << 30)  # just enough with the margin
    check_step(step, None)  # unknown: the tool checks its own estimate
    with pytest.raises(NotEnoughSpace, match=r"step gguf needs ~3.22 GB .* only 3.29 GB is free now: .*--work") as e:
        check_step(step, (3 << 30) + 1)
    assert e.value.exit_code == 1 and e.value.fields["need"] == (3 << 30) + 1
    site = PlannedStep("publish-local", "hf-push-tool", "m", tmp_path / "p", rw={"site": tmp_path / "site"})
    with pytest.raises(NotEnoughSpace, match="publish to another local: folder"):
        check_step(site, 4 << 30)


@pytest.fixture
def small_disk(tmp_path):
    """A 128 MB file system of its own (tmpfs), unmounted afterwards."""
    import subprocess

    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"no tmpfs can be mounted here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_the_disk_is_checked_again_before_each_step(small, small_disk):
    """The disk fills up while the run goes on (here: when its first step is done): the next step is
    refused before it starts, the finished one kept, nothing of the refused one written."""
    import shutil

    from upload_common.contract import SPACE_MARGIN
    from upload_common.errors import NotEnoughSpace
    from upload_driver.config import request
    from upload_driver.run import execute

    work = small_disk / "work"
    req = request(small["sft"], work=str(work), formats="lora,gguf", quants=("Q4_K_M",), runtime="local")
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("[1/") and ": done in" in line:  # someone else fills the disk
            free = shutil.disk_usage(small_disk).free
            (small_disk / "filler").write_bytes(b"\0" * (free - SPACE_MARGIN - (256 << 10)))

    with pytest.raises(NotEnoughSpace, match=r"step merged_16bit needs ~\d+ MB at its peak .* free now") as e:
        execute(req, log=log)
    assert e.value.exit_code == 1 and "\n" not in e.value.message
    assert (work / "artifacts" / "lora" / "manifest.json").is_file()
    assert not list((work / "artifacts").glob("merged_16bit*"))
    assert not any("merged_16bit: merge-tool" in line for line in lines)
