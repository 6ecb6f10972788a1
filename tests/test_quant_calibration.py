"""merge-tool's calibration texts for the quantized formats: the sources users give (plain text, chat JSONL,
a saved dataset, a folder) read as they write them, chat rendered by the model's own chat template, and the
texts cut into fixed-length token samples. The formats made with them are tested in test_quant_formats.py."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture()
def calibration_sources(tmp_path, tokenizer_dir):
    import datasets

    (tmp_path / "plain.txt").write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
        {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]},
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_dict({"text": ["saved one", "saved two", " "]}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("alpha\n\nbeta\n")
    (tmp_path / "folder" / "b.csv").write_text("text,other\ngamma,1\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "nocol.jsonl").write_text('{"body": "x"}\n')
    return tmp_path


def test_calibration_sources_are_read_as_users_write_them(calibration_sources):
    from merge_tool import calibration
    from upload_common.errors import InvalidInput

    src = calibration_sources
    assert calibration.texts(src / "plain.txt") == ["first paragraph\nstill first", "second paragraph"]
    chat = calibration.texts(src / "chat.jsonl", lambda turns: "|".join(t["content"] for t in turns))
    assert chat == ["hi|hello there", "bye|see you"]
    assert calibration.texts(src / "chat.jsonl")[0] == "user: hi\nassistant: hello there"
    assert calibration.texts(src / "saved") == ["saved one", "saved two"]
    assert calibration.texts(src / "folder") == ["alpha", "beta", "gamma"]
    assert len(calibration.texts(None)) > 5
    for bad, says in (
        ("empty.txt", "is empty"),
        ("nocol.jsonl", "no text, messages or prompt column"),
        ("missing.txt", "does not exist"),
    ):
        with pytest.raises(InvalidInput, match=says):
            calibration.texts(src / bad)


def test_chat_calibration_is_rendered_by_the_models_own_chat_template(calibration_sources, tokenizer_dir):
    from transformers import AutoTokenizer

    from merge_tool import quantized
    from merge_tool.job import Job
    from upload_common.errors import InvalidInput
    from upload_common.trainer_output import chat_template

    tokenizer = {"dir": str(tokenizer_dir), "chat_template": chat_template(tokenizer_dir)}
    params = {"calibration": str(calibration_sources / "chat.jsonl")}
    job = Job(params=params, found={"tokenizer": tokenizer})
    texts = quantized.calibration_plan(job)["texts"]
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    assert texts[0] == AutoTokenizer.from_pretrained(tokenizer_dir).apply_chat_template(turns, tokenize=False)
    assert "hello there" in texts[0] and texts[0] != "user: hi\nassistant: hello there"
    without_template = quantized.calibration_plan(Job(params=params, found={"tokenizer": {}}))
    assert without_template["texts"][0] == "user: hi\nassistant: hello there"
    strict = calibration_sources / "strict-tok"  # a template that refuses, as many do for odd role orders
    shutil.copytree(tokenizer_dir, strict)
    (strict / "chat_template.jinja").write_text("{{ raise_exception('Conversation roles must alternate') }}")
    job = Job(params=params, found={"tokenizer": {"dir": str(strict), "chat_template": chat_template(strict)}})
    with pytest.raises(InvalidInput, match="does not fit the model's chat template .*roles must alternate"):
        quantized.calibration_plan(job)


def test_token_samples_cut_the_stream_into_fixed_length_sequences(tokenizer_dir):
    from transformers import AutoTokenizer

    from merge_tool import calibration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = calibration.texts(None) * 20
    samples = calibration.token_samples(tok, texts, samples=5, seq_len=64)
    assert len(samples) == 5 and all(len(s) == 64 for s in samples)
    assert tok.eos_token_id in sum(samples, [])
    few = calibration.token_samples(tok, ["one short text"], samples=5, seq_len=64)
    assert len(few) == 1 and few[0][-1] == tok.eos_token_id
