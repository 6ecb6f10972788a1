"""The request side of the Ollama server of our own (``servers.ollama``): model names and digests, the models by
name, checks of /api/create requests, the GGUF header a model file brings, the layers of a model's texts and
parameters, and the HTTP handler (JSON bodies, NDJSON progress streams, injected faults)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from .http import HttpError, RequestHandler
from .modelfile import PARAMS

__all__ = [
    "DIGEST",
    "NAME",
    "Handler",
    "Models",
    "StreamError",
    "check_create",
    "field_layers",
    "full_name",
    "gguf_meta",
    "model_name",
    "now",
]

DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
NAME = re.compile(rf"(?:[A-Za-z0-9.-]+(?::\d+)?/)?(?:{_PART}/)?{_PART}(?::{_PART})?")
_CREATE_FIELDS = {
    "model",
    "name",
    "stream",
    "quantize",
    "quantization",
    "from",
    "files",
    "adapters",
    "template",
    "license",
    "system",
    "parameters",
    "messages",
    "renderer",
    "parser",
    "requires",
    "info",
    "capabilities",
    "remote_host",
}
# llama.cpp's general.file_type values, as Ollama names them in details.quantization_level
_FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat()


def model_name(req: dict):
    """The model a request names (``model``, or the older ``name``)."""
    return req.get("model") or req.get("name") or ""


def full_name(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


class Models(dict):
    """A dict keyed by full model name that also finds ``name`` without its ``:latest``."""

    def __getitem__(self, key):
        return super().__getitem__(full_name(key))

    def __contains__(self, key):
        return super().__contains__(full_name(key)) if isinstance(key, str) else False

    def get(self, key, default=None):
        return super().get(full_name(key), default) if isinstance(key, str) else default


class StreamError(Exception):
    """A failure inside a streamed operation: an ``{"error"}`` line (or, with stream false, ``status``)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message, self.status = message, status


def read_gguf_kv(path: Path) -> dict:
    """GGUF header key/values (scalars and strings; arrays as their length). Raises ValueError when not GGUF."""
    from gguf import GGUFReader, GGUFValueType

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("invalid file magic")
    fields = GGUFReader(path).fields.values()
    return {
        f.name: len(f.data) if f.types[0] == GGUFValueType.ARRAY else f.contents()
        for f in fields
        if not f.name.startswith("GGUF.")
    }


def gguf_meta(path: Path) -> tuple[dict, dict]:
    """(details, model_info) of a GGUF model file, as /api/show gives them; a StreamError when it is not GGUF."""
    try:
        kv = read_gguf_kv(path)
    except Exception as exc:  # noqa: BLE001 - any failure to read the file is the create's error
        raise StreamError(str(exc)) from None
    arch, ftype = kv.get("general.architecture", ""), kv.get("general.file_type")
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": "",
        "quantization_level": "" if ftype is None else _FILE_TYPES.get(ftype, ""),
    }
    return details, {k: v for k, v in kv.items() if not k.startswith("tokenizer.") and k != "general.name"}


def _check_file_name(fname: str) -> None:
    parts = fname.split("/")
    if (
        fname in ("", ".")
        or fname.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or any(c in fname for c in "\\:")
    ):
        raise HttpError(400, f"file path must be relative: {fname}")


def _check_create_fields(req: dict) -> None:
    """A create request of the current API, with a valid model name."""
    if "modelfile" in req:
        raise HttpError(
            400,
            "the 'modelfile' field was removed from /api/create in Ollama 0.5.5: send 'files' "
            "(blob digests), 'template', 'system', 'parameters' and 'license' instead",
        )
    unknown = sorted(set(req) - _CREATE_FIELDS)
    if unknown:
        raise HttpError(400, f"unknown create fields: {', '.join(unknown)}")
    name = model_name(req)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise HttpError(400, "invalid model name")


