"""What one gguf-tool run is asked to do, checked before any work: the quant types, the intermediate
float type, the optional importance matrix and LoRA adapter, the validation thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from upload_common.contract import describe_input, read_manifest
from upload_common.errors import UsageError
from upload_common.merge_stream import MergedTensors, MergeRecipe, is_deferred
from upload_common.reference import TensorSource

from .quants import FLOAT_OUTTYPES, get_quant

DEFAULT_MIN_TOP1 = {"F32": 0.99, "F16": 0.99, "BF16": 0.99, "Q8_0": 0.97, "LoRA": 0.99}
DEFAULT_TOKENS = 1024  # of the validation text: two chunks of 512


@dataclass(frozen=True)
class GgufJob:
    model_dir: Path
    name: str
    wanted: tuple[str, ...]
    inter_type: str  # the float type converted to first (kept when it is also wanted)
    thresholds: dict
    imatrix: Path | None = None
    calibration: Path | None = None
    split_max_size: str | None = None
    lora: Path | None = None
    base: Path | None = None
    merge_adapter: Path | None = None  # the model folder holds a deferred merge of this adapter into ``base``
    validate: bool = True
    validate_tokens: int = DEFAULT_TOKENS
    eval_text: Path | None = None  # the user's validation text (else the built-in one)
    reference_cache: Path | None = None  # where reference log-probabilities are kept between runs

    @property
    def needs_tools(self) -> bool:
        """The library's C API cannot take an importance matrix: llama.cpp's programs do."""
        return bool(self.imatrix or self.calibration)

    def params(self) -> dict:
        return {
            "quants": list(self.wanted),
            "intermediate": self.inter_type,
            "imatrix": bool(self.imatrix),
            "calibration": bool(self.calibration),
            "split_max_size": self.split_max_size,
            "validate": self.validate,
            "validate_tokens": self.validate_tokens,
            "min_top1": self.thresholds,
            "name": self.name,
        }

    def inputs(self) -> dict:
        inputs = {"model": describe_input(self.model_dir)}
        for key, given in (("imatrix", self.imatrix), ("calibration", self.calibration), ("eval_text", self.eval_text)):
            if given:
                inputs[key] = describe_input(given)
        if self.lora:
            inputs.update(lora=describe_input(self.lora), lora_base=describe_input(self.base))
        if self.merge_adapter:
            inputs.update(merge_adapter=describe_input(self.merge_adapter), merge_base=describe_input(self.base))
        return inputs


def wanted_quants(quants, imatrix, calibration, lora, base) -> tuple[str, ...]:
    """The quant types asked for (each once, by its canonical name); usage errors for what cannot work."""
    wanted = tuple(dict.fromkeys(get_quant(q)["name"] for q in quants))
    if not wanted:
        raise UsageError("no --quant given: name at least one, e.g. --quant Q4_K_M")
    needy = [q for q in wanted if get_quant(q)["needs_imatrix"]]
    if needy and not (imatrix or calibration):
        raise UsageError(f"{', '.join(needy)} need an importance matrix: pass --imatrix FILE or --calibration TEXTFILE")
    for flag, given in (("--imatrix", imatrix), ("--calibration", calibration)):
        if given and not Path(given).is_file():
            raise UsageError(f"{flag} {given} does not exist")
    if lora and not base:
        raise UsageError("--lora needs --base DIR: the base model folder the adapter was trained on")
    return wanted


def deferred_merge(model_dir: Path, adapter, base) -> Path | None:
    """The adapter folder whose merge into ``base`` the converter computes, when ``model_dir`` is a merge
    whose weights were deferred (merge-tool --defer-weights); None for a folder holding its weights."""
    if not is_deferred(read_manifest(model_dir)):
        return None
    if not (adapter and base):
        raise UsageError(
            f"{model_dir} is a merge whose weights were deferred (merge-tool --defer-weights): pass --adapter "
            "(the trainer output or adapter folder) and --base (the base model folder) to compute them"
        )
    return Path(adapter).absolute()


def merged_tensors(model_dir: Path, base: Path, adapter: Path) -> TensorSource:
    """The deferred merge's tensors (specs and loader), computed from the base and the adapter by the
    recipe in ``model_dir``; a base or adapter that does not fit the recipe is refused here."""
    merged = MergedTensors.from_folders(MergeRecipe.read(model_dir), Path(base), Path(adapter))
    return TensorSource(merged.recipe.out_specs, merged.tensor)


def intermediate_type(wanted, outtype: str, config: dict) -> str:
    """A float type among the wanted ones, else --outtype, else the model's own dtype (BF16 or F16)."""
    floats = [q for q in wanted if q in FLOAT_OUTTYPES]
    inter_type = floats[0] if floats else {"auto": None, **{v: k for k, v in FLOAT_OUTTYPES.items()}}.get(outtype)
    if inter_type is None:
        inter_type = "BF16" if str(config.get("dtype") or config.get("torch_dtype")) == "bfloat16" else "F16"
    return inter_type
