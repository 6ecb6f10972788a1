"""The streamed safetensors writer (check, write and hash in a chain of threads): the same bytes and
sha256 as the one-thread writer it replaced, errors that stop every thread, reading ahead."""

from __future__ import annotations

import hashlib
import json
import struct
import threading

import pytest
import torch
from safetensors.torch import load_file

from upload_common.st_io import (
    CHECK_ELEMENTS,
    NonFiniteTensor,
    data_ranges,
    nonfinite_in,
    plan_shards,
    read_ahead,
    tensor_bytes,
    write_stream,
)

# sha256 of each shard of ``model()`` written by the one-thread writer this one replaced
BEFORE = {
    "model-00001-of-00003.safetensors": "2c47a6f30af9b2cea866d8ad97f3cf3c0e606c8bd4613487cf3752b87827ed96",
    "model-00002-of-00003.safetensors": "1582c4004569b55660e5f10918ce5c9e8a47f5fa6ecf6aa86ece1f6e5f145531",
    "model-00003-of-00003.safetensors": "df13b7ebae03609e926c716f4d580f2fc93302f417fad2d3d39b2ba5b177d670",
}
CODE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}


def model() -> dict[str, torch.Tensor]:
    """Tensors of several dtypes with exact values (no random generator involved), some of them
    larger than one row block."""
    shapes = [(300, 700), (64,), (513, 257), (3, 5, 7), (1000, 300), (9,), (700, 300), (128, 128)]
    dtypes = [torch.bfloat16, torch.float32, torch.float16, torch.int64]
    out = {}
    for n, shape in enumerate(shapes):
        size = torch.Size(shape).numel()
        values = ((torch.arange(size) * (n + 3)) % 251 - 125).reshape(shape)
        dtype = dtypes[n % len(dtypes)]
        out[f"layers.{n}.weight"] = values.to(dtype) if dtype == torch.int64 else (values / 64).to(dtype)
    return out


def in_blocks(tensors: dict, rows: int = 100):
    def produce(name):
        t = tensors[name]
        if t.dim() < 2:
            return t
        return (t[a : a + rows] for a in range(0, t.shape[0], rows))

    return produce


def specs_of(tensors: dict) -> dict:
    return {k: {"dtype": CODE[v.dtype], "shape": list(v.shape)} for k, v in tensors.items()}


def expected_bytes(names: list[str], tensors: dict) -> bytes:
    """A safetensors file as the format defines it: header length, JSON header, tensor bytes in order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in names:
        size = tensors[name].numel() * tensors[name].element_size()
        header[name] = {"dtype": CODE[tensors[name].dtype], "shape": list(tensors[name].shape)}
        header[name]["data_offsets"] = [offset, offset + size]
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(tensor_bytes(tensors[n]).tobytes() for n in names)


def test_shards_are_byte_identical_to_the_one_thread_writer(tmp_path):
    tensors = model()
    specs = specs_of(tensors)
    shards = plan_shards(specs, 800_000)
    assert list(shards) == list(BEFORE)
    for fname, names in shards.items():
        sha = write_stream(tmp_path / fname, names, specs, in_blocks(tensors))
        data = (tmp_path / fname).read_bytes()
        assert data == expected_bytes(names, tensors), fname
        assert sha == hashlib.sha256(data).hexdigest() == BEFORE[fname], fname
        back = load_file(tmp_path / fname)
        assert list(back) == sorted(names) and all(torch.equal(back[n], tensors[n]) for n in names)


def test_progress_counts_every_tensor_byte(tmp_path):
    tensors, seen = model(), []
    write_stream(tmp_path / "x.safetensors", list(tensors), specs_of(tensors), in_blocks(tensors), on_bytes=seen.append)
    assert sum(seen) == sum(t.numel() * t.element_size() for t in tensors.values()) and len(seen) > len(tensors)


@pytest.mark.parametrize("where", [0, CHECK_ELEMENTS - 1, CHECK_ELEMENTS, 3 * CHECK_ELEMENTS + 5])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_nonfinite_found_in_any_slice(where, dtype):
    t = torch.ones(3 * CHECK_ELEMENTS + 9, dtype=dtype)
    assert nonfinite_in(tensor_bytes(t), CODE[dtype]) == 0
    t[where] = float("nan")
    t[-1] = -float("inf")
    assert nonfinite_in(tensor_bytes(t), CODE[dtype]) == 2
    assert nonfinite_in(tensor_bytes(t), "I16" if dtype != torch.float32 else "I32") == 0


def test_a_nonfinite_block_is_refused_and_every_thread_ends(tmp_path):
    tensors = model()
    bad = tensors["layers.4.weight"].clone()
    bad[950, 7] = float("inf")  # in the last row block of the tensor
    tensors["layers.4.weight"] = bad
    threads = threading.active_count()
    with pytest.raises(NonFiniteTensor) as info:
        write_stream(tmp_path / "x.safetensors", list(tensors), specs_of(tensors), in_blocks(tensors))
    assert info.value.fields == {"tensor": "layers.4.weight", "nonfinite": 1}
    assert threading.active_count() == threads
    (tmp_path / "whole.safetensors").write_bytes(expected_bytes(list(tensors), tensors))
    bad_block = data_ranges(tmp_path / "whole.safetensors")["layers.4.weight"][0] + 900 * 300 * 2
    assert (tmp_path / "x.safetensors").stat().st_size <= bad_block  # the refused block never reached the file


def test_a_failing_producer_stops_the_threads(tmp_path):
    tensors = model()

    def produce(name):
        if name == "layers.5.weight":
            raise KeyError(name)
        return in_blocks(tensors)(name)

    threads = threading.active_count()
    with pytest.raises(KeyError):
        write_stream(tmp_path / "x.safetensors", list(tensors), specs_of(tensors), produce)
    assert threading.active_count() == threads


def test_read_ahead_asks_for_the_next_tensors_bytes(tmp_path):
    tensors = model()
    names = list(tensors)
    write_stream(tmp_path / "x.safetensors", names, specs_of(tensors), in_blocks(tensors))
    ranges = data_ranges(tmp_path / "x.safetensors")
    data = (tmp_path / "x.safetensors").read_bytes()
    for name in names:
        offset, length = ranges[name]
        assert data[offset : offset + length] == tensor_bytes(tensors[name]).tobytes()
    asked = []
    source = lambda n: None if n == names[2] else (tmp_path / "x.safetensors", n)  # noqa: E731
    ahead = read_ahead(names, source, lambda *call: asked.append(call[1:]))
    for name in names:
        ahead(name)
    assert asked == [(tmp_path / "x.safetensors", *ranges[n]) for n in names[1:] if n != names[2]]
