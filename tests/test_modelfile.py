"""docs_tool.modelfile: the Ollama TEMPLATE derived from Jinja chat templates (checked against transformers'
rendering, and with Go's real text/template when ``go`` is installed) and stop tokens. The Modelfile writer and
Ollama's parser are tested in test_modelfile_text.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from chat_templates import (
    AWKWARD,
    CHATML,
    CONVERSATIONS,
    LLAMA2,
    LLAMA32,
    MISTRAL,
    QWEN,
    SYSTEM,
    TRANSLATABLE,
    hf_render,
    ollama_messages,
)
from chat_templates import messages_of as _msgs

from docs_tool.chat_template import derive_parts
from docs_tool.modelfile import modelfile_text, ollama_template
from servers.modelfile import parse_modelfile
from upload_common.sample import CHAT_TEMPLATE as SAMPLE


def _cases():
    for name, (tpl, bos, eos, special, system_ok, _) in TRANSLATABLE.items():
        for conv, gen in CONVERSATIONS.values():
            if conv[0][0] == "system" and not system_ok:
                continue
            yield name, tpl, bos, eos, special, conv, gen


# ------------------------------------------------------------------------------------------------ translation


@pytest.mark.parametrize("name", list(TRANSLATABLE))
def test_translates_and_round_trips(name):
    tpl, bos, eos, special, system_ok, stops = TRANSLATABLE[name]
    r = ollama_template(tpl, bos_token=bos, eos_token=eos, special_tokens=special)
    assert r["template"], r["warnings"]
    assert r["system_supported"] is system_ok
    assert r["stop"][0] == eos and set(stops) <= set(r["stop"])
    assert "" not in r["stop"] and len(r["stop"]) == len(set(r["stop"])) and bos not in r["stop"]
    want = {"user", "multi_turn", "assistant_prefill"} | (
        {"system_user", "system_multi_turn", "system_multi_turn_prefill"} if system_ok else set()
    )
    assert set(r["checked"]) == want
    assert r["bos_stripped"] is ("bos_token" in tpl)
    assert "{{-" not in r["template"] and "-}}" not in r["template"]  # no trim marker eats template text
    parts = derive_parts(tpl, bos_token=bos, eos_token=eos, special_tokens=special)
    assert parts.go_template() == r["template"]  # what the template renders: real Go checks it below
    for _, t, b, e, _, conv, gen in [c for c in _cases() if c[0] == name]:
        assert parts.render(_msgs(conv)) == hf_render(t, conv, gen, b, e)


def test_sample_template_exact():
    r = ollama_template(SAMPLE, bos_token="<s>", eos_token="</s>")
    assert r["template"] == (
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        '{{ if eq .Role "system" }}<|system|>\n{{ .Content }}</s>\n'
        '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}</s>\n{{ if $last }}<|assistant|>\n{{ end }}'
        '{{ else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}{{ if not $last }}</s>\n{{ end }}'
        "{{ end }}{{ end }}"
    )
    assert r["warnings"] == [] and r["bos_stripped"] is False
    assert r["stop"][0] == "</s>"


def test_default_system_prompt_only_without_a_system_message():
    parts = derive_parts(QWEN, bos_token=None, eos_token="<|im_end|>", special_tokens=["<|im_start|>", "<|im_end|>"])
    conv = [("user", "hi")]
    out = parts.render(_msgs(conv))
    assert out.startswith("<|im_start|>system\nYou are Qwen") and out == hf_render(QWEN, conv, True, None, None)
    # a Modelfile SYSTEM replaces the default, as a system message would in transformers
    out = parts.render(ollama_messages(conv, "Be brief."))
    assert out == hf_render(QWEN, [("system", "Be brief."), *conv], True, None, None)
    assert "You are Qwen" not in out


@pytest.mark.parametrize("tpl,why", [(MISTRAL, "folded into a user turn"), (LLAMA2, "opens differently")])
def test_folded_system_prompt_gets_no_template(tpl, why):
    r = ollama_template(tpl, bos_token="<s>", eos_token="</s>", special_tokens=["<s>", "</s>", "[INST]", "[/INST]"])
    assert r["template"] is None and r["checked"] == []
    assert "</s>" in r["stop"] and "<s>" not in r["stop"]
    assert any(why in w and "Ollama will pick one itself" in w for w in r["warnings"])


def test_no_or_broken_template_warns():
    for tpl in (None, "", "   "):
        r = ollama_template(tpl, bos_token="<s>", eos_token="</s>")
        assert r["template"] is None and r["stop"] == ["</s>"] and "no chat template" in r["warnings"][0]
    r = ollama_template("{% for m in messages %}{{ m.content }", bos_token=None, eos_token=None)
    assert r["template"] is None and r["stop"] == [] and "does not compile" in r["warnings"][0]
    r = ollama_template("{{ raise_exception('no chat for you') }}", bos_token=None, eos_token="</s>")
    assert r["template"] is None and "no chat for you" in r["warnings"][0]
    # output that depends on a message's place rather than its role: the round trip catches it
    r = ollama_template(
        "{% for m in messages %}{{ m.content }}{% if loop.index0 == 1 %}!{% endif %}{% endfor %}",
        bos_token=None,
        eos_token=None,
    )
    assert r["template"] is None


def test_named_templates_use_the_default():
    r = ollama_template(
        [{"name": "tool_use", "template": "{{ 1 }}"}, {"name": "default", "template": CHATML}],
        bos_token=None,
        eos_token="<|im_end|>",
    )
    assert r["template"] and "<|im_start|>" in r["template"]


def test_template_that_drops_system_messages():
    tpl = (
        "{% for m in messages %}{% if m.role != 'system' %}<{{ m.role }}>{{ m.content }}</s>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    r = ollama_template(tpl, bos_token=None, eos_token="</s>")
    assert r["template"] and r["system_supported"] is False and "system_user" in r["checked"]


def test_date_and_trim_warnings():
    dated = (
        "{{ '<|system|>Today: ' + strftime_now('%Y-%m-%d') + '</s>' }}{% for m in messages %}"
        "{{ '<|' + m.role + '|>' + m.content | trim + '</s>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    r = ollama_template(dated, bos_token=None, eos_token="</s>")
    assert r["template"]
    assert any("today's date" in w for w in r["warnings"]) and any("trims whitespace" in w for w in r["warnings"])


def test_llama32_always_has_a_system_block():
    r = ollama_template(
        LLAMA32,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        special_tokens=["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    )
    assert len(r["checked"]) == 6 and any("today's date" in w for w in r["warnings"])
    assert r["stop"] == ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    parts = derive_parts(LLAMA32, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    out = parts.render([{"role": "user", "content": "hi"}])
    assert out.startswith("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n")
    assert "\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>" in out


def test_stop_tokens_without_a_special_token_list():
    r = ollama_template(CHATML, bos_token=None, eos_token="<|endoftext|>")
    assert r["stop"] == ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]


# ------------------------------------------------------------------------------------------------ real Go


GO_RENDER = r"""package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Job struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

