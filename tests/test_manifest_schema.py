"""The manifests as typed models: the committed JSON schemas are what the models emit, every manifest
the real tools write follows them, and an edited one is refused saying which key is wrong."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from hf_push_tool.core import run as push_run
from upload_common.contract import MANIFEST
from upload_common.errors import InvalidInput
from upload_common.manifest import (
    STEP_SCHEMA_FILE,
    UPLOAD_SCHEMA_FILE,
    manifest_schema,
    schema_text,
    upload_manifest_schema,
    validate_manifest,
    validate_upload_manifest,
)
from upload_common.upload_manifest import UPLOAD_MANIFEST

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize(
    "file, schema", [(STEP_SCHEMA_FILE, manifest_schema), (UPLOAD_SCHEMA_FILE, upload_manifest_schema)]
)
def test_committed_schema_is_what_the_model_emits(file, schema):
    committed = (DOCS / file).read_text(encoding="utf-8")
    assert committed == schema_text(schema()), f"docs/{file} is stale: run python -m upload_common.manifest docs"


@pytest.fixture(scope="module")
def written(run_artifacts, run_docs, tmp_path_factory) -> dict[str, Path]:
    """A step output of each tool: merge-tool (lora, merged_16bit), gguf-tool, docs-tool and a local
    publish by hf-push-tool."""
    root = tmp_path_factory.mktemp("schema")
    push_run(
        run_docs,
        [run_artifacts[k] for k in ("lora", "merged", "gguf")],
        root / "push",
        targets=[f"local:{root / 'site'}"],
    )
    return {**{k: run_artifacts[k] for k in ("lora", "merged", "gguf")}, "docs": run_docs, "push": root / "push"}


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_manifests_written_by_the_tools_follow_the_schema(written):
    tools = set()
    for folder in written.values():
        data = _read(folder / MANIFEST)
        m = validate_manifest(data)
        tools.add(m.tool.name)
        assert m.model_dump(mode="json", by_alias=True, exclude_unset=True) == data  # nothing lost or changed
    assert tools == {"merge-tool", "gguf-tool", "docs-tool", "hf-push-tool"}
    assert validate_manifest(_read(written["gguf"] / MANIFEST)).files["Q8_0"].validation.positions > 0
    upload = _read(written["docs"] / UPLOAD_MANIFEST)
    assert validate_upload_manifest(upload).sets["gguf"].ollama.file.endswith(".gguf")


@pytest.mark.parametrize(
    "edit, where, what",
    [
        (lambda m: m.pop("fingerprint"), "fingerprint", "Field required"),
        (lambda m: m["outputs"][0].update(size="12"), "outputs.0.size", "valid integer"),
        (lambda m: m["tool"].update(version=1), "tool.version", "valid string"),
        (lambda m: m.update(schema_version=2), "schema_version", "Input should be 1"),
        (lambda m: m["outputs"][0].update(sha256="abc"), "outputs.0.sha256", "should match pattern"),
        (lambda m: m.update(fingreprint=m["fingerprint"]), "fingreprint", "Extra inputs are not permitted"),
        (
            lambda m: m["inputs"]["adapter"].update(sha256=None, manifest_sha256=7),
            "inputs.adapter.manifest_sha256",
            "valid string",
        ),
    ],
)
def test_an_edited_manifest_is_refused_naming_the_key(written, edit, where, what):
    data = copy.deepcopy(_read(written["lora"] / MANIFEST))
    edit(data)
    with pytest.raises(InvalidInput) as err:
        validate_manifest(data)
    message = str(err.value)
    assert "\n" not in message and message.startswith("manifest.json does not follow its schema")
    assert f"{where}: " in message and what in message, message


def test_an_edited_upload_manifest_is_refused(written):
    data = copy.deepcopy(_read(written["docs"] / UPLOAD_MANIFEST))
    data["sets"]["lora"]["files"][0]["origin"] = "elsewhere"
    del data["total_bytes"]
    with pytest.raises(
        InvalidInput,
        match=r"sets\.lora\.files\.0\.origin: Input should be 'artifact' or 'docs'.*"
        r"total_bytes: Field required",
    ):
        validate_upload_manifest(data)
