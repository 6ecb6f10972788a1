"""One skip key: the fingerprint a tool records in its manifest is what ``TOOL ... --fingerprint`` prints
without doing the step, what the driver asks for before it skips a finished step, and nothing else."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import merge_cli, tree_hash
from upload_common import contract
from upload_common.step import Fingerprinted, Step, only_fingerprint
from upload_driver import state
from upload_driver.cli import main as driver

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def test_a_step_asked_only_for_its_fingerprint_writes_nothing(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("abc")
    inputs = {"text": contract.describe_input(src)}
    out = tmp_path / "out"
    with Step("tiny-tool", out, inputs=inputs, params={"text": "x", "device": "cuda"}) as s:
        (s.folder / "t.txt").write_text("x")
    step = Step("tiny-tool", out, inputs=inputs, params={"text": "x", "device": "cpu"})
    with only_fingerprint(), pytest.raises(Fingerprinted) as asked, step:
        raise AssertionError("the step's body does not run")
    assert asked.value.fingerprint == s.manifest["fingerprint"]  # the device says how, not what
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out"]
    with only_fingerprint(), pytest.raises(Fingerprinted) as other, Step("tiny-tool", out, inputs=inputs, params={}):
        pass
    assert other.value.fingerprint != s.manifest["fingerprint"]


def test_each_tool_prints_the_fingerprint_its_manifest_records(sft_output, llama_base, tmp_path):
    out = tmp_path / "merged"
    args = ["--adapter", sft_output, "--base", llama_base, "--out", out, "--method", "merged_16bit"]
    assert merge_cli(*args, "--device", "cpu").exit_code == 0
    recorded = contract.read_manifest(out)["fingerprint"]
    before = tree_hash(out)
    asked = merge_cli(*args, "--device", "auto", "--fingerprint")  # the output is there: --overwrite not needed
    assert asked.exit_code == 0, asked.output
    assert asked.stdout.strip() == recorded and tree_hash(out) == before
    other = merge_cli(*args, "--dtype", "fp32", "--fingerprint")
    assert other.exit_code == 0 and other.stdout.strip() != recorded
    from gguf_tool.cli import main as gguf

    gguf_args = ["--model", out, "--out", tmp_path / "g", "--quant", "Q8_0", "--fingerprint"]
    answer = CliRunner().invoke(gguf, [str(a) for a in gguf_args])
    assert answer.exit_code == 0 and len(answer.stdout.strip()) == 64 and not (tmp_path / "g").exists()


def test_the_driver_skips_on_the_manifests_own_fingerprint(sft_output, tmp_path):
    work = tmp_path / "work"
    args = ["run", sft_output, "--work", work, "--formats", "lora", "--runtime", "local", "--json"]
    first = CliRunner().invoke(driver, [str(a) for a in args], env=NO_DOCKER)
    assert first.exit_code == 0, first.output
    recorded = state.load(work)
    for name in ("lora", "docs"):  # the state keeps the key the tool wrote, no key of its own
        assert recorded[name]["fingerprint"] == contract.read_manifest(work / "artifacts" / name)["fingerprint"]
    # a state that names another key (an earlier version's) is not trusted: the tool's answer decides
    recorded["lora"]["fingerprint"] = "0" * 64
    (work / state.STATE).write_text(json.dumps(recorded))
    again = CliRunner().invoke(driver, [str(a) for a in args], env=NO_DOCKER)
    assert again.exit_code == 0, again.output
    assert [r["skipped"] for r in json.loads(again.stdout)["steps"]] == [False, False]
    third = CliRunner().invoke(driver, [str(a) for a in args], env=NO_DOCKER)
    assert [r["skipped"] for r in json.loads(third.stdout)["steps"]] == [True, True]
