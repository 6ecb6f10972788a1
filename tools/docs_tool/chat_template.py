"""The Ollama TEMPLATE and stop tokens derived from a tokenizer's Jinja chat template.

How the TEMPLATE is found: the Jinja template is rendered by transformers' own renderer over probe conversations
whose contents are sentinels; the text around the sentinels gives the preamble, each role's prefix and suffix and the
generation prompt (``TemplateParts``). These become one Go text/template over ``.Messages`` (Ollama injects a
Modelfile's SYSTEM as a leading system message when a conversation has none). The parts are then rendered here the
way that Go template renders them and compared with the Jinja rendering for several conversations; the tests run
the Go text itself through Go's text/template. A template that is not made of per-role blocks (one that folds the
system prompt into a user turn, say) gets no TEMPLATE and a warning: Ollama then picks a template from the GGUF's own
chat template.

Ollama conventions the template follows: a conversation that ends with a user turn gets the generation prompt; one
that ends with an assistant turn is left open so that the model continues it (transformers'
``continue_final_message``); the BOS token is left out (llama.cpp adds it from the GGUF's ``add_bos_token``).
"""

from __future__ import annotations

import re

from .template_parts import TemplateParts, go_quote

__all__ = ["ollama_template", "derive_parts", "TemplateParts", "go_quote"]

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
    "system_multi_turn_prefill": (
        [("system", _SYSTEM), ("user", _U1), ("assistant", _A1), ("user", _U2), ("assistant", _A2)],
        False,
    ),
}

_NO_TEMPLATE = (
    "no TEMPLATE written: Ollama will pick one itself from the GGUF's tokenizer.chat_template "
    "(a template it knows, or a bare prompt)"
)


# --------------------------------------------------------------------------------------------------------------
# Jinja side: transformers renders


class _Jinja:
    """The chat template rendered as transformers' apply_chat_template renders it (no continue_final_message)."""

    def __init__(self, chat_template: str, variables: dict, bos: str | None):
        from transformers.utils.chat_template_utils import _compile_jinja_template

        _compile_jinja_template(chat_template)  # raises on a template Jinja cannot compile
        self.template, self.variables, self.bos = chat_template, variables, bos
        self.bos_stripped = False  # set when a derivation render started with bos

    def __call__(self, msgs, gen: bool) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(
            [_messages(msgs)], chat_template=self.template, add_generation_prompt=gen, **self.variables
        )
        return rendered[0]

    def body(self, msgs, gen: bool) -> str:
        """The rendering without a leading BOS (llama.cpp adds that one)."""
        text = self(msgs, gen)
        if self.bos and text.startswith(self.bos):
            self.bos_stripped = True
            text = text[len(self.bos) :]
        return text

    def dated(self, msgs, gen: bool, when) -> str:
        """The rendering with ``strftime_now`` reading the clock at ``when``: transformers' compiled template
        rendered with that one name shadowed (its own global reads the real clock)."""
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(self.template).render(
            messages=_messages(msgs),
            tools=None,
            documents=None,
            add_generation_prompt=gen,
            strftime_now=lambda fmt: when.strftime(fmt),
            **self.variables,
        )

    def safe(self, msgs, gen: bool, when=None) -> str | None:
        """The rendering (at the clock's ``when`` if given), or None when the template fails on it."""
        try:
            return self(msgs, gen) if when is None else self.dated(msgs, gen, when)
        except Exception:  # noqa: BLE001 - any Jinja failure
            return None


def _messages(msgs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in msgs]


# --------------------------------------------------------------------------------------------------------------
# Derivation


class _NotPerRole(Exception):
    """The chat template is not a sequence of per-role blocks (the message says why)."""


def _after(text: str, needle: str) -> str:
    return text[text.index(needle) + len(needle) :]


def _between(text: str, a: str, b: str) -> str:
    rest = _after(text, a)
    return rest[: rest.index(b)]


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
    return p[: cuts[0]] if cuts else p


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise _NotPerRole(why)


def _turns(jinja: _Jinja, markers) -> tuple[TemplateParts, str]:
    """The parts of a system-less conversation, and the rendering of one user turn with the generation prompt."""
    u1, a1, u2 = _S["u1"], _S["a1"], _S["u2"]
    try:
        r1, r5 = jinja.body([("user", u1)], True), jinja.body([("user", u1)], False)
        r2 = jinja.body([("user", u1), ("assistant", a1), ("user", u2)], True)
        r3 = jinja.body([("user", u1), ("assistant", a1)], False)
    except Exception as exc:  # noqa: BLE001 - any Jinja failure means: cannot translate
        raise _NotPerRole(f"it fails on a plain user/assistant conversation ({exc})") from None
    _require(
        all(
            text.count(n) == 1
            for text, needles in ((r1, (u1,)), (r5, (u1,)), (r2, (u1, a1, u2)), (r3, (u1, a1)))
            for n in needles
        ),
        "message contents do not appear exactly once in the rendered conversation",
    )
    head, tail_gen, end_user = r1[: r1.index(u1)], _after(r1, u1), _after(r5, u1)
    _require(
        all(r[: r.index(u1)] == head for r in (r2, r3, r5)),
        "the text before the first user turn depends on the rest of the conversation",
    )
    seg1, seg2, end_asst = _between(r2, u1, a1), _between(r2, a1, u2), _after(r3, a1)
    _require(
        _after(r2, u2) == tail_gen and _between(r3, u1, a1) == seg1,
        "a user turn renders differently depending on its place in the conversation",
    )
    us = _common_prefix(end_user, tail_gen, markers)
    _require(seg1.startswith(us), "the user turn's closing text differs between turns")
    as_ = end_asst if seg2.startswith(end_asst) else _common_prefix(end_asst, seg2, markers)
    up = seg2[len(as_) :]
    _require(head.endswith(up), "the first user turn opens differently from the later ones")
    parts = TemplateParts(
        pre=head[: len(head) - len(up)], user=(up, us), assistant=(seg1[len(us) :], as_), gen=tail_gen[len(us) :]
    )
    return parts, r1


