"""No code a trainer folder or a base model refers to ever runs, and no token reaches llama.cpp's converter.

Each test plants a payload (Python that writes a marker file, with HF_TOKEN if it can see one) where
transformers or llama.cpp's converter would pick it up through a config's auto_map, then proves the marker
never appears: the tools remove the code reference or refuse in one line, and the output carries no code.
Control runs (the payload loaded the way an unprotected caller would) prove each payload is real. Code that
comes as files (Python beside the weights, pickles, links) is tested in test_hostile_files.py; gguf-tool run by
hand and llama.cpp's converter in test_hostile_code_converter.py (helpers: planted_code.py)."""

from __future__ import annotations

import json

import pytest

from conftest import merge_cli, no_code_in, no_finished_output, one_line_error, payload, tree_hash
from planted_code import LOCAL_REF, TOKEN, edit_json, gguf_cli, plant_tokenizer
from servers.http import LocalServer, RequestHandler
from upload_common import remote_code
from upload_common.errors import InvalidInput

HUB_REF = "acme/evil--tok.EvilTokenizer"


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
