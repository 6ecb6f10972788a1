"""The Ollama target, through the official client and Ollama's REST API: the GGUF uploaded as a blob
(skipped when the server has it), the model created from the structured fields docs-tool wrote in
the upload manifest (template, stop parameters, system, licence: what its Modelfile says), pushed
to a registry when asked.
OLLAMA_HOST is honoured (the client reads it)."""

from __future__ import annotations

import os
from pathlib import Path

from upload_common.errors import InvalidInput, UploadError
from upload_common.upload_manifest import OllamaFields

from . import net
from .retry import with_retries


class OllamaError(UploadError, ConnectionError):
    kind = "ollama"


def _has_blob(client, digest: str) -> bool:
    answer = client._client.head(f"/api/blobs/{digest}")
    if answer.status_code in net.RETRY_STATUSES:
        answer.raise_for_status()  # a server error is retried like any other
    return answer.status_code == 200


def push_model(entry: dict, local: dict[str, Path], *, name: str | None, push: bool, retry: dict, log) -> dict:
    import ollama

    if not entry.get("ollama"):
        raise InvalidInput(
            "the GGUF set has no Modelfile (docs-tool writes one unless the file is split): nothing to create in Ollama"
        )
    fields = OllamaFields.from_json(entry["ollama"])  # checked when the upload manifest was read
    filename = fields.file
    model = name or fields.ollama_name
    client = net.ollama_client(os.environ.get("OLLAMA_HOST") or None)  # None: the client's default
    host = str(client._client.base_url).rstrip("/")
    where = net.host_of(client._client.base_url)
    expected = next(f["sha256"] for f in entry["files"] if f["path_in_repo"] == filename)

    def call(what, fn):
        def explain(exc):
            if isinstance(exc, ollama.ResponseError):
                return OllamaError(
                    f"{what}: Ollama at {host} answered {exc.status_code}: {exc.error}", status=exc.status_code
                )
            return None

        return with_retries(what, fn, explain=explain, where=where, **retry)

    digest = f"sha256:{expected}"
    # the client always sends the whole blob; ask first, as Ollama's own CLI does
    stored = call("asking Ollama for the GGUF", lambda: _has_blob(client, digest))
    if stored:
        log(f"Ollama {host}: {filename} already stored")
    else:
        log(f"Ollama {host}: uploading {filename}")
        sent = call("uploading the GGUF to Ollama", lambda: client.create_blob(local[filename]))
        if sent != digest:
            raise InvalidInput(f"{local[filename]} changed since gguf-tool wrote it (digest {sent}): rerun gguf-tool")
    create = fields.create_fields()
    statuses = call(
        f"creating {model} in Ollama",
        lambda: [r.status for r in client.create(model=model, files={filename: digest}, stream=True, **create)],
    )
    log(f"Ollama: {model}: {statuses[-1] if statuses else 'no status'}")
    pushed = False
    if push:
        call(f"pushing {model} from Ollama", lambda: [r.status for r in client.push(model, stream=True)])
        pushed = True
    shown = call(f"checking {model} in Ollama", lambda: client.show(model))
    if fields.template and (shown.template or "") != fields.template:
        raise OllamaError(f"Ollama holds another template for {model} than the Modelfile's: rerun the push")
    return {
        "model": model,
        "host": host,
        "digest": digest,
        "file": filename,
        "pushed": pushed,
        "sent": [] if stored else [filename],
        "unchanged": [filename] if stored else [],
        "fields": sorted(create),
        "verified": 1,
    }
