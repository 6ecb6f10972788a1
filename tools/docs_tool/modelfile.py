"""Ollama Modelfile: a Go TEMPLATE and stop tokens derived from the tokenizer's Jinja chat template, the
Modelfile text, and a parser that reads a Modelfile the way Ollama's own parser does.

How the TEMPLATE is found: the Jinja template is rendered the way transformers renders it, over probe
conversations whose contents are sentinels; the text around the sentinels gives the preamble, each role's prefix
and suffix and the generation prompt. These become one Go text/template over ``.Messages`` (Ollama injects a
Modelfile's SYSTEM as a leading system message when a conversation has none). The result is then rendered here,
by a small evaluator of exactly the Go forms written, and compared with the Jinja rendering for several
conversations. A template that is not made of per-role blocks (one that folds the system prompt into a user turn,
say) gets no TEMPLATE and a warning: Ollama then picks a template from the GGUF's own chat template.

Ollama conventions the template follows: a conversation that ends with a user turn gets the generation prompt; one
that ends with an assistant turn is left open so that the model continues it (transformers'
``continue_final_message``); the BOS token is left out (llama.cpp adds it from the GGUF's ``add_bos_token``).
"""

from __future__ import annotations

import re

__all__ = ["ollama_template", "modelfile_text", "parse_modelfile", "render_go_template", "go_quote"]

# Sentinel contents for the derivation: plain ASCII letters, so that no template filter (trim, capitalize aside)
# changes them, and unlikely to appear in any template.
_S = {"system": "QxSYSsentinelQ", "u1": "QxUSERoneQ", "a1": "QxASSISTANToneQ", "u2": "QxUSERtwoQ"}

# Contents of the round-trip conversations: new lines, quotes, braces and Go template syntax, to prove that
# message text passes through the Go template untouched.
_SYSTEM = 'You are a careful assistant.\nAnswer in "one" line.'
_U1 = "Hello {{ .Content }} <b>there</b>"
_A1 = 'Hi!\n  Indented {{- "x" -}} line'
_U2 = "Second question\\n with a literal backslash-n"
_A2 = "Second answer."

# Round-trip probes: name -> (messages, ends with a generation prompt)
_PROBES = {
    "user": ([("user", _U1)], True),
    "system_user": ([("system", _SYSTEM), ("user", _U1)], True),
    "multi_turn": ([("user", _U1), ("assistant", _A1), ("user", _U2)], True),
    "system_multi_turn": ([("system", _SYSTEM), ("user", _U1), ("assistant", _A1), ("user", _U2)], True),
    "assistant_prefill": ([("user", _U1), ("assistant", _A1)], False),
    "system_multi_turn_prefill": ([("system", _SYSTEM), ("user", _U1), ("assistant", _A1), ("user", _U2),
                                   ("assistant", _A2)], False),
}

# Ollama's model parameters and their types (api.Options; FormatParams converts Modelfile text with these).
_PARAM_TYPES = {
    **dict.fromkeys(("numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock",
                     "embedding_only", "penalize_newline"), bool),
    **dict.fromkeys(("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict",
                     "top_k", "repeat_last_n", "mirostat"), int),
    **dict.fromkeys(("top_p", "min_p", "tfs_z", "temperature", "repeat_penalty", "presence_penalty",
                     "frequency_penalty", "mirostat_tau", "mirostat_eta"), float),
    "stop": list,
}
# Parameters Ollama's Modelfile parser skips with a warning (typical_p: refused by /api/create since 0.12).
_DEPRECATED = ("penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock", "mirostat",
               "mirostat_tau", "mirostat_eta", "typical_p")

_NO_TEMPLATE = ("no TEMPLATE written: Ollama will pick one itself from the GGUF's tokenizer.chat_template "
                "(a template it knows, or a bare prompt)")


# --------------------------------------------------------------------------------------------------------------
# Jinja side: render like transformers


