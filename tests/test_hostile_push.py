"""hf-push-tool against hostile input and hostile places: an edited upload manifest (paths and repo
ids leading outside the target, a hash that no longer matches docs-tool's step manifest), a symbolic
link planted in the target, servers that accept a request and never answer, a server asking to be
left alone (Retry-After), a read-only and a full target folder. Each ends in one line, the right exit
code, nothing written outside the target, nothing recorded as done."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import point_hub_client
from hf_push_tool.cli import main as push_main

TOKEN = "hf_hostile_write_TOKEN_77"
TOKENS = {TOKEN: {"user": "alice", "orgs": [], "role": "write"}}


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


def invoke(*args):
    return CliRunner().invoke(push_main, [str(a) for a in args])


def sets_args(run_artifacts, docs, out, *keys):
    return ["--docs", docs, *[a for k in keys for a in ("--artifact", run_artifacts[k])], "--out", out]


def push_lora(run_artifacts, docs, tmp_path, *extra):
    return invoke(*sets_args(run_artifacts, docs, tmp_path / "push", "lora"), "--set", "lora", *extra)


def one_line_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def files_under(root: Path, *skip: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not any(p == s or s in p.parents for s in skip)}


def reseal(docs: Path) -> None:
    """Record the upload manifest's new sha256 in docs-tool's step manifest (an edit that also edits
    the step manifest: the values themselves must be refused)."""
    step = json.loads((docs / "manifest.json").read_text())
    digest = hashlib.sha256((docs / "upload_manifest.json").read_bytes()).hexdigest()
    for o in step["outputs"]:
        if o["path"] == "upload_manifest.json":
            o["sha256"], o["size"] = digest, (docs / "upload_manifest.json").stat().st_size
    (docs / "manifest.json").write_text(json.dumps(step))


def edited_docs(run_docs: Path, tmp_path: Path, edit, seal: bool = True) -> Path:
    docs = tmp_path / "work" / "docs"
    shutil.copytree(run_docs, docs)
    upload = json.loads((docs / "upload_manifest.json").read_text())
    edit(upload["sets"]["lora"], tmp_path)
    (docs / "upload_manifest.json").write_text(json.dumps(upload, indent=2))
    if seal:
        reseal(docs)
    return docs


def _path_in_repo(value):
    def edit(entry, tmp_path):
        card = next(f for f in entry["files"] if f["path_in_repo"] == "README.md")
        card["path_in_repo"] = value(tmp_path) if callable(value) else value

    return edit


def _repo_id(value):
    def edit(entry, tmp_path):
        entry["repo_id"] = value(tmp_path) if callable(value) else value

    return edit


def _source_path(entry, tmp_path):
    card = next(f for f in entry["files"] if f["path_in_repo"] == "README.md")
    card["path"] = "../../../../../../../../etc/hostname"


EDITS = {
    "path_in_repo ../../escape.txt": (_path_in_repo("../../escape.txt"), "not a relative path"),
    "path_in_repo ../../../escape.txt": (_path_in_repo("../../../escape.txt"), "not a relative path"),
    "absolute path_in_repo": (_path_in_repo(lambda t: str(t / "abs-escape.txt")), "not a relative path"),
    "repo_id ../../ESCAPED": (_repo_id("../../ESCAPED"), "not a valid Hub repo id"),
    "repo_id /abs": (_repo_id(lambda t: str(t / "ABS")), "not a valid Hub repo id"),
    "repo_id ..": (_repo_id(".."), "not a valid Hub repo id"),
    "file read from outside its folder": (_source_path, "not a relative path"),
}


@pytest.mark.parametrize("case", list(EDITS))
@pytest.mark.parametrize("target", ["local", "hf"])
def test_edited_upload_manifest_is_refused(case, target, run_docs, run_artifacts, tmp_path, hub):
    edit, message = EDITS[case]
    docs = edited_docs(run_docs, tmp_path, edit)
    site = tmp_path / "box" / "site"
    before = files_under(tmp_path, tmp_path / "hub-storage")
    result = push_lora(run_artifacts, docs, tmp_path, "--to", f"local:{site}" if target == "local" else "hf")
    one_line_error(result, 1, message)
    assert files_under(tmp_path, tmp_path / "hub-storage", tmp_path / "push.partial") == before
    assert not site.exists() and not (tmp_path / "push").exists()
    assert (tmp_path / "push.partial" / "error.json").is_file() or not (tmp_path / "push.partial").exists()
    assert hub.stats["requests"] == []  # refused before the token was even checked


def test_upload_manifest_not_matching_the_docs_step_is_refused(run_docs, run_artifacts, tmp_path, hub):
    def retitle(entry, tmp_path):
        entry["title"] = "A safe new title"

    docs = edited_docs(run_docs, tmp_path, retitle, seal=False)
    site = tmp_path / "site"
    for target in (f"local:{site}", "hf"):
        result = push_lora(run_artifacts, docs, tmp_path, "--to", target)
        one_line_error(result, 1, "changed since docs-tool wrote it", "rerun docs-tool")
    assert not site.exists() and hub.stats["requests"] == []
    (docs / "manifest.json").unlink()  # no step manifest at all: not a finished docs-tool output
    result = push_lora(run_artifacts, docs, tmp_path, "--to", f"local:{site}")
    one_line_error(result, 1, "manifest.json", "docs-tool")
    assert not site.exists()


def test_edited_card_is_refused(run_docs, run_artifacts, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(run_docs, docs)
    card = bytearray((docs / "lora" / "README.md").read_bytes())
    card[-2] = ord("X") if card[-2] != ord("X") else ord("Y")  # same size, other content
    (docs / "lora" / "README.md").write_bytes(bytes(card))
    site = tmp_path / "site"
    result = push_lora(run_artifacts, docs, tmp_path, "--to", f"local:{site}")
    one_line_error(result, 1, "changed since docs-tool wrote it")
    assert not site.exists()


def test_repo_without_namespace_is_local_only(run_docs, run_artifacts, tmp_path, hub):
    docs = edited_docs(run_docs, tmp_path, _repo_id("Tiny-Solo"))
    result = push_lora(run_artifacts, docs, tmp_path, "--to", "hf")
    one_line_error(result, 1, "has no namespace")
    assert hub.stats["requests"] == []
    site = tmp_path / "site"
    result = push_lora(run_artifacts, docs, tmp_path, "--to", f"local:{site}")
    assert result.exit_code == 0, result.output
    assert (site / "Tiny-Solo" / "README.md").is_file() and (site / "Tiny-Solo" / ".upload-driver.json").is_file()


@pytest.mark.parametrize("plant", ["repo folder", "file", "namespace folder"])
def test_symlink_in_the_target_is_not_written_through(plant, run_docs, run_artifacts, tmp_path):
    site, outside = tmp_path / "site", tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    repo = site / "alice" / "Tiny-Chat-lora"
    if plant == "file":
        repo.mkdir(parents=True)
        (repo / "README.md").symlink_to(victim)
    elif plant == "repo folder":
        repo.parent.mkdir(parents=True)
        repo.symlink_to(outside, target_is_directory=True)
    else:
        site.mkdir()
        (site / "alice").symlink_to(outside, target_is_directory=True)
    result = push_lora(run_artifacts, run_docs, tmp_path, "--to", f"local:{site}")
    one_line_error(result, 1, "leads outside")
    assert victim.read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert not list(site.rglob(".upload-driver.json")) and not (tmp_path / "push").exists()


def test_planted_temporary_links_are_replaced_not_followed(run_docs, run_artifacts, tmp_path):
    site, victim = tmp_path / "site", tmp_path / "victim.txt"
    victim.write_text("keep me")
    repo = site / "alice" / "Tiny-Chat-lora"
    repo.mkdir(parents=True)
    (repo / ".README.md.partial").symlink_to(victim)
    (repo / ".upload-driver.json.tmp").symlink_to(victim)
    result = push_lora(run_artifacts, run_docs, tmp_path, "--to", f"local:{site}")
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me"
    assert (repo / "README.md").read_bytes() == (run_docs / "lora" / "README.md").read_bytes()
    assert not [p for p in repo.iterdir() if p.is_symlink()]


# ------------------------------------------------------------------------------------------ stalled servers


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


# ------------------------------------------------------------------------------------ read-only, full disk


def _mount(args: list[str], where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", *args, str(where)], capture_output=True, timeout=30).returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True, timeout=30)


@pytest.fixture
def mounted(tmp_path):
    """mount(kind) -> folder: a tmpfs mounted there (read-only, or of 256 KiB), unmounted afterwards; a
    test that cannot mount (no privilege) is skipped, saying so."""
    done = []

    def mount(kind: str) -> Path:
        where = tmp_path / f"mnt-{kind}"
        opts = {"ro": "ro,size=1m", "full": "size=256k"}[kind]
        if not _mount(["-t", "tmpfs", "-o", opts, "tmpfs"], where):
            pytest.skip("mounting a tmpfs needs privileges this test run does not have")
        done.append(where)
        return where

    yield mount
    for where in done:
        _umount(where)


def test_read_only_target(mounted, run_docs, run_artifacts, tmp_path):
    site = mounted("ro")
    result = push_lora(run_artifacts, run_docs, tmp_path, "--to", f"local:{site / 'site'}")
    one_line_error(result, 1, "read-only", "choose a writable folder")
    assert not (tmp_path / "push").exists() and (tmp_path / "push.partial" / "error.json").is_file()


def test_forbidden_target(run_docs, run_artifacts, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root may write into a folder without write permission: see test_read_only_target")
    site = tmp_path / "site"
    site.mkdir()
    site.chmod(0o555)
    try:
        result = push_lora(run_artifacts, run_docs, tmp_path, "--to", f"local:{site}")
    finally:
        site.chmod(0o755)
    one_line_error(result, 1, "permission denied")
    assert list(site.iterdir()) == []


def test_full_disk_target(mounted, run_docs, run_artifacts, tmp_path):
    upload = json.loads((run_docs / "upload_manifest.json").read_text())
    assert (
        upload["sets"]["merged_16bit"]["files"]
        and sum(f["size"] for f in upload["sets"]["merged_16bit"]["files"]) > 256 << 10
    )  # more than the disk holds
    site = mounted("full")
    result = invoke(
        *sets_args(run_artifacts, run_docs, tmp_path / "push", "merged"),
        "--set",
        "merged_16bit",
        "--to",
        f"local:{site}",
    )
    one_line_error(result, 1, "the disk is full", "free some space")
    assert not list(site.rglob("*.partial")) and not list(site.rglob("*.tmp"))
    assert not list(site.rglob(".upload-driver.json")) and not (tmp_path / "push").exists()
    assert (tmp_path / "push.partial" / "error.json").is_file()
