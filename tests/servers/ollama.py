"""A small Ollama server of our own, speaking the REST API the official ``ollama`` Python client (0.6.x) uses.

Standard library only. It serves, on 127.0.0.1 and a port chosen by the OS:

    GET  /  (HEAD too)          "Ollama is running"
    GET  /api/version           {"version"}
    HEAD /api/blobs/<digest>    200 when stored, 404 when not, 400 for a malformed digest (sha256:<hex> or sha256-<hex>)
    POST /api/blobs/<digest>    body stored on disk when its sha256 matches (201); 400 on a mismatch; 200 without
                                storing again when the blob is already there (the body is read and dropped)
    POST /api/create            model, files, adapters, template, system, parameters, license, messages, quantize,
                                from, stream: NDJSON progress ("parsing GGUF", "using existing layer ...",
                                "creating new layer ...", "writing manifest", "success"), or one JSON object with
                                stream false
    POST /api/show              template, system, parameters (Ollama's text form), license, modelfile, details,
                                model_info, capabilities, modified_at; 404 for an unknown model
    GET  /api/tags              the models
    GET  /api/ps                no running models
    POST /api/push              NDJSON progress ending in "success"; the model must exist and have a namespace
    POST /api/copy, DELETE /api/delete

Behaviour copied from the current Ollama server: errors are ``{"error": ...}``; a request error found before
streaming starts is a 400; a failure during a streamed create or push is an ``{"error"}`` line in a 200 response
(a 500 with stream false). ``modelfile`` was removed from /api/create in Ollama 0.5.5: this server rejects it with
a 400 (the real one ignores it, then fails with "neither 'from' or 'files' was specified" when nothing else names
the model). A referenced blob that was never uploaded is a 400 before streaming (as current Ollama does for files
it must sniff; for ``*.gguf`` names it fails inside the stream instead). Files named ``*.gguf`` (or starting with
the GGUF magic) must be GGUF: the header and key/values are read for ``details`` and ``model_info``.

Blobs live on disk under ``storage_dir/blobs``; models in memory. ``models`` holds, by full name
(``name:latest`` when no tag is given, looked up with or without it), every field a create request sent.

Faults (``add_fault``) are matched before normal handling against the method and, with ``re.search``, the request
path without its query string.

Usage::

    with OllamaServer(tmp_path) as ol:
        client = ollama.Client(host=ol.url)     # or OLLAMA_HOST=ol.host
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import threading
from pathlib import Path

from .http import HttpError as _HttpError
from .http import LocalServer
from .modelfile import parameters_text, show_modelfile
from .ollama_requests import (
    DIGEST,
    NAME,
    Handler,
    Models,
    StreamError,
    check_create,
    field_layers,
    full_name,
    gguf_meta,
    model_name,
    now,
)

__all__ = ["OllamaServer", "VERSION"]

VERSION = "0.12.6"


# ------------------------------------------------------------------------------------------------------- server


class OllamaServer(LocalServer):
    """In-memory Ollama on 127.0.0.1; see the module docstring for the API it serves."""

    thread_name = "ollama-server"

    def __init__(self, storage_dir: str | os.PathLike, *, port: int = 0, version: str = VERSION):
        super().__init__(Handler, port)
        self.storage_dir = Path(storage_dir)
        self.version = version
        self._blobs: dict[str, int] = {}
        self._models = Models()
        self._meta: dict[str, dict] = {}
        self._pushed: list[dict] = []
        self.reset_stats()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> OllamaServer:
        (self.storage_dir / "blobs").mkdir(parents=True, exist_ok=True)
        for p in (self.storage_dir / "blobs").glob("sha256-*"):  # a storage dir used before keeps its blobs
            if DIGEST.fullmatch(p.name):
                self._blobs["sha256:" + p.name[7:]] = p.stat().st_size
        return super().start()

    @property
    def host(self) -> str:
        """``127.0.0.1:port``, for OLLAMA_HOST."""
        return self.url[len("http://") :]

    # ------------------------------------------------------------------ inspection
    @property
    def blobs(self) -> dict[str, int]:
        """Uploaded blobs: ``{"sha256:<hex>": size}``."""
        with self._lock:
            return dict(self._blobs)

    @property
    def models(self) -> dict[str, dict]:
        """``{full name: every field its create request sent}`` (a copy; ``"m"`` finds ``"m:latest"``)."""
        with self._lock:
            return copy.deepcopy(self._models)

    @property
    def pushed(self) -> list[dict]:
        """Push requests that succeeded, in order: ``{"model" (full name), "insecure", "stream"}``."""
        with self._lock:
            return copy.deepcopy(self._pushed)

    @property
    def stats(self) -> dict:
        """Snapshot: bytes_received (all request bodies), blob_bytes (bytes stored as new blobs), requests
        ([(method, path)], on arrival), responses ([(method, path, status)], recorded before the answer is sent;
        status None for a dropped connection)."""
        with self._lock:
            return copy.deepcopy(self._stats)

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {"bytes_received": 0, "blob_bytes": 0, "requests": [], "responses": []}

    def blob_path(self, digest: str) -> Path:
        m = DIGEST.fullmatch(digest)
        if not m:
            raise ValueError(f"invalid digest {digest!r}")
        return self.storage_dir / "blobs" / f"sha256-{m.group(1).lower()}"

    # ------------------------------------------------------------------ faults
    def add_fault(
        self,
        method: str | None = None,
        path_regex: str = ".*",
        status: int = 500,
        times: int | None = 1,
        action: str | None = None,
    ) -> dict:
        """Answer requests matching ``method`` (None: any) and ``path_regex`` with ``status`` and
        ``{"error": ...}`` after reading their body; ``action="drop"`` closes the connection (a TCP reset) after
        reading the body, without an answer. ``times``: how many requests it hits (None: all). Returns the fault
        record; its ``"hits"`` counts the requests it caught."""
        return self._add_fault(method, path_regex, times, action, (None, "drop"), status=status)

    # ------------------------------------------------------------------ routes
    def route(self, h: Handler, method: str, path: str) -> None:
        if path == "/" and method in ("GET", "HEAD"):
            h.read_body()
            return h.send_bytes(200, b"Ollama is running", {"Content-Type": "text/plain; charset=utf-8"})
        m = re.fullmatch(r"/api/blobs/([^/]+)", path)
        if m and method in ("HEAD", "POST"):
            return self._blob(h, method, m.group(1))
        routes = {
            ("GET", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/create"): self._create,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/push"): self._push,
            ("POST", "/api/copy"): self._copy,
            ("DELETE", "/api/delete"): self._delete,
        }
        fn = routes.get((method, path))
        if fn is None:
            h.read_body()
            return h.send_bytes(404, b"404 page not found", {"Content-Type": "text/plain"})
        return fn(h)

    def _version(self, h) -> None:
        h.read_body()
        h.send_json(200, {"version": self.version})

    def _ps(self, h) -> None:
        h.read_body()
        h.send_json(200, {"models": []})

    def _blob(self, h, method: str, digest: str) -> None:
        if not DIGEST.fullmatch(digest):
            raise _HttpError(400, "invalid digest format")
        key = "sha256:" + digest[7:].lower()
        with self._lock:
            known = key in self._blobs
        if method == "HEAD":
            h.read_body()
            if not known:
                raise _HttpError(404, f'blob "{digest}" not found')
            return h.send_bytes(200, b"")
        if known:  # Ollama answers without storing it again
            h.read_body()
            return h.send_bytes(200, b"")
        final = self.blob_path(digest)
        tmp = final.with_name(f"{final.name}-partial-{threading.get_ident()}")
        sha, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                for chunk in h.iter_body():
                    sha.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
            if "sha256:" + sha.hexdigest() != key:
                raise _HttpError(400, f'digest mismatch, expected "{key}", got "sha256:{sha.hexdigest()}"')
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        with self._lock:
            self._blobs[key] = size
            self._stats["blob_bytes"] += size
        h.send_bytes(201, b"")

    def _create(self, h) -> None:
        req = h.read_json()
        check_create(req, self.blob_path)
        h.stream(req.get("stream", True) is not False, lambda: self._create_steps(full_name(model_name(req)), req))

    def _create_steps(self, name: str, req: dict):
        meta = {"fields": {}, "layers": [], "details": {}, "model_info": {}}
        if req.get("from"):
            meta = self._base_meta(req["from"])
            yield {"status": "using existing model " + full_name(req["from"])}
        for fname, digest in sorted((req.get("files") or {}).items()):
            yield from self._model_file(fname, digest, meta)
        meta["layers"] += [
            {
                "mediaType": "application/vnd.ollama.image.adapter",
                "digest": digest,
                "size": self.blob_path(digest).stat().st_size,
                "from": fname,
            }
            for fname, digest in sorted((req.get("adapters") or {}).items())
        ]
        if req.get("quantize"):
            yield {
                "status": f"quantizing {meta['details'].get('quantization_level') or 'F16'} model to {req['quantize']}"
            }
            meta["details"]["quantization_level"] = req["quantize"].upper()
        yield from field_layers(req, meta)
        yield {"status": "writing manifest"}
        manifest = json.dumps({"schemaVersion": 2, "layers": meta["layers"]}, sort_keys=True).encode()
        with self._lock:
            self._models[name] = copy.deepcopy(req)
            self._meta[name] = {
                **meta,
                "modified_at": now(),
                "digest": hashlib.sha256(manifest).hexdigest(),
                "size": sum(lyr["size"] for lyr in meta["layers"]),
            }
        yield {"status": "success"}

    def _base_meta(self, base: str) -> dict:
        """A copy of what the model ``base`` was made of (a create request's ``from``)."""
        with self._lock:
            known = base in self._models
            meta = copy.deepcopy(self._meta.get(full_name(base)))
        if not known:
            raise StreamError(f"pull model manifest: model '{base}' not found in this test server")
        return meta

    def _model_file(self, fname: str, digest: str, meta: dict):
        """A GGUF file: its details, model_info and model layer go into ``meta``."""
        path = self.blob_path(digest)
        with open(path, "rb") as f:
            magic = f.read(4)
        if fname.endswith(".safetensors") and magic != b"GGUF":
            raise StreamError("safetensors imports are not served by this test server", 400)
        if not fname.endswith(".gguf") and magic != b"GGUF":
            raise StreamError("unknown type", 400)
        yield {"status": "parsing GGUF"}
        meta["details"], meta["model_info"] = gguf_meta(path)
        meta["layers"] = [lyr for lyr in meta["layers"] if lyr["mediaType"] != "application/vnd.ollama.image.model"]
        meta["layers"].append(
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": digest,
                "size": path.stat().st_size,
                "from": fname,
            }
        )
        yield {"status": f"using existing layer {digest.replace(':', '-')}"}

    def _existing(self, name) -> str:
        """The full name of the model ``name`` (call with the lock held); a 404 when there is none."""
        if not isinstance(name, str) or name not in self._models:
            raise _HttpError(404, f"model '{name}' not found")
        return full_name(name)

    def _show(self, h) -> None:
        req = h.read_json()
        with self._lock:
            full = self._existing(model_name(req))
            meta = copy.deepcopy(self._meta[full])
        fields = meta["fields"]
        lic = fields.get("license")
        files = [
            (kind, str(self.blob_path(lyr["digest"])))
            for lyr in meta["layers"]
            for kind, end in (("FROM", ".model"), ("ADAPTER", ".adapter"))
            if lyr["mediaType"].endswith(end)
        ]
        resp = {
            "license": "\n".join([lic] if isinstance(lic, str) else list(lic or [])),
            "modelfile": show_modelfile(full, fields, files),
            "parameters": parameters_text(fields.get("parameters") or {}),
            "template": fields.get("template") or "{{ .Prompt }}",
            "system": fields.get("system") or "",
            "details": meta["details"],
            "model_info": meta["model_info"],
            "capabilities": ["completion"],
            "modified_at": meta["modified_at"],
        }
        if fields.get("messages"):
            resp["messages"] = fields["messages"]
        h.send_json(200, resp)

    def _tags(self, h) -> None:
        h.read_body()
        keys = ("modified_at", "size", "digest", "details")
        with self._lock:
            models = [{"name": n, "model": n, **{k: self._meta[n][k] for k in keys}} for n in sorted(self._models)]
        h.send_json(200, {"models": models})

    def _push(self, h) -> None:
        req = h.read_json()
        name = model_name(req)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise _HttpError(400, "invalid model name")
        h.stream(req.get("stream", True) is not False, lambda: self._push_steps(full_name(name), req))

    def _push_steps(self, name: str, req: dict):
        with self._lock:
            meta = copy.deepcopy(self._meta.get(name))
        if meta is None:
            raise StreamError(f"open manifests/{name}: no such file or directory (model '{name}' not found)")
        yield {"status": "retrieving manifest"}
        if "/" not in name.split(":")[0]:
            raise StreamError(
                "you are not authorized to push to this namespace, create the model under a namespace you own"
            )
        for lyr in meta["layers"]:
            yield {
                "status": f"pushing {lyr['digest'][7:19]}",
                "digest": lyr["digest"],
                "total": lyr["size"],
                "completed": lyr["size"],
            }
        yield {"status": "pushing manifest"}
        with self._lock:
            self._pushed.append({"model": name, "insecure": bool(req.get("insecure")), "stream": req.get("stream")})
        yield {"status": "success"}

    def _copy(self, h) -> None:
        req = h.read_json()
        src, dst = req.get("source") or "", req.get("destination") or ""
        if not isinstance(dst, str) or not NAME.fullmatch(dst):
            raise _HttpError(400, "invalid destination model name")
        with self._lock:
            full = self._existing(src)
            self._models[full_name(dst)] = {**copy.deepcopy(self._models[full]), "model": dst}
            self._meta[full_name(dst)] = copy.deepcopy(self._meta[full])
        h.send_bytes(200, b"")

    def _delete(self, h) -> None:
        req = h.read_json()
        with self._lock:
            full = self._existing(model_name(req))
            del self._models[full]
            del self._meta[full]
        h.send_bytes(200, b"")

    def _record_request(self, method: str, path: str) -> None:
        with self._lock:
            self._stats["requests"].append((method, path))

    def _record_response(self, method: str, path: str, status: int | None, nbytes: int) -> None:
        with self._lock:
            self._stats["responses"].append((method, path, status))
            self._stats["bytes_received"] += nbytes