def _jinja_renderer(chat_template: str, clock):
    """A function ``(messages, add_generation_prompt, **vars) -> str`` like transformers' apply_chat_template."""
    import json

    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):  # transformers' {% generation %} marks assistant text; it renders its body
        tags = {"generation"}

        def parse(self, parser):
            next(parser.stream)
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: clock().strftime(fmt)
    compiled = env.from_string(chat_template)

    def render(messages, add_generation_prompt, **variables):
        msgs = [{"role": r, "content": c} for r, c in messages]
        return compiled.render(messages=msgs, add_generation_prompt=add_generation_prompt, **variables)

    return render


# --------------------------------------------------------------------------------------------------------------
# Go side: quoting, the template we write, and an evaluator of exactly that template's forms


def go_quote(s: str) -> str:
    """A Go interpreted string literal for ``s`` (text/template accepts it as a constant)."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _go_unquote(s: str) -> str:
    simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
    if len(s) < 2 or s[0] != '"' or s[-1] != '"':
        raise ValueError(f"not a Go string literal: {s!r}")
    body, out, i = s[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
        elif nxt in "uU":
            n = 4 if nxt == "u" else 8
            out.append(chr(int(body[i + 2:i + 2 + n], 16)))
            i += 2 + n
        elif nxt == "x":
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        else:
            raise ValueError(f"unsupported escape in {s!r}")
    return "".join(out)


def _lit(text: str) -> str:
    """Template text for literal ``text``: as is when Go reads it back unchanged and it is safe inside a Modelfile's
    triple quotes, else as a quoted constant action."""
    if not text:
        return ""
    raw_ok = ("{{" not in text and not text.endswith("{") and '"""' not in text and "\r" not in text
              and all(ch.isprintable() or ch in "\n\t" for ch in text))
    return text if raw_ok else "{{ " + go_quote(text) + " }}"


def _go_template(parts: dict) -> str:
    """The Go template for the derived parts (keys: pre, default_system, system, user, assistant, gen)."""
    sp, ss = parts["system"] if parts["system"] else ("", "")
    up, us = parts["user"]
    ap, as_ = parts["assistant"]
    t = [_lit(parts["pre"]), "{{ range $i, $_ := .Messages }}"]
    t.append("{{ $last := eq (len (slice $.Messages $i)) 1 }}")
    if parts["default_system"] is not None:
        t.append('{{ if and (eq $i 0) (ne .Role "system") }}' + _lit(sp + parts["default_system"] + ss) + "{{ end }}")
    branches = []
    if parts["system"]:
        branches.append(("system", _lit(sp) + "{{ .Content }}" + _lit(ss)))
    gen = "{{ if $last }}" + _lit(parts["gen"]) + "{{ end }}" if parts["gen"] else ""
    branches.append(("user", _lit(up) + "{{ .Content }}" + _lit(us) + gen))
    close = "{{ if not $last }}" + _lit(as_) + "{{ end }}" if as_ else ""
    branches.append(("assistant", _lit(ap) + "{{ .Content }}" + close))
    for n, (role, body) in enumerate(branches):
        t.append(("{{ if " if n == 0 else "{{ else if ") + f'eq .Role "{role}" }}}}' + body)
    t.append("{{ end }}{{ end }}")
    return "".join(t)


def _go_tokens(template: str) -> list:
    """Split into ('text', s) and ('action', s) — quoted strings inside actions may hold braces."""
    out, i = [], 0
    while i < len(template):
        j = template.find("{{", i)
        if j < 0:
            out.append(("text", template[i:]))
            break
        if j > i:
            out.append(("text", template[i:j]))
        k, in_str = j + 2, False
        while True:
            if k >= len(template):
                raise ValueError("unclosed action")
            ch = template[k]
            if in_str:
                if ch == "\\":
                    k += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif template.startswith("}}", k):
                break
            k += 1
        action = template[j + 2:k]
        if action.startswith("-") or action.endswith("-"):
            raise ValueError("trim markers are not part of the forms this evaluator knows")
        out.append(("action", action.strip()))
        i = k + 2
    return out


