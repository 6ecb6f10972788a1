"""The sample job: a small trainer output made on the fly, then the pipeline run on it locally.

No token, GPU or Docker is needed: the steps run as local processes, as the driver does when no
container engine is there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from upload_common.cli import log
from upload_common.contract import read_manifest
from upload_common.errors import UploadError

STEPS = [  # (output folder, tool module, arguments after --adapter/--out)
    ("lora", "merge_tool.cli", ["--method", "lora"]),
    ("merged_16bit", "merge_tool.cli", ["--method", "merged_16bit"]),
]


def make_sample(folder: Path) -> Path:
    """Tokenizer, base model and an SFT-shaped run with checkpoints, under ``folder``."""
    from upload_common.sample import make_base, make_tokenizer, make_trainer_output

    if (folder / "sft_output" / "adapter_config.json").is_file():
        return folder / "sft_output"
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = make_tokenizer(tmp / "tokenizer")
    base = make_base(tmp / "base_model", "llama", hidden=128, intermediate=256, tokenizer_dir=tok)
    make_trainer_output(tmp / "sft_output", base, kind="sft", tokenizer_dir=tok,
                        base_name=str((folder / "base_model").absolute()))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder / "sft_output"


def run_step(module: str, args: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *args], stdout=subprocess.DEVNULL)
    if proc.returncode:
        raise UploadError(f"step {module} {' '.join(args[:1])} failed with exit code {proc.returncode}: see its message above")
    return time.monotonic() - t0


def run_demo(work: Path) -> list[dict]:
    work = Path(work).absolute()
    log(f"making the sample trainer output in {work / 'sample'}")
    trainer_output = make_sample(work / "sample")
    rows = []
    for name, module, extra in STEPS:
        out = work / "artifacts" / name
        log(f"step {name}: {module.split('.')[0]} (local process)")
        seconds = run_step(module, ["--adapter", str(trainer_output), "--out", str(out), "--overwrite", *extra])
        manifest = read_manifest(out)
        rows.append({"step": name, "path": str(out), "files": len(manifest["outputs"]),
                     "bytes": sum(o["size"] for o in manifest["outputs"]), "seconds": round(seconds, 1)})
    return rows
