"""The reference next-token log-probabilities of a Hugging Face model folder, computed in fp32 on the CPU
without ever holding the whole model: the model is built without weights (on the meta device) and run
through its own forward, and each part (the embeddings, each decoder layer, the final norm, the lm_head)
gets its tensors from the safetensors files, cast to fp32, just before it runs and gives them back just
after. Memory is one part's weights (the largest is the embedding or the lm_head) plus the activations.

Families it has been checked on stream (``STREAMED_TYPES``); any other model, or one whose checkpoint does
not hold exactly the tensors its skeleton expects, is loaded whole as before, and the result says so
(``Reference.streamed``, ``Reference.note``). The folder is untrusted: no code from it ever runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import st_io
from .errors import Unsupported

# decoder-only families whose layers live at model.model.layers, checked equal to the whole-model load
STREAMED_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2"})
STORED_FLOATS = frozenset({"F32", "F16", "BF16"})
FP32_BYTES = 4


@dataclass(frozen=True)
class Reference:
    """Log-probabilities (``to_logprobs``: [positions, vocab] float64, or per sequence float32) and how
    they were computed: ``streamed`` part by part or the whole model at once (``note`` says why), the most
    weight bytes held at once (fp32) and the whole model's."""

    logprobs: Any
    streamed: bool
    note: str
    peak_weight_bytes: int
    model_weight_bytes: int


@dataclass(frozen=True)
class TensorSource:
    """Where the model's tensors come from: their specs (name -> {"dtype", "shape"}) and ``load(name)``.
    By default the folder's safetensors files; a merge computed on the fly gives its own."""

    specs: dict[str, dict]
    load: Callable[[str], Any]


def file_tensors(model_dir: Path) -> TensorSource:
    """The tensors of a model folder's safetensors files, each read on its own."""
    specs = st_io.model_specs(model_dir)
    return TensorSource(specs, lambda name: st_io.load_tensor(specs[name]["file"], name))


@dataclass(frozen=True)
class _Plan:
    model: Any  # the skeleton, its parameters on the meta device
    parts: tuple[tuple[str, Any], ...]  # (state-dict prefix, module) in the order they run
    names: dict[str, str]  # the model's tensor name -> the checkpoint's (tied weights read their source)
    tensors: TensorSource  # the checkpoint's tensors


def logprobs(model, ids: list[int] | list[list[int]]):
    """Next-token log-probabilities of a transformers model: [positions, vocab] float64 for one sequence,
    [sequences, positions, vocab] float32 for several of one length (``to_logprobs``)."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(torch.tensor(_batch(ids), device=device)).logits
    return to_logprobs(logits, batched=_batched(ids))


def to_logprobs(logits, batched: bool = False):
    """Log-probabilities (numpy) from logits [sequences, positions, vocab]: the first sequence's in float64,
    or, ``batched``, every sequence's in float32, each normalized in float64 then rounded (one sequence's
    float64 copy at a time: a 128k vocabulary over 1,024 positions would take 1 GB in float64)."""
    import numpy as np
    import torch

    if not batched:
        return torch.log_softmax(logits[0].double(), -1).cpu().numpy()
    out = np.empty(tuple(logits.shape), dtype=np.float32)
    for i in range(logits.shape[0]):
        out[i] = torch.log_softmax(logits[i].double(), -1).float().cpu().numpy()
    return out


def _batched(ids) -> bool:
    return bool(ids) and isinstance(ids[0], list | tuple)


def _batch(ids) -> list[list[int]]:
    return [list(s) for s in ids] if _batched(ids) else [list(ids)]


def run_reference(model_dir: Path, ids: list[int] | list[list[int]], tensors: TensorSource | None = None) -> Reference:
    """The log-probabilities of the model in ``model_dir`` for the token ``ids`` (one sequence, or several of
    one length run as a batch), in fp32 on the CPU: streamed when the model's family and checkpoint allow
    it, else the whole model loaded at once. ``tensors``: where the weights come from when not from the
    folder's files (a merge computed on the fly; then always streamed)."""
    plan = plan_stream(Path(model_dir), tensors)
    if isinstance(plan, str) and tensors is not None:
        raise Unsupported(
            f"the validation reference of a merge computed while converting is streamed, and {plan}: pass "
            "--no-validate, or make the merged model's files (merge-tool without --defer-weights) and convert those"
        )
    if isinstance(plan, str):
        return whole_model(Path(model_dir), ids, plan)
    return _streamed(plan, ids)


