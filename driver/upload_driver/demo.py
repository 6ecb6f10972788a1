"""The sample job: a small trainer output made on the fly, then the whole pipeline run on it locally:
the adapter, the merged model, GGUF files (validated), model cards, and a publish to a local folder
laid out as the Hub would be.

No token, GPU or Docker is needed: the steps run as local processes, as the driver does when no
container engine is there, and the publish target is a folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from upload_common.cli import debug_enabled, log
from upload_common.errors import Unsupported

NAME = "sample-chat"
# A folder where the sample's trained base model is kept and taken from (checked by its files' sha256):
# trained once for many demos, e.g. once per test run.
SAMPLE_CACHE_ENV = "UPLOAD_DRIVER_SAMPLE_CACHE"
SAMPLE_CARD = (
    "---\nlicense: apache-2.0\nlanguage:\n- en\n---\n\n# Sample base model\n\nRandom weights, briefly trained.\n"
)


def make_sample(folder: Path) -> Path:
    """Tokenizer, a briefly trained base model (so the GGUF checks mean something) with a card, and an
    SFT-shaped run with checkpoints, under ``folder``."""
    try:  # the sample is trained here, and every step runs here: [all] installs what they need
        import torch  # noqa: F401
        from transformers.utils import logging as hf_logging

        from upload_common.sample import make_tokenizer, make_trained_base, make_trainer_output
    except ImportError as exc:
        raise Unsupported(
            f"upload-driver demo trains a sample model with torch and runs every step on this machine, "
            f"but {exc.name or 'torch'} is not installed: pip install 'upload-driver[all]'"
        ) from exc
    if not debug_enabled():  # transformers' own bars and warnings are not the demo's output
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if (folder / "sft_output" / "adapter_config.json").is_file():
        return folder / "sft_output"
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = make_tokenizer(tmp / "tokenizer")
    cache = os.environ.get(SAMPLE_CACHE_ENV)
    log(
        f"the sample base model: trained once, kept in {cache}"
        if cache
        else "training the sample base model briefly (once; about half a minute)"
    )
    base = make_trained_base(tmp / "base_model", tok, cache=Path(cache) if cache else None)
    (base / "README.md").write_text(SAMPLE_CARD)
    make_trainer_output(
        tmp / "sft_output",
        base,
        kind="sft",
        tokenizer_dir=tok,
        lora_scale=0.02,
        base_name=str((folder / "base_model").absolute()),
    )
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder / "sft_output"


def run_demo(work: Path, runtime: str = "auto") -> dict:
    """The sample made (once), then ``upload-driver run`` on it, publishing to ``WORK/published``."""
    from .config import request
    from .run import execute

    work = Path(work).absolute()
    log(f"making the sample trainer output in {work / 'sample'}")
    trainer_output = make_sample(work / "sample")
    req = request(
        trainer_output,
        work=str(work),
        name=NAME,
        quants=("Q4_K_M", "Q8_0"),
        runtime=runtime,
        push=(f"local:{work / 'published'}",),
    )
    return execute(req)


def next_steps(result: dict) -> list[str]:
    """What a new user does after the demo: where to look, then their own folder."""
    work = Path(result["work"])
    cards = sorted((work / "artifacts" / "docs").glob("*/README.md"))
    return [
        "",
        "What was made:",
        f"  model cards: {', '.join(str(c) for c in cards) or work / 'artifacts' / 'docs'}",
        f"  published as the Hub would hold it: {work / 'published'}",
        "Next, your own trainer output (see the plan and its checks first):",
        "  upload-driver run ./your_sft_output --dry-run",
        "  upload-driver run ./your_sft_output --push local:./published      # or --push hf:ORG/NAME with HF_TOKEN set",
    ]
