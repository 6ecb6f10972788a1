"""Model-card metadata read from a folder's README.md (YAML front matter), through huggingface_hub.

merge-tool records what the base model's card and the trainer's card say (licence, languages,
datasets) in its manifest, so that docs-tool needs no other path to write truthful cards."""

from __future__ import annotations

from pathlib import Path

from .errors import UploadError
from .safety import check_repo_id

# What a derived model inherits from its base model's card, and what a training run's card adds.
BASE_KEYS = ("license", "license_name", "license_link", "language", "pipeline_tag")
TRAINER_KEYS = ("license", "license_name", "license_link", "language", "datasets", "tags", "model_name")


def looks_like_repo_id(value) -> bool:
    """Whether ``value`` is a Hub model id with its namespace (org/name) by huggingface_hub's own rules
    (safety.check_repo_id), not a path nor a bare name: what a card's base_model may name."""
    try:
        check_repo_id(value, "repo id", namespace=True)
    except UploadError:
        return False
    return True


def front_matter(folder, keys=None) -> dict:
    """The YAML metadata of ``folder/README.md`` (only ``keys`` when given); {} when there is none or it
    cannot be parsed: a card is a nicety, never a reason to fail a step."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return {}
    try:
        from huggingface_hub import ModelCard

        text = readme.read_text(encoding="utf-8", errors="replace")
        data = ModelCard(text, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # noqa: BLE001 - malformed YAML in someone else's card
        return {}
    data = {k: v for k, v in data.items() if v not in (None, "", [], {})}
    return {k: data[k] for k in keys if k in data} if keys else data
