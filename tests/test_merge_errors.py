"""Bad input: a one-line error that says what to do, exit code 1, input untouched, nothing that
looks finished."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import no_finished_output, tree_hash
from merge_tool.cli import main
from upload_common.sample import make_base, make_lora_adapter


def merge_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def adapter_copy(tmp_path, llama_base):
    return make_lora_adapter(llama_base, tmp_path / "in put é" / "adapter")


def run_bad(adapter_dir, out, *extra, needles=()):
    before = tree_hash(adapter_dir.parent)
    result = merge_cli("--adapter", adapter_dir, "--out", out, *extra)
    assert_one_line_error(result, *needles)
    assert tree_hash(adapter_dir.parent) == before
    assert no_finished_output(out)
    return result


def test_no_adapter_found(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trainer_state.json").write_text("{}")
    run_bad(tmp_path / "run", tmp_path / "out", needles=["adapter_config.json"])


def test_config_without_weights(adapter_copy, llama_base, tmp_path):
    (adapter_copy / "adapter_model.safetensors").unlink()
    run_bad(adapter_copy, tmp_path / "out", "--base", llama_base, needles=["without weights"])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_adapter(adapter_copy, llama_base, tmp_path, damage):
    f = adapter_copy / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\x01garbage" * 10)
    run_bad(adapter_copy, tmp_path / "out", "--base", llama_base, needles=[f.name])


def test_damaged_base_shard(adapter_copy, llama_base, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(llama_base, base)
    data = (base / "model.safetensors").read_bytes()
    (base / "model.safetensors").write_bytes(data[:-100])
    run_bad(adapter_copy, tmp_path / "out", "--base", base, needles=["truncated"])


def test_adapter_for_another_base(adapter_copy, tmp_path, tokenizer_dir):
    other = make_base(tmp_path / "other", "llama", hidden=96, intermediate=128, heads=4, kv_heads=2)
    run_bad(adapter_copy, tmp_path / "out", "--base", other, needles=["lora_", "shape", "--base"])


def test_adapter_for_base_with_fewer_layers(adapter_copy, tmp_path):
    other = make_base(tmp_path / "other", "llama", layers=1)
    run_bad(adapter_copy, tmp_path / "out", "--base", other, needles=["layers.1", "does not have"])


def test_pickle_adapter_needs_flag(adapter_copy, llama_base, tmp_path):
    import torch
    from safetensors.torch import load_file

    f = adapter_copy / "adapter_model.safetensors"
    torch.save(load_file(f), adapter_copy / "adapter_model.bin")
    f.unlink()
    run_bad(adapter_copy, tmp_path / "out", "--base", llama_base, needles=["--allow-pickle"])
    ok = merge_cli("--adapter", adapter_copy, "--out", tmp_path / "lora", "--method", "lora", "--allow-pickle")
    assert ok.exit_code == 0, ok.output
    assert (
        load_file(tmp_path / "lora" / "adapter_model.safetensors").keys()
        == torch.load(adapter_copy / "adapter_model.bin", weights_only=True).keys()
    )
    ok = merge_cli("--adapter", adapter_copy, "--out", tmp_path / "merged", "--allow-pickle", "--base", llama_base)
    assert ok.exit_code == 0, ok.output


def test_unsafe_pickle_refused(adapter_copy, llama_base, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    (adapter_copy / "adapter_model.safetensors").unlink()
    (adapter_copy / "adapter_model.bin").write_bytes(pickle.dumps(Evil()))
    run_bad(adapter_copy, tmp_path / "out", "--method", "lora", "--allow-pickle", needles=["safely"])
    assert not Path("pwned.txt").exists()


def test_unsupported_peft_type(tmp_path, llama_base):
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_base)
    get_peft_model(
        model, IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])
    ).save_pretrained(tmp_path / "run" / "ia3")
    run_bad(tmp_path / "run" / "ia3", tmp_path / "out", "--base", llama_base, needles=["IA3", "--method lora"])
    lora = merge_cli("--adapter", tmp_path / "run" / "ia3", "--out", tmp_path / "lora", "--method", "lora")
    assert lora.exit_code == 0


def test_refused_config_fields(adapter_copy, llama_base, tmp_path):
    cfg = json.loads((adapter_copy / "adapter_config.json").read_text())
    cfg["layer_replication"] = [[0, 2], [0, 2]]
    (adapter_copy / "adapter_config.json").write_text(json.dumps(cfg))
    run_bad(adapter_copy, tmp_path / "out", "--base", llama_base, needles=["layer replication"])


def test_rank_pattern_contradicting_weights(adapter_copy, llama_base, tmp_path):
    cfg = json.loads((adapter_copy / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {"q_proj": 3}
    (adapter_copy / "adapter_config.json").write_text(json.dumps(cfg))
    run_bad(adapter_copy, tmp_path / "out", "--base", llama_base, needles=["rank 3"])


def test_unknown_method_lists_valid(adapter_copy, tmp_path):
    result = merge_cli("--adapter", adapter_copy, "--out", tmp_path / "out", "--method", "nope")
    assert result.exit_code == 2 and "lora" in result.output and "merged_16bit" in result.output


def test_base_unavailable_offline_cli(adapter_copy, tmp_path):
    """Through the installed console script: exit code, one line, no traceback, HF_HOME honoured."""
    cfg = json.loads((adapter_copy / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "acme/not-in-cache"
    (adapter_copy / "adapter_config.json").write_text(json.dumps(cfg))
    before = tree_hash(adapter_copy)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("UPLOAD_DRIVER_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "merge_tool.cli", "--adapter", str(adapter_copy), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "acme/not-in-cache" in proc.stderr and "--base" in proc.stderr
    assert proc.stdout == ""
    assert tree_hash(adapter_copy) == before and no_finished_output(tmp_path / "out")


def test_output_exists_needs_overwrite(adapter_copy, llama_base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = merge_cli("--adapter", adapter_copy, "--out", out, "--base", llama_base)
    assert_one_line_error(result, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    result = merge_cli("--adapter", adapter_copy, "--out", out, "--base", llama_base, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()


def test_too_little_disk(adapter_copy, llama_base, tmp_path, monkeypatch):
    from upload_common import contract

    real = shutil.disk_usage
    monkeypatch.setattr(contract.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    run_bad(adapter_copy, tmp_path / "out", "--base", llama_base, needles=["needed", "margin", "free"])


def test_failure_leaves_error_json(adapter_copy, llama_base, tmp_path, monkeypatch):
    """A failure after writing started: no output folder, only the partial folder's error.json."""
    from merge_tool.formats import merged_16bit
    from upload_common.errors import InvalidInput

    def boom(*a, **k):
        raise InvalidInput("injected failure while writing")

    monkeypatch.setattr(merged_16bit, "write_index", boom)
    out = tmp_path / "out"
    run_bad(adapter_copy, out, "--base", llama_base, needles=["injected"])
    partial = tmp_path / "out.partial"
    assert [p.name for p in partial.iterdir()] == ["error.json"]
    assert json.loads((partial / "error.json").read_text())["error"]["message"] == "injected failure while writing"


def test_unsloth_engine_refused_without_unsloth_or_gpu(adapter_copy, llama_base, tmp_path):
    run_bad(
        adapter_copy, tmp_path / "out", "--base", llama_base, "--engine", "unsloth", needles=["unsloth", "streaming"]
    )


def test_device_cuda_refused_without_gpu(adapter_copy, llama_base, tmp_path):
    run_bad(adapter_copy, tmp_path / "out", "--base", llama_base, "--device", "cuda", needles=["--device cpu"])
