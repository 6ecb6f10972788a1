"""What merge-tool's core and its format modules pass each other (formats/__init__.py): the ``Job`` a
format is given, the ``Plan`` its ``plan(job)`` returns and its ``write(plan, folder, progress)``
reads, and the ``Written`` that ``write`` returns. All frozen: a format reads them and makes new ones,
it never changes what it was given. The dicts left in them are free-form JSON for the manifest
(parameters, decisions, a quantization summary) or another module's record (what inspect found)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar


@dataclass(frozen=True)
class Adapter:
    """A PEFT adapter as read (``merge_tool.adapter.read_adapter``): its config, its safetensors weights
    file, the tensors' specs, grouped into LoRA ``modules`` (module path -> role -> key) and whole-tensor
    ``replacements`` (base tensor name -> key)."""

    dir: Path
    config: dict
    weights: Path
    specs: dict
    modules: dict
    replacements: dict
    converted_from: str | None = None  # the pickle (adapter_model.bin) the weights were converted from


@dataclass(frozen=True)
class Base:
    """The resolved base model (``merge_tool.base.resolve_base``): where it is, where from, its config
    read without code references, and whether it is a bitsandbytes checkpoint merged dequantized."""

    path: Path
    source: str  # local or hub
    repo_id: str | None
    revision: str | None
    requested: str  # the name asked for (--base, else the adapter config's)
    config: dict
    quantized: str | None = None  # bnb-4bit or bnb-8bit: the merge dequantizes it
    warnings: tuple[str, ...] = ()
    replaces: str | None = None  # the quantized base this 16-bit original stands in for
    tried_originals: tuple[str, ...] | None = None  # 16-bit originals looked for in vain

    @classmethod
    def from_resolved(cls, found: dict) -> Base:
        tried = found.get("tried_originals")
        return cls(
            path=found["path"],
            source=found["source"],
            repo_id=found.get("repo_id"),
            revision=found.get("revision"),
            requested=found["requested"],
            config=found["config"],
            quantized=found.get("quantized"),
            warnings=tuple(found.get("warnings") or ()),
            replaces=found.get("replaces"),
            tried_originals=None if tried is None else tuple(tried),
        )

    def decision(self) -> dict:
        """The manifest's ``decisions.base`` (without the card): the config and warnings left out."""
        decision = {
            "path": str(self.path),
            "source": self.source,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "requested": self.requested,
            "quantized": self.quantized,
        }
        if self.replaces is not None:
            decision["replaces"] = self.replaces
        if self.tried_originals is not None:
            decision["tried_originals"] = list(self.tried_originals)
        return decision


@dataclass(frozen=True)
class Model:
    """A merged 16-bit model folder (the merged_16bit set, ``--model``) and its tensors' specs."""

    path: Path
    specs: dict


@dataclass(frozen=True)
class Validation:
    """How a quantized format is checked: the validation text (the built-in one when None), the folder
    keeping reference log-probabilities between steps and runs (None: a scratch folder), and the model's
    identity that names its reference file (``eval_reference.model_key``: gguf-tool names the same file)."""

    eval_text: Path | None = None
    store: Path | None = None
    model_key: str = ""


@dataclass(frozen=True)
class Job:
    """What a format is asked to make. From the adapter (``core``): ``adapter``, and ``base`` when the
    format's ``NEEDS_BASE``; from the merge (``from_merged``): ``model``. ``params`` are the options as
    the manifest's ``parameters`` record them (``calibration``, ``device``...); ``found`` is what
    ``upload_common.trainer_output.inspect_trainer_output`` found (from the merge: its ``tokenizer``)."""

    params: dict
    found: dict
    adapter: Adapter | None = None
    base: Base | None = None
    model: Model | None = None
    validation: Validation = Validation()


Data = TypeVar("Data")


@dataclass(frozen=True)
class Plan(Generic[Data]):
    """What a format's ``plan(job)`` worked out before anything is written: the bytes its files may
    take (checked against free disk), its ``decisions`` and ``warnings`` for the manifest, and in
    ``data`` whatever its ``write`` needs (the format's own frozen record, or None)."""

    job: Job
    estimated_bytes: int
    data: Data
    decisions: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Written:
    """What a format's ``write`` did: ``hashes`` (relative path -> sha256) of the files it hashed while
    writing (the rest are hashed afterwards) and, from a quantized format, its ``quantization`` summary
    and ``validation`` figures, which the manifest records; ``decisions`` the written files settle over
    the plan's (the dtype they hold, read back)."""

    hashes: dict[str, str] = field(default_factory=dict)
    quantization: dict | None = None
    validation: dict | None = None
    decisions: dict | None = None
