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
import struct
import threading
from datetime import datetime, timezone
from pathlib import Path

from .http import HttpError as _HttpError, LocalServer, RequestHandler

__all__ = ["OllamaServer", "VERSION"]

VERSION = "0.12.6"
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
_NAME = re.compile(rf"(?:[A-Za-z0-9.-]+(?::\d+)?/)?(?:{_PART}/)?{_PART}(?::{_PART})?")
_CREATE_FIELDS = {"model", "name", "stream", "quantize", "quantization", "from", "files", "adapters", "template",
                  "license", "system", "parameters", "messages", "renderer", "parser", "requires", "info",
                  "capabilities", "remote_host"}
# Ollama's model parameters (api.Options and the runner's) and the JSON types they take.
_PARAMS = {
    **dict.fromkeys(("numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
                     "embedding_only", "penalize_newline"), bool),
    **dict.fromkeys(("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict",
                     "top_k", "repeat_last_n", "mirostat"), int),
    **dict.fromkeys(("top_p", "min_p", "tfs_z", "temperature", "repeat_penalty", "presence_penalty",
                     "frequency_penalty", "mirostat_tau", "mirostat_eta"), float),
    "stop": list,
}
# llama.cpp's general.file_type values, as Ollama names them in details.quantization_level
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
               12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
               19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
               26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
               36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4"}


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat()


def _model_name(req: dict):
    """The model a request names (``model``, or the older ``name``)."""
    return req.get("model") or req.get("name") or ""


