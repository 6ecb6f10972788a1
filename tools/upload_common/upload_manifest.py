"""The upload manifest (``upload_manifest.json``): docs-tool writes it, hf-push-tool reads it. Its name,
schema, the Hub's per-file limit both tools apply, and the gguf set's Ollama model as structured data:
the fields Ollama's /api/create takes, with the values docs-tool wrote in the Modelfile, so that the
publisher sends them as they are and never reads a Modelfile back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

UPLOAD_MANIFEST = "upload_manifest.json"
UPLOAD_SCHEMA = "upload-driver/upload-manifest"
UPLOAD_SCHEMA_VERSION = 2  # 2: the gguf set's "ollama" object carries the /api/create fields
HUB_FILE_LIMIT = 50 * 10**9  # the Hub refuses larger files; gguf-tool --split-max-size splits them

_SCALARS = (str, int, float, bool)


def _text_or_none(data: Mapping, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} is {type(value).__name__}, not text")
    return value


def _parameter(name, value) -> Any:
    """A /api/create parameter value: ``stop`` a list of strings, the others a string, number or boolean
    (or a list of them, as a Modelfile repeats a PARAMETER line)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"parameter name {name!r} is not text")
    if name == "stop":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("parameters.stop is not a list of strings")
        return tuple(value)
    if isinstance(value, list) and value and all(isinstance(v, _SCALARS) for v in value):
        return tuple(value)
    if not isinstance(value, _SCALARS):
        raise ValueError(f"parameters.{name} is {type(value).__name__}, not a string, number or boolean")
    return value


@dataclass(frozen=True)
class OllamaFields:
    """The Ollama model of the gguf set: the GGUF ``file`` of the set it is made from, its default name,
    and the /api/create fields exactly as the Modelfile beside it says them (None: no such line)."""

    file: str
    ollama_name: str
    template: str | None = None
    system: str | None = None
    license: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self):
        object.__setattr__(
            self,
            "parameters",
            MappingProxyType({k: tuple(v) if isinstance(v, list) else v for k, v in dict(self.parameters).items()}),
        )

    @property
    def stop(self) -> tuple[str, ...]:
        return tuple(self.parameters.get("stop") or ())

    def create_fields(self) -> dict:
        """What /api/create takes besides the model name and files: the fields with a value, lists as
        lists (as Ollama's own client sends a Modelfile's)."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters.items()}
        return {
            k: v
            for k, v in (
                ("template", self.template),
                ("system", self.system),
                ("license", self.license),
                ("parameters", params),
            )
            if v
        }

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "ollama_name": self.ollama_name,
            "template": self.template,
            "system": self.system,
            "license": self.license,
            "parameters": {k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters.items()},
        }

    @classmethod
    def from_json(cls, data) -> OllamaFields:
        """The fields of an upload manifest's "ollama" object; ValueError saying which one is malformed."""
        if not isinstance(data, dict):
            raise ValueError("it is not an object")
        for key in ("file", "ollama_name"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"{key} is not a name")
        params = data.get("parameters", {})
        if not isinstance(params, dict):
            raise ValueError("parameters is not an object")
        return cls(
            file=data["file"],
            ollama_name=data["ollama_name"],
            template=_text_or_none(data, "template"),
            system=_text_or_none(data, "system"),
            license=_text_or_none(data, "license"),
            parameters={k: _parameter(k, v) for k, v in params.items()},
        )
