"""The registry of artifact sets (upload_common.sets): its data pinned, the format modules agreeing
with their rows, and the import rule it serves (tools and the driver's plan read it, not each other)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from upload_common.errors import UsageError
from upload_common.sets import SETS, SetSpec, get_set

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("merge_tool", "gguf_tool", "docs_tool", "hf_push_tool")

# The registry's rows as merge-tool and docs-tool have presented them: cards and upload manifests
# are made from these dicts, so they must not change by accident.
FORMATS_BEFORE = {
    "lora": {
        "module": "merge_tool.formats.lora",
        "summary": "the adapter as-is (safetensors), with tokenizer",
        "publish": {
            "suffix": "-lora",
            "relation": "adapter",
            "library": "peft",
            "title": "LoRA adapter",
            "tags": ["lora", "peft"],
        },
    },
    "merged_16bit": {
        "module": "merge_tool.formats.merged_16bit",
        "summary": "the adapter merged into the base, 16-bit safetensors, streamed",
        "publish": {
            "suffix": "",
            "relation": "finetune",
            "library": "transformers",
            "title": "merged 16-bit model",
            "tags": ["merged"],
        },
    },
    "merged_4bit": {
        "module": "merge_tool.formats.merged_4bit",
        "summary": "the merge quantized to 4-bit NF4 by bitsandbytes, loadable by transformers",
        "publish": {
            "suffix": "-bnb-4bit",
            "relation": "quantized",
            "library": "transformers",
            "title": "4-bit (bitsandbytes NF4) model",
            "tags": ["bitsandbytes", "4-bit", "nf4"],
            "requires": ["bitsandbytes"],
        },
    },
    "merged_8bit": {
        "module": "merge_tool.formats.merged_8bit",
        "summary": "the merge quantized to 8 bit (LLM.int8) by bitsandbytes, loadable by transformers",
        "publish": {
            "suffix": "-bnb-8bit",
            "relation": "quantized",
            "library": "transformers",
            "title": "8-bit (bitsandbytes LLM.int8) model",
            "tags": ["bitsandbytes", "8-bit"],
            "requires": ["bitsandbytes"],
        },
    },
    "gptq": {
        "module": "merge_tool.formats.gptq",
        "summary": "the merge quantized to 4 bit by GPTQ (llm-compressor), compressed-tensors for vLLM/transformers",
        "publish": {
            "suffix": "-GPTQ",
            "relation": "quantized",
            "library": "transformers",
            "title": "GPTQ 4-bit model",
            "tags": ["gptq", "4-bit", "compressed-tensors", "llm-compressor"],
            "requires": ["compressed-tensors"],
            "vllm": True,
        },
    },
    "awq": {
        "module": "merge_tool.formats.awq",
        "summary": "the merge quantized to 4 bit after AWQ smoothing (llm-compressor), compressed-tensors",
        "publish": {
            "suffix": "-AWQ",
            "relation": "quantized",
            "library": "transformers",
            "title": "AWQ 4-bit model",
            "tags": ["awq", "4-bit", "compressed-tensors", "llm-compressor"],
            "requires": ["compressed-tensors"],
            "vllm": True,
        },
    },
    "fp8": {
        "module": "merge_tool.formats.fp8",
        "summary": "the merge with FP8 weights and dynamic FP8 activations (llm-compressor), compressed-tensors",
        "publish": {
            "suffix": "-FP8-Dynamic",
            "relation": "quantized",
            "library": "transformers",
            "title": "FP8 model",
            "tags": ["fp8", "compressed-tensors", "llm-compressor"],
            "requires": ["compressed-tensors"],
            "vllm": True,
        },
    },
    "w8a16": {
        "module": "merge_tool.formats.w8a16",
        "summary": "the merge with 8-bit integer weights and 16-bit activations (llm-compressor), compressed-tensors",
        "publish": {
            "suffix": "-W8A16",
            "relation": "quantized",
            "library": "transformers",
            "title": "8-bit (W8A16) model",
            "tags": ["w8a16", "8-bit", "compressed-tensors", "llm-compressor"],
            "requires": ["compressed-tensors"],
            "vllm": True,
        },
    },
}
GGUF_BEFORE = {
    "suffix": "-GGUF",
    "relation": "quantized",
    "library": "gguf",
    "title": "GGUF files",
    "tags": ["gguf", "llama.cpp"],
}


def test_formats_are_the_merge_tool_rows_unchanged():
    from merge_tool.formats import FORMATS

    assert FORMATS == FORMATS_BEFORE
    assert list(FORMATS) == list(FORMATS_BEFORE)
    # key order too: the upload manifest carries these dicts as JSON
    assert [list(row["publish"]) for row in FORMATS.values()] == [list(r["publish"]) for r in FORMATS_BEFORE.values()]


def test_set_specs_are_unchanged():
    from docs_tool.sets import set_specs

    before = {
        **{k: {"tool": "merge-tool", **row["publish"]} for k, row in FORMATS_BEFORE.items()},
        "gguf": {"tool": "gguf-tool", **GGUF_BEFORE},
    }
    specs = set_specs()
    assert specs == before
    assert [(k, list(v)) for k, v in specs.items()] == [(k, list(v)) for k, v in before.items()]


@pytest.mark.parametrize("name", [k for k, s in SETS.items() if s.tool == "merge-tool"])
def test_each_format_module_agrees_with_its_row(name):
    spec = SETS[name]
    from merge_tool.formats import Format, get_format

    module = importlib.import_module(spec.module)
    assert module.__name__ == f"merge_tool.formats.{name}" and get_format(name) is module
    assert isinstance(module, Format)
    assert module.NEEDS_BASE is spec.needs_base
    assert getattr(module, "CALIBRATION", False) is spec.calibration


def test_rows_are_consistent():
    for name, spec in SETS.items():
        assert isinstance(spec, SetSpec) and spec.name == name
        assert spec.tool in ("merge-tool", "gguf-tool")
        assert (spec.module is None) == (spec.tool != "merge-tool")
        assert all(c in SETS and c != name for c in spec.consumes)
        assert isinstance(spec.publish.tags, tuple) and isinstance(spec.publish.requires, tuple)
    assert SETS["gguf"].consumes == ("merged_16bit",) and SETS["gguf"].extra == "gguf"
    with pytest.raises(AttributeError):
        SETS["lora"].needs_base = True  # frozen


def test_extras_exist_in_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {s.extra for s in SETS.values()} <= set(extras)


def test_get_set():
    assert get_set(" GPTQ ") is SETS["gptq"]
    with pytest.raises(UsageError, match="unknown set 'exl2'") as info:
        get_set("exl2")
    assert all(name in str(info.value) for name in SETS)
    assert info.value.exit_code == 2


def test_the_registry_imports_nothing_heavy_and_no_tool():
    code = (
        "import upload_common.sets, sys; print([m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'merge_tool', 'gguf_tool', 'docs_tool', 'hf_push_tool')])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports (absolute imports only; relative ones stay in its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    "path",
    [ROOT / "driver" / "upload_driver" / "plan.py", *sorted((ROOT / "tools" / "docs_tool").glob("*.py"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_plan_and_docs_tool_import_no_other_tool(path):
    own = path.parent.name
    others = {*TOOLS, "upload_driver"} - {own}
    assert not _imported_packages(path) & others


def test_one_merge_serves_every_quantized_format(tmp_path):
    """--formats merged_4bit,gptq,awq,fp8,gguf: the plan makes merged_16bit once (not published), and
    every format made from it reads that one folder as its --model; none reads the adapter or base."""
    from upload_driver.plan import plan
    from upload_driver.request import Request

    made_from_merge = [k for k, s in SETS.items() if s.consumes == ("merged_16bit",)]
    assert {"merged_4bit", "merged_8bit", "gptq", "awq", "fp8", "gguf"} <= set(made_from_merge)
    req = Request(
        formats=made_from_merge,
        work=tmp_path / "w",
        trainer_output=tmp_path,
        quants=["Q8_0"],
        name="m",
        merge={"base": str(tmp_path), "calibration": str(tmp_path / "cal.txt")},
    )
    steps = {s.name: s for s in plan(req, {})}
    merged = tmp_path / "w" / "artifacts" / "merged_16bit"
    assert [s for s in steps if s == "merged_16bit"] == ["merged_16bit"] and steps["merged_16bit"].out == merged
    for name in made_from_merge:
        step = steps[name]
        assert step.inputs["model"] == merged and "adapter" not in step.inputs and "base" not in step.inputs
        assert not step.network and not step.token
        assert ("calibration" in step.inputs) is SETS[name].calibration
    assert "merged_16bit" not in steps["docs"].inputs and set(made_from_merge) <= set(steps["docs"].inputs)
