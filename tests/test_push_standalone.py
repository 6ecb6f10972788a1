"""hf-push-tool stands alone: it imports no other tool, and the gguf set's Ollama model reaches it as
structured fields in the upload manifest (upload_common.upload_manifest), equal to what the Modelfile
says; docs-tool's files stay what they were."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hf_push_tool.cli import main as push_main
from servers.ollama import OllamaServer
from upload_common.upload_manifest import OllamaFields

TOOLS = Path(__file__).resolve().parents[1] / "tools"
ODD_SYSTEM = 'Be\u00a0brief.\x07\nAnswer in "one" line.'  # a non-breaking space and a bell: cleaned in the Modelfile


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_hf_push_tool_imports_no_other_tool():
    others = {p.name for p in TOOLS.iterdir() if (p / "__init__.py").is_file()} - {"hf_push_tool", "upload_common"}
    assert {"docs_tool", "merge_tool", "gguf_tool"} <= others
    found = {
        p.name: sorted(imported_packages(p) & (others | {"upload_driver"}))
        for p in sorted((TOOLS / "hf_push_tool").glob("*.py"))
    }
    assert found and all(v == [] for v in found.values()), found


def read_modelfile(text: str) -> dict:
    """The lines docs-tool writes, read as Ollama does: a quoted value ends at the first line that closes it."""
    out: dict = {"parameters": {}}
    pattern = r'^(FROM|TEMPLATE|SYSTEM|LICENSE|PARAMETER (\w+)) (?:"""(.*?)"""|"([^"\n]*)"|([^\n]*))$'
    found = list(re.finditer(pattern, text, re.M | re.S))
    ends = [0] + [m.end() + 1 for m in found]
    assert [m.start() for m in found] == ends[:-1] and ends[-1] == len(text), text  # every line read, nothing else
    for m in found:
        value = next(v for v in m.groups()[2:] if v is not None)
        if m[2]:
            out["parameters"].setdefault(m[2], []).append(value)
        else:
            out[m[1].lower()] = value
    return out


def ollama_entry(docs: Path) -> OllamaFields:
    upload = json.loads((docs / "upload_manifest.json").read_text())
    return OllamaFields.from_json(upload["sets"]["gguf"]["ollama"])


@pytest.fixture(scope="module")
def odd_docs(run_artifacts, tmp_path_factory) -> Path:
    """docs-tool with a system prompt and a licence name that a Modelfile cannot carry as given."""
    from docs_tool.core import run

    out = tmp_path_factory.mktemp("odd") / "docs"
    run(
        [run_artifacts[k] for k in ("lora", "merged", "gguf")],
        out,
        namespace="alice",
        name="Tiny-Chat",
        system=ODD_SYSTEM,
        license="My\u00a0Licence\u200b",
        license_link="https://example.com/licence",
    )
    return out


@pytest.mark.parametrize("which", ["run_docs", "odd_docs"])
def test_the_ollama_fields_are_what_the_modelfile_says(which, request):
    from docs_tool.modelfile import modelfile_text

    docs = request.getfixturevalue(which)
    fields, text = ollama_entry(docs), (docs / "gguf" / "Modelfile").read_text(encoding="utf-8")
    said = read_modelfile(text)
    assert said["from"] == f"./{fields.file}" and fields.ollama_name == "tiny-chat:q4_k_m"
    assert (said.get("template"), said.get("system"), said.get("license")) == (
        fields.template,
        fields.system,
        fields.license,
    )
    assert said["parameters"] == {"stop": ["</s>"]} == fields.create_fields()["parameters"]
    assert "<|assistant|>" in fields.template
    if which == "odd_docs":  # what the Modelfile holds: cleaned
        assert (fields.system, fields.license) == (
            'Be brief.\nAnswer in "one" line.',
            "My Licence\nhttps://example.com/licence",
        )
    # the Modelfile is rendered from these fields
    assert (
        modelfile_text(
            fields.file,
            template=fields.template,
            stop=list(fields.stop),
            system=fields.system,
            license_text=fields.license,
        )
        == text
    )


@pytest.mark.parametrize("which", ["run_docs", "odd_docs"])
def test_the_modelfile_is_what_it_was(which, request, run_artifacts):
    """The Modelfile as docs-tool wrote it before the fields were data: the derived template and stops
    and the raw --system and licence text, given to modelfile_text."""
    from docs_tool.document_set import _gguf_chat
    from docs_tool.modelfile import modelfile_text, ollama_template

    docs = request.getfixturevalue(which)
    chat = _gguf_chat(run_artifacts["gguf"] / "Tiny-Chat-Q4_K_M.gguf")
    tpl = ollama_template(
        chat["chat_template"], bos_token=chat["bos"], eos_token=chat["eos"], special_tokens=chat["special"]
    )
    system, lic = (
        (ODD_SYSTEM, "My\u00a0Licence\u200b\nhttps://example.com/licence")
        if which == "odd_docs"
        else (None, card_licence(docs))
    )
    before = modelfile_text(
        "Tiny-Chat-Q4_K_M.gguf", template=tpl["template"], stop=tpl["stop"], system=system, license_text=lic
    )
    assert (docs / "gguf" / "Modelfile").read_text(encoding="utf-8") == before


def card_licence(docs: Path) -> str:
    """The licence text docs-tool gives the Modelfile: the card's licence name or id, then its link."""
    from huggingface_hub import ModelCard

    meta = ModelCard((docs / "gguf" / "README.md").read_text(encoding="utf-8")).data.to_dict()
    return (meta.get("license_name") or meta["license"]) + (
        f"\n{meta['license_link']}" if meta.get("license_link") else ""
    )


