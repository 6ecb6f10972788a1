"""hf-push-tool's Ollama target against the project's Ollama server (tests/servers/ollama.py),
through the official client: blob, create with the Modelfile's fields, push, retries."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hf_push_tool.cli import main as push_main
from servers.modelfile import parse_modelfile
from servers.ollama import OllamaServer


@pytest.fixture
def ol(tmp_path, monkeypatch):
    with OllamaServer(tmp_path / "ollama") as server:
        monkeypatch.setenv("OLLAMA_HOST", server.host)
        yield server


def push(run_docs, run_artifacts, tmp_path, *extra, out="push"):
    return CliRunner().invoke(
        push_main,
        [
            "--docs",
            str(run_docs),
            "--artifact",
            str(run_artifacts["gguf"]),
            "--set",
            "gguf",
            "--out",
            str(tmp_path / out),
            "--retry-wait",
            "0.01",
            *extra,
        ],
    )


def test_model_created_from_the_modelfile(ol, run_docs, run_artifacts, tmp_path):
    result = push(run_docs, run_artifacts, tmp_path, "--to", "ollama")
    assert result.exit_code == 0, result.output
    gguf = json.loads((run_docs / "upload_manifest.json").read_text())["sets"]["gguf"]
    q4 = next(f for f in gguf["files"] if f["path_in_repo"] == "Tiny-Chat-Q4_K_M.gguf")
    assert ol.blobs == {f"sha256:{q4['sha256']}": q4["size"]}
    model = ol.models["tiny-chat:q4_k_m"]
    fields = parse_modelfile((run_docs / "gguf" / "Modelfile").read_text())
    assert model["files"] == {"Tiny-Chat-Q4_K_M.gguf": f"sha256:{q4['sha256']}"}
    assert model["template"] == fields["template"] and "</s>" in model["parameters"]["stop"]
    assert "llama3.2" in model["license"]
    rec = json.loads((tmp_path / "push" / "manifest.json").read_text())["published"]["ollama"]["gguf"]
    assert rec["model"] == "tiny-chat:q4_k_m" and rec["sent"] == ["Tiny-Chat-Q4_K_M.gguf"] and not rec["pushed"]
    # again: the blob is already there, nothing is uploaded
    ol.reset_stats()
    result = push(run_docs, run_artifacts, tmp_path, "--to", "ollama", out="push2")
    assert result.exit_code == 0, result.output
    assert not [r for r in ol.stats["requests"] if r[0] == "POST" and r[1].startswith("/api/blobs/")]


def test_named_model_pushed(ol, run_docs, run_artifacts, tmp_path):
    result = push(run_docs, run_artifacts, tmp_path, "--to", "ollama:alice/tiny-chat", "--ollama-push")
    assert result.exit_code == 0, result.output
    assert "alice/tiny-chat:latest" in ol.models and [p["model"] for p in ol.pushed] == ["alice/tiny-chat:latest"]


def test_push_needs_a_namespace(ol, run_docs, run_artifacts, tmp_path):
    result = push(run_docs, run_artifacts, tmp_path, "--to", "ollama", "--ollama-push")
    assert result.exit_code == 2 and "ollama:USER/NAME" in result.output and ol.stats["requests"] == []


def test_server_error_once_is_retried(ol, run_docs, run_artifacts, tmp_path):
    ol.add_fault("POST", r"^/api/create$", status=500, times=1)
    result = push(run_docs, run_artifacts, tmp_path, "--to", "ollama")
    assert result.exit_code == 0, result.output
    assert "HTTP 500; retrying" in result.output and "tiny-chat:q4_k_m" in ol.models


def test_unreachable_server_is_retryable(run_docs, run_artifacts, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{port}")
    result = push(run_docs, run_artifacts, tmp_path, "--to", "ollama", "--retries", "2")
    assert result.exit_code == 3 and "run the same command again later" in result.output


def test_refused_create_is_one_line(ol, run_docs, run_artifacts, tmp_path):
    ol.add_fault("POST", r"^/api/create$", status=400, times=None)
    result = push(run_docs, run_artifacts, tmp_path, "--to", "ollama")
    assert result.exit_code == 1 and "Ollama at" in result.output and "answered 400" in result.output
