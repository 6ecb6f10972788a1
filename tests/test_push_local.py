"""hf-push-tool's local target and the checks made before anything is sent; the card's snippets run
against the published folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hf_push_tool.cli import main as push_main
from hf_push_tool.core import run
from upload_common.contract import sha256_file


def artifact_args(run_artifacts, *keys):
    return [a for k in keys or ("lora", "merged", "gguf") for a in ("--artifact", str(run_artifacts[k]))]


@pytest.fixture(scope="module")
def published(run_docs, run_artifacts, tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    manifest = run(
        run_docs,
        [run_artifacts[k] for k in ("lora", "merged", "gguf")],
        root / "push",
        targets=[f"local:{root / 'site'}"],
    )
    return root, manifest


def test_local_layout_is_the_hub_layout(published, run_docs):
    root, manifest = published
    upload = json.loads((run_docs / "upload_manifest.json").read_text())
    for s, entry in upload["sets"].items():
        repo = root / "site" / entry["repo_id"]
        assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == sorted(
            f["path_in_repo"] for f in entry["files"]
        )
        for f in entry["files"]:
            assert sha256_file(repo / f["path_in_repo"]) == f["sha256"]
        rec = manifest["published"][f"local:{root / 'site'}"][s]
        assert rec["verified"] == len(entry["files"]) and len(rec["sent"]) == len(entry["files"])
    assert (root / "site" / "alice" / "Tiny-Chat-lora" / "README.md").read_text() == (
        run_docs / "lora" / "README.md"
    ).read_text()


def test_republish_sends_nothing(published, run_docs, run_artifacts):
    root, _ = published
    again = run(
        run_docs,
        [run_artifacts[k] for k in ("lora", "merged", "gguf")],
        root / "push2",
        targets=[f"local:{root / 'site'}"],
    )
    for rec in again["published"][f"local:{root / 'site'}"].values():
        assert rec["sent"] == [] and rec["bytes_sent"] == 0


def _snippet(card: str, marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    return next(b for b in blocks if marker in b)


@pytest.mark.parametrize("s, marker", [("merged_16bit", "AutoModelForCausalLM"), ("lora", "AutoPeftModelForCausalLM")])
def test_card_snippets_run(published, run_artifacts, s, marker):
    """The card's Python usage, run as written against the published folder (the repo id replaced by
    the folder, which is what from_pretrained resolves locally); the adapter's base comes from the
    offline HF cache the run was made with."""
    root, manifest = published
    rec = manifest["published"][f"local:{root / 'site'}"][s]
    card = (root / "site" / rec["repo_id"] / "README.md").read_text()
    code = _snippet(card, marker).replace(f'"{rec["repo_id"]}"', repr(rec["path"]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(run_artifacts["root"] / "hf-cache")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.endswith("\n")  # it ran to the final print


def test_gguf_snippet_runs(published):
    root, manifest = published
    rec = manifest["published"][f"local:{root / 'site'}"]["gguf"]
    card = (root / "site" / rec["repo_id"] / "README.md").read_text()
    code = _snippet(card, "llama_cpp")
    m = re.search(r'Llama\.from_pretrained\(repo_id="([^"]+)", filename="([^"]+)"\)', code)
    assert m and m.group(1) == rec["repo_id"]
    local = f"Llama(model_path={str(root / 'site' / m.group(1) / m.group(2))!r}, verbose=False)"
    code = code.replace(m.group(0), local)
    out = {}
    exec(compile(code.replace("print(", "out['text'] = ("), "<gguf card>", "exec"), {"out": out})  # noqa: S102
    assert isinstance(out["text"], str)


def test_dry_run_sends_nothing(run_docs, run_artifacts, tmp_path):
    result = CliRunner().invoke(
        push_main,
        [
            "--docs",
            str(run_docs),
            *artifact_args(run_artifacts),
            "--to",
            f"local:{tmp_path / 'site'}",
            "--to",
            "hf",
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "alice/Tiny-Chat-GGUF" in result.stdout and "Tiny-Chat-Q4_K_M.gguf" in result.stdout
    assert not (tmp_path / "site").exists()
    result = CliRunner().invoke(
        push_main,
        [
            "--docs",
            str(run_docs),
            *artifact_args(run_artifacts),
            "--dry-run",
            "--json",
            "--set",
            "gguf",
            "--to",
            "ollama",
        ],
    )
    plan = json.loads(result.stdout)["plan"]
    assert [(r["set"], r["destination"], r["files"]) for r in plan] == [("gguf", "tiny-chat:q4_k_m", 1)]


def test_changed_artifact_is_refused(run_docs, run_artifacts, tmp_path):
    lora = tmp_path / "lora"
    shutil.copytree(run_artifacts["lora"], lora)
    data = bytearray((lora / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 1  # same size, other content
    (lora / "adapter_model.safetensors").write_bytes(bytes(data))
    site = tmp_path / "site"
    result = CliRunner().invoke(
        push_main,
        [
            "--docs",
            str(run_docs),
            "--artifact",
            str(lora),
            "--set",
            "lora",
            "--out",
            str(tmp_path / "push"),
            "--to",
            f"local:{site}",
        ],
    )
    assert result.exit_code == 1 and "changed since its step wrote it" in result.output
    assert not list(site.rglob("adapter_model.safetensors")) and not list(site.rglob("*.partial"))
    assert not (tmp_path / "push").exists() and (tmp_path / "push.partial" / "error.json").is_file()


def test_missing_inputs(run_docs, run_artifacts, tmp_path):
    result = CliRunner().invoke(
        push_main,
        [
            "--docs",
            str(run_docs),
            *artifact_args(run_artifacts, "lora"),
            "--out",
            str(tmp_path / "p"),
            "--to",
            f"local:{tmp_path}",
        ],
    )
    assert result.exit_code == 1 and "merged_16bit set's folder was not given" in result.output
    result = CliRunner().invoke(push_main, ["--docs", str(tmp_path), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and "upload_manifest.json" in result.output
    result = CliRunner().invoke(
        push_main,
        ["--docs", str(run_docs), *artifact_args(run_artifacts), "--to", "ftp:x", "--out", str(tmp_path / "p")],
    )
    assert result.exit_code == 2 and "local:DIR" in result.output
    result = CliRunner().invoke(
        push_main,
        ["--docs", str(run_docs), *artifact_args(run_artifacts), "--set", "awq", "--out", str(tmp_path / "p")],
    )
    assert result.exit_code == 2 and "holds lora" in result.output
    result = CliRunner().invoke(push_main, ["--docs", str(run_docs), *artifact_args(run_artifacts)])
    assert result.exit_code == 2 and "--out is required" in result.output


def test_files_over_the_hub_limit_are_refused_before_anything(run_docs, run_artifacts, tmp_path):
    """A 50 GB + 1 byte file (sparse: it costs no disk) is refused by hf-push-tool before it sends, and by
    docs-tool before it writes a card for it."""
    from docs_tool.core import run as docs_run
    from upload_common.errors import InvalidInput

    gguf, docs = tmp_path / "gguf", tmp_path / "docs"
    shutil.copytree(run_artifacts["gguf"], gguf)
    shutil.copytree(run_docs, docs)
    huge = 50 * 10**9 + 1
    with open(gguf / "Tiny-Chat-Q8_0.gguf", "r+b") as f:
        f.truncate(huge)
    upload = json.loads((docs / "upload_manifest.json").read_text())
    for f in upload["sets"]["gguf"]["files"]:
        if f["path_in_repo"] == "Tiny-Chat-Q8_0.gguf":
            f["size"] = huge
    (docs / "upload_manifest.json").write_text(json.dumps(upload))
    result = CliRunner().invoke(
        push_main,
        [
            "--docs",
            str(docs),
            "--artifact",
            str(gguf),
            "--set",
            "gguf",
            "--to",
            f"local:{tmp_path / 'site'}",
            "--out",
            str(tmp_path / "push"),
        ],
    )
    assert result.exit_code == 1 and "50 GB per-file limit" in result.output and "--split-max-size" in result.output
    assert not (tmp_path / "site").exists()
    manifest = json.loads((gguf / "manifest.json").read_text())
    for o in manifest["outputs"]:
        if o["path"] == "Tiny-Chat-Q8_0.gguf":
            o["size"] = huge
    (gguf / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidInput, match="50 GB per-file limit"):
        docs_run([gguf], tmp_path / "docs2")
    assert not (tmp_path / "docs2").exists()