def render_go_template(template: str, messages: list[dict]) -> str:
    """Render ``template`` over ``.Messages`` with Go text/template semantics — only the forms ``ollama_template``
    writes (range over .Messages, $last, if/else-if on .Role, quoted constants, .Content). ``messages`` are dicts
    with ``role`` and ``content``, as Ollama passes them (its SYSTEM already injected)."""
    toks = _go_tokens(template)
    pos = 0

    def parse_block(stops):
        nonlocal pos
        items = []
        while pos < len(toks):
            kind, val = toks[pos]
            if kind == "action" and (val in stops or any(val.startswith(s + " ") for s in stops)):
                return items
            pos += 1
            if kind == "text":
                items.append(("text", val))
            elif val.startswith("range "):
                body = parse_block(("end",))
                pos += 1
                items.append(("range", val, body))
            elif val.startswith("if "):
                chain = [(val[3:], parse_block(("else", "end")))]
                while toks[pos][1] != "end":
                    _, v = toks[pos]
                    pos += 1
                    cond = v[len("else if "):] if v.startswith("else if ") else None
                    chain.append((cond, parse_block(("else", "end"))))
                pos += 1
                items.append(("if", chain))
            else:
                items.append(("expr", val))
        return items

    tree = parse_block(())

    def cond_true(cond, env):
        m = re.fullmatch(r'eq \.Role "(\w+)"', cond)
        if m:
            return env["."]["role"] == m.group(1)
        if cond == "$last":
            return env["$last"]
        if cond == "not $last":
            return not env["$last"]
        if cond == 'and (eq $i 0) (ne .Role "system")':
            return env["$i"] == 0 and env["."]["role"] != "system"
        raise ValueError(f"unknown condition {cond!r}")

    def run(items, env, out):
        for item in items:
            if item[0] == "text":
                out.append(item[1])
            elif item[0] == "range":
                if item[1] != "range $i, $_ := .Messages":
                    raise ValueError(f"unknown range {item[1]!r}")
                for i, m in enumerate(messages):
                    run(item[2], {**env, "$i": i, ".": m}, out)
            elif item[0] == "if":
                for cond, body in item[1]:
                    if cond is None or cond_true(cond, env):
                        run(body, env, out)
                        break
            elif item[1] == ".Content":
                out.append(env["."]["content"])
            elif item[1] == "$last := eq (len (slice $.Messages $i)) 1":
                env["$last"] = env["$i"] == len(messages) - 1
            elif item[1].startswith('"'):
                out.append(_go_unquote(item[1]))
            else:
                raise ValueError(f"unknown action {item[1]!r}")

    out = []
    run(tree, {}, out)
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# Derivation


def _after(text: str, needle: str) -> str:
    return text[text.index(needle) + len(needle):]


def _between(text: str, a: str, b: str) -> str:
    rest = _after(text, a)
    return rest[:rest.index(b)]


