"""The validation reference streamed part by part equals the whole model loaded at once, and never holds it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from upload_common.reference import FP32_BYTES, run_reference, whole_model
from upload_common.sample import make_base
from upload_common.st_io import INDEX_NAME, model_specs

IDS = list(range(3, 67))
TOLERANCE = 1e-5


def assert_matches_whole(folder, ids=IDS):
    """Streams the model in ``folder`` and checks it against the whole-model load; the streamed result."""
    got = run_reference(folder, ids)
    want = whole_model(folder, ids, "")
    assert got.streamed, got.note
    assert got.logprobs.dtype == np.float64 and got.logprobs.shape == want.logprobs.shape == (len(ids), 384)
    assert float(np.abs(got.logprobs - want.logprobs).max()) <= TOLERANCE
    assert got.model_weight_bytes == want.model_weight_bytes
    return got


@pytest.mark.parametrize(
    "family, dtype, tie",
    [
        ("llama", "float32", False),
        ("llama", "bfloat16", True),
        ("llama", "float16", False),
        ("qwen2", "bfloat16", False),
        ("qwen2", "float32", True),
        ("mistral", "bfloat16", False),
    ],
)
def test_streamed_equals_whole_model(tmp_path, family, dtype, tie):
    folder = make_base(tmp_path / "m", family, dtype=dtype, tie=tie, layers=3)
    assert_matches_whole(folder)


@pytest.mark.parametrize("family", ["qwen3", "phi3", "olmo2"])
def test_other_families_stream(tmp_path, family):
    import transformers as tf

    cls = {"qwen3": tf.Qwen3Config, "phi3": tf.Phi3Config, "olmo2": tf.Olmo2Config}[family]
    config = cls(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "m")
    assert_matches_whole(tmp_path / "m")


def test_sharded_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    single = make_base(tmp_path / "single", "llama", dtype="bfloat16", layers=3)
    AutoModelForCausalLM.from_pretrained(single, dtype=torch.bfloat16).save_pretrained(
        tmp_path / "sharded", max_shard_size="100KB"
    )
    index = json.loads((tmp_path / "sharded" / INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 2
    got = assert_matches_whole(tmp_path / "sharded")
    assert np.array_equal(got.logprobs, run_reference(single, IDS).logprobs)


def test_never_holds_more_than_one_part(tmp_path):
    """The most weight bytes held at once is the largest part (one decoder layer or the embedding), far below
    the whole model: 8 layers, each bigger than the embedding."""
    folder = make_base(tmp_path / "m", "llama", dtype="bfloat16", layers=8, hidden=64, intermediate=256)
    specs = model_specs(folder)

    def part_bytes(prefix):
        return sum(math.prod(s["shape"]) for n, s in specs.items() if n.startswith(prefix)) * FP32_BYTES

    parts = [part_bytes(f"model.layers.{i}.") for i in range(8)]
    parts += [part_bytes(p) for p in ("model.embed_tokens.", "model.norm.", "lm_head.")]
    got = assert_matches_whole(folder)
    assert got.model_weight_bytes == sum(parts)
    assert got.peak_weight_bytes == max(parts) == part_bytes("model.layers.0.")
    assert got.peak_weight_bytes < got.model_weight_bytes / 6


def test_unstreamable_family_falls_back_and_says_so(tmp_path):
    folder = make_base(tmp_path / "m", "gpt2", layers=2)
    got = run_reference(folder, IDS)
    assert not got.streamed
    assert "gpt2" in got.note
    assert got.peak_weight_bytes == got.model_weight_bytes
    assert np.array_equal(got.logprobs, whole_model(folder, IDS, "").logprobs)


def test_checkpoint_missing_a_tensor_falls_back(tmp_path):
    """A checkpoint that lacks a weight (from_pretrained would initialise it) is not streamed."""
    from safetensors.torch import load_file, save_file

    folder = make_base(tmp_path / "m", "llama", layers=2)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    got = run_reference(folder, IDS)
    assert not got.streamed
    assert "model.layers.1.mlp.up_proj.weight" in got.note


def test_chunks_run_as_one_batch(llama_base):
    """Several chunks of one length run as a batch (the validation's chunks): per chunk, float32 log-probs
    equal to the whole model's batch and to each chunk run alone."""
    chunks = [IDS[:32], IDS[32:]]
    got = run_reference(llama_base, chunks)
    want = whole_model(llama_base, chunks, "")
    assert got.streamed and got.logprobs.dtype == np.float32 and got.logprobs.shape == (2, 32, 384)
    assert float(np.abs(got.logprobs - want.logprobs).max()) <= TOLERANCE
    alone = run_reference(llama_base, chunks[1]).logprobs
    assert float(np.abs(got.logprobs[1] - alone).max()) <= TOLERANCE
