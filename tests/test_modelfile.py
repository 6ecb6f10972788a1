"""docs_tool.modelfile: the Ollama TEMPLATE derived from Jinja chat templates (checked against transformers'
rendering, and with Go's real text/template when ``go`` is installed), stop tokens, and the Modelfile writer and
parser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from docs_tool.modelfile import (modelfile_text, ollama_template, parse_modelfile, render_go_template)
from upload_common.errors import InvalidInput, Unsupported
from upload_common.sample import CHAT_TEMPLATE as SAMPLE

# Chat templates in the forms their model repos publish them (tool-calling branches left out).
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
          " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Llama 3.1/3.2: the system block is always there (empty without a system message) and carries today's date.
LLAMA32 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
        "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""
MISTRAL_V01 = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
               "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
               "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
               "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
          "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
          "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
          "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
# Literal text Go and the Modelfile must not misread: braces, triple quotes, a tab, a carriage return, a zero-width
# space, and a marker ending with "{" right before the content.
AWKWARD = ("{% for message in messages %}{{ '{{' + message['role'] + '}} \"\"\"\t\r\u200b{' + message['content'] + "
           "'\"\"\"\n' }}{% endfor %}{% if add_generation_prompt %}{{ '{{assistant}} \"\"\"\t\r\u200b{' }}{% endif %}")

TRANSLATABLE = {
    # name: (template, bos, eos, special tokens, system supported, stops that must be there)
    "sample": (SAMPLE, "<s>", "</s>", ["<s>", "</s>"], True, ["</s>"]),
    "chatml": (CHATML, None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], True,
               ["<|im_end|>", "<|im_start|>"]),
    "qwen": (QWEN, None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"], True,
             ["<|im_end|>", "<|im_start|>"]),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>",
               ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"],
               True, ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]),
    "zephyr": (ZEPHYR, "<s>", "</s>", [], True, ["</s>", "<|user|>", "<|assistant|>", "<|system|>"]),
    "phi3": (PHI3, "<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"],
             True, ["<|end|>", "<|endoftext|>"]),
    "gemma": (GEMMA, "<bos>", "<eos>", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], False,
              ["<eos>", "<end_of_turn>", "<start_of_turn>"]),
    "mistral_v0.1": (MISTRAL_V01, "<s>", "</s>", [], False, ["</s>"]),
    "awkward": (AWKWARD, None, "</s>", [], True, ["</s>"]),
}

SYSTEM = 'You are terse.\nNever say "no".'
CONVERSATIONS = {
    "user": ([("user", "What is 2+2?")], True),
    "system_user": ([("system", SYSTEM), ("user", "Hi {{ .System }} there")], True),
    "multi_turn": ([("user", "One"), ("assistant", "Two\nlines"), ("user", 'Three "quoted"')], True),
    "system_multi_turn": ([("system", SYSTEM), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"),
                           ("user", "e")], True),
    "prefill": ([("user", "Write a haiku"), ("assistant", "Autumn moon")], False),
    "system_prefill": ([("system", SYSTEM), ("user", "x"), ("assistant", "y"), ("user", "z"), ("assistant", "w")],
                       False),
}


def _msgs(conv):
    return [{"role": r, "content": c} for r, c in conv]


def hf_render(template: str, conv, gen: bool, bos, eos) -> str:
    """What transformers' apply_chat_template gives (continue_final_message for a conversation ending with the
    assistant), minus the leading BOS that llama.cpp adds itself."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[_msgs(conv)], chat_template=template, add_generation_prompt=gen,
                                        continue_final_message=not gen, bos_token=bos or "", eos_token=eos or "")
    text = rendered[0]
    return text[len(bos):] if bos and text.startswith(bos) else text


def ollama_messages(conv, system: str | None):
    """Ollama's chat handler: the Modelfile's SYSTEM goes first when the conversation has no system message."""
    msgs = _msgs(conv)
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": system}, *msgs]
    return msgs


def _cases():
    for name, (tpl, bos, eos, special, system_ok, _) in TRANSLATABLE.items():
        for cname, (conv, gen) in CONVERSATIONS.items():
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
    want = {"user", "multi_turn", "assistant_prefill"} | ({"system_user", "system_multi_turn",
                                                           "system_multi_turn_prefill"} if system_ok else set())
    assert set(r["checked"]) == want
    assert r["bos_stripped"] is ("bos_token" in tpl)
    assert "{{-" not in r["template"] and "-}}" not in r["template"]  # no trim marker eats template text
    for _, t, b, e, _, conv, gen in [c for c in _cases() if c[0] == name]:
        assert render_go_template(r["template"], _msgs(conv)) == hf_render(t, conv, gen, b, e)


