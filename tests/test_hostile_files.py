"""No code that comes as a file in a trainer folder or a base model ever runs or reaches an output.

Python files beside the weights are never copied (and any a format's writer leaves are removed), pickles are
never loaded (a pickle-only adapter is refused in one line), and a symbolic link out of the trainer folder is
refused. Each payload writes a marker file; control runs (torch.load without restrictions) prove it is real."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import merge_cli, no_code_in, no_finished_output, one_line_error, payload, tree_hash

# ------------------------------------------------------------------ Python files beside the weights


def test_python_files_beside_the_weights_are_never_copied(trainer, base, tmp_path):
    marker = tmp_path / "marker"
    for folder in (trainer, trainer / "checkpoint-30", base):
        (folder / "adapter_model.py").write_text(payload(marker))
        (folder / "modeling_llama.py").write_text(payload(marker))
    before = tree_hash(trainer)
    for method in ("lora", "merged_16bit"):
        out = tmp_path / method
        result = merge_cli("--adapter", trainer, "--out", out, "--base", base, "--method", method)
        assert result.exit_code == 0, result.output
        no_code_in(out)
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == sorted(
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "manifest.json",
            *[p.name for p in trainer.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "chat_template"))],
        ]
    )
    assert tree_hash(trainer) == before and not marker.exists()


def test_code_a_writer_leaves_in_an_output_is_removed(tmp_path):
    """The last check before a manifest: whatever a format's writer (a library's save_pretrained) left."""
    from merge_tool.core import _drop_code

    out = tmp_path / "merged_16bit"
    out.mkdir()
    (out / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "auto_map": {"AutoModelForCausalLM": "modeling_x.X"},
            }
        )
    )
    (out / "modeling_x.py").write_text("raise SystemExit\n")
    warnings = []
    _drop_code(out, warnings)
    no_code_in(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert len(warnings) == 2 and "modeling_x.py" in warnings[1]


# ------------------------------------------------------------------ pickles


def evil_pickle(path: Path, marker: Path, tensors: bool) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return exec, (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')",)

    obj = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": Evil()} if tensors else Evil()
    torch.save(obj, path)


def test_pickles_never_run(trainer, base, tmp_path):
    marker = tmp_path / "marker"
    evil_pickle(trainer / "training_args.bin", marker, tensors=False)
    out = tmp_path / "lora"
    result = merge_cli("--adapter", trainer, "--out", out, "--method", "lora")
    assert result.exit_code == 0, result.output
    assert not (out / "training_args.bin").exists() and not marker.exists()

    (trainer / "adapter_model.safetensors").unlink()
    evil_pickle(trainer / "adapter_model.bin", marker, tensors=True)
    before = tree_hash(trainer)
    for extra, needle in (((), "--allow-pickle"), (("--allow-pickle",), "cannot read")):
        out = tmp_path / "refused" / f"out{len(extra)}"
        one_line_error(
            merge_cli("--adapter", trainer, "--out", out, "--base", base, *extra), "adapter_model.bin", needle
        )
        assert no_finished_output(out)
    assert tree_hash(trainer) == before and not marker.exists()

    import torch  # control: an unrestricted load runs it

    torch.load(trainer / "adapter_model.bin", weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------ symbolic links


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_link_out_of_the_trainer_folder_is_refused(trainer, base, tmp_path, target):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    link = trainer / "chat_template.jinja"
    link.unlink(missing_ok=True)
    link.symlink_to(secret if target == "absolute" else Path("..") / secret.name)
    before = tree_hash(trainer)
    out = tmp_path / "merged"
    line = one_line_error(
        merge_cli("--adapter", trainer, "--out", out, "--base", base, "--method", "lora"),
        "chat_template.jinja",
        "outside the trainer folder",
        "replace the link with the file itself",
    )
    assert os.path.realpath(secret) in line
    assert no_finished_output(out) and tree_hash(trainer) == before


def test_link_inside_the_trainer_folder_is_followed(trainer, tmp_path):
    (trainer / "templates").mkdir()
    (trainer / "templates" / "chat.jinja").write_text("{{ messages[0]['content'] }}")
    (trainer / "chat_template.jinja").unlink(missing_ok=True)
    (trainer / "chat_template.jinja").symlink_to(Path("templates") / "chat.jinja")
    out = tmp_path / "lora"
    result = merge_cli("--adapter", trainer, "--out", out, "--method", "lora")
    assert result.exit_code == 0, result.output
    copied = out / "chat_template.jinja"
    assert not copied.is_symlink() and copied.read_text() == "{{ messages[0]['content'] }}"
