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
from dataclasses import dataclass
from pathlib import Path

from upload_common.cards import looks_like_repo_id
from upload_common.contract import (
    MANIFEST,
    canonical_sha256,
    check_output_free,
    describe_input,
    sha256_file,
    write_json_atomic,
)
from upload_common.errors import InvalidInput, UsageError
from upload_common.safety import check_namespace, check_repo_id, hub_name
from upload_common.step import Step
from upload_common.trainer_output import chat_template
from upload_common.upload_manifest import (
    HUB_FILE_LIMIT,
    UPLOAD_MANIFEST,
    UPLOAD_SCHEMA,
    UPLOAD_SCHEMA_VERSION,
    OllamaFields,
)

from . import card as cards
from .local_readme import local_readme
from .sets import MAX_NAME, PREFERRED_QUANTS, check_overrides, identify, repo_ids, set_specs

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
    raise UsageError(f"--name {name!r} cannot name a Hub repo{where}: use letters, digits, '-', '_' and '.' only, "
                     f"no '--' or '..', no '-' or '.' at either end, at most {MAX_NAME} characters with the set's "
                     f"suffix{hint}", name=name)


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
        if option in cards.HUB_LICENSES and option != "other":
            return {"license": option}
        if not link:
            raise UsageError(f"--license {option} is not one of the Hub's licence ids: pass --license-link URL too "
                             "(it becomes license: other with license_name/license_link)")
        return {"license": "other", "license_name": option, "license_link": link}
    for card in cards_seen:
        if card.get("license"):
            return {k: card[k] for k in ("license", "license_name", "license_link") if card.get(k)}
    warnings.append("no licence found in the base model's card or the training run's card: the cards carry none; "
                    "pass --license (the base model's licence governs derived weights)")
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
        warnings.append("the base model is a local folder, not a Hub id: the cards name no base_model; pass "
                        "--base-model ORG/NAME (upload-driver run --base-model, or base_model in the config's [docs] "
                        "table) to link them to it on the Hub")
    return found, adapter_base


def _gguf_chat(path: Path) -> dict:
    """Chat template, BOS/EOS and control tokens from a GGUF file: exactly what Ollama will see."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def value(key):
        f = fields.get(key)
        if f is None:
            return None
        part = f.parts[f.data[0]]
        return bytes(part).decode("utf-8", "replace") if f.types and f.types[0].name == "STRING" else int(part[0])

    tokens = fields.get("tokenizer.ggml.tokens")
    types = fields.get("tokenizer.ggml.token_type")
    vocab = [bytes(tokens.parts[i]).decode("utf-8", "replace") for i in tokens.data] if tokens else []
    kinds = [int(types.parts[i][0]) for i in types.data] if types else []
    special = [t for t, k in zip(vocab, kinds, strict=False) if k == 3]  # llama.cpp's CONTROL tokens

    def token(i):
        return vocab[i] if i is not None and 0 <= i < len(vocab) else None

    return {"chat_template": value("tokenizer.chat_template"), "bos": token(value("tokenizer.ggml.bos_token_id")),
            "eos": token(value("tokenizer.ggml.eos_token_id")), "special": special}


def _modelfile(folder: Path, gguf_dir: Path, filename: str, ollama_name: str, system: str | None, lic: dict | None,
               warnings: list) -> dict:
    """The Ollama model's fields (the upload manifest's "ollama" object), and the Modelfile rendered from them."""
    from .modelfile import _clean, modelfile_text, ollama_template

    chat = _gguf_chat(gguf_dir / filename)
    tpl = ollama_template(chat["chat_template"], bos_token=chat["bos"], eos_token=chat["eos"],
                          special_tokens=chat["special"])
    warnings.extend(f"Modelfile: {w}" for w in tpl["warnings"])
    if system and tpl["template"] and not tpl["system_supported"]:
        warnings.append("Modelfile: the chat template has no system role: Ollama will not show the --system prompt "
                        "to the model")
    license_text = None
    if lic:
        license_text = lic.get("license_name") or lic["license"]
        if lic.get("license_link"):
            license_text += f"\n{lic['license_link']}"
    # the values as the Modelfile holds them: stops once each, texts without what a Modelfile cannot carry
    stop = [s for s in dict.fromkeys(tpl["stop"] or []) if s]
    fields = OllamaFields(file=filename, ollama_name=ollama_name, template=tpl["template"] or None,
                          system=None if system is None else _clean(system),
                          license=None if license_text is None else _clean(license_text),
                          parameters={"stop": stop} if stop else {})
    text = modelfile_text(filename, template=fields.template, stop=list(fields.stop), system=fields.system,
                          license_text=fields.license)
    (folder / "Modelfile").write_text(text, encoding="utf-8")
    return {**fields.to_json(), "checked": tpl["checked"]}


def run(artifacts, out, *, name: str | None = None, namespace: str | None = None, repos: dict | None = None,
        license: str | None = None, license_link: str | None = None, base_model: str | None = None,
        datasets=(), languages=(), system: str | None = None, ollama_quant: str | None = None,
        overwrite: bool = False, log=lambda m: None) -> dict:
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
    params = {"name": name, "namespace": namespace, "repos": repo_for, "license": license, "license_link": license_link,
              "base_model": base_model, "datasets": list(datasets), "languages": list(languages), "system": system,
              "ollama_quant": ollama_quant}
    inputs = {s: describe_input(folders[s]) for s in order}
    with Step(TOOL, out, inputs=inputs, params=params, overwrite=overwrite,
              libraries=("huggingface_hub", "matplotlib", "gguf"), log=log, began=t0) as step:
        shared = _shared(params, sets, folders, order, step.warnings)
        upload = {"schema": UPLOAD_SCHEMA, "schema_version": UPLOAD_SCHEMA_VERSION, "name": name, "sets": {}}
        for s in order:
            log(f"{s}: card for {repo_for[s]}")
            upload["sets"][s] = _document_set(s, folders[s], step.folder, shared)
        upload["total_bytes"] = sum(f["size"] for st in upload["sets"].values() for f in st["files"])
        write_json_atomic(step.folder / UPLOAD_MANIFEST, upload)
        (step.folder / "README.md").write_text(local_readme(name, upload, folders, shared.common["license"]),
                                               encoding="utf-8")
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


@dataclass(frozen=True)
class Shared:
    """What every set's documentation shares: the run's name and repos, the options that shape the
    cards, the sets found, the card context common to all, and the step's warnings (appended to)."""

    name: str
    repos: dict
    system: str | None
    ollama_quant: str | None
    base_id: str | None
    sets: dict
    common: dict
    warnings: list


