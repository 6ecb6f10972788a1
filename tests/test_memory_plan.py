"""The memory the quantized formats will take, said before the run: the formulas from tensor shapes, and
the dry run's lines."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def llama_specs(vocab=128256, hidden=4096, inter=14336, layers=32, kv=1024) -> dict:
    """The tensor shapes of a Llama-3-8B-shaped model (untied output layer)."""
    specs = {"model.embed_tokens.weight": [vocab, hidden], "lm_head.weight": [vocab, hidden]}
    specs["model.norm.weight"] = [hidden]
    parts = {
        "self_attn.q_proj": [hidden, hidden],
        "self_attn.k_proj": [kv, hidden],
        "self_attn.v_proj": [kv, hidden],
        "self_attn.o_proj": [hidden, hidden],
        "mlp.gate_proj": [inter, hidden],
        "mlp.up_proj": [inter, hidden],
        "mlp.down_proj": [hidden, inter],
    }
    for i in range(layers):
        specs |= {f"model.layers.{i}.{p}.weight": s for p, s in parts.items()}
        specs |= {f"model.layers.{i}.{n}.weight": [hidden] for n in ("input_layernorm", "post_attention_layernorm")}
    return {n: {"shape": s, "dtype": "BF16"} for n, s in specs.items()}


def test_shape_of_an_8b_model():
    from upload_driver.memory_plan import Shape

    s = Shape.of(llama_specs())
    assert s.params == 8_030_261_248 and s.merged == 16_060_522_496  # Llama-3-8B's parameter count
    assert s.linear == 32 * 218_103_808 and s.hidden == 4096
    assert s.hessians == 6 * 4096**2 + 14336**2
    assert abs(s.quantized(4.127) - 5.7e9) < 0.1e9  # the size of Llama-3-8B's NF4 checkpoints on the Hub


def test_peaks_by_device():
    """On the CPU, llm-compressor's copies of the model (fitted: over 3x the merge); on the GPU the merge
    sits there and llm-compressor's session keeps it while the quantized model is validated beside it (the
    reference streams on the CPU: no fp32 copy of the merge on the GPU); bitsandbytes holds the quantized
    model, then loads it again to validate it."""
    from upload_driver.memory_plan import MODELS, Shape

    s = Shape.of(llama_specs())
    cpu, gpu = MODELS["gptq"].peak(s, False), MODELS["gptq"].peak(s, True)
    assert cpu.vram == 0 and cpu.ram > 3 * s.merged
    assert gpu.ram < 0.4 * cpu.ram and s.merged < gpu.vram < 1.5 * s.merged
    quantizing, validating = MODELS["merged_4bit"].phases(s, True)
    assert quantizing.vram < 0.5 * s.merged and validating.vram < 0.5 * s.merged
    assert validating.ram < 0.2 * s.merged  # one part of the streamed reference in fp32 (the embedding), not the merge


@pytest.mark.parametrize("size", [0, 1])
def test_the_formulas_give_the_measured_peaks(size):
    """The figures bench/formats.py measured on the CPU, from the bench models' shapes, within 15%."""
    from upload_driver.memory_plan import FITTED, FITTED_BYTES, MODELS, Shape

    hidden = (1024, 2048)[size]
    s = Shape.of(llama_specs(vocab=384, hidden=hidden, inter=2 * hidden, layers=8, kv=hidden // 2))
    assert s.merged == FITTED_BYTES[size]
    for fmt, figures in FITTED.items():
        if figures[size]:
            assert abs(MODELS[fmt].peak(s, False).ram / 2**20 - figures[size]) <= 0.15 * figures[size], fmt


def test_calibration_size_is_merge_tools():
    from merge_tool import calibration
    from upload_driver.memory_plan import CAL_TOKENS

    assert calibration.SAMPLES * calibration.SEQ_LEN == CAL_TOKENS


def test_every_quantized_format_has_a_record():
    from upload_common.sets import SETS
    from upload_driver.memory_plan import MODELS

    quantized = {name for name, row in SETS.items() if "merged_16bit" in row.consumes and row.tool == "merge-tool"}
    assert quantized == set(MODELS)


@pytest.mark.parametrize("as_json", [False, True])
def test_dry_run_prints_the_memory_of_the_quantized_formats(sft_output, tmp_path, as_json):
    from upload_driver.cli import main

    args = ["run", str(sft_output), "--work", str(tmp_path / "w"), "--formats", "gptq,merged_4bit", "--dry-run"]
    args += ["--runtime", "local", "--gpus", "none", *(["--json"] * as_json)]
    out = CliRunner().invoke(main, args, env=NO_DOCKER)
    assert out.exit_code == 0, out.output
    if as_json:
        rows = {m["step"]: m for m in json.loads(out.stdout)["memory"]}
        assert set(rows) == {"gptq", "merged_4bit"}
        assert rows["gptq"]["ram_bytes"] > rows["merged_4bit"]["ram_bytes"] > 0 == rows["gptq"]["vram_bytes"]
        return
    assert "expected memory of the quantized formats" in out.stdout
    assert re.search(r"\n    gptq: ~\d+\.\d GB RAM, no GPU \(llm-compressor holds the whole 16-bit merge", out.stdout)
    assert re.search(r"\n    merged_4bit: ~\d+\.\d GB RAM, no GPU \(bitsandbytes quantizes each weight", out.stdout)


def test_quantized_sizes_are_the_written_ones():
    """The bytes each format wrote in bench/formats.py --hidden 2048 --layers 8 (its output folders), from
    the merge's shapes: the disk plan's figure for these steps."""
    from upload_driver.memory_plan import quantized_bytes

    specs = llama_specs(vocab=384, hidden=2048, inter=4096, layers=8, kv=1024)
    written = {"merged_4bit": 159_384_695, "merged_8bit": 306_019_860, "fp8": 305_754_190, "w8a16": 310_217_086}
    for fmt, size in written.items():
        assert abs(quantized_bytes(fmt, specs) - size) <= 0.03 * size, fmt
    assert quantized_bytes("merged_16bit", specs) is None and quantized_bytes("gptq", None) is None