def _full_name(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


class _Models(dict):
    """A dict keyed by full model name that also finds ``name`` without its ``:latest``."""

    def __getitem__(self, key):
        return super().__getitem__(_full_name(key))

    def __contains__(self, key):
        return super().__contains__(_full_name(key)) if isinstance(key, str) else False

    def get(self, key, default=None):
        return self[key] if key in self else default


class _StreamError(Exception):
    """A failure inside a streamed operation: an ``{"error"}`` line (or, with stream false, ``status``)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message, self.status = message, status


# ------------------------------------------------------------------------------------------------------- GGUF


def _read_gguf_kv(path: Path) -> dict:
    """GGUF header key/values (scalars and strings; arrays as their length). Raises ValueError when not GGUF."""
    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    with open(path, "rb") as f:
        def read(fmt):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError("unexpected end of GGUF header")
            return struct.unpack("<" + fmt, data)[0]

        def string():
            n = read("Q")
            if n > 1 << 24:
                raise ValueError("implausible GGUF string length")
            return f.read(n).decode("utf-8", "replace")

        def value(t):
            if t in scalars:
                return read(scalars[t])
            if t == 8:
                return string()
            if t == 9:
                et, n = read("I"), read("Q")
                if et in scalars:
                    f.seek(struct.calcsize(scalars[et]) * n, os.SEEK_CUR)
                else:
                    for _ in range(n):
                        value(et)
                return n
            raise ValueError(f"unknown GGUF value type {t}")

        if f.read(4) != b"GGUF":
            raise ValueError("invalid file magic")
        version = read("I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        read("Q")  # tensors
        kv = {}
        for _ in range(read("Q")):
            key = string()
            kv[key] = value(read("I"))
        return kv


# ------------------------------------------------------------------------------------------------------- server


class OllamaServer(LocalServer):
    """In-memory Ollama on 127.0.0.1; see the module docstring for the API it serves."""

    thread_name = "ollama-server"

    def __init__(self, storage_dir: str | os.PathLike, *, port: int = 0, version: str = VERSION):
        super().__init__(_Handler, port)
        self.storage_dir = Path(storage_dir)
        self.version = version
        self._blobs: dict[str, int] = {}
        self._models = _Models()
        self._meta: dict[str, dict] = {}
        self._pushed: list[dict] = []
        self.reset_stats()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "OllamaServer":
        (self.storage_dir / "blobs").mkdir(parents=True, exist_ok=True)
        for p in (self.storage_dir / "blobs").glob("sha256-*"):  # a storage dir used before keeps its blobs
            if _DIGEST.fullmatch(p.name):
                self._blobs["sha256:" + p.name[7:]] = p.stat().st_size
        return super().start()

    @property
    def host(self) -> str:
        """``127.0.0.1:port``, for OLLAMA_HOST."""
        return self.url[len("http://"):]

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
        m = _DIGEST.fullmatch(digest)
        if not m:
            raise ValueError(f"invalid digest {digest!r}")
        return self.storage_dir / "blobs" / f"sha256-{m.group(1).lower()}"

    # ------------------------------------------------------------------ faults
    def add_fault(self, method: str | None = None, path_regex: str = ".*", status: int = 500, times: int | None = 1,
                  action: str | None = None) -> dict:
        """Answer requests matching ``method`` (None: any) and ``path_regex`` with ``status`` and
        ``{"error": ...}`` after reading their body; ``action="drop"`` closes the connection (a TCP reset) after
        reading the body, without an answer. ``times``: how many requests it hits (None: all). Returns the fault
        record; its ``"hits"`` counts the requests it caught."""
        return self._add_fault(method, path_regex, times, action, (None, "drop"), status=status)

    # ------------------------------------------------------------------ routes
    def route(self, h: "_Handler", method: str, path: str) -> None:
        if path == "/" and method in ("GET", "HEAD"):
            h.read_body()
            return h.send_bytes(200, b"Ollama is running", {"Content-Type": "text/plain; charset=utf-8"})
        m = re.fullmatch(r"/api/blobs/([^/]+)", path)
        if m and method in ("HEAD", "POST"):
            return self._blob(h, method, m.group(1))
        routes = {("GET", "/api/version"): self._version, ("GET", "/api/tags"): self._tags,
                  ("GET", "/api/ps"): self._ps, ("POST", "/api/create"): self._create,
                  ("POST", "/api/show"): self._show, ("POST", "/api/push"): self._push,
                  ("POST", "/api/copy"): self._copy, ("DELETE", "/api/delete"): self._delete}
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
        if not _DIGEST.fullmatch(digest):
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
        if "modelfile" in req:
            raise _HttpError(400, "the 'modelfile' field was removed from /api/create in Ollama 0.5.5: send 'files' "
                                  "(blob digests), 'template', 'system', 'parameters' and 'license' instead")
        unknown = sorted(set(req) - _CREATE_FIELDS)
        if unknown:
            raise _HttpError(400, f"unknown create fields: {', '.join(unknown)}")
        name = _model_name(req)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise _HttpError(400, "invalid model name")
        files, adapters = req.get("files"), req.get("adapters")
        for what, group in (("files", files), ("adapters", adapters)):
            if group is None:
                continue
            if not isinstance(group, dict) or not all(isinstance(v, str) for v in group.values()):
                raise _HttpError(400, f"'{what}' must map file names to blob digests")
            for fname, digest in group.items():
                parts = fname.split("/")
                if (fname in ("", ".") or fname.startswith("/") or any(p in ("", ".", "..") for p in parts)
                        or any(c in fname for c in "\\:")):
                    raise _HttpError(400, f"file path must be relative: {fname}")
                if not _DIGEST.fullmatch(digest):
                    raise _HttpError(400, f"invalid digest for {fname}: invalid digest format")
                if not self.blob_path(digest).exists():
                    raise _HttpError(400, f"blob not found for {fname} (digest {digest}): open "
                                          f"{self.blob_path(digest)}: no such file or directory")
        params = req.get("parameters")
        if params is not None:
            self._check_parameters(params)
        lic = req.get("license")
        if lic is not None and not (isinstance(lic, str) or (isinstance(lic, list)
                                                              and all(isinstance(x, str) for x in lic))):
            raise _HttpError(400, "license must be a string or a list of strings")
        for key in ("template", "system", "quantize", "from"):
            if req.get(key) is not None and not isinstance(req[key], str):
                raise _HttpError(400, f"'{key}' must be a string")
        tpl = req.get("template")
        if tpl and tpl.count("{{") > tpl.count("}}"):
            raise _HttpError(400, "template error: unclosed action")
        if not req.get("from") and files is None:
            raise _HttpError(400, "neither 'from' or 'files' was specified")
        h.stream(req.get("stream", True) is not False, lambda: self._create_steps(_full_name(name), req))

    @staticmethod
    def _check_parameters(params) -> None:
        if not isinstance(params, dict):
            raise _HttpError(400, "'parameters' must be an object")
        if params.get("typical_p") is not None:
            raise _HttpError(400, "typical_p is deprecated and cannot be set as a model parameter; pass it as a "
                                  "request option instead")
        for k, v in params.items():
            kind = _PARAMS.get(k)
            if kind is None:
                raise _HttpError(400, f"unknown parameter '{k}'")
            ok = (isinstance(v, list) and all(isinstance(x, str) for x in v) if kind is list
                  else isinstance(v, bool) if kind is bool
                  else isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer()))
            if not ok:
                raise _HttpError(400, f"invalid {kind.__name__} value for parameter '{k}': {v!r}")

    def _create_steps(self, name: str, req: dict):
        layers, details, info = [], {}, {}
        if req.get("from"):
            with self._lock:
                base = self._models.get(req["from"])
                base_meta = copy.deepcopy(self._meta.get(_full_name(req["from"])))
            if base is None:
                raise _StreamError(f"pull model manifest: model '{req['from']}' not found in this test server")
            yield {"status": "using existing model " + _full_name(req["from"])}
            fields = base_meta["fields"]
            layers, details, info = base_meta["layers"], base_meta["details"], base_meta["model_info"]
        else:
            fields = {}
        for fname, digest in sorted((req.get("files") or {}).items()):
            path = self.blob_path(digest)
            with open(path, "rb") as f:
                magic = f.read(4)
            if fname.endswith(".gguf") or magic == b"GGUF":
                yield {"status": "parsing GGUF"}
                try:
                    kv = _read_gguf_kv(path)
                except ValueError as exc:
                    raise _StreamError(str(exc)) from None
                arch = kv.get("general.architecture", "")
                ftype = kv.get("general.file_type")
                details = {"parent_model": "", "format": "gguf", "family": arch, "families": [arch] if arch else None,
                           "parameter_size": "", "quantization_level": _FILE_TYPES.get(ftype, "") if ftype is not None
                           else ""}
                info = {k: v for k, v in kv.items() if not k.startswith("tokenizer.") and k != "general.name"}
                layers = [lyr for lyr in layers if lyr["mediaType"] != "application/vnd.ollama.image.model"]
                layers.append({"mediaType": "application/vnd.ollama.image.model", "digest": digest,
                               "size": path.stat().st_size, "from": fname})
                yield {"status": f"using existing layer {digest.replace(':', '-')}"}
            elif fname.endswith(".safetensors"):
                raise _StreamError("safetensors imports are not served by this test server", 400)
            else:
                raise _StreamError("unknown type", 400)
        for fname, digest in sorted((req.get("adapters") or {}).items()):
            layers.append({"mediaType": "application/vnd.ollama.image.adapter", "digest": digest,
                           "size": self.blob_path(digest).stat().st_size, "from": fname})
        if req.get("quantize"):
            yield {"status": f"quantizing {details.get('quantization_level') or 'F16'} model to {req['quantize']}"}
            details["quantization_level"] = req["quantize"].upper()
        for key in ("template", "system", "license", "parameters", "messages"):
            if req.get(key) is not None:
                fields[key] = copy.deepcopy(req[key])
        for key, media in (("template", "template"), ("system", "system"), ("license", "license"),
                           ("parameters", "params"), ("messages", "messages")):
            if fields.get(key) is None:
                continue
            data = (fields[key] if isinstance(fields[key], str) else json.dumps(fields[key])).encode()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            layers = [lyr for lyr in layers if lyr["mediaType"] != f"application/vnd.ollama.image.{media}"]
            layers.append({"mediaType": f"application/vnd.ollama.image.{media}", "digest": digest, "size": len(data)})
            yield {"status": f"creating new layer {digest.replace(':', '-')}"}
        yield {"status": "writing manifest"}
        manifest = json.dumps({"schemaVersion": 2, "layers": layers}, sort_keys=True).encode()
        with self._lock:
            self._models[name] = copy.deepcopy(req)
            self._meta[name] = {"fields": fields, "layers": layers, "details": details, "model_info": info, "modified_at": _now(),
                                "digest": hashlib.sha256(manifest).hexdigest(),
                                "size": sum(lyr["size"] for lyr in layers)}
        yield {"status": "success"}

    def _existing(self, name) -> str:
        """The full name of the model ``name`` (call with the lock held); a 404 when there is none."""
        if not isinstance(name, str) or name not in self._models:
            raise _HttpError(404, f"model '{name}' not found")
        return _full_name(name)

    def _show(self, h) -> None:
        req = h.read_json()
        with self._lock:
            full = self._existing(_model_name(req))
            meta = copy.deepcopy(self._meta[full])
        fields = meta["fields"]
        lic = fields.get("license")
        licenses = [lic] if isinstance(lic, str) else list(lic or [])
        resp = {"license": "\n".join(licenses), "modelfile": self._modelfile_text(full, fields, meta),
                "parameters": _parameters_text(fields.get("parameters") or {}),
                "template": fields.get("template") or "{{ .Prompt }}", "system": fields.get("system") or "",
                "details": meta["details"], "model_info": meta["model_info"], "capabilities": ["completion"],
                "modified_at": meta["modified_at"]}
        if fields.get("messages"):
            resp["messages"] = fields["messages"]
        h.send_json(200, resp)

    def _modelfile_text(self, full: str, fields: dict, meta: dict) -> str:
        def quote(s: str) -> str:  # Ollama's parser.quote
            if "\n" in s or s.startswith(" ") or s.endswith(" "):
                return f'"""{s}"""' if '"' in s else f'"{s}"'
            return s

        lines = ['# Modelfile generated by "ollama show"', "# To build a new Modelfile based on this, replace FROM with:",
                 f"# FROM {full}", ""]
        for lyr in meta["layers"]:
            if lyr["mediaType"].endswith(".model"):
                lines.append(f"FROM {self.blob_path(lyr['digest'])}")
            elif lyr["mediaType"].endswith(".adapter"):
                lines.append(f"ADAPTER {self.blob_path(lyr['digest'])}")
        lines.append(f"TEMPLATE {quote(fields.get('template') or '{{ .Prompt }}')}")
        if fields.get("system"):
            lines.append(f"SYSTEM {quote(fields['system'])}")
        for k, vals in sorted((fields.get("parameters") or {}).items()):
            for v in vals if isinstance(vals, list) else [vals]:
                lines.append(f"PARAMETER {k} {quote(_go_value(v, bare=True))}")
        for m in fields.get("messages") or []:
            lines.append(f"MESSAGE {m.get('role')} {quote(str(m.get('content', '')))}")
        lic = fields.get("license")
        for text in [lic] if isinstance(lic, str) else list(lic or []):
            lines.append(f"LICENSE {quote(text)}")
        return "\n".join(lines) + "\n"

    def _tags(self, h) -> None:
        h.read_body()
        with self._lock:
            models = [{"name": n, "model": n, "modified_at": self._meta[n]["modified_at"], "size": self._meta[n]["size"],
                       "digest": self._meta[n]["digest"], "details": self._meta[n]["details"]}
                      for n in sorted(self._models)]
        h.send_json(200, {"models": models})

    def _push(self, h) -> None:
        req = h.read_json()
        name = _model_name(req)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise _HttpError(400, "invalid model name")
        h.stream(req.get("stream", True) is not False, lambda: self._push_steps(_full_name(name), req))

    def _push_steps(self, name: str, req: dict):
        with self._lock:
            meta = copy.deepcopy(self._meta.get(name))
        if meta is None:
            raise _StreamError(f"open manifests/{name}: no such file or directory (model '{name}' not found)")
        yield {"status": "retrieving manifest"}
        if "/" not in name.split(":")[0]:
            raise _StreamError("you are not authorized to push to this namespace, create the model under a "
                               "namespace you own")
        for lyr in meta["layers"]:
            yield {"status": f"pushing {lyr['digest'][7:19]}", "digest": lyr["digest"], "total": lyr["size"],
                   "completed": lyr["size"]}
        yield {"status": "pushing manifest"}
        with self._lock:
            self._pushed.append({"model": name, "insecure": bool(req.get("insecure")), "stream": req.get("stream")})
        yield {"status": "success"}

    def _copy(self, h) -> None:
        req = h.read_json()
        src, dst = req.get("source") or "", req.get("destination") or ""
        if not isinstance(dst, str) or not _NAME.fullmatch(dst):
            raise _HttpError(400, "invalid destination model name")
        with self._lock:
            full = self._existing(src)
            self._models[_full_name(dst)] = {**copy.deepcopy(self._models[full]), "model": dst}
            self._meta[_full_name(dst)] = copy.deepcopy(self._meta[full])
        h.send_bytes(200, b"")

    def _delete(self, h) -> None:
        req = h.read_json()
        with self._lock:
            full = self._existing(_model_name(req))
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


def _go_value(v, *, bare: bool = False) -> str:
    """A parameter value as Go's %#v prints the JSON-decoded value (strings quoted), or bare for a Modelfile."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e21 else repr(float(v))
    return str(v) if bare else json.dumps(str(v), ensure_ascii=False)


def _parameters_text(params: dict) -> str:
    """Ollama's /api/show "parameters": one ``%-30s %#v`` line per value."""
    lines = []
    for k, vals in sorted(params.items()):
        for v in vals if isinstance(vals, list) else [vals]:
            lines.append(f"{k:<30} {_go_value(v)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- HTTP


class _Handler(RequestHandler):
    server_version = "TestOllama/1.0"
    label = "ollama"

    def on_request(self) -> None:
        self.owner._record_request(self.command, self.req_path)

    def route(self) -> None:
        self.owner.route(self, self.command, self.req_path)

    def apply_fault(self, fault: dict) -> bool:
        if fault["action"] == "drop":
            self.drop()
        self.read_body()
        self.send_json(fault["status"], {"error": f"injected fault: HTTP {fault['status']}"})
        return True

    def record(self, status: int | None) -> None:
        self.owner._record_response(self.command, self.req_path, status, self._body_bytes)

    def read_json(self) -> dict:
        body = self.read_body()
        if not body.strip():
            raise _HttpError(400, "missing request body")
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise _HttpError(400, str(exc)) from None
        if not isinstance(obj, dict):
            raise _HttpError(400, "json: cannot unmarshal into the request object")
        return obj

    def send_bytes(self, status: int, data: bytes, headers: dict | None = None) -> None:  # with a Date header
        super().send_bytes(status, data, {**(headers or {}), "Date": self.date_time_string()})

    def stream(self, streaming: bool, steps) -> None:
        """Run a generator of progress objects: NDJSON in chunks (errors as a last ``{"error"}`` line), or, with
        streaming false, the last object or the error with its status (500 unless the step set one)."""
        if not streaming:
            last = {}
            try:
                for last in steps():
                    pass
            except _StreamError as e:
                return self.send_json(e.status or 500, {"error": e.message})
            return self.send_json(200, last)
        self.begin_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(obj):
            data = json.dumps(obj).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            for obj in steps():
                write(obj)
        except _StreamError as e:
            write({"error": e.message, **({"status": e.status} if e.status else {})})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