# docs-tool's files for the run_docs fixture, as written before the Ollama fields became data; they hold
# for the artifacts they were computed from (another torch or llama.cpp makes other artifacts)
PINNED_FOR = "4f180b0c08470da9af3c58cb75a3b80f6bcf731f1762a378e756be01602dd475"
PINNED = {
    "README.md": "06c963fe40d999faab39b016013447c24cf287b4b814261f67fc914423952e2b",
    "lora/README.md": "cb067093bb12549093269196c9481d9c38db282b87aa51d6d73ae37c5f4df385",
    "merged_16bit/README.md": "c0992ba2f5ce71f5a7adfad23c6edfd8fe6f4c913b8d42ac6299e3cc74ad4ea4",
    "gguf/README.md": "7ca54e1b1182bffe4db6bea82c34b894cf234500da06b568edc52aed7d1717c0",
    "gguf/Modelfile": "2ff25b5e39e9a2f33feb67131b8a1c9be2f8b20b3775c90ab021d06448d650ff",
}


def test_cards_and_modelfile_are_byte_identical(run_docs):
    upload = json.loads((run_docs / "upload_manifest.json").read_text())
    rows = sorted(
        [s, f["path_in_repo"], f["sha256"]]
        for s, e in upload["sets"].items()
        for f in e["files"]
        if f["origin"] == "artifact"
    )
    if hashlib.sha256(json.dumps(rows).encode()).hexdigest() != PINNED_FOR:
        pytest.skip("the artifacts differ from those the pinned hashes were computed from")
    assert {p: hashlib.sha256((run_docs / p).read_bytes()).hexdigest() for p in PINNED} == PINNED


def push(docs, run_artifacts, out, *extra):
    return CliRunner().invoke(
        push_main,
        [
            "--docs",
            str(docs),
            "--artifact",
            str(run_artifacts["gguf"]),
            "--set",
            "gguf",
            "--out",
            str(out),
            "--retry-wait",
            "0.01",
            *extra,
        ],
    )


