"""gguf-tool's validation: the built-in text (long, varied, chat turns in the model's own template) or
the user's, cut into chunks; the Hugging Face reference and the 16-bit GGUF's log-probabilities kept as
content-addressed files a later run reads again; every quant checked against the 16-bit GGUF; the
figures (top-1, mean and p99 KL, perplexities); llama.cpp falling back to the CPU when the GPU load fails."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from gguf_tool.cli import main as gguf_cli
from gguf_tool.core import run
from upload_common.errors import InvalidInput, UsageError
from upload_common.eval_text import CHAT, built_in, chunks, from_file
from upload_common.quality import Agreement, compare


@pytest.fixture(scope="module")
def small(tmp_path_factory, tokenizer_dir):
    from upload_common.sample import make_base

    return make_base(
        tmp_path_factory.mktemp("v") / "m", "llama", hidden=256, intermediate=512, tokenizer_dir=tokenizer_dir
    )


LOOSE = {"F16": 0.0, "Q8_0": 0.0}  # an untrained model: near-ties flip its top-1; the figures are what is checked


def test_built_in_text_is_long_and_renders_chat_with_the_models_template(small):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small)
    text = built_in(tok)
    assert len(tok(text.text).input_ids) >= 1024 and "def closest" in text.text and "1,936.88" in text.text
    assert tok.apply_chat_template(list(CHAT), tokenize=False) in text.text
    tok.chat_template = None  # no template: plain turns
    assert "User: Write a haiku" in built_in(tok).text


def test_chunks_are_equal_and_each_starts_with_bos():
    ids = [1, *range(10, 1010)]
    got = chunks(ids, bos=1, size=300)
    assert len(got) == 4 and {len(c) for c in got} == {251} and all(c[0] == 1 for c in got)
    assert [t for c in got for t in c[1:]] == ids[1:]
    assert chunks(list(range(5, 45)), bos=1, size=16) == [list(range(5 + 13 * i, 18 + 13 * i)) for i in range(3)]


def test_agreement_figures():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 50))
    ref = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = rng.integers(0, 50, size=40)
    same = compare(ref, ref.copy(), ids=ids)
    assert same["top1_agreement"] == 1.0 and same["mean_kl"] == same["p99_kl"] == 0.0
    nll = -ref[np.arange(39), ids[1:]].mean()
    assert same["perplexity"] == same["perplexity_reference"] == pytest.approx(math.exp(nll), rel=1e-5)
    noisy = logits + rng.normal(scale=0.5, size=logits.shape)
    got = noisy - np.log(np.exp(noisy).sum(-1, keepdims=True))
    kl = (np.exp(ref) * (ref - got)).sum(-1)
    whole = compare(ref, got, ids=ids)
    parts = Agreement()  # the same figures gathered chunk by chunk
    parts.add(ref[:25], got[:25], ids[:25])
    parts.add(ref[25:], got[25:], ids[25:])
    assert whole["mean_kl"] == pytest.approx(kl.mean(), rel=1e-3)
    assert whole["p99_kl"] == pytest.approx(np.percentile(kl, 99), rel=1e-3)
    assert whole["mean_kl"] < whole["p99_kl"] <= whole["max_kl"] and whole["top1_agreement"] < 1
    assert parts.figures()["mean_kl"] == whole["mean_kl"] and parts.figures()["positions"] == 40
    assert parts.figures()["perplexity"] != whole["perplexity"]  # one fewer next token per chunk


def test_eval_text_refusals(tmp_path, small):
    with pytest.raises(UsageError, match="no such file"):
        from_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InvalidInput, match="empty"):
        from_file(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(InvalidInput, match="not UTF-8"):
        from_file(tmp_path / "latin1.txt")
    # refused before anything is converted: no output folder, usage exit code for a missing file
    result = CliRunner().invoke(gguf_cli, ["--model", str(small), "--out", str(tmp_path / "o"), "--eval-text", "nope"])
    assert result.exit_code == 2 and "--eval-text" in result.output and not (tmp_path / "o").exists()
    result = CliRunner().invoke(
        gguf_cli, ["--model", str(small), "--out", str(tmp_path / "o"), "--eval-text", str(tmp_path / "latin1.txt")]
    )
    assert result.exit_code == 1 and "not UTF-8" in result.output and not list(tmp_path.glob("o*"))


def test_references_are_kept_and_reused(small, tmp_path):
    """A second run with other types reads both reference files instead of running the models again, and
    the shared type's figures are identical; the user's text is used and named."""
    cache = tmp_path / "cache"
    text = tmp_path / "mine.txt"
    text.write_text("Tide tables list 2 highs and 2 lows a day. " * 60 + "def f(x):\n    return x * 2\n" * 20)
    first = run(small, tmp_path / "a", quants=["Q8_0"], eval_text=text, reference_cache=cache, min_top1=LOOSE)
    ref = first["decisions"]["reference"]
    assert ref["text"]["source"] == "mine.txt" and ref["method"] == "fp32 on the CPU, streamed part by part"
    assert ref["intermediate"]["quant"] == "F16" and ref["intermediate"]["validation"]["against"].startswith("Hugging")
    stored = sorted(p.name for p in cache.iterdir())
    assert stored == sorted([ref["file"], ref["gguf_file"]]) and all(len(n) == 64 + 4 for n in stored)
    second = run(
        small, tmp_path / "b", quants=["Q8_0", "Q4_K_M"], eval_text=text, reference_cache=cache, min_top1=LOOSE
    )
    ref2 = second["decisions"]["reference"]
    assert ref2["method"] == "read from an earlier run's reference file" and ref2["file"] == ref["file"]
    assert ref2["llama_cpp_device"] == "CPU" and sorted(p.name for p in cache.iterdir()) == stored
    assert second["files"]["Q8_0"]["validation"] == first["files"]["Q8_0"]["validation"]
    assert second["files"]["Q4_K_M"]["validation"]["mean_kl"] > first["files"]["Q8_0"]["validation"]["mean_kl"]
    other = run(small, tmp_path / "c", quants=["Q8_0"], reference_cache=cache, min_top1=LOOSE)  # another text
    assert other["decisions"]["reference"]["text"]["source"].startswith("built-in")
    assert len(list(cache.iterdir())) == 4
    assert not list(tmp_path.glob("*/_work")) and not list(cache.glob(".*partial*"))


def test_gpu_load_failure_falls_back_to_the_cpu(small, tmp_path, monkeypatch):
    """Where llama.cpp's build could offload but the GPU load fails, the check runs on the CPU and says so."""
    import llama_cpp

    from gguf_tool import validate as val

    real = llama_cpp.Llama
    tried = []

    def flaky(*args, **kwargs):
        tried.append(kwargs.get("n_gpu_layers"))
        if kwargs.get("n_gpu_layers"):
            raise ValueError("Failed to load model from file: out of device memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(val, "gpu_offload", lambda: True)
    monkeypatch.setattr(llama_cpp, "Llama", flaky)
    manifest = run(small, tmp_path / "o", quants=["F16"], validate_tokens=200, min_top1=LOOSE)
    assert manifest["decisions"]["reference"]["llama_cpp_device"] == "CPU" and -1 in tried and 0 in tried
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["files"]["F16"]["validation"]["positions"] > 100


def test_imatrix_falls_back_to_the_cpu(tmp_path, monkeypatch):
    """With a GPU in sight llama-imatrix is asked to offload every layer; when that run fails it runs again
    on the CPU (the partial matrix removed)."""
    from gguf_tool import quantize as qz

    calls = []

    def fake_run(cmd, what):
        calls.append(cmd[-1])
        (tmp_path / "m.imatrix").write_text("partial")
        if cmd[-1]:
            raise InvalidInput("llama.cpp's llama-imatrix failed (CUDA error: out of memory)")

    gpu = tmp_path / "nvidia0"
    gpu.touch()
    monkeypatch.setattr(qz, "GPU_DEVICES", (str(gpu),))
    monkeypatch.setattr(qz, "run_tool", fake_run)
    assert qz.compute_imatrix("llama-imatrix", "m.gguf", "t.txt", tmp_path / "m.imatrix", nthread=2) == "CPU"
    assert calls == [999, 0]
    gpu.unlink()
    assert qz.compute_imatrix("llama-imatrix", "m.gguf", "t.txt", tmp_path / "m.imatrix", nthread=2) == "CPU"
    assert calls == [999, 0, 0]
