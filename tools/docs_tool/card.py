"""Hugging Face model cards: YAML metadata checked offline (huggingface_hub's ModelCard plus our rules)
and a body a user can act on: what the model is, how it was trained, how to run it, what each file is."""

from __future__ import annotations

import re

from upload_common.cards import looks_like_repo_id
from upload_common.errors import InvalidInput

from .licenses import HUB_LICENSES

RELATIONS = ("adapter", "merge", "quantized", "finetune")


def metadata(ctx: dict) -> dict:
    """The card's YAML: base model and relation, library, licence, datasets, languages, tags."""
    spec = ctx["spec"]
    meta = {}
    if ctx.get("base_model"):
        meta["base_model"] = ctx["base_model"]
        meta["base_model_relation"] = ctx["relation"]
    meta["library_name"] = spec["library"]
    meta.update(ctx.get("license") or {})
    for key in ("datasets", "language"):
        if ctx.get(key):
            meta[key] = list(ctx[key])
    meta["pipeline_tag"] = "text-generation"
    kind = (ctx.get("trainer") or {}).get("kind")
    tags = ["upload-driver", *spec.get("tags", [])]
    if kind and kind != "unknown":
        tags += [kind, "trl"]
    meta["tags"] = list(dict.fromkeys(tags))
    return meta


def check(text: str) -> list[str]:
    """Problems the Hub would reject or users would trip on; [] when the card is fine. Parses the
    YAML with huggingface_hub (as the Hub does) and applies our rules."""
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(text).data.to_dict()
    except Exception as exc:  # noqa: BLE001 - ValueError or a YAML error, both mean "not a valid card"
        return [f"the card's metadata does not parse: {' '.join(str(exc).split())}"]
    problems = [*_base_problems(data), *_license_problems(data)]
    for tag in data.get("tags") or []:
        if not isinstance(tag, str) or not tag or any(c.isspace() for c in tag):
            problems.append(f"tag {tag!r} is empty or holds spaces")
    if not data.get("library_name"):
        problems.append("no library_name: the Hub cannot show how to load the model")
    return problems


def _base_problems(data: dict) -> list[str]:
    problems = []
    base, relation = data.get("base_model"), data.get("base_model_relation")
    for b in base if isinstance(base, list) else [base] if base else []:
        if not looks_like_repo_id(b):
            problems.append(f"base_model {b!r} is not a Hub model id (org/name)")
    if relation and relation not in RELATIONS:
        problems.append(f"base_model_relation {relation!r} is not one of {', '.join(RELATIONS)}")
    if relation and not base:
        problems.append("base_model_relation without base_model")
    return problems


def _license_problems(data: dict) -> list[str]:
    problems = []
    lic = data.get("license")
    if lic and lic not in HUB_LICENSES:
        problems.append(
            f"license {lic!r} is not a Hub licence id: use license: other with license_name and license_link"
        )
    if lic == "other" and not (data.get("license_name") and data.get("license_link")):
        problems.append("license: other needs license_name and license_link")
    return problems


def render(ctx: dict) -> str:
    """The whole card (front matter + body), checked; an InvalidInput names what is wrong."""
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard.from_template(
        ModelCardData(**metadata(ctx)), template_str="---\n{{ card_data }}\n---\n\n{{ body }}", body=body(ctx)
    )
    text = str(card)
    problems = check(text)
    if problems:
        raise InvalidInput(
            f"the model card for {ctx['repo_id']} would be rejected: {'; '.join(problems)}: "
            "fix the option or input named",
            repo_id=ctx["repo_id"],
            problems=problems,
        )
    return text


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _hub_link(repo_id: str | None) -> str:
    return f"[{repo_id}](https://huggingface.co/{repo_id})" if looks_like_repo_id(repo_id) else f"`{repo_id}`"