func main() {
	var jobs []Job
	if err := json.NewDecoder(os.Stdin).Decode(&jobs); err != nil {
		panic(err)
	}
	out := make([]map[string]string, len(jobs))
	for i, j := range jobs {
		// as Ollama parses a model's template (its extra functions are not used by ours)
		t, err := template.New("").Option("missingkey=zero").Parse(j.Template)
		if err != nil {
			out[i] = map[string]string{"error": err.Error()}
			continue
		}
		var sb strings.Builder
		data := map[string]any{"Messages": j.Messages, "System": "", "Prompt": "", "Response": ""}
		if err := t.Execute(&sb, data); err != nil {
			out[i] = map[string]string{"error": err.Error()}
			continue
		}
		out[i] = map[string]string{"text": sb.String()}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """Render many (template, messages) jobs with Go's text/template, in one process."""
    go = shutil.which("go")
    if not go:
        pytest.skip("Go is not installed (apt-get install golang-go): the real text/template check is skipped")
    root = tmp_path_factory.mktemp("gorender")
    (root / "src").mkdir()
    (root / "src" / "go.mod").write_text("module gorender\n\ngo 1.18\n")
    (root / "src" / "main.go").write_text(GO_RENDER)
    env = {
        **os.environ,
        "HOME": str(root),
        "GOPATH": str(root / "gopath"),
        "GOCACHE": str(root / "gocache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "GO111MODULE": "on",
        "CGO_ENABLED": "0",
    }
    build = subprocess.run(
        [go, "build", "-o", str(root / "render"), "."],
        cwd=root / "src",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr

    def render(jobs):
        proc = subprocess.run(
            [str(root / "render")], input=json.dumps(jobs), capture_output=True, text=True, timeout=60, check=True
        )
        return json.loads(proc.stdout)

    return render


@pytest.mark.go
def test_real_go_text_template_renders_like_transformers(go_render):
    jobs, want = [], []
    templates = {
        name: ollama_template(t, bos_token=b, eos_token=e, special_tokens=s)["template"]
        for name, (t, b, e, s, *_) in TRANSLATABLE.items()
    }
    for name, tpl, bos, eos, _, conv, gen in _cases():
        jobs.append({"template": templates[name], "messages": _msgs(conv)})
        want.append((name, conv, hf_render(tpl, conv, gen, bos, eos)))
    # Ollama's SYSTEM reaches the template as a leading system message
    for name in ("sample", "qwen", "llama3", "chatml"):
        tpl, bos, eos = TRANSLATABLE[name][:3]
        conv = [("user", "question"), ("assistant", "answer"), ("user", "again")]
        jobs.append({"template": templates[name], "messages": ollama_messages(conv, SYSTEM)})
        want.append((name, "SYSTEM", hf_render(tpl, [("system", SYSTEM), *conv], True, bos, eos)))
    got = go_render(jobs)
    for (name, conv, expected), res in zip(want, got, strict=True):  # one result per job
        assert res.get("error") is None, (name, res)
        assert res["text"] == expected, (name, conv)


@pytest.mark.go
def test_real_go_agrees_with_the_python_evaluator(go_render):
    """The renderer of the parts, which docs-tool compares with the Jinja rendering, is what Go renders."""
    jobs, mine = [], []
    for t, b, e, s, *_ in TRANSLATABLE.values():
        parts = derive_parts(t, bos_token=b, eos_token=e, special_tokens=s)
        for conv in (
            [],
            [("assistant", "alone")],
            [("user", "u"), ("user", "again")],
            [("tool", "42")],
            [("user", "u"), ("system", "late system")],
            *(c for c, _ in CONVERSATIONS.values()),
        ):
            jobs.append({"template": parts.go_template(), "messages": _msgs(conv)})
            mine.append(parts.render(_msgs(conv)))
    assert [r.get("text") for r in go_render(jobs)] == mine


@pytest.mark.go
def test_modelfile_template_read_back_is_what_go_renders(go_render):
    r = ollama_template(AWKWARD, bos_token=None, eos_token="</s>")
    text = modelfile_text("m.gguf", template=r["template"], stop=r["stop"], system=SYSTEM)
    back = parse_modelfile(text)
    assert back["template"] == r["template"]
    conv = [("user", "u"), ("assistant", "a"), ("user", "v")]
    [res] = go_render([{"template": back["template"], "messages": ollama_messages(conv, back["system"])}])
    assert res["text"] == hf_render(AWKWARD, [("system", SYSTEM), *conv], True, None, "</s>")
