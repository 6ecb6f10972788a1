"""The merge of a LoRA adapter into its base, computed one output tensor at a time from a recipe.

A ``MergeRecipe`` says, for every tensor of the merged model, which base tensor it starts from, which
adapter tensors update it and by what scale (or which adapter tensor replaces it), and its output
dtype and shape. ``MergedTensors`` computes those tensors from the base's safetensors files and the
adapter's file: each base tensor read on its own (in row blocks when it is large), the update computed
in fp32 in peft's order of operations, the result cast once to the output dtype. merge-tool's
``merged_16bit`` writes what it computes; gguf-tool streams the very same tensors into llama.cpp's
converter when the merged weights were never written (a deferred merge: the recipe saved as JSON
beside the merged model's config), so both give the same numbers by construction.

Paths never enter the recipe: whoever computes from it is given the base folder and the adapter folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InputNotFound, InvalidInput
from .st_io import load_tensor, model_specs

RECIPE_NAME = "merge_recipe.json"
RECIPE_SCHEMA = "upload-driver/merge-recipe"
CHUNK_ELEMENTS = 8 << 20  # rows are merged in blocks of about 32 MB of fp32


@dataclass(frozen=True)
class TensorRecipe:
    """One output tensor: its base tensor ``src`` (the embedding, for an untied output layer), or the
    adapter tensor that ``replace``s it; the LoRA matrices updating it (``lora``: role -> adapter key,
    with its ``kind``) and their ``scale``; an adapter bias added (``bias_add``)."""

    src: str
    lora: dict | None = None
    scale: float | None = None
    replace: str | None = None
    bias_add: str | None = None

    @property
    def unchanged(self) -> bool:
        return self.lora is None and self.replace is None and self.bias_add is None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class MergeRecipe:
    """The whole merge: each output tensor's recipe and spec (``{"dtype", "shape"}``), the output's
    shards (file name -> tensor names, in writing order), whether the adapter stores its matrices
    transposed (``fan_in_fan_out``) and where its weights are inside the adapter folder."""

    tensors: dict[str, TensorRecipe]
    out_specs: dict[str, dict]
    shards: dict[str, list[str]]
    fan_in_fan_out: bool
    adapter_file: str = "adapter_model.safetensors"

    def order(self) -> list[str]:
        """The tensors in the order a reader of the written folder meets them: shard files by name,
        tensors by name within each (as llama.cpp's converter and safetensors list them)."""
        return [n for fname in sorted(self.shards) for n in sorted(self.shards[fname])]

    def to_json(self) -> str:
        data = {
            "schema": RECIPE_SCHEMA,
            "schema_version": 1,
            "adapter_file": self.adapter_file,
            "fan_in_fan_out": self.fan_in_fan_out,
            "shards": self.shards,
            "tensors": {n: {**r.as_dict(), **self.out_specs[n]} for n, r in self.tensors.items()},
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def read(cls, folder: Path) -> MergeRecipe:
        """The recipe saved in ``folder``; a damaged or foreign file is refused in one line."""
        path = Path(folder) / RECIPE_NAME
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != RECIPE_SCHEMA or data.get("schema_version") != 1:
                raise ValueError(f"not a version-1 {RECIPE_SCHEMA}")
            tensors, specs = {}, {}
            for name, entry in data["tensors"].items():
                specs[name] = {"dtype": entry.pop("dtype"), "shape": list(entry.pop("shape"))}
                tensors[name] = TensorRecipe(**entry)
            return cls(tensors, specs, data["shards"], bool(data["fan_in_fan_out"]), data["adapter_file"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(
                f"{path} is not a readable merge recipe ({exc}): make the merged folder again with merge-tool",
                path=str(path),
            ) from None


def is_deferred(manifest: dict | None) -> bool:
    """Whether a step manifest is merge-tool's for a merge whose weights were deferred: the folder holds
    the config, tokenizer and recipe but no model files, and is never published as a model."""
    weights = ((manifest or {}).get("decisions") or {}).get("weights")
    return isinstance(weights, dict) and weights.get("deferred") is True


def row_blocks(shape: list, whole: bool, chunk: int = CHUNK_ELEMENTS) -> list:
    """Row ranges to compute one at a time; ``[None]`` means the whole tensor at once."""
    if whole or len(shape) < 2:
        return [None]
    cols = 1
    for d in shape[1:]:
        cols *= d
    step = max(1, chunk // max(cols, 1))
    return [(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def merge_rows(rec: TensorRecipe, load_base, load, fan: bool, rows):
    """Rows ``rows`` (all when None) of the merged fp32 tensor: the base (or its replacement) plus
    the scaled LoRA update, in peft's order of operations; DoRA rescales each output row to the
    learnt magnitude, with the norm taken over the updated weight."""
    sl = slice(*rows) if rows else slice(None)
    w = load(rec.replace, sl) if rec.replace else load_base(sl)
    roles = rec.lora
    if roles:
        if roles["kind"] == "embedding":
            delta = (load(roles["emb_B"]) @ load(roles["emb_A"])[:, sl]).T
        elif fan:
            delta = (load(roles["B"]) @ load(roles["A"])[:, sl]).T
        else:
            delta = load(roles["B"], sl) @ load(roles["A"])
        w.add_(delta.mul_(rec.scale))
        if "magnitude" in roles:
            oriented = w.T if fan else w
            factor = load(roles["magnitude"], slice(None) if fan else sl) / oriented.norm(p=2, dim=1)
            oriented.mul_(factor[:, None])
    if rec.bias_add:
        w.add_(load(rec.bias_add) * rec.scale)
    return w


@dataclass(frozen=True)
class Loaders:
    """What computes one output tensor: ``load_base(rows slice)``, ``load(adapter key, rows slice)``,
    whether it is the base tensor copied as it is (``pure_copy``) and whether it must be computed whole."""

    rec: TensorRecipe
    load_base: Callable
    load: Callable
    pure_copy: bool
    whole_only: bool


class MergedTensors:
    """The merged model's tensors, computed from the base's tensors (``base_specs``: name -> {"file",
    "dtype", "shape"}, as ``st_io.model_specs`` reads them) and the adapter's weights file, on
    ``device``. ``dequantize(name, spec)``, when given, makes the float tensor of a base tensor whose
    spec is marked ``bnb`` (merge-tool's bitsandbytes bases)."""

    def __init__(
        self, recipe: MergeRecipe, base_specs: dict, adapter_file: Path, *, device="cpu", dequantize=None, chunk=None
    ):
        self.recipe, self.base_specs, self.adapter_file = recipe, base_specs, Path(adapter_file)
        self.device, self.dequantize, self.chunk = device, dequantize, chunk or CHUNK_ELEMENTS

    @classmethod
    def from_folders(cls, recipe: MergeRecipe, base_dir: Path, adapter_dir: Path) -> MergedTensors:
        """The recipe's tensors from a base model folder and the adapter (or trainer output) folder it
        names its weights file in; a base that lacks a tensor, or has it in another shape, is refused."""
        from .safety import join_inside

        base_specs = model_specs(Path(base_dir))
        for name, rec in recipe.tensors.items():
            if rec.replace is None and rec.src not in base_specs:
                raise InvalidInput(
                    f"the base folder {base_dir} has no tensor {rec.src}, which the merge recipe reads: "
                    "pass the base model the merge was planned with",
                    tensor=rec.src,
                )
            shape = base_specs.get(rec.src, {}).get("shape")
            if rec.replace is None and shape != recipe.out_specs[name]["shape"]:
                raise InvalidInput(
                    f"the base's {rec.src} has shape {shape}, the merge recipe expects "
                    f"{recipe.out_specs[name]['shape']}: pass the base model the merge was planned with",
                    tensor=rec.src,
                )
        adapter_file = join_inside(Path(adapter_dir), recipe.adapter_file, "the merge recipe's adapter file")
        if not adapter_file.is_file():
            raise InputNotFound(
                f"no {recipe.adapter_file} in {adapter_dir}: pass the adapter (or trainer output) folder the "
                "merge was planned with",
                path=str(adapter_file),
            )
        return cls(recipe, base_specs, adapter_file)

    def loaders(self, name: str) -> Loaders:
        import torch

        rec, device = self.recipe.tensors[name], self.device
        src = self.base_specs[rec.src]
        cache = {}

        def fp32(t):  # always a private copy: the merge updates it in place
            return t.to(device=device, dtype=torch.float32, copy=True) if t.is_floating_point() else t

        def load(key, sl=slice(None)):
            if sl != slice(None):
                return fp32(load_tensor(self.adapter_file, key, rows=(sl.start, sl.stop)))
            if key not in cache:
                cache[key] = fp32(load_tensor(self.adapter_file, key))
            return cache[key]

        quantized = "bnb" in src
        pure_copy = rec.unchanged and not quantized and src["dtype"] == self.recipe.out_specs[name]["dtype"]
        if quantized:
            whole = fp32(self.dequantize(rec.src, src))
            load_base = whole.__getitem__
        else:

            def load_base(sl):
                rows = None if sl == slice(None) else (sl.start, sl.stop)
                raw = load_tensor(src["file"], rec.src, rows=rows)
                return raw if pure_copy else fp32(raw)

        whole_only = quantized or (self.recipe.fan_in_fan_out and "magnitude" in (rec.lora or {}))
        return Loaders(rec, load_base, load, pure_copy, whole_only)

    def blocks(self, name: str):
        """Output tensor ``name`` as row blocks in its output dtype, on the CPU."""
        import torch

        from .st_io import CODES

        parts = self.loaders(name)
        want = getattr(torch, CODES[self.recipe.out_specs[name]["dtype"]])
        fan = self.recipe.fan_in_fan_out
        for rows in row_blocks(self.recipe.out_specs[name]["shape"], parts.whole_only, self.chunk):
            if parts.pure_copy:
                w = parts.load_base(slice(*rows) if rows else slice(None))
            else:
                w = merge_rows(parts.rec, parts.load_base, parts.load, fan, rows)
            yield (w.to(dtype=want) if w.is_floating_point() else w).cpu()

    def tensor(self, name: str):
        """Output tensor ``name`` whole, in its output dtype, on the CPU."""
        import torch

        parts = list(self.blocks(name))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def base_source(self, name: str) -> tuple | None:
        """The base tensor output ``name`` reads, as (file, name); None when replaced or dequantized
        (for ``st_io.read_ahead``)."""
        rec = self.recipe.tensors[name]
        src = None if rec.replace else self.base_specs[rec.src]
        return None if src is None or "bnb" in src else (src["file"], rec.src)
