"""Finding the base model: ``--base`` (folder or Hub id), else the adapter's
``base_model_name_or_path``; a local folder first, then huggingface_hub's cache and download.

For a bitsandbytes-quantized base (QLoRA) the 16-bit original is preferred: ``--base``, or the
name without its ``-bnb-4bit`` suffix. When none can be had, the merge dequantizes the 4-bit
weights instead and says so loudly.

The base's config is read without its code references (auto_map, custom_pipelines; the merged
config is built from it), with a warning in ``warnings``; a base whose architecture only its own
code defines is refused here, before the merge (upload_common.remote_code)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from upload_common.contract import read_json_object
from upload_common.errors import BaseModelUnavailable, InputNotFound, InvalidInput
from upload_common.remote_code import sanitize

TOOL = "merge-tool"

# README.md and LICENSE*: the base card carries the licence the derived models inherit
MODEL_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken", "README.md", "LICENSE*"]
_QUANT_SUFFIX = re.compile(r"(-unsloth)?-bnb-(4|8)bit$", re.IGNORECASE)


def _looks_like_repo_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not name.startswith((".", "/"))


def download(repo_id: str) -> dict:
    """A Hub model through huggingface_hub (cache first; honours HF_HOME, HF_HUB_OFFLINE, the token)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = snapshot_download(repo_id, allow_patterns=MODEL_FILES)
    except GatedRepoError:
        raise BaseModelUnavailable(
            f"base model {repo_id} is gated: accept its licence on the Hub and set HF_TOKEN, "
            "or pass a local copy with --base",
            repo_id=repo_id,
        ) from None
    except RepositoryNotFoundError:
        raise BaseModelUnavailable(
            f"base model {repo_id} was not found on the Hub (or needs a token): "
            "pass a local folder or the right id with --base",
            repo_id=repo_id,
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "offline (HF_HUB_OFFLINE) and not in the cache" if offline else f"not reachable ({type(exc).__name__})"
        raise BaseModelUnavailable(
            f"base model {repo_id} is {why}: pass a local copy with --base DIR", repo_id=repo_id
        ) from None
    path = Path(path)
    return {"path": path, "source": "hub", "repo_id": repo_id, "revision": path.name}


def locate(name: str) -> dict:
    """A local folder, else a Hub id."""
    p = Path(name).expanduser()
    if p.is_dir():
        return {"path": p.absolute(), "source": "local", "repo_id": None, "revision": None}
    if _looks_like_repo_id(name):
        return download(name)
    raise BaseModelUnavailable(f"base model {name} is neither a folder nor a Hub id: pass it with --base", name=name)


def read_model_config(path: Path) -> dict:
    return read_json_object(Path(path) / "config.json", "model config", "pass a Hugging Face model folder with --base")


def _with_config(found: dict) -> dict:
    """``found`` with its config, read without code references, and the warning that says so."""
    config, warning = sanitize("config.json", read_model_config(found["path"]), found["path"], TOOL)
    found.update(config=config, warnings=[warning] if warning else [])
    return found


def bnb_kind(config: dict) -> str | None:
    q = config.get("quantization_config") or {}
    if q.get("quant_method") != "bitsandbytes":
        return None
    return "bnb-8bit" if q.get("load_in_8bit") else "bnb-4bit"


def unquantized_names(name: str) -> list[str]:
    """Hub ids that may hold the 16-bit original of a bitsandbytes repo."""
    stripped = _QUANT_SUFFIX.sub("", name)
    return [stripped] if stripped != name else []


def resolve_base(base_arg: str | None, adapter_config: dict, log=lambda m: None) -> dict:
    name = base_arg or adapter_config.get("base_model_name_or_path")
    if not name:
        raise BaseModelUnavailable("the adapter config names no base model: pass it with --base")
    found = locate(str(name))
    found["requested"] = str(name)
    _with_config(found)
    found["quantized"] = bnb_kind(found["config"])
    if not found["quantized"]:
        return found
    tried = []
    for candidate in unquantized_names(str(name)) if not base_arg else []:
        try:
            alt = _with_config(locate(candidate))
        except (BaseModelUnavailable, InvalidInput, InputNotFound) as exc:
            tried.append(f"{candidate} ({exc.message.split(':')[0]})")
            continue
        if not bnb_kind(alt["config"]):
            log(f"base {name} is {found['quantized']}: using its 16-bit original {candidate}")
            alt.update(requested=str(name), quantized=None, replaces=str(name))
            return alt
    found["tried_originals"] = tried
    log(
        f"WARNING: base {name} is {found['quantized']} and no 16-bit original could be had "
        f"({', '.join(tried) or 'none known'}): merging into its DEQUANTIZED weights; quality is that of "
        f"the 4-bit model. Pass the original with --base to avoid this."
    )
    return found
