"""The parts of a per-role chat template, the Ollama (Go text/template) TEMPLATE they make, and a renderer of what
that TEMPLATE renders, used to check the parts against the Jinja template (the tests run the Go text through Go's
own text/template)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TemplateParts", "go_quote"]


def go_quote(s: str) -> str:
    """A Go interpreted string literal for ``s`` (text/template accepts it as a constant)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

    def one(ch: str) -> str:
        if ch in escapes:
            return escapes[ch]
        if ch.isprintable():
            return ch
        return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"

    return '"' + "".join(one(ch) for ch in s) + '"'


def _lit(text: str) -> str:
    """Template text for literal ``text``: as is when Go reads it back unchanged and it is safe inside a Modelfile's
    triple quotes, else as a quoted constant action."""
    if not text:
        return ""
    raw_ok = (
        "{{" not in text
        and not text.endswith("{")
        and '"""' not in text
        and "\r" not in text
        and all(ch.isprintable() or ch in "\n\t" for ch in text)
    )
    return text if raw_ok else "{{ " + go_quote(text) + " }}"


@dataclass(frozen=True)
class TemplateParts:
    """What a per-role chat template writes around message contents: ``pre`` once, then each message as
    ``prefix + content + suffix`` of its role, the generation prompt ``gen`` after a last user turn; a last
    assistant turn stays open (no suffix). ``default_system`` is shown in the system block when the conversation
    has no system message (Qwen-style); ``system`` is None when system messages render nothing."""

    pre: str
    user: tuple[str, str]
    assistant: tuple[str, str]
    gen: str
    system: tuple[str, str] | None = None
    default_system: str | None = None

    def go_template(self) -> str:
        """The Go text/template over ``.Messages`` that renders like ``render``."""
        sp, ss = self.system or ("", "")
        (up, us), (ap, as_) = self.user, self.assistant
        t = [_lit(self.pre), "{{ range $i, $_ := .Messages }}", "{{ $last := eq (len (slice $.Messages $i)) 1 }}"]
        if self.default_system is not None:
            t.append('{{ if and (eq $i 0) (ne .Role "system") }}' + _lit(sp + self.default_system + ss) + "{{ end }}")
        branches = [("system", _lit(sp) + "{{ .Content }}" + _lit(ss))] if self.system else []
        gen = "{{ if $last }}" + _lit(self.gen) + "{{ end }}" if self.gen else ""
        branches.append(("user", _lit(up) + "{{ .Content }}" + _lit(us) + gen))
        close = "{{ if not $last }}" + _lit(as_) + "{{ end }}" if as_ else ""
        branches.append(("assistant", _lit(ap) + "{{ .Content }}" + close))
        for n, (role, body) in enumerate(branches):
            t.append(("{{ if " if n == 0 else "{{ else if ") + f'eq .Role "{role}" }}}}' + body)
        t.append("{{ end }}{{ end }}")
        return "".join(t)

    def render(self, messages: list[dict]) -> str:
        """What ``go_template`` renders for ``messages`` (dicts with role and content, as Ollama passes them)."""
        out = [self.pre]
        for i, m in enumerate(messages):
            if i == 0 and self.default_system is not None and m["role"] != "system":
                out.append(self.system[0] + self.default_system + self.system[1])
            out.append(self._turn(m["role"], m["content"], last=i == len(messages) - 1))
        return "".join(out)

    def _turn(self, role: str, content: str, *, last: bool) -> str:
        if role == "system" and self.system:
            return self.system[0] + content + self.system[1]
        if role == "user":
            return self.user[0] + content + self.user[1] + (self.gen if last else "")
        if role == "assistant":
            return self.assistant[0] + content + ("" if last else self.assistant[1])
        return ""

    def markers(self) -> list[str]:
        """The texts around contents, closing ones first: where stop tokens are looked for."""
        return [
            self.assistant[1],
            self.user[1],
            self.gen,
            self.assistant[0],
            self.user[0],
            *(self.system or ()),
            self.pre,
            self.default_system or "",
        ]