@pytest.mark.parametrize("which", ["run_docs", "odd_docs"])
def test_ollama_create_sends_the_modelfile_fields(which, request, run_artifacts, tmp_path, monkeypatch):
    docs = request.getfixturevalue(which)
    said = read_modelfile((docs / "gguf" / "Modelfile").read_text(encoding="utf-8"))
    with OllamaServer(tmp_path / "ollama") as ol:
        monkeypatch.setenv("OLLAMA_HOST", ol.host)
        result = push(docs, run_artifacts, tmp_path / "push", "--to", "ollama")
        assert result.exit_code == 0, result.output
        req = ol.models["tiny-chat:q4_k_m"]
    q4 = next(
        f
        for f in json.loads((docs / "upload_manifest.json").read_text())["sets"]["gguf"]["files"]
        if f["path_in_repo"] == "Tiny-Chat-Q4_K_M.gguf"
    )
    expected = {k: said[k] for k in ("template", "system", "license") if said.get(k)}
    assert req == {
        "model": "tiny-chat:q4_k_m",
        "files": {"Tiny-Chat-Q4_K_M.gguf": f"sha256:{q4['sha256']}"},
        "stream": True,
        **expected,
        "parameters": said["parameters"],
    }
    assert ("system" in req) == (which == "odd_docs")


def resealed(run_docs: Path, tmp_path: Path, edit) -> Path:
    """A copy of the docs folder with the gguf set's entry edited, the step manifest made to agree (an
    edit of both: the values themselves must be refused)."""
    docs = tmp_path / "docs"
    shutil.copytree(run_docs, docs)
    upload = json.loads((docs / "upload_manifest.json").read_text())
    edit(upload["sets"]["gguf"])
    data = json.dumps(upload, indent=2).encode()
    (docs / "upload_manifest.json").write_bytes(data)
    step = json.loads((docs / "manifest.json").read_text())
    for o in step["outputs"]:
        if o["path"] == "upload_manifest.json":
            o["sha256"], o["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (docs / "manifest.json").write_text(json.dumps(step))
    return docs


MALFORMED = {
    "template a number": lambda e: e["ollama"].update(template=42),
    "system a list": lambda e: e["ollama"].update(system=["a"]),
    "license an object": lambda e: e["ollama"].update(license={"id": "mit"}),
    "parameters a list": lambda e: e["ollama"].update(parameters=["stop"]),
    "stop a string": lambda e: e["ollama"].update(parameters={"stop": "</s>"}),
    "stop holding a number": lambda e: e["ollama"].update(parameters={"stop": ["</s>", 7]}),
    "a parameter an object": lambda e: e["ollama"].update(parameters={"num_ctx": {"a": 1}}),
    "no ollama_name": lambda e: e["ollama"].pop("ollama_name"),
    "the entry a string": lambda e: e.update(ollama="Tiny-Chat-Q4_K_M.gguf"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_ollama_fields_are_refused_in_one_line(case, run_docs, run_artifacts, tmp_path):
    docs = resealed(run_docs, tmp_path, MALFORMED[case])
    for target in ("ollama", f"local:{tmp_path / 'site'}"):
        result = push(docs, run_artifacts, tmp_path / "push", "--to", target)
        assert result.exit_code == 1, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Ollama entry is malformed" in errors[0] and "rerun docs-tool" in errors[0], (
            result.stderr
        )
        assert "Traceback" not in result.output and not (tmp_path / "site").exists()


def test_an_upload_manifest_of_another_schema_version_is_refused(run_docs, run_artifacts, tmp_path):
    docs = resealed(run_docs, tmp_path, lambda e: None)
    upload = json.loads((docs / "upload_manifest.json").read_text())
    upload["schema_version"] = 1
    (docs / "upload_manifest.json").write_text(json.dumps(upload))
    result = push(docs, run_artifacts, tmp_path / "push", "--to", f"local:{tmp_path / 'site'}")
    assert result.exit_code == 1 and "schema version 1" in result.output and "rerun docs-tool" in result.output