def _common_prefix(a: str, b: str, markers) -> str:
    """Longest common prefix of a and b, cut back to the end of a line or of a special token when neither is a
    prefix of the other (so that a split never falls inside a token)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    p = a[:n]
    if n in (len(a), len(b)):
        return p
    cuts = [k for k in range(n, 0, -1) if p[:k].endswith("\n") or any(p[:k].endswith(t) for t in markers if t)]
    return p[:cuts[0]] if cuts else p


def _derive(render, bos: str | None, markers) -> tuple[dict | None, bool, str | None]:
    """(parts, bos_stripped, why_not): parts for _go_template, or None and the reason."""
    s, u1, a1, u2 = _S["system"], _S["u1"], _S["a1"], _S["u2"]
    stripped = False

    def r(msgs, gen):
        nonlocal stripped
        text = render(msgs, gen)
        if bos and text.startswith(bos):
            stripped = True
            text = text[len(bos):]
        return text

    try:
        r1 = r([("user", u1)], True)
        r5 = r([("user", u1)], False)
        r2 = r([("user", u1), ("assistant", a1), ("user", u2)], True)
        r3 = r([("user", u1), ("assistant", a1)], False)
    except Exception as exc:  # noqa: BLE001 - any Jinja failure means: cannot translate
        return None, stripped, f"it fails on a plain user/assistant conversation ({exc})"
    for text, needles in ((r1, (u1,)), (r5, (u1,)), (r2, (u1, a1, u2)), (r3, (u1, a1))):
        if any(text.count(n) != 1 for n in needles):
            return None, stripped, "message contents do not appear exactly once in the rendered conversation"
    head, tail_gen, end_user = r1[:r1.index(u1)], _after(r1, u1), _after(r5, u1)
    if r2[:r2.index(u1)] != head or r3[:r3.index(u1)] != head or r5[:r5.index(u1)] != head:
        return None, stripped, "the text before the first user turn depends on the rest of the conversation"
    seg1, seg2, end_asst = _between(r2, u1, a1), _between(r2, a1, u2), _after(r3, a1)
    if _after(r2, u2) != tail_gen or _between(r3, u1, a1) != seg1:
        return None, stripped, "a user turn renders differently depending on its place in the conversation"

    us = _common_prefix(end_user, tail_gen, markers)
    gen, ap = tail_gen[len(us):], seg1[len(us):] if seg1.startswith(us) else None
    if ap is None:
        return None, stripped, "the user turn's closing text differs between turns"
    as_ = end_asst if seg2.startswith(end_asst) else _common_prefix(end_asst, seg2, markers)
    up = seg2[len(as_):]
    if not head.endswith(up):
        return None, stripped, "the first user turn opens differently from the later ones"
    pre = head[:len(head) - len(up)]
    parts = {"pre": pre, "default_system": None, "system": None, "user": (up, us), "assistant": (ap, as_),
             "gen": gen}

    try:
        r4 = r([("system", s), ("user", u1)], True)
    except Exception:  # noqa: BLE001 - raises on a system message: no system role
        return parts, stripped, None
    if s not in r4:
        return (parts, stripped, None) if r4 == r1 else (None, stripped, "the system message is dropped but "
                                                        "changes the rest of the rendering")
    if r4.count(s) != 1 or r4.count(u1) != 1 or r4.index(s) > r4.index(u1):
        return None, stripped, "the system message does not render as a block of its own before the first user turn"
    before_s, seg_s = r4[:r4.index(s)], _between(r4, s, u1)
    if not seg_s.endswith(up) or _after(r4, u1) != tail_gen:
        return None, stripped, "the system prompt is folded into a user turn"
    ss = seg_s[:len(seg_s) - len(up)]
    if before_s.startswith(pre):
        parts["system"] = (before_s[len(pre):], ss)
    elif pre.startswith(before_s) and pre.endswith(ss) and len(pre) >= len(before_s) + len(ss):
        # a default system prompt when the conversation has none (Qwen-style)
        parts.update(pre="", system=(before_s, ss), default_system=pre[len(before_s):len(pre) - len(ss)])
    else:
        return None, stripped, "the system turn does not fit the preamble of a conversation without one"
    return parts, stripped, None


def _find_tokens(text: str, candidates) -> list[str]:
    """Candidates that occur in ``text``, in order of first occurrence (longest first at one position)."""
    found = [(text.index(t), -len(t), t) for t in candidates if t and t in text]
    return [t for _, _, t in sorted(found)]


def _stops(eos: str | None, bos: str | None, marker_texts: list[str], special: list[str]) -> list[str]:
    cands = [t for t in special if t and t != bos]
    if not cands:  # no list given: the usual spellings of control tokens
        pat = re.compile(r"<\|[^<>|\s]+\|>|<｜[^<>｜\s]+｜>|<(?:start|end)_of_turn>")
        cands = [m.group(0) for text in marker_texts for m in pat.finditer(text)]
        cands = [t for t in cands if t != bos]
    out = [eos] if eos else []
    for text in marker_texts:
        for t in _find_tokens(text, cands):
            if t not in out:
                out.append(t)
    return out


def ollama_template(chat_template: str | None, *, bos_token: str | None, eos_token: str | None,
                    special_tokens: list[str] = ()) -> dict:
    """{"template": str | None, "stop": [str], "system_supported": bool, "warnings": [str],
    "checked": [names of probe conversations that round-tripped], "bos_stripped": bool (the Jinja template wrote
    bos_token first; left to llama.cpp's add_bos)}"""
    from datetime import datetime, timedelta

    special = list(dict.fromkeys(t for t in special_tokens or () if t))
    result = {"template": None, "stop": [eos_token] if eos_token else [], "system_supported": False, "warnings": [],
              "checked": [], "bos_stripped": False}
    if isinstance(chat_template, list):  # tokenizer_config's named templates
        named = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
        chat_template = named.get("default") or next(iter(named.values()), None)
    if not chat_template or not str(chat_template).strip():
        result["warnings"].append(f"the tokenizer has no chat template: {_NO_TEMPLATE}")
        return result

    now = datetime.now()
    variables = {"bos_token": bos_token or "", "eos_token": eos_token or "", "additional_special_tokens": special,
                 "tools": None, "documents": None}
    try:
        jinja = _jinja_renderer(chat_template, lambda: now)
    except Exception as exc:  # noqa: BLE001 - a template Jinja cannot compile
        result["warnings"].append(f"the chat template does not compile ({exc}): {_NO_TEMPLATE}")
        return result

    def render(msgs, gen):
        return jinja(msgs, gen, **variables)

    markers = [t for t in (*special, eos_token) if t]
    parts, stripped, why = _derive(render, bos_token, markers)
    result["bos_stripped"] = stripped

    # System role: supported when a system message renders and its text reaches the prompt.
    try:
        result["system_supported"] = _S["system"] in render([("system", _S["system"]), ("user", _S["u1"])], True)
    except Exception:  # noqa: BLE001
        result["system_supported"] = False

    # What the template writes around the contents: the source of the stop tokens.
    marker_texts = []
    if parts:
        marker_texts = [parts["assistant"][1], parts["user"][1], parts["gen"], parts["assistant"][0],
                        parts["user"][0], *(parts["system"] or ()), parts["pre"], parts["default_system"] or ""]
    else:
        for msgs, gen in (([("user", _S["u1"]), ("assistant", _S["a1"])], False), ([("user", _S["u1"])], True),
                          ([("system", _S["system"]), ("user", _S["u1"])], True)):
            try:
                text = render(msgs, gen)
            except Exception:  # noqa: BLE001
                continue
            for _, c in msgs:
                text = text.replace(c, "\n")
            marker_texts.append(text)
    result["stop"] = _stops(eos_token, bos_token, marker_texts, special)

    if parts is None:
        result["warnings"].append(f"the chat template is not a sequence of per-role blocks ({why}): {_NO_TEMPLATE}")
        return result

    template = _go_template(parts)
    failed = []
    for name, (msgs, gen) in _PROBES.items():
        if not parts["system"] and msgs[0][0] == "system" and not _system_dropped(render):
            continue  # the Jinja template refuses system messages: nothing to compare
        try:
            want = _jinja_expected(render, msgs, gen, bos_token)
        except Exception as exc:  # noqa: BLE001
            failed.append(f"{name} ({exc})")
            continue
        got = render_go_template(template, [{"role": r, "content": c} for r, c in msgs])
        (result["checked"].append(name) if got == want else failed.append(name))
    if failed:
        result["warnings"].append("the Go template derived from the chat template renders differently for "
                                  f"{', '.join(failed)}: {_NO_TEMPLATE}")
        return result
    result["template"] = template

    if not result["system_supported"]:
        result["warnings"].append("the chat template has no system role: a SYSTEM prompt is not sent to the model")
    padded = " \n" + _S["u1"] + "\n "
    try:
        if padded not in render([("user", padded)], True):
            result["warnings"].append("the chat template trims whitespace around message contents; the Ollama "
                                      "template passes contents unchanged")
    except Exception:  # noqa: BLE001
        pass
    later = datetime(2001, 2, 3) if now.year != 2001 else now + timedelta(days=400)
    dated = _jinja_renderer(chat_template, lambda: later)
    try:
        if dated([("user", _S["u1"])], True, **variables) != render([("user", _S["u1"])], True):
            result["warnings"].append(f"the chat template writes today's date; the Ollama template has "
                                      f"{now:%Y-%m-%d} written into it")
    except Exception:  # noqa: BLE001
        pass
    return result


def _system_dropped(render) -> bool:
    try:
        return render([("system", _S["system"]), ("user", _S["u1"])], True) == render([("user", _S["u1"])], True)
    except Exception:  # noqa: BLE001
        return False


def _jinja_expected(render, msgs, gen: bool, bos: str | None) -> str:
    """What Ollama should be sent for ``msgs``: the Jinja rendering without the leading BOS; a conversation ending
    with an assistant turn is cut after that turn's content (transformers' continue_final_message)."""
    text = render(msgs, gen)
    if bos and text.startswith(bos):
        text = text[len(bos):]
    if not gen:
        last = msgs[-1][1]
        text = text[:text.rindex(last) + len(last)]
    return text


# --------------------------------------------------------------------------------------------------------------
# The Modelfile


def _clean(text: str) -> str:
    """What Ollama's parser keeps of a value: printable characters, tabs and line breaks (a non-breaking or other
    space becomes a plain space; other invisible characters are dropped, as Ollama would drop them)."""
    import unicodedata

    return "".join(ch if ch.isprintable() or ch in "\t\n\r" else " " if unicodedata.category(ch) == "Zs" else ""
                   for ch in text)


def _value(text: str, *, prefer: str) -> str | None:
    """``text`` written so that Ollama's parser reads it back unchanged, or None when no form does."""
    forms = {"triple": '"""' + text + '"""', "quoted": '"' + text + '"', "bare": text}
    order = [prefer] + [f for f in ("quoted", "triple", "bare") if f != prefer]
    for f in order:
        if not forms[f]:
            continue
        try:
            cmds = _parse_commands("SYSTEM " + forms[f] + "\n")
        except Exception:  # noqa: BLE001
            continue
        if cmds == [("system", text)]:
            return forms[f]
    return None


def _format_param(name: str, value) -> str:
    from upload_common.errors import InvalidInput, Unsupported

    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidInput(f"Modelfile PARAMETER {name}: {value!r} is not a string, number or boolean")
    if not text:
        raise InvalidInput(f"Modelfile PARAMETER {name}: empty value")
    written = _value(_clean(text), prefer="quoted" if isinstance(value, str) else "bare")
    if written is None or _clean(text) != text:
        raise Unsupported(f"Modelfile PARAMETER {name}: {text!r} cannot be written in a Modelfile")
    return f"PARAMETER {name} {written}"


def modelfile_text(gguf_file: str, *, template: str | None, stop: list[str], system: str | None = None,
                   license_text: str | None = None, parameters: dict | None = None) -> str:
    """The Modelfile text: FROM ./<gguf_file>, TEMPLATE, PARAMETER stop/..., SYSTEM, LICENSE; triple-quoted values
    escaped safely.

    A Modelfile has no escapes: a value in triple quotes ends at the first line that ends with three quotes. Values
    are checked by parsing them back; one that no form can hold raises Unsupported. Characters Ollama's parser drops
    (control and invisible format characters) are dropped here, unusual spaces become plain spaces."""
    from pathlib import PurePosixPath

    from upload_common.errors import InvalidInput, Unsupported

    p = PurePosixPath(str(gguf_file).replace("\\", "/"))
    if not str(gguf_file) or p.is_absolute() or ".." in p.parts or any(c in str(gguf_file) for c in "\r\n"):
        raise InvalidInput(f"Modelfile FROM: {gguf_file!r} is not a file name relative to the Modelfile")
    src = "./" + str(p)
    written = _value(src, prefer="bare")
    if written is None:
        raise Unsupported(f"Modelfile FROM: {gguf_file!r} cannot be written in a Modelfile")
    lines = [f"FROM {written}"]
    if template:
        if _clean(template) != template:
            raise InvalidInput("the Ollama template holds control characters a Modelfile cannot carry")
        value = _value(template, prefer="triple")
        if value is None:
            raise Unsupported('the Ollama template has a line ending with """, which a Modelfile cannot hold')
        lines.append(f"TEMPLATE {value}")
    params = dict(parameters or {})
    stops = list(dict.fromkeys([*(stop or []), *_as_list(params.pop("stop", None))]))
    for s in stops:
        if s:
            lines.append(_format_param("stop", s))
    for name, value in params.items():
        if name in _DEPRECATED:
            raise InvalidInput(f"Modelfile PARAMETER: Ollama no longer takes {name!r} (it would ignore it)")
        if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)) or name not in _PARAM_TYPES:
            raise InvalidInput(f"Modelfile PARAMETER: {name!r} is not an Ollama parameter")
        for v in _as_list(value):
            lines.append(_format_param(name, v))
    for key, text in (("SYSTEM", system), ("LICENSE", license_text)):
        if text is None:
            continue
        value = _value(_clean(text), prefer="triple")
        if value is None:
            raise Unsupported(f'Modelfile {key}: the text has a line that ends with """, which '
                              "a Modelfile cannot hold")
        lines.append(f"{key} {value}")
    return "\n".join(lines) + "\n"