def _check_create_values(req: dict) -> None:
    """Parameters, licence and texts of the types Ollama takes; something to make the model from."""
    if req.get("parameters") is not None:
        _check_parameters(req["parameters"])
    lic = req.get("license")
    if lic is not None and not all(isinstance(x, str) for x in (lic if isinstance(lic, list) else [lic])):
        raise HttpError(400, "license must be a string or a list of strings")
    for key in ("template", "system", "quantize", "from"):
        if req.get(key) is not None and not isinstance(req[key], str):
            raise HttpError(400, f"'{key}' must be a string")
    tpl = req.get("template")
    if tpl and tpl.count("{{") > tpl.count("}}"):
        raise HttpError(400, "template error: unclosed action")
    if not req.get("from") and req.get("files") is None:
        raise HttpError(400, "neither 'from' or 'files' was specified")


def _check_blobs(what: str, group, blob_path) -> None:
    """``files`` or ``adapters``: relative file names mapped to digests of uploaded blobs."""
    if group is None:
        return
    if not isinstance(group, dict) or not all(isinstance(v, str) for v in group.values()):
        raise HttpError(400, f"'{what}' must map file names to blob digests")
    for fname, digest in group.items():
        _check_file_name(fname)
        if not DIGEST.fullmatch(digest):
            raise HttpError(400, f"invalid digest for {fname}: invalid digest format")
        if not blob_path(digest).exists():
            raise HttpError(
                400,
                f"blob not found for {fname} (digest {digest}): open {blob_path(digest)}: no such file or directory",
            )


def check_create(req: dict, blob_path) -> None:
    """A create request Ollama takes (an HttpError 400 when not); ``blob_path(digest)``: where a blob is stored."""
    _check_create_fields(req)
    for what in ("files", "adapters"):
        _check_blobs(what, req.get(what), blob_path)
    _check_create_values(req)


def _param_ok(kind: type, v) -> bool:
    if kind is list:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if kind is bool:
        return isinstance(v, bool)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer())


def _check_parameters(params) -> None:
    if not isinstance(params, dict):
        raise HttpError(400, "'parameters' must be an object")
    if params.get("typical_p") is not None:
        raise HttpError(
            400, "typical_p is deprecated and cannot be set as a model parameter; pass it as a request option instead"
        )
    for k, v in params.items():
        kind = PARAMS.get(k)
        if kind is None:
            raise HttpError(400, f"unknown parameter '{k}'")
        if not _param_ok(kind, v):
            raise HttpError(400, f"invalid {kind.__name__} value for parameter '{k}': {v!r}")


def field_layers(req: dict, meta: dict):
    """The create request's texts and parameters over the base model's, each as a layer of its own."""
    fields = meta["fields"]
    fields.update(
        {
            key: copy.deepcopy(req[key])
            for key in ("template", "system", "license", "parameters", "messages")
            if req.get(key) is not None
        }
    )
    for key, media in (
        ("template", "template"),
        ("system", "system"),
        ("license", "license"),
        ("parameters", "params"),
        ("messages", "messages"),
    ):
        if fields.get(key) is None:
            continue
        data = (fields[key] if isinstance(fields[key], str) else json.dumps(fields[key])).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        meta["layers"] = [lyr for lyr in meta["layers"] if lyr["mediaType"] != f"application/vnd.ollama.image.{media}"]
        meta["layers"].append(
            {"mediaType": f"application/vnd.ollama.image.{media}", "digest": digest, "size": len(data)}
        )
        yield {"status": f"creating new layer {digest.replace(':', '-')}"}


# ------------------------------------------------------------------------------------------------------- HTTP


class Handler(RequestHandler):
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
            raise HttpError(400, "missing request body")
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        if not isinstance(obj, dict):
            raise HttpError(400, "json: cannot unmarshal into the request object")
        return obj

    def send_bytes(self, status: int, data: bytes, headers: dict | None = None) -> None:  # with a Date header
        super().send_bytes(status, data, {**(headers or {}), "Date": self.date_time_string()})

    def stream(self, streaming: bool, steps) -> None:
        """Run a generator of progress objects: NDJSON in chunks (errors as a last ``{"error"}`` line), or, with
        streaming false, the last object or the error with its status (500 unless the step set one)."""
        if not streaming:
            last = {}
            try:
                for step in steps():
                    last = step
            except StreamError as e:
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
        except StreamError as e:
            write({"error": e.message, **({"status": e.status} if e.status else {})})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
