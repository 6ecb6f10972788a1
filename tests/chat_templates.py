"""Chat templates in the forms their model repos publish them, conversations to render them with, and the
renderings to compare with: transformers' (apply_chat_template) and Ollama's message list."""

from __future__ import annotations

from upload_common.sample import CHAT_TEMPLATE as SAMPLE

# Chat templates in the forms their model repos publish them (tool-calling branches left out).
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
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
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
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
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + \
'<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate \
user/assistant/user/assistant/...') }}
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
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional \
system message!') }}
    {%- endif %}
{%- endfor %}
"""
MISTRAL_V01 = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
    "{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
# Literal text Go and the Modelfile must not misread: braces, triple quotes, a tab, a carriage return, a zero-width
# space, and a marker ending with "{" right before the content.
AWKWARD = (
    "{% for message in messages %}{{ '{{' + message['role'] + '}} \"\"\"\t\r\u200b{' + message['content'] + "
    '\'"""\n\' }}{% endfor %}{% if add_generation_prompt %}{{ \'{{assistant}} """\t\r\u200b{\' }}{% endif %}'
)

TRANSLATABLE = {
    # name: (template, bos, eos, special tokens, system supported, stops that must be there)
    "sample": (SAMPLE, "<s>", "</s>", ["<s>", "</s>"], True, ["</s>"]),
    "chatml": (
        CHATML,
        None,
        "<|im_end|>",
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        True,
        ["<|im_end|>", "<|im_start|>"],
    ),
    "qwen": (
        QWEN,
        None,
        "<|im_end|>",
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        True,
        ["<|im_end|>", "<|im_start|>"],
    ),
    "llama3": (
        LLAMA3,
        "<|begin_of_text|>",
        "<|eot_id|>",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"],
        True,
        ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
    ),
    "zephyr": (ZEPHYR, "<s>", "</s>", [], True, ["</s>", "<|user|>", "<|assistant|>", "<|system|>"]),
    "phi3": (
        PHI3,
        "<s>",
        "<|endoftext|>",
        ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"],
        True,
        ["<|end|>", "<|endoftext|>"],
    ),
    "gemma": (
        GEMMA,
        "<bos>",
        "<eos>",
        ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        False,
        ["<eos>", "<end_of_turn>", "<start_of_turn>"],
    ),
    "mistral_v0.1": (MISTRAL_V01, "<s>", "</s>", [], False, ["</s>"]),
    "awkward": (AWKWARD, None, "</s>", [], True, ["</s>"]),
}

SYSTEM = 'You are terse.\nNever say "no".'
CONVERSATIONS = {
    "user": ([("user", "What is 2+2?")], True),
    "system_user": ([("system", SYSTEM), ("user", "Hi {{ .System }} there")], True),
    "multi_turn": ([("user", "One"), ("assistant", "Two\nlines"), ("user", 'Three "quoted"')], True),
    "system_multi_turn": (
        [("system", SYSTEM), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")],
        True,
    ),
    "prefill": ([("user", "Write a haiku"), ("assistant", "Autumn moon")], False),
    "system_prefill": (
        [("system", SYSTEM), ("user", "x"), ("assistant", "y"), ("user", "z"), ("assistant", "w")],
        False,
    ),
}


def messages_of(conv):
    return [{"role": r, "content": c} for r, c in conv]


def hf_render(template: str, conv, gen: bool, bos, eos) -> str:
    """What transformers' apply_chat_template gives (continue_final_message for a conversation ending with the
    assistant), minus the leading BOS that llama.cpp adds itself."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages_of(conv)],
        chat_template=template,
        add_generation_prompt=gen,
        continue_final_message=not gen,
        bos_token=bos or "",
        eos_token=eos or "",
    )
    text = rendered[0]
    return text[len(bos) :] if bos and text.startswith(bos) else text


def ollama_messages(conv, system: str | None):
    """Ollama's chat handler: the Modelfile's SYSTEM goes first when the conversation has no system message."""
    msgs = messages_of(conv)
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": system}, *msgs]
    return msgs
