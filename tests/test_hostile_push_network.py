"""hf-push-tool against hostile places on the network: servers that accept a request and never answer (the
Hub's token check and commit, Ollama), a bad timeout, a server asking to be left alone (Retry-After), the
library's own retries bounded by the budget. Each ends in one line and the right exit code, nothing recorded
as done. Hostile input and target folders are tested in test_hostile_push.py."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import point_hub_client
from push_helpers import TOKEN, TOKENS, invoke, one_line_error, push_lora, sets_args


@pytest.fixture
def hub_tokens():
    """The `hub` fixture (conftest.py) with these tokens; TOKEN in HF_TOKEN."""
    return TOKENS


@pytest.fixture
def hub_backoff_waits():
    """The client's own backoff sleeps are real here: their length is part of what is tested."""
    return True


class StallServer:
    """Accepts connections on 127.0.0.1, reads each request's head, and never answers."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.sock.close()
        for c in self._conns:
            c.close()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn):
        head = b""
        try:
            while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                head += chunk
        except OSError:
            return
        self.requests.append((time.monotonic(), head.split(b"\r\n", 1)[0]))
        self._stop.wait(120)


def test_stalled_whoami_ends_with_exit_3(run_docs, run_artifacts, tmp_path, monkeypatch):
    with StallServer() as stall:
        point_hub_client(monkeypatch, tmp_path, f"http://127.0.0.1:{stall.port}", TOKEN)
        result = push_lora(run_artifacts, run_docs, tmp_path, "--timeout", "2")
    one_line_error(
        result,
        3,
        f"checking the token: 127.0.0.1:{stall.port} did not answer within 2 s",
        "run the same command again later",
    )
    assert len(stall.requests) == 3 and all(b"whoami" in r for _, r in stall.requests)
    assert not (tmp_path / "push").exists()


def test_stalled_commit_ends_with_exit_3(hub, run_docs, run_artifacts, tmp_path):
    """The Hub answers everything but the commit: the commit is retried until the budget (five
    timeouts) is spent, then one line naming the host and the operation."""
    stall = hub.add_fault(method="POST", path=r"/commit/", action="delay", delay=40, times=None)
    result = push_lora(run_artifacts, run_docs, tmp_path, "--timeout", "2")
    port = hub.url.rsplit(":", 1)[1]
    one_line_error(result, 3, f"pushing alice/Tiny-Chat-lora: 127.0.0.1:{port} did not answer within 2 s")
    assert 2 <= stall["hits"] <= 4
    assert hub.stats["commits"] == {} and not (tmp_path / "push").exists()
    assert (tmp_path / "push.partial" / "error.json").is_file()


def test_stalled_ollama_ends_with_exit_3(run_docs, run_artifacts, tmp_path, monkeypatch):
    with StallServer() as stall:
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{stall.port}")
        monkeypatch.setenv("UPLOAD_DRIVER_NET_TIMEOUT", "2")  # the environment variable, no option
        result = invoke(
            *sets_args(run_artifacts, run_docs, tmp_path / "push", "gguf"), "--set", "gguf", "--to", "ollama"
        )
    one_line_error(result, 3, f"asking Ollama for the GGUF: 127.0.0.1:{stall.port} did not answer within 2 s")
    assert stall.requests and all(r.startswith(b"HEAD /api/blobs/") for _, r in stall.requests)
    assert not (tmp_path / "push").exists()


def test_bad_timeout_is_a_usage_error(run_docs, run_artifacts, tmp_path, monkeypatch):
    monkeypatch.setenv("UPLOAD_DRIVER_NET_TIMEOUT", "soon")
    result = push_lora(run_artifacts, run_docs, tmp_path)
    one_line_error(result, 2, "UPLOAD_DRIVER_NET_TIMEOUT")
    result = push_lora(run_artifacts, run_docs, tmp_path, "--timeout", "-1")
    one_line_error(result, 2, "--timeout")


def test_retry_after_is_honoured(hub, run_docs, run_artifacts, tmp_path, monkeypatch):
    from hf_push_tool import retry

    slept = []
    monkeypatch.setattr(retry.time, "sleep", slept.append)  # the waits hf-push-tool makes, recorded, not taken
    hub.add_fault(
        method="POST",
        path=r"^/api/repos/create$",
        status=429,
        headers={"Retry-After": "3"},
        times=1,
        body={"error": "slow down"},
    )
    result = push_lora(run_artifacts, run_docs, tmp_path, "--retry-wait", "0.01")
    assert result.exit_code == 0, result.output
    creates = [r for r in hub.stats["requests"] if r["path"] == "/api/repos/create"]
    assert [r["status"] for r in creates] == [429, 200]
    assert slept == [3.0]  # the server's Retry-After, not --retry-wait
    assert "HTTP 429; retrying in 3.0 s" in result.stderr


def test_retry_after_beyond_the_budget_gives_up_at_once(hub, run_docs, run_artifacts, tmp_path):
    hub.add_fault(method="POST", path=r"^/api/repos/create$", status=429, headers={"Retry-After": "86400"}, times=None)
    result = push_lora(run_artifacts, run_docs, tmp_path, "--timeout", "2")
    one_line_error(result, 3, "creating alice/Tiny-Chat-lora: 127.0.0.1:", "asked to wait 86400 s")
    assert len([r for r in hub.stats["requests"] if r["path"] == "/api/repos/create"]) == 1


def test_library_retries_are_bounded_by_the_budget(hub, run_docs, run_artifacts, tmp_path):
    """huggingface_hub retries the preupload call itself (on 5xx, with its own backoff); with a 4 s
    budget the guarded transport refuses its next attempt, and hf-push-tool gives up."""
    hub.add_fault(method="POST", path=r"/preupload/", status=503, times=None)
    result = push_lora(run_artifacts, run_docs, tmp_path, "--retry-budget", "4")
    one_line_error(result, 3, "pushing alice/Tiny-Chat-lora: 127.0.0.1:", "answered HTTP 503")
    preuploads = [r for r in hub.stats["requests"] if "/preupload/" in r["path"]]
    assert 2 <= len(preuploads) <= 5  # the library alone would try 6 times, 23 s of backoff
