"""No code a trainer folder or a base model refers to ever runs, and no token reaches llama.cpp's converter.

Each test plants a payload (Python that writes a marker file, with HF_TOKEN if it can see one) where
transformers or llama.cpp's converter would pick it up through a config's auto_map, then proves the marker
never appears: the tools remove the code reference or refuse in one line, and the output carries no code.
Control runs (the payload loaded the way an unprotected caller would) prove each payload is real. Code that
comes as files (Python beside the weights, pickles, links) is tested in test_hostile_files.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import merge_cli, no_code_in, no_finished_output, one_line_error, payload, tree_hash
from gguf_tool.cli import main as gguf_main
from servers.http import LocalServer, RequestHandler
from upload_common import remote_code
from upload_common.errors import InvalidInput, UploadError

TOKEN = "hf_plantedSecretToken"
LOCAL_REF = "tok.EvilTokenizer"
HUB_REF = "acme/evil--tok.EvilTokenizer"


def edit_json(path: Path, **changes) -> dict:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))
    return data


def plant_tokenizer(folder: Path, marker: Path, ref: str = LOCAL_REF, tokenizer_class: str | None = None) -> dict:
    """tokenizer_config.json naming ``ref`` in auto_map (with tok.py beside it); the class kept unless given."""
    (folder / "tok.py").write_text(payload(marker))
    changes = {"auto_map": {"AutoTokenizer": [ref, None]}}
    if tokenizer_class:
        changes["tokenizer_class"] = tokenizer_class
    return edit_json(folder / "tokenizer_config.json", **changes)


def gguf_cli(*args):
    return CliRunner().invoke(gguf_main, [str(a) for a in args])


class _Recorder(RequestHandler):
    def route(self):
        self.owner.requests.append(f"{self.command} {self.req_path}")
        self.send_json(404, {"error": "nothing here"})

    def apply_fault(self, fault):
        return False


class HubWatch(LocalServer):
    """A Hub endpoint on 127.0.0.1 that records every request it gets: none is expected."""

    def __init__(self):
        super().__init__(_Recorder)
        self.requests: list[str] = []


@pytest.fixture
def hub_watch(monkeypatch):
    with HubWatch() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


# ------------------------------------------------------------------ what counts as code, and the policy


def test_scan_and_sanitize_policy(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizerFast", "auto_map": [LOCAL_REF, HUB_REF]})
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "auto_map": {"AutoConfig": "configuration_x.XConfig"},
                "custom_pipelines": {"text-generation": {"impl": "pipe.EvilPipeline"}},
            }
        )
    )
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "EvilImageProcessor",
                "auto_map": {"AutoImageProcessor": "proc.EvilImageProcessor"},
            }
        )
    )
    (folder / "generation_config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "g.G"}, "top_k": 5}))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"auto_map": "ignored: not a config transformers reads"})
    )
    (folder / "tok.py").write_text("raise SystemExit('never imported')\n")
    found = {f.file: f for f in remote_code.scan(folder)}
    assert set(found) == {"tokenizer_config.json", "config.json", "preprocessor_config.json", "generation_config.json"}
    assert found["tokenizer_config.json"].refs == (
        f"auto_map AutoTokenizer -> {LOCAL_REF}",
        f"auto_map AutoTokenizer -> {HUB_REF}",
    )
    assert found["config.json"].keys == "auto_map/custom_pipelines" and not found["config.json"].needs_code
    assert found["preprocessor_config.json"].needs_code == ("processor class 'EvilImageProcessor'",)
    assert remote_code.python_files(folder) == ["tok.py"]

    # a class transformers ships: the reference goes, everything else stays, and a warning says so
    data = json.loads((folder / "tokenizer_config.json").read_text())
    clean, warning = remote_code.sanitize("tokenizer_config.json", data, folder, "merge-tool")
    assert clean == {"tokenizer_class": "LlamaTokenizerFast"} and "removed" in warning and HUB_REF in warning
    assert "auto_map" in data  # the input object is not changed
    clean, warning = remote_code.sanitize("generation_config.json", {"top_k": 5}, folder, "merge-tool")
    assert clean == {"top_k": 5} and warning is None

    # a class only the code defines: refused, saying what to do
    for name, data, needle in [
        (
            "tokenizer_config.json",
            {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": [HUB_REF, None]}},
            "tokenizer_class 'EvilTokenizer'",
        ),
        ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": [LOCAL_REF, None]}}, "no tokenizer_class"),
        (
            "tokenizer_config.json",
            {"tokenizer_class": "LlamaForCausalLM", "auto_map": [LOCAL_REF, None]},
            "tokenizer_class 'LlamaForCausalLM'",
        ),
        ("config.json", {"model_type": "evil", "auto_map": {"AutoModelForCausalLM": "m.Evil"}}, "model_type 'evil'"),
        (
            "config.json",
            {
                "model_type": "llama",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {"AutoModelForCausalLM": "m.EvilForCausalLM"},
            },
            "architecture 'EvilForCausalLM'",
        ),
    ]:
        with pytest.raises(InvalidInput) as err:
            remote_code.sanitize(name, data, folder, "merge-tool")
        assert needle in err.value.message and "merge-tool never runs code from a model folder" in err.value.message
        assert "\n" not in err.value.message
    # no code reference: nothing to refuse, whatever the class
    assert remote_code.sanitize("tokenizer_config.json", {"tokenizer_class": "Whatever"}, folder, "x")[1] is None
    with pytest.raises(InvalidInput, match="gguf-tool never runs code"):
        remote_code.refuse_code(folder, "gguf-tool")


# ------------------------------------------------------------------ merge-tool, then gguf-tool on its output


@pytest.mark.parametrize("ref", [LOCAL_REF, HUB_REF], ids=["local", "hub"])
def test_tokenizer_code_is_removed_and_gguf_converts(trainer, base, tmp_path, ref, hub_watch, monkeypatch):
    marker = tmp_path / "marker"
    planted = plant_tokenizer(trainer, marker, ref)
    before, base_before = tree_hash(trainer), tree_hash(base)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    from upload_common.trainer_output import inspect_trainer_output

    assert any("custom tokenizer code" in n for n in inspect_trainer_output(trainer)["notes"])

    out = tmp_path / "merged"
    result = merge_cli("--adapter", trainer, "--out", out, "--base", base, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert any("tokenizer_config.json" in w and ref in w and "removed" in w for w in manifest["warnings"])
    written = json.loads((out / "tokenizer_config.json").read_text())
    assert written == {k: v for k, v in planted.items() if k != "auto_map"}
    no_code_in(out)
    assert tree_hash(trainer) == before and tree_hash(base) == base_before

    gguf = tmp_path / "gguf"
    result = gguf_cli("--model", out, "--out", gguf, "--quant", "F16", "--validate-tokens", "16", "--min-top1", "F16=0")
    assert result.exit_code == 0, result.output
    assert (gguf / "merged-F16.gguf").is_file() and (gguf / "manifest.json").is_file()
    # a user who trusts remote code still runs nothing from the published folder
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert not marker.exists()
    assert hub_watch.requests == []


@pytest.mark.parametrize("ref", [LOCAL_REF, HUB_REF], ids=["local", "hub"])
def test_tokenizer_only_code_defines_is_refused(trainer, base, tmp_path, ref, hub_watch):
    marker = tmp_path / "marker"
    plant_tokenizer(trainer, marker, ref, tokenizer_class="EvilTokenizer")
    before = tree_hash(trainer)
    out = tmp_path / "merged"
    for method in ("merged_16bit", "lora"):
        line = one_line_error(
            merge_cli("--adapter", trainer, "--out", out, "--base", base, "--method", method),
            "tokenizer_config.json",
            ref,
            "EvilTokenizer",
            "merge-tool never runs code",
            "PreTrainedTokenizerFast",
        )
        assert "names custom tokenizer code" in line
        assert no_finished_output(out) and not (tmp_path / "merged.partial").exists()  # refused before any work
    assert tree_hash(trainer) == before
    assert not marker.exists() and hub_watch.requests == []


def test_base_config_code_is_dropped(trainer, base, tmp_path):
    marker = tmp_path / "marker"
    (base / "modeling_evil.py").write_text(payload(marker))
    config = edit_json(
        base / "config.json",
        auto_map={"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"},
        custom_pipelines={"text-generation": {"impl": "modeling_evil.EvilPipeline"}},
    )
    (base / "generation_config.json").write_text(
        json.dumps({"auto_map": {"AutoConfig": "modeling_evil.EvilConfig"}, "max_new_tokens": 7})
    )
    before = tree_hash(base)
    out = tmp_path / "merged"
    result = merge_cli("--adapter", trainer, "--out", out, "--base", base, "--json")
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert any(w.startswith("config.json") and "modeling_evil.EvilForCausalLM" in w for w in warnings), warnings
    assert any(w.startswith("generation_config.json") for w in warnings), warnings
    merged = json.loads((out / "config.json").read_text())
    assert merged["model_type"] == config["model_type"] and merged["architectures"] == config["architectures"]
    assert json.loads((out / "generation_config.json").read_text()) == {"max_new_tokens": 7}
    no_code_in(out)
    assert tree_hash(base) == before

    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert type(AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_base_only_its_code_defines_is_refused(trainer, base, tmp_path):
    marker = tmp_path / "marker"
    (base / "modeling_evil.py").write_text(payload(marker))
    edit_json(
        base / "config.json",
        model_type="evil-llama",
        architectures=["EvilForCausalLM"],
        auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"},
    )
    before = tree_hash(base)
    out = tmp_path / "merged"
    one_line_error(
        merge_cli("--adapter", trainer, "--out", out, "--base", base),
        "config.json",
        "custom model code",
        "model_type 'evil-llama'",
        "merge-tool never runs code",
    )
    assert no_finished_output(out) and tree_hash(base) == before and not marker.exists()


# ------------------------------------------------------------------ gguf-tool run by hand; the converter


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