def whole_model(model_dir: Path, ids: list[int] | list[list[int]], note: str) -> Reference:
    """The log-probabilities with the whole model loaded in fp32 (what transformers does by default)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False).eval()
    size = sum(p.numel() for p in model.parameters()) * FP32_BYTES  # tied weights once
    return Reference(
        logprobs=logprobs(model, ids), streamed=False, note=note, peak_weight_bytes=size, model_weight_bytes=size
    )


def plan_stream(model_dir: Path, tensors: TensorSource | None = None) -> _Plan | str:
    """How to stream the model (its weights from ``tensors``, by default the folder's files), or why it
    cannot be (a sentence)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        return f"its config could not be read for streaming ({exc})"
    if config.model_type not in STREAMED_TYPES:
        return f"model type {config.model_type!r} is not one streamed layer by layer"
    if getattr(config, "quantization_config", None):
        return "the checkpoint is quantized"
    model = _skeleton(config)
    parts = _parts(model)
    if parts is None:
        return "its weights do not all sit in the embeddings, the decoder layers, the final norm and the lm_head"
    tensors = tensors or file_tensors(model_dir)
    names = _checkpoint_names(model, tensors.specs)
    if isinstance(names, str):
        return names
    return _Plan(model=model, parts=parts, names=names, tensors=tensors)


def _skeleton(config):
    """The model with its parameters on the meta device; the rotary embedding's computed (non-persistent)
    buffers are made for real on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    body = model.model
    rotary = getattr(body, "rotary_emb", None)
    if rotary is not None:
        body.rotary_emb = type(rotary)(config=model.config)
    return model.eval()


def _parts(model) -> tuple[tuple[str, Any], ...] | None:
    """The model's parts in the order they run, or None when a weight or a computed buffer lives elsewhere."""
    import torch

    body = model.model
    parts = []
    for name, child in body.named_children():
        if child is getattr(body, "layers", None):
            parts += [(f"model.layers.{i}.", layer) for i, layer in enumerate(child)]
        elif any(True for _ in child.parameters()):
            parts.append((f"model.{name}.", child))
    parts += [(f"{n}.", c) for n, c in model.named_children() if n != "model" and any(True for _ in c.parameters())]
    kept = set(model.state_dict())
    loose = [n for n, b in model.named_buffers() if b.device == torch.device("meta") and n not in kept]
    in_parts = all(any(n.startswith(p) for p, _ in parts) for n in kept)
    return tuple(parts) if in_parts and not loose else None


def _checkpoint_names(model, specs: dict[str, dict]) -> dict[str, str] | str:
    """The model's tensor name -> the checkpoint's, or why the checkpoint does not fit the skeleton."""
    tied = _tied(model)
    names = {}
    for name, t in model.state_dict().items():
        source = tied.get(name, name)
        spec = specs.get(source)
        if spec is None:
            return f"the checkpoint lacks {source} (the model would initialise it)"
        if spec["dtype"] not in STORED_FLOATS or list(spec["shape"]) != list(t.shape):
            return f"{source} is stored as {spec['dtype']} {spec['shape']}, not a float of shape {list(t.shape)}"
        names[name] = source
    return names


def _tied(model) -> dict[str, str]:
    """{lm_head weight name: embedding weight name} when the model ties them (as from_pretrained does)."""
    if not getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        return {}
    where = {id(m): n for n, m in model.named_modules()}
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or id(out) not in where:
        return {}
    return {f"{where[id(out)]}.weight": f"{where[id(emb)]}.weight"}


class _Weights:
    """Puts a part's tensors in place (fp32, from the safetensors files) and takes them back; counts the
    bytes held at once."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.held = 0
        self.peak = 0

    def load(self, prefix: str, module) -> None:
        import torch

        tensors = {}
        for key in module.state_dict():
            source = self.plan.names[prefix + key]
            tensors[key] = self.plan.tensors.load(source).to(torch.float32)
        module.load_state_dict(tensors, assign=True, strict=True)
        self.held += sum(t.numel() for t in tensors.values()) * FP32_BYTES
        self.peak = max(self.peak, self.held)

    def release(self, module) -> None:
        import torch

        state = module.state_dict()
        self.held -= sum(t.numel() for t in state.values()) * FP32_BYTES
        module.load_state_dict({k: torch.empty_like(t, device="meta") for k, t in state.items()}, assign=True)


def _streamed(plan: _Plan, ids: list[int] | list[list[int]]) -> Reference:
    import torch

    weights = _Weights(plan)
    hooks = []
    for prefix, module in plan.parts:
        hooks.append(module.register_forward_pre_hook(lambda m, args, p=prefix: weights.load(p, m)))
        hooks.append(module.register_forward_hook(lambda m, args, out: weights.release(m)))
    try:
        with torch.no_grad():
            logits = plan.model(input_ids=torch.tensor(_batch(ids)), use_cache=False).logits
    finally:
        for h in hooks:
            h.remove()
    return Reference(
        logprobs=to_logprobs(logits, batched=_batched(ids)),
        streamed=True,
        note="streamed part by part from the safetensors files",
        peak_weight_bytes=weights.peak,
        model_weight_bytes=_fp32_bytes(plan),
    )


def _fp32_bytes(plan: _Plan) -> int:
    """The model's weights in fp32, tied weights once."""
    import math

    return sum(math.prod(plan.tensors.specs[s]["shape"]) for s in set(plan.names.values())) * FP32_BYTES
