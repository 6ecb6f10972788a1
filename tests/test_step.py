"""The step object on its own, driving a tiny tool written here: the contract's order, error.json on
failure, nothing that looks finished after a failure, the disk check before any write."""

from __future__ import annotations

import dataclasses
import json

import pytest

from upload_common import contract, step
from upload_common.errors import NotEnoughSpace, OutputExists, UploadError
from upload_common.step import OutputFile, Produced, Step


def tiny_tool(
    src,
    out,
    *,
    text: str = "hello",
    need: int = 10,
    fail_after_write: bool = False,
    overwrite: bool = False,
    log=lambda m: None,
) -> dict:
    """Copies a text file upper-cased: describe the input, reserve, write, report a known hash."""
    inputs = {"text": contract.describe_input(src)}
    with Step(
        "tiny-tool", out, inputs=inputs, params={"text": text}, overwrite=overwrite, libraries=("pytest",), log=log
    ) as s:
        s.reserve(need)
        with s.timed("write"):
            (s.folder / "upper.txt").write_text(src.read_text().upper())
        if fail_after_write:
            raise UploadError("injected failure after writing", where="tiny-tool")
        s.warn("the text was short")
        s.outputs({"upper.txt": "0" * 64})  # a hash computed while writing is taken as given
    assert isinstance(s.produced, Produced)
    return s.manifest


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("abc")
    return p


def test_a_step_finishes_in_order(src, tmp_path, monkeypatch):
    calls = []

    def spy(name):
        real = getattr(step, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(step, name, wrapper)

    for name in (
        "check_output_free",
        "new_manifest",
        "check_free_space",
        "atomic_output",
        "library_versions",
        "finish_manifest",
    ):
        spy(name)
    logged = []
    out = tmp_path / "out"

    def log(line):
        calls.append("log")
        logged.append((line, out.exists()))

    manifest = tiny_tool(src, out, log=log)
    assert calls == [
        "check_output_free",
        "new_manifest",
        "check_free_space",
        "atomic_output",
        "library_versions",
        "finish_manifest",
        "log",
    ]
    assert logged == [("WARNING: the text was short", True)]  # warnings are told once the output is there
    assert (out / "upper.txt").read_text() == "ABC" and not contract.partial_path(out).exists()
    on_disk = contract.read_manifest(out)
    assert on_disk == manifest
    assert manifest["tool"]["name"] == "tiny-tool" and manifest["parameters"] == {"text": "hello"}
    assert manifest["inputs"]["text"]["sha256"] == contract.sha256_file(src)
    assert manifest["outputs"] == [{"path": "upper.txt", "size": 3, "sha256": "0" * 64}]
    assert manifest["decisions"]["disk"]["needed_bytes"] == 10
    assert {"python", "upload-driver", "pytest"} <= set(manifest["versions"])
    assert set(manifest["timings"]["seconds"]) == {"write", "total"} and manifest["timings"]["finished"]
    assert manifest["warnings"] == ["the text was short"]
    assert manifest["fingerprint"] == contract.step_fingerprint(
        "tiny-tool", manifest["tool"]["version"], manifest["inputs"], manifest["parameters"]
    )


def test_what_a_step_produced_is_a_frozen_record(src, tmp_path):
    out = tmp_path / "out"
    with Step("tiny-tool", out, inputs={}, params={}) as s:
        (s.folder / "a.txt").write_text("a")
    assert s.produced == Produced(out, (OutputFile("a.txt", 1, contract.sha256_file(out / "a.txt")),), ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.produced.out = tmp_path  # type: ignore[misc]


def test_a_failure_after_writing_leaves_only_error_json(src, tmp_path):
    out = tmp_path / "out"
    logged = []
    with pytest.raises(UploadError, match="injected"):
        tiny_tool(src, out, fail_after_write=True, log=logged.append)
    assert not out.exists() and logged == []
    partial = contract.partial_path(out)
    assert [p.name for p in partial.iterdir()] == [contract.ERROR_FILE]
    error = json.loads((partial / contract.ERROR_FILE).read_text())["error"]
    assert error["message"] == "injected failure after writing" and error["where"] == "tiny-tool"


def test_a_failure_keeps_the_earlier_output(src, tmp_path):
    out = tmp_path / "out"
    first = tiny_tool(src, out)
    with pytest.raises(UploadError):
        tiny_tool(src, out, fail_after_write=True, overwrite=True)
    assert contract.read_manifest(out) == first and (out / "upper.txt").read_text() == "ABC"


def test_a_failure_before_writing_leaves_nothing(src, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError), Step("tiny-tool", out, inputs={}, params={}) as s:
        s.reserve(1)
        raise ValueError("refused before writing")
    assert not out.exists() and not contract.partial_path(out).exists()


def test_the_disk_check_comes_before_any_write(src, tmp_path, monkeypatch):
    real = contract.shutil.disk_usage
    monkeypatch.setattr(contract.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    out = tmp_path / "out"
    with pytest.raises(NotEnoughSpace, match="needed"):
        tiny_tool(src, out)
    assert not out.exists() and not contract.partial_path(out).exists()
    monkeypatch.setattr(contract.shutil, "disk_usage", real)
    with (
        pytest.raises(RuntimeError, match="before anything is written"),
        Step("tiny-tool", out, inputs={}, params={}) as s,
    ):
        (s.folder / "early.txt").write_text("x")
        s.reserve(1)
    assert not out.exists() and not contract.partial_path(out).exists()  # a programming error: no error.json


def test_an_existing_output_is_refused_before_anything(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(step, "new_manifest", lambda *a, **k: pytest.fail("a manifest was started"))
    with pytest.raises(OutputExists, match="--overwrite"):
        tiny_tool(src, out)
    assert not contract.partial_path(out).exists() and list(out.iterdir()) == []


def test_overwrite_replaces_the_output(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    tiny_tool(src, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [contract.MANIFEST, "upper.txt"]


def test_a_step_that_writes_only_its_manifest(tmp_path):
    out = tmp_path / "out"
    with Step("tiny-tool", out, inputs={}, params={}) as s:
        assert s.begin() == contract.partial_path(out.absolute())
        s.manifest["published"] = {"somewhere": True}
    assert contract.read_manifest(out)["published"] == {"somewhere": True}
    assert contract.read_manifest(out)["outputs"] == [] and "disk" not in s.manifest["decisions"]
