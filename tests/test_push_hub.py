"""hf-push-tool against the project's Hub server (tests/servers/hub.py), driven through the real
huggingface_hub client: what the server stored, commits, re-push, faults, errors, the token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hf_push_tool.cli import main as push_main

TOKEN = "hf_secret_write_TOKEN_4242"
TOKENS = {
    TOKEN: {"user": "alice", "orgs": ["acme"], "role": "write"},
    "hf_readonly": {"user": "alice", "orgs": [], "role": "read"},
    "hf_bob": {"user": "bob", "orgs": [], "role": "write"},
}
SETS = ("lora", "merged", "gguf")


@pytest.fixture
def hub_tokens():
    """The `hub` fixture (conftest.py) with these tokens; TOKEN in HF_TOKEN."""
    return TOKENS


def push(run_docs, run_artifacts, out, *extra, sets=SETS):
    args = [
        "--docs",
        str(run_docs),
        *[a for k in sets for a in ("--artifact", str(run_artifacts[k]))],
        "--out",
        str(out),
        "--retry-wait",
        "0.01",
        *extra,
    ]
    return CliRunner().invoke(push_main, args)


def upload_manifest(run_docs):
    return json.loads((run_docs / "upload_manifest.json").read_text())


def test_push_stores_every_set_in_one_commit(hub, run_docs, run_artifacts, tmp_path):
    from huggingface_hub import ModelCard

    result = push(run_docs, run_artifacts, tmp_path / "push", "--private")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "push" / "manifest.json").read_text())
    import hashlib

    for s, entry in upload_manifest(run_docs)["sets"].items():
        stored = hub.files(entry["repo_id"])
        assert {p: hashlib.sha256(b).hexdigest() for p, b in stored.items()} == {
            f["path_in_repo"]: f["sha256"] for f in entry["files"]
        }
        assert hub.stats["commits"][entry["repo_id"]] == 1 and hub.repo(entry["repo_id"])["private"]
        rec = manifest["published"]["hf"][s]
        assert rec["commit"] == hub.commits(entry["repo_id"])[-1]["oid"]
        assert rec["commit_url"].endswith(f"/{entry['repo_id']}/commit/{rec['commit']}")
        assert rec["verified"] == len(entry["files"]) and rec["unchanged"] == []
        card = ModelCard(stored["README.md"].decode())
        assert card.data.library_name == {"lora": "peft", "merged_16bit": "transformers", "gguf": "gguf"}[s]
    assert manifest["published"]["hf"]["user"] == "alice"
    assert "alice/Tiny-Chat-GGUF" in result.stdout


def test_repush_sends_no_file(hub, run_docs, run_artifacts, tmp_path):
    assert push(run_docs, run_artifacts, tmp_path / "p1").exit_code == 0
    hub.reset_stats()
    result = push(run_docs, run_artifacts, tmp_path / "p2")
    assert result.exit_code == 0, result.output
    assert hub.stats["lfs_bytes"] == 0 and hub.stats["commit_bytes"] == 0 and hub.stats["commits"] == {}
    rec = json.loads((tmp_path / "p2" / "manifest.json").read_text())["published"]["hf"]
    assert all(r["sent"] == [] and r["bytes_sent"] == 0 for k, r in rec.items() if k != "user")
    assert all(r["verified"] for k, r in rec.items() if k != "user")


def test_server_error_once_is_retried(hub, run_docs, run_artifacts, tmp_path):
    fault = hub.add_fault(method="POST", path=r"/commit/", status=500, times=1)
    result = push(run_docs, run_artifacts, tmp_path / "push", "--set", "merged_16bit", sets=("merged",))
    assert result.exit_code == 0, result.output
    assert fault["hits"] == 1 and hub.stats["commits"] == {"alice/Tiny-Chat": 1}
    assert "HTTP 500; retrying" in result.output


def test_dropped_connection_then_rerun_sends_only_what_is_missing(hub, run_docs, run_artifacts, tmp_path):
    gguf = upload_manifest(run_docs)["sets"]["gguf"]
    lfs = [f for f in gguf["files"] if f["path_in_repo"].endswith(".gguf")]
    # every LFS PUT of the Q8_0 file is dropped half way: the client's own retries and ours run out
    hub.add_fault(
        method="PUT",
        path=lfs[1]["sha256"] if "Q8_0" in lfs[1]["path_in_repo"] else lfs[0]["sha256"],
        action="drop",
        times=None,
    )
    result = push(run_docs, run_artifacts, tmp_path / "push", "--set", "gguf", "--retries", "2", sets=("gguf",))
    assert result.exit_code == 3, result.output
    assert "run the same command again later" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "push").exists() and hub.stats["commits"] == {}
    stored_before = hub.stats["lfs_bytes"]
    assert stored_before > 0  # the other file made it to the server
    hub.clear_faults()
    hub.reset_stats()
    result = push(run_docs, run_artifacts, tmp_path / "push", "--set", "gguf", sets=("gguf",))
    assert result.exit_code == 0, result.output
    q8 = next(f for f in lfs if "Q8_0" in f["path_in_repo"])
    assert hub.stats["lfs_bytes"] == q8["size"]  # only the file that never arrived
    assert hub.stats["commits"] == {"alice/Tiny-Chat-GGUF": 1}


@pytest.mark.parametrize(
    "token, fault, message",
    [
        ("hf_not_a_token", None, "refused the token (401)"),
        ("hf_readonly", None, "read-only"),
        ("hf_bob", None, "may not write to alice/Tiny-Chat-lora (403)"),
        (
            TOKEN,
            {
                "method": "POST",
                "path": r"/commit/",
                "status": 409,
                "body": {"error": "A repo with this name already exists"},
            },
            "name conflict",
        ),
        (
            TOKEN,
            {
                "method": "POST",
                "path": r"^/api/repos/create$",
                "status": 404,
                "body": {"error": "Organization not found"},
            },
            "or its namespace was not found (404)",
        ),
        (
            TOKEN,
            {
                "method": "POST",
                "path": r"/api/validate-yaml",
                "status": 400,
                "body": {"errors": [{"message": '"license" must be one of [apache-2.0, mit]'}]},
            },
            'the Hub rejected the model card of alice/Tiny-Chat-lora: "license" must be one of',
        ),
    ],
)
def test_known_errors_are_one_line(hub, run_docs, run_artifacts, tmp_path, monkeypatch, token, fault, message):
    monkeypatch.setenv("HF_TOKEN", token)
    if fault:
        hub.add_fault(times=None, **fault)
    result = push(run_docs, run_artifacts, tmp_path / "push", "--set", "lora", sets=("lora",))
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert (tmp_path / "push.partial" / "error.json").is_file() and not (tmp_path / "push").exists()


def test_no_token_stops_before_anything(hub, run_docs, run_artifacts, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = push(run_docs, run_artifacts, tmp_path / "push")
    assert result.exit_code == 1 and "set HF_TOKEN" in result.output
    assert hub.stats["requests"] == []


def test_real_command_line_never_shows_the_token(hub, run_docs, run_artifacts, tmp_path):
    """The installed command, configured only through the environment; the token appears nowhere it
    wrote, printed or stored in the cards."""
    env = {**os.environ, **hub.client_env(TOKEN), "UPLOAD_DRIVER_DEBUG": "0", "HF_HOME": str(tmp_path / "hf-home")}
    out = tmp_path / "push"
    cmd = [
        sys.executable,
        "-m",
        "hf_push_tool.cli",
        "--docs",
        str(run_docs),
        *[a for k in SETS for a in ("--artifact", str(run_artifacts[k]))],
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["published"]["hf"]["user"] == "alice"
    texts = [proc.stdout, proc.stderr]
    texts += [p.read_text(errors="replace") for p in [*out.rglob("*"), *run_docs.rglob("*")] if p.is_file()]
    texts += [b.decode(errors="replace") for repo in hub.repos() for b in hub.files(repo).values()]
    assert not any(TOKEN in t for t in texts)
    # and a failure, with the traceback shown, does not print it either
    hub.add_fault(method="POST", path=r"/preupload/", status=403, times=None)
    env["UPLOAD_DRIVER_DEBUG"] = "1"
    proc = subprocess.run([*cmd[:-1], "--overwrite"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and TOKEN not in proc.stderr + proc.stdout


def test_card_snippets_download_from_the_hub(hub, run_docs, run_artifacts, tmp_path):
    """The GGUF card's llama-cpp-python snippet and the merged card's transformers snippet, run as
    written in a fresh process whose HF_ENDPOINT is the server."""
    assert push(run_docs, run_artifacts, tmp_path / "push").exit_code == 0
    env = {**os.environ, **hub.client_env(None), "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_TOKEN", None)
    for repo, marker in (("alice/Tiny-Chat-GGUF", "llama_cpp"), ("alice/Tiny-Chat", "AutoModelForCausalLM")):
        card = hub.files(repo)["README.md"].decode()
        code = next(b for b in re.findall(r"```python\n(.*?)```", card, re.DOTALL) if marker in b)
        proc = subprocess.run(
            [sys.executable, "-c", code.replace("Llama.from_pretrained(", "Llama.from_pretrained(verbose=False, ")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.endswith("\n")
