"""The step manifest (``manifest.json``) and the upload manifest (``upload_manifest.json``) as typed
models: what docs/contract.md describes, checked when read and written out as JSON schemas
(docs/manifest.schema.json, docs/upload-manifest.schema.json; ``python -m upload_common.manifest``
rewrites both, and a test checks the committed files are what these models emit).

The models follow what the tools write (``contract.new_manifest`` and ``finish_manifest`` plus each
tool's own sections); where a tool records what it chose or measured (``decisions``, ``training``,
``quantization``, a published record) the object stays open: its keys are the tool's to add."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .contract import SCHEMA, SCHEMA_VERSION
from .errors import InvalidInput
from .upload_manifest import UPLOAD_SCHEMA, UPLOAD_SCHEMA_VERSION

STEP_SCHEMA_FILE = "manifest.schema.json"
UPLOAD_SCHEMA_FILE = "upload-manifest.schema.json"

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="hex sha256")]
Time = Annotated[
    str,
    Field(
        pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$",
        description="UTC ISO-8601 time, to the second",
    ),
]
Name = Annotated[str, Field(min_length=1)]
Size = Annotated[int, Field(ge=0)]
Open = dict[str, Any]


class _Closed(BaseModel):
    """Every key is named here: another key is an error (a typo, or a contract change to write down)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Open(BaseModel):
    """The keys named here, plus whatever else the writing tool records."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class Tool(_Closed):
    name: Name
    version: Name


class Input(_Open):
    """An input and its identity (contract.describe_input): a step output by its manifest's hash, a
    file by its sha256, another folder by its fingerprint; a tool may add fields (``folder``,
    ``repo_id``, ``revision``). hf-push-tool names the artifact folders by manifest hash only."""

    path: str | None = None
    manifest_sha256: Sha256 | None = None
    sha256: Sha256 | None = None
    fingerprint: Sha256 | None = None


class Output(_Closed):
    path: Name = Field(description="relative to the folder holding manifest.json, with /")
    size: Size
    sha256: Sha256


class Timings(_Closed):
    started: Time
    finished: Time
    seconds: dict[str, float] = Field(description="seconds per phase, and 'total'")


class Agreement(_Open):
    """A converted model checked against its reference on the validation text (quality.Agreement)."""

    positions: Size
    top1_agreement: Annotated[float, Field(ge=0, le=1)]
    mean_kl: float
    max_kl: float
    p99_kl: float | None = Field(None, description="99th percentile of the per-position KL divergence")
    perplexity: float | None = Field(None, description="the file's perplexity on the validation text")
    perplexity_reference: float | None = Field(None, description="its reference's perplexity on the same text")
    against: str | None = Field(None, description="the reference: the Hugging Face model, or the 16-bit GGUF")


class GgufFiles(_Open):
    """gguf-tool: the files of one type (``quant``; the LoRA adapter has none), and its check."""

    quant: str | None = None
    files: list[Name]
    validation: Agreement | None = None


class SetSource(_Closed):
    """The step output a set comes from: hf-push-tool finds the folder by this hash."""

    tool: Name
    manifest_sha256: Sha256
    fingerprint: Sha256


class OllamaModel(_Closed):
    """The gguf set's Ollama model: the /api/create fields (upload_manifest.OllamaFields) and the
    conversations the template was checked on."""

    file: Name
    ollama_name: Name
    template: str | None
    system: str | None
    license: str | None
    parameters: Open = Field(description="{'stop': [...]}, or {}")
    checked: list[str] = []


class SetRecord(_Closed):
    """One artifact set as docs-tool records it in its step manifest (the upload manifest adds its files)."""

    repo_id: Name
    title: str
    relation: str
    base_model: str | None
    library: str
    source: SetSource
    card_sha256: Sha256
    content_sha256: Sha256 = Field(description="hash of the set's (path, sha256) list: same value, same repo content")
    ollama: OllamaModel | None = None
    validation: dict[str, Agreement | None] | None = Field(None, description="GGUF type (or the set) -> its check")


class Manifest(_Closed):
    """``manifest.json``: written last into a step's output folder (docs/contract.md)."""

    model_config = ConfigDict(title="upload-driver step manifest")

    schema_: Literal[SCHEMA] = Field(alias="schema")  # type: ignore[valid-type]
    schema_version: Literal[SCHEMA_VERSION]  # type: ignore[valid-type]
    tool: Tool
    fingerprint: Sha256 = Field(description="contract.step_fingerprint: tool, version, inputs (no paths), parameters")
    inputs: dict[str, Input]
    parameters: Open = Field(description="every option that changes the output")
    outputs: list[Output] = Field(description="every file beside the manifest")
    versions: dict[str, str] = Field(description="python, upload-driver and the libraries used")
    timings: Timings
    warnings: list[str]
    decisions: Open = Field(description="what the tool chose and why")
    training: Open | None = Field(None, description="merge-tool: the trainer, its training summary, the adapter")
    quantization: Open | None = Field(None, description="merge-tool's quantized formats: method, library, bits…")
    validation: Agreement | None = Field(None, description="merge-tool's quantized formats: against the 16-bit merge")
    files: dict[str, GgufFiles] | None = Field(None, description="gguf-tool: type -> its files and check")
    sets: dict[str, SetRecord] | None = Field(None, description="docs-tool: the sets of the upload manifest")
    published: dict[str, dict[str, Open]] | None = Field(
        None, description="hf-push-tool: target -> set -> where it went (repo, commit, files sent)"
    )