def test_sample_template_exact():
    r = ollama_template(SAMPLE, bos_token="<s>", eos_token="</s>")
    assert r["template"] == (
        '{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}'
        '{{ if eq .Role "system" }}<|system|>\n{{ .Content }}</s>\n'
        '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}</s>\n{{ if $last }}<|assistant|>\n{{ end }}'
        '{{ else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}{{ if not $last }}</s>\n{{ end }}'
        '{{ end }}{{ end }}')
    assert r["warnings"] == [] and r["bos_stripped"] is False
    assert r["stop"][0] == "</s>"


def test_default_system_prompt_only_without_a_system_message():
    r = ollama_template(QWEN, bos_token=None, eos_token="<|im_end|>", special_tokens=["<|im_start|>", "<|im_end|>"])
    conv = [("user", "hi")]
    out = render_go_template(r["template"], _msgs(conv))
    assert out.startswith("<|im_start|>system\nYou are Qwen") and out == hf_render(QWEN, conv, True, None, None)
    # a Modelfile SYSTEM replaces the default, as a system message would in transformers
    out = render_go_template(r["template"], ollama_messages(conv, "Be brief."))
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
    r = ollama_template("{% for m in messages %}{{ m.content }}{% if loop.index0 == 1 %}!{% endif %}{% endfor %}",
                        bos_token=None, eos_token=None)
    assert r["template"] is None


def test_named_templates_use_the_default():
    r = ollama_template([{"name": "tool_use", "template": "{{ 1 }}"}, {"name": "default", "template": CHATML}],
                        bos_token=None, eos_token="<|im_end|>")
    assert r["template"] and "<|im_start|>" in r["template"]


def test_template_that_drops_system_messages():
    tpl = ("{% for m in messages %}{% if m.role != 'system' %}<{{ m.role }}>{{ m.content }}</s>{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}<assistant>{% endif %}")
    r = ollama_template(tpl, bos_token=None, eos_token="</s>")
    assert r["template"] and r["system_supported"] is False and "system_user" in r["checked"]