def _with_system(jinja: _Jinja, parts: TemplateParts, r1: str) -> TemplateParts:
    """``parts`` with the system block, when system messages render."""
    s, u1 = _S["system"], _S["u1"]
    try:
        r4 = jinja.body([("system", s), ("user", u1)], True)
    except Exception:  # noqa: BLE001 - raises on a system message: no system role
        return parts
    if s not in r4:
        _require(r4 == r1, "the system message is dropped but changes the rest of the rendering")
        return parts
    _require(
        r4.count(s) == 1 and r4.count(u1) == 1 and r4.index(s) < r4.index(u1),
        "the system message does not render as a block of its own before the first user turn",
    )
    before_s, seg_s, up = r4[: r4.index(s)], _between(r4, s, u1), parts.user[0]
    _require(seg_s.endswith(up) and _after(r4, u1) == _after(r1, u1), "the system prompt is folded into a user turn")
    ss, pre = seg_s[: len(seg_s) - len(up)], parts.pre
    if before_s.startswith(pre):
        return TemplateParts(pre, parts.user, parts.assistant, parts.gen, system=(before_s[len(pre) :], ss))
    # a default system prompt when the conversation has none (Qwen-style)
    _require(
        pre.startswith(before_s) and pre.endswith(ss) and len(pre) >= len(before_s) + len(ss),
        "the system turn does not fit the preamble of a conversation without one",
    )
    return TemplateParts(
        "",
        parts.user,
        parts.assistant,
        parts.gen,
        system=(before_s, ss),
        default_system=pre[len(before_s) : len(pre) - len(ss)],
    )


def _derive(jinja: _Jinja, markers) -> tuple[TemplateParts | None, str | None]:
    """(parts, None), or (None, why the template is not made of per-role blocks)."""
    try:
        parts, r1 = _turns(jinja, markers)
        return _with_system(jinja, parts, r1), None
    except _NotPerRole as exc:
        return None, str(exc)


def _find_tokens(text: str, candidates) -> list[str]:
    """Candidates that occur in ``text``, in order of first occurrence (longest first at one position)."""
    found = [(text.index(t), -len(t), t) for t in candidates if t and t in text]
    return [t for _, _, t in sorted(found)]


def _stops(eos: str | None, bos: str | None, marker_texts: list[str], special: list[str]) -> list[str]:
    cands = [t for t in special if t and t != bos]
    if not cands:  # no list given: the usual spellings of control tokens
        pat = re.compile(r"<\|[^<>|\s]+\|>|<｜[^<>｜\s]+｜>|<(?:start|end)_of_turn>")
        cands = [m.group(0) for text in marker_texts for m in pat.finditer(text) if m.group(0) != bos]
    out = [eos] if eos else []
    for text in marker_texts:
        out.extend(t for t in _find_tokens(text, cands) if t not in out)
    return out


def _rendered_markers(jinja: _Jinja) -> list[str]:
    """Without parts: what the template writes around the contents of a few conversations."""
    texts = []
    for msgs, gen in (
        ([("user", _S["u1"]), ("assistant", _S["a1"])], False),
        ([("user", _S["u1"])], True),
        ([("system", _S["system"]), ("user", _S["u1"])], True),
    ):
        try:
            text = jinja(msgs, gen)
        except Exception:  # noqa: BLE001
            continue
        for _, c in msgs:
            text = text.replace(c, "\n")
        texts.append(text)
    return texts


def _system_supported(jinja: _Jinja) -> bool:
    """A system message renders and its text reaches the prompt."""
    try:
        return _S["system"] in jinja([("system", _S["system"]), ("user", _S["u1"])], True)
    except Exception:  # noqa: BLE001
        return False


def _system_dropped(jinja: _Jinja) -> bool:
    try:
        return jinja([("system", _S["system"]), ("user", _S["u1"])], True) == jinja([("user", _S["u1"])], True)
    except Exception:  # noqa: BLE001
        return False


