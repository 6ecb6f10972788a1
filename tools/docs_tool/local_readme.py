"""The README of docs-tool's output folder: what the local artifact folders hold and how to use them."""

from __future__ import annotations


def local_readme(name: str, upload: dict, folders: dict, lic: dict | None) -> str:
    lines = [
        f"# {name}: artifacts",
        "",
        "Made by upload-driver from a fine-tuning run. Each folder is one artifact set, published as one "
        "repository; `upload_manifest.json` lists every file with its size and SHA256, and where it goes.",
        "",
        "| Set | Folder | Repository | Files | Size |",
        "|---|---|---|---|---|",
    ]
    for s, st in upload["sets"].items():
        size = sum(f["size"] for f in st["files"])
        lines.append(
            f"| {st['title']} | `{folders[s].name}/` | `{st['repo_id']}` | {len(st['files'])} | {size / 1e6:.1f} MB |"
        )
    lines += [
        "",
        "The model card of each set is `<set>/README.md` here; it is uploaded as the repository's README.",
        "",
    ]
    how = {
        "peft": 'PEFT: `AutoPeftModelForCausalLM.from_pretrained("{f}")`',
        "transformers": 'transformers: `AutoModelForCausalLM.from_pretrained("{f}")`',
        "gguf": "llama.cpp: `llama-cli -m {f}/<file>.gguf`; Ollama: `gguf/Modelfile` names the GGUF as `FROM "
        "./<file>`, which Ollama resolves beside the Modelfile: copy it into `{f}/`, then "
        "`ollama create {n} -f {f}/Modelfile` (the local publish target lays them out together)",
    }
    lines += ["## Use the files here", ""]
    for s, st in upload["sets"].items():
        use = how.get(st["library"], "see its card").format(f=folders[s].name, n=name.lower())
        lines.append(f"- {st['title']}: {use}")
    checked = [
        (st["title"], q, v) for st in upload["sets"].values() for q, v in (st.get("validation") or {}).items() if v
    ]
    if checked:
        lines += [
            "",
            "## Validation",
            "",
            "Each quantized model against the model it came from, on the same text.",
            "",
            "| Set | Type | Top-1 agreement | Mean KL |",
            "|---|---|---|---|",
        ]
        lines += [f"| {t} | {q} | {v['top1_agreement']:.3f} | {v['mean_kl']:.5f} |" for t, q, v in checked]
    licence = (lic or {}).get("license_name") or (lic or {}).get("license") or "not known (see the base model)"
    lines += ["", f"Licence: {licence}."]
    return "\n".join(lines) + "\n"