class UploadFile(_Closed):
    path_in_repo: Name
    origin: Literal["artifact", "docs"]
    path: Name = Field(description="relative to the artifact folder (origin artifact) or docs-tool's folder")
    size: Size
    sha256: Sha256


class UploadSet(SetRecord):
    files: list[UploadFile]


class UploadManifest(_Closed):
    """``upload_manifest.json``: docs-tool writes it, hf-push-tool publishes what it lists."""

    model_config = ConfigDict(title="upload-driver upload manifest")

    schema_: Literal[UPLOAD_SCHEMA] = Field(alias="schema")  # type: ignore[valid-type]
    schema_version: Literal[UPLOAD_SCHEMA_VERSION]  # type: ignore[valid-type]
    name: Name
    sets: dict[str, UploadSet]
    total_bytes: Size


def _problems(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``where: what`` for each, the first few."""
    rows = [f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors(include_url=False)]
    return "; ".join(rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _validate(model: type[BaseModel], data, what: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(
            f"{what} does not follow its schema ({_problems(exc)}): rerun the step that wrote it",
            problems=[e["msg"] for e in exc.errors(include_url=False)][:20],
        ) from None


def validate_manifest(data: dict) -> Manifest:
    """The step manifest ``data`` as a Manifest; InvalidInput naming each key that is missing, unknown or
    of the wrong type."""
    return _validate(Manifest, data, "manifest.json")


def validate_upload_manifest(data: dict) -> UploadManifest:
    return _validate(UploadManifest, data, "upload_manifest.json")


def _schema(model: type[BaseModel]) -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema(by_alias=True)}


def manifest_schema() -> dict:
    """The JSON schema of manifest.json (committed as docs/manifest.schema.json)."""
    return _schema(Manifest)


def upload_manifest_schema() -> dict:
    """The JSON schema of upload_manifest.json (committed as docs/upload-manifest.schema.json)."""
    return _schema(UploadManifest)


def schema_text(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    """Write both schema files into ``folder`` (the repository's docs/)."""
    written = []
    for file, schema in ((STEP_SCHEMA_FILE, manifest_schema()), (UPLOAD_SCHEMA_FILE, upload_manifest_schema())):
        (Path(folder) / file).write_text(schema_text(schema), encoding="utf-8")
        written.append(Path(folder) / file)
    return written


if __name__ == "__main__":  # python -m upload_common.manifest [docs folder]
    for p in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(p)
