"""Reading a PEFT adapter: its config, its tensors grouped by module, and each module's scale.

Tensors are read once here, one at a time, to refuse NaN or infinity before any work (adapters are
small); the merge loads them again one module at a time."""

from __future__ import annotations

import math
import re
from pathlib import Path

from upload_common.contract import read_json_object
from upload_common.errors import InvalidInput, Unsupported
from upload_common.st_io import check_finite, file_specs

from .job import Adapter

PREFIX = "base_model.model."
_LORA_PARTS = {  # key suffix -> role
    "lora_A.weight": "A",
    "lora_B.weight": "B",
    "lora_B.bias": "B_bias",
    "lora_embedding_A": "emb_A",
    "lora_embedding_B": "emb_B",
    "lora_magnitude_vector": "magnitude",
    "lora_magnitude_vector.weight": "magnitude",
}
# Config fields that change the maths in ways this merge does not reproduce.
_REFUSED_FIELDS = {
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable token indices",
    "use_qalora": "QA-LoRA",
    "use_bdlora": "block-diagonal LoRA",
}


def read_config(adapter_dir: Path) -> dict:
    return read_json_object(
        Path(adapter_dir) / "adapter_config.json", "adapter config", "pass an adapter or trainer output folder"
    )


def check_mergeable(config: dict) -> None:
    ptype = str(config.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise Unsupported(
            f"adapter is PEFT type {ptype}; merging supports LoRA (with rsLoRA, DoRA and "
            f"patterns) only: export it unmerged with --method lora",
            peft_type=ptype,
        )
    for field, what in _REFUSED_FIELDS.items():
        if config.get(field):
            raise Unsupported(
                f"adapter uses {what} ({field}), which merge-tool cannot merge exactly: "
                "export it unmerged with --method lora",
                field=field,
            )


def weights_file(adapter_dir: Path) -> Path:
    adapter_dir = Path(adapter_dir)
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter_dir / name).is_file():
            return adapter_dir / name
    raise InvalidInput(
        f"config without weights: {adapter_dir} has adapter_config.json but no "
        "adapter_model.safetensors or adapter_model.bin: copy the weights beside it",
        path=str(adapter_dir),
    )


def pickle_to_safetensors(src: Path, dst: Path) -> None:
    """Convert a .bin adapter without executing pickled code (weights_only)."""
    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable or unsafe pickles
        raise InvalidInput(
            f"cannot read {src} safely ({type(exc).__name__}): re-save the adapter as safetensors", path=str(src)
        ) from None
    save_file({k: v.contiguous() for k, v in state.items()}, dst, metadata={"format": "pt"})


def pattern_value(patterns: dict, module: str, default):
    """peft's rule: a pattern key matches the module name's tail at a dot boundary."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def module_scale(config: dict, module: str, rank: int) -> float:
    r = pattern_value(config.get("rank_pattern"), module, config.get("r", rank))
    if r != rank:
        raise InvalidInput(
            f"adapter config gives rank {r} for {module} but its tensors have rank {rank}: "
            "the config does not belong to these weights",
            module=module,
        )
    alpha = pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


_WRAPPERS = [  # (infix peft may save a full tensor under, precedence; < 0: never used)
    (".modules_to_save.default.", 3),
    (".modules_to_save.", 3),
    (".base_layer.", 1),
    (".original_module.", -1),
]


def _replacement_rank(name: str) -> tuple[int, str]:
    """Which base tensor a saved full tensor stands for, and how much it wins over other copies:
    the trained copy (modules_to_save) over a plain one over the saved base layer; the untrained
    original is never used."""
    for infix, rank in _WRAPPERS:
        if infix in name:
            return rank, name.replace(infix, ".")
    return 2, name


def group_tensors(specs: dict[str, dict]) -> tuple[dict[str, dict], dict[str, str]]:
    """Split adapter tensors into LoRA modules (module path -> role -> key) and full-tensor
    replacements (base tensor name -> key: modules_to_save, saved base layers, trained biases)."""
    modules: dict[str, dict] = {}
    best: dict[str, tuple[int, str]] = {}
    for key in specs:
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        for suffix, role in _LORA_PARTS.items():
            if name.endswith("." + suffix):
                module = name[: -len(suffix) - 1]
                modules.setdefault(module, {})[role] = key
                break
        else:
            rank, name = _replacement_rank(name)
            if rank > best.get(name, (-1, ""))[0]:
                best[name] = (rank, key)
    replacements = {name: key for name, (rank, key) in best.items() if rank >= 0}
    for module, roles in modules.items():
        linear, emb = {"A", "B"} <= roles.keys(), {"emb_A", "emb_B"} <= roles.keys()
        if not (linear or emb):
            raise InvalidInput(
                f"adapter module {module} has {sorted(roles)} but not both LoRA matrices: "
                "the adapter file is incomplete",
                module=module,
            )
        roles["kind"] = "embedding" if emb else "linear"
        if emb and "magnitude" in roles:
            raise Unsupported(
                f"DoRA on an embedding layer ({module}) is not supported by merge-tool: "
                "export it unmerged with --method lora",
                module=module,
            )
    return modules, replacements


def read_adapter(adapter_dir: Path) -> Adapter:
    """Config, weights file, tensor specs and their grouping (headers only: the values are checked by
    ``check_values``); the weights must be safetensors."""
    config = read_config(adapter_dir)
    wfile = weights_file(adapter_dir)
    specs = file_specs(wfile)
    if not specs:
        raise InvalidInput(f"{wfile} holds no tensors: the adapter was not saved", path=str(wfile))
    modules, replacements = group_tensors(specs)
    return Adapter(Path(adapter_dir), config, wfile, specs, modules, replacements)


def check_values(adapter: Adapter) -> None:
    """Refuse an adapter holding NaN or infinity (every tensor read once)."""
    check_finite(
        adapter.weights,
        adapter.specs,
        "adapter",
        "the training diverged or the file is damaged: use an earlier checkpoint "
        "(--checkpoint N) or retrain with a lower learning rate",
    )
