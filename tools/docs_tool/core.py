"""docs-tool's step: the artifact folders of a run in; for each set a model card (README.md), the
loss curve, an Ollama Modelfile for GGUF, plus the upload manifest and a README for the local
output folder, out.

Layout of the output folder::

    upload_manifest.json     every file of every set: repo, path in repo, size, sha256, origin
    README.md                what the local artifact folders hold and how to use them
    <set>/README.md          the set's model card (and loss.png, Modelfile) as they go in its repo
    manifest.json            the step manifest
"""

from __future__ import annotations

import time
from pathlib import Path

from upload_common.cards import looks_like_repo_id
from upload_common.contract import MANIFEST, check_output_free, describe_input, sha256_file, write_json_atomic
from upload_common.errors import UsageError
from upload_common.safety import check_namespace, check_repo_id, hub_name
from upload_common.step import Step
from upload_common.upload_manifest import UPLOAD_MANIFEST, UPLOAD_SCHEMA, UPLOAD_SCHEMA_VERSION

from .document_set import Shared, document_set
from .licenses import HUB_LICENSES
from .local_readme import local_readme
from .sets import MAX_NAME, check_overrides, identify, repo_ids, set_specs

TOOL = "docs-tool"


def _given_name(name: str) -> str:
    """--name as the user typed it: it names every repo and file, so one the Hub would not take is
    refused (with a suggestion), never silently altered into a name nobody asked for."""
    if "/" not in name:
        try:
            return check_repo_id(name, "--name")
        except UsageError:
            pass
    slug = hub_name(name)
    hint = f": pass e.g. --name {slug}" if slug != name else ""
    where = " (the namespace goes in --namespace)" if "/" in name else ""
    raise UsageError(
        f"--name {name!r} cannot name a Hub repo{where}: use letters, digits, '-', '_' and '.' only, "
        f"no '--' or '..', no '-' or '.' at either end, at most {MAX_NAME} characters with the set's "
        f"suffix{hint}",
        name=name,
    )


def _default_name(sets: dict) -> str:
    """gguf-tool's name, else the run's folder (as written in a manifest: made Hub-valid by the caller)."""
    for _, _, manifest in sets.values():
        if manifest["tool"]["name"] == "gguf-tool" and (manifest.get("parameters") or {}).get("name"):
            return str(manifest["parameters"]["name"])
    for _, _, manifest in sets.values():
        adapter = (manifest.get("decisions") or {}).get("adapter") or {}
        if adapter.get("path"):
            p = Path(str(adapter["path"]))
            return p.parent.name if p.name.startswith("checkpoint-") else p.name
    return "model"


def _license(option: str | None, link: str | None, cards_seen: list[dict], warnings: list) -> dict | None:
    """--license, else the base model's card, else the training run's card; never a made-up one."""
    if option:
        if option in HUB_LICENSES and option != "other":
            return {"license": option}
        if not link:
            raise UsageError(
                f"--license {option} is not one of the Hub's licence ids: pass --license-link URL too "
                "(it becomes license: other with license_name/license_link)"
            )
        return {"license": "other", "license_name": option, "license_link": link}
    for card in cards_seen:
        if card.get("license"):
            return {k: card[k] for k in ("license", "license_name", "license_link") if card.get(k)}
    warnings.append(
        "no licence found in the base model's card or the training run's card: the cards carry none; "
        "pass --license (the base model's licence governs derived weights)"
    )
    return None


def _as_list(value) -> list:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _base(sets: dict, base_model: str | None, warnings: list) -> tuple[str | None, str | None]:
    """(Hub id of the base the model was fine-tuned from, the adapter config's base) — local paths are
    not Hub ids and stay out of the card's metadata."""
    merged = next((m for _, _, m in sets.values() if (m.get("decisions") or {}).get("base")), None)
    training = next((m.get("training") for _, _, m in sets.values() if m.get("training")), None) or {}
    adapter_base = (training.get("adapter") or {}).get("base_model_name_or_path")
    if base_model:
        if not looks_like_repo_id(base_model):
            raise UsageError(f"--base-model {base_model!r} is not a Hub model id (org/name)")
        return base_model, adapter_base
    found = None
    if merged:
        b = merged["decisions"]["base"]
        found = b.get("repo_id") if b.get("source") == "hub" else None
    elif looks_like_repo_id(adapter_base) and not Path(str(adapter_base)).is_absolute():
        found = adapter_base
    if not found:
        warnings.append(
            "the base model is a local folder, not a Hub id: the cards name no base_model; pass "
            "--base-model ORG/NAME (upload-driver run --base-model, or base_model in the config's [docs] "
            "table) to link them to it on the Hub"
        )
    return found, adapter_base


