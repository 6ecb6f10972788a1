"""docs-tool on a real run's artifacts: cards (metadata and body), upload manifest, loss plot,
Modelfile, local README; bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import BASE_ID, tree_hash
from docs_tool.card import check
from docs_tool.cli import main as docs_main
from docs_tool.core import run
from upload_common.contract import sha256_file


def card_of(docs, s):
    from huggingface_hub import ModelCard

    text = (docs / s / "README.md").read_text()
    return ModelCard(text).data.to_dict(), text


def test_upload_manifest_lists_every_file_with_its_hash(run_docs, run_artifacts):
    upload = json.loads((run_docs / "upload_manifest.json").read_text())
    assert {s: e["repo_id"] for s, e in upload["sets"].items()} == {
        "lora": "alice/Tiny-Chat-lora",
        "merged_16bit": "alice/Tiny-Chat",
        "gguf": "alice/Tiny-Chat-GGUF",
    }
    folders = {"lora": run_artifacts["lora"], "merged_16bit": run_artifacts["merged"], "gguf": run_artifacts["gguf"]}
    for s, entry in upload["sets"].items():
        paths = {f["path_in_repo"] for f in entry["files"]}
        made = {p.name for p in folders[s].iterdir() if p.name != "manifest.json"}
        assert made | {"README.md", "loss.png"} <= paths, s
        assert "manifest.json" not in paths
        for f in entry["files"]:
            local = (run_docs if f["origin"] == "docs" else folders[s]) / f["path"]
            assert local.stat().st_size == f["size"] and sha256_file(local) == f["sha256"], f
        assert entry["source"]["manifest_sha256"] == sha256_file(folders[s] / "manifest.json")
    assert "Modelfile" in {f["path_in_repo"] for f in upload["sets"]["gguf"]["files"]}
    assert upload["total_bytes"] == sum(f["size"] for e in upload["sets"].values() for f in e["files"])


def test_card_metadata_per_set(run_docs):
    lora, _ = card_of(run_docs, "lora")
    assert lora["base_model"] == BASE_ID and lora["base_model_relation"] == "adapter"
    assert lora["library_name"] == "peft" and lora["license"] == "llama3.2"  # from the base model's card
    assert lora["datasets"] == ["acme/chat-data"]  # from the trainer's card
    assert lora["language"] == ["en", "de"] and lora["pipeline_tag"] == "text-generation"
    assert {"sft", "lora", "upload-driver"} <= set(lora["tags"])
    merged, _ = card_of(run_docs, "merged_16bit")
    assert merged["base_model"] == BASE_ID and merged["base_model_relation"] == "finetune"
    assert merged["library_name"] == "transformers"
    gguf, _ = card_of(run_docs, "gguf")
    assert gguf["base_model"] == "alice/Tiny-Chat" and gguf["base_model_relation"] == "quantized"
    assert "gguf" in gguf["tags"] and gguf["license"] == "llama3.2"
    for s in ("lora", "merged_16bit", "gguf"):
        assert check((run_docs / s / "README.md").read_text()) == []


def test_card_body(run_docs, run_artifacts):
    gguf_manifest = json.loads((run_artifacts["gguf"] / "manifest.json").read_text())
    _, text = card_of(run_docs, "gguf")
    for q in ("Q8_0", "Q4_K_M"):
        v = gguf_manifest["files"][q]["validation"]
        assert f"`Tiny-Chat-{q}.gguf` | {q} |" in text
        assert f"{v['top1_agreement']:.3f} | {v['mean_kl']:.5f}" in text
    assert "llama-cli -hf alice/Tiny-Chat-GGUF:Q4_K_M" in text and "ollama create tiny-chat:q4_k_m" in text
    assert "rows not a multiple of 256" in text  # hidden 64: k-quant fallbacks are reported
    upload = json.loads((run_docs / "upload_manifest.json").read_text())
    for s in ("lora", "merged_16bit", "gguf"):
        _, text = card_of(run_docs, s)
        for f in upload["sets"][s]["files"]:
            if f["path_in_repo"] != "README.md":
                assert f["sha256"] in text, (s, f["path_in_repo"])  # provenance
        assert "| Method | SFT" in text and "| Steps | 30 of 30 |" in text and "![Training loss](loss.png)" in text
        assert "Final training loss | 0.8333" in text
    _, lora_text = card_of(run_docs, "lora")
    assert 'AutoPeftModelForCausalLM.from_pretrained("alice/Tiny-Chat-lora")' in lora_text
    assert "r=8, alpha=16" in lora_text and "apply_chat_template" in lora_text
    readme = (run_docs / "README.md").read_text()
    assert "`alice/Tiny-Chat-GGUF`" in readme and "`merged/`" in readme and str(run_artifacts["root"]) not in readme


def test_loss_plot_is_a_real_png(run_docs):
    import matplotlib.image

    png = run_docs / "lora" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 200 and img.shape[1] > 400
    assert (img[..., :3] < 0.5).any()  # something was drawn
    assert sha256_file(png) == sha256_file(run_docs / "gguf" / "loss.png")


def test_modelfile(run_docs):
    from servers.modelfile import parse_modelfile

    text = (run_docs / "gguf" / "Modelfile").read_text()
    fields = parse_modelfile(text)
    assert fields["from"] == "./Tiny-Chat-Q4_K_M.gguf"
    assert "</s>" in fields["parameters"]["stop"]
    assert "<|assistant|>" in fields["template"] and ".Messages" in fields["template"]
    assert "llama3.2" in fields["license"]


def test_same_inputs_same_outputs(run_docs, run_artifacts, tmp_path):
    """A rerun writes byte-identical files: unchanged artifacts are never re-sent."""
    before = {k: tree_hash(run_artifacts[k]) for k in ("lora", "merged", "gguf")}
    again = tmp_path / "docs"
    run([run_artifacts[k] for k in ("lora", "merged", "gguf")], again, namespace="alice", name="Tiny-Chat")
    a = json.loads((run_docs / "upload_manifest.json").read_text())
    b = json.loads((again / "upload_manifest.json").read_text())
    hashes_a, hashes_b = ({s: e["content_sha256"] for s, e in m["sets"].items()} for m in (a, b))
    assert hashes_a == hashes_b
    assert before == {k: tree_hash(run_artifacts[k]) for k in ("lora", "merged", "gguf")}


def test_quantized_without_its_merged_set_is_a_finetune_of_the_base(run_artifacts, tmp_path):
    out = tmp_path / "docs"
    run(
        [run_artifacts["gguf"], run_artifacts["lora"]],
        out,
        namespace="bob",
        repos={"gguf": "bob/tc-gguf"},
        license="apache-2.0",
        datasets=["x/y"],
        languages=["fr"],
    )
    meta, _ = card_of(out, "gguf")
    assert meta["base_model"] == BASE_ID and meta["base_model_relation"] == "finetune"
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["x/y"] and meta["language"] == ["fr"]
    assert json.loads((out / "upload_manifest.json").read_text())["sets"]["gguf"]["repo_id"] == "bob/tc-gguf"


def test_licence_rules(run_artifacts, tmp_path):
    result = CliRunner().invoke(
        docs_main,
        ["--artifact", str(run_artifacts["lora"]), "--out", str(tmp_path / "a"), "--license", "my-own-licence"],
    )
    assert result.exit_code == 2 and "--license-link" in result.output
    out = tmp_path / "b"
    result = CliRunner().invoke(
        docs_main,
        [
            "--artifact",
            str(run_artifacts["lora"]),
            "--out",
            str(out),
            "--license",
            "my-own-licence",
            "--license-link",
            "https://example.org/l",
        ],
    )
    assert result.exit_code == 0, result.output
    meta, _ = card_of(out, "lora")
    assert (meta["license"], meta["license_name"], meta["license_link"]) == (
        "other",
        "my-own-licence",
        "https://example.org/l",
    )


@pytest.mark.parametrize(
    "yaml_text, problem",
    [
        ("base_model: ./models/base\nlibrary_name: peft", "not a Hub model id"),
        ("base_model: a/b\nbase_model_relation: merged\nlibrary_name: peft", "not one of"),
        ("license: apache2\nlibrary_name: peft", "not a Hub licence id"),
        ("license: other\nlibrary_name: peft", "license_name and license_link"),
        ("tags:\n- two words\nlibrary_name: peft", "holds spaces"),
        ("license: mit", "no library_name"),
        ("base_model: [unclosed\n", "does not parse"),
    ],
)
def test_card_rules(yaml_text, problem):
    problems = check(f"---\n{yaml_text}\n---\n\n# x\n")
    assert any(problem in p for p in problems), problems


def test_no_licence_anywhere_is_a_warning(run_artifacts, tmp_path):
    import shutil

    lora = tmp_path / "lora"
    shutil.copytree(run_artifacts["lora"], lora)
    m = json.loads((lora / "manifest.json").read_text())
    m["training"]["card"] = {}
    (lora / "manifest.json").write_text(json.dumps(m))
    manifest = run([lora], tmp_path / "docs")
    assert any("no licence" in w for w in manifest["warnings"])
    meta, _ = card_of(tmp_path / "docs", "lora")
    assert "license" not in meta and meta["base_model"] == BASE_ID


def test_bad_inputs(run_artifacts, tmp_path):
    env_cmd = [sys.executable, "-m", "docs_tool.cli"]
    not_output = tmp_path / "plain"
    not_output.mkdir()
    proc = subprocess.run(
        [*env_cmd, "--artifact", str(not_output), "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert proc.returncode == 1 and "no manifest.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(
        docs_main,
        [
            "--artifact",
            str(run_artifacts["lora"]),
            "--artifact",
            str(run_artifacts["lora"]),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "both lora" in result.output
    result = CliRunner().invoke(
        docs_main, ["--artifact", str(run_artifacts["lora"]), "--out", str(tmp_path / "o"), "--repo", "nope=x/y"]
    )
    assert result.exit_code == 2 and "unknown set" in result.output
    result = CliRunner().invoke(
        docs_main, ["--artifact", str(run_artifacts["gguf"]), "--out", str(tmp_path / "o"), "--ollama-quant", "Q2_K"]
    )
    assert result.exit_code == 2 and "Q4_K_M" in result.output
    assert not list(tmp_path.glob("o/**/manifest.json"))


def test_cli_prints_one_line_per_set(run_artifacts, tmp_path):
    result = CliRunner().invoke(
        docs_main,
        [
            "--artifact",
            str(run_artifacts["merged"]),
            "--out",
            str(tmp_path / "d"),
            "--namespace",
            "carol",
            "--base-model",
            "carol/base",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.split()[:2] == ["merged_16bit", "carol/sft_output_rtx3090"]
    meta, _ = card_of(tmp_path / "d", "merged_16bit")
    assert meta["base_model"] == "carol/base"


def test_licence_from_the_base_config(llama_base, sft_output, tmp_path):
    """A base whose card says nothing (here: no card) but whose config names the licence."""
    import shutil

    from merge_tool.core import run as merge_run

    base = tmp_path / "base"
    shutil.copytree(llama_base, base)
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "license": "mit"}))
    merge_run(sft_output, tmp_path / "merged", base=str(base), method="merged_16bit")
    run([tmp_path / "merged"], tmp_path / "docs", namespace="dan")
    meta, _ = card_of(tmp_path / "docs", "merged_16bit")
    assert meta["license"] == "mit"


def test_gguf_names_its_hub_base_and_never_a_local_path(run_artifacts, tmp_path):
    """gguf-tool's general.base_model.* comes from merge-tool's manifest: a Hub base is named; a local
    folder (even one this process cannot see, as in a container) is not."""
    import shutil

    from gguf import GGUFReader

    from gguf_tool.core import _metadata

    fields = GGUFReader(str(run_artifacts["gguf"] / "Tiny-Chat-Q8_0.gguf")).fields
    name = fields["general.base_model.0.name"]
    assert bytes(name.parts[name.data[0]]).decode() == "Tiny-Llama-3"
    merged = tmp_path / "merged"
    shutil.copytree(run_artifacts["merged"], merged)
    m = json.loads((merged / "manifest.json").read_text())
    m["decisions"]["base"] = {
        "source": "local",
        "repo_id": None,
        "requested": "/work/in/base/base_model",
        "path": "/work/in/base/base_model",
    }
    (merged / "manifest.json").write_text(json.dumps(m))
    assert "general.base_models" not in _metadata(merged, "x")