def test_date_and_trim_warnings():
    dated = ("{{ '<|system|>Today: ' + strftime_now('%Y-%m-%d') + '</s>' }}{% for m in messages %}"
             "{{ '<|' + m.role + '|>' + m.content | trim + '</s>' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    r = ollama_template(dated, bos_token=None, eos_token="</s>")
    assert r["template"]
    assert any("today's date" in w for w in r["warnings"]) and any("trims whitespace" in w for w in r["warnings"])


def test_llama32_always_has_a_system_block():
    r = ollama_template(LLAMA32, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                        special_tokens=["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    assert len(r["checked"]) == 6 and any("today's date" in w for w in r["warnings"])
    assert r["stop"] == ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    out = render_go_template(r["template"], [{"role": "user", "content": "hi"}])
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
    env = {**os.environ, "HOME": str(root), "GOPATH": str(root / "gopath"), "GOCACHE": str(root / "gocache"),
           "GOFLAGS": "", "GOPROXY": "off", "GOTOOLCHAIN": "local", "GO111MODULE": "on", "CGO_ENABLED": "0"}
    build = subprocess.run([go, "build", "-o", str(root / "render"), "."], cwd=root / "src", env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr

    def render(jobs):
        proc = subprocess.run([str(root / "render")], input=json.dumps(jobs), capture_output=True, text=True,
                              timeout=60, check=True)
        return json.loads(proc.stdout)

    return render


def test_real_go_text_template_renders_like_transformers(go_render):
    jobs, want = [], []
    templates = {name: ollama_template(t, bos_token=b, eos_token=e, special_tokens=s)["template"]
                 for name, (t, b, e, s, *_) in TRANSLATABLE.items()}
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
    for (name, conv, expected), res in zip(want, got):
        assert res.get("error") is None, (name, res)
        assert res["text"] == expected, (name, conv)


def test_real_go_agrees_with_the_python_evaluator(go_render):
    jobs, mine = [], []
    for name, (t, b, e, s, *_) in TRANSLATABLE.items():
        tpl = ollama_template(t, bos_token=b, eos_token=e, special_tokens=s)["template"]
        for conv in ([], [("assistant", "alone")], [("user", "u"), ("user", "again")], [("tool", "42")],
                     [("user", "u"), ("system", "late system")]):
            jobs.append({"template": tpl, "messages": _msgs(conv)})
            mine.append(render_go_template(tpl, _msgs(conv)))
    assert [r.get("text") for r in go_render(jobs)] == mine


def test_modelfile_template_read_back_is_what_go_renders(go_render):
    r = ollama_template(AWKWARD, bos_token=None, eos_token="</s>")
    text = modelfile_text("m.gguf", template=r["template"], stop=r["stop"], system=SYSTEM)
    back = parse_modelfile(text)
    assert back["template"] == r["template"]
    conv = [("user", "u"), ("assistant", "a"), ("user", "v")]
    [res] = go_render([{"template": back["template"], "messages": ollama_messages(conv, back["system"])}])
    assert res["text"] == hf_render(AWKWARD, [("system", SYSTEM), *conv], True, None, "</s>")


# ------------------------------------------------------------------------------------------------ Modelfile text


def test_modelfile_round_trip():
    r = ollama_template(QWEN, bos_token=None, eos_token="<|im_end|>", special_tokens=["<|im_start|>", "<|im_end|>"])
    system = 'Answer "briefly".\ndef f():\n    """Docstring""" inside a line\n  ends with quotes: """'
    lic = "Apache-2.0\nhttps://www.apache.org/licenses/LICENSE-2.0"
    text = modelfile_text("model-Q4_K_M.gguf", template=r["template"], stop=r["stop"], system=system,
                          license_text=lic, parameters={"temperature": 0.7, "num_ctx": 4096, "stop": ["\n\n", '"'],
                                                        "use_mmap": False})
    assert text.startswith("FROM ./model-Q4_K_M.gguf\nTEMPLATE \"\"\"") and text.endswith("\n")
    assert text.index("TEMPLATE") < text.index("PARAMETER stop") < text.index("SYSTEM") < text.index("LICENSE")
    assert 'PARAMETER stop "<|im_end|>"\n' in text
    back = parse_modelfile(text)
    assert back["from"] == "./model-Q4_K_M.gguf"
    assert back["template"] == r["template"] and back["system"] == system and back["license"] == lic
    assert back["parameters"] == {"stop": ["<|im_end|>", "<|im_start|>", "\n\n", '"'], "temperature": 0.7,
                                  "num_ctx": 4096, "use_mmap": False}


def test_modelfile_minimal_and_cleaned():
    text = modelfile_text("my model.gguf", template=None, stop=["</s>", "</s>", ""], system=None,
                          license_text="MIT\u00a0License\u200b")
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
    text = ("# comment\nfrom llama3.2\nPARAMETER temperature 1\nPARAMETER stop <|eot_id|>\nparameter stop \"a b\"\n"
            "PARAMETER seed 42\nPARAMETER use_mmap t\nPARAMETER mirostat 1\nTEMPLATE {{ .Prompt }}\nSYSTEM \"\"\"\n  spaced  \n\"\"\"\n"
            "MESSAGE user hi there\nMESSAGE assistant \"hello\"\nLICENSE one\nLICENSE \"\"\"two\nlines\"\"\"\n")
    mf = parse_modelfile(text)
    assert mf["from"] == "llama3.2" and mf["template"] == "{{ .Prompt }}" and mf["system"] == "\n  spaced  \n"
    assert mf["parameters"] == {"temperature": 1.0, "stop": ["<|eot_id|>", "a b"], "seed": 42, "use_mmap": True}
    assert mf["messages"] == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]
    assert mf["license"] == ["one", "two\nlines"] and mf["deprecated"] == ["mirostat"]
    for bad, msg in (("SYSTEM hi\n", "no FROM"), ("FROM x\nBOGUS y\n", "command must be"),
                     ("FROM x\nPARAMETER nope 1\n", "unknown parameter"), ("FROM x\nPARAMETER seed x\n", "invalid int"),
                     ("FROM x\nMESSAGE robot hi\n", "role"), ('FROM x\nSYSTEM """open\n', "end of file"),
                     ("FROM x\nPARAMETER use_mmap maybe\n", "invalid bool")):
        with pytest.raises(InvalidInput, match=msg):
            parse_modelfile(bad)
