"""A synthetic Llama-shaped bf16 model and an r=16 LoRA adapter on all its linear layers, written as
safetensors for the benchmarks (random weights, fixed seeds; nothing is downloaded).

``layers_for(size_gb)`` picks the layer count for a size; ``ensure(folder, params, build)`` builds a folder
once and reuses it while its stamp holds the same params; ``build_base`` and ``build_adapter`` write them.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

GB = 1e9
SHARD_BYTES = 1 << 30
DIMS = dict(hidden=2048, intermediate=5632, heads=32, kv_heads=8, vocab=32000)
RANK, ALPHA = 16, 32
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
STAMP = ".bench-stamp.json"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def linear_shapes(layer: int) -> dict[str, tuple[int, int]]:
    """module path -> (out, in) for the 7 linear layers of one decoder layer."""
    h, i = DIMS["hidden"], DIMS["intermediate"]
    kv = DIMS["kv_heads"] * (h // DIMS["heads"])
    p = f"model.layers.{layer}"
    return {
        f"{p}.self_attn.q_proj": (h, h),
        f"{p}.self_attn.k_proj": (kv, h),
        f"{p}.self_attn.v_proj": (kv, h),
        f"{p}.self_attn.o_proj": (h, h),
        f"{p}.mlp.gate_proj": (i, h),
        f"{p}.mlp.up_proj": (i, h),
        f"{p}.mlp.down_proj": (h, i),
    }


def model_plan(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    h, v = DIMS["hidden"], DIMS["vocab"]
    plan = [("model.embed_tokens.weight", (v, h))]
    for n in range(layers):
        plan.append((f"model.layers.{n}.input_layernorm.weight", (h,)))
        plan += [(f"{m}.weight", shape) for m, shape in linear_shapes(n).items()]
        plan.append((f"model.layers.{n}.post_attention_layernorm.weight", (h,)))
    return plan + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def plan_bytes(plan) -> int:
    return sum(2 * math.prod(shape) for _, shape in plan)


def layers_for(size_gb: float) -> int:
    per_layer = plan_bytes(model_plan(1)) - plan_bytes(model_plan(0))
    return max(1, math.ceil((size_gb * GB - plan_bytes(model_plan(0))) / per_layer))


def ensure(folder: Path, params: dict, build) -> None:
    """Build `folder` unless it holds a stamp with the same params."""
    stamp = folder / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        log(f"reusing {folder}")
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t = time.perf_counter()
    build(folder)
    stamp.write_text(json.dumps(params))
    log(f"built {folder} in {time.perf_counter() - t:.1f}s")


def build_base(folder: Path, layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    h = DIMS["hidden"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "dtype": "bfloat16",
        "hidden_size": h,
        "intermediate_size": DIMS["intermediate"],
        "num_hidden_layers": layers,
        "num_attention_heads": DIMS["heads"],
        "num_key_value_heads": DIMS["kv_heads"],
        "head_dim": h // DIMS["heads"],
        "vocab_size": DIMS["vocab"],
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pretraining_tp": 1,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    plan = model_plan(layers)
    shards = [[]]  # split into ~1 GB shards up front: file names need the shard count
    for item in plan:
        if shards[-1] and plan_bytes(shards[-1] + [item]) > SHARD_BYTES:
            shards.append([])
        shards[-1].append(item)
    gen = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:  # one tensor at a time; at most one shard in memory (norms: ones)
            tensors[name] = (torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=gen) * 0.02).to(
                torch.bfloat16
            )
            weight_map[name] = fname
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        log(f"  wrote {fname}")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": plan_bytes(plan)}, "weight_map": weight_map}, indent=2)
    )


def build_adapter(folder: Path, base: Path, layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for n in range(layers):
        for module, (out_f, in_f) in linear_shapes(n).items():
            key = f"base_model.model.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn((RANK, in_f), generator=gen) * 0.02
            tensors[f"{key}.lora_B.weight"] = torch.randn((out_f, RANK), generator=gen) * 0.02
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(TARGETS),
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def small_llama(folder: Path, hidden: int, layers: int, tokenizer_dir: Path) -> Path:
    """A Llama-shaped bf16 model of the sample's kind (real tokenizer, random weights), sized by its width and
    depth, for the benchmarks that run llama.cpp's converter on it."""
    from upload_common.sample import make_base

    return make_base(
        folder,
        "llama",
        hidden=hidden,
        intermediate=hidden * 11 // 4 // 256 * 256,
        layers=layers,
        heads=hidden // 64,
        kv_heads=max(1, hidden // 256),
        dtype="bfloat16",
        tokenizer_dir=tokenizer_dir,
    )