def _jinja_expected(jinja: _Jinja, msgs, gen: bool) -> str:
    """What Ollama should be sent for ``msgs``: the Jinja rendering without the leading BOS; a conversation ending
    with an assistant turn is cut after that turn's content (transformers' continue_final_message)."""
    text = jinja(msgs, gen)
    if jinja.bos and text.startswith(jinja.bos):
        text = text[len(jinja.bos) :]
    if not gen:
        last = msgs[-1][1]
        text = text[: text.rindex(last) + len(last)]
    return text


def _round_trips(jinja: _Jinja, parts: TemplateParts) -> tuple[list[str], list[str]]:
    """(probes the parts render exactly as Jinja does, probes they do not)."""
    checked, failed = [], []
    for name, (msgs, gen) in _PROBES.items():
        if not parts.system and msgs[0][0] == "system" and not _system_dropped(jinja):
            continue  # the Jinja template refuses system messages: nothing to compare
        try:
            want = _jinja_expected(jinja, msgs, gen)
        except Exception as exc:  # noqa: BLE001
            failed.append(f"{name} ({exc})")
            continue
        (checked if parts.render(_messages(msgs)) == want else failed).append(name)
    return checked, failed


def _caveats(jinja: _Jinja, system_supported: bool, now) -> list[str]:
    """Warnings about a template that translates: no system role, trimmed contents, today's date written in."""
    from datetime import datetime, timedelta

    out = [] if system_supported else ["the chat template has no system role: a SYSTEM prompt is not sent to the model"]
    padded, plain = " \n" + _S["u1"] + "\n ", [("user", _S["u1"])]
    trimmed = jinja.safe([("user", padded)], True)
    if trimmed is not None and padded not in trimmed:
        out.append(
            "the chat template trims whitespace around message contents; the Ollama template passes contents unchanged"
        )
    later = datetime(2001, 2, 3) if now.year != 2001 else now + timedelta(days=400)
    dated = jinja.safe(plain, True, later)
    if dated is not None and dated != jinja.safe(plain, True):
        out.append(f"the chat template writes today's date; the Ollama template has {now:%Y-%m-%d} written into it")
    return out


def _chosen(chat_template):
    """tokenizer_config's named templates: the default one (else the first)."""
    if not isinstance(chat_template, list):
        return chat_template
    named = {t.get("name"): t.get("template") for t in chat_template if isinstance(t, dict)}
    return named.get("default") or next(iter(named.values()), None)


def derive_parts(
    chat_template, *, bos_token: str | None, eos_token: str | None, special_tokens: list[str] = ()
) -> TemplateParts | None:
    """The per-role parts of a chat template, or None when it is not made of per-role blocks (or does not
    compile)."""
    special = [t for t in special_tokens or () if t]
    try:
        jinja = _jinja(_chosen(chat_template), bos_token, eos_token, special)
    except Exception:  # noqa: BLE001
        return None
    return _derive(jinja, [*special, eos_token] if eos_token else special)[0]


def _jinja(chat_template: str, bos: str | None, eos: str | None, special: list[str]) -> _Jinja:
    variables = {"bos_token": bos or "", "eos_token": eos or "", "additional_special_tokens": special}
    return _Jinja(chat_template, variables, bos)


def ollama_template(
    chat_template: str | list | None, *, bos_token: str | None, eos_token: str | None, special_tokens: list[str] = ()
) -> dict:
    """{"template": str | None, "stop": [str], "system_supported": bool, "warnings": [str],
    "checked": [names of probe conversations that round-tripped], "bos_stripped": bool (the Jinja template wrote
    bos_token first; left to llama.cpp's add_bos)}"""
    from datetime import datetime

    special = list(dict.fromkeys(t for t in special_tokens or () if t))
    result = {
        "template": None,
        "stop": [eos_token] if eos_token else [],
        "system_supported": False,
        "warnings": [],
        "checked": [],
        "bos_stripped": False,
    }
    chat_template = _chosen(chat_template)
    if not chat_template or not str(chat_template).strip():
        result["warnings"].append(f"the tokenizer has no chat template: {_NO_TEMPLATE}")
        return result
    now = datetime.now()
    try:
        jinja = _jinja(chat_template, bos_token, eos_token, special)
    except Exception as exc:  # noqa: BLE001 - a template Jinja cannot compile
        result["warnings"].append(f"the chat template does not compile ({exc}): {_NO_TEMPLATE}")
        return result
    parts, why = _derive(jinja, [t for t in (*special, eos_token) if t])
    result.update(bos_stripped=jinja.bos_stripped, system_supported=_system_supported(jinja))
    result["stop"] = _stops(eos_token, bos_token, parts.markers() if parts else _rendered_markers(jinja), special)
    if parts is None:
        result["warnings"].append(f"the chat template is not a sequence of per-role blocks ({why}): {_NO_TEMPLATE}")
        return result
    result["checked"], failed = _round_trips(jinja, parts)
    if failed:
        result["warnings"].append(
            "the Go template derived from the chat template renders differently for "
            f"{', '.join(failed)}: {_NO_TEMPLATE}"
        )
        return result
    result["template"] = parts.go_template()
    result["warnings"].extend(_caveats(jinja, result["system_supported"], now))
    return result
