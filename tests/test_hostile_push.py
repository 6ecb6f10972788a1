"""hf-push-tool against hostile input and hostile places: an edited upload manifest (paths and repo
ids leading outside the target, a hash that no longer matches docs-tool's step manifest), a symbolic
link planted in the target, a read-only and a full target folder. Each ends in one line, the right exit
code, nothing written outside the target, nothing recorded as done. Stalled servers and Retry-After are
tested in test_hostile_push_network.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from push_helpers import TOKENS, invoke, one_line_error, push_lora, sets_args


@pytest.fixture
def hub_tokens():
    """The `hub` fixture (conftest.py) with these tokens; TOKEN in HF_TOKEN."""
    return TOKENS


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
