"""docs-tool against hostile or broken input: repo ids and names that would lead a local publish
outside its folder or that the Hub refuses, a quantized card published without a namespace, the
warning about a local base, a full or read-only disk. Every refusal is one line, with nothing written
and the artifact folders untouched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import BASE_ID, tree_hash
from docs_tool.card import check
from docs_tool.cli import main as docs_main
from docs_tool.core import run
from upload_common.errors import UsageError

SETS = ("lora", "merged", "gguf")
DEBUG_HINT = "(set UPLOAD_DRIVER_DEBUG=1"


def _artifact_args(run_artifacts) -> list[str]:
    return [a for k in SETS for a in ("--artifact", str(run_artifacts[k]))]


def _inputs(run_artifacts) -> dict:
    return {k: tree_hash(run_artifacts[k]) for k in SETS}


def _error_line(output: str) -> str:
    """The one error line of a failed run (progress lines and the debug hint aside)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    return errors[0]


def _card(docs, s) -> tuple[dict, str]:
    from huggingface_hub import ModelCard

    text = (docs / s / "README.md").read_text()
    return ModelCard(text).data.to_dict(), text


LONG = "x" * 94  # a valid name alone, but 99 characters with -lora or -GGUF


@pytest.mark.parametrize(
    "args, code, expect",
    [
        (["--namespace", ".."], 2, "--namespace '.."),
        (["--namespace", "a/b"], 2, "--namespace 'a/b' is not a Hub user or organisation name"),
        (["--namespace", ""], 2, "--namespace '"),
        (["--namespace", "alice", "--repo", "gguf=../../x"], 2, "--repo gguf '../../x' is not a valid Hub repo id"),
        (["--repo", "lora=/abs/path"], 2, "--repo lora '/abs/path'"),
        (["--repo", "gguf=acme/../x"], 2, "--repo gguf 'acme/../x'"),
        (["--repo", "merged_16bit=a--b/c"], 2, "--repo merged_16bit 'a--b/c'"),
        (["--repo", "gguf=a/b", "--repo", "gguf=c/d"], 2, "given twice"),
        (["--repo", "gguf"], 2, "SET=VALUE"),
        (["--repo", "merged=a--b/c"], 2, "unknown set(s) merged"),  # the set is merged_16bit
        (
            ["--namespace", "alice", "--name", "Tiny-Chat", "--repo", "gguf=ALICE/tiny-chat"],
            2,
            "the merged_16bit and gguf sets would both be published to ALICE/tiny-chat",
        ),
        (["--name", "../x"], 2, "pass e.g. --name x"),
        (["--name", "acme/x"], 2, "the namespace goes in --namespace"),
        (["--name", "my model"], 2, "pass e.g. --name my-model"),
        (["--name", ""], 2, "--name ''"),
        (["--name", "x" * 200], 2, "at most 96 characters"),
        (["--namespace", "alice", "--name", LONG], 2, "over the Hub's 96: pass a --name of at most 91 characters"),
    ],
    ids=lambda v: repr(v)[:60] if isinstance(v, list) else None,
)
def test_a_repo_id_or_name_the_hub_refuses_is_one_line_before_any_work(run_artifacts, tmp_path, args, code, expect):
    before = _inputs(run_artifacts)
    out = tmp_path / "docs"
    result = CliRunner().invoke(docs_main, [*_artifact_args(run_artifacts), "--out", str(out), *args])
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a known error, not a crash
    assert expect in _error_line(result.output)
    assert not out.exists() and not out.with_name("docs.partial").exists()
    assert _inputs(run_artifacts) == before


def test_the_command_line_says_it_in_one_line_and_exit_2(run_artifacts, tmp_path):
    """The whole process: the config's [docs] repos = {gguf = "../../ESCAPED"} reaches docs-tool as --repo."""
    out = tmp_path / "docs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "docs_tool.cli",
            *_artifact_args(run_artifacts),
            "--out",
            str(out),
            "--namespace",
            "alice",
            "--repo",
            "gguf=../../ESCAPED",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "'../../ESCAPED' is not a valid Hub repo id" in _error_line(proc.stderr)
    assert [line for line in proc.stderr.splitlines() if not line.startswith(("error: ", DEBUG_HINT))] == []
    assert proc.stdout == "" and not out.exists() and not (tmp_path / "ESCAPED").exists()


def test_the_longest_names_the_hub_takes_pass_and_one_more_is_refused():
    from docs_tool.sets import repo_ids

    repos = repo_ids("n" * 91, "alice", ["lora", "merged_16bit", "gguf"])
    assert repos["gguf"] == "alice/" + "n" * 91 + "-GGUF" and repos["merged_16bit"] == "alice/" + "n" * 91
    with pytest.raises(UsageError, match="at most 91 characters, or --repo lora=NAMESPACE/NAME"):
        repo_ids("n" * 92, "alice", ["lora", "merged_16bit", "gguf"])


