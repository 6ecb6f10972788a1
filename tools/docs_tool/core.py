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

from upload_common.contract import (MANIFEST, atomic_output, canonical_sha256, check_output_free, describe_input,
                                    finish_manifest, library_versions, new_manifest, sha256_file, write_json_atomic)
from upload_common.cards import looks_like_repo_id
from upload_common.errors import InvalidInput, UsageError
from upload_common.safety import check_namespace, check_repo_id, hub_name
from upload_common.trainer_output import chat_template
from upload_common.upload_manifest import (HUB_FILE_LIMIT, UPLOAD_MANIFEST, UPLOAD_SCHEMA,
                                            UPLOAD_SCHEMA_VERSION, OllamaFields)

from . import card as cards
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
    special = [t for t, k in zip(vocab, kinds) if k == 3]  # llama.cpp's CONTROL tokens
    token = (lambda i: vocab[i] if i is not None and 0 <= i < len(vocab) else None)
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
    sets: dict[str, tuple] = {}
    folders: dict[str, Path] = {}
    for folder in artifacts:
        folder = Path(folder).absolute()
        set_name, spec, manifest = identify(folder)
        if set_name in sets:
            raise UsageError(f"two --artifact folders are both {set_name}: {folders[set_name]} and {folder}: pass one")
        sets[set_name], folders[set_name] = (set_name, spec, manifest), folder
    order = [s for s in set_specs() if s in sets]
    name = given_name or hub_name(_default_name(sets))
    repo_for = repo_ids(name, namespace, order, repos)
    params = {"name": name, "namespace": namespace, "repos": repo_for, "license": license, "license_link": license_link,
              "base_model": base_model, "datasets": list(datasets), "languages": list(languages), "system": system,
              "ollama_quant": ollama_quant}
    inputs = {s: describe_input(folders[s]) for s in order}
    manifest = new_manifest(TOOL, inputs=inputs, parameters=params)
    warnings = manifest["warnings"]
    training_m = next((sets[s][2] for s in order if sets[s][2].get("training")), None)
    training = (training_m or {}).get("training") or {}
    base_cards = [(m.get("decisions") or {}).get("base", {}).get("card") or {} for _, _, m in sets.values()]
    lic = _license(license, license_link, [*base_cards, training.get("card") or {}], warnings)
    base_id, adapter_base = _base(sets, base_model, warnings)
    trainer_card = training.get("card") or {}
    common = {
        "license": lic, "trainer": training.get("trainer"), "summary": training.get("summary"),
        "adapter": training.get("adapter"), "adapter_base": adapter_base,
        "datasets": list(datasets) or _as_list(trainer_card.get("datasets")),
        "language": list(languages) or _as_list(trainer_card.get("language"))
        or next((_as_list(c.get("language")) for c in base_cards if c.get("language")), []),
        "checkpoint_reason": ((training_m or {}).get("decisions") or {}).get("adapter", {}).get("reason"),
        "repos": repo_for, "specs": set_specs(),
        "manifest_sha": {s: sha256_file(folders[s] / MANIFEST) for s in order},
    }
    upload = {"schema": UPLOAD_SCHEMA, "schema_version": UPLOAD_SCHEMA_VERSION, "name": name, "sets": {}}
    with atomic_output(out, overwrite=overwrite) as partial:
        for s in order:
            _, spec, art = sets[s]
            log(f"{s}: card for {repo_for[s]}")
            upload["sets"][s] = _document_set(s, spec, art, folders[s], partial, common, base_id, repo_for, name,
                                              system, ollama_quant, sets, warnings)
        upload["total_bytes"] = sum(f["size"] for st in upload["sets"].values() for f in st["files"])
        write_json_atomic(partial / UPLOAD_MANIFEST, upload)
        (partial / "README.md").write_text(_local_readme(name, upload, sets, folders, lic), encoding="utf-8")
        manifest["sets"] = {s: {k: v for k, v in st.items() if k != "files"} for s, st in upload["sets"].items()}
        manifest["versions"] = library_versions("huggingface_hub", "matplotlib", "gguf")
        finish_manifest(manifest, partial, None, t0)
    for w in warnings:
        log(f"WARNING: {w}")
    return manifest


