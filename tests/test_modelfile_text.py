"""docs_tool.modelfile's Modelfile writer: FROM, TEMPLATE, stop PARAMETERs, SYSTEM and LICENSE written so that
Ollama's parser (servers.modelfile) reads each value back as it was (cleaned), or refused; and that parser itself,
checked against what Ollama accepts and rejects."""

from __future__ import annotations

import pytest
from chat_templates import QWEN

from docs_tool.modelfile import clean, modelfile_text, ollama_template
from servers.modelfile import parse_modelfile
from upload_common.errors import InvalidInput, Unsupported


def test_modelfile_round_trip():
    r = ollama_template(QWEN, bos_token=None, eos_token="<|im_end|>", special_tokens=["<|im_start|>", "<|im_end|>"])
    system = 'Answer "briefly".\ndef f():\n    """Docstring""" inside a line\n  ends with quotes: """'
    lic = "Apache-2.0\nhttps://www.apache.org/licenses/LICENSE-2.0"
    text = modelfile_text(
        "model-Q4_K_M.gguf",
        template=r["template"],
        stop=r["stop"],
        system=system,
        license_text=lic,
        parameters={"temperature": 0.7, "num_ctx": 4096, "stop": ["\n\n", '"'], "use_mmap": False},
    )
    assert text.startswith('FROM ./model-Q4_K_M.gguf\nTEMPLATE """') and text.endswith("\n")
    assert text.index("TEMPLATE") < text.index("PARAMETER stop") < text.index("SYSTEM") < text.index("LICENSE")
    assert 'PARAMETER stop "<|im_end|>"\n' in text
    back = parse_modelfile(text)
    assert back["from"] == "./model-Q4_K_M.gguf"
    assert back["template"] == r["template"] and back["system"] == system and back["license"] == lic
    assert back["parameters"] == {
        "stop": ["<|im_end|>", "<|im_start|>", "\n\n", '"'],
        "temperature": 0.7,
        "num_ctx": 4096,
        "use_mmap": False,
    }


def test_modelfile_minimal_and_cleaned():
    text = modelfile_text(
        "my model.gguf", template=None, stop=["</s>", "</s>", ""], system=None, license_text="MIT\u00a0License\u200b"
    )
    assert text == 'FROM ./my model.gguf\nPARAMETER stop "</s>"\nLICENSE """MIT License"""\n'
    assert parse_modelfile(text)["from"] == "./my model.gguf"


def test_modelfile_refusals():
    with pytest.raises(Unsupported, match='ends with """'):
        modelfile_text("m.gguf", template=None, stop=[], system='def f():\n    """Doc."""\n    pass')
    with pytest.raises(Unsupported):
        modelfile_text("m.gguf", template='{{ .Prompt }}"""\n', stop=[])
    for bad in ("/abs/m.gguf", "../m.gguf", "", "a\nb.gguf"):
        with pytest.raises(InvalidInput):
            modelfile_text(bad, template=None, stop=[])
    with pytest.raises(InvalidInput, match="not an Ollama parameter"):
        modelfile_text("m.gguf", template=None, stop=[], parameters={"temprature": 1})
    with pytest.raises(InvalidInput, match="no longer takes"):
        modelfile_text("m.gguf", template=None, stop=[], parameters={"typical_p": 0.9})
    with pytest.raises(InvalidInput):
        modelfile_text("m.gguf", template=None, stop=[], parameters={"temperature": [1, 2], "num_ctx": {"a": 1}})


def test_parse_modelfile_like_ollama():
    text = (
        '# comment\nfrom llama3.2\nPARAMETER temperature 1\nPARAMETER stop <|eot_id|>\nparameter stop "a b"\n'
        "PARAMETER seed 42\nPARAMETER use_mmap t\nPARAMETER mirostat 1\nTEMPLATE {{ .Prompt }}\n"
        'SYSTEM """\n  spaced  \n"""\n'
        'MESSAGE user hi there\nMESSAGE assistant "hello"\nLICENSE one\nLICENSE """two\nlines"""\n'
    )
    mf = parse_modelfile(text)
    assert mf["from"] == "llama3.2" and mf["template"] == "{{ .Prompt }}" and mf["system"] == "\n  spaced  \n"
    assert mf["parameters"] == {"temperature": 1.0, "stop": ["<|eot_id|>", "a b"], "seed": 42, "use_mmap": True}
    assert mf["messages"] == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]
    assert mf["license"] == ["one", "two\nlines"] and mf["deprecated"] == ["mirostat"]
    for bad, msg in (
        ("SYSTEM hi\n", "no FROM"),
        ("FROM x\nBOGUS y\n", "command must be"),
        ("FROM x\nPARAMETER nope 1\n", "unknown parameter"),
        ("FROM x\nPARAMETER seed x\n", "invalid int"),
        ("FROM x\nMESSAGE robot hi\n", "role"),
        ('FROM x\nSYSTEM """open\n', "end of file"),
        ("FROM x\nPARAMETER use_mmap maybe\n", "invalid bool"),
    ):
        with pytest.raises(InvalidInput, match=msg):
            parse_modelfile(bad)


AWKWARD_TEXTS = [
    '"',
    '""',
    '"""',
    '"quoted"',
    '""x',
    " padded ",
    'a\n"',
    'a"\nb',
    'a"""\nb',
    'a """ \n b',
    '"""\n"""',
    "tab\tand\rreturn",
    "x\n\n",
    "\n",
    "",
    "#not a comment",
    "bell\x07 nbsp\u00a0",
    "\u200bzero width",
]


@pytest.mark.parametrize("text", AWKWARD_TEXTS)
def test_written_values_read_back_as_ollama_reads_them(text):
    """Each value is written in a form Ollama's parser reads back as it was (cleaned), or refused."""
    try:
        written = modelfile_text(
            "m.gguf", template=None, stop=[text] if clean(text) == text else [], system=text, license_text=text
        )
    except Unsupported:
        assert any(line.rstrip().endswith('"""') for line in text.split("\n")[:-1]), text  # a line a value cannot hold
        return
    back = parse_modelfile(written)
    assert back["system"] == clean(text) and back["license"] == clean(text)
    assert back["parameters"].get("stop", []) == ([text] if text and clean(text) == text else [])
