"""upload-driver finds every mistake before the first step: bad options and config, a missing or refused
token, a stalled Hub, no Ollama, a target it cannot write or one inside the trainer output or the artifacts, a
full disk, a tokenizer only its code defines; the dry run reports the same findings, and doctor asks gguf-tool
where llama.cpp is. Runs on one work folder and a step's process are tested in test_hostile_driver.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import tree_hash
from driver_helpers import drive, one_line_error


@pytest.fixture
def no_token(tmp_path, monkeypatch):
    """No token anywhere, and huggingface_hub online (the Hub itself is never reached: no token)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--quant", "Q4_K_X"], 2, "unknown quantization 'Q4_K_X'"),
        (["--quant", "IQ2_XS"], 2, "IQ2_XS need an importance matrix"),
        (["--push", "local:"], 2, "name the folder to publish into"),
        (["--push", "hf:acme/x"], 1, "no Hugging Face token"),
        (
            ["--config", "REPOS", "--push", "local:SITE"],
            2,
            "[docs] repos gguf = '../../ESCAPED' is not a valid Hub repo id",
        ),
        (["--base-model", "not a repo"], 2, "--base-model 'not a repo' is not a valid Hub repo id"),
        (["--config", "missing.toml"], 2, "config file"),
    ],
)
def test_mistakes_stop_the_run_before_any_step(sft_output, tmp_path, no_token, args, code, says):
    before = tree_hash(sft_output)
    (tmp_path / "repos.toml").write_text('[docs]\nrepos = {gguf = "../../ESCAPED"}\n')
    args = [a.replace("SITE", str(tmp_path / "site")).replace("REPOS", str(tmp_path / "repos.toml")) for a in args]
    result = local_run(sft_output, tmp_path / "w", *args)
    assert says in one_line_error(result, code)
    assert not (tmp_path / "w" / "artifacts").exists() and not (tmp_path / "site").exists()
    assert tree_hash(sft_output) == before


def local_run(trainer, work, *args, env=None):
    """upload-driver run with local processes (no Docker engine to be found)."""
    return drive("run", trainer, "--work", work, "--runtime", "local", *args, env=env)


def test_dry_run_reports_the_same_findings(sft_output, tmp_path, no_token):
    result = local_run(sft_output, tmp_path / "w", "--push", "hf:acme/x", "--quant", "Q4_K_X", "--dry-run")
    assert result.exit_code == 0, result.output
    assert (
        "PROBLEM: unknown quantization 'Q4_K_X'" in result.stdout
        and "PROBLEM: no Hugging Face token" in result.stdout
        and "the run would stop before its first step: 2 problem(s)" in result.stdout
    )
    assert not (tmp_path / "w").exists()


def test_local_target_inside_the_trainer_output_or_unwritable(sft_output, tmp_path):
    result = local_run(sft_output, tmp_path / "w", "--formats", "lora", "--push", f"local:{sft_output / 'published'}")
    assert "overlaps the trainer output" in one_line_error(result, 2)
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only file system here (needs root)")
    try:
        result = local_run(sft_output, tmp_path / "w", "--formats", "lora", "--push", f"local:{ro / 'site'}")
        assert "cannot be written" in one_line_error(result, 2) and not (tmp_path / "w" / "artifacts").exists()
        result = local_run(sft_output, ro / "w", "--formats", "lora")
        assert "the work folder" in one_line_error(result, 2)
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_full_disk_is_found_before_the_first_step(sft_output, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        result = local_run(sft_output, small / "w", "--formats", "merged_16bit")
        line = one_line_error(result, 1)
        assert "the plan writes ~" in line and "MB margin" in line and not (small / "w" / "artifacts").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_no_ollama_server_is_found_before_the_first_step(sft_output, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = local_run(sft_output, tmp_path / "w", "--push", "ollama", env={"OLLAMA_HOST": f"127.0.0.1:{port}"})
    assert f"no Ollama server answers at http://127.0.0.1:{port}" in one_line_error(result, 1)
    assert not (tmp_path / "w" / "artifacts").exists()


TOKENS = {
    "hf_w": {"user": "alice", "orgs": ["acme"], "role": "write"},
    "hf_r": {"user": "alice", "orgs": [], "role": "read"},
}


@pytest.fixture
def hub_tokens():
    """The `hub` fixture (conftest.py) with these tokens."""
    return TOKENS


@pytest.mark.parametrize(
    "token, target, says",
    [
        ("hf_r", "hf:alice/x", "read-only"),
        ("hf_w", "hf:bob/x", "cannot create repos under bob"),
        ("hf_nope", "hf:alice/x", "refused the token (401)"),
    ],
)
def test_the_token_is_checked_against_the_hub_before_the_first_step(
    hub, sft_output, tmp_path, monkeypatch, token, target, says
):
    monkeypatch.setenv("HF_TOKEN", token)
    result = local_run(sft_output, tmp_path / "w", "--push", target)
    assert says in one_line_error(result, 1) and not (tmp_path / "w" / "artifacts").exists()


def test_a_stalled_hub_does_not_hang_the_driver(hub, sft_output, tmp_path, monkeypatch):
    from upload_driver import preflight

    monkeypatch.setenv("HF_TOKEN", "hf_w")
    monkeypatch.setattr(preflight, "NET_WAIT", 1.0)
    hub.add_fault("GET", r"/api/whoami", action="delay", delay=8.0)
    result = local_run(sft_output, tmp_path / "w", "--push", "hf:alice/x")
    line = one_line_error(result, 1)  # given up on the driver's own 1 s bound, not after the server's 8 s
    assert hub.url.split("//")[1] in line and "did not answer within 1 s" in line, line
    assert not (tmp_path / "w" / "artifacts").exists()


def test_a_tokenizer_only_its_code_defines_stops_the_run_before_any_step(sft_output, tmp_path):
    import shutil

    run_dir = Path(shutil.copytree(sft_output, tmp_path / "run"))
    marker = tmp_path / "ran"
    (run_dir / "tok.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    cfg = json.loads((run_dir / "tokenizer_config.json").read_text())
    cfg.update(auto_map={"AutoTokenizer": ["tok.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
    (run_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    before = tree_hash(run_dir)
    result = local_run(run_dir, tmp_path / "w")
    assert "never runs code" in one_line_error(result, 1) and "EvilTokenizer" in result.output
    assert not (tmp_path / "w" / "artifacts").exists() and not marker.exists() and tree_hash(run_dir) == before


def test_a_local_target_inside_the_artifacts_is_refused(sft_output, tmp_path):
    result = local_run(
        sft_output, tmp_path / "w", "--formats", "lora", "--push", f"local:{tmp_path / 'w' / 'artifacts' / 'site'}"
    )
    assert "overlaps the artifacts" in one_line_error(result, 2)


def test_doctor_asks_gguf_tool_itself_where_llama_cpp_is(tmp_path):
    result = drive("doctor", "--json", "--work", tmp_path, env={"UPLOAD_DRIVER_LLAMA_CPP_DIR": str(tmp_path / "none")})
    found = {f["check"]: f for f in json.loads(result.stdout)}["llama.cpp (local)"]
    assert found["status"] == "warning" and "converter is not set up" in found["detail"]
    assert found["remedy"].startswith("gguf-tool setup")
