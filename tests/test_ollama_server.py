"""tests/servers/ollama.py driven by the real ``ollama`` Python client: blobs, create, show, list, push, delete,
errors and injected faults."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest

from servers.ollama import OllamaServer

ollama = pytest.importorskip("ollama")

TEMPLATE = (
    '{{ range $i, $_ := .Messages }}{{ if eq .Role "user" }}<|user|>\n{{ .Content }}</s>\n'
    '{{ else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}</s>\n{{ end }}{{ end }}<|assistant|>\n'
)


def _gguf(path, arch="llama", file_type=15):
    """A real (tensor-less) GGUF file written by the gguf package."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_file_type(file_type)
    w.add_context_length(512)
    w.add_token_list(["<s>", "</s>", "a"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def ol(tmp_path):
    with OllamaServer(tmp_path / "ollama") as server:
        yield server


@pytest.fixture
def client(ol):
    with ollama.Client(host=ol.url) as c:
        yield c


@pytest.fixture
def model_file(tmp_path):
    return _gguf(tmp_path / "model-Q4_K_M.gguf")


def _blob_calls(ol):
    return [(m, p) for m, p in ol.stats["requests"] if p.startswith("/api/blobs/")]


def test_blob_upload_once(ol, client, model_file):
    data = model_file.read_bytes()
    digest = client.create_blob(model_file)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert ol.blobs == {digest: len(data)} and ol.blob_path(digest).read_bytes() == data
    # The client (0.6.3) does not ask first: it POSTs again, and the server answers 200 without storing again.
    assert client.create_blob(model_file) == digest
    assert _blob_calls(ol) == [("POST", f"/api/blobs/{digest}")] * 2
    assert [s for m, p, s in ol.stats["responses"] if m == "POST"] == [201, 200]
    assert ol.stats["blob_bytes"] == len(data) and ol.stats["bytes_received"] == 2 * len(data)
    # A publisher that wants to skip the upload asks with HEAD itself.
    with httpx.Client(base_url=ol.url) as http:
        assert http.head(f"/api/blobs/{digest}").status_code == 200
        assert http.head("/api/blobs/sha256:" + "0" * 64).status_code == 404
        assert http.head("/api/blobs/md5:abc").status_code == 400
        r = http.post("/api/blobs/sha256:" + "1" * 64, content=b"not that")
        assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
    assert list(ol.blobs) == [digest]


def test_chunked_upload_from_the_async_client(ol, model_file):
    async def upload():
        async with ollama.AsyncClient(host=ol.url) as c:
            return await c.create_blob(model_file)

    digest = asyncio.run(upload())
    assert ol.blobs == {digest: model_file.stat().st_size}


def test_create_show_list_push_delete(ol, client, model_file):
    digest = client.create_blob(model_file)
    params = {"stop": ["</s>", "<|user|>"], "temperature": 0.7, "num_ctx": 4096}
    statuses = [
        r.status
        for r in client.create(
            model="tiny",
            files={"model-Q4_K_M.gguf": digest},
            template=TEMPLATE,
            system="Be brief.",
            parameters=params,
            license="Apache-2.0",
            stream=True,
        )
    ]
    assert statuses[0] == "parsing GGUF" and statuses[-2:] == ["writing manifest", "success"]
    assert any(s.startswith("creating new layer sha256-") for s in statuses)
    got = ol.models["tiny"]
    assert got == ol.models["tiny:latest"]
    assert got["files"] == {"model-Q4_K_M.gguf": digest} and got["template"] == TEMPLATE
    assert got["system"] == "Be brief." and got["parameters"] == params and got["license"] == "Apache-2.0"
    assert got["stream"] is True and "modelfile" not in got

    shown = client.show("tiny")
    assert shown.template == TEMPLATE and shown.license == "Apache-2.0"
    assert shown.parameters.splitlines() == [
        f"{'num_ctx':<30} 4096",
        f'{"stop":<30} "</s>"',
        f'{"stop":<30} "<|user|>"',
        f"{'temperature':<30} 0.7",
    ]
    assert shown.details.family == "llama" and shown.details.format == "gguf"
    assert shown.details.quantization_level == "Q4_K_M" and shown.modelinfo["llama.context_length"] == 512
    raw = httpx.post(f"{ol.url}/api/show", json={"model": "tiny"}).json()
    assert raw["system"] == "Be brief."  # the client's ShowResponse has no field for it; the server sends it
    assert "FROM " in shown.modelfile and 'SYSTEM "Be brief."' not in shown.modelfile
    assert "SYSTEM Be brief." in shown.modelfile

    listed = client.list().models
    assert [m.model for m in listed] == ["tiny:latest"] and listed[0].size > model_file.stat().st_size
    assert listed[0].details.family == "llama"

    client.copy("tiny", "alice/tiny")
    push = [r.status for r in client.push("alice/tiny", stream=True)]
    assert push[0] == "retrieving manifest" and push[-1] == "success"
    assert any(s.startswith("pushing ") for s in push)
    assert ol.pushed == [{"model": "alice/tiny:latest", "insecure": False, "stream": True}]
    assert client.push("alice/tiny", insecure=True).status == "success"  # stream false: one object
    with pytest.raises(ollama.ResponseError, match="namespace"):
        list(client.push("tiny", stream=True))
    with pytest.raises(ollama.ResponseError) as err:
        client.push("tiny")
    assert err.value.status_code == 500
    assert len(ol.pushed) == 2

    assert client.delete("tiny").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.show("tiny")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("tiny")
    assert err.value.status_code == 404
    assert [m.model for m in client.list().models] == ["alice/tiny:latest"]


def test_create_not_streamed_and_from_a_model(ol, client, model_file):
    digest = client.create_blob(model_file)
    r = client.create(model="base", files={"m.gguf": digest}, template=TEMPLATE, stream=False)
    assert r.status == "success"
    r = client.create(model="child:v1", from_="base", system="Child.", stream=False)
    assert r.status == "success"
    assert ol.models["child:v1"] == {"model": "child:v1", "from": "base", "system": "Child.", "stream": False}
    shown = client.show("child:v1")
    assert shown.template == TEMPLATE and shown.details.family == "llama"
    with pytest.raises(ollama.ResponseError, match="not found"):
        client.create(model="orphan", from_="nobody")
    plain = client.create(model="plain", files={"m.gguf": digest})
    assert plain.status == "success" and client.show("plain").template == "{{ .Prompt }}"


def test_create_errors(ol, client, model_file, tmp_path):
    digest = client.create_blob(model_file)
    missing = "sha256:" + "ab" * 32
    with pytest.raises(ollama.ResponseError) as err:
        list(client.create(model="m", files={"m.gguf": missing}, stream=True))
    assert err.value.status_code == 400 and "blob not found" in err.value.error
    for kwargs, msg in (
        ({"files": {"../m.gguf": digest}}, "relative"),
        ({"files": {"m.gguf": "abc"}}, "digest"),
        ({"files": {"m.gguf": digest}, "parameters": {"temprature": 1}}, "unknown parameter"),
        ({"files": {"m.gguf": digest}, "parameters": {"stop": "</s>"}}, "invalid list"),
        ({"files": {"m.gguf": digest}, "parameters": {"num_ctx": 1.5}}, "invalid int"),
        ({"files": {"m.gguf": digest}, "template": "{{ .Prompt "}, "template"),
        ({}, "neither 'from' or 'files'"),
    ):
        with pytest.raises(ollama.ResponseError, match=msg) as err:
            client.create(model="m", **kwargs)
        assert err.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="invalid model name"):
        client.create(model="bad name!", files={"m.gguf": digest})
    # the old API: a Modelfile in the request
    r = httpx.post(f"{ol.url}/api/create", json={"model": "m", "modelfile": f"FROM @{digest}\n"})
    assert r.status_code == 400 and "0.5.5" in r.json()["error"]
    r = httpx.post(f"{ol.url}/api/create", content=b"{not json")
    assert r.status_code == 400
    # a file that is not GGUF fails inside the stream
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOPE" + b"\0" * 64)
    jd = client.create_blob(junk)
    with pytest.raises(ollama.ResponseError, match="invalid file magic") as err:
        list(client.create(model="m", files={"junk.gguf": jd}, stream=True))
    assert err.value.status_code == -1  # an error line in a 200 stream
    with pytest.raises(ollama.ResponseError, match="invalid file magic") as err:
        client.create(model="m", files={"junk.gguf": jd})
    assert err.value.status_code == 500
    with pytest.raises(ollama.ResponseError, match="unknown type"):
        client.create(model="m", files={"junk.bin": jd})
    assert "m" not in ol.models and ol.models == {}


def test_faults(ol, client, model_file):
    digest = client.create_blob(model_file)
    fault = ol.add_fault("POST", r"^/api/create$", status=500)
    with pytest.raises(ollama.ResponseError) as err:
        list(client.create(model="m", files={"m.gguf": digest}, stream=True))
    assert err.value.status_code == 500 and fault["hits"] == 1
    assert client.create(model="m", files={"m.gguf": digest}).status == "success"  # once only
    ol.add_fault("POST", r"/api/blobs/", action="drop")
    with pytest.raises(httpx.TransportError):
        client.create_blob(model_file)
    assert ("POST", f"/api/blobs/{digest}", None) in ol.stats["responses"]
    ol.add_fault(None, "/api/tags", status=503, times=None)
    for _ in range(2):
        with pytest.raises(ollama.ResponseError):
            client.list()
    ol.clear_faults()
    assert [m.model for m in client.list().models] == ["m:latest"]


def test_host_for_ollama_host(ol, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", ol.host)
    assert ol.host.startswith("127.0.0.1:")
    assert ollama.Client().list().models == []
    assert httpx.get(f"{ol.url}/api/version").json() == {"version": ol.version}
    assert httpx.get(ol.url).text == "Ollama is running"
    assert httpx.get(f"{ol.url}/api/nothing").status_code == 404
    assert ollama.Client().ps().models == []


def test_blobs_survive_a_restart(tmp_path, model_file):
    with OllamaServer(tmp_path / "o") as first:
        digest = ollama.Client(host=first.url).create_blob(model_file)
    with OllamaServer(tmp_path / "o") as second:
        assert second.blobs == {digest: model_file.stat().st_size} and second.models == {}
        assert json.loads(httpx.get(f"{second.url}/api/tags").text) == {"models": []}


def test_modelfile_fields_create_the_model(ol, client, model_file):
    """docs-tool's Modelfile, read back as structured fields, is what /api/create takes."""
    from docs_tool.modelfile import modelfile_text, ollama_template
    from servers.modelfile import parse_modelfile
    from upload_common.sample import CHAT_TEMPLATE

    tpl = ollama_template(CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>")
    text = modelfile_text(
        model_file.name,
        template=tpl["template"],
        stop=tpl["stop"],
        system="Be kind.",
        license_text="Apache-2.0",
        parameters={"temperature": 0.2},
    )
    fields = parse_modelfile(text)
    digest = client.create_blob(model_file)
    statuses = [
        r.status
        for r in client.create(
            model="alice/tiny-chat",
            files={model_file.name: digest},
            stream=True,
            template=fields["template"],
            system=fields["system"],
            license=fields["license"],
            parameters=fields["parameters"],
        )
    ]
    assert statuses[-1] == "success"
    shown = client.show("alice/tiny-chat")
    assert shown.template == tpl["template"] and shown.license == "Apache-2.0"
    assert ol.models["alice/tiny-chat"]["parameters"] == {"stop": tpl["stop"], "temperature": 0.2}
    assert [r.status for r in client.push("alice/tiny-chat", stream=True)][-1] == "success"
