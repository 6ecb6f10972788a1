"""The step contract and the streaming safetensors writer, on their own."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from upload_common import contract
from upload_common.errors import InvalidInput, OutputExists, UploadError
from upload_common.st_io import file_specs, model_specs, nbytes, plan_shards, read_header, write_index, write_stream


def test_stream_writer_reads_back_with_safetensors(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64),
        "d": torch.randn(2, 2).to(torch.float16),
    }
    specs = {
        k: {
            "dtype": {"float32": "F32", "bfloat16": "BF16", "int64": "I64", "float16": "F16"}[str(v.dtype)[6:]],
            "shape": list(v.shape),
        }
        for k, v in tensors.items()
    }
    sha = write_stream(tmp_path / "x.safetensors", list(tensors), specs, tensors.__getitem__)
    back = load_file(tmp_path / "x.safetensors")
    for k, v in tensors.items():
        assert torch.equal(back[k], v)
    assert sha == contract.sha256_file(tmp_path / "x.safetensors")
    assert file_specs(tmp_path / "x.safetensors")["a"]["shape"] == [3, 5]


def test_stream_writer_refuses_unplanned_tensor(tmp_path):
    with pytest.raises(RuntimeError, match="planned"):
        write_stream(tmp_path / "x.safetensors", ["a"], {"a": {"dtype": "F32", "shape": [2]}}, lambda n: torch.zeros(3))


def test_shards_and_index(tmp_path):
    specs = {f"t{i}": {"dtype": "F32", "shape": [256]} for i in range(10)}
    shards = plan_shards(specs, 3000)
    assert len(shards) == 5 and sum(len(v) for v in shards.values()) == 10
    for fname, names in shards.items():
        write_stream(tmp_path / fname, names, specs, lambda n: torch.ones(256))
    write_index(tmp_path, shards, specs)
    found = model_specs(tmp_path)
    assert set(found) == set(specs) and sum(nbytes(s) for s in found.values()) == 10 * 1024
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost"] = next(iter(shards))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match="ghost"):
        model_specs(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="index"):
        model_specs(tmp_path)


def test_model_folder_errors(tmp_path):
    from upload_common.errors import InputNotFound

    with pytest.raises(InputNotFound):
        model_specs(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="pickle"):
        model_specs(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(InvalidInput, match="not a readable"):
        read_header(tmp_path / "bad.safetensors")


def test_atomic_output_success_and_failure(tmp_path):
    out = tmp_path / "step"
    with contract.atomic_output(out) as partial:
        (partial / "f.txt").write_text("hello")
        m = contract.new_manifest("t", inputs={"x": {"path": "p", "sha256": "0"}}, parameters={"k": 1})
        contract.finish_manifest(m, partial)
    assert contract.read_manifest(out)["outputs"][0]["path"] == "f.txt"
    assert not (tmp_path / "step.partial").exists()
    with pytest.raises(OutputExists), contract.atomic_output(out):
        pass
    with pytest.raises(UploadError), contract.atomic_output(out, overwrite=True) as partial:
        (partial / "half.bin").write_bytes(b"x" * 100)
        raise UploadError("disk on fire", where="test")
    assert contract.read_manifest(out)["outputs"][0]["path"] == "f.txt"  # old output intact
    err = json.loads((tmp_path / "step.partial" / "error.json").read_text())["error"]
    assert err["message"] == "disk on fire" and err["where"] == "test"
    assert [p.name for p in (tmp_path / "step.partial").iterdir()] == ["error.json"]


def test_fingerprint_depends_on_inputs_parameters_not_paths():
    a = contract.step_fingerprint("t", "1", {"x": {"path": "/a", "sha256": "1"}}, {"k": 1})
    assert a == contract.step_fingerprint("t", "1", {"x": {"path": "/b", "sha256": "1"}}, {"k": 1})
    assert a != contract.step_fingerprint("t", "1", {"x": {"path": "/a", "sha256": "2"}}, {"k": 1})
    assert a != contract.step_fingerprint("t", "1", {"x": {"path": "/a", "sha256": "1"}}, {"k": 2})
    assert a != contract.step_fingerprint("t", "2", {"x": {"path": "/a", "sha256": "1"}}, {"k": 1})


def test_describe_input_kinds(tmp_path):
    (tmp_path / "f").write_text("x")
    assert "sha256" in contract.describe_input(tmp_path / "f")
    assert "fingerprint" in contract.describe_input(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    assert "manifest_sha256" in contract.describe_input(tmp_path)
    assert contract.read_manifest(tmp_path / "nowhere") is None
    (tmp_path / "manifest.json").write_text("{broken")
    assert contract.read_manifest(tmp_path) is None