def _shared(params: dict, sets: dict, folders: dict, order: list, warnings: list) -> Shared:
    training_m = next((sets[s][2] for s in order if sets[s][2].get("training")), None)
    training = (training_m or {}).get("training") or {}
    base_cards = [(m.get("decisions") or {}).get("base", {}).get("card") or {} for _, _, m in sets.values()]
    lic = _license(params["license"], params["license_link"], [*base_cards, training.get("card") or {}], warnings)
    base_id, adapter_base = _base(sets, params["base_model"], warnings)
    trainer_card = training.get("card") or {}
    common = {
        "license": lic, "trainer": training.get("trainer"), "summary": training.get("summary"),
        "adapter": training.get("adapter"), "adapter_base": adapter_base,
        "datasets": params["datasets"] or _as_list(trainer_card.get("datasets")),
        "language": params["languages"] or _as_list(trainer_card.get("language"))
        or next((_as_list(c.get("language")) for c in base_cards if c.get("language")), []),
        "checkpoint_reason": ((training_m or {}).get("decisions") or {}).get("adapter", {}).get("reason"),
        "repos": params["repos"], "specs": set_specs(),
        "manifest_sha": {s: sha256_file(folders[s] / MANIFEST) for s in order},
    }
    return Shared(name=params["name"], repos=params["repos"], system=params["system"],
                  ollama_quant=params["ollama_quant"], base_id=base_id, sets=sets, common=common, warnings=warnings)


def _document_set(s: str, folder: Path, partial: Path, run: Shared) -> dict:
    """One set's folder of documents (card, plot, Modelfile) and its entry in the upload manifest."""
    _, spec, art = run.sets[s]
    docs = partial / s
    docs.mkdir()
    ctx = {**run.common, "set": s, "spec": spec, "repo_id": run.repos[s], "versions": {}}
    ctx.update(_relation(s, spec, art, run))
    versions = art.get("versions") or {}
    ctx["versions"] = {k: versions[k] for k in ("llama-cpp-python", "torch", "transformers", "peft", "bitsandbytes",
                                                "llmcompressor", "compressed-tensors")
                       if k in versions and (k != "bitsandbytes" or "bitsandbytes" in spec.get("requires", ()))}
    ctx["quantization"], ctx["validation"] = art.get("quantization"), art.get("validation")
    artifact_files = _artifact_files(art, folder)
    if s == "gguf":
        ctx.update(_gguf_context(art, folder, docs, run))
    else:
        ctx["chat_template"] = bool(chat_template(folder))
    from .plot import loss_curve

    kind = ((run.common.get("trainer") or {}).get("kind") or "").upper()
    if loss_curve(run.common.get("summary"), docs / "loss.png", f"{run.name} {kind} training loss".replace("  ", " ")):
        ctx["plot"] = "loss.png"
    doc_files = [_described(p) for p in sorted(docs.iterdir())]  # the plot and the Modelfile, listed by the card
    ctx["files"] = sorted([*artifact_files, *doc_files], key=lambda f: f["path"])
    ctx["sizes"] = {f["path"]: f["size"] for f in ctx["files"]}
    (docs / "README.md").write_text(cards.render(ctx), encoding="utf-8")
    card = _described(docs / "README.md")
    files = [{"path_in_repo": o["path"], "origin": "artifact", "path": o["path"], "size": o["size"],
              "sha256": o["sha256"]} for o in artifact_files]
    files += [{"path_in_repo": f["path"], "origin": "docs", "path": f"{s}/{f['path']}", "size": f["size"],
               "sha256": f["sha256"]} for f in [*doc_files, card]]
    return _entry(s, spec, art, ctx, files, card, run)