def body(ctx: dict) -> str:
    parts = [_intro(ctx), _files(ctx), _usage(ctx), _training(ctx), _provenance(ctx)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _intro(ctx: dict) -> str:
    spec, kind = ctx["spec"], (ctx.get("trainer") or {}).get("kind")
    what = (
        f"{kind.upper()} fine-tune"
        if kind and kind not in ("unknown", "reward")
        else "reward model"
        if kind == "reward"
        else "fine-tune"
    )
    article = "an" if what[0] in "AEFHILMNORSX" else "a"  # an SFT, an ORPO; a DPO, a KTO
    base = ctx.get("base_display")
    of = f" of {_hub_link(base)}" if base else ""
    lines = [f"# {ctx['repo_id']}", "", f"The {spec['title']} of {article} {what}{of}."]
    relation = {
        "adapter": "Load it on top of the base model (PEFT).",
        "finetune": "The LoRA adapter is merged into the base weights: it loads like any model.",
        "quantized": "Quantized from the merged model.",
    }
    if ctx.get("quantized_from"):  # also when the metadata names the base instead (a merged set not on the Hub)
        lines.append(f"Quantized from the merged model {_hub_link(ctx['quantized_from'])}.")
    elif ctx.get("relation") in relation:
        lines.append(relation[ctx["relation"]])
    others = [f"{_hub_link(r)} ({ctx['specs'][s]['title']})" for s, r in ctx["repos"].items() if s != ctx["set"]]
    if others:
        lines += ["", "Other forms of this model: " + ", ".join(others) + "."]
    return "\n".join(lines)


def _files(ctx: dict) -> str:
    gguf = ctx.get("gguf_files")
    if gguf:
        rows = [
            "| File | Type | Size | Top-1 agreement | Mean KL | P99 KL | Perplexity | Notes |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for q, info in gguf.items():
            v = info.get("validation") or {}
            figures = _figures(v)
            notes = []
            if info.get("fallbacks"):
                notes.append(f"{len(info['fallbacks'])} tensors kept at a wider type (rows not a multiple of 256)")
            if q == "LoRA":
                notes.append("adapter: use with the base model's GGUF")
            if v.get("against"):
                notes.append(f"checked against {v['against']}")
            for f in info["files"]:
                rows.append(f"| `{f}` | {q} | {_size(ctx['sizes'].get(f, 0))} | {figures} | {'; '.join(notes)} |")
        return (
            "## Files\n\nEvery file was loaded in llama.cpp and run on the same text as its reference: the "
            "16-bit file against the Hugging Face model, each quantized file against the 16-bit file. Top-1 "
            "agreement is the share of positions where both pick the same next token; KL is the divergence of "
            "their next-token distributions (0 = identical), on average and at the 99th percentile; perplexity "
            "is the file's on the text (its reference's in brackets)." + _reference_note(ctx) + "\n\n" + "\n".join(rows)
        )
    rows = ["| File | Size |", "|---|---|"]
    rows += [f"| `{f['path']}` | {_size(f['size'])} |" for f in ctx["files"] if f["path"] != "README.md"]
    return "## Files\n\n" + "\n".join(rows) + _quantization(ctx)


def _reference_note(ctx: dict) -> str:
    """The validation text, and the 16-bit file's own check when that file is not published."""
    ref = ctx.get("gguf_reference") or {}
    text, inter = ref.get("text") or {}, ref.get("intermediate") or {}
    note = ""
    if text.get("tokens"):
        source = (
            "the built-in text (prose, code, numbers, chat turns)"
            if text["source"].startswith("built-in")
            else f"`{text['source']}`"
        )
        note += f" The text: {text['tokens']} tokens of {source}."
    v = inter.get("validation") or {}
    if "top1_agreement" in v:
        note += (
            f" The {inter['quant']} file the quantized ones were made from (not published) agreed with the Hugging "
            f"Face model on {v['top1_agreement']:.3f} of next tokens (mean KL {v['mean_kl']:.5f})."
        )
    return note


def _figures(v: dict) -> str:
    """A file's table cells: top-1, mean KL, p99 KL, perplexity (reference); blank where not measured."""
    if "top1_agreement" not in v:
        return "not validated | | |"
    p99 = f"{v['p99_kl']:.5f}" if "p99_kl" in v else ""
    ppl = f"{v['perplexity']:.3f} ({v['perplexity_reference']:.3f})" if "perplexity" in v else ""
    return f"{v['top1_agreement']:.3f} | {v['mean_kl']:.5f} | {p99} | {ppl}"


def _quantization(ctx: dict) -> str:
    """How a quantized merge-tool format was made, and how close it stays to the 16-bit merge."""
    q, v = ctx.get("quantization") or {}, ctx.get("validation")
    lines = []
    if q:
        lines += ["", "", "## Quantization", "", "| Setting | Value |", "|---|---|"]
        lines += [
            f"| {k.replace('_', ' ')} | {', '.join(map(str, val)) if isinstance(val, list) else val} |"
            for k, val in q.items()
            if val not in (None, "", [], {})
        ]
    if v:
        lines += [
            "",
            f"Loaded with transformers and compared with the 16-bit merge on the same text "
            f"({v['positions']} positions): top-1 agreement **{v['top1_agreement']:.3f}** (share of "
            f"positions where both pick the same next token), mean KL divergence "
            f"**{v['mean_kl']:.5f}** (0 = identical).",
        ]
    return "\n".join(lines)


_CHAT = """messages = [{"role": "user", "content": "Hello!"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)"""
_PLAIN = """inputs = tokenizer("Hello!", return_tensors="pt")"""
_GENERATE = """output = model.generate(**inputs, max_new_tokens=64)
print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))"""


def _usage(ctx: dict) -> str:
    repo, lib = ctx["repo_id"], ctx["spec"]["library"]
    prompt = _CHAT if ctx.get("chat_template") else _PLAIN
    if lib == "peft":
        code = (
            f"from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n{prompt}\n{_GENERATE}'
        )
        note = (
            ""
            if looks_like_repo_id(ctx.get("adapter_base"))
            else (
                "\n\nThe adapter's config names its base model as a local path; pass the base explicitly "
                "(`PeftModel.from_pretrained(base_model, ...)`) where that path does not exist."
            )
        )
        return (
            f"## Usage\n\nWith [PEFT](https://github.com/huggingface/peft) and transformers:\n\n"
            f"```python\n{code}\n```{note}"
        )
    if lib == "gguf":
        return _usage_gguf(ctx)
    code = (
        f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n{prompt}\n{_GENERATE}'
    )
    needs = ctx["spec"].get("requires") or []
    pip = f" (`pip install {' '.join(needs)}`)" if needs else ""
    text = f"## Usage\n\nWith transformers{pip}:\n\n```python\n{code}\n```"
    if ctx["spec"].get("vllm"):
        text += (
            f"\n\nWith [vLLM](https://github.com/vllm-project/vllm), which reads this format natively:\n\n"
            f"```sh\nvllm serve {repo}\n```"
        )
    return text


def _usage_gguf(ctx: dict) -> str:
    repo, main = ctx["repo_id"], ctx.get("default_gguf")
    if not main:
        return ""
    quant, filename = main
    chat = (
        (
            'print(llm.create_chat_completion(messages=[{"role": "user", "content": "Hello!"}], max_tokens=64)'
            '["choices"][0]["message"]["content"])'
        )
        if ctx.get("chat_template")
        else 'print(llm("Hello!", max_tokens=64)["choices"][0]["text"])'
    )
    parts = [
        "## Usage",
        f"llama.cpp:\n\n```sh\nllama-cli -hf {repo}:{quant}\n```",
        "[llama-cpp-python](https://github.com/abetlen/llama-cpp-python):\n\n"
        "```python\nfrom llama_cpp import Llama\n\n"
        f'llm = Llama.from_pretrained(repo_id="{repo}", filename="{filename}")\n{chat}\n```',
    ]
    if ctx.get("modelfile"):
        parts.append(
            f"[Ollama](https://ollama.com), straight from the Hub:\n\n"
            f"```sh\nollama run hf.co/{repo}:{quant}\n```\n\n"
            f"or with the `Modelfile` of this repo (chat template and stop tokens of the tokenizer), in a "
            f"folder holding it and `{filename}`:\n\n```sh\nollama create {ctx['ollama_name']} -f Modelfile\n"
            f"ollama run {ctx['ollama_name']}\n```"
        )
    return "\n\n".join(parts)


_SUMMARY_ROWS = (
    ("epoch", "Epochs", "{:.2f}"),
    ("train_batch_size", "Batch size per device", "{}"),
    ("final_loss", "Final training loss", "{:.4f}"),
    ("train_runtime", "Training time (s)", "{:.0f}"),
)


def _training(ctx: dict) -> str:
    trainer, summary = ctx.get("trainer") or {}, ctx.get("summary") or {}
    adapter = ctx.get("adapter") or {}
    rows = []
    kind = trainer.get("kind")
    if kind and kind != "unknown":
        rows.append(("Method", f"{kind.upper()} (detected: {trainer.get('evidence', '')})"))
    if adapter:
        rows.append(("Adapter", _adapter_desc(adapter)))
    if ctx.get("checkpoint_reason"):  # merge-tool's reason, less its command-line hint
        rows.append(("Checkpoint", re.sub(r";? ?pick one with --checkpoint N", "", ctx["checkpoint_reason"])))
    rows += _summary_rows(summary)
    if ctx.get("datasets"):
        rows.append(("Datasets", ", ".join(ctx["datasets"])))
    if not rows:
        return ""
    text = "## Training\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    if ctx.get("plot"):
        text += f"\n\n![Training loss]({ctx['plot']})"
    return text


def _adapter_desc(adapter: dict) -> str:
    """``LORA r=16, alpha=32 (rslora) on q_proj, v_proj``."""
    desc = f"{adapter.get('peft_type', 'LORA')} r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}"
    flags = [f for f in ("use_rslora", "use_dora") if adapter.get(f)]
    if flags:
        desc += " (" + ", ".join(f.removeprefix("use_") for f in flags) + ")"
    targets = adapter.get("target_modules")
    if targets:
        desc += f" on {', '.join(targets) if isinstance(targets, list) else targets}"
    return desc


def _summary_rows(summary: dict) -> list[tuple[str, str]]:
    """The trainer's figures: steps, epochs, batch size, losses, time."""
    rows = []
    steps = summary.get("global_step")
    if steps is not None:
        rows.append(("Steps", f"{steps}" + (f" of {summary['max_steps']}" if summary.get("max_steps") else "")))
    for key, label, fmt in _SUMMARY_ROWS:
        if isinstance(summary.get(key), (int, float)):
            rows.append((label, fmt.format(summary[key])))
    evals = summary.get("eval_loss_history") or []
    if evals:
        rows.append(("Final evaluation loss", f"{evals[-1][1]:.4f}"))
    return rows


def _provenance(ctx: dict) -> str:
    rows = [f"| `{f['path']}` | {f['size']} | `{f['sha256']}` |" for f in ctx["files"] if f["path"] != "README.md"]
    versions = ctx.get("versions") or {}
    made = ", ".join(f"{k} {v}" for k, v in versions.items())
    return (
        "## Provenance\n\nMade with upload-driver" + (f" ({made})" if made else "") + ". SHA256 of every file "
        "as written by the tool that made it, checked again after upload:\n\n| File | Bytes | SHA256 |\n"
        "|---|---|---|\n" + "\n".join(rows)
    )
