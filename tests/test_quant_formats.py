"""merge-tool's quantized formats on a briefly trained tiny Llama: each output loads in transformers
as users load it, its recorded validation matches a comparison made here against the adapter
applied by peft, and bad situations are refused before anything looks finished. How calibration texts are
read is tested in test_quant_calibration.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import no_finished_output, tree_hash

# format -> what its config.json's quantization_config must say, and the module class it loads as
EXPECT = {
    "merged_4bit": ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "Linear4bit"),
    "merged_8bit": ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "Linear8bitLt"),
    # transformers decompresses compressed-tensors checkpoints to plain layers on the CPU
    "gptq": ({"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"]}, "Linear"),
    "awq": ({"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"]}, "Linear"),
    "fp8": ({"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"]}, "Linear"),
    "w8a16": ({"quant_method": "compressed-tensors", "ignore": ["lm_head"]}, "Linear"),
}


@pytest.fixture(scope="session")
def quant_trainer(tmp_path_factory, trained_llama, tokenizer_dir) -> Path:
    from upload_common.sample import make_trainer_output

    return make_trainer_output(
        tmp_path_factory.mktemp("qrun") / "sft_output",
        trained_llama,
        kind="sft",
        tokenizer_dir=tokenizer_dir,
        lora_scale=0.02,
    )


@pytest.fixture(scope="session")
def peft_reference(quant_trainer, trained_llama):
    """(the validation text's chunks, log-probabilities of each) of the base with the adapter applied by
    peft: the ground truth."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from merge_tool.quantized import VALIDATE_TOKENS
    from upload_common.eval_reference import tokenize
    from upload_common.quality import logprobs

    base = AutoModelForCausalLM.from_pretrained(trained_llama, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, quant_trainer).eval()
    chunks = tokenize(trained_llama, None, VALIDATE_TOKENS).chunks  # the merge has the base's shape
    return chunks, [logprobs(model, list(c)) for c in chunks]


@pytest.fixture(scope="session")
def quant_outputs(tmp_path_factory, quant_trainer, trained_llama) -> dict:
    """The merge made once, then each format made from it: one by merge-tool's CLI in its own process, as
    the driver runs it (its stdout must hold the result only, though llm-compressor logs as it is imported),
    the others by the same step in this process, which imports torch and llm-compressor once for all."""
    from merge_tool.core import run as merge
    from merge_tool.from_merged import run as quantize

    root = tmp_path_factory.mktemp("qout")
    merged = root / "merged_16bit"
    merge(quant_trainer, merged, base=str(trained_llama), method="merged_16bit", device="cpu")
    outs = {"merged_16bit": merged}
    cli = "fp8"
    r = subprocess.run(
        [sys.executable, "-m", "merge_tool.cli", "--model", merged, "--out", root / cli, "--method", cli]
        + ["--device", "cpu", "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["parameters"]["method"] == cli  # stdout holds the result only
    for fmt in EXPECT:
        if fmt != cli:
            assert quantize(merged, root / fmt, method=fmt, device="cpu")["parameters"]["method"] == fmt
        outs[fmt] = root / fmt
    return outs


@pytest.fixture()
def merged(quant_outputs) -> Path:
    return quant_outputs["merged_16bit"]


@pytest.mark.parametrize("fmt", list(EXPECT))
def test_quantized_output_loads_and_its_recorded_validation_is_true(fmt, quant_outputs, peft_reference):
    from transformers import AutoModelForCausalLM

    from upload_common.quality import Agreement, logprobs

    out = quant_outputs[fmt]
    manifest = json.loads((out / "manifest.json").read_text())
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    want, cls = EXPECT[fmt]
    assert {k: qconfig.get(k) for k in want} == want
    # made from the merged set, named by its manifest's hash; nothing of a merge inside
    merged_sha = hashlib.sha256((quant_outputs["merged_16bit"] / "manifest.json").read_bytes()).hexdigest()
    assert manifest["inputs"]["model"]["manifest_sha256"] == merged_sha and "adapter" not in manifest["inputs"]
    assert manifest["training"] == json.loads((quant_outputs["merged_16bit"] / "manifest.json").read_text())["training"]
    assert {"tokenizer.model", "tokenizer_config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    listed = {o["path"] for o in manifest["outputs"]}
    assert "model.safetensors" in listed and not any(p.startswith(".merged") for p in listed)

    model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
    assert type(model.model.layers[0].mlp.down_proj).__name__ == cls
    chunks, truth = peft_reference
    agreement = Agreement()
    for chunk, want in zip(chunks, truth, strict=True):
        agreement.add(want, logprobs(model, list(chunk)), chunk)
    mine = agreement.figures()
    recorded = manifest["validation"]
    assert recorded["positions"] == sum(map(len, chunks)) >= 1024 and recorded["text"]["tokens"] == 1024
    assert recorded["perplexity_reference"] == pytest.approx(mine["perplexity_reference"], rel=1e-2)
    # recorded against the 16-bit merge, measured here against peft: the merge is exact, so they agree
    assert abs(recorded["top1_agreement"] - mine["top1_agreement"]) <= 0.03
    assert recorded["mean_kl"] == pytest.approx(mine["mean_kl"], rel=0.5, abs=5e-4)
    assert 0 < recorded["mean_kl"] < 0.05 and recorded["top1_agreement"] >= 0.85
    if fmt in ("merged_8bit", "w8a16"):  # 8 bit must be much closer to the 16-bit model than any 4-bit format
        assert recorded["mean_kl"] < 0.002 and recorded["top1_agreement"] >= 0.9
    assert manifest["quantization"]["method"] and manifest["parameters"]["method"] == fmt


def test_bitsandbytes_without_cpu_support_is_refused_before_any_work(merged, tmp_path, monkeypatch):
    import bitsandbytes.functional as F

    from merge_tool.from_merged import run
    from upload_common.errors import Unsupported

    def no_cpu(*a, **k):  # fault injection: a bitsandbytes build without a CPU backend
        raise RuntimeError("no kernel for CPU")

    monkeypatch.setattr(F, "quantize_4bit", no_cpu)
    before = tree_hash(merged)
    with pytest.raises(Unsupported, match="merged_4bit needs a CUDA GPU here"):
        run(merged, tmp_path / "q", method="merged_4bit", device="cpu")
    assert no_finished_output(tmp_path / "q") and tree_hash(merged) == before


def test_a_result_below_the_bar_fails_and_leaves_nothing_finished(merged, tmp_path, monkeypatch):
    from merge_tool.formats import merged_4bit
    from merge_tool.from_merged import run
    from upload_common.errors import InvalidInput

    monkeypatch.setattr(merged_4bit, "MIN_TOP1", 1.01)
    with pytest.raises(InvalidInput, match="validation failed: the quantized model agrees"):
        run(merged, tmp_path / "q", method="merged_4bit", device="cpu")
    assert no_finished_output(tmp_path / "q")


def test_a_missing_library_names_the_extra_to_install(merged, tmp_path, monkeypatch):
    from merge_tool.from_merged import run
    from upload_common.errors import Unsupported

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(Unsupported, match=r"pip install 'upload-driver\[merge-quant\]'"):
        run(merged, tmp_path / "q", method="merged_4bit", device="cpu")
    assert no_finished_output(tmp_path / "q")


def test_docs_tool_presents_each_quantized_set_through_the_registry(quant_outputs, tmp_path):
    from huggingface_hub import ModelCard

    from docs_tool.core import run as docs_run
    from merge_tool.formats import FORMATS

    docs_run(
        [quant_outputs[f] for f in ["merged_16bit", *EXPECT]], tmp_path / "docs", namespace="alice", name="Tiny-Chat"
    )
    upload = json.loads((tmp_path / "docs" / "upload_manifest.json").read_text())
    for fmt in EXPECT:
        publish = FORMATS[fmt]["publish"]
        entry = upload["sets"][fmt]
        assert entry["repo_id"] == f"alice/Tiny-Chat{publish['suffix']}"
        card = ModelCard.load(tmp_path / "docs" / fmt / "README.md")
        meta = card.data.to_dict()
        # quantized from the merged model published in the same run: that repo is its base
        assert meta["base_model"] == "alice/Tiny-Chat" and meta["base_model_relation"] == "quantized"
        assert meta["library_name"] == publish["library"] and set(publish["tags"]) <= set(meta["tags"])
        manifest = json.loads((quant_outputs[fmt] / "manifest.json").read_text())
        figures = manifest["validation"]
        assert entry["validation"] == {fmt: figures}
        assert "## Quantization" in card.text and f"**{figures['top1_agreement']:.3f}**" in card.text
        assert manifest["quantization"]["library"] in card.text
        for package in publish.get("requires", []):
            assert f"pip install {package}" in card.text
    readme = (tmp_path / "docs" / "README.md").read_text()
    assert "## Validation" in readme and all(f"| {fmt} |" in readme for fmt in EXPECT)


def test_without_the_merged_set_a_quantized_card_names_the_base_as_a_finetune(quant_outputs, tmp_path):
    from huggingface_hub import ModelCard

    from docs_tool.core import run as docs_run

    fmt = next(iter(EXPECT))
    docs_run(
        [quant_outputs[fmt]],
        tmp_path / "docs",
        namespace="alice",
        name="Tiny-Chat",
        base_model="acme-base/Tiny-Llama-3",
    )
    meta = ModelCard.load(tmp_path / "docs" / fmt / "README.md").data.to_dict()
    assert meta["base_model"] == "acme-base/Tiny-Llama-3" and meta["base_model_relation"] == "finetune"


def test_gptq_records_its_scheme_and_calibration_in_config_manifest_and_recipe(quant_outputs):
    out = quant_outputs["gptq"]
    group = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    want = {"num_bits": 4, "type": "int", "symmetric": True, "group_size": 128}
    assert {k: group["weights"][k] for k in want} == want
    assert "GPTQModifier" in (out / "recipe.yaml").read_text()
    q = json.loads((out / "manifest.json").read_text())["quantization"]
    assert q["calibration"] == "built-in text" and q["calibration_samples"] >= 1 and q["group_size"] == 128


def test_gptq_uses_the_calibration_given_and_refuses_a_bad_one(merged, tmp_path):
    from merge_tool.from_merged import run
    from upload_common.errors import InvalidInput

    (tmp_path / "cal.txt").write_text("\n\n".join(["the cat sat on the mat near the door"] * 40))
    m = run(merged, tmp_path / "q", method="gptq", device="cpu", calibration=tmp_path / "cal.txt")
    assert m["quantization"]["calibration"] == str(tmp_path / "cal.txt") and not m["warnings"]
    assert m["inputs"]["calibration"]["sha256"] and m["validation"]["top1_agreement"] >= 0.8
    with pytest.raises(InvalidInput, match="does not exist"):
        run(merged, tmp_path / "bad" / "q", method="gptq", calibration=tmp_path / "nope.txt")
    assert no_finished_output(tmp_path / "bad" / "q")


def test_the_driver_runs_gptq_from_the_registry_with_its_calibration(quant_trainer, trained_llama, tmp_path):
    from click.testing import CliRunner

    from upload_driver.cli import main

    cal = tmp_path / "cal.txt"
    cal.write_text("\n\n".join(["a plain sentence about boats and the sea"] * 30))
    (tmp_path / "upload.toml").write_text(
        f'formats = ["merged_16bit", "gptq"]\nname = "Tiny"\n'
        f'[merge]\nbase = "{trained_llama}"\ncalibration = "cal.txt"\n'
    )
    args = [
        "run",
        str(quant_trainer),
        "--config",
        str(tmp_path / "upload.toml"),
        "--work",
        str(tmp_path / "w"),
        "--push",
        f"local:{tmp_path / 'site'}",
        "--runtime",
        "local",
        "--json",
    ]
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    rows = {r["step"]: r for r in json.loads(result.stdout)["steps"]}
    assert rows["gptq"]["figures"].startswith("top-1 ")
    manifest = json.loads((tmp_path / "w" / "artifacts" / "gptq" / "manifest.json").read_text())
    assert manifest["inputs"]["calibration"]["sha256"] and manifest["quantization"]["calibration"].endswith("cal.txt")
    merged_manifest = (tmp_path / "w" / "artifacts" / "merged_16bit" / "manifest.json").read_bytes()
    assert manifest["inputs"]["model"]["manifest_sha256"] == hashlib.sha256(merged_manifest).hexdigest()
    site = tmp_path / "site" / "Tiny-GPTQ"
    assert (site / "config.json").is_file() and "## Quantization" in (site / "README.md").read_text()
    cal.write_text(cal.read_text() + "\n\none more paragraph about harbours")
    result = CliRunner().invoke(main, args, env=env)
    rows = {r["step"]: r for r in json.loads(result.stdout)["steps"]}
    assert rows["merged_16bit"]["skipped"] and not rows["gptq"]["skipped"]  # the calibration feeds gptq only


def test_awq_smooths_before_quantizing_and_leaves_pinning_as_it_found_it(quant_outputs):
    from llmcompressor.pipelines.cache import IntermediatesCache

    from merge_tool.formats import awq

    recipe = (quant_outputs["awq"] / "recipe.yaml").read_text()
    assert "AWQModifier" in recipe and "QuantizationModifier" in recipe
    group = json.loads((quant_outputs["awq"] / "config.json").read_text())["quantization_config"]["config_groups"]
    assert group["group_0"]["weights"]["symmetric"] is True  # transformers 5.23 loads symmetric ones only
    original = IntermediatesCache.pin_memory
    with awq._no_pinning_without_gpu(False):
        assert IntermediatesCache.pin_memory is not original
    assert IntermediatesCache.pin_memory is original


def test_fp8_stores_float8_weights_and_needs_no_calibration(quant_outputs):
    import torch
    from safetensors import safe_open

    out = quant_outputs["fp8"]
    with safe_open(out / "model.safetensors", "pt") as f:
        w = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    assert w.dtype == torch.float8_e4m3fn
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["scheme"] == "FP8_DYNAMIC" and "calibration" not in manifest["quantization"]
    assert not manifest["warnings"]


def test_hf_push_tool_publishes_a_quantized_set_under_its_registry_name(quant_outputs, tmp_path, hub):
    from click.testing import CliRunner
    from huggingface_hub import HfApi, ModelCard

    from docs_tool.core import run as docs_run
    from hf_push_tool.cli import main as push_main

    sets = ["merged_16bit", "gptq"]
    docs_run([quant_outputs[s] for s in sets], tmp_path / "docs", namespace="alice", name="Tiny-Chat")
    args = [
        "--docs",
        str(tmp_path / "docs"),
        *[a for s in sets for a in ("--artifact", str(quant_outputs[s]))],
        "--out",
        str(tmp_path / "push"),
        "--retry-wait",
        "0.01",
    ]
    result = CliRunner().invoke(push_main, args)
    assert result.exit_code == 0, result.output
    files = set(HfApi().list_repo_files("alice/Tiny-Chat-GPTQ"))
    assert {"config.json", "model.safetensors", "recipe.yaml", "README.md", "tokenizer.model"} <= files
    stored = hub.files("alice/Tiny-Chat-GPTQ")
    assert stored["model.safetensors"] == (quant_outputs["gptq"] / "model.safetensors").read_bytes()
    card = ModelCard(stored["README.md"].decode())
    assert card.data.base_model == "alice/Tiny-Chat" and card.data.base_model_relation == "quantized"


def test_a_quantized_format_is_made_from_the_merged_model_and_says_so(quant_trainer, merged, tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "merge_tool.cli", *args, "--out", str(tmp_path / "o")],
            capture_output=True,
            text=True,
        )

    r = cli("--adapter", str(quant_trainer), "--method", "gptq")
    assert r.returncode == 2 and "make that once (merge-tool --method merged_16bit)" in r.stderr
    assert "Traceback (most recent" not in r.stderr and r.stderr.count("error:") == 1
    r = cli("--model", str(merged), "--method", "lora")
    assert r.returncode == 2 and "lora reads --adapter" in r.stderr
    r = cli("--model", str(quant_trainer), "--method", "fp8")  # a trainer output is not a model folder
    assert r.returncode != 0 and "config.json" in r.stderr and "--model" in r.stderr
    assert no_finished_output(tmp_path / "o")


def test_w8a16_stores_int8_weights_with_16_bit_activations(quant_outputs):
    out = quant_outputs["w8a16"]
    group = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 8 and group["weights"]["type"] == "int" and group["weights"]["symmetric"]
    assert group["input_activations"] is None  # activations stay 16-bit
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["scheme"] == "W8A16" and "calibration" not in manifest["quantization"]
    assert manifest["validation"]["top1_agreement"] >= 0.9 and not manifest["warnings"]


def test_gguf_tool_reads_the_reference_a_quantized_format_made(merged, tmp_path):
    """One reference per run: a quantized format's step and gguf-tool, given the same reference store,
    compute the 16-bit merge's log-probabilities once (the same text, chunks and model identity name it)."""
    from gguf_tool.core import run as gguf
    from merge_tool.from_merged import run as quantize

    cache = tmp_path / "reference"
    fp8 = quantize(merged, tmp_path / "fp8", method="fp8", device="cpu", reference_cache=cache)
    assert fp8["validation"]["reference_method"] == "fp32 on the CPU, streamed part by part"
    assert len(list(cache.glob("*.npy"))) == 1
    made = gguf(merged, tmp_path / "gguf", quants=["Q8_0"], reference_cache=cache)
    assert made["decisions"]["reference"]["method"] == "read from an earlier run's reference file"
    assert made["decisions"]["reference"]["text"] == fp8["validation"]["text"]
    assert len(list(cache.glob("*.npy"))) == 2  # and the 16-bit GGUF's own
