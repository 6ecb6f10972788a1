"""The command lines as a user runs them: merge-tool's output and inspect, and the sample job."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from conftest import tree_hash
from merge_tool.cli import main as merge_main
from upload_driver.cli import main as driver_main


def test_inspect_prints_json(sft_output):
    before = tree_hash(sft_output)
    result = CliRunner().invoke(merge_main, ["inspect", str(sft_output)])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["adapter"]["source"] == "root" and found["checkpoints"] == [10, 20, 30]
    assert found["trainer"]["kind"] == "sft" and found["tokenizer"]["chat_template"]
    result = CliRunner().invoke(merge_main, ["inspect", str(sft_output), "--checkpoint", "20"])
    assert json.loads(result.output)["adapter"]["step"] == 20
    assert tree_hash(sft_output) == before


def test_merge_cli_prints_path_or_manifest(sft_output, llama_base, tmp_path):
    out = tmp_path / "out dir ü"
    result = CliRunner().invoke(
        merge_main,
        [
            "--adapter",
            str(sft_output),
            "--out",
            str(out),
            "--base",
            str(llama_base),
            "--checkpoint",
            "20",
            "--method",
            "lora",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decisions"]["adapter"]["step"] == 20
    assert {o["path"] for o in manifest["outputs"]} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.model",
        "tokenizer_config.json",
    }
    again = CliRunner().invoke(
        merge_main, ["--adapter", str(sft_output), "--out", str(tmp_path / "j"), "--method", "lora", "--json"]
    )
    assert json.loads(again.stdout)["tool"]["name"] == "merge-tool"


def test_merge_cli_needs_adapter_and_out():
    result = CliRunner().invoke(merge_main, [])
    assert result.exit_code == 2 and "--adapter" in result.output


def test_debug_variable_shows_traceback(tmp_path):
    import os

    env = {**os.environ, "UPLOAD_DRIVER_DEBUG": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "merge_tool.cli", "--adapter", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_demo_runs_the_sample_job(tmp_path):
    """The README's first command: sample made on the fly, every step run as a local process, published
    to a local folder laid out as the Hub would be."""
    work = tmp_path / "demo"
    result = CliRunner().invoke(driver_main, ["demo", "--work", str(work), "--json", "--runtime", "local"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["steps"]
    assert [r["step"] for r in rows] == ["lora", "merged_16bit", "gguf", "docs", "publish-local"]
    site = work / "published"
    assert sorted(p.name for p in site.iterdir()) == ["sample-chat", "sample-chat-GGUF", "sample-chat-lora"]
    gguf = json.loads((work / "artifacts" / "gguf" / "manifest.json").read_text())
    assert gguf["files"]["Q8_0"]["validation"]["top1_agreement"] >= 0.97  # a trained sample: checks mean something
    assert "license: apache-2.0" in (site / "sample-chat" / "README.md").read_text()
    assert (site / "sample-chat-GGUF" / "Modelfile").is_file()
    merged = site / "sample-chat"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    # a second run reuses the sample and finds every step up to date
    result = CliRunner().invoke(driver_main, ["demo", "--work", str(work), "--json", "--runtime", "local"])
    assert result.exit_code == 0, result.output
    assert all(r["skipped"] for r in json.loads(result.stdout)["steps"])
