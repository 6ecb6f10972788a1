"""gguf-tool run by hand on a folder that refers to code, and llama.cpp's converter: the environment it runs in
holds no credentials, and neither a probe asking transformers for remote code nor the converter itself runs the
payload planted in the model folder (controls: unprotected, the same scripts run it and read the token). The
tests of merge-tool and of what counts as code are in test_hostile_code.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import no_finished_output, one_line_error, payload, tree_hash
from planted_code import TOKEN, edit_json, gguf_cli, plant_tokenizer
from upload_common.errors import UploadError


def test_gguf_tool_refuses_a_folder_that_refers_to_code(base, tmp_path, llama_base):
    marker = tmp_path / "marker"
    plant_tokenizer(base, marker)
    (base / "modeling_evil.py").write_text(payload(marker))
    edit_json(base / "config.json", auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    before = tree_hash(base)
    out = tmp_path / "gguf"
    one_line_error(
        gguf_cli("--model", base, "--out", out, "--quant", "Q8_0"),
        str(base),
        "custom code",
        "gguf-tool never runs code",
        "merge-tool's output",
    )
    assert no_finished_output(out)
    from upload_common.sample import make_lora_adapter

    adapter = make_lora_adapter(llama_base, tmp_path / "adapter")
    one_line_error(
        gguf_cli(
            "--model", llama_base, "--out", out, "--quant", "Q8_0", "--no-validate", "--lora", adapter, "--base", base
        ),
        "base model folder",
        "gguf-tool never runs code",
    )
    assert no_finished_output(out)
    assert tree_hash(base) == before and not marker.exists()


def test_converter_environment_has_no_credentials(tmp_path):
    from gguf_tool.convert import converter_env

    parent = {
        "HF_TOKEN": TOKEN,
        "HUGGING_FACE_HUB_TOKEN": TOKEN,
        "HF_TOKEN_PATH": "/run/secrets/hf",
        "HF_HOME": "/home/u/.cache/huggingface",
        "HF_OIDC_RESOURCE": "acme/x",
        "GITHUB_TOKEN": "g",
        "AWS_SECRET_ACCESS_KEY": "a",
        "OPENAI_API_KEY": "o",
        "HF_HUB_OFFLINE": "0",
        "PATH": "/usr/bin",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": "/x",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    env = converter_env(parent, tmp_path / "tree", tmp_path / "scratch")
    assert TOKEN not in json.dumps(env)
    for gone in (
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN",
        "HF_OIDC_RESOURCE",
        "GITHUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "OPENAI_API_KEY",
    ):
        assert gone not in env, gone
    assert env["HF_HUB_OFFLINE"] == "1" and not Path(env["HF_TOKEN_PATH"]).exists()
    assert Path(env["HF_TOKEN_PATH"]).is_relative_to(tmp_path / "scratch")
    assert Path(env["HF_HOME"]).is_relative_to(tmp_path / "scratch")
    assert env["PATH"] == "/usr/bin" and env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "tree" / "gguf-py"), "/x"]


PROBE = """\
import json, os, sys
from huggingface_hub import get_token
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
seen = {"HF_TOKEN": os.environ.get("HF_TOKEN"), "get_token": get_token(), "cwd": os.getcwd(), "argv": sys.argv[1:]}
for loader in (AutoConfig, AutoModelForCausalLM, AutoTokenizer):
    try:
        loader.from_pretrained(sys.argv[1], trust_remote_code=True)
        seen[loader.__name__] = "loaded"
    except Exception as exc:
        seen[loader.__name__] = f"{type(exc).__name__}: {exc}"
print("PROBE " + json.dumps(seen))
"""


def test_converter_process_runs_no_remote_code_and_sees_no_token(base, tmp_path, monkeypatch):
    """The process the converter runs in, with a script that asks transformers for remote code the way
    llama.cpp's converter does: nothing runs, no token is visible (not even one saved in HF_HOME)."""
    from gguf_tool import convert

    marker = tmp_path / "marker"
    plant_tokenizer(base, marker, tokenizer_class="EvilTokenizer")
    (base / "modeling_evil.py").write_text(payload(marker))
    edit_json(
        base / "config.json",
        auto_map={"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"},
    )
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "probe.py").write_text(PROBE)
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(TOKEN)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(convert, "converter", lambda: tree)
    lines = []
    convert.run_converter("probe.py", [str(base)], lines.append)
    seen = json.loads(next(line for line in lines if line.startswith("PROBE "))[6:])
    assert seen["HF_TOKEN"] is None and seen["get_token"] is None
    assert Path(seen["cwd"]) == tree and seen["argv"] == [str(base)]
    assert seen["AutoModelForCausalLM"] == "loaded"  # transformers' own Llama class: the model needs no code
    assert not marker.exists(), marker.read_text()

    # control: the same script as an unprotected process runs the payload, which reads the token
    proc = subprocess.run(
        [sys.executable, str(tree / "probe.py"), str(base)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.read_text() == TOKEN


def test_llama_cpp_converter_asking_for_remote_code_runs_none(base, tmp_path, monkeypatch):
    """llama.cpp's own converter, on an architecture whose vocabulary it loads with
    trust_remote_code=True (Qwen's), run the way gguf-tool runs it (the up-front refusal bypassed):
    the payload does not run. Unprotected, the same command runs it and it reads the token."""
    from gguf_tool import convert

    marker = tmp_path / "marker"
    plant_tokenizer(base, marker, tokenizer_class="EvilTokenizer")
    edit_json(base / "config.json", architectures=["QWenLMHeadModel"])
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = [str(base), "--outfile", str(tmp_path / "x.gguf"), "--vocab-only"]
    lines = []
    with contextlib.suppress(UploadError):  # it cannot make this vocabulary without the code: fine, as long as
        convert.run_converter("convert_hf_to_gguf.py", args, lines.append)  # the code did not run
    assert not marker.exists(), "\n".join(lines[-20:])

    proc = subprocess.run(
        [sys.executable, str(convert.converter() / "convert_hf_to_gguf.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert marker.read_text() == TOKEN, proc.stdout[-2000:] + proc.stderr[-2000:]