def _as_list(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


# --------------------------------------------------------------------------------------------------------------
# Parsing: a port of Ollama's parser/parser.go state machine


_COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
             "message", "requires")


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _parse_commands(text: str) -> list[tuple[str, str]]:
    """[(command, args)] as Ollama's ParseFile reads them (command names lower-case, FROM as "model")."""
    from upload_common.errors import InvalidInput

    NIL, NAME, VALUE, PARAM, MESSAGE, COMMENT = range(6)
    space, newline = " \t", "\r\n"
    cmds, buf, curr, name, role, line = [], [], NIL, "", "", 1

    def step(ch, state):
        if state == NIL:
            return (COMMENT, "") if ch == "#" else (NIL, "") if ch in space + newline else (NAME, ch)
        if state == NAME:
            if ch.isascii() and ch.isalpha():
                return NAME, ch
            if ch in space:
                return VALUE, ""
            raise InvalidInput(f"Modelfile line {line}: command must be one of {', '.join(_COMMANDS)}")
        if state == VALUE:
            return (NIL, ch) if ch in newline + space else (VALUE, ch)
        if state in (PARAM, MESSAGE):
            if ch.isascii() and (ch.isalpha() or (state == PARAM and (ch.isdigit() or ch == "_"))):
                return state, ch
            if ch in space:
                return VALUE, ""
            raise InvalidInput(f"Modelfile line {line}: unexpected end of a PARAMETER or MESSAGE name")
        return (NIL, "") if ch in newline else (COMMENT, "")

    for ch in text.lstrip("\ufeff"):
        if ch in newline:
            line += 1
        nxt, r = step(ch, curr)
        if nxt != curr:
            b = "".join(buf)
            if curr == NAME:
                if b.lower() not in _COMMANDS:
                    raise InvalidInput(f"Modelfile line {line}: {b!r}: command must be one of {', '.join(_COMMANDS)}")
                low = b.lower()
                if low == "from":
                    name = "model"
                elif low == "parameter":
                    nxt = PARAM
                elif low == "message":
                    nxt, name = MESSAGE, low
                else:
                    name = low
            elif curr == PARAM:
                name = b
            elif curr == MESSAGE:
                if b not in ("system", "user", "assistant"):
                    raise InvalidInput(f'Modelfile line {line}: message role must be one of "system", "user", '
                                       '"assistant"')
                role = b
            elif curr == VALUE:
                s, ok = _unquote(b.strip(" \t\r\n\v\f"))
                if not ok or ch in space:
                    buf.append(ch)
                    continue
                if role:
                    s, role = f"{role}: {s}", ""
                cmds.append((name, s))
            buf = []
            curr = nxt
        if r and r.isprintable():
            buf.append(r)
    if curr == VALUE:
        s, ok = _unquote("".join(buf).strip(" \t\r\n\v\f"))
        if not ok:
            raise InvalidInput("Modelfile: unexpected end of file inside a quoted value")
        cmds.append((name, f"{role}: {s}" if role else s))
    elif curr not in (NIL, COMMENT):
        raise InvalidInput("Modelfile: unexpected end of file")
    return cmds


