"""A merge deferred into gguf-tool: merge-tool --defer-weights writes the merge's recipe instead of its
weights, and gguf-tool computes the merged tensors while llama.cpp's converter reads them. The GGUF
files are those made from the written merge, tensor for tensor and key for key."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gguf_tool.core import run as gguf_run
from merge_tool.core import run as merge_run
from upload_common.errors import InvalidInput, UsageError
from upload_common.merge_stream import RECIPE_NAME, MergedTensors, MergeRecipe
from upload_common.sample import make_base, make_trainer_output


@pytest.fixture(scope="module")
def merges(tmp_path_factory, tokenizer_dir):
    """A bf16 base with k-quant shapes, a trainer output over it, its merge written and its merge deferred."""
    root = tmp_path_factory.mktemp("deferred")
    base = make_base(
        root / "base", "llama", dtype="bfloat16", hidden=256, intermediate=512, tokenizer_dir=tokenizer_dir
    )
    trainer = make_trainer_output(root / "run", base, tokenizer_dir=tokenizer_dir, lora_scale=0.5)
    merge_run(trainer, root / "merged", base=str(base), device="cpu", max_shard_size="1MB")
    merge_run(trainer, root / "deferred", base=str(base), device="cpu", max_shard_size="1MB", defer_weights=True)
    return {"root": root, "base": base, "trainer": trainer, "merged": root / "merged", "deferred": root / "deferred"}


def test_deferred_folder_holds_the_recipe_not_the_weights(merges):
    import torch
    from safetensors.torch import load_file

    deferred, merged = merges["deferred"], merges["merged"]
    manifest = json.loads((deferred / "manifest.json").read_text())
    assert manifest["decisions"]["weights"]["deferred"] is True and manifest["parameters"]["defer_weights"] is True
    assert not list(deferred.glob("*.safetensors*")) and (deferred / RECIPE_NAME).is_file()
    assert {o["path"] for o in manifest["outputs"]} == {p.name for p in deferred.iterdir()} - {"manifest.json"}
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        assert (deferred / name).read_bytes() == (merged / name).read_bytes(), name
    assert "defer_weights" not in json.loads((merged / "manifest.json").read_text())["parameters"]
    # the recipe computes exactly the tensors merge-tool wrote
    computed = MergedTensors.from_folders(MergeRecipe.read(deferred), merges["base"], merges["trainer"])
    written = {k: v for f in sorted(merged.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert set(written) == set(computed.recipe.out_specs) and len(list(merged.glob("*.safetensors"))) > 1
    for name, tensor in written.items():
        assert torch.equal(computed.tensor(name), tensor), name


def test_deferred_folder_is_never_published_and_needs_its_inputs(merges, tmp_path):
    from docs_tool.sets import identify

    with pytest.raises(InvalidInput, match="defer-weights"):
        identify(merges["deferred"])
    with pytest.raises(UsageError, match="--adapter"):
        gguf_run(merges["deferred"], tmp_path / "out", quants=["Q8_0"], validate=False)
    with pytest.raises(InvalidInput, match="the base model the merge was planned with"):  # not the recipe's base
        other = make_base(tmp_path / "other", "llama", hidden=64, intermediate=128)
        gguf_run(merges["deferred"], tmp_path / "out", quants=["Q8_0"], base=other, adapter=merges["trainer"])
    result = CliRunner().invoke(
        __import__("merge_tool.cli", fromlist=["main"]).main,
        ["--adapter", str(merges["trainer"]), "--out", str(tmp_path / "l"), "--method", "lora", "--defer-weights"],
    )
    assert result.exit_code == 2 and "--defer-weights" in result.output


def _gguf_content(path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> (type, shape, bytes)) of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {k: [bytes(f.parts[i]) for i in f.data] for k, f in reader.fields.items()}
    tensors = {t.name: (t.tensor_type.name, list(t.shape), bytes(t.data)) for t in reader.tensors}
    return fields, tensors


def test_gguf_from_base_and_adapter_equals_gguf_from_the_written_merge(merges):
    root = merges["root"]
    opts = dict(quants=["BF16", "Q4_K_M"], name="Tiny", validate_tokens=48, min_top1={"BF16": 0.0})
    written = gguf_run(merges["merged"], root / "gguf-merged", **opts)
    deferred = gguf_run(
        merges["deferred"], root / "gguf-deferred", base=merges["base"], adapter=merges["trainer"], **opts
    )
    assert set(deferred["inputs"]) == {"model", "merge_adapter", "merge_base"}

    def how(manifest):  # the reference files are named by their model's identity, which differs
        return {k: v for k, v in manifest["decisions"]["reference"].items() if not k.endswith("file")}

    assert how(deferred) == how(written) and "streamed" in how(deferred)["method"]
    for q in ("BF16", "Q4_K_M"):
        assert deferred["files"][q] == written["files"][q]  # the same names and the same validation figures
        a, b = (root / f"gguf-{kind}" / f"Tiny-{q}.gguf" for kind in ("merged", "deferred"))
        fields_a, tensors_a = _gguf_content(a)
        fields_b, tensors_b = _gguf_content(b)
        assert fields_a == fields_b and list(tensors_a) == list(tensors_b)
        for name in tensors_a:
            assert tensors_a[name] == tensors_b[name], f"{q} {name}"
        assert a.read_bytes() == b.read_bytes()


def test_a_gguf_only_run_writes_no_merged_weights_and_publishes_the_same_files(sft_output, tmp_path):
    """``--formats gguf``: merged_16bit is planned deferred and gguf-tool merges while converting; the
    published GGUF files are those of a run that writes (and publishes) the merged model."""
    from driver_helpers import drive

    def publish(name: str, formats: str):
        work, site = tmp_path / name, tmp_path / f"{name}-site"
        args = ["run", sft_output, "--work", work, "--formats", formats, "--quant", "F16", "--name", "tiny"]
        result = drive(*args, "--push", f"local:{site}", "--runtime", "local", "--json")
        assert result.exit_code == 0, result.output
        return work, {p.relative_to(site): p.read_bytes() for p in site.rglob("*.gguf")}

    work, deferred = publish("gguf-only", "gguf")
    assert not list(work.rglob("*.safetensors")) and not list(work.rglob("*.safetensors.index.json"))
    merged = json.loads((work / "artifacts" / "merged_16bit" / "manifest.json").read_text())
    assert merged["decisions"]["weights"]["deferred"] is True
    gguf = json.loads((work / "artifacts" / "gguf" / "manifest.json").read_text())
    assert {"merge_adapter", "merge_base"} <= set(gguf["inputs"])
    _, written = publish("with-merge", "merged_16bit,gguf")
    assert deferred and deferred == written