def test_a_default_name_is_made_valid_not_refused(run_artifacts, tmp_path):
    """Only a name the user typed is refused; one made from the run's folder is made into a name the
    Hub takes (accents dropped, '--' and '..' collapsed)."""
    lora = tmp_path / "lora"
    shutil.copytree(run_artifacts["lora"], lora)
    m = json.loads((lora / "manifest.json").read_text())
    m["decisions"]["adapter"]["path"] = str(tmp_path / "Wéird--run..ünï" / "checkpoint-30")
    (lora / "manifest.json").write_text(json.dumps(m))
    manifest = run([lora], tmp_path / "docs", namespace="alice")
    assert manifest["sets"]["lora"]["repo_id"] == "alice/Weird-run.uni-lora"


def test_a_quantized_card_names_the_merged_repo_when_it_is_a_hub_id(run_docs):
    meta, text = _card(run_docs, "gguf")
    assert meta["base_model"] == "alice/Tiny-Chat" and meta["base_model_relation"] == "quantized"
    assert "Quantized from the merged model [alice/Tiny-Chat](https://huggingface.co/alice/Tiny-Chat)." in text
    entry = json.loads((run_docs / "upload_manifest.json").read_text())["sets"]["gguf"]
    assert (entry["base_model"], entry["relation"]) == ("alice/Tiny-Chat", "quantized")


def test_without_a_namespace_a_quantized_card_names_the_base_it_was_fine_tuned_from(run_artifacts, tmp_path):
    """A local publish: the merged repo 'Tiny-Chat' is no Hub id, so the GGUF card names the Hub id of
    the base (as a fine-tune of it) instead of naming no base at all."""
    out = tmp_path / "docs"
    run([run_artifacts[k] for k in SETS], out, name="Tiny-Chat")
    upload = json.loads((out / "upload_manifest.json").read_text())
    assert {s: e["repo_id"] for s, e in upload["sets"].items()} == {
        "lora": "Tiny-Chat-lora",
        "merged_16bit": "Tiny-Chat",
        "gguf": "Tiny-Chat-GGUF",
    }
    meta, text = _card(out, "gguf")
    assert meta["base_model"] == BASE_ID and meta["base_model_relation"] == "finetune"
    assert "Quantized from the merged model `Tiny-Chat`." in text and check(text) == []
    assert (upload["sets"]["gguf"]["base_model"], upload["sets"]["gguf"]["relation"]) == (BASE_ID, "finetune")
    for s in ("lora", "merged_16bit"):
        assert _card(out, s)[0]["base_model"] == BASE_ID


def test_a_local_base_warning_names_the_driver_options_too(run_artifacts, tmp_path):
    merged = tmp_path / "merged"
    shutil.copytree(run_artifacts["merged"], merged)
    m = json.loads((merged / "manifest.json").read_text())
    m["decisions"]["base"] = {"source": "local", "repo_id": None, "requested": "/models/base", "path": "/models/base"}
    (merged / "manifest.json").write_text(json.dumps(m))
    result = CliRunner().invoke(
        docs_main, ["--artifact", str(merged), "--out", str(tmp_path / "docs"), "--namespace", "alice"]
    )
    assert result.exit_code == 0, result.output
    warning = (
        "WARNING: the base model is a local folder, not a Hub id: the cards name no base_model; pass "
        "--base-model ORG/NAME (upload-driver run --base-model, or base_model in the config's [docs] table)"
    )
    assert warning in result.output
    assert "base_model" not in _card(tmp_path / "docs", "merged_16bit")[0]


@pytest.mark.parametrize(
    "options, expect", [("size=64k", "the disk is full"), ("size=64k,ro", "the file system is read-only")]
)
def test_a_full_or_read_only_disk_is_one_line(run_artifacts, tmp_path, options, expect):
    """Three loss plots (about 30 kB each), a Modelfile and the cards do not fit in 64 kB: the OS error
    surfaces as one line, with no finished output and only error.json in the partial folder."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], check=True, capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {exc}")
    try:
        before = _inputs(run_artifacts)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "docs_tool.cli",
                *_artifact_args(run_artifacts),
                "--out",
                str(disk / "docs"),
                "--namespace",
                "alice",
                "--name",
                "Tiny-Chat",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1, proc.stderr
        assert expect in _error_line(proc.stderr)
        assert not (disk / "docs").exists() and not list(disk.rglob("manifest.json"))
        partial = disk / "docs.partial"
        if "ro" in options.split(","):
            assert not partial.exists()
        else:  # the partial folder was emptied, which leaves room for the error
            assert {p.name for p in partial.iterdir()} == {"error.json"}
            error = json.loads((partial / "error.json").read_text())["error"]
            assert (error["kind"], error["errno"], error["exit_code"]) == ("os_error", "ENOSPC", 1)
        assert _inputs(run_artifacts) == before
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)
