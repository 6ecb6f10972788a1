"""The reference an export is validated against, computed once and kept: the text's tokens, cut into
chunks, and the reference model's next-token log-probabilities for them, stored as a content-addressed
``.npy`` file (its name is the hash of what determines its numbers: the model's identity, the method, the
tokens), so a later check, another step, or a rerun with other quant types reads it instead of running
the model again. Files are written whole then renamed: a reader never sees a half-written one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import canonical_sha256
from .errors import InvalidInput
from .eval_text import CHUNK_TOKENS, EvalText, built_in, chunks
from .reference import TensorSource, run_reference

FORMAT = 1  # bump when what a stored file holds changes meaning


@dataclass(frozen=True)
class Tokens:
    """The validation text's tokens by the Hugging Face tokenizer, cut to the budget (``ids``: what the
    exported tokenizer must reproduce), and the equal chunks the models are run on."""

    ids: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...]
    text: EvalText

    def describe(self) -> dict:
        return {
            **self.text.describe(),
            "tokens": len(self.ids),
            "chunks": len(self.chunks),
            "chunk_tokens": len(self.chunks[0]),
        }


@dataclass(frozen=True)
class Stored:
    """Log-probabilities [chunks, positions, vocab] (float32, memory-mapped from ``path``), and whether they
    were already there."""

    logprobs: Any
    path: Path
    reused: bool


def tokenize(model_dir: Path, text: EvalText | None, max_tokens: int) -> Tokens:
    """The tokens of ``text`` (the built-in text when None) by the model's own tokenizer, cut to ``max_tokens``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)  # an untrusted folder never runs code
    text = text or built_in(tok)
    ids = tok(text.text, verbose=False).input_ids[:max_tokens]
    if len(ids) < 2:
        raise InvalidInput(f"the validation text ({text.source}) has {len(ids)} token: give a longer --eval-text")
    size = min(CHUNK_TOKENS, _context(model_dir))
    return Tokens(ids=tuple(ids), chunks=tuple(map(tuple, chunks(ids, tok.bos_token_id, size))), text=text)


def _context(model_dir: Path) -> int:
    """The context the model was trained for (a chunk never runs past it), from its config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False).get_text_config()
    return int(getattr(config, "max_position_embeddings", 0) or CHUNK_TOKENS)


def stored(store: Path, key: dict, produce: Callable[[], Iterable[Any]], count: int) -> Stored:
    """The log-probabilities named by ``key``: read from ``store`` when a file of that name is there with the
    expected shape, else made by ``produce`` (``count`` arrays [positions, vocab], one per chunk), written
    chunk by chunk into the file, and read back memory-mapped."""
    import numpy as np

    store.mkdir(parents=True, exist_ok=True)
    path = store / f"{canonical_sha256({'format': FORMAT, **key})}.npy"
    found = _load(path, count)
    if found is not None:
        return Stored(found, path, True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.npy")
    out = None
    for i, chunk in enumerate(produce()):
        if out is None:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, *chunk.shape))
        out[i] = chunk
    out.flush()
    del out
    os.replace(tmp, path)
    return Stored(np.load(path, mmap_mode="r", allow_pickle=False), path, False)


def _load(path: Path, count: int):
    import numpy as np

    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):  # a damaged file is made again
        return None
    return arr if arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[0] == count else None


def hf_reference(
    model_dir: Path, tokens: Tokens, store: Path, model_key: str, tensors: TensorSource | None = None
) -> tuple[Stored, dict]:
    """The Hugging Face model's log-probabilities for the chunks (fp32 on the CPU, streamed part by part
    where the family allows it), and how they were computed, for a manifest. ``tensors``: the weights
    when they are not the folder's files (a merge computed on the fly)."""
    how: dict = {}

    def produce():
        ref = run_reference(model_dir, [list(c) for c in tokens.chunks], tensors)
        how.update(
            {"method": "fp32 on the CPU, streamed part by part"}
            if ref.streamed
            else {"method": "fp32 on the CPU, the whole model", "why": ref.note}
        )
        yield from ref.logprobs

    key = {"model": model_key, "by": "transformers fp32 cpu", "chunks": tokens.chunks}
    got = stored(store, key, produce, len(tokens.chunks))
    if got.reused:
        how = {"method": "read from an earlier run's reference file"}
    return got, {**how, "file": got.path.name}


def model_key(entry: dict) -> str:
    """A model's identity for a reference key: its input entry (``describe_input``) without its path."""
    return canonical_sha256({k: v for k, v in entry.items() if k != "path"})
