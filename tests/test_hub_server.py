"""The test Hub (tests/servers/hub.py) driven by the REAL huggingface_hub client, asserting on what the server stored.

The client runs in this process, pointed at the server with ``HfApi(endpoint=hub.url)``: in huggingface_hub 2.4.0
every call made on behalf of an ``HfApi`` (preupload, LFS batch, commit, tree, paths-info, resolve) uses that
endpoint, and the LFS upload goes to the absolute ``href`` the server returns. Three module constants are read at
call time and are patched per test (``hf`` fixture): ``HF_HUB_OFFLINE`` (the project's conftest sets it, every
request would raise OfflineModeIsEnabled), ``HF_HUB_DISABLE_XET`` (hf_xet is installed: uploads would go through
Xet, which cannot be served here) and ``HF_HUB_DISABLE_TELEMETRY`` (otherwise the first request builds a user agent
that fetches ``{HF_ENDPOINT}/api/agent-harnesses`` from huggingface.co). ``test_env_configured_subprocess`` checks
the other way in: a separate process configured only through ``HubServer.client_env``.

Behaviours of huggingface_hub 2.4.0 these tests pin down:
- LFS PUTs go through ``http_backoff``: 408/429/5xx and transport errors (reset connection, ...) are retried up to 5
  times, sleeping 1, 2, 4, 8, 8 s; then the error surfaces as ``RuntimeError("Error while uploading '<path>' to the
  Hub.")`` chained to the HfHubHTTPError / httpx2 transport error. The commit POST is sent once, never retried.
- Unchanged files: preupload returns each existing file's ``oid`` (sha256 for LFS, git blob sha1 for regular files);
  the client drops additions whose local oid matches. LFS files still go through the LFS batch call (the server
  answers "already stored": no PUT). When nothing changed no commit is sent: a warning is logged and the CommitInfo
  of the current head (fetched with repo_info) is returned.
- ``create_repo(exist_ok=True)`` on a 409 parses ``url`` from the error body.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from servers.hub import HubServer, git_blob_sha1

WRITE, READ, ALICE_READ = "hf_write_token", "hf_read_token", "hf_alice_read_token"
TOKENS = {
    WRITE: {"user": "alice", "orgs": ["acme"], "role": "write"},
    READ: {"user": "bob", "orgs": [], "role": "read"},
    ALICE_READ: {"user": "alice", "orgs": ["acme"], "role": "read"},
}
BIG = 3 * 1024 * 1024
README = "---\nlicense: apache-2.0\ntags:\n- test\n---\n# Tiny model\n\nFor tests.\n"


@pytest.fixture
def hub(tmp_path):
    with HubServer(tmp_path / "hub-storage", tokens=TOKENS) as server:
        yield server


@pytest.fixture
def hf(monkeypatch):
    """The real huggingface_hub, made to talk HTTP (see the module docstring); backoff sleeps are recorded."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    sleeps: list[float] = []
    # `_http` uses `time` only for the backoff sleep: record it instead of waiting (keeps retry tests fast).
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=sleeps.append))
    return types.SimpleNamespace(hh=huggingface_hub, sleeps=sleeps)


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "model"
    (d / "tokenizer").mkdir(parents=True)
    (d / "README.md").write_text(README)
    (d / "config.json").write_text(json.dumps({"hidden_size": 8, "num_layers": 2}))
    (d / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    (d / "model.safetensors").write_bytes(os.urandom(BIG))
    return d


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def api(hf, hub, token=WRITE):
    return hf.hh.HfApi(endpoint=hub.url, token=token)


def requests_to(hub, method, prefix):
    return [r for r in hub.stats["requests"] if r["method"] == method and r["path"].startswith(prefix)]


def upload(hf, hub, folder, repo_id="alice/tiny", **kw):
    a = api(hf, hub)
    a.create_repo(repo_id, exist_ok=True)
    return a.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload tiny model", **kw)


# --------------------------------------------------------------------------- 1. auth
def test_whoami_and_bad_token(hub, hf):
    me = api(hf, hub).whoami()
    assert me["name"] == "alice"
    assert [o["name"] for o in me["orgs"]] == ["acme"]
    assert me["auth"]["accessToken"]["role"] == "write"

    with pytest.raises(hf.hh.errors.HfHubHTTPError, match="Invalid user token") as e:
        api(hf, hub, token="hf_nope").whoami()
    assert e.value.response.status_code == 401
    # A bad token is refused on any route, reads included.
    with pytest.raises(hf.hh.errors.HfHubHTTPError) as e:
        api(hf, hub, token="hf_nope").create_repo("alice/x")
    assert e.value.response.status_code == 401
    assert "alice/x" not in hub.repos()


# --------------------------------------------------------------------------- 2. create_repo
def test_create_repo_private_and_exist_ok(hub, hf):
    a = api(hf, hub)
    url = a.create_repo("alice/secret", private=True)
    assert url.repo_id == "alice/secret" and url == f"{hub.url}/alice/secret"
    assert hub.repo("alice/secret")["private"] is True and hub.repo("alice/secret")["type"] == "model"

    again = a.create_repo("alice/secret", exist_ok=True)  # 409 -> the client reads "url" and goes on
    assert again == url
    assert [r["status"] for r in requests_to(hub, "POST", "/api/repos/create")] == [200, 409]
    with pytest.raises(hf.hh.errors.HfHubHTTPError) as e:
        a.create_repo("alice/secret")
    assert e.value.response.status_code == 409 and "already created" in str(e.value)

    assert a.create_repo("acme/org-model").repo_id == "acme/org-model"  # an org of the user
    assert hub.repo("acme/org-model")["private"] is False
    for token, repo_id in ((WRITE, "bob/not-mine"), (READ, "bob/read-only")):
        with pytest.raises(hf.hh.errors.HfHubHTTPError) as e:
            api(hf, hub, token).create_repo(repo_id)
        assert e.value.response.status_code == 403
    assert hub.repos() == ["acme/org-model", "alice/secret"]

    # A private repo is a 404 RepoNotFound to anyone without access, visible to its namespace.
    for token in (False, READ):
        with pytest.raises(hf.hh.errors.RepositoryNotFoundError):
            api(hf, hub, token).model_info("alice/secret")
    assert api(hf, hub, ALICE_READ).model_info("alice/secret").private is True


# --------------------------------------------------------------------------- 3. upload
def test_upload_folder_stores_files_with_lfs(hub, hf, folder):
    info = upload(hf, hub, folder)

    assert hub.files("alice/tiny") == local_files(folder)
    commits = hub.commits("alice/tiny")
    assert len(commits) == 1 and info.oid == commits[0]["oid"] and commits[0]["summary"] == "Upload tiny model"
    assert info.commit_url == f"{hub.url}/alice/tiny/commit/{info.oid}"
    assert sorted(commits[0]["files_changed"]) == sorted(local_files(folder))
    stats = hub.stats
    assert stats["commits"] == {"alice/tiny": 1}
    assert stats["lfs_bytes"] == BIG  # the 3 MB file went through LFS ...
    assert [r["status"] for r in requests_to(hub, "PUT", "/lfs-upload/")] == [200]
    assert stats["commit_bytes"] < 10_000  # ... not inline in the commit
    # README.md is validated twice: by upload_folder while listing the folder, then by create_commit.
    assert len(requests_to(hub, "POST", "/api/validate-yaml")) == 2
    put = requests_to(hub, "PUT", "/lfs-upload/")[0]
    assert "authorization" not in {k.lower() for k in put["headers"]}  # the client sends no token to the href
    big_sha = hashlib.sha256(local_files(folder)["model.safetensors"]).hexdigest()
    assert hub.repo("alice/tiny")["lfs_objects"] == [big_sha]


# --------------------------------------------------------------------------- 4. re-upload
def test_reupload_unchanged_folder_sends_nothing(hub, hf, folder):
    first = upload(hf, hub, folder)
    hub.reset_stats()

    again = upload(hf, hub, folder)
    # No change: no commit request, the current head is returned.
    assert again.oid == first.oid and len(hub.commits("alice/tiny")) == 1
    stats = hub.stats
    assert stats["lfs_bytes"] == 0 and stats["commits"] == {} and stats["commit_bytes"] == 0
    assert requests_to(hub, "PUT", "/lfs-upload/") == []
    assert requests_to(hub, "POST", "/api/models/alice/tiny/commit") == []
    # The LFS batch is still asked (and answers "already stored"); preupload carries 512-byte samples only.
    assert len(requests_to(hub, "POST", "/alice/tiny.git/info/lfs/objects/batch")) == 1
    assert stats["bytes_received"] < 10_000

    # One small file changed: only it is committed, the big file is neither re-sent nor re-committed.
    (folder / "config.json").write_text(json.dumps({"hidden_size": 16}))
    hub.reset_stats()
    third = upload(hf, hub, folder)
    commits = hub.commits("alice/tiny")
    assert len(commits) == 2 and commits[-1]["oid"] == third.oid and commits[-1]["parent"] == first.oid
    assert commits[-1]["files_changed"] == ["config.json"]
    assert hub.stats["lfs_bytes"] == 0 and hub.stats["bytes_received"] < 10_000
    assert hub.files("alice/tiny") == local_files(folder)
    assert hub.files("alice/tiny", revision=first.oid)["config.json"] != local_files(folder)["config.json"]


# --------------------------------------------------------------------------- 5. read back
def test_paths_info_tree_and_download_match_local(hub, hf, folder, tmp_path):
    info = upload(hf, hub, folder)
    local = local_files(folder)
    a = api(hf, hub)
    big_sha = hashlib.sha256(local["model.safetensors"]).hexdigest()

    by_path = {
        f.path: f
        for f in a.get_paths_info("alice/tiny", ["model.safetensors", "config.json", "tokenizer", "missing.txt"])
    }
    assert set(by_path) == {"model.safetensors", "config.json", "tokenizer"}
    assert by_path["model.safetensors"].size == BIG and by_path["model.safetensors"].lfs.sha256 == big_sha
    assert by_path["config.json"].lfs is None
    assert by_path["config.json"].blob_id == git_blob_sha1(local["config.json"])
    assert isinstance(by_path["tokenizer"], hf.hh.hf_api.RepoFolder)

    tree = {e.path: e for e in a.list_repo_tree("alice/tiny", recursive=True, expand=True)}
    assert set(tree) == set(local) | {"tokenizer"}
    for path, content in local.items():
        assert tree[path].size == len(content)
        assert tree[path].last_commit.oid == info.oid
        if path == "model.safetensors":
            assert tree[path].lfs.sha256 == big_sha and tree[path].lfs.size == BIG
        else:
            assert tree[path].lfs is None and tree[path].blob_id == git_blob_sha1(content)
    top = [e.path for e in a.list_repo_tree("alice/tiny")]
    assert top == ["tokenizer", "README.md", "config.json", "model.safetensors"]

    siblings = {s.rfilename: s for s in a.model_info("alice/tiny", files_metadata=True).siblings}
    assert siblings["model.safetensors"].lfs.sha256 == big_sha
    assert siblings["config.json"].size == len(local["config.json"])

    anonymous = api(hf, hub, token=False)  # public repo: reads need no token
    for path in ("model.safetensors", "tokenizer/tokenizer_config.json"):
        got = anonymous.hf_hub_download("alice/tiny", path, cache_dir=tmp_path / "cache")
        assert Path(got).read_bytes() == local[path]
    got = a.hf_hub_download("alice/tiny", "README.md", revision=info.oid, local_dir=tmp_path / "dl")
    assert Path(got).read_bytes() == local["README.md"]

    with pytest.raises(hf.hh.errors.EntryNotFoundError):
        a.hf_hub_download("alice/tiny", "nope.bin", cache_dir=tmp_path / "cache")
    with pytest.raises(hf.hh.errors.RevisionNotFoundError):
        a.hf_hub_download("alice/tiny", "README.md", revision="no-such-branch", cache_dir=tmp_path / "cache")
    with pytest.raises(hf.hh.errors.RepositoryNotFoundError):
        a.hf_hub_download("alice/nothing-here", "README.md", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- 6. faults
def test_lfs_put_500_once_is_retried_by_the_client(hub, hf, folder):
    hub.add_fault(method="PUT", path=r"^/lfs-upload/", status=500, times=1)
    upload(hf, hub, folder)
    assert [r["status"] for r in requests_to(hub, "PUT", "/lfs-upload/")] == [500, 200]
    assert hf.sleeps == [1]  # http_backoff: 1 s, then retry
    assert hub.stats["lfs_bytes"] == BIG and hub.files("alice/tiny") == local_files(folder)
    assert len(hub.commits("alice/tiny")) == 1


def test_lfs_put_500_forever_fails_after_5_retries(hub, hf, folder):
    hub.add_fault(method="PUT", path=r"^/lfs-upload/", status=503, times=None)
    with pytest.raises(RuntimeError, match="Error while uploading 'model.safetensors'") as e:
        upload(hf, hub, folder)
    assert isinstance(e.value.__cause__, hf.hh.errors.HfHubHTTPError)
    assert e.value.__cause__.response.status_code == 503
    assert len(requests_to(hub, "PUT", "/lfs-upload/")) == 6 and hf.sleeps == [1, 2, 4, 8, 8]
    assert hub.commits("alice/tiny") == []


def test_dropped_lfs_put_is_retried_then_a_rerun_completes(hub, hf, folder):
    import httpx2

    hub.add_fault(method="PUT", path=r"^/lfs-upload/", action="drop", times=1)
    upload(hf, hub, folder)  # one reset connection: retried
    assert [r["status"] for r in requests_to(hub, "PUT", "/lfs-upload/")] == [None, 200]
    assert hub.files("alice/tiny") == local_files(folder)

    (folder / "model.safetensors").write_bytes(os.urandom(BIG))
    hub.reset_stats()
    fault = hub.add_fault(method="PUT", path=r"^/lfs-upload/", action="drop", times=None)
    with pytest.raises(RuntimeError, match="Error while uploading 'model.safetensors'") as e:
        upload(hf, hub, folder)
    assert isinstance(e.value.__cause__, httpx2.TransportError)  # e.g. WriteError / RemoteProtocolError
    assert fault["hits"] == 6 and len(hub.commits("alice/tiny")) == 1
    assert hub.stats["lfs_bytes"] == 0 and 0 < hub.stats["bytes_received"] < 6 * 300 * 1024

    hub.clear_faults()
    upload(hf, hub, folder)
    assert hub.files("alice/tiny") == local_files(folder) and len(hub.commits("alice/tiny")) == 2


def test_commit_500_is_not_retried_and_a_rerun_skips_uploaded_lfs(hub, hf, folder):
    hub.add_fault(method="POST", path=r"^/api/models/alice/tiny/commit/", status=500, times=1)
    with pytest.raises(hf.hh.errors.HfHubHTTPError) as e:
        upload(hf, hub, folder)
    assert e.value.response.status_code == 500
    assert len(requests_to(hub, "POST", "/api/models/alice/tiny/commit/")) == 1 and hf.sleeps == []
    assert hub.commits("alice/tiny") == [] and hub.stats["lfs_bytes"] == BIG

    hub.reset_stats()
    upload(hf, hub, folder)
    assert hub.stats["lfs_bytes"] == 0 and hub.files("alice/tiny") == local_files(folder)


# --------------------------------------------------------------------------- 7. refusals
def test_read_only_tokens_get_403_and_private_repos_404(hub, hf):
    api(hf, hub).create_repo("alice/tiny")
    api(hf, hub).create_repo("alice/hidden", private=True)
    op = hf.hh.CommitOperationAdd(path_in_repo="a.txt", path_or_fileobj=b"hello")
    for token in (ALICE_READ, READ):  # read role; not a member of "alice"
        with pytest.raises(hf.hh.errors.HfHubHTTPError) as e:
            api(hf, hub, token).create_commit("alice/tiny", [op], commit_message="nope")
        assert e.value.response.status_code == 403 and "rights" in str(e.value)
    with pytest.raises(hf.hh.errors.RepositoryNotFoundError):
        api(hf, hub, READ).create_commit("alice/hidden", [op], commit_message="nope")
    with pytest.raises(hf.hh.errors.HfHubHTTPError) as e:  # no token at all
        api(hf, hub, False).create_commit("alice/tiny", [op], commit_message="nope")
    assert e.value.response.status_code == 401
    assert hub.commits("alice/tiny") == [] and hub.commits("alice/hidden") == []


def test_validate_yaml_400_stops_the_upload_before_any_transfer(hub, hf, folder):
    hub.add_fault(
        method="POST",
        path=r"^/api/validate-yaml$",
        status=400,
        times=None,
        body={"error": "Invalid metadata", "errors": [{"message": "license: not a known license"}]},
    )
    with pytest.raises(ValueError, match="Invalid metadata in README.md.\n- license: not a known license") as e:
        upload(hf, hub, folder)
    assert isinstance(e.value.__cause__, hf.hh.errors.BadRequestError)
    assert "Invalid metadata" in str(e.value.__cause__)  # the "error" field lands in the cause
    assert requests_to(hub, "POST", "/api/models/") == [] and hub.stats["lfs_bytes"] == 0

    hub.clear_faults()  # the server's own check
    (folder / "README.md").write_text("---\nlicense: mit\n# never closed\n")
    with pytest.raises(ValueError, match="not closed"):
        upload(hf, hub, folder)
    assert hub.commits("alice/tiny") == []


def test_parent_commit_mismatch_is_412(hub, hf):
    a = api(hf, hub)
    a.create_repo("alice/tiny")
    first = a.upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id="alice/tiny")
    a.upload_file(path_or_fileobj=b"two", path_in_repo="a.txt", repo_id="alice/tiny", parent_commit=first.oid)
    with pytest.raises(hf.hh.errors.HfHubHTTPError) as e:
        a.upload_file(path_or_fileobj=b"three", path_in_repo="a.txt", repo_id="alice/tiny", parent_commit=first.oid)
    assert e.value.response.status_code == 412
    assert hub.files("alice/tiny") == {"a.txt": b"two"}

    a.delete_file("a.txt", repo_id="alice/tiny")
    assert hub.files("alice/tiny") == {} and hub.commits("alice/tiny")[-1]["files_changed"] == ["a.txt"]


def test_commit_with_unknown_lfs_object_is_refused(hub, hf):
    """Raw protocol: an lfsFile whose object was never uploaded to the repo -> 422, nothing committed."""
    api(hf, hub).create_repo("alice/tiny")
    lines = [
        {"key": "header", "value": {"summary": "sneaky"}},
        {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 3}},
        {"key": "file", "value": {"path": "a.txt", "content": base64.b64encode(b"x").decode(), "encoding": "base64"}},
    ]
    req = urllib.request.Request(
        f"{hub.url}/api/models/alice/tiny/commit/main",
        method="POST",
        data=b"".join(json.dumps(x).encode() + b"\n" for x in lines),
        headers={"Authorization": f"Bearer {WRITE}", "Content-Type": "application/x-ndjson"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 422 and "LFS pointer" in json.loads(e.value.read())["error"]
    assert hub.commits("alice/tiny") == []


def test_env_configured_subprocess(hub, tmp_path):
    """A client process configured only by environment (HF_ENDPOINT, HF_TOKEN, ...), as a CLI would be."""
    script = textwrap.dedent("""
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        api.create_repo("acme/env-model", exist_ok=True)
        api.upload_file(path_or_fileobj=b"\\0" * 2048, path_in_repo="w.gguf", repo_id="acme/env-model")
        print(open(hf_hub_download("acme/env-model", "w.gguf"), "rb").read() == b"\\0" * 2048)
    """)
    env = {**os.environ, **hub.client_env(token=WRITE), "HF_HOME": str(tmp_path / "hf-home")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert hub.files("acme/env-model") == {"w.gguf": b"\0" * 2048}
    assert hub.stats["lfs_bytes"] == 2048  # .gguf: LFS even when small
    assert not [r for r in hub.stats["requests"] if r["status"] == 404]
