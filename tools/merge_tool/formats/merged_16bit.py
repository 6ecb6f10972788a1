"""``merged_16bit``: the adapter merged into the base, streamed tensor by tensor.

Each output tensor is computed from one base tensor (memory-mapped, read on its own) and its LoRA
matrices, in fp32, then cast once to the output dtype and appended to the shard being written.
Peak memory is a few copies of the largest tensor, whatever the model size. No NaN or infinity is
written: the writer checks every block, and a refusal names the tensor and why (a damaged base, an
update beyond the output dtype's range)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from upload_common.block_writer import fsync_path
from upload_common.errors import InvalidInput, Unsupported
from upload_common.merge_stream import CHUNK_ELEMENTS as CHUNK
from upload_common.merge_stream import RECIPE_NAME, MergedTensors, MergeRecipe, TensorRecipe, merge_rows, row_blocks
from upload_common.st_io import (
    CODES,
    NonFiniteTensor,
    model_specs,
    nbytes,
    plan_shards,
    read_ahead,
    write_index,
    write_stream,
)

from .. import bnb
from ..adapter import check_mergeable, module_scale
from ..device import pick_device
from ..job import Adapter, Base, Job, Plan, Written
from ..written_dtype import FLOATS, conform, read_back

NEEDS_BASE = True
HEAD = "lm_head.weight"
EMBEDDINGS = (
    "model.embed_tokens.weight",
    "transformer.wte.weight",
    "model.decoder.embed_tokens.weight",
    "gpt_neox.embed_in.weight",
    "transformer.word_embeddings.weight",
    "model.embed_in.weight",
)
DTYPE_CODES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}


@dataclass(frozen=True)
class Merge:
    """What ``plan`` works out for ``write``: the ``recipe`` (each output tensor's source tensor, LoRA
    roles and scale, replacement, bias update; the output's specs and shards), the base's tensor specs,
    the merged config.json, the output dtype and where the maths runs."""

    recipe: MergeRecipe
    specs: dict
    model_config: dict
    out_dtype: str
    device: str
    deferred: bool = False  # the weights are left to gguf-tool: write the recipe, not the model files


def _base_name(name: str, specs: dict) -> str | None:
    if name in specs:
        return name
    head, _, rest = name.partition(".")
    for cand in (rest, f"model.{name}", f"transformer.{name}"):
        if cand in specs:
            return cand
    return None


def _output_dtype(requested: str, base: Base, specs: dict) -> tuple[str, str]:
    if requested != "auto":
        return DTYPE_CODES[requested], f"--dtype {requested}"
    cfg = base.config
    q = cfg.get("quantization_config") or {}
    named = str(q.get("bnb_4bit_compute_dtype") or cfg.get("dtype") or cfg.get("torch_dtype") or "")
    code = {"bfloat16": "BF16", "float16": "F16"}.get(named.removeprefix("torch."))
    if code:
        return code, f"the base's 16-bit dtype ({named})"
    floats = [s["dtype"] for s in specs.values() if s["dtype"] in ("BF16", "F16")]
    if floats:
        return max(set(floats), key=floats.count), "the base tensors' 16-bit dtype"
    return "BF16", "bf16, since the base is stored in 32-bit"


def _check_lora_shapes(module: str, roles: dict, aspecs: dict, wshape: list, fan_in_fan_out: bool) -> int:
    shape = {role: aspecs[key]["shape"] for role, key in roles.items() if role != "kind"}
    if roles["kind"] == "embedding":
        r = shape["emb_A"][0]
        expect = {"emb_A": [r, wshape[0]], "emb_B": [wshape[1], r]}
    else:
        out_f, in_f = (wshape[1], wshape[0]) if fan_in_fan_out else (wshape[0], wshape[1])
        r = shape["A"][0]
        expect = {"A": [r, in_f], "B": [out_f, r], "magnitude": [out_f], "B_bias": [out_f]}
    for role, got in shape.items():
        if got != expect[role]:
            raise InvalidInput(
                f"adapter tensor {roles[role]} has shape {got} but the base weight of {module} "
                f"has shape {wshape} (expected {expect[role]}): this adapter was trained for a "
                "different base; pass the right one with --base",
                tensor=roles[role],
                shapes=[got, wshape],
            )
    return r


def _target(name: str, what: str, specs: dict, recipes: dict, embed: str | None, tied: bool) -> str:
    """The base tensor an adapter tensor applies to (the tied output layer reads the embedding)."""
    if tied and name == HEAD:
        recipes.setdefault(HEAD, {})["src"] = embed
        return HEAD
    found = _base_name(name, specs)
    if not found:
        raise InvalidInput(
            f"adapter {what} targets {name}, which the base model does not have: this adapter "
            "was trained for a different base; pass the right one with --base",
            tensor=name,
        )
    return found


def _apply_lora(adapter: Adapter, specs: dict, recipes: dict, embed: str | None, tied: bool) -> set:
    """Each LoRA module's recipe (its matrices and scale, a trained bias); returns the tensors touched."""
    config, aspecs = adapter.config, adapter.specs
    fan, touched = bool(config.get("fan_in_fan_out")), set()
    for module, roles in sorted(adapter.modules.items()):
        wname = _target(module + ".weight", f"module {module}", specs, recipes, embed, tied)
        src_shape = specs[recipes[wname]["src"]]["shape"]
        rank = _check_lora_shapes(module, roles, aspecs, src_shape, fan)
        scale = module_scale(config, module, rank)
        recipes[wname].update(lora=roles, scale=scale)
        touched.add(wname)
        if "B_bias" in roles:
            bname = _base_name(module + ".bias", specs)
            if not bname:
                raise Unsupported(f"adapter trains a bias for {module} (lora_bias) but the base layer has none")
            recipes[bname].update(bias_add=roles["B_bias"], scale=scale)
    return touched


def _apply_replacements(adapter: Adapter, specs: dict, recipes: dict, embed: str | None, tied: bool) -> set:
    """Tensors the adapter saved whole (modules_to_save, resized embeddings); returns those touched."""
    touched = set()
    for name, key in sorted(adapter.replacements.items()):
        tname = _target(name, f"tensor {key}", specs, recipes, embed, tied)
        recipes[tname]["replace"] = key
        touched.add(tname)
        old, new = specs.get(recipes[tname]["src"], {}).get("shape"), adapter.specs[key]["shape"]
        if old != new and tname not in (embed, HEAD):
            raise InvalidInput(
                f"adapter tensor {key} has shape {new} but the base's {tname} has shape {old}: "
                "this adapter was trained for a different base; pass the right one with --base",
                tensor=key,
                shapes=[new, old],
            )
    return touched


def _model_config(
    base: Base, specs: dict, out_specs: dict, embed: str | None, untie: bool, out_dtype: str, warnings: list
) -> dict:
    """The merged model's config.json: the base's, unquantized, with its dtype and vocabulary size."""
    model_config = {k: v for k, v in base.config.items() if k not in ("quantization_config", "_pre_quantization_dtype")}
    if untie:
        model_config["tie_word_embeddings"] = False
    if embed:
        vocab = out_specs[embed]["shape"][0]
        head_rows = out_specs.get(HEAD, out_specs[embed])["shape"][0]
        if head_rows != vocab:
            raise InvalidInput(
                f"the adapter resized the vocabulary to {vocab} in {embed} but the output layer has "
                f"{head_rows} rows: save lm_head too (modules_to_save) when resizing",
                vocab=vocab,
            )
        if vocab != specs[embed]["shape"][0]:
            model_config["vocab_size"] = vocab
            warnings.append(f"vocabulary resized during training: {specs[embed]['shape'][0]} -> {vocab}")
    model_config["dtype"] = CODES[out_dtype]
    if "torch_dtype" in model_config:
        model_config["torch_dtype"] = CODES[out_dtype]
    return model_config


def _notes(job: Job, base: Base, warnings: list) -> None:
    if base.quantized:
        warnings.append(
            f"merged into the DEQUANTIZED {base.quantized} base {base.requested}: quality is that "
            "of the quantized model; pass the 16-bit original with --base for a better merge"
        )
    if job.params.get("engine") == "unsloth":
        from ..unsloth_engine import check_available

        warnings.append(f"merged by unsloth {check_available()} instead of the streaming merge")


def _deferral(job: Job) -> dict | None:
    """The manifest's ``decisions.weights`` when --defer-weights was given: deferred, or written all the
    same when only merge-tool can compute them."""
    if not job.params.get("defer_weights"):
        return None
    why = (
        "the base is quantized (bitsandbytes), which only merge-tool dequantizes"
        if job.base.quantized
        else "the adapter was converted from a pickle"
        if job.adapter.converted_from
        else "--engine unsloth merges by itself"
        if job.params.get("engine") == "unsloth"
        else None
    )
    if why:
        return {"deferred": False, "why": f"written although --defer-weights was given: {why}"}
    return {
        "deferred": True,
        "recipe": RECIPE_NAME,
        "why": "--defer-weights: not a model to publish; gguf-tool computes the weights from the base and the "
        "adapter while converting",
    }


def _adapter_file(job: Job) -> str:
    """The adapter's weights file relative to the trainer output (or adapter) folder given."""
    weights = job.adapter.weights
    try:
        return weights.relative_to(Path(job.found["root"])).as_posix()
    except (KeyError, ValueError):
        return weights.name


def plan(job: Job) -> Plan[Merge]:
    adapter, base = job.adapter, job.base
    check_mergeable(adapter.config)
    specs = model_specs(base.path)
    if base.quantized:
        specs = bnb.logical_specs(specs)
    warnings: list[str] = []
    recipes = {name: {"src": name} for name in specs}
    embed = next((n for n in EMBEDDINGS if n in specs), None)
    tied = embed is not None and (HEAD not in specs or base.config.get("tie_word_embeddings") is True)
    touched = _apply_lora(adapter, specs, recipes, embed, tied) | _apply_replacements(
        adapter, specs, recipes, embed, tied
    )
    untie = tied and bool(touched & {embed, HEAD})
    if untie:  # peft applies an embedding update to the input side only: keep the output side apart
        recipes.setdefault(HEAD, {"src": embed})
        warnings.append(
            "the base ties its input and output embeddings and the adapter changes one of them: "
            "the merged model stores both (tie_word_embeddings=false), as the adapter computed them"
        )
    out_dtype, dtype_reason = _output_dtype(job.params["dtype"], base, specs)
    out_specs = {}
    for name, rec in recipes.items():
        src = adapter.specs[rec["replace"]] if "replace" in rec else specs[rec["src"]]
        dtype = out_dtype if src["dtype"] in FLOATS else src["dtype"]
        out_specs[name] = {"dtype": dtype, "shape": list(src["shape"])}
    model_config = _model_config(base, specs, out_specs, embed, untie, out_dtype, warnings)
    dtype_name = CODES[out_dtype]
    _notes(job, base, warnings)
    largest = max(nbytes({"dtype": "F32", "shape": s["shape"]}) for s in out_specs.values())
    device, device_info = pick_device(job.params["device"], largest)
    shards = plan_shards(out_specs, job.params["max_shard_size"])
    fan = bool(adapter.config.get("fan_in_fan_out"))
    tensors = {n: TensorRecipe(**r) for n, r in recipes.items()}
    recipe = MergeRecipe(tensors, out_specs, shards, fan, _adapter_file(job))
    weights = _deferral(job)
    deferred = bool(weights and weights["deferred"])
    return Plan(
        job,
        (0 if deferred else sum(nbytes(s) for s in out_specs.values())) + (4 << 20),
        Merge(recipe, specs, model_config, out_dtype, device, deferred),
        decisions={
            **({"weights": weights} if weights else {}),
            "dtype": {"value": dtype_name, "why": dtype_reason},
            "device": device_info,
            "lora_modules": len(adapter.modules),
            "replaced_tensors": len(adapter.replacements),
            "tied_embeddings": tied,
            "shards": len(shards),
        },
        warnings=tuple(warnings),
    )


CHUNK_ELEMENTS = CHUNK  # rows are merged in blocks of about 32 MB of fp32


def merged_tensors(plan: Plan[Merge]) -> MergedTensors:
    """What computes the merged tensors (upload_common.merge_stream), bitsandbytes bases dequantized."""
    return MergedTensors(
        plan.data.recipe,
        plan.data.specs,
        plan.job.adapter.weights,
        device=plan.data.device,
        dequantize=bnb.dequantize,
        chunk=CHUNK_ELEMENTS,
    )


def _nonfinite_reason(plan: Plan[Merge], name: str) -> str:
    """Why output tensor ``name`` is not finite (the failure path only): a damaged base tensor, an
    update that overflows even in fp32, or merged values beyond the output dtype's range."""
    import torch

    merged = merged_tensors(plan)
    parts, recipe = merged.loaders(name), plan.data.recipe
    peak = 0.0
    for rows in row_blocks(recipe.out_specs[name]["shape"], parts.whole_only, merged.chunk):
        sl = slice(*rows) if rows else slice(None)
        if not parts.rec.replace and not bool(torch.isfinite(parts.load_base(sl)).all()):
            return (
                f"the base model's tensor {parts.rec.src} holds NaN or infinite values: the base is damaged; "
                "re-download it or pass another --base"
            )
        w = merge_rows(parts.rec, parts.load_base, parts.load, recipe.fan_in_fan_out, rows)
        if not bool(torch.isfinite(w).all()):
            return "the adapter's update overflows even in fp32: the adapter is broken; use an earlier checkpoint"
        peak = max(peak, float(w.abs().max()))
    code = recipe.out_specs[name]["dtype"]
    limit = torch.finfo(getattr(torch, CODES[code])).max
    return (
        f"merged values reach {peak:.4g}, beyond the {CODES[code]} range (±{limit:.4g}): merge with --dtype bf16 "
        "(or fp32)"
    )


def write(plan: Plan[Merge], folder, progress) -> Written:
    job, merge = plan.job, plan.data
    if job.params.get("engine") == "unsloth":
        from ..unsloth_engine import write as unsloth_write

        unsloth_write(job.adapter.config, job.adapter.weights, job.base.path, folder, merge.out_dtype)
        converted = conform(folder, merge.out_dtype)  # Unsloth keeps a float32 base in float32
        return Written(decisions={"dtype": read_back(folder, merge.out_dtype, plan.decisions["dtype"], converted)})
    (folder / "config.json").write_text(json.dumps(merge.model_config, indent=2) + "\n")
    if merge.deferred:
        (folder / RECIPE_NAME).write_text(merge.recipe.to_json())
        return Written()
    merged, out_specs, shards = merged_tensors(plan), merge.recipe.out_specs, merge.recipe.shards

    def produce(name):
        ahead(name)
        yield from merged.blocks(name)

    hashes = {}
    with ThreadPoolExecutor(2) as background:  # reads the next base tensor ahead; fsyncs finished shards
        ahead = read_ahead([n for names in shards.values() for n in names], merged.base_source, background.submit)
        for fname, names in shards.items():
            try:
                hashes[fname] = write_stream(folder / fname, names, out_specs, produce, on_bytes=progress)
            except NonFiniteTensor as exc:  # every output block is checked as it streams: say why this one failed
                name, bad = exc.fields["tensor"], exc.fields["nonfinite"]
                raise InvalidInput(
                    f"the merged model's tensor {name} would hold {bad} NaN/infinite value(s): "
                    f"{_nonfinite_reason(plan, name)}",
                    tensor=name,
                    nonfinite=bad,
                ) from None
            background.submit(fsync_path, folder / fname)
    write_index(folder, shards, out_specs)
    return Written(hashes, decisions={"dtype": read_back(folder, merge.out_dtype, plan.decisions["dtype"])})