def _typed(name: str, raw: str):
    from upload_common.errors import InvalidInput

    kind = _PARAM_TYPES.get(name)
    try:
        if kind is float:
            return float(raw)
        if kind is int:
            return int(raw)
        if kind is bool:
            if raw in ("1", "t", "T", "TRUE", "true", "True"):
                return True
            if raw in ("0", "f", "F", "FALSE", "false", "False"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise InvalidInput(f"Modelfile PARAMETER {name}: invalid {kind.__name__} value {raw!r}") from None
    return raw


def parse_modelfile(text: str) -> dict:
    """Inverse of modelfile_text (FROM, TEMPLATE, SYSTEM, LICENSE, PARAMETER lists), for the tests that read a
    Modelfile back (the publisher takes the fields from the upload manifest instead).

    Returns {"from", "template", "system", "license" (a string; a list when several LICENSE lines),
    "parameters" ({name: typed value}, "stop" a list, as /api/create takes them), "messages" ([{role, content}]),
    "deprecated" ([parameter names Ollama skips]), "commands" ([(command, args)] in file order)}. Reads the file the
    way Ollama's parser does (no escapes; a quoted value ends at the first line that closes it)."""
    from upload_common.errors import InvalidInput

    cmds = _parse_commands(text)
    out = {"from": None, "template": None, "system": None, "license": None, "parameters": {}, "messages": [],
           "deprecated": [], "commands": cmds}
    licenses = []
    for name, args in cmds:
        if name == "model":
            out["from"] = args
        elif name in ("template", "system"):
            out[name] = args
        elif name == "license":
            licenses.append(args)
        elif name == "message":
            r, _, c = args.partition(": ")
            out["messages"].append({"role": r, "content": c})
        elif name in ("adapter", "draft", "renderer", "parser", "requires"):
            out[name] = args
        elif name in _DEPRECATED:
            out["deprecated"].append(name)
        else:
            if name not in _PARAM_TYPES:
                raise InvalidInput(f"Modelfile PARAMETER: unknown parameter {name!r}")
            if _PARAM_TYPES[name] is list:
                out["parameters"].setdefault(name, []).append(args)
            else:
                out["parameters"][name] = _typed(name, args)
    if out["from"] is None:
        raise InvalidInput("Modelfile: no FROM line")
    if licenses:
        out["license"] = licenses[0] if len(licenses) == 1 else licenses
    return out
