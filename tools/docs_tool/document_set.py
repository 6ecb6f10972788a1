"""One set's documentation in docs-tool's output: its card (README.md), loss curve and, for GGUF, the
Ollama Modelfile; and its entry in the upload manifest (repo, files with sizes and hashes, origin)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from upload_common.cards import looks_like_repo_id
from upload_common.contract import MANIFEST, canonical_sha256, sha256_file
from upload_common.errors import InvalidInput, UsageError
from upload_common.trainer_output import chat_template
from upload_common.upload_manifest import HUB_FILE_LIMIT, OllamaFields

from . import card as cards
from .sets import PREFERRED_QUANTS


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

    return {
        "chat_template": value("tokenizer.chat_template"),
        "bos": token(value("tokenizer.ggml.bos_token_id")),
        "eos": token(value("tokenizer.ggml.eos_token_id")),
        "special": special,
    }


def _modelfile(
    folder: Path, gguf_dir: Path, filename: str, ollama_name: str, system: str | None, lic: dict | None, warnings: list
) -> dict:
    """The Ollama model's fields (the upload manifest's "ollama" object), and the Modelfile rendered from them."""
    from .modelfile import _clean, modelfile_text, ollama_template

    chat = _gguf_chat(gguf_dir / filename)
    tpl = ollama_template(
        chat["chat_template"], bos_token=chat["bos"], eos_token=chat["eos"], special_tokens=chat["special"]
    )
    warnings.extend(f"Modelfile: {w}" for w in tpl["warnings"])
    if system and tpl["template"] and not tpl["system_supported"]:
        warnings.append(
            "Modelfile: the chat template has no system role: Ollama will not show the --system prompt to the model"
        )
    license_text = None
    if lic:
        license_text = lic.get("license_name") or lic["license"]
        if lic.get("license_link"):
            license_text += f"\n{lic['license_link']}"
    # the values as the Modelfile holds them: stops once each, texts without what a Modelfile cannot carry
    stop = [s for s in dict.fromkeys(tpl["stop"] or []) if s]
    fields = OllamaFields(
        file=filename,
        ollama_name=ollama_name,
        template=tpl["template"] or None,
        system=None if system is None else _clean(system),
        license=None if license_text is None else _clean(license_text),
        parameters={"stop": stop} if stop else {},
    )
    text = modelfile_text(
        filename, template=fields.template, stop=list(fields.stop), system=fields.system, license_text=fields.license
    )
    (folder / "Modelfile").write_text(text, encoding="utf-8")
    return {**fields.to_json(), "checked": tpl["checked"]}


def document_set(s: str, folder: Path, partial: Path, run: Shared) -> dict:
    """One set's folder of documents (card, plot, Modelfile) and its entry in the upload manifest."""
    _, spec, art = run.sets[s]
    docs = partial / s
    docs.mkdir()
    ctx = {**run.common, "set": s, "spec": spec, "repo_id": run.repos[s], "versions": {}}
    ctx.update(_relation(s, spec, art, run))
    versions = art.get("versions") or {}
    ctx["versions"] = {
        k: versions[k]
        for k in (
            "llama-cpp-python",
            "torch",
            "transformers",
            "peft",
            "bitsandbytes",
            "llmcompressor",
            "compressed-tensors",
        )
        if k in versions and (k != "bitsandbytes" or "bitsandbytes" in spec.get("requires", ()))
    }
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
    files = [
        {"path_in_repo": o["path"], "origin": "artifact", "path": o["path"], "size": o["size"], "sha256": o["sha256"]}
        for o in artifact_files
    ]
    files += [
        {
            "path_in_repo": f["path"],
            "origin": "docs",
            "path": f"{s}/{f['path']}",
            "size": f["size"],
            "sha256": f["sha256"],
        }
        for f in [*doc_files, card]
    ]
    return _entry(s, spec, art, ctx, files, card, run)


def _relation(s: str, spec: dict, art: dict, run: Shared) -> dict:
    """How the set relates to its base on the Hub: relation, base_model, base_display, quantized_from."""
    relation, base_id = spec["relation"], run.base_id
    found = {"base_display": base_id}
    if relation == "quantized":
        # quantized from the merged model of this run: the set it consumed (its --model), named in its
        # manifest by that set's manifest hash, is its base
        made_from = ((art.get("inputs") or {}).get("model") or {}).get("manifest_sha256")
        merged = next(
            (
                m
                for m, (_, sp, _m) in run.sets.items()
                if sp["relation"] == "finetune" and run.common["manifest_sha"][m] == made_from
            ),
            None,
        )
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
        raise InvalidInput(
            f"{', '.join(too_big)} in {folder} exceed the Hub's 50 GB per-file limit: re-run gguf-tool "
            "with --split-max-size 48G",
            files=too_big,
        )
    return artifact_files


def _gguf_context(art: dict, folder: Path, docs: Path, run: Shared) -> dict:
    """The GGUF set's card facts: its files, the default quant for Ollama, and the Modelfile."""
    decisions = art.get("decisions") or {}
    ctx = {"gguf_files": art.get("files") or {}, "chat_template": decisions.get("chat_template")}
    ctx["gguf_reference"] = decisions.get("reference") or {}
    ctx["default_gguf"] = _default_gguf(ctx["gguf_files"], run.ollama_quant)
    if ctx["default_gguf"]:
        quant, filename = ctx["default_gguf"]
        ctx["ollama_name"] = f"{run.name.lower()}:{quant.lower()}"
        if len(ctx["gguf_files"][quant]["files"]) > 1:
            run.warnings.append(f"{quant} is split in several files: no Modelfile (Ollama imports single files)")
        else:
            ctx["modelfile"] = _modelfile(
                docs, folder, filename, ctx["ollama_name"], run.system, run.common["license"], run.warnings
            )
    return ctx


def _described(p: Path) -> dict:
    return {"path": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)}


def _entry(s: str, spec: dict, art: dict, ctx: dict, files: list, card: dict, run: Shared) -> dict:
    """The set's entry in the upload manifest."""
    entry = {
        "repo_id": run.repos[s],
        "title": spec["title"],
        "relation": ctx["relation"],
        "base_model": ctx.get("base_model"),
        "library": spec["library"],
        "source": {
            "tool": art["tool"]["name"],
            "manifest_sha256": run.common["manifest_sha"][s],
            "fingerprint": art.get("fingerprint"),
        },
        "files": sorted(files, key=lambda f: f["path_in_repo"]),
        "card_sha256": card["sha256"],
    }
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