def _relation(s: str, spec: dict, art: dict, run: Shared) -> dict:
    """How the set relates to its base on the Hub: relation, base_model, base_display, quantized_from."""
    relation, base_id = spec["relation"], run.base_id
    found = {"base_display": base_id}
    if relation == "quantized":
        # quantized from the merged model of this run: the set it consumed (its --model), named in its
        # manifest by that set's manifest hash, is its base
        made_from = ((art.get("inputs") or {}).get("model") or {}).get("manifest_sha256")
        merged = next((m for m, (_, sp, _m) in run.sets.items() if sp["relation"] == "finetune"
                       and run.common["manifest_sha"][m] == made_from), None)
        if merged and looks_like_repo_id(run.repos[merged]):
            found["base_model"] = found["quantized_from"] = run.repos[merged]
        else:  # merged weights not published here, or not under a Hub id (a local publish without a
            # namespace): the Hub's base_model must be a Hub id, and "quantized of a fine-tune" is not
            # expressible, so the card names the base the run was fine-tuned from
            found["base_model"], relation = base_id, "finetune"
            found["quantized_from"] = run.repos[merged] if merged else None
    elif relation == "adapter":
        adapter_base = run.common["adapter_base"]
        found["base_model"] = adapter_base if looks_like_repo_id(adapter_base) and base_id else base_id
        found["base_display"] = found["base_model"]
    else:
        found["base_model"] = base_id
    found["relation"] = relation
    return found


def _artifact_files(art: dict, folder: Path) -> list[dict]:
    """The artifact's own files that go in the repo; one the Hub would refuse is refused now."""
    artifact_files = [o for o in art["outputs"] if o["path"] not in ("README.md", MANIFEST)]
    too_big = [o["path"] for o in artifact_files if o["size"] > HUB_FILE_LIMIT]
    if too_big:
        raise InvalidInput(f"{', '.join(too_big)} in {folder} exceed the Hub's 50 GB per-file limit: re-run gguf-tool "
                           "with --split-max-size 48G", files=too_big)
    return artifact_files


def _gguf_context(art: dict, folder: Path, docs: Path, run: Shared) -> dict:
    """The GGUF set's card facts: its files, the default quant for Ollama, and the Modelfile."""
    ctx = {"gguf_files": art.get("files") or {}, "chat_template": (art.get("decisions") or {}).get("chat_template")}
    ctx["default_gguf"] = _default_gguf(ctx["gguf_files"], run.ollama_quant)
    if ctx["default_gguf"]:
        quant, filename = ctx["default_gguf"]
        ctx["ollama_name"] = f"{run.name.lower()}:{quant.lower()}"
        if len(ctx["gguf_files"][quant]["files"]) > 1:
            run.warnings.append(f"{quant} is split in several files: no Modelfile (Ollama imports single files)")
        else:
            ctx["modelfile"] = _modelfile(docs, folder, filename, ctx["ollama_name"], run.system,
                                          run.common["license"], run.warnings)
    return ctx


def _described(p: Path) -> dict:
    return {"path": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}


def _entry(s: str, spec: dict, art: dict, ctx: dict, files: list, card: dict, run: Shared) -> dict:
    """The set's entry in the upload manifest."""
    entry = {"repo_id": run.repos[s], "title": spec["title"], "relation": ctx["relation"],
             "base_model": ctx.get("base_model"), "library": spec["library"],
             "source": {"tool": art["tool"]["name"], "manifest_sha256": run.common["manifest_sha"][s],
                        "fingerprint": art.get("fingerprint")},
             "files": sorted(files, key=lambda f: f["path_in_repo"]), "card_sha256": card["sha256"]}
    if ctx.get("modelfile"):
        entry["ollama"] = ctx["modelfile"]
    if ctx.get("gguf_files"):
        entry["validation"] = {q: info.get("validation") for q, info in ctx["gguf_files"].items()}
    elif ctx.get("validation"):
        entry["validation"] = {s: ctx["validation"]}
    entry["content_sha256"] = canonical_sha256([[f["path_in_repo"], f["sha256"]] for f in entry["files"]])
    return entry


def _default_gguf(files: dict, wanted: str | None):
    quants = [q for q in files if q != "LoRA"]
    if wanted:
        key = next((q for q in quants if q.upper() == wanted.upper()), None)
        if key is None:
            raise UsageError(f"--ollama-quant {wanted}: the GGUF set holds {', '.join(quants)}")
        return key, files[key]["files"][0]
    for q in [*PREFERRED_QUANTS, *quants]:
        if q in files and q != "LoRA":
            return q, files[q]["files"][0]
    return None