def _document_set(s, spec, art, folder, partial, common, base_id, repo_for, name, system, ollama_quant, sets,
                  warnings) -> dict:
    docs = partial / s
    docs.mkdir()
    ctx = {**common, "set": s, "spec": spec, "repo_id": repo_for[s], "versions": {}}
    relation = spec["relation"]
    ctx["base_display"] = base_id
    if relation == "quantized":
        # quantized from the merged model of this run (gguf-tool: matched by its manifest's hash; a
        # merge-tool format: made from the same adapter and base): that is the base
        made_from = ((art.get("inputs") or {}).get("model") or {}).get("manifest_sha256")
        merged = next((m for m, (_, sp, m_art) in sets.items() if sp["relation"] == "finetune"
                       and (common["manifest_sha"][m] == made_from or _same_merge(m_art, art))), None)
        if merged and looks_like_repo_id(repo_for[merged]):
            ctx["base_model"] = ctx["quantized_from"] = repo_for[merged]
        else:  # merged weights not published here, or not under a Hub id (a local publish without a
            # namespace): the Hub's base_model must be a Hub id, and "quantized of a fine-tune" is not
            # expressible, so the card names the base the run was fine-tuned from
            ctx["base_model"], relation = base_id, "finetune"
            ctx["quantized_from"] = repo_for[merged] if merged else None
    elif relation == "adapter":
        ctx["base_model"] = common["adapter_base"] if looks_like_repo_id(common["adapter_base"]) and base_id else base_id
        ctx["base_display"] = ctx["base_model"]
    else:
        ctx["base_model"] = base_id
    ctx["relation"] = relation
    versions = art.get("versions") or {}
    ctx["versions"] = {k: versions[k] for k in ("llama-cpp-python", "torch", "transformers", "peft", "bitsandbytes",
                                                "llmcompressor", "compressed-tensors")
                       if k in versions and (k != "bitsandbytes" or "bitsandbytes" in spec.get("requires", ()))}
    ctx["quantization"], ctx["validation"] = art.get("quantization"), art.get("validation")
    artifact_files = [o for o in art["outputs"] if o["path"] not in ("README.md", MANIFEST)]
    too_big = [o["path"] for o in artifact_files if o["size"] > HUB_FILE_LIMIT]
    if too_big:
        raise InvalidInput(f"{', '.join(too_big)} in {folder} exceed the Hub's 50 GB per-file limit: re-run gguf-tool "
                           "with --split-max-size 48G", files=too_big)
    if s == "gguf":
        ctx["gguf_files"] = art.get("files") or {}
        ctx["chat_template"] = (art.get("decisions") or {}).get("chat_template")
        ctx["default_gguf"] = _default_gguf(ctx["gguf_files"], ollama_quant)
        if ctx["default_gguf"]:
            quant, filename = ctx["default_gguf"]
            ctx["ollama_name"] = f"{name.lower()}:{quant.lower()}"
            split = len(ctx["gguf_files"][quant]["files"]) > 1
            if split:
                warnings.append(f"{quant} is split in several files: no Modelfile (Ollama imports single files)")
            else:
                ctx["modelfile"] = _modelfile(docs, folder, filename, ctx["ollama_name"], system, common["license"],
                                              warnings)
    else:
        ctx["chat_template"] = bool(chat_template(folder))
    from .plot import loss_curve

    kind = ((common.get("trainer") or {}).get("kind") or "").upper()
    if loss_curve(common.get("summary"), docs / "loss.png", f"{name} {kind} training loss".replace("  ", " ")):
        ctx["plot"] = "loss.png"
    def described(p: Path) -> dict:
        return {"path": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}

    doc_files = [described(p) for p in sorted(docs.iterdir())]  # the plot and the Modelfile, listed by the card
    ctx["files"] = sorted([*artifact_files, *doc_files], key=lambda f: f["path"])
    ctx["sizes"] = {f["path"]: f["size"] for f in ctx["files"]}
    (docs / "README.md").write_text(cards.render(ctx), encoding="utf-8")
    card = described(docs / "README.md")
    files = [{"path_in_repo": o["path"], "origin": "artifact", "path": o["path"], "size": o["size"], "sha256": o["sha256"]}
             for o in artifact_files]
    files += [{"path_in_repo": f["path"], "origin": "docs", "path": f"{s}/{f['path']}", "size": f["size"],
               "sha256": f["sha256"]} for f in [*doc_files, card]]
    entry = {"repo_id": repo_for[s], "title": spec["title"], "relation": relation, "base_model": ctx.get("base_model"),
             "library": spec["library"], "source": {"tool": art["tool"]["name"],
                                                    "manifest_sha256": common["manifest_sha"][s],
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


def _same_merge(merged: dict, art: dict) -> bool:
    """Whether two merge-tool outputs were made from the same adapter and base (wherever mounted)."""
    def source(m):
        inputs = m.get("inputs") or {}
        return [{k: v for k, v in (inputs.get(key) or {}).items() if k != "path"} for key in ("adapter", "base")]

    tools = {(m.get("tool") or {}).get("name") for m in (merged, art)}
    return tools == {"merge-tool"} and source(merged) == source(art)


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


def _local_readme(name: str, upload: dict, sets: dict, folders: dict, lic: dict | None) -> str:
    lines = [f"# {name}: artifacts", "",
             "Made by upload-driver from a fine-tuning run. Each folder is one artifact set, published as one "
             "repository; `upload_manifest.json` lists every file with its size and SHA256, and where it goes.", "",
             "| Set | Folder | Repository | Files | Size |", "|---|---|---|---|---|"]
    for s, st in upload["sets"].items():
        size = sum(f["size"] for f in st["files"])
        lines.append(f"| {st['title']} | `{folders[s].name}/` | `{st['repo_id']}` | {len(st['files'])} | "
                     f"{size / 1e6:.1f} MB |")
    lines += ["", "The model card of each set is `<set>/README.md` here; it is uploaded as the repository's README.", ""]
    how = {"peft": "PEFT: `AutoPeftModelForCausalLM.from_pretrained(\"{f}\")`",
           "transformers": "transformers: `AutoModelForCausalLM.from_pretrained(\"{f}\")`",
           "gguf": "llama.cpp: `llama-cli -m {f}/<file>.gguf`; Ollama: `gguf/Modelfile` names the GGUF as `FROM "
                   "./<file>`, which Ollama resolves beside the Modelfile: copy it into `{f}/`, then "
                   "`ollama create {n} -f {f}/Modelfile` (the local publish target lays them out together)"}
    lines += ["## Use the files here", ""]
    for s, st in upload["sets"].items():
        lines.append(f"- {st['title']}: " + how.get(st["library"], "see its card").format(f=folders[s].name, n=name.lower()))
    checked = [(st["title"], q, v) for st in upload["sets"].values() for q, v in (st.get("validation") or {}).items() if v]
    if checked:
        lines += ["", "## Validation", "", "Each quantized model against the model it came from, on the same text.", "",
                  "| Set | Type | Top-1 agreement | Mean KL |", "|---|---|---|---|"]
        lines += [f"| {t} | {q} | {v['top1_agreement']:.3f} | {v['mean_kl']:.5f} |" for t, q, v in checked]
    lines += ["", f"Licence: {(lic or {}).get('license_name') or (lic or {}).get('license') or 'not known (see the base model)'}."]
    return "\n".join(lines) + "\n"
