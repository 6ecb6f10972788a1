"""Fixtures: tiny real models built on the fly (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    from upload_common.sample import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory, tokenizer_dir) -> Path:
    from upload_common.sample import make_base

    return make_base(tmp_path_factory.mktemp("llama") / "base", "llama", tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="session")
def sft_output(tmp_path_factory, llama_base, tokenizer_dir) -> Path:
    from upload_common.sample import make_trainer_output

    return make_trainer_output(tmp_path_factory.mktemp("runs") / "sft output ünï", llama_base, kind="sft",
                               tokenizer_dir=tokenizer_dir)


def tree_hash(folder: Path) -> str:
    """Names and contents of every file below ``folder``: proves an input was left untouched."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def no_finished_output(out: Path) -> bool:
    """Nothing at ``out`` and no manifest anywhere beside it."""
    return not Path(out).exists() and not list(Path(out).parent.glob("**/manifest.json"))


@pytest.fixture(scope="session")
def trained_llama(tmp_path_factory, tokenizer_dir) -> Path:
    """Hidden 256 / intermediate 512 (so k-quants are real), briefly trained so top-1 means something."""
    from upload_common.sample import make_base, train_briefly

    folder = make_base(tmp_path_factory.mktemp("trained") / "tiny-llama", "llama", hidden=256, intermediate=512,
                       heads=4, kv_heads=2, tokenizer_dir=tokenizer_dir)
    return train_briefly(folder, steps=300)
