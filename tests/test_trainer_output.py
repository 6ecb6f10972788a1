"""inspect_trainer_output: which adapter is chosen, what the training logged, which tokenizer and chat
template go with it, the inputs it refuses or notes, and that nothing is touched (the trainer kind is
tested in test_trainer_kind.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import ADAPTER_BASE as BASE
from conftest import adapter, log_history, state, write_json
from upload_common.errors import InputNotFound, InvalidInput
from upload_common.trainer_output import inspect_trainer_output

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def tokenizer(folder: Path, config: dict | None = None) -> Path:
    write_json(folder / "tokenizer_config.json", config or {"model_max_length": 128})
    write_json(folder / "tokenizer.json", {"version": "1.0", "model": {"type": "BPE"}})
    write_json(folder / "special_tokens_map.json", {"eos_token": "</s>"})
    write_json(folder / "generation_config.json", {"max_new_tokens": 5})
    return folder


def sft_run(root: Path, **state_extra) -> Path:
    """Unsloth/TRL SFT layout: final adapter and tokenizer at the root, three checkpoints, trainer_state."""
    adapter(root)
    tokenizer(root)
    for step in (100, 200, 300):
        adapter(root / f"checkpoint-{step}")
        (root / f"checkpoint-{step}" / "training_args.bin").write_bytes(b"garbage \x00\xff")
    state(root, log_history({"mean_token_accuracy": 0.7}), **state_extra)
    (root / "training_args.bin").write_bytes(b"\x00\x01garbage that would crash pickle.load\xff")
    (root / "runs").mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    adapter(root / ".ipynb_checkpoints")  # hidden folders are ignored
    return root


def snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
    }


def test_sft_run_root_adapter_chosen_and_nothing_written(tmp_path):
    root = sft_run(tmp_path / "run")
    before = snapshot(root)
    found = inspect_trainer_output(root)
    assert snapshot(root) == before
    json.dumps(found)  # JSON-serialisable
    a = found["adapter"]
    assert a["path"] == str(root) and a["source"] == "root" and a["step"] is None
    assert "root" in a["reason"] and "100, 200, 300" in a["reason"]
    assert a["weights"] == "adapter_model.safetensors" and a["weights_format"] == "safetensors"
    assert a["config"]["r"] == 4
    assert found["root"] == str(root)
    assert found["checkpoints"] == [100, 200, 300]
    assert [(c["source"], c["step"]) for c in found["candidates"]] == [
        ("root", None),
        ("checkpoint", 100),
        ("checkpoint", 200),
        ("checkpoint", 300),
    ]
    assert found["base_model"] == BASE
    assert found["trainer"] == {"kind": "sft", "evidence": "trainer_state.json: mean_token_accuracy logged"}
    assert found["tokenizer"]["dir"] == str(root)
    assert found["tokenizer"]["files"] == ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    assert found["tokenizer"]["chat_template"] is None
    assert "training_args.bin present in run/: not read (pickle)" in found["notes"]


def test_training_summary(tmp_path):
    found = inspect_trainer_output(sft_run(tmp_path / "run"))
    t = found["training"]
    assert t["source"] == str(tmp_path / "run" / "trainer_state.json")
    assert (t["global_step"], t["max_steps"], t["epoch"], t["num_train_epochs"], t["train_batch_size"]) == (
        300,
        300,
        1.0,
        1,
        4,
    )
    assert t["best_metric"] is None and t["best_model_checkpoint"] is None
    assert t["loss_history"] == [[100, 2.0], [200, 1.0], [300, 0.667]]
    assert t["eval_loss_history"] == [[200, 1.5]]
    assert t["final_loss"] == 0.667 and t["train_runtime"] == 321.5
    assert t["learning_rate_final"] == pytest.approx(1e-4 / 3)


def test_best_checkpoint_windows_path(tmp_path):
    root = sft_run(tmp_path / "run", best_model_checkpoint="C:\\Users\\me\\outputs\\checkpoint-200\\", best_metric=0.41)
    found = inspect_trainer_output(root)
    assert found["adapter"]["path"] == str(root / "checkpoint-200")
    assert found["adapter"]["source"] == "checkpoint" and found["adapter"]["step"] == 200
    assert "best" in found["adapter"]["reason"] and "checkpoint-200" in found["adapter"]["reason"]
    assert found["training"]["best_metric"] == 0.41
    # the checkpoint has no tokenizer: the root's is used
    assert found["tokenizer"]["dir"] == str(root)
    assert "training_args.bin present in checkpoint-200/: not read (pickle)" in found["notes"]


def test_best_checkpoint_missing_here_falls_back_to_root(tmp_path):
    root = sft_run(tmp_path / "run", best_model_checkpoint="/remote/outputs/checkpoint-999")
    found = inspect_trainer_output(root)
    assert found["adapter"]["source"] == "root"
    assert any("checkpoint-999" in n and "ignored" in n for n in found["notes"])


def test_best_checkpoint_read_from_latest_checkpoint_state(tmp_path):
    root = tmp_path / "run"
    for step in (100, 200):
        adapter(root / f"checkpoint-{step}")
    state(root / "checkpoint-200", best_model_checkpoint="outputs/checkpoint-100")
    found = inspect_trainer_output(root)
    assert found["adapter"]["step"] == 100
    assert found["training"]["source"] == str(root / "checkpoint-200" / "trainer_state.json")
    assert "trainer_state.json taken from checkpoint-200/ (none at the root)" in found["notes"]


def test_final_model_subfolder(tmp_path):
    root = tmp_path / "run"
    for name in ("zz_other", "lora_model", "final_model"):
        adapter(root / name)
    adapter(root / "checkpoint-50")
    tokenizer(root / "final_model")
    found = inspect_trainer_output(root)
    a = found["adapter"]
    assert a["path"] == str(root / "final_model") and a["source"] == "subfolder" and a["step"] is None
    assert "final_model/" in a["reason"] and "lora_model/, zz_other/" in a["reason"]
    assert found["tokenizer"]["dir"] == str(root / "final_model")
    assert found["training"] is None and found["trainer"]["kind"] == "unknown"


def test_single_unknown_subfolder_name(tmp_path):
    adapter(tmp_path / "run" / "my_adapter")
    found = inspect_trainer_output(tmp_path / "run")
    assert found["adapter"]["path"] == str(tmp_path / "run" / "my_adapter")
    assert "other" not in found["adapter"]["reason"]
    assert found["checkpoints"] == [] and found["tokenizer"] == {"dir": None, "files": [], "chat_template": None}


def test_only_checkpoints_picks_highest(tmp_path):
    root = tmp_path / "run"
    for step in (5, 40, 300):  # numeric, not alphabetical
        adapter(root / f"checkpoint-{step}")
    state(root / "checkpoint-300")
    found = inspect_trainer_output(root)
    assert found["adapter"]["step"] == 300 and "latest checkpoint" in found["adapter"]["reason"]
    assert found["checkpoints"] == [5, 40, 300]
    assert found["training"]["source"].endswith("checkpoint-300/trainer_state.json")


def test_checkpoint_folder_passed_directly(tmp_path):
    ck = adapter(tmp_path / "run" / "checkpoint-70")
    found = inspect_trainer_output(ck)
    assert found["adapter"]["source"] == "root" and found["adapter"]["step"] == 70


def test_explicit_checkpoint(tmp_path):
    root = sft_run(tmp_path / "run", best_model_checkpoint="/x/checkpoint-300")
    found = inspect_trainer_output(root, checkpoint=100)
    assert found["adapter"]["path"] == str(root / "checkpoint-100")
    assert found["adapter"]["reason"] == "checkpoint-100 chosen explicitly"
    assert found["training"]["source"] == str(root / "trainer_state.json")


def test_missing_explicit_checkpoint(tmp_path):
    root = sft_run(tmp_path / "run")
    with pytest.raises(InputNotFound) as e:
        inspect_trainer_output(root, checkpoint=250)
    assert "checkpoint-250" in e.value.message and "100, 200, 300" in e.value.message
    assert "\n" not in e.value.message and e.value.fields["available"] == [100, 200, 300]
    with pytest.raises(InputNotFound, match="none"):
        inspect_trainer_output(adapter(tmp_path / "plain"), checkpoint=1)


def test_chat_template_from_jinja(tmp_path):
    root = tokenizer(adapter(tmp_path / "run"), {"chat_template": "from tokenizer_config"})
    (root / "chat_template.jinja").write_text(TEMPLATE)
    write_json(root / "chat_template.json", {"chat_template": "from chat_template.json"})
    tok = inspect_trainer_output(root)["tokenizer"]
    assert tok["chat_template"] == TEMPLATE
    assert "chat_template.jinja" in tok["files"] and "generation_config.json" not in tok["files"]


def test_chat_template_from_json(tmp_path):
    root = tokenizer(adapter(tmp_path / "run"), {"chat_template": "from tokenizer_config"})
    write_json(root / "chat_template.json", {"chat_template": TEMPLATE})
    assert inspect_trainer_output(root)["tokenizer"]["chat_template"] == TEMPLATE


@pytest.mark.parametrize(
    "value, expected",
    [
        (TEMPLATE, TEMPLATE),
        ([{"name": "tool_use", "template": "tools"}, {"name": "default", "template": TEMPLATE}], TEMPLATE),
        ([{"name": "tool_use", "template": "tools"}], None),
        (None, None),
    ],
)
def test_chat_template_from_tokenizer_config(tmp_path, value, expected):
    root = tokenizer(adapter(tmp_path / "run"), {"model_max_length": 8, "chat_template": value})
    assert inspect_trainer_output(root)["tokenizer"]["chat_template"] == expected


def test_bad_tokenizer_config_is_noted(tmp_path):
    root = tokenizer(adapter(tmp_path / "run"))
    (root / "tokenizer_config.json").write_text("{oops")
    found = inspect_trainer_output(root)
    assert found["tokenizer"]["chat_template"] is None
    assert any("tokenizer_config.json" in n for n in found["notes"])


def test_tokenizer_in_checkpoint_preferred_over_root(tmp_path):
    root = sft_run(tmp_path / "run")
    tokenizer(root / "checkpoint-200", {"chat_template": TEMPLATE})
    tok = inspect_trainer_output(root, checkpoint=200)["tokenizer"]
    assert tok["dir"] == str(root / "checkpoint-200") and tok["chat_template"] == TEMPLATE


def test_pickle_only_adapter(tmp_path):
    root = adapter(tmp_path / "run", weights="bin")
    before = snapshot(root)
    found = inspect_trainer_output(root)
    assert found["adapter"]["weights"] == "adapter_model.bin" and found["adapter"]["weights_format"] == "pickle"
    assert any("pickle" in n for n in found["notes"])
    assert snapshot(root) == before


def test_no_adapter(tmp_path):
    root = tmp_path / "run"
    (root / "checkpoint-10").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"x")
    with pytest.raises(InputNotFound) as e:
        inspect_trainer_output(root)
    msg = e.value.message
    assert "adapter_config.json" in msg and "root" in msg and "subfolders" in msg and "checkpoint-N" in msg
    assert "pass the folder" in msg and "\n" not in msg


def test_no_adapter_hints_at_deeper_ones(tmp_path):
    adapter(tmp_path / "project" / "outputs" / "checkpoint-60")
    with pytest.raises(InputNotFound, match=r"adapters found deeper: outputs/checkpoint-60"):
        inspect_trainer_output(tmp_path / "project")


def test_missing_path_and_file_path(tmp_path):
    with pytest.raises(InputNotFound, match="does not exist"):
        inspect_trainer_output(tmp_path / "nope")
    f = tmp_path / "adapter_model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(InvalidInput, match="is a file"):
        inspect_trainer_output(f)


def test_config_without_weights(tmp_path):
    root = adapter(tmp_path / "run", weights=None)
    with pytest.raises(InvalidInput, match="^config without weights: ") as e:
        inspect_trainer_output(root)
    assert "\n" not in e.value.message


def test_broken_other_checkpoint_is_only_noted(tmp_path):
    root = adapter(tmp_path / "run")
    adapter(root / "checkpoint-10", weights=None)
    found = inspect_trainer_output(root)
    assert found["checkpoints"] == [10]
    assert "checkpoint-10/ has adapter_config.json but no weights" in found["notes"]
    with pytest.raises(InvalidInput, match="config without weights"):
        inspect_trainer_output(root, checkpoint=10)


@pytest.mark.parametrize("content", ["{bad json", "[1, 2]"])
def test_bad_adapter_config(tmp_path, content):
    root = adapter(tmp_path / "run")
    (root / "adapter_config.json").write_text(content)
    with pytest.raises(InvalidInput) as e:
        inspect_trainer_output(root)
    assert "adapter_config.json" in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize(
    "data", [b"", b"\x05\x00", (1000).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"{x"]
)
def test_corrupt_safetensors(tmp_path, data):
    root = adapter(tmp_path / "run")
    (root / "adapter_model.safetensors").write_bytes(data)
    with pytest.raises(InvalidInput, match="not a readable safetensors file"):
        inspect_trainer_output(root)


def test_bad_trainer_state_is_noted(tmp_path):
    root = adapter(tmp_path / "run")
    (root / "trainer_state.json").write_text("{truncated")
    found = inspect_trainer_output(root)
    assert found["training"] is None and found["trainer"]["kind"] == "unknown"
    assert any("trainer_state.json" in n and "not valid JSON" in n for n in found["notes"])


def test_training_args_bin_never_read(tmp_path, monkeypatch):
    import builtins
    import io
    import pickle

    real_open, opened = io.open, []

    def spy(file, *a, **k):
        opened.append(Path(file).name if isinstance(file, (str, Path)) else file)
        return real_open(file, *a, **k)

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    root = sft_run(tmp_path / "run")
    monkeypatch.setattr(io, "open", spy)
    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    found = inspect_trainer_output(root, checkpoint=300)
    monkeypatch.undo()
    assert "adapter_config.json" in opened and "trainer_state.json" in opened  # the spy works
    assert "training_args.bin" not in opened
    assert "training_args.bin present in run/: not read (pickle)" in found["notes"]
    assert "training_args.bin present in checkpoint-300/: not read (pickle)" in found["notes"]
