"""Hostile numbers and a hostile disk: no NaN or infinity is ever published (merge-tool refuses an
adapter or output tensor holding one, validation refuses a model computing one), and a full disk or
a read-only folder is one line, exit 1, error.json where there is room, nothing that looks finished.
Disks are real: small tmpfs mounts (skipped, with the reason, where mounting is not allowed)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import no_finished_output, tree_hash
from upload_common.contract import partial_path
from upload_common.errors import InvalidInput, SystemFault
from upload_common.sample import make_lora_adapter

LAYER_WEIGHT = "model.layers.0.mlp.down_proj.weight"
LORA_B = "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"
LORA_A = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"


@contextlib.contextmanager
def deadline(seconds: int):
    """Bound an in-process run: a hang becomes a failure instead of a stuck suite."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds}s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False):
    """A real small file system at ``folder``, always unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(proc.stderr or proc.stdout).strip() or proc.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def fill(folder: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of the file system holding ``folder``."""
    free = shutil.disk_usage(folder).free
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        os.posix_fallocate(fd, 0, free - leave)
    finally:
        os.close(fd)


def cli(module: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """A tool's real command line in its own process, known errors without tracebacks."""
    env = {k: v for k, v in os.environ.items() if k != "UPLOAD_DRIVER_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", f"{module}.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def in_process(main, *args, seconds: int = 300):
    with deadline(seconds):
        return CliRunner().invoke(main, [str(a) for a in args])


def one_line(code: int, text: str, *needles: str) -> str:
    assert code == 1, text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def assert_json_finite(root: Path) -> None:
    """Every JSON file below ``root`` is strict JSON: no NaN, Infinity or -Infinity anywhere."""

    def refuse(token):
        raise AssertionError(f"non-finite number {token}")

    for p in Path(root).rglob("*.json"):
        json.loads(p.read_text(encoding="utf-8"), parse_constant=refuse)


def only_error_json(out: Path) -> dict:
    partial = partial_path(out)
    assert [p.name for p in partial.iterdir()] == ["error.json"]
    return json.loads((partial / "error.json").read_text())["error"]


def rewrite_tensor(file: Path, name: str, change) -> None:
    """Change one tensor of a safetensors file with the safetensors library itself."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(file), "pt") as f:
        names = f.keys()  # safe_open lists its tensors but is not iterable itself
        tensors, metadata = {k: f.get_tensor(k) for k in names}, f.metadata()
    tensors[name] = change(tensors[name].clone())
    save_file(tensors, str(file), metadata=metadata)


@pytest.fixture
def adapter(tmp_path, llama_base) -> Path:
    return make_lora_adapter(llama_base, tmp_path / "in put" / "adapter", base_name=str(llama_base))


def set_first(value: float):
    def change(t):
        t.view(-1)[0] = value
        return t

    return change


# --- merge-tool: NaN/Inf in, nothing out ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "merged_16bit"])
def test_nan_in_adapter_refused_before_any_work(adapter, llama_base, tmp_path, method):
    from merge_tool.cli import main

    rewrite_tensor(adapter / "adapter_model.safetensors", LORA_B, set_first(float("nan")))
    before = tree_hash(adapter.parent)
    out = tmp_path / "out"
    result = in_process(main, "--adapter", adapter, "--out", out, "--method", method, "--base", llama_base)
    one_line(result.exit_code, result.output, LORA_B, "NaN", "--checkpoint")
    assert tree_hash(adapter.parent) == before
    assert no_finished_output(out) and not partial_path(out).exists()  # refused before writing started
    assert_json_finite(tmp_path)


@pytest.mark.parametrize("tensor", ["model.embed_tokens.weight", LAYER_WEIGHT])  # copied as is / merged
def test_inf_in_base_refused_naming_the_tensor(adapter, llama_base, tmp_path, tensor):
    from merge_tool.cli import main

    base = tmp_path / "base"
    shutil.copytree(llama_base, base)
    rewrite_tensor(base / "model.safetensors", tensor, set_first(float("inf")))
    before = tree_hash(base), tree_hash(adapter.parent)
    out = tmp_path / "out"
    result = in_process(main, "--adapter", adapter, "--out", out, "--method", "merged_16bit", "--base", base)
    line = one_line(result.exit_code, result.output, tensor, "NaN/infinite", "base", "--base")
    assert (tree_hash(base), tree_hash(adapter.parent)) == before
    assert no_finished_output(out)
    assert only_error_json(out)["tensor"] == tensor and tensor in line
    assert_json_finite(tmp_path)


def test_update_beyond_fp16_refused(adapter, llama_base, tmp_path):
    """A finite adapter whose merged weights exceed fp16's range: refused with --dtype fp16, fine in bf16."""
    import torch

    from merge_tool.cli import main

    rewrite_tensor(adapter / "adapter_model.safetensors", LORA_B, lambda t: torch.full_like(t, 3e4))
    rewrite_tensor(adapter / "adapter_model.safetensors", LORA_A, torch.ones_like)
    before = tree_hash(adapter.parent)
    out = tmp_path / "out"
    result = in_process(main, "--adapter", adapter, "--out", out, "--base", llama_base, "--dtype", "fp16")
    one_line(result.exit_code, result.output, LAYER_WEIGHT, "float16 range", "--dtype bf16")
    assert tree_hash(adapter.parent) == before and no_finished_output(out)
    assert only_error_json(out)["tensor"] == LAYER_WEIGHT
    ok = in_process(main, "--adapter", adapter, "--out", tmp_path / "bf16", "--base", llama_base, "--dtype", "bf16")
    assert ok.exit_code == 0, ok.output
    assert_json_finite(tmp_path)


# --- validation: a model computing NaN is refused, its figures never written ---------------------------


def test_quality_compare_refuses_non_finite():
    import numpy as np

    from upload_common.quality import compare

    good = np.log(np.full((5, 4), 0.25))
    assert compare(good, good)["top1_agreement"] == 1.0
    ref = good.copy()
    ref[1:3] = np.nan
    with pytest.raises(InvalidInput, match=r"the reference model produces NaN/infinite log-probabilities at 2 of 5"):
        compare(ref, good)
    got = good.copy()
    got[4, 0] = -np.inf
    with pytest.raises(InvalidInput, match=r"the GGUF model .* at 1 of 5 positions") as info:
        compare(good, got, names=("Hugging Face", "GGUF"))
    assert "\n" not in info.value.message and json.dumps(info.value.to_dict(), allow_nan=False)


def test_gguf_validation_of_nan_model_fails_in_one_line(sft_output, llama_base, tmp_path):
    from merge_tool.core import run as merge_run

    merged = tmp_path / "merged"
    with deadline(300):
        merge_run(sft_output, merged, base=str(llama_base))
    rewrite_tensor(merged / "model.safetensors", LAYER_WEIGHT, set_first(float("nan")))  # broken after the merge
    before = tree_hash(merged)
    out = tmp_path / "steps" / "gguf"
    proc = cli("gguf_tool", "--model", merged, "--out", out, "--quant", "F16", "--validate-tokens", 16)
    one_line(proc.returncode, proc.stderr, "validation", "NaN/infinite log-probabilities", "Hugging Face")
    assert tree_hash(merged) == before and no_finished_output(out)
    assert only_error_json(out)["kind"] == "invalid_input"
    assert_json_finite(tmp_path)


# --- a full disk, a read-only folder ------------------------------------------------------------------


def test_write_stream_full_disk_raises_the_writers_oserror(tmp_path):
    """ENOSPC in the writing thread reaches the caller intact: errno, the file named, the file closed,
    the thread gone, no hang."""
    import torch

    from upload_common.st_io import write_stream

    specs = {"w": {"dtype": "F32", "shape": [1024, 1024]}}  # 4 MB into 1 MB

    def blocks(name):
        for _ in range(16):
            yield torch.ones(64, 1024)

    with tmpfs(tmp_path / "disk", "1m") as disk:
        threads = threading.active_count()
        target = disk / "x.safetensors"
        with deadline(60), pytest.raises(OSError) as info:
            write_stream(target, ["w"], specs, blocks)
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
        assert any(frame.name == "writer" for frame in traceback.extract_tb(info.value.__traceback__))
        open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
        assert str(target) not in open_files
        assert threading.active_count() == threads


@pytest.mark.parametrize(
    "method, written", [("merged_16bit", "model.safetensors"), ("lora", "adapter_model.safetensors")]
)
def test_merge_on_a_disk_that_fills_up(adapter, llama_base, tmp_path, monkeypatch, method, written):
    """The up-front space check passes, then the disk fills (another program): one line naming the
    file being written (not the input), exit 1, error.json, nothing finished."""
    from merge_tool.cli import main
    from upload_common import step as core  # the Step makes the disk check

    real_check = core.check_free_space
    with tmpfs(tmp_path / "disk", "80m") as disk:

        def check_then_fill(out, need):
            decision = real_check(out, need)
            fill(disk, 32 << 10)  # far less than the merged model
            return decision

        monkeypatch.setattr(core, "check_free_space", check_then_fill)
        before = tree_hash(adapter.parent)
        out = disk / "merged"
        result = in_process(
            main, "--adapter", adapter, "--out", out, "--method", method, "--base", llama_base, seconds=120
        )
        one_line(result.exit_code, result.output, "the disk is full", "free some space")
        assert tree_hash(adapter.parent) == before and no_finished_output(out)
        error = only_error_json(out)
        assert error["errno"] == "ENOSPC" and error["path"] == str(partial_path(out) / written)
        assert_json_finite(disk)


def test_loss_plot_on_a_full_disk(tmp_path):
    from docs_tool.plot import loss_curve

    summary = {"loss_history": [[10, 2.5], [20, 1.2], [30, 0.8]]}
    with tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk, 4 << 10)
        with deadline(60), pytest.raises(SystemFault) as info:
            loss_curve(summary, disk / "loss.png", "training loss")
        assert "\n" not in info.value.message
        assert "the disk is full" in info.value.message and "loss.png" in info.value.message
        assert not (disk / "loss.png").exists()


def test_docs_tool_plot_into_a_full_disk(sft_output, tmp_path, monkeypatch):
    from docs_tool import plot
    from docs_tool.cli import main as docs_main
    from merge_tool.core import run as merge_run

    lora = tmp_path / "lora"
    with deadline(300):
        merge_run(sft_output, lora, method="lora")
    seen = []
    real_curve = plot.loss_curve

    def spy(*args, **kwargs):
        try:
            return real_curve(*args, **kwargs)
        except Exception as exc:
            seen.append(exc)
            raise

    monkeypatch.setattr(plot, "loss_curve", spy)
    with tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk, 8 << 10)  # room for the card's folder, not for the plot
        out = disk / "docs"
        result = in_process(docs_main, "--artifact", lora, "--out", out, "--name", "tiny", seconds=120)
        one_line(result.exit_code, result.output, "the disk is full", "loss.png")
        assert [type(e) for e in seen] == [SystemFault]
        assert no_finished_output(out)
        assert only_error_json(out)["errno"] == "ENOSPC"


@pytest.mark.parametrize("method", ["lora", "merged_16bit"])
def test_read_only_out_parent(adapter, llama_base, tmp_path, method):
    before = tree_hash(adapter.parent)
    with tmpfs(tmp_path / "ro", "200m", read_only=True) as ro:
        proc = cli("merge_tool", "--adapter", adapter, "--out", ro / "out", "--method", method, "--base", llama_base)
        one_line(proc.returncode, proc.stderr, "read-only", "choose a writable folder")
        assert proc.stdout == "" and no_finished_output(ro / "out")
    assert tree_hash(adapter.parent) == before


# --- progress ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["merged_16bit", "lora"])
def test_merge_progress_reaches_100_percent(sft_output, llama_base, tmp_path, method):
    proc = cli(
        "merge_tool", "--adapter", sft_output, "--out", tmp_path / "out", "--method", method, "--base", llama_base
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{method} -> out: ")]
    percents = [int(line.split(": ")[1].split("%")[0]) for line in lines]
    assert percents and percents[-1] == 100 and percents == sorted(set(percents)), proc.stderr
