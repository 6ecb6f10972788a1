"""The sample job: a small trainer output made on the fly, then the whole pipeline run on it locally:
the adapter, the merged model, GGUF files (validated), model cards, and a publish to a local folder
laid out as the Hub would be.

No token, GPU or Docker is needed: the steps run as local processes, as the driver does when no
container engine is there, and the publish target is a folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from upload_common.cli import log
from upload_common.contract import read_manifest
from upload_common.errors import UploadError

NAME = "sample-chat"
SAMPLE_CARD = "---\nlicense: apache-2.0\nlanguage:\n- en\n---\n\n# Sample base model\n\nRandom weights, briefly trained.\n"


def steps(trainer_output: Path, art: Path, site: Path) -> list[tuple[str, str, list[str]]]:
    """(output folder, tool module, arguments) of each step, every path explicit."""
    adapter = ["--adapter", str(trainer_output)]
    return [
        ("lora", "merge_tool.cli", [*adapter, "--out", str(art / "lora"), "--method", "lora"]),
        ("merged_16bit", "merge_tool.cli", [*adapter, "--out", str(art / "merged_16bit"), "--method", "merged_16bit"]),
        ("gguf", "gguf_tool.cli", ["--model", str(art / "merged_16bit"), "--out", str(art / "gguf"), "--quant", "Q4_K_M",
                                   "--quant", "Q8_0", "--name", NAME]),
        ("docs", "docs_tool.cli", [*[a for k in ("lora", "merged_16bit", "gguf") for a in ("--artifact", str(art / k))],
                                   "--out", str(art / "docs"), "--name", NAME, "--namespace", "sample-user"]),
        ("publish", "hf_push_tool.cli", ["--docs", str(art / "docs"),
                                         *[a for k in ("lora", "merged_16bit", "gguf") for a in ("--artifact", str(art / k))],
                                         "--out", str(art / "publish"), "--to", f"local:{site}"]),
    ]


def make_sample(folder: Path) -> Path:
    """Tokenizer, a briefly trained base model (so the GGUF checks mean something) with a card, and an
    SFT-shaped run with checkpoints, under ``folder``."""
    from upload_common.sample import make_base, make_tokenizer, make_trainer_output, train_briefly

    if (folder / "sft_output" / "adapter_config.json").is_file():
        return folder / "sft_output"
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = make_tokenizer(tmp / "tokenizer")
    base = make_base(tmp / "base_model", "llama", hidden=256, intermediate=512, tokenizer_dir=tok)
    log("training the sample base model briefly (once; about half a minute)")
    train_briefly(base, steps=200)
    (base / "README.md").write_text(SAMPLE_CARD)
    make_trainer_output(tmp / "sft_output", base, kind="sft", tokenizer_dir=tok, lora_scale=0.02,
                        base_name=str((folder / "base_model").absolute()))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder / "sft_output"


def run_step(module: str, args: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *args], stdout=subprocess.DEVNULL)
    if proc.returncode:
        raise UploadError(f"step {module.split('.')[0]} failed with exit code {proc.returncode}: see its message above")
    return time.monotonic() - t0


def run_demo(work: Path) -> list[dict]:
    work = Path(work).absolute()
    log(f"making the sample trainer output in {work / 'sample'}")
    trainer_output = make_sample(work / "sample")
    art, site = work / "artifacts", work / "published"
    rows = []
    for name, module, args in steps(trainer_output, art, site):
        out = art / name
        log(f"step {name}: {module.split('.')[0].replace('_', '-')} (local process)")
        seconds = run_step(module, [*args, "--overwrite"])
        manifest = read_manifest(out)
        rows.append({"step": name, "path": str(out), "files": len(manifest["outputs"]),
                     "bytes": sum(o["size"] for o in manifest["outputs"]), "seconds": round(seconds, 1)})
    rows[-1]["path"] = str(site)
    rows[-1]["files"] = sum(1 for p in site.rglob("*") if p.is_file() and not p.name.startswith("."))
    rows[-1]["bytes"] = sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.name.startswith("."))
    return rows