def run(
    artifacts,
    out,
    *,
    name: str | None = None,
    namespace: str | None = None,
    repos: dict | None = None,
    license: str | None = None,
    license_link: str | None = None,
    base_model: str | None = None,
    datasets=(),
    languages=(),
    system: str | None = None,
    ollama_quant: str | None = None,
    overwrite: bool = False,
    log=lambda m: None,
) -> dict:
    t0 = time.monotonic()
    out = Path(out)
    if not artifacts:
        raise UsageError("no --artifact given: pass the output folders of merge-tool / gguf-tool to document")
    # every repo id the user gave is checked before any work: it becomes a path under a local target
    if namespace is not None:
        check_namespace(namespace, "--namespace")
    given_name = None if name is None else _given_name(name)
    check_overrides(repos)
    check_output_free(out, overwrite)
    sets, folders = _identify(artifacts)
    order = [s for s in set_specs() if s in sets]
    name = given_name or hub_name(_default_name(sets))
    repo_for = repo_ids(name, namespace, order, repos)
    params = {
        "name": name,
        "namespace": namespace,
        "repos": repo_for,
        "license": license,
        "license_link": license_link,
        "base_model": base_model,
        "datasets": list(datasets),
        "languages": list(languages),
        "system": system,
        "ollama_quant": ollama_quant,
    }
    inputs = {s: describe_input(folders[s]) for s in order}
    with Step(
        TOOL,
        out,
        inputs=inputs,
        params=params,
        overwrite=overwrite,
        libraries=("huggingface_hub", "matplotlib", "gguf"),
        log=log,
        began=t0,
    ) as step:
        shared = _shared(params, sets, folders, order, step.warnings)
        upload = {"schema": UPLOAD_SCHEMA, "schema_version": UPLOAD_SCHEMA_VERSION, "name": name, "sets": {}}
        for s in order:
            log(f"{s}: card for {repo_for[s]}")
            upload["sets"][s] = document_set(s, folders[s], step.folder, shared)
        upload["total_bytes"] = sum(f["size"] for st in upload["sets"].values() for f in st["files"])
        write_json_atomic(step.folder / UPLOAD_MANIFEST, upload)
        (step.folder / "README.md").write_text(
            local_readme(name, upload, folders, shared.common["license"]), encoding="utf-8"
        )
        step.manifest["sets"] = {s: {k: v for k, v in st.items() if k != "files"} for s, st in upload["sets"].items()}
    return step.manifest


def _identify(artifacts) -> tuple[dict[str, tuple], dict[str, Path]]:
    """Each --artifact folder's set (name, spec, manifest) and folder, by set; one folder per set."""
    sets: dict[str, tuple] = {}
    folders: dict[str, Path] = {}
    for folder in artifacts:
        folder = Path(folder).absolute()
        set_name, spec, manifest = identify(folder)
        if set_name in sets:
            raise UsageError(f"two --artifact folders are both {set_name}: {folders[set_name]} and {folder}: pass one")
        sets[set_name], folders[set_name] = (set_name, spec, manifest), folder
    return sets, folders


def _shared(params: dict, sets: dict, folders: dict, order: list, warnings: list) -> Shared:
    training_m = next((sets[s][2] for s in order if sets[s][2].get("training")), None)
    training = (training_m or {}).get("training") or {}
    base_cards = [(m.get("decisions") or {}).get("base", {}).get("card") or {} for _, _, m in sets.values()]
    lic = _license(params["license"], params["license_link"], [*base_cards, training.get("card") or {}], warnings)
    base_id, adapter_base = _base(sets, params["base_model"], warnings)
    trainer_card = training.get("card") or {}
    common = {
        "license": lic,
        "trainer": training.get("trainer"),
        "summary": training.get("summary"),
        "adapter": training.get("adapter"),
        "adapter_base": adapter_base,
        "datasets": params["datasets"] or _as_list(trainer_card.get("datasets")),
        "language": params["languages"]
        or _as_list(trainer_card.get("language"))
        or next((_as_list(c.get("language")) for c in base_cards if c.get("language")), []),
        "checkpoint_reason": ((training_m or {}).get("decisions") or {}).get("adapter", {}).get("reason"),
        "repos": params["repos"],
        "specs": set_specs(),
        "manifest_sha": {s: sha256_file(folders[s] / MANIFEST) for s in order},
    }
    return Shared(
        name=params["name"],
        repos=params["repos"],
        system=params["system"],
        ollama_quant=params["ollama_quant"],
        base_id=base_id,
        sets=sets,
        common=common,
        warnings=warnings,
    )
